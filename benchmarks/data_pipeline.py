"""Data-pipeline throughput against the training step it must feed, measured in one process.

Builds a multilingual corpus from the embedded UDHR (``mmbert/assets/udhr``: one JSONL file per language,
articles repeated to ``--corpus-mb``), loads the shipped tokenizer (or trains a small BPE one here if it
is missing), then measures:
- pipeline tokens/s: ``build_loader`` batches (read, tokenize, sample, pack, mask) with
  ``--workers`` DataLoader workers, after ``--warmup`` batches (worker start, first windows);
- training tokens/s: forward + backward of ``MmBertForMaskedLM`` on batches the pipeline produced,
  for each ``--presets`` (vocabulary set to the tokenizer's);
and prints their ratio (pipeline / step: above 1 means the loader keeps up with one such step).

    python benchmarks/data_pipeline.py                      # 2 threads, workers 0 and 2, tiny + mmbert-small
    python benchmarks/data_pipeline.py --workers 2 --presets tiny --batches 40
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path

import torch

from mmbert.data import PhaseData, build_loader, measure_sizes, load_manifest, validate_language_code
from mmbert.data.manifest import ManifestError


def build_corpus(root: Path, n_langs: int, corpus_mb: float) -> Path:
    """UDHR articles of the ``n_langs`` languages with the most text, each repeated so that the corpus
    holds about ``corpus_mb`` MB while keeping the languages' relative sizes."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    with gzip.open(str(resources.files("mmbert") / "assets" / "udhr" / "udhr.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            try:
                by_lang[validate_language_code(row["lang_id"])].append(row["text"])
            except ManifestError:
                continue
    langs = sorted(by_lang, key=lambda k: -sum(map(len, by_lang[k])))[:n_langs]
    total = sum(len(t.encode()) for k in langs for t in by_lang[k])
    repeat = max(1, round(corpus_mb * 1e6 / total))
    (root / "data").mkdir(parents=True)
    lines = ["languages:"]
    for i, lang in enumerate(langs):
        keep = by_lang[lang][: max(1, len(by_lang[lang]) * (len(langs) - i) // len(langs))]  # skewed sizes
        with open(root / "data" / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            for r in range(repeat):
                f.writelines(json.dumps({"text": t, "copy": r}, ensure_ascii=False) + "\n" for t in keep)
        lines.append(f"  {lang}:\n    - {{path: data/{lang}.jsonl, text_field: text}}")
    manifest = root / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def load_tokenizer(manifest: Path):
    """The shipped tokenizer, or (if it is not there) a 16k BPE trained on the corpus, with the project's
    special tokens and <bos> ... <eos> wrapping."""
    from mmbert.tokenizer import Tokenizer

    try:
        return Tokenizer.default(), "shipped"
    except (FileNotFoundError, OSError, ValueError):
        pass
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors, trainers

    texts = []
    for path in sorted((manifest.parent / "data").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(400), f)]
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=16_384, special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return Tokenizer(backend), "trained in the script (BPE 16k)"


def pipeline_tokens_per_s(manifest, tok, phase, workers: int, warmup: int, batches: int) -> tuple[float, list]:
    loader = build_loader(manifest, tok, phase, num_workers=workers)
    kept = [next(loader) for _ in range(warmup)]
    t0 = time.perf_counter()
    n = sum(next(loader)["num_tokens"] for _ in range(batches))
    dt = time.perf_counter() - t0
    loader.close()
    return n / dt, kept


def train_tokens_per_s(preset: str, vocab_size: int, batches: list, steps: int) -> float:
    from mmbert import ModelConfig, MmBertForMaskedLM

    config = ModelConfig.from_preset(preset, vocab_size=vocab_size, max_position_embeddings=8192)
    model = MmBertForMaskedLM(config).train()
    times = []
    for i in range(steps + 1):  # the first step warms up allocator and kernels
        b = batches[i % len(batches)]
        t0 = time.perf_counter()
        out = model(b["input_ids"], labels=b["labels"], cu_seqlens=b["cu_seqlens"], max_seqlen=b["max_seqlen"],
                    position_ids=b["position_ids"])
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return batches[0]["num_tokens"] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the benchmark's core budget)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--presets", nargs="+", default=["tiny", "mmbert-small"])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--batches", type=int, default=30, help="timed pipeline batches")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--langs", type=int, default=24)
    ap.add_argument("--corpus-mb", type=float, default=8.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread per worker, as in training

    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_corpus(Path(tmp), args.langs, args.corpus_mb)
        tok, tok_source = load_tokenizer(manifest)
        t0 = time.perf_counter()
        measure_sizes(load_manifest(manifest))
        size_s = time.perf_counter() - t0
        phase = PhaseData(tau=0.5, mask_ratio=0.3, seq_len=args.seq_len, batch_rows=args.rows, seed=0)
        print(f"corpus: {args.langs} languages, {args.corpus_mb} MB; tokenizer: {tok_source} "
              f"(vocab {tok.vocab_size}); batch {args.rows} x {args.seq_len}; {args.threads} threads; "
              f"size measurement {size_s:.2f} s")
        results = {}
        batches: list = []
        for w in args.workers:
            tps, kept = pipeline_tokens_per_s(manifest, tok, phase, w, args.warmup, args.batches)
            results[f"pipeline_w{w}"] = tps
            batches = batches or kept
            print(f"pipeline, {w} workers: {tps:,.0f} tokens/s")
        for preset in args.presets:
            tps = train_tokens_per_s(preset, tok.vocab_size, batches, args.train_steps)
            results[f"train_{preset}"] = tps
            ratios = ", ".join(f"{w} workers {results[f'pipeline_w{w}'] / tps:.1f}x" for w in args.workers)
            print(f"train step {preset}: {tps:,.0f} tokens/s -> pipeline / step: {ratios}")
        print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
