"""The encoder's projections through MKL (``F.linear``) vs oneDNN (``torch.ops.mkldnn._linear_pointwise``), fp32
and bf16, same inputs, same process: why fp32 inference routes its linears through oneDNN
(``mmbert.model.modeling.linear``) and bf16 does not.

    python benchmarks/linear_backends.py --rows 8552 --hidden 384 --intermediate 1152   # mmbert-small, case (a)

Prints GFLOP/s of each (best of ``--reps``) and the ratio oneDNN / MKL for every projection shape of a layer.
Benchmark alone: two torch processes on 2 cores slow each other 4-9x.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8552)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--intermediate", type=int, default=1152)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    h, i = args.hidden, args.intermediate
    shapes = {"Wqkv": (h, 3 * h), "attn.Wo": (h, h), "Wi half": (h, i), "mlp.Wo": (i, h)}
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for name, (k, n) in shapes.items():
            x, w = torch.randn(args.rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            flops = 2 * args.rows * k * n / 1e9
            mkl = flops / best_seconds(lambda: F.linear(x, w), args.reps)
            onednn = flops / best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
                                          args.reps)
            print(f"{str(dtype).removeprefix('torch.'):9s} {name:8s} {k:5d} -> {n:5d}: F.linear {mkl:6.0f}  "
                  f"oneDNN {onednn:6.0f} GFLOP/s  oneDNN/F.linear {onednn / mkl:.2f}x", flush=True)


if __name__ == "__main__":
    main()
