"""The embedding task's pieces: no duplicate text within a batch, one micro-batch per rank, cached = uncached."""

from __future__ import annotations

import random

import pytest
import torch

from mmbert.model import ModelConfig, MmBertForEmbedding
from mmbert.train.embedding import EmbeddingSettings, EmbeddingTask, feature_keys, no_duplicate_batches
from tests.conftest import assert_close


def _features(n: int, vocab: int, seed: int = 0, negatives: int = 0, shared_positives: int = 5) -> list[dict]:
    """Anchors unique; positives drawn from a few texts (as UDHR pairs share the English article)."""
    rng = random.Random(seed)
    pool = [[rng.randrange(5, vocab) for _ in range(rng.randint(3, 9))] for _ in range(shared_positives)]
    out = []
    for _ in range(n):
        anchor = [rng.randrange(5, vocab) for _ in range(rng.randint(3, 12))]
        negs = [[rng.randrange(5, vocab) for _ in range(rng.randint(3, 9))] for _ in range(negatives)]
        out.append({"texts": [anchor, rng.choice(pool), *negs]})
    return out


def test_no_duplicate_text_within_a_batch():
    feats = _features(200, 100, shared_positives=12)
    keys = [feature_keys(f) for f in feats]
    batches = no_duplicate_batches(keys, batch_size=8, seed=3, epoch=0)
    for b in batches:
        texts = [t for i in b for t in keys[i]]
        assert len(texts) == len(set(texts)), f"duplicate text in batch {b}"
        assert 2 <= len(b) <= 8
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    # only what cannot form a batch of 2 is left out; most batches are full
    assert len(used) >= 190 and sum(len(b) == 8 for b in batches) >= len(batches) - 3
    # seeded: same seed and epoch -> same plan; another epoch -> another order
    assert no_duplicate_batches(keys, 8, 3, 0) == batches
    assert no_duplicate_batches(keys, 8, 3, 1) != batches
    # a pool of 5 positives caps a batch at 5 examples
    small = [feature_keys(f) for f in _features(50, 100, shared_positives=5)]
    assert max(len(b) for b in no_duplicate_batches(small, 8, 0, 0)) == 5


def test_task_plans_and_splits_steps_across_ranks():
    task = EmbeddingTask(EmbeddingSettings(batch_size=6), world_size=2)
    feats = _features(40, 100, shared_positives=40)
    steps = task.plan_epoch(feats, seed=0, epoch=0)
    assert all(len(s) == 6 for s in steps[:-1])
    step = steps[0]
    shares = [task.micro_batches(step, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [1, 1]  # one micro-batch per rank: the loss needs the whole share
    assert sorted(shares[0][0] + shares[1][0]) == sorted(step)


def test_collate_lays_texts_out_by_column_with_token_bounded_chunks():
    task = EmbeddingTask(EmbeddingSettings(batch_size=4, cached=True), micro_batch_tokens=20)
    feats = _features(4, 100, negatives=1)
    b = task.collate(feats)
    assert b["seqs"] == [f["texts"][c] for c in range(3) for f in feats]
    assert b["units"] == 4 and b["num_tokens"] == sum(map(len, b["seqs"]))
    bounds = b["chunks"]
    assert bounds[0][0] == 0 and bounds[-1][1] == 12 and all(x[1] == y[0] for x, y in zip(bounds, bounds[1:]))
    for a, e in bounds:
        assert e - a == 1 or sum(len(s) for s in b["seqs"][a:e]) <= 20
    with pytest.raises(ValueError, match="different numbers of texts"):
        task.collate([feats[0], {"texts": feats[1]["texts"][:2]}])


@pytest.mark.parametrize("settings", [dict(), dict(symmetric=True, matryoshka_dims=[64, 16])])
def test_task_cached_equals_uncached(settings):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny").replace(attention_dropout=0.1, mlp_dropout=0.1, embedding_dropout=0.1)
    model = MmBertForEmbedding(cfg).train()
    feats = _features(10, cfg.vocab_size, negatives=1, shared_positives=10)
    results = []
    for cached in (False, True):
        task = EmbeddingTask(EmbeddingSettings(batch_size=10, cached=cached, **settings), micro_batch_tokens=24)
        batch = task.collate(feats)
        assert len(batch["chunks"]) > 3
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        if cached:
            loss = task.forward_backward(model, batch, torch.device("cpu"), scale=2.0)
        else:  # the reference: the same chunks' forwards, graphs kept (dropout draws in the same order)
            from mmbert.train.gradcache import forward_backward

            chunks = [batch["seqs"][a:e] for a, e in batch["chunks"]]
            loss = forward_backward(lambda s: task._embed(model, s, torch.device("cpu")), chunks,
                                    task._loss_of(batch["units"]), scale=2.0)
        results.append((loss, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert abs(l0.item() - l1.item()) < 1e-5
    for k in g0:
        assert_close(g1[k], g0[k], 1e-5, k)
    # and without dropout the one-forward loss equals them too (chunking changes nothing else)
    model.eval()
    task = EmbeddingTask(EmbeddingSettings(batch_size=10, **settings))
    b = task.collate(feats)
    one = task.loss(model, b, torch.device("cpu"))
    cached = EmbeddingTask(EmbeddingSettings(batch_size=10, cached=True, **settings), micro_batch_tokens=24)
    assert abs(one.item() - cached.forward_backward(model, cached.collate(feats), torch.device("cpu"), 1.0).item()) < 1e-5
