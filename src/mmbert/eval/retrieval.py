"""Embedding tasks without fine-tuning: retrieval and bitext mining with mean-pooled, L2-normalised
embeddings and cosine similarity, as MTEB scores them (nDCG@10 for retrieval; top-1 accuracy, both
directions, for bitext mining), with tie-aware ranking metrics (``metrics.ranking_scores``).

Data: a BEIR/MTEB retrieval folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) per language,
or ``sentence1<TAB>sentence2`` bitext files per language pair.
"""

from __future__ import annotations

import numpy as np

from mmbert.eval.common import embed, load_model, load_tokenizer
from mmbert.eval.loaders import RetrievalData, parse_file_spec, read_beir, read_bitext_tsv
from mmbert.eval.metrics import ranking_scores
from mmbert.model import MmBertModel


def retrieval_scores(query_emb: np.ndarray, doc_emb: np.ndarray, relevance: np.ndarray) -> dict[str, float]:
    """Cosine (dot of unit vectors) scores of every query against every document, ranked."""
    return ranking_scores(query_emb @ doc_emb.T, relevance)


def bitext_scores(src_emb: np.ndarray, tgt_emb: np.ndarray) -> dict[str, float]:
    """Row i of ``src`` translates row i of ``tgt``: top-1 accuracy each way and their mean."""
    if src_emb.shape != tgt_emb.shape:
        raise ValueError(f"bitext needs aligned rows: {src_emb.shape} vs {tgt_emb.shape}")
    gold = np.eye(len(src_emb))
    fwd = ranking_scores(src_emb @ tgt_emb.T, gold, ks=(1,))["top1_accuracy"]
    bwd = ranking_scores(tgt_emb @ src_emb.T, gold, ks=(1,))["top1_accuracy"]
    return {"top1_accuracy": (fwd + bwd) / 2, "top1_src2tgt": fwd, "top1_tgt2src": bwd, "pairs": len(src_emb)}


def evaluate_retrieval(model, tok, data: RetrievalData, max_length: int = 256) -> dict[str, float]:
    doc_ids, query_ids = sorted(data.corpus), sorted(data.queries)
    docs = embed(model, tok, [data.corpus[d] for d in doc_ids], max_length)
    queries = embed(model, tok, [data.queries[q] for q in query_ids], max_length)
    col = {d: j for j, d in enumerate(doc_ids)}
    relevance = np.zeros((len(query_ids), len(doc_ids)))
    for i, q in enumerate(query_ids):
        for d, r in data.qrels[q].items():
            relevance[i, col[d]] = r
    return retrieval_scores(queries, docs, relevance) | {"queries": len(query_ids), "documents": len(doc_ids)}


def run_retrieval(checkpoint, *, data=None, test=None, tokenizer=None, max_length: int = 256, split: str = "test",
                  lang: str = "und", precision: str | None = None, **_) -> dict:
    """One BEIR folder (``data``) or several (``test``: ``LANG=DIR`` ...). ``precision``: model/precision.py."""
    tok = load_tokenizer(checkpoint, tokenizer)
    model = load_model(MmBertModel, checkpoint, precision=precision)
    specs = test if isinstance(test, (list, tuple)) else [test or data]
    if specs == [None]:
        raise ValueError("give --data DIR (corpus.jsonl, queries.jsonl, qrels/test.tsv) or --test LANG=DIR ...")
    per_language = {}
    for spec in specs:
        spec_lang, path = parse_file_spec(spec)
        per_language[spec_lang or lang] = evaluate_retrieval(model, tok, read_beir(path, split), max_length)
    return {"primary": "ndcg@10", "per_language": per_language}


def run_bitext(checkpoint, *, data=None, test=None, tokenizer=None, max_length: int = 256,
               precision: str | None = None, **_) -> dict:
    """Bitext mining over ``sentence1<TAB>sentence2`` files (``LANG=PATH`` or language in the file name)."""
    tok = load_tokenizer(checkpoint, tokenizer)
    model = load_model(MmBertModel, checkpoint, precision=precision)
    specs = test if isinstance(test, (list, tuple)) else [test or data]
    if specs == [None]:
        raise ValueError("give --test LANG=PAIRS.tsv ... (header sentence1<TAB>sentence2)")
    per_language = {}
    for spec in specs:
        lang, path = parse_file_spec(spec)
        pairs = read_bitext_tsv(path)
        src = embed(model, tok, [a for a, _ in pairs], max_length)
        tgt = embed(model, tok, [b for _, b in pairs], max_length)
        per_language[lang or path.stem] = bitext_scores(src, tgt)
    return {"primary": "top1_accuracy", "per_language": per_language}
