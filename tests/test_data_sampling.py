"""Temperature sampling p ∝ n^τ, its empirical frequencies (chi-square), and the shard partition."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mmbert.data import assign_shards, draw_languages, language_probabilities
from mmbert.data.sampling import epoch_shard_order
from tests.test_data_helpers import chi2_pvalue, chi2_sf

SIZES = {"eng_Latn": 1_000_000, "fao_Latn": 10_000, "tir_Ethi": 100}


def test_probabilities_hand_computed():
    p = language_probabilities(SIZES, 0.5)  # sqrt: 1000, 100, 10 -> /1110
    for k, v in zip(SIZES, (1000 / 1110, 100 / 1110, 10 / 1110)):
        assert math.isclose(p[k], v, rel_tol=1e-12), (k, p[k], v)
    assert language_probabilities(SIZES, 1.0) == pytest.approx({k: v / 1_010_100 for k, v in SIZES.items()}, rel=1e-12)
    assert language_probabilities(SIZES, 0.0) == {k: 1 / 3 for k in SIZES}  # exactly uniform
    tiny = language_probabilities(SIZES, 1e-9)
    assert max(abs(v - 1 / 3) for v in tiny.values()) < 1e-7


def test_probabilities_huge_sizes_do_not_overflow():
    p = language_probabilities({"a": 10**15, "b": 10**12}, 40.0)
    assert p["a"] == pytest.approx(1.0) and 0 <= p["b"] < 1e-100


def test_probabilities_reject_empty_and_zero():
    with pytest.raises(ValueError, match="tir_Ethi"):
        language_probabilities({"eng_Latn": 5, "tir_Ethi": 0}, 0.5)
    with pytest.raises(ValueError):
        language_probabilities({}, 0.5)
    with pytest.raises(ValueError):
        language_probabilities(SIZES, -0.1)


@pytest.mark.parametrize("x, df, expected", [(3.841459, 1, 0.05), (5.991465, 2, 0.05), (13.81551, 2, 0.001),
                                              (11.34487, 3, 0.01), (0.5, 4, 0.9735010), (40.0, 10, 1.7e-5)])
def test_chi2_sf_matches_tables(x, df, expected):
    assert chi2_sf(x, df) == pytest.approx(expected, rel=2e-2)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.3, 0.0])
def test_empirical_frequencies_match_p(tau):
    probs = language_probabilities({**SIZES, "cmn_Hani": 50_000}, tau)
    draws = draw_languages(probs, 40_000, np.random.default_rng(123))
    stat, pvalue = chi2_pvalue(Counter(draws), probs)
    assert pvalue > 1e-3, f"chi2={stat:.2f} (df=3), p={pvalue:.2e}; counts {Counter(draws)} vs {probs}"


def test_chi_square_detects_wrong_probabilities():
    probs = language_probabilities(SIZES, 0.5)
    draws = draw_languages(language_probabilities(SIZES, 0.6), 40_000, np.random.default_rng(0))
    assert chi2_pvalue(Counter(draws), probs)[1] < 1e-6  # the test has power


@pytest.mark.parametrize("num_shards", [1, 3, 7, 8, 20])
@pytest.mark.parametrize("G", [1, 4, 8])
def test_shard_assignment_partitions_every_document(num_shards, G):
    docs_per_shard = 13
    order = epoch_shard_order(num_shards, seed=5, lang="eng_Latn", epoch=2)
    assert sorted(order) == list(range(num_shards))
    seen = Counter()
    for g in range(G):
        for shard, modulus, residue in assign_shards(order, G, g):
            seen.update((shard, i) for i in range(docs_per_shard) if i % modulus == residue)
    assert seen == Counter({(s, i): 1 for s in range(num_shards) for i in range(docs_per_shard)})


def test_epoch_orders_differ_and_repeat():
    assert epoch_shard_order(50, 0, "eng_Latn", 0) == epoch_shard_order(50, 0, "eng_Latn", 0)
    assert epoch_shard_order(50, 0, "eng_Latn", 0) != epoch_shard_order(50, 0, "eng_Latn", 1)
    assert epoch_shard_order(50, 0, "eng_Latn", 0) != epoch_shard_order(50, 0, "fao_Latn", 0)
