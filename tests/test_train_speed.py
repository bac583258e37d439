"""train/speed.py: thread settings and the machine-speed probe the main job's report prints."""

import math

import torch

from mmbert.train import speed


def test_matmul_gflops_is_flops_over_the_best_time(monkeypatch):
    # a fake clock: every matmul "takes" 0.5 s except one that takes 0.25 s; the probe reports the best
    ticks = iter([0.0, 0.0, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 1.25, 1.25])
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(ticks))
    got = speed.matmul_gflops(torch.float32, (8, 4, 2), seconds=1.0)
    assert math.isclose(got, 2 * 8 * 4 * 2 / 0.25 / 1e9)


def test_matmul_gflops_on_this_machine_is_positive_and_finite():
    for dtype in (torch.float32, torch.bfloat16):
        g = speed.matmul_gflops(dtype, (256, 64, 128), seconds=0.05)
        assert math.isfinite(g) and g > 0


def test_set_threads_defaults_to_the_cores_this_process_may_use():
    before = torch.get_num_threads()
    try:
        assert speed.set_threads() == speed.available_cores() == torch.get_num_threads()
        assert speed.set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
