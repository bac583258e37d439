"""``mmbert eval``: evaluate checkpoints on a task, per language; compare several.

    mmbert eval CKPT --task udhr-bitext --out results.json
    mmbert eval CKPT --task xnli --data XNLI-1.0/ --train-language en --max-steps 300
    mmbert eval CKPT --task qa --train squad/train-v1.1.json --test tydiqa-goldp-dev.json
    mmbert eval A B C --task udhr-bitext --compare --out-dir cmp/    # compare.md + compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # as mmbert.model.precision.PRECISIONS; not imported: --help stays fast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint director(y/ies)")
    parser.add_argument("--task", required=True, help="glue-sst2 | glue-cola | ... | xnli | qa | ner | retrieval | "
                                                      "bitext | udhr-mlm | udhr-bitext | udhr-langid")
    parser.add_argument("--data", help="the benchmark's folder in its own layout (or the corpus file for udhr-*)")
    parser.add_argument("--train", help="training file (overrides --data's)")
    parser.add_argument("--dev", help="early-stopping file (default: a seeded 10%% of train)")
    parser.add_argument("--test", nargs="+", metavar="[LANG=]PATH", help="test file(s), one per language")
    parser.add_argument("--languages", nargs="+", help="evaluate only these languages")
    parser.add_argument("--train-language", help="zero-shot transfer: fine-tune on this language only (xnli, ner)")
    parser.add_argument("--tokenizer", help="tokenizer.json or folder (default: the checkpoint's)")
    parser.add_argument("--out", help="result JSON (one checkpoint)")
    parser.add_argument("--out-dir", help="folder for one JSON per checkpoint and, with --compare, compare.md/.png")
    parser.add_argument("--compare", action="store_true", help="side-by-side table and plot of all checkpoints")
    parser.add_argument("--summary", action="store_true", help="print only the group and overall means")
    parser.add_argument("--precision", choices=PRECISIONS, help="embedding tasks (retrieval, bitext, udhr-bitext): "
                        "run the encoder in fp32, bf16 or int8 (auto: bf16 where the CPU/GPU does it natively). "
                        "Default: each task's own (udhr-bitext: bf16 autocast)")
    ft = parser.add_argument_group("fine-tuning (classification, qa, ner, udhr-langid)")
    ft.add_argument("--lr", type=float)
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--max-steps", type=int)
    ft.add_argument("--eval-every", type=int)
    ft.add_argument("--patience", type=int)
    ft.add_argument("--max-length", type=int, help="tokens per sequence (also for embedding tasks)")
    ft.add_argument("--seed", type=int)


def run(args: argparse.Namespace) -> int:
    from mmbert.eval import evaluate, format_table
    from mmbert.eval.compare import compare_markdown, compare_plot
    from mmbert.eval.report import write_json

    if args.out and len(args.checkpoints) > 1:
        raise ValueError("--out takes one checkpoint; use --out-dir for several")
    if args.compare and not args.out_dir:
        raise ValueError("--compare needs --out-dir for compare.md and compare.png")
    options = dict(data=args.data, train=args.train, dev=args.dev, test=args.test, languages=args.languages,
                   train_language=args.train_language, tokenizer=args.tokenizer, lr=args.lr,
                   batch_size=args.batch_size, max_steps=args.max_steps, eval_every=args.eval_every,
                   patience=args.patience, max_length=args.max_length, seed=args.seed, precision=args.precision)
    results = []
    for i, ckpt in enumerate(args.checkpoints):
        result = evaluate(ckpt, args.task, **options)
        results.append(result)
        print(format_table(result, per_language=not args.summary))
        print(f"({result['seconds']} s)\n")
        if args.out:
            print(f"wrote {write_json(result, args.out)}")
        if args.out_dir:
            print(f"wrote {write_json(result, Path(args.out_dir) / f'{i:02d}-{Path(ckpt).name}.json')}")
    if args.compare:
        md = compare_markdown(results)
        out = Path(args.out_dir)
        (out / "compare.md").write_text(md, encoding="utf-8")
        compare_plot(results, out / "compare.png")
        print(md)
        print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0
