"""Process-wide CPU settings that ``import mmbert`` applies before torch loads (each one yields to the user's own).

- OpenMP waits: ``OMP_WAIT_POLICY=PASSIVE`` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set. Spinning
  workers collapse when another process shares the cores: one training step of the miniature with 2 threads on a
  2-core machine running other jobs took 2.5x longer with spinning than with passive waits; two steps side by side
  made 8,068 tokens/s together with PASSIVE, 7,319 with a 3,000-spin bound and 3,077 with 100,000 (libgomp's
  default: 300,000) (``benchmarks/train_step.py``; benchmarks/README.md).
- glibc's allocator keeps large freed blocks instead of handing them back to the kernel: ``M_MMAP_THRESHOLD``
  256 MiB and ``M_TRIM_THRESHOLD`` 512 MiB (``mallopt``), unless ``MALLOC_MMAP_THRESHOLD_`` /
  ``MALLOC_TRIM_THRESHOLD_`` are set or ``MMBERT_MALLOC=default``. By default glibc serves a block above a dynamic
  threshold (128 KiB at start) with a fresh ``mmap`` and unmaps it on free, so every temporary of a forward
  (8 MB for 8,080 x 256 fp32) is page-faulted in again at each use. Whether the threshold has adapted depends on
  the allocation history, so it differed between processes of the same script: a mixed-dtype add of that size
  took 6-7 ms in 4 of 6 fresh processes and 0.7-1.0 ms in the others, 0.5-1.0 ms in 6 of 6 with the thresholds
  raised. The cost: up to the trim threshold of freed memory stays with the process until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 256 << 20  # above every temporary of the encoders' forward and backward at the shipped sizes
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

applied: dict[str, object] = {}  # what configure() did, for reports and tests


def configure() -> dict[str, object]:
    """Apply the settings once (idempotent); returns what was applied."""
    if applied:
        return applied
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    applied["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    applied["malloc"] = _tune_malloc()
    return applied


def _tune_malloc() -> str:
    if os.environ.get("MMBERT_MALLOC", "").lower() == "default":
        return "default (MMBERT_MALLOC=default)"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "the environment's MALLOC_*_THRESHOLD_"
    if not sys.platform.startswith("linux"):
        return "default (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return "default (no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "default (mallopt refused)"
    return f"mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
