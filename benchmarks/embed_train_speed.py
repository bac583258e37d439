"""Contrastive training throughput: ``mmbert finetune --task embedding``'s loop against sentence-transformers' own
``SentenceTransformerTrainer``, same exported model, same pairs, same batch size, same loss, same process, A B A B.

Both start from the same weights (the checkpoint exported with ``mmbert export --to sentence-transformers``), train
``--steps`` steps of ``--batch-size`` (anchor, positive) pairs with MultipleNegativesRankingLoss (scale 20) and
AdamW, no evaluation, no saving; batches hold no duplicate text on both sides (``BatchSamplers.NO_DUPLICATES``).
Timed: the whole training call, tokenisation included (ours tokenises the pairs up front; sentence-transformers
in its collator), model loading excluded. Printed: pairs/s of each, the ratio, and the machine's load average.
Ours runs unpadded (no compute on pads); sentence-transformers pads each batch to its longest text.

    python benchmarks/embed_train_speed.py --checkpoint runs/miniature-quick/merged --batch-size 32 --steps 8
    python benchmarks/embed_train_speed.py --checkpoint CKPT --precision bf16 --rounds 3

Needs sentence-transformers, accelerate and datasets (``pip install 'mmbert[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def pairs_of(path: Path | None, n: int, out: Path):
    from mmbert.corpus.pairs import write_pairs
    from mmbert.eval.loaders import read_pairs

    if path is None:
        path = write_pairs(out / "pairs", dev_versions=8)["train"]
    examples = read_pairs(path)[:n]
    return [e.texts[:2] for e in examples], path


def ours(checkpoint: Path, pairs, args) -> float:
    from mmbert.eval.common import load_model, load_tokenizer
    from mmbert.eval.embedding import pair_features
    from mmbert.eval.loaders import PairExample
    from mmbert.model import MmBertForEmbedding
    from mmbert.train.embedding import EmbeddingSettings, EmbeddingTask
    from mmbert.train.finetune import FinetuneConfig, fit

    model = load_model(MmBertForEmbedding, checkpoint)
    tok = load_tokenizer(checkpoint)
    cfg = FinetuneConfig(task="embedding", lr=args.lr, warmup=0.0, decay="none", max_steps=args.steps, epochs=100,
                         max_length=args.max_length, precision=args.precision, progress=False, seed=0,
                         micro_batch_tokens=args.micro_batch_tokens)
    task = EmbeddingTask(EmbeddingSettings(batch_size=args.batch_size, cached=args.cached),
                         cfg.micro_batch_tokens)
    t0 = time.perf_counter()
    features = pair_features(tok, [PairExample(p) for p in pairs], args.max_length, model.config)
    result = fit(model, features, task, cfg)
    dt = time.perf_counter() - t0
    assert result.steps == args.steps, result
    return result.steps * args.batch_size / dt


def theirs(st_dir: Path, pairs, args) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(st_dir), local_files_only=True, device="cpu")
    model.max_seq_length = args.max_length
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    with tempfile.TemporaryDirectory() as out:
        training = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=args.lr, warmup_steps=0, lr_scheduler_type="constant", bf16=args.precision == "bf16",
            use_cpu=True, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0)
        trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model))
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
    return args.steps * args.batch_size / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an mmbert checkpoint directory with its tokenizer")
    p.add_argument("--pairs", type=Path, help="(anchor, positive) JSONL/CSV/parquet (default: the UDHR pairs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--cached", action="store_true", help="ours with GradCache (theirs stays uncached)")
    p.add_argument("--micro-batch-tokens", type=int, default=4096, help="ours: GradCache chunk budget")
    p.add_argument("--rounds", type=int, default=2, help="A B rounds; the median of each side is reported")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmbert.serve.export import export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        st_dir = export(args.checkpoint, "sentence-transformers", tmp / "st")
        pairs, source = pairs_of(args.pairs, args.batch_size * args.steps * 4, tmp)
        load = [os.getloadavg()[0]]
        a, b = [], []
        for _ in range(args.rounds):
            a.append(ours(st_dir, pairs, args))
            b.append(theirs(st_dir, pairs, args))
            load.append(os.getloadavg()[0])
            print(f"  round: mmbert {a[-1]:.2f} pairs/s, sentence-transformers {b[-1]:.2f} pairs/s", flush=True)
    ra, rb = statistics.median(a), statistics.median(b)
    print(json.dumps({"mmbert_pairs_per_s": round(ra, 2), "sentence_transformers_pairs_per_s": round(rb, 2),
                      "ratio": round(ra / rb, 2), "batch_size": args.batch_size, "steps": args.steps,
                      "max_length": args.max_length, "precision": args.precision, "cached": args.cached,
                      "pairs": str(source), "threads": args.threads, "cpus": os.cpu_count(),
                      "load_average_1min": [round(x, 2) for x in load]}, indent=2))


if __name__ == "__main__":
    main()
