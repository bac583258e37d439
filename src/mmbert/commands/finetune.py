"""``mmbert finetune CKPT --task TASK --train FILE [--dev FILE] [--test [LANG=]FILE ...] --out DIR``

    mmbert finetune ckpt/ --task classification --train train.csv --text-column sentence --label-column label --out m/
    mmbert finetune ckpt/ --task classification --train en=mnli.tsv --tsv-format mnli --test de=xnli.de.tsv ... --out m/
    mmbert finetune ckpt/ --task token-classification --train train.conll --dev dev.conll --out ner/
    mmbert finetune ckpt/ --task qa --train squad.json --test sw=tydiqa.sw.json --out qa/ --set max_length=384
    mmbert finetune ckpt/ --task embedding --train pairs.jsonl --dev dev.jsonl --out emb/ --batch-size 64 --cached \
        --matryoshka-dims 256 128 64          # (anchor, positive[, negative...]) -> a sentence-transformers model

Settings come from ``--config YAML`` (``FinetuneConfig`` fields), then the flags below, then ``--set k=v``;
``--help-config`` lists every field. Interrupted (Ctrl-C, SIGTERM, kill -9), the same command continues.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="the checkpoint to start from (a directory with a tokenizer)")
    p.add_argument("--task", help="classification | regression | token-classification | qa | embedding")
    p.add_argument("--train", help="training file ([LANG=]FILE): CSV/TSV/JSONL/parquet, CoNLL, SQuAD JSON")
    p.add_argument("--dev", help="dev file for evaluation and early stopping (default: a seeded 10%% of train)")
    p.add_argument("--test", nargs="+", default=[], metavar="[LANG=]FILE",
                   help="test file(s), one per language: the zero-shot table is written for them")
    p.add_argument("--out", help="output directory: the task model (transformers layout) + results.json")
    p.add_argument("--config", help="YAML with FinetuneConfig fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. lr=3e-5 (repeatable)")
    p.add_argument("--help-config", action="store_true", help="list every config field and exit")
    cols = p.add_argument_group("columns (CSV/TSV/JSONL/parquet)")
    cols.add_argument("--text-column", default="text")
    cols.add_argument("--text-pair-column", default=None, help="second text of a pair (NLI)")
    cols.add_argument("--label-column", default="label")
    cols.add_argument("--tsv-format", help="read GLUE/XNLI TSVs in their own layout: sst2, cola, mnli, xnli, ...")
    emb = p.add_argument_group("embedding (--task embedding): columns and contrastive loss")
    emb.add_argument("--anchor-column", default="anchor")
    emb.add_argument("--positive-column", default="positive")
    emb.add_argument("--negative-column", dest="negative_columns", action="append", default=None,
                     help="a hard-negative column (repeatable; default: negative, negative_1, ... where present)")
    emb.add_argument("--batch-size", type=int, help="examples per step, all ranks (extra.batch_size; default 32)")
    emb.add_argument("--cached", action="store_true", help="GradCache: any batch size in chunks of "
                     "micro_batch_tokens (extra.cached)")
    emb.add_argument("--scale", type=float, help="cosine x scale = logits (extra.scale; default 20)")
    emb.add_argument("--symmetric", action="store_true", help="add the positive -> anchor term (extra.symmetric)")
    emb.add_argument("--matryoshka-dims", type=int, nargs="+", help="leading dimensions trained together, e.g. "
                     "256 128 64 (extra.matryoshka_dims); `mmbert serve` then truncates to these")
    p.add_argument("--train-language", help="the language trained on (default: LANG= of --train, else und)")
    ft = p.add_argument_group("common settings (shortcuts for --set)")
    ft.add_argument("--lr", type=float)
    ft.add_argument("--epochs", type=float)
    ft.add_argument("--max-steps", type=int)
    ft.add_argument("--batch-tokens", type=int)
    ft.add_argument("--max-length", type=int)
    ft.add_argument("--eval-every", type=int)
    ft.add_argument("--patience", type=int)
    ft.add_argument("--seed", type=int)
    ft.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mmbert.train.finetune.config import describe, load_finetune_config

    if args.help_config:
        print(describe())
        return 0
    missing = [f"--{n}" for n in ("task", "train", "out") if not getattr(args, n)] + (
        [] if args.checkpoint else ["CHECKPOINT"])
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    import sys

    from mmbert.eval.finetune import FinetuneStopped
    from mmbert.recipe.finetune import finetune_job

    extra = {"batch_size": args.batch_size, "scale": args.scale, "matryoshka_dims": args.matryoshka_dims,
             "cached": args.cached or None, "symmetric": args.symmetric or None}
    overrides = [f"extra.{k}={json.dumps(v)}" for k, v in extra.items() if v is not None] + args.overrides
    config = load_finetune_config(
        args.config, overrides, task=args.task, lr=args.lr, epochs=args.epochs, max_steps=args.max_steps,
        batch_tokens=args.batch_tokens, max_length=args.max_length, eval_every=args.eval_every,
        patience=args.patience, seed=args.seed, precision=args.precision,
        progress=False if args.no_progress else None)
    if args.batch_tokens and not any(o.startswith("micro_batch_tokens=") for o in args.overrides):
        config.micro_batch_tokens = min(config.micro_batch_tokens, args.batch_tokens)
    columns = {"text": args.text_column, "text_pair": args.text_pair_column, "label": args.label_column}
    if config.task == "embedding":
        columns = {"anchor": args.anchor_column, "positive": args.positive_column,
                   "negatives": args.negative_columns}
    try:
        r = finetune_job(args.checkpoint, task=config.task, train=args.train, dev=args.dev, tests=args.test,
                         out=args.out, config=config, columns=columns, tsv_format=args.tsv_format,
                         train_language=args.train_language)
    except FinetuneStopped as e:  # a signal or a run of non-finite steps: resumable, not a traceback
        print(f"mmbert finetune: {e}", file=sys.stderr)
        return 130 if e.result.stopped == "signal" else 1
    p = r["primary"]
    print(f"dev {p}: {r['dev'][p]:.4f} (best step {r['training']['best_step']} of {r['training']['steps']})")
    for lang, m in sorted(r["test"].items()):
        print(f"test {lang}: {p} {m[p]:.4f}")
    z = r["zero_shot"]
    if z and z["mean_other_languages"] is not None:
        print(f"mean over {len(z['other_languages'])} language(s) not trained on: {z['mean_other_languages']:.4f}")
    print(f"model and results in {args.out}")
    return 0
