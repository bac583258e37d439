"""``mmbert embed``: embed texts, one per input line, with a checkpoint.

    mmbert embed CKPT --input texts.txt --output vectors.npy
    cat texts.txt | mmbert embed CKPT --output vectors.jsonl

Input: a text file, one text per line (or ``-``, stdin); a ``.jsonl`` file may hold ``{"text": ...}`` objects
or JSON strings, one per line. Output: ``.npy`` (float32, (N, H)) or ``.jsonl`` (``{"index", "embedding"}``
per line); without ``--output``, JSON lines on stdout. Texts longer than ``--max-length`` tokens are truncated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--input", default="-", help="text file, one text per line, or .jsonl; '-' = stdin (default)")
    parser.add_argument("--output", help="FILE.npy or FILE.jsonl (default: JSON lines on stdout)")
    parser.add_argument("--batch-tokens", type=int, default=16_384, help="tokens per unpadded batch (default 16384)")
    parser.add_argument("--max-length", type=int, help="longer texts are truncated to this many tokens (content cut, "
                        "<bos>/<eos> kept; default: the tokenizer's model_max_length, capped by the model)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the mean-pooled vectors (default on)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 runs under autocast where the CPU/GPU supports it (default fp32, exact)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def read_texts(source: str) -> list[str]:
    if source == "-":
        lines = sys.stdin.read().splitlines()
        jsonl = False
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        jsonl = path.suffix == ".jsonl"
    if not jsonl:
        return lines
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        item = json.loads(line)
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(f"{source}:{n}: expected a JSON string or an object with a 'text' string")
        texts.append(text)
    return texts


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mmbert.serve.encoder import Encoder

    if args.output and Path(args.output).suffix not in (".npy", ".jsonl"):
        raise ValueError(f"--output must end in .npy or .jsonl, got {args.output}")
    texts = read_texts(args.input)
    encoder = Encoder(args.checkpoint, device=args.device, precision=args.precision, max_length=args.max_length,
                      batch_tokens=args.batch_tokens)
    vectors = encoder.encode(texts, normalize=args.normalize)
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
