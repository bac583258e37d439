"""Which text of the shipped corpus the tokenizer learns from: the *training* articles, grouped by language id.

The tokenizer (``mmbert.tokenizer``) knows nothing of the corpus: it balances and trains on the texts it is
given. This side decides what they are — the held-out articles (``split.HELDOUT_ARTICLES``) never reach it —
and writes the provenance saved beside the shipped tokenizer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import mmbert.tokenizer as tk
from mmbert.corpus.records import Record
from mmbert.corpus.split import split_heldout


def train_on_corpus(records: list[Record], config: tk.TrainConfig | None = None) -> tuple[tk.Tokenizer, dict]:
    """Train on a corpus's *training* articles, balanced over ``lang_id``; returns the tokenizer and a
    provenance dict (saved beside the shipped tokenizer)."""
    config = config or tk.TrainConfig()
    train, _ = split_heldout(records)
    groups: dict[str, list[str]] = defaultdict(list)
    for r in train:
        groups[r.lang_id].append(r.text)
    texts = tk.balanced_texts(groups, config.tau, config.budget_chars, config.seed)
    tok = tk.train_tokenizer(texts, config)  # looked up at call time: tests wrap it to see the texts
    info = {
        **asdict(config),
        "algorithm": "unigram+byte_fallback",
        "languages": len(groups),
        "training_records": len(train),
        "balanced_texts": len(texts),
        "balanced_chars": sum(map(len, texts)),
        "heldout_articles_excluded": True,
        "final_vocab_size": tok.vocab_size,
    }
    return tok, info
