"""Metric functions against values computed by hand (the arithmetic is in the comments)."""

import math

import pytest

from mmbert.eval.metrics import (
    accuracy, binary_f1, entity_scores, exact_match, get_entities, macro_f1, matthews_corrcoef, mrr_at_k,
    ndcg_at_k, normalize_answer, qa_f1, ranking_scores, recall_at_k, squad_scores, top1_correct,
)


def test_classification_binary():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]  # TP 2, FP 1, TN 2, FN 0
    assert accuracy(preds, labels) == pytest.approx(4 / 5)
    assert binary_f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # 0.8
    assert macro_f1(preds, labels) == pytest.approx((0.8 + 2 * 2 / (2 * 2 + 0 + 1)) / 2)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(3*2*3*2)
    assert matthews_corrcoef(preds, labels) == pytest.approx(4 / 6)


def test_matthews_multiclass_and_degenerate():
    # confusion (gold rows): c = 2, s = 4, t = [1, 2, 1], p = [2, 1, 1]: (2*4 - 5) / sqrt((16-6)(16-6)) = 0.3
    assert matthews_corrcoef([0, 1, 2, 0], [0, 1, 1, 2]) == pytest.approx(0.3)
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction: undefined -> 0
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        accuracy([1, 0], [1, 0, 1])


def test_squad_normalisation_em_f1():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Tórshavn.") == "tórshavn"  # non-ASCII letters stay
    assert exact_match("the Eiffel Tower", ["Eiffel tower."]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred [eiffel tower in paris] vs gold [eiffel tower]: P 2/4, R 1 -> 2/3; vs [paris]: P 1/4, R 1 -> 0.4
    assert qa_f1("Eiffel Tower in Paris", ["Paris", "the Eiffel Tower"]) == pytest.approx(2 / 3)
    assert qa_f1("a", ["the"]) == 0.0  # both normalise to nothing
    s = squad_scores({"q1": "France", "q2": "Eiffel Tower in Paris"}, {"q1": ["france"], "q2": ["Eiffel Tower"], "q3": ["x"]})
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_entities_iob2_iob1_iobes():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-PER", "I-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 2, 2)]  # IOB1
    assert get_entities(["O", "I-PER", "B-PER"]) == [("PER", 1, 1), ("PER", 2, 2)]
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # a type change ends a chunk
    assert get_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]


def test_entity_f1_partial_span_is_wrong():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    # gold 3 entities; pred 4; matching: LOC and ORG (PER is cut short) -> P 2/4, R 2/3
    s = entity_scores(pred, gold)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["per_type"] == {"LOC": 1.0, "MISC": 0.0, "ORG": 1.0, "PER": 0.0}


def test_ndcg_with_ties():
    scores, rel = [0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]
    d = lambda r: 1 / math.log2(r + 1)  # discount of 1-based rank r  # noqa: E731
    # ranks 2 and 3 are tied: each gets the mean gain 0.5
    expected = (0.5 * (d(2) + d(3)) + 1 * d(4)) / (d(1) + d(2))
    assert ndcg_at_k(scores, rel, 10) == pytest.approx(expected)
    # cut at k = 2 inside the tie: only rank 2 of the group counts
    assert ndcg_at_k(scores, rel, 2) == pytest.approx(0.5 * d(2) / (d(1) + d(2)))
    assert ndcg_at_k([3, 2, 1], [1, 0, 0], 10) == pytest.approx(1.0)
    assert ndcg_at_k([1, 1, 1], [0, 0, 0], 10) == 0.0


def test_mrr_recall_top1_with_ties():
    # one relevant among three tied: first relevant equally likely at 1, 2, 3
    assert mrr_at_k([0.5, 0.5, 0.5], [0, 1, 0], 10) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # two relevant among three tied: first relevant at 1 w.p. 2/3, at 2 w.p. 1/3
    assert mrr_at_k([0.5, 0.5, 0.5], [1, 1, 0], 10) == pytest.approx(2 / 3 + 1 / 6)
    assert mrr_at_k([0.5, 0.5, 0.5], [0, 1, 0], 2) == pytest.approx((1 + 1 / 2) / 3)  # rank 3 is beyond k
    assert mrr_at_k([0.9, 0.1], [0, 0], 10) == 0.0
    # doc0 tied with one other at the top: in the top 1 w.p. 1/2; doc2 below both: never
    assert recall_at_k([0.5, 0.5, 0.1], [1, 0, 1], 1) == pytest.approx(0.25)
    assert recall_at_k([0.5, 0.5, 0.1], [1, 0, 1], 3) == pytest.approx(1.0)
    assert top1_correct([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.5)
    r = ranking_scores([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [1, 0]], ks=(1,))
    assert r["top1_accuracy"] == pytest.approx(0.5) and r["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
