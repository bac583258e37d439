"""``mmbert embed``: embed texts, one per input line, with a checkpoint.

    mmbert embed CKPT --input texts.txt --output vectors.npy
    cat texts.txt | mmbert embed CKPT --output vectors.jsonl

Input: a UTF-8 text file, one text per line (or ``-``, stdin); a ``.jsonl`` file may hold ``{"text": ...}``
objects or JSON strings, one per line. Output: ``.npy`` (float32, (N, H)) or ``.jsonl`` (``{"index",
"embedding"}`` per line), row i for text i; without ``--output``, JSON lines on stdout. Texts longer than
``--max-length`` tokens are truncated.

Lines are split at ``\n`` only (``\r\n`` endings are fine; U+2028 and the like stay inside a text), so the
line numbers in errors are the ones an editor shows. An empty text is an error naming its file and line, as
the server refuses ``""`` (400, as OpenAI does): it has no content to embed, and skipping it would shift
every later row. Blank lines in a ``.jsonl`` file separate records and are skipped. Undecodable bytes, bad
JSON and text that is not valid Unicode (a lone surrogate from a ``\ud800`` escape) are errors naming the
file and line; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # as mmbert.model.precision.PRECISIONS; not imported: --help stays fast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--input", default="-", help="UTF-8 text file, one text per line, or .jsonl; '-' = stdin "
                        "(default). An empty line (empty text) is an error naming the file and line, as the server "
                        "refuses empty strings; remove blank lines first")
    parser.add_argument("--output", help="FILE.npy or FILE.jsonl (default: JSON lines on stdout)")
    parser.add_argument("--batch-tokens", type=int, default=16_384, help="tokens per unpadded batch (default 16384)")
    parser.add_argument("--max-length", type=int, help="longer texts are truncated to this many tokens (content cut, "
                        "<bos>/<eos> kept; default: the tokenizer's model_max_length, capped by the model)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the mean-pooled vectors (default on)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default, exact), bf16 (bf16 matmuls under autocast; CPUs with AMX / AVX512-BF16, GPUs), int8 "
                        "(int8 linear layers; CPUs with AMX / VNNI), auto (bf16 where native, else fp32)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def read_lines(source: str) -> list[str]:
    """The lines of a UTF-8 file (or stdin), split at ``\n`` only; undecodable bytes name file and line."""
    if source == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        data = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        data = path.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ValueError(f"{source_name(source)}:{line}: not valid UTF-8: byte 0x{data[e.start]:02x} at byte "
                         f"{column} of the line ({e.reason})") from None
    lines = content.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix("\r") for line in lines]


def source_name(source: str) -> str:
    return "<stdin>" if source == "-" else source


def read_texts(source: str) -> tuple[list[str], list[int]]:
    """The texts and the 1-based line number of each (for errors found later, e.g. by the tokenizer)."""
    name, jsonl = source_name(source), source != "-" and Path(source).suffix == ".jsonl"
    texts, numbers = [], []
    for n, line in enumerate(read_lines(source), 1):
        if jsonl:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or an integer past Python's 4,300-digit limit
                raise ValueError(f"{name}:{n}: not valid JSON: {str(e).split(':')[0]}") from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise ValueError(f"{name}:{n}: expected a JSON string or an object with a 'text' string")
        else:
            text = line
        if not text:
            raise ValueError(f"{name}:{n}: empty text; every line is one text, and an empty one has no embedding "
                             "(remove blank lines)")
        texts.append(text)
        numbers.append(n)
    return texts, numbers


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mmbert.serve.encoder import Encoder
    from mmbert.tokenizer import InvalidTextError

    if args.output and Path(args.output).suffix not in (".npy", ".jsonl"):
        raise ValueError(f"--output must end in .npy or .jsonl, got {args.output}")
    texts, numbers = read_texts(args.input)
    encoder = Encoder(args.checkpoint, device=args.device, precision=args.precision, max_length=args.max_length,
                      batch_tokens=args.batch_tokens)
    try:
        vectors = encoder.encode(texts, normalize=args.normalize)
    except InvalidTextError as e:
        raise ValueError(f"{source_name(args.input)}:{numbers[e.index]}: {e.reason}") from None
    if args.output and args.output.endswith(".npy"):
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.output, vectors)
    else:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for i, v in enumerate(vectors):
                out.write(json.dumps({"index": i, "embedding": v.tolist()}) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    if args.output:
        print(f"embedded {len(texts)} texts -> {args.output} ({vectors.shape[0]} x {vectors.shape[1]} float32)",
              file=sys.stderr)
    return 0
