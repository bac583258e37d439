"""CPU speed settings of a training run: torch thread count and (optionally) a compiled model.

Choices:
- Threads: ``torch.get_num_threads()`` defaults to the machine's cores; on a shared machine OpenMP's
  busy-waiting workers collapse when another process takes a core. ``set_threads(n)`` sets torch's intra-op
  threads to ``n`` (None: the number of cores this process may run on, ``os.sched_getaffinity``), and one
  inter-op thread (the trainer runs no parallel graph branches). ``import mmbert`` sets
  ``OMP_WAIT_POLICY=PASSIVE`` unless set (before torch loads OpenMP): idle workers sleep instead of spinning, so
  a shared core is not burnt waiting (2.5x faster steps at 2 threads on a loaded 2-core machine).
- ``compile_model`` wraps the model's encoder layers with ``torch.compile`` (inductor); the module tree
  and state dict are unchanged, so checkpoints, merges and exports see the plain model.
"""

from __future__ import annotations

import os

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
