"""Classification data sets from the shipped corpus, for ``mmbert finetune`` (and its README example).

``write_classification_task(out, label="language" | "script")`` writes ``train.jsonl``, ``dev.jsonl`` and
``test.jsonl`` (``{"text", "label", "lang"}``, one UDHR article per line):
- splits by article, the same for every language: dev = articles 23-24, test = the held-out articles
  25-30 (``split.HELDOUT_ARTICLES``), which pretraining on the shipped corpus never sees; train = the rest;
- ``language`` labels are language ids with their script (``ron_Latn``; ``eng_Latn``'s several versions
  share one label), ``script`` labels are ISO 15924 codes;
- ``max_per_label`` caps each label's training articles (seeded choice), so a label with many versions
  (Latin script: ~12,700 of 16,300 records) does not drown the others; labels with fewer than
  ``min_per_label`` training articles are left out (they could not be learned), and the count is printed.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from mmbert.corpus.records import Record, load_corpus
from mmbert.corpus.split import is_heldout

DEV_ARTICLES = frozenset({23, 24})


def label_of(record: Record, label: str) -> str:
    if label == "script":
        return record.script
    if label == "language":
        return f"{record.lang}_{record.script}"
    raise ValueError(f"unknown label {label!r}; expected language or script")


def write_classification_task(out, label: str = "language", languages: list[str] | None = None,
                              max_per_label: int | None = None, min_per_label: int = 5, seed: int = 0,
                              records: list[Record] | None = None) -> dict:
    """Write the three splits under ``out``; returns {split: examples, "labels": n, "dropped": [labels]}."""
    records = load_corpus() if records is None else records
    if languages:
        wanted = set(languages)
        records = [r for r in records if r.lang in wanted or r.lang_id in wanted or f"{r.lang}_{r.script}" in wanted]
        if not records:
            raise ValueError(f"no corpus records for languages {sorted(wanted)[:5]}")
    splits: dict[str, dict[str, list[Record]]] = {s: defaultdict(list) for s in ("train", "dev", "test")}
    for r in records:
        if not r.text.strip():
            continue
        split = "test" if is_heldout(r) else "dev" if r.article in DEV_ARTICLES else "train"
        splits[split][label_of(r, label)].append(r)
    rng = random.Random(seed)
    keep = sorted(k for k, v in splits["train"].items() if len(v) >= min_per_label)
    dropped = sorted(set(splits["train"]) - set(keep))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict = {}
    for split, by_label in splits.items():
        rows = []
        for lab in keep:
            chosen = list(by_label.get(lab, []))
            cap = max_per_label if split == "train" else (max_per_label // 4 if max_per_label else None)
            if cap and len(chosen) > cap:
                chosen = rng.sample(chosen, max(1, cap))
            rows += [{"text": r.text, "label": lab, "lang": r.lang_id} for r in chosen]
        rng.shuffle(rows)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        counts[split] = len(rows)
    return counts | {"labels": len(keep), "dropped": dropped}
