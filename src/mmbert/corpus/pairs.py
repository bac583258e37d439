"""Translation pairs from the corpus, for contrastive (embedding) training: ``mmbert corpus pairs --out DIR``.

Each pair is one article of the declaration in some version (``anchor``) and the same article in the pivot
version, English by default (``positive``): the bitext-mining shape that ``udhr-bitext`` evaluates
(``eval/udhr.py``). Rows carry sentence-transformers' column names, so the files train with
``mmbert finetune --task embedding`` and with sentence-transformers' own trainer alike.

Splits never touch the held-out articles 25-30 (``split.HELDOUT_ARTICLES``), on which ``udhr-bitext`` is
measured: ``train`` holds articles 1-20, ``dev`` articles 21-24 (four candidates per anchor in a dev
retrieval, chance 25%), for a seeded sample of 128 versions (``--dev-versions``). The preamble (article 0) is left out. Every version except the pivot contributes
each article it shares with the pivot; a batch that holds two pairs of one article would hold the pivot's
text twice, which the no-duplicates batching of the embedding task prevents, so in-batch negatives are
never translations of the anchor.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

from mmbert.corpus.records import Record, load_corpus
from mmbert.corpus.split import HELDOUT_ARTICLES

PIVOT = "eng_Latn"
TRAIN_ARTICLES = tuple(range(1, 21))
DEV_ARTICLES = tuple(range(21, 25))
DEV_VERSIONS = 128  # dev pairs: a seeded sample of versions (4 x 128 = 512 anchors, seconds per evaluation)


def translation_pairs(records: list[Record], articles: Iterable[int], pivot: str = PIVOT,
                      languages: Iterable[str] | None = None) -> list[dict]:
    """``{"anchor", "positive", "lang", "article"}`` rows: each version's article and the pivot's, sorted by
    version then article."""
    articles = set(articles)
    leaked = sorted(articles & HELDOUT_ARTICLES)
    if leaked:
        raise ValueError(f"articles {leaked} are held out for evaluation (25-30); pairs must not include them")
    pivot_text = {r.article: r.text for r in records if r.lang_id == pivot}
    if not pivot_text:
        raise ValueError(f"the pivot version {pivot!r} is not in the corpus")
    wanted = set(languages) if languages is not None else None
    rows = []
    for r in sorted(records, key=lambda r: (r.lang_id, r.article)):
        if r.lang_id == pivot or r.article not in articles or r.article not in pivot_text:
            continue
        if wanted is not None and r.lang_id not in wanted and r.lang not in wanted:
            continue
        if r.text.strip() and r.text != pivot_text[r.article]:  # a version identical to the pivot teaches nothing
            rows.append({"anchor": r.text, "positive": pivot_text[r.article], "lang": r.lang_id, "article": r.article})
    return rows


def write_pairs(out_dir: str | Path, records: list[Record] | None = None, *, pivot: str = PIVOT,
                train_articles: Iterable[int] = TRAIN_ARTICLES, dev_articles: Iterable[int] = DEV_ARTICLES,
                languages: Iterable[str] | None = None, dev_versions: int | None = DEV_VERSIONS,
                seed: int = 0) -> dict[str, Path]:
    """``DIR/train.jsonl`` and ``DIR/dev.jsonl``; returns {split: path}. The dev split holds a seeded sample of
    ``dev_versions`` versions (None: all), since the dev metric runs at every evaluation of a training run."""
    records = load_corpus() if records is None else records
    train_articles, dev_articles = tuple(train_articles), tuple(dev_articles)
    overlap = sorted(set(train_articles) & set(dev_articles))
    if overlap:
        raise ValueError(f"articles {overlap} are in both the train and the dev split")
    languages = list(languages) if languages is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, articles in (("train", train_articles), ("dev", dev_articles)):
        rows = translation_pairs(records, articles, pivot, languages)
        versions = sorted({r["lang"] for r in rows})
        if split == "dev" and dev_versions is not None and len(versions) > dev_versions:
            keep = set(random.Random(seed).sample(versions, dev_versions))
            rows = [r for r in rows if r["lang"] in keep]
        if not rows:
            raise ValueError(f"no {split} pairs (articles {list(articles)}, languages {languages})")
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths[split] = path
    return paths
