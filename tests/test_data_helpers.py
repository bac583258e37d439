"""Shared helpers of the data tests: a tiny word-level tokenizer, a small multilingual corpus, and the
chi-square survival function (scipy is not a dependency). No tests here."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # ids 0..4, as the project tokenizer


class WordTokenizer:
    """The tokenizer protocol of mmbert.data over a ``tokenizers`` WordLevel model (picklable)."""

    def __init__(self, backend: BackendTokenizer):
        self.backend = backend
        self.pad_id, self.eos_id, self.bos_id, self.unk_id, self.mask_id = range(5)
        self.special_ids = frozenset(range(5))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode_batch(self, texts, add_special_tokens=True):
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(i)


def tiny_tokenizer(texts: list[str]) -> WordTokenizer:
    backend = BackendTokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    return WordTokenizer(backend)


def doc_text(lang: str, i: int, n_words: int) -> str:
    """Document i of a language: a unique marker word, then filler words."""
    return " ".join([f"{lang}#{i}"] + [f"w{(i * 7 + k) % 50}" for k in range(n_words)])


def write_corpus(root: Path, docs_per_lang: dict[str, int] | None = None) -> tuple[Path, dict[str, list[str]]]:
    """A manifest with three languages in three formats (jsonl, txt lines, parquet with two row
    groups). Document lengths vary from 1 to 40 words. Returns (manifest path, texts per language)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = {"eng_Latn": 120, "fao_Latn": 40, "tir_Ethi": 60, **(docs_per_lang or {})}
    texts = {lang: [doc_text(lang, i, 1 + (i * 13) % 40) for i in range(n)] for lang, n in counts.items()}
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "eng.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts["eng_Latn"])))
    half = len(texts["fao_Latn"]) // 2
    (root / "train" / "fao").mkdir(exist_ok=True)
    (root / "train" / "fao" / "a.txt").write_text("\n".join(texts["fao_Latn"][:half]) + "\n")
    (root / "train" / "fao" / "b.txt").write_text("\n".join(texts["fao_Latn"][half:]) + "\n")
    pq.write_table(pa.table({"text": texts["tir_Ethi"]}), root / "tir.parquet", row_group_size=max(1, len(texts["tir_Ethi"]) // 2))
    manifest = root / "manifest.yaml"
    manifest.write_text(
        "languages:\n"
        "  eng_Latn:\n    - {path: train/eng.jsonl, text_field: text}\n"
        "  fao_Latn:\n    - train/fao/*.txt\n"
        "  tir_Ethi:\n    - {path: tir.parquet, text_column: text}\n"
    )
    return manifest, texts


def corpus_tokenizer(texts: dict[str, list[str]]) -> WordTokenizer:
    return tiny_tokenizer([t for ts in texts.values() for t in ts])


def _gammq(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (Numerical Recipes §6.2: series / continued fraction)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:  # series for P, then Q = 1 - P
        ap, s, d = a, 1.0 / a, 1.0 / a
        for _ in range(1000):
            ap += 1
            d *= x / ap
            s += d
            if abs(d) < abs(s) * 1e-15:
                break
        return 1.0 - s * math.exp(-x + a * math.log(x) - gln)
    b, c, d = x + 1 - a, 1e300, 1 / (x + 1 - a)  # Lentz's continued fraction for Q
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom."""
    return _gammq(df / 2.0, x / 2.0)


def chi2_pvalue(counts: dict[str, int], probs: dict[str, float]) -> tuple[float, float]:
    """Pearson's goodness-of-fit statistic of observed ``counts`` against ``probs`` and its p-value."""
    n = sum(counts.values())
    stat = sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items())
    return stat, chi2_sf(stat, len(probs) - 1)
