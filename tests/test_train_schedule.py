"""Schedules: hand-computed learning rates and batch sizes."""

import math

import pytest

from mmbert.train.schedule import batch_tokens_at, decay_factor, lr_at, phase_steps


def test_warmup_stable_decay_linear_by_hand():
    # 10 steps: 2 warmup, 4 stable, 4 linear decay to floor 0.1 of peak 1.0
    got = [lr_at(s, 10, 1.0, warmup=0.2, decay="linear", decay_fraction=0.4, floor=0.1) for s in range(10)]
    want = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.25, 0.1]
    assert got == pytest.approx(want, abs=1e-12), f"max diff {max(abs(a - b) for a, b in zip(got, want))}"


def test_decay_shapes_by_hand():
    assert decay_factor("cosine", 0.5) == pytest.approx(0.5)
    assert decay_factor("cosine", 1.0) == pytest.approx(0.0)
    assert decay_factor("inv_sqrt", 0.25) == pytest.approx(0.5)  # 1 - sqrt(1/4)
    assert decay_factor("linear", 0.3) == pytest.approx(0.7)
    # the last decay step reaches the floor exactly, the first is below the peak
    lrs = [lr_at(s, 4, 2.0, decay="inv_sqrt", decay_fraction=1.0) for s in range(4)]
    assert lrs == pytest.approx([2.0 * (1 - math.sqrt(t / 4)) for t in (1, 2, 3, 4)])
    assert lrs[-1] == 0.0


def test_stable_phase_and_errors():
    assert [lr_at(s, 3, 3e-4) for s in range(3)] == [3e-4] * 3
    with pytest.raises(ValueError):
        lr_at(3, 3, 1.0)
    with pytest.raises(ValueError):
        decay_factor("exp", 0.5)


def test_batch_size_warmup_in_whole_units():
    # target 8 units of 100 tokens, from 25% over the first half of 8 steps
    got = [batch_tokens_at(s, 8, 800, 100, warmup=0.5, start=0.25) for s in range(8)]
    assert got == [200, 350 // 100 * 100, 500, 650 // 100 * 100, 800, 800, 800, 800]
    assert batch_tokens_at(0, 8, 800, 100, warmup=0.5, start=0.01) == 100  # never below one unit
    with pytest.raises(ValueError):
        batch_tokens_at(0, 8, 850, 100)


def test_phase_steps_from_tokens():
    assert phase_steps(5, None, 1000) == 5
    assert phase_steps(None, 2500, 1000) == 3
