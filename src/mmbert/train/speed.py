"""CPU speed settings of a training run: torch thread count and (optionally) a compiled model.

Choices:
- Threads: ``torch.get_num_threads()`` defaults to the machine's cores; on a shared machine OpenMP's
  busy-waiting workers collapse when another process takes a core. ``set_threads(n)`` sets torch's intra-op
  threads to ``n`` (None: the number of cores this process may run on, ``os.sched_getaffinity``), and one
  inter-op thread (the trainer runs no parallel graph branches). ``import mmbert`` sets
  ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or a spin count (before torch loads OpenMP;
  ``mmbert/process.py``): idle workers sleep instead of spinning, so a shared core is not burnt waiting (2.5x faster
  steps at 2 threads on a loaded 2-core machine).
- ``matmul_gflops`` measures how fast the machine is right now (a short, fixed matmul), so a run's wall time can be
  read against the machine it ran on: on a shared or virtualised machine the same work varies 5-25% between runs.
- ``compile_model`` wraps the model's encoder layers with ``torch.compile`` (inductor); the module tree
  and state dict are unchanged, so checkpoints, merges and exports see the plain model.
"""

from __future__ import annotations

import os
import time

import torch


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (None: the cores this process may use); returns it."""
    n = available_cores() if not n else int(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; harmless when already set
        pass
    return n


def compile_model(model):
    """``torch.compile`` each encoder layer in place (the module stays the same object); returns the model."""
    for layer in model.model.layers:
        layer.compile(dynamic=True)
    return model


# The probe's shape: a projection of a 4,096-token micro-batch at hidden 256 (the miniature's), fixed so that
# runs of different configs measure the machine the same way.
PROBE_SHAPE = (4096, 256, 1024)


def matmul_gflops(dtype: torch.dtype = torch.float32, shape: tuple[int, int, int] = PROBE_SHAPE,
                  seconds: float = 0.3, device: str | torch.device = "cpu") -> float:
    """GFLOP/s of an (m, k) @ (k, n) matmul in ``dtype`` on this machine now: the best of repeats for about
    ``seconds`` (best, not mean: the question is what the machine can do, not how noisy it is)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # first call: allocation and kernel selection
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() >= deadline:
            break
    return 2 * m * k * n / best / 1e9
