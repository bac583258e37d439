"""Which int8 linear is fastest here: the four linear shapes of an encoder layer, one process, alternated.

Contenders per shape (N tokens x in -> out): fp32 ``nn.Linear``; bf16 (weights cast once); torch.ao's
``quantize_dynamic`` on each quantised engine torch has (``x86``, ``fbgemm``, ``onednn``); mmbert's
``Int8Linear`` (oneDNN ``qlinear_pointwise``, dynamic per-tensor activations, bf16 out). Prints ms per call
(median) and the relative error to fp32.

    python benchmarks/int8_linears.py --preset mmbert-small --tokens 8552
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmbert import ModelConfig  # noqa: E402
from mmbert.model.precision import Int8Linear, cpu_supports_int8  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mmbert-small")
    p.add_argument("--tokens", type=int, default=8552)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # torch.ao's deprecation warnings
    cfg = ModelConfig.from_preset(args.preset)
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes = {"attn.Wqkv": (h, 3 * h), "attn.Wo": (h, h), "mlp.Wi": (h, 2 * i), "mlp.Wo": (i, h)}
    totals: dict[str, float] = {}
    for name, (k, n) in shapes.items():
        torch.manual_seed(0)
        lin = nn.Linear(k, n, bias=False).eval()
        with torch.no_grad():
            lin.weight.normal_(0, 0.02)
        x = torch.randn(args.tokens, k)
        fns = {"fp32": lambda: lin(x)}
        lb, xb = nn.Linear(k, n, bias=False).eval(), x.bfloat16()
        lb.load_state_dict(lin.state_dict())
        lb.bfloat16()
        fns["bf16"] = lambda: lb(xb)
        for engine in torch.backends.quantized.supported_engines:
            if engine not in ("x86", "fbgemm", "onednn"):
                continue
            torch.backends.quantized.engine = engine
            q = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
            fns[f"torch.ao-{engine}"] = lambda q=q, e=engine: (setattr(torch.backends.quantized, "engine", e), q(x))[1]
        if cpu_supports_int8():
            il = Int8Linear(lin, torch.bfloat16)
            fns["mmbert-Int8Linear(bf16 in/out)"] = lambda: il(xb)
        with torch.inference_mode():
            ref = lin(x)
            err = {}
            for f, fn in fns.items():
                out = fn().float()
                err[f] = round(float((out - ref).norm() / ref.norm()), 4)
            times: dict[str, list[float]] = {f: [] for f in fns}
            for _ in range(args.rounds):
                for f, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[f].append(time.perf_counter() - t)
        med = {f: statistics.median(t) * 1e3 for f, t in times.items()}
        for f, ms in med.items():
            totals[f] = totals.get(f, 0.0) + ms
        print(json.dumps({"linear": name, "shape": [args.tokens, k, n],
                          "ms": {f: round(v, 1) for f, v in med.items()}, "rel_err": err}), flush=True)
    print(json.dumps({"total_ms_per_layer": {f: round(v, 1) for f, v in totals.items()},
                      "vs_fp32": {f: round(totals["fp32"] / v, 2) for f, v in totals.items()}}), flush=True)


if __name__ == "__main__":
    main()
