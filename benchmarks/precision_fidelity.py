"""Fidelity of each inference precision to fp32, on a trained checkpoint and the shipped corpus.

For each mode (mmbert ``bf16``, ``int8``, the bf16-autocast path, and the ONNX exports in fp32 and int8 run
by onnxruntime): the cosine of its embeddings to mmbert's fp32 embeddings over ``--texts`` shipped-corpus
texts (mean and min), and, for the mmbert modes, the ``udhr-bitext`` top-1 (all languages, both directions)
and its change against fp32. Texts: every k-th record of the shipped UDHR corpus (all languages, articles and
scripts), truncated to ``--max-length`` tokens as ``Encoder`` does.

    python benchmarks/precision_fidelity.py runs/miniature-quick/merged --texts 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmbert import Encoder  # noqa: E402
from mmbert.corpus import load_corpus  # noqa: E402
from mmbert.model.precision import cpu_supports_bf16, cpu_supports_int8  # noqa: E402


def corpus_texts(n: int) -> list[str]:
    records = sorted(load_corpus(), key=lambda r: (r.lang_id, r.article))
    step = max(1, len(records) // n)
    return [r.text for r in records[::step]][:n]


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"cos_mean": round(float(cos.mean()), 6), "cos_min": round(float(cos.min()), 6)}


def onnx_vectors(ckpt: Path, enc: Encoder, texts: list[str], quantize: str | None, work: Path) -> np.ndarray:
    import onnxruntime as ort

    from mmbert.serve.export import export

    d = export(ckpt, "onnx", work / f"onnx-{quantize or 'fp32'}", quantize=quantize, overwrite=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(d / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    ids = [enc.truncate(x) for x in enc.tokenize(texts)]
    out = np.zeros((len(texts), enc.hidden_size), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), 16):  # length-sorted batches of 16: onnxruntime's best call
        b = order[start : start + 16]
        t = max(len(ids[i]) for i in b)
        x = np.zeros((len(b), t), dtype=np.int64)
        m = np.zeros((len(b), t), dtype=np.int64)
        for row, i in enumerate(b):
            x[row, : len(ids[i])] = ids[i]
            m[row, : len(ids[i])] = 1
        out[b] = sess.run(["sentence_embedding"], {"input_ids": x, "attention_mask": m})[0]
    return out


def bitext_top1(ckpt: Path, precision: str | None, autocast: bool = False) -> float:
    from mmbert.eval.udhr import bitext_retrieval

    # autocast: the evaluation's default path (fp32 weights under bf16 autocast), which `mmbert run` reports
    r = bitext_retrieval(str(ckpt), bf16=True) if autocast else bitext_retrieval(str(ckpt), precision=precision)
    return float(r["average"]["top1_accuracy"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bitext", action="store_true")
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts = corpus_texts(args.texts)
    ref_enc = Encoder(args.checkpoint, precision="fp32", max_length=args.max_length)
    ref = ref_enc.encode(texts, progress=False)
    tokens = sum(len(ref_enc.truncate(x)) for x in ref_enc.tokenize(texts))
    print(json.dumps({"checkpoint": str(args.checkpoint), "texts": len(texts), "tokens": tokens}), flush=True)
    ref_top1 = None if args.no_bitext else bitext_top1(args.checkpoint, "fp32")
    modes = [("mmbert-fp32", "fp32", False)]
    if cpu_supports_bf16():
        modes += [("mmbert-bf16", "bf16", False), ("mmbert-bf16-autocast", "fp32", True)]
    if cpu_supports_int8():
        modes.append(("mmbert-int8", "int8", False))
    for name, precision, autocast in modes:
        t = time.perf_counter()
        enc = Encoder(args.checkpoint, precision=precision, max_length=args.max_length)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            vec = enc.encode(texts, progress=False)
        row = {"mode": name, **cosines(vec, ref), "seconds": round(time.perf_counter() - t, 1)}
        if ref_top1 is not None:
            top1 = ref_top1 if name == "mmbert-fp32" else bitext_top1(args.checkpoint, precision, autocast)
            row |= {"bitext_top1": round(top1, 4), "bitext_top1_change": round(top1 - ref_top1, 4)}
        print(json.dumps(row), flush=True)
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            for quantize in (None, "int8"):
                vec = onnx_vectors(args.checkpoint, ref_enc, texts, quantize, Path(tmp))
                print(json.dumps({"mode": f"onnxruntime-{quantize or 'fp32'}", **cosines(vec, ref)}), flush=True)


if __name__ == "__main__":
    main()
