"""Export the corpus as per-language JSONL files plus the manifest the data pipeline reads.

Layout (paths in the manifest are relative to its folder)::

    DIR/train/<lang_id>.jsonl     {"text": ..., "lang_id": ..., "lang": ..., "script": ..., "source": ..., "article": N}
    DIR/heldout/<lang_id>.jsonl
    DIR/manifest.yaml             languages: {<lang_id>: [{path: train/<lang_id>.jsonl, text_field: text}]}

The manifest lists the training files only; held-out files sit next to them for evaluation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mmbert.corpus.records import Record, load_corpus
from mmbert.corpus.split import split_heldout


def _write_jsonl(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            row = {"text": r.text, "lang_id": r.lang_id, "lang": r.lang, "script": r.script,
                   "source": r.source, "article": r.article}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_corpus(out_dir: str | Path, records: list[Record] | None = None) -> Path:
    """Write train/heldout JSONL per language and ``manifest.yaml``; returns the manifest's path."""
    out = Path(out_dir)
    records = load_corpus() if records is None else records
    train, heldout = split_heldout(records)
    for split, rows in (("train", train), ("heldout", heldout)):
        by_lang: dict[str, list[Record]] = defaultdict(list)
        for r in rows:
            by_lang[r.lang_id].append(r)
        for lang_id, recs in by_lang.items():
            _write_jsonl(out / split / f"{lang_id}.jsonl", recs)
    # Written by hand: the ids are [a-z0-9_A-Z] only, and the flow style matches the documented format.
    lines = ["languages:"]
    for lang_id in sorted({r.lang_id for r in train}):
        lines += [f"  {lang_id}:", f"    - {{path: train/{lang_id}.jsonl, text_field: text}}"]
    manifest = out / "manifest.yaml"
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
