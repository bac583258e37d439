"""MDS loader throughput against what an mmbert-small training step consumes, in one process.

Writes a synthetic pre-tokenized corpus in mmBERT's published form (``mmbert.data.mds.write_mds``:
8,192-token ``input_ids: ndarray:uint32`` chunks of documents laid end to end, ids below Gemma 2's
256,000, several MDS folders per language), then measures ``build_loader`` batches (read, cut at
<bos>/<eos>, sample p ∝ n^τ, pack to ``--seq-len``, mask) with ``--workers`` DataLoader workers after
``--warmup`` batches. The training step it is compared with is mmbert-small's forward + backward
(benchmarks/data_pipeline.py's measurement) when ``--measure-step`` is given, else the number recorded
in benchmarks/README.md (``--step-tokens-per-s``). The issue's target: loader >= 10x the step.

    python benchmarks/mds_loader.py                       # workers 0 and 2, README step number
    python benchmarks/mds_loader.py --measure-step        # also time mmbert-small steps here (slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmbert.data import PhaseData, build_loader
from mmbert.data.mds import write_mds

STEP_TOKENS_PER_S = 675  # benchmarks/README.md, speed.py case (c): mmbert-small bf16 training step, this CPU


class GemmaLikeIds:
    """The tokenizer protocol for pre-tokenized data: Gemma 2's vocabulary size and special ids."""

    vocab_size, pad_id, eos_id, bos_id, unk_id, mask_id = 256_000, 0, 1, 2, 3, 4
    special_ids = frozenset(range(5))

    def encode_batch(self, texts, add_special_tokens=True):
        raise RuntimeError("pre-tokenized data is never tokenized")


def write_corpus(root: Path, langs: int, folders: int, chunks: int, chunk: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["languages:"]
    for k in range(langs):
        lang = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "cmn_Hani", "arb_Arab", "hin_Deva"][k % 8]
        for f in range(folders):
            n = max(1, chunks * (langs - k) // langs)  # skewed sizes, so tau matters
            docs = []
            total = 0
            while total < n * chunk:
                d = rng.integers(5, 256_000, int(rng.integers(50, 3000)), dtype=np.uint32)
                d[0], d[-1] = 2, 1
                docs.append(d)
                total += len(d)
            flat = np.concatenate(docs)[: n * chunk]
            write_mds(str(root / lang / f"shard_{f:05}-tokenized-chunked-{chunk}"), {"input_ids": "ndarray:uint32", "id": "str"},
                      ({"input_ids": flat[i * chunk:(i + 1) * chunk], "id": f"{lang}-{f}-{i}"} for i in range(n)), size_limit=1 << 22)
        lines.append(f"  {lang}: ['{lang}/*']")
    (root / "manifest.yaml").write_text("\n".join(lines) + "\n")
    return root / "manifest.yaml"


def loader_tokens_per_s(manifest, phase, workers, warmup, batches):
    tok = GemmaLikeIds()
    t0 = time.perf_counter()
    loader = build_loader(manifest, tok, phase, num_workers=workers)
    build_s = time.perf_counter() - t0
    kept = [next(loader) for _ in range(warmup)]
    t0 = time.perf_counter()
    n = sum(next(loader)["num_tokens"] for _ in range(batches))
    dt = time.perf_counter() - t0
    loader.close()
    return n / dt, build_s, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--langs", type=int, default=6)
    ap.add_argument("--folders", type=int, default=3, help="MDS folders per language (the published data splits sources)")
    ap.add_argument("--chunks", type=int, default=40, help="8,192-token samples per folder of the largest language")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--measure-step", action="store_true", help="time mmbert-small forward+backward here")
    ap.add_argument("--step-tokens-per-s", type=float, default=STEP_TOKENS_PER_S)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = write_corpus(Path(tmp), args.langs, args.folders, args.chunks, 8192)
        mb = sum(p.stat().st_size for p in Path(tmp).rglob("*.mds")) / 1e6
        print(f"corpus: {args.langs} languages x {args.folders} MDS folders, {mb:.0f} MB of uint32 ids, "
              f"written in {time.perf_counter() - t0:.1f} s; batch {args.rows} x {args.seq_len}; {args.threads} threads")
        phase = PhaseData(tau=0.5, mask_ratio=0.3, seq_len=args.seq_len, batch_rows=args.rows, seed=0, size_unit="tokens")
        results, batches = {}, []
        for w in args.workers:
            tps, build_s, kept = loader_tokens_per_s(manifest, phase, w, args.warmup, args.batches)
            batches = batches or kept
            results[f"loader_w{w}"] = tps
            print(f"loader, {w} workers: {tps:,.0f} tokens/s (build_loader incl. sizes from the indexes: {build_s:.2f} s)")
        step = args.step_tokens_per_s
        source = "benchmarks/README.md, speed.py (c), bf16"
        if args.measure_step:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from data_pipeline import train_tokens_per_s

            step = train_tokens_per_s("mmbert-small", GemmaLikeIds.vocab_size, batches, 1)
            source = "measured here, fp32, 1 step after a warm-up step"
        results["step_mmbert_small"] = step
        ratios = ", ".join(f"{w} workers {results[f'loader_w{w}'] / step:,.0f}x" for w in args.workers)
        print(f"mmbert-small training step: {step:,.0f} tokens/s ({source}) -> loader / step: {ratios}")
        print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
