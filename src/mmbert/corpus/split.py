"""The fixed held-out split: articles 25-30 of every version never enter training.

They serve per-language held-out MLM loss and bitext retrieval (the same article in two languages is
a translation pair). Splitting by article number, not at random, keeps the split identical for every
language and every build, and keeps whole translation units on one side.
"""

from __future__ import annotations

from mmbert.corpus.records import Record

HELDOUT_ARTICLES = frozenset(range(25, 31))


def is_heldout(record: Record) -> bool:
    return record.article in HELDOUT_ARTICLES


def split_heldout(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, heldout), each in input order."""
    train = [r for r in records if not is_heldout(r)]
    heldout = [r for r in records if is_heldout(r)]
    return train, heldout
