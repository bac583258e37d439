"""Does ``torch.compile`` pay for inference? mmbert-small's shape (shipped 16k vocabulary, random seeded weights),
the ``infer-var`` case of ``speed.py`` (32 texts of 16-512 tokens, one unpadded call), the same weights plain and
compiled in one process, alternated; prints compile time, max |diff| and the tokens/s ratio.

    python benchmarks/compile_infer.py --precision bf16 --part mlp     # each layer's MLP and its norm
    python benchmarks/compile_infer.py --precision bf16 --part layer   # whole layers (graph breaks at attention)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.speed import make_batch  # noqa: E402
from mmbert import ModelConfig, MmBertModel  # noqa: E402
from mmbert.model.modeling import unpad_input  # noqa: E402
from mmbert.model.precision import apply_precision  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8"])
    p.add_argument("--part", default="mlp", choices=["mlp", "layer"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_preset("mmbert-small", vocab_size=16_384)
    base = MmBertModel(cfg).init_weights(seed=0).eval()
    plain = apply_precision(copy.deepcopy(base), args.precision)
    compiled = apply_precision(copy.deepcopy(base), args.precision)
    for layer in compiled.layers:
        if args.part == "mlp":
            layer.mlp.compile(dynamic=True)
            layer.mlp_norm.compile(dynamic=True)
        else:
            layer.compile(dynamic=True)
    ids, mask, _ = make_batch("infer-var", cfg.vocab_size)
    flat, _, cu = unpad_input(ids, mask)
    t = time.perf_counter()
    with torch.inference_mode():
        ref = plain(flat, cu_seqlens=cu).last_hidden_state
        for _ in range(2):  # the first call compiles, the second may recompile for a dynamic dimension
            out = compiled(flat, cu_seqlens=cu).last_hidden_state
    print(f"compile + 2 calls {time.perf_counter() - t:.1f} s; max |diff| {(out - ref).abs().max().item():.2e}")
    times: dict[str, list[float]] = {"plain": [], "compiled": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, model in (("plain", plain), ("compiled", compiled)):
                t = time.perf_counter()
                model(flat, cu_seqlens=cu)
                times[name].append(time.perf_counter() - t)
    n = int(mask.sum())
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"{args.precision} {args.part}: plain {n / med['plain']:,.0f} tokens/s, compiled "
          f"{n / med['compiled']:,.0f} tokens/s, ratio {med['plain'] / med['compiled']:.3f}")


if __name__ == "__main__":
    main()
