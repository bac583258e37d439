"""What ``import mmbert``'s allocator settings (``mmbert/process.py``) change: a residual-sized temporary in fresh processes.

    python benchmarks/allocator.py --processes 6

Each process imports mmbert (glibc's defaults with ``MMBERT_MALLOC=default``, else the raised mmap / trim thresholds)
and times an out-of-place mixed-dtype add of 8,080 x 256 (``x_fp32 + y_bf16``, what a residual add under bf16
autocast is; its result and the converted operand are fresh 8 MB blocks): the best of 3 x 50 calls, in ms. glibc's
dynamic mmap threshold makes the default's time depend on the process's allocation history, so it is measured in
several fresh processes, alternated. Benchmark alone: two torch processes on 2 cores slow each other 4-9x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = r"""
import time, mmbert, torch
x = torch.randn(8080, 256); y = torch.randn(8080, 256).bfloat16()
def best():
    x + y
    t = time.perf_counter()
    for _ in range(50):
        x + y
    return (time.perf_counter() - t) / 50 * 1e3
print(min(best() for _ in range(3)))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=6, help="fresh processes per setting")
    args = p.parse_args()
    times: dict[str, list[float]] = {"glibc defaults": [], "mmbert thresholds": []}
    for _ in range(args.processes):
        for name, extra in (("glibc defaults", {"MMBERT_MALLOC": "default"}), ("mmbert thresholds", {})):
            env = {k: v for k, v in os.environ.items()
                   if k not in ("MMBERT_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
            out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True,
                                 check=True)
            times[name].append(round(float(out.stdout.split()[-1]), 2))
    for name, ms in times.items():
        print(json.dumps({"setting": name, "ms_per_add_by_process": ms, "median_ms": sorted(ms)[len(ms) // 2]}))


if __name__ == "__main__":
    main()
