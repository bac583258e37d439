"""Evaluation metrics as pure functions over plain Python / NumPy values.

Each follows the reference implementation its benchmark reports with:
- classification: accuracy, per-class F1 (binary F1 of the positive class, macro-F1), Matthews
  correlation in its multi-class form (Gorodkin 2004; scikit-learn's ``matthews_corrcoef``), as GLUE's CoLA;
- regression: Pearson and Spearman correlation (average ranks for ties, as scipy), as GLUE's STS-B;
- extractive QA: SQuAD v1.1's ``evaluate-v1.1.py`` (lower-case, strip punctuation and the articles
  a/an/the, collapse whitespace; EM and token-overlap F1, the maximum over the gold answers);
- entity-level F1: conlleval / seqeval's default (non-strict) chunking of IOB1, IOB2, IOE and IOBES
  tags; an entity counts only when its type and both boundaries match, so a partial span is one false
  positive and one false negative;
- ranking: nDCG@k, MRR@k, recall@k and top-1 accuracy, **tie-aware**: documents with equal scores are
  treated as a random order and the expected value is returned (McSherry & Najork, ECIR 2008), so a
  metric never depends on the order in which the corpus happened to be listed.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from math import comb

import numpy as np

# ---- classification ---------------------------------------------------------------------------------


def accuracy(preds: Sequence, labels: Sequence) -> float:
    _check_lengths(preds, labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels) if len(labels) else 0.0


def f1_per_class(preds: Sequence, labels: Sequence) -> dict:
    """``{class: F1}`` over every class seen in ``labels`` or ``preds``; F1 = 0 when a class has no hit."""
    _check_lengths(preds, labels)
    classes = sorted(set(labels) | set(preds), key=str)
    out = {}
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        out[c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return out


def macro_f1(preds: Sequence, labels: Sequence) -> float:
    """Unweighted mean of the per-class F1 over the classes present in ``labels``."""
    per = f1_per_class(preds, labels)
    present = sorted(set(labels), key=str)
    return sum(per[c] for c in present) / len(present) if present else 0.0


def binary_f1(preds: Sequence, labels: Sequence, positive=1) -> float:
    """F1 of the positive class (GLUE's MRPC / QQP F1)."""
    _check_lengths(preds, labels)
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(preds: Sequence, labels: Sequence) -> float:
    """Multi-class MCC from the confusion matrix C (rows gold, columns predicted):
    (c·s − Σ_k p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)), with c = trace, s = total; 0 when undefined."""
    _check_lengths(preds, labels)
    classes = sorted(set(labels) | set(preds), key=str)
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, y in zip(preds, labels):
        cm[index[y], index[p]] += 1
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    denom = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (p * t).sum()) / denom) if denom else 0.0


def classification_scores(preds: Sequence, labels: Sequence, positive=None) -> dict[str, float]:
    """accuracy, macro-F1 and MCC; plus binary ``f1`` of ``positive`` when given."""
    out = {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels),
           "mcc": matthews_corrcoef(preds, labels)}
    if positive is not None:
        out["f1"] = binary_f1(preds, labels, positive)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as scipy's ``rankdata``."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def regression_scores(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (GLUE's STS-B) and the mean squared error; a constant side gives
    correlation 0 (undefined)."""
    _check_lengths(preds, labels)
    p, y = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        den = math.sqrt(float((a * a).sum() * (b * b).sum()))
        return float((a * b).sum() / den) if den > 0 else 0.0

    return {"pearson": corr(p, y), "spearman": corr(_ranks(p), _ranks(y)), "mse": float(((p - y) ** 2).mean())}


def _check_lengths(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} labels")


# ---- extractive QA (SQuAD v1.1 official script) -----------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower-case, drop ASCII punctuation, drop a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in gold_answers))


def qa_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """Token-overlap F1 after normalisation, maximised over the gold answers."""
    return max(_token_f1(prediction, g) for g in gold_answers)


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 in percent over the questions of ``golds`` (a missing prediction scores 0)."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(exact_match(predictions.get(q, ""), g) for q, g in golds.items())
    f1 = sum(qa_f1(predictions.get(q, ""), g) for q, g in golds.items())
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


# ---- entity-level F1 (conlleval / seqeval default mode) ---------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", ""):
        return "O", ""
    prefix, _, etype = tag.partition("-")
    if not etype:  # a bare type ("PER") counts as inside, as conlleval reads it
        return "I", prefix
    return prefix, etype


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag == "B" and tag in ("B", "S", "O"):
        return True
    if prev_tag == "I" and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as ``(type, first, last)`` (inclusive), conlleval's rules."""
    out = []
    prev_tag, prev_type, start = "O", "", None
    for i, t in enumerate(list(tags) + ["O"]):
        tag, type_ = _split_tag(t)
        if start is not None and _end_of_chunk(prev_tag, tag, prev_type, type_):
            out.append((prev_type, start, i - 1))
            start = None
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            start = i
        prev_tag, prev_type = tag, type_
    return out


