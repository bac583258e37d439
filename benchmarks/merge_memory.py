"""Peak memory of ``mmbert merge`` on random mmBERT-sized checkpoints, against one checkpoint's size.

Writes a base and N random checkpoints with the mmbert key set and shapes (mmbert-base: vocab 256000,
hidden 768, intermediate 1152, 22 layers; 307M parameters, 1.23 GB in fp32), then runs the merge in a
child process that reports its own peak RSS (``VmHWM`` in /proc/self/status: anonymous and file-backed
pages, so memory-mapped reads count), so this process's buffers are never mistaken for the merge's.
A child that only imports the merge code gives the interpreter baseline. ``--naive`` also runs the obvious
in-memory merge (``load_file`` every checkpoint, merge, ``save_file``) as the reference.

    python benchmarks/merge_memory.py                         # full mmbert-base, 3 models + base
    python benchmarks/merge_memory.py --scale 0.25 --naive    # vocab and layers x 0.25
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmbert.merge.safetensors_io import DTYPE_NAMES, TensorInfo, write_streaming
from mmbert.model.config import PRESETS, ModelConfig

GB = 1e9


def mmbert_layout(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, TensorInfo]:
    """The tensors of an ``MmBertForMaskedLM`` checkpoint (transformers' ModernBERT names; tied decoder.weight
    not stored; layer 0 has no attn_norm, as in ModernBERT)."""
    h, i, v, d = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, DTYPE_NAMES[dtype]
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.tok_embeddings.weight": (v, h),
                                          "model.embeddings.norm.weight": (h,)}
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        if n:
            shapes[p + "attn_norm.weight"] = (h,)
        shapes |= {p + "attn.Wqkv.weight": (3 * h, h), p + "attn.Wo.weight": (h, h), p + "mlp_norm.weight": (h,),
                   p + "mlp.Wi.weight": (2 * i, h), p + "mlp.Wo.weight": (h, i)}
    shapes |= {"model.final_norm.weight": (h,), "head.dense.weight": (h, h), "head.norm.weight": (h,),
               "decoder.bias": (v,)}
    return {k: TensorInfo(d, s) for k, s in shapes.items()}


def write_random(path: Path, layout: dict[str, TensorInfo], model: int, noise: float = 1e-3) -> None:
    """Base (model 0) ~ N(0, 0.02²); model m = base + N(0, noise²). Seeded per tensor, so only one tensor
    is ever in memory."""

    def tensors():
        for t, (name, info) in enumerate(layout.items()):
            g = torch.Generator().manual_seed(t)
            x = torch.randn(info.shape, generator=g).mul_(0.02)
            if model:
                g.manual_seed(1_000_003 * model + t)
                x.add_(torch.randn(info.shape, generator=g), alpha=noise)
            yield name, x.to(info.torch_dtype)

    write_streaming(path / "model.safetensors", layout, tensors())


def run_child(code: str) -> tuple[float, float]:
    """(peak RSS in bytes, seconds) of ``python -c code``, from the child's own /proc/self/status VmHWM.

    Not ``RUSAGE_CHILDREN`` / ``wait4``: Linux carries the parent's RSS at fork into the child's ru_maxrss
    (the pre-exec memory map counts), which made an import-only child look as big as this generator.
    """
    probe = "\nprint('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr}")
    kib = int(proc.stdout.strip().splitlines()[-1].split()[1])
    return kib * 1024, secs


NAIVE = """
from safetensors.torch import load_file, save_file
from mmbert.merge import methods
base = load_file({base!r}); models = [load_file(p) for p in {models!r}]
out = {{k: methods.ties(base[k], [m[k] for m in models], [1.0] * len(models), {density}).to(v.dtype)
        for k, v in base.items()}}
save_file(out, {out!r})
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mmbert-base", choices=sorted(PRESETS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply vocab size and layer count")
    ap.add_argument("--models", type=int, default=3, help="models merged into the base")
    ap.add_argument("--method", default="ties", choices=["linear", "task_arithmetic", "ties"])
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--workdir", help="where the checkpoints go (default: a temporary dir, removed after)")
    ap.add_argument("--naive", action="store_true", help="also run the load-everything reference merge")
    args = ap.parse_args()

    cfg = ModelConfig.from_preset(args.preset)
    if args.scale != 1.0:
        cfg = cfg.replace(vocab_size=max(64, round(cfg.vocab_size * args.scale)),
                          num_hidden_layers=max(1, round(cfg.num_hidden_layers * args.scale)))
    layout = mmbert_layout(cfg, getattr(torch, args.dtype))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="merge-bench-"))
    try:
        dirs = []
        t0 = time.perf_counter()
        for m in range(args.models + 1):
            d = work / ("base" if m == 0 else f"m{m}")
            d.mkdir(parents=True, exist_ok=True)
            cfg.save(d)
            write_random(d, layout, m)
            dirs.append(d)
        ckpt = (dirs[0] / "model.safetensors").stat().st_size
        largest_name, largest = max(layout.items(), key=lambda kv: kv[1].nbytes)
        n_params = sum(info.nbytes for info in layout.values()) // layout[largest_name].torch_dtype.itemsize
        print(f"{args.preset} x{args.scale}: vocab {cfg.vocab_size}, {cfg.num_hidden_layers} layers, "
              f"{n_params / 1e6:.1f}M params, {args.dtype}; wrote {args.models + 1} checkpoints in "
              f"{time.perf_counter() - t0:.1f}s")
        print(f"one checkpoint: {ckpt / GB:.3f} GB; largest tensor {largest_name} {list(largest.shape)}: "
              f"{largest.nbytes / GB:.3f} GB ({largest.nbytes / ckpt:.0%} of the checkpoint)")

        base_rss, _ = run_child("import torch, mmbert.merge")
        params = f"density={args.density}" if args.method == "ties" else ""
        code = (f"from mmbert.merge import merge; merge({args.method!r}, {[str(d) for d in dirs[1:]]!r}, "
                f"{str(work / 'out')!r}, base={str(dirs[0])!r}, {params})")
        rss, secs = run_child(code)
        net = rss - base_rss
        # The merge runs in float32: S is the largest tensor's float32 size.
        s32 = largest.nbytes * 4 // largest.torch_dtype.itemsize
        bound = {"ties": args.models + 2, "task_arithmetic": 4, "linear": 3}[args.method]
        print(f"interpreter baseline (import torch, mmbert.merge): {base_rss / GB:.2f} GB")
        print(f"streaming {args.method} of {args.models} models: peak RSS {rss / GB:.2f} GB in {secs:.1f}s = "
              f"{rss / ckpt:.2f}x one checkpoint; net of baseline {net / GB:.2f} GB = {net / ckpt:.2f}x checkpoint "
              f"= {net / s32:.2f}x the largest tensor in fp32 (design bound ~{bound}x)")
        if args.naive:
            if args.method != "ties":
                raise SystemExit("--naive runs the ties reference only")
            code = NAIVE.format(base=str(dirs[0] / "model.safetensors"),
                                models=[str(d / "model.safetensors") for d in dirs[1:]],
                                density=args.density, out=str(work / "naive.safetensors"))
            nrss, nsecs = run_child(code)
            print(f"naive in-memory ties (load_file all, save_file): peak RSS {nrss / GB:.2f} GB in {nsecs:.1f}s = "
                  f"{nrss / ckpt:.2f}x one checkpoint; streaming/naive = {rss / nrss:.2f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
