"""``mmbert predict DIR --input FILE --output FILE``: a fine-tuned task model over a file, JSONL out.

Input (by suffix): ``.txt`` one input per line; ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.parquet`` with named
columns. Per task:
- classification / regression: ``--text-column`` (default ``text``) and optional ``--text-pair-column``;
- token classification: a ``tokens`` list per JSONL line, or text split on whitespace (``.txt``, or the
  ``--text-column``);
- qa: ``question`` and ``context`` columns.
Each output line is the input row plus the prediction (``eval/predict.py`` lists the fields).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a directory written by `mmbert finetune`")
    p.add_argument("--input", required=True, help="txt / jsonl / csv / tsv / parquet")
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--question-column", default="question")
    p.add_argument("--context-column", default="context")
    p.add_argument("--max-length", type=int, help="tokens per input (default: the fine-tuning max_length)")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from mmbert.eval.loaders import DataFormatError, read_rows, table_format
    from mmbert.eval.predict import Predictor

    pred = Predictor.load(args.model, device=args.device, max_length=args.max_length)
    path = Path(args.input)
    if pred.task == "qa":
        cols = [args.question_column, args.context_column]
    elif pred.task == "token-classification" and table_format(path) == "jsonl":
        cols = ["tokens"]
    else:
        cols = [args.text_column] + ([args.text_pair_column] if args.text_pair_column else [])
    rows = read_rows(path, cols if table_format(path) != "txt" else [])
    if table_format(path) == "txt":
        rows = [(n, {args.text_column: r["text"]}) for n, r in rows]
    for n, row in rows:
        for c in cols:
            v = row.get(c)
            if c == "tokens":
                if not isinstance(v, list) or not v or not all(isinstance(w, str) and w for w in v):
                    raise DataFormatError(path, n, "'tokens' must be a non-empty list of words")
            elif not isinstance(v, str) or not v.strip():
                raise DataFormatError(path, n, f"empty or non-text {c!r}")
    data = [r for _, r in rows]
    if pred.task == "qa":
        results = pred.answer([r[args.question_column] for r in data], [r[args.context_column] for r in data])
    elif pred.task == "token-classification":
        words = [r["tokens"] if "tokens" in cols else r[args.text_column].split() for r in data]
        results = [{"tokens": t} for t in pred.tag(words)]
    else:
        pairs = [r[args.text_pair_column] for r in data] if args.text_pair_column else None
        results = pred.classify([r[args.text_column] for r in data], pairs)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row, res in zip(data, results):
            f.write(json.dumps({**row, **res}, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, out)
    print(f"wrote {len(results)} predictions ({pred.task}) to {out}")
    return 0