def entity_scores(pred_seqs: Sequence[Sequence[str]], gold_seqs: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 over exact entity matches, plus ``per_type`` F1."""
    _check_lengths(pred_seqs, gold_seqs)
    pred, gold = set(), set()
    for s, (p, g) in enumerate(zip(pred_seqs, gold_seqs)):
        if len(p) != len(g):
            raise ValueError(f"sentence {s}: {len(p)} predicted tags for {len(g)} gold tags")
        pred |= {(s, *e) for e in get_entities(p)}
        gold |= {(s, *e) for e in get_entities(g)}
    out = _prf(len(pred & gold), len(pred), len(gold))
    types = sorted({e[1] for e in pred | gold})
    out["per_type"] = {
        t: _prf(len({e for e in pred & gold if e[1] == t}), sum(e[1] == t for e in pred),
                sum(e[1] == t for e in gold))["f1"]
        for t in types
    }
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


# ---- ranking (tie-aware) ----------------------------------------------------------------------------


def _tie_groups(scores: np.ndarray) -> list[np.ndarray]:
    """Document indices grouped by equal score, best group first."""
    order = np.argsort(-scores, kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or scores[order[i]] != scores[order[start]]:
            groups.append(order[start:i])
            start = i
    return groups


def ndcg_at_k(scores: Sequence[float], relevance: Sequence[float], k: int = 10) -> float:
    """Tie-aware nDCG@k with gain = relevance and discount 1/log2(rank + 1): within a group of tied
    documents every position receives the group's mean gain (McSherry & Najork 2008). 0 with no relevant."""
    scores, rel = np.asarray(scores, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(scores) + 2))
    dcg, pos = 0.0, 0
    for g in _tie_groups(scores):
        if pos >= k:
            break
        n_in = min(len(g), k - pos)
        dcg += rel[g].mean() * discounts[pos:pos + n_in].sum()
        pos += len(g)
    ideal = np.sort(rel)[::-1][:k]
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    return float(dcg / idcg) if idcg > 0 else 0.0


def mrr_at_k(scores: Sequence[float], relevance: Sequence[float], k: int = 10) -> float:
    """Expected reciprocal rank of the first relevant document (0 beyond rank k), tied documents in a
    uniformly random order: in the first group holding m relevant of g documents, the first relevant is at
    group offset i with probability C(g − i, m − 1) / C(g, m)."""
    scores, rel = np.asarray(scores, dtype=np.float64), np.asarray(relevance) > 0
    pos = 0
    for g in _tie_groups(scores):
        m = int(rel[g].sum())
        if m:
            return sum(comb(len(g) - i, m - 1) / comb(len(g), m) / (pos + i)
                       for i in range(1, len(g) - m + 2) if pos + i <= k)
        pos += len(g)
    return 0.0


def recall_at_k(scores: Sequence[float], relevance: Sequence[float], k: int) -> float:
    """Expected fraction of the relevant documents ranked within the top k, ties in random order: a relevant
    document behind ``above`` better ones and in a tie of ``g`` is in the top k with probability
    clip((k − above) / g, 0, 1)."""
    scores, rel = np.asarray(scores, dtype=np.float64), np.asarray(relevance) > 0
    if not rel.any():
        return 0.0
    hits = 0.0
    for d in np.flatnonzero(rel):
        above = int((scores > scores[d]).sum())
        tied = int((scores == scores[d]).sum())
        hits += min(max((k - above) / tied, 0.0), 1.0)
    return hits / int(rel.sum())


def ranking_scores(score_matrix: np.ndarray, relevance_matrix: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Mean over queries (rows) of nDCG@10, MRR@10, recall@k for each k, and top-1 accuracy (= recall@1
    for one relevant document per query)."""
    score_matrix, relevance_matrix = np.asarray(score_matrix), np.asarray(relevance_matrix)
    if score_matrix.shape != relevance_matrix.shape:
        raise ValueError(f"scores {score_matrix.shape} and relevance {relevance_matrix.shape} differ in shape")
    rows = list(zip(score_matrix, relevance_matrix))
    n = max(len(rows), 1)
    out = {"ndcg@10": sum(ndcg_at_k(s, r, 10) for s, r in rows) / n,
           "mrr@10": sum(mrr_at_k(s, r, 10) for s, r in rows) / n}
    for k in ks:
        out[f"recall@{k}"] = sum(recall_at_k(s, r, k) for s, r in rows) / n
    out["top1_accuracy"] = sum(top1_correct(s, r) for s, r in rows) / n
    return out


def top1_correct(scores: Sequence[float], relevance: Sequence[float]) -> float:
    """Probability that the best-scored document (random among ties) is relevant."""
    scores, rel = np.asarray(scores, dtype=np.float64), np.asarray(relevance) > 0
    best = scores == scores.max()
    return float(rel[best].sum() / best.sum())
