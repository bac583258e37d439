"""GPU readiness in one run: the checks that need CUDA, and a compact table at the end.

Checks (each row PASS / FAIL / SKIP with the number it measured):
  parity-fp32        mmbert vs transformers' ModernBERT on the device: MLM logits of a ragged batch (padded and
                     varlen calls), fp32 with TF32 off
  parity-bf16        the same under bf16 autocast: our error to the fp32 reference no worse than transformers'
  varlen-<backend>   every attention backend the device has (sdpa always; flash where flash-attn imports) against
                     the dense padded reference, fp16 and bf16, global and local layers, documents shorter and
                     longer than the window so the band crosses document boundaries on both sides
  train-bf16         5 MLM training steps with bf16 autocast and AdamW on one repeated batch: finite, decreasing
  fsdp2-nccl         a 1-process nccl group, FSDP2 sharded as ``train.parallel.parallelize(mode="fsdp")`` does, 3 steps
  speed-*            ``benchmarks/speed.py`` on the device (infer-var bf16 and train bf16) against transformers
                     (sdpa; and flash_attention_2 when flash-attn imports)
  precision-cpu      the CPU precisions (bf16 / int8) against fp32 on the tiny model (runs everywhere)
Without CUDA every CUDA row is SKIP with the reason, and the CPU rows still run: the script is tested that way.

    python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --quick          # small shapes, no speed rows
    python benchmarks/gpu_check.py --cpu-dry-run    # the CUDA checks' code run on CPU: tests the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmbert import ModelConfig, MmBertForMaskedLM  # noqa: E402
from mmbert.model.attention import VarlenBatch, flash_attn_varlen_func, padded_attention, varlen_attention  # noqa: E402

ROWS: list[dict] = []
DEVICE = "cuda"  # --cpu-dry-run: the CUDA checks' code on CPU (gloo for the process group), to test the script


def row(check: str, status: str, detail: str = "", **numbers) -> None:
    entry = {"check": check, "status": status, "detail": detail, **numbers}
    ROWS.append(entry)
    print(json.dumps(entry), flush=True)


def guarded(check: str, needs_cuda: bool = True):
    def wrap(fn):
        def run(*a, **kw):
            if needs_cuda and DEVICE == "cuda" and not torch.cuda.is_available():
                return row(check, "SKIP", "no CUDA device: torch.cuda.is_available() is False")
            t = time.perf_counter()
            try:
                fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - a failed check is a row, the others still run
                row(check, "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
            else:
                ROWS[-1]["seconds"] = round(time.perf_counter() - t, 1)
        return run
    return wrap


def ragged(vocab: int, lengths, device):
    g = torch.Generator().manual_seed(0)
    t = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), t), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.to(device), mask.to(device)


def models(preset: str, device: str):
    import transformers

    cfg = ModelConfig.from_preset(preset)
    ours = MmBertForMaskedLM(cfg).init_weights(seed=0).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf_cfg = transformers.ModernBertConfig(
        **{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
        attn_implementation="sdpa")
    theirs = transformers.ModernBertForMaskedLM(hf_cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)
    return cfg, ours.to(device), theirs.to(device)


def parity(preset: str, lengths) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg, ours, theirs = models(preset, DEVICE)
    ids, mask = ragged(cfg.vocab_size, lengths, DEVICE)
    real = mask.bool()
    with torch.inference_mode():
        ref = theirs(input_ids=ids, attention_mask=mask).logits[real].float()
        got = ours(ids, mask).logits[real].float()
        ours.model.unpad = False
        got_padded = ours(ids, mask).logits[real].float()
        ours.model.unpad = True
        diff = max((got - ref).abs().max().item(), (got_padded - ref).abs().max().item())
        row("parity-fp32", "PASS" if diff < 1e-3 else "FAIL", f"{preset}, lengths {list(lengths)}",
            max_abs_diff=round(diff, 6), bound=1e-3)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ours_bf16 = ours(ids, mask).logits[real].float()
            theirs_bf16 = theirs(input_ids=ids, attention_mask=mask).logits[real].float()
        e_ours, e_theirs = (ours_bf16 - ref).abs().mean().item(), (theirs_bf16 - ref).abs().mean().item()
        ok = e_ours <= 1.5 * e_theirs + 1e-6
        row("parity-bf16", "PASS" if ok else "FAIL", "mean |error| to fp32: ours <= 1.5 x transformers'",
            ours=round(e_ours, 6), transformers=round(e_theirs, 6))


def varlen(backend: str, dtype: torch.dtype, heads: int = 4, dim: int = 64, window: int = 32) -> None:
    lengths = [5, 70, 33, 129, 1, 64]  # shorter and longer than the window; bands cross document edges
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    n = sum(lengths)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(n, heads, dim, device=DEVICE, dtype=dtype, generator=g) for _ in range(3))
    batch = VarlenBatch.from_cu_seqlens(cu, window)
    worst = 0.0
    for local in (False, True):
        out = varlen_attention(q, k, v, batch, local=local, backend=backend).float()
        start = 0
        for t in lengths:  # the dense padded reference, one document at a time, in fp32
            sl = slice(start, start + t)
            qi, ki, vi = (x[sl].float().transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (1, H, T, D)
            ref = padded_attention(qi, ki, vi, torch.ones(1, t, device=DEVICE), window if local else None)
            worst = max(worst, (out[sl] - ref.squeeze(0).transpose(0, 1)).abs().max().item())
            start += t
    bound = 2e-2 if dtype == torch.bfloat16 else 4e-3
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    row(f"varlen-{backend}-{name}", "PASS" if worst < bound else "FAIL", "global + local (window 32), 6 documents",
        max_abs_diff=round(worst, 5), bound=bound)


def train_bf16(preset: str, steps: int = 5) -> None:
    cfg = ModelConfig.from_preset(preset)
    model = MmBertForMaskedLM(cfg).init_weights(seed=0).to(DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, mask = ragged(cfg.vocab_size, [200, 77, 512, 31], DEVICE)
    labels = torch.where((torch.rand(ids.shape, device=DEVICE) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    losses = []
    for _ in range(steps):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    ok = all(map(lambda x: x == x and abs(x) < 1e4, losses)) and losses[-1] < losses[0]
    row("train-bf16", "PASS" if ok else "FAIL", f"{preset}, {steps} steps", first=round(losses[0], 4),
        last=round(losses[-1], 4))


def fsdp2(preset: str) -> None:
    import torch.distributed as dist

    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=0, world_size=1)
    try:
        if DEVICE == "cuda":
            torch.cuda.set_device(0)
        cfg = ModelConfig.from_preset(preset)
        model = MmBertForMaskedLM(cfg).init_weights(seed=0).to(DEVICE)
        for layer in model.model.layers:  # as train.parallel.parallelize(mode="fsdp") shards (it skips 1 process)
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids, mask = ragged(cfg.vocab_size, [100, 40, 256], DEVICE)
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        losses = []
        for _ in range(3):
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = model(ids, mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        row("fsdp2-nccl", "PASS" if losses[-1] < losses[0] else "FAIL", "1 process, FSDP2 per layer + root",
            losses=[round(x, 4) for x in losses])
    finally:
        dist.destroy_process_group()


def speed(case: str, preset: str, theirs_attn: str, rounds: int) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", "cuda", "--preset", preset,
           "--case", case, "--dtype", "bf16", "--rounds", str(rounds), "--theirs-attn", theirs_attn]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    row(f"speed-{case}-{theirs_attn}", "PASS", f"{preset} bf16 vs transformers {theirs_attn}",
        ours_tok_s=r["ours_tok_s"], theirs_tok_s=r["theirs_tok_s"], ratio=r["ratio"])


def precision_cpu() -> None:
    from mmbert.model.precision import cpu_supports_bf16, cpu_supports_int8
    from mmbert.model import MmBertModel

    model = MmBertModel(ModelConfig.from_preset("tiny")).init_weights(seed=0).eval()
    ids, mask = ragged(512, [40, 7, 33], "cpu")
    real = mask.bool()
    with torch.inference_mode():
        ref = model(ids, mask).last_hidden_state[real]
    import copy

    from mmbert.model.precision import apply_precision

    for mode, ok in (("bf16", cpu_supports_bf16()), ("int8", cpu_supports_int8())):
        if not ok:
            row(f"precision-cpu-{mode}", "SKIP", f"this CPU has no native {mode}")
            continue
        m = apply_precision(copy.deepcopy(model), mode, "cpu")
        with torch.inference_mode():
            got = m(ids, mask).last_hidden_state[real]
        cos = F.cosine_similarity(got, ref, dim=-1).min().item()
        row(f"precision-cpu-{mode}", "PASS" if cos > 0.998 else "FAIL", "tiny model, min token cosine to fp32",
            min_cosine=round(cos, 6))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mmbert-small", help="speed.py's model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small parity / training shapes, no speed rows")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run the CUDA checks' code on CPU (no speed rows): tests this script where no GPU is")
    args = p.parse_args()
    global DEVICE
    if args.cpu_dry_run:
        DEVICE, args.quick = "cpu", True
    cuda = torch.cuda.is_available()
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "device":
                      torch.cuda.get_device_name(0) if cuda else "cpu only",
                      "flash_attn": flash_attn_varlen_func is not None}), flush=True)
    small = "tiny" if args.quick else "mini"
    guarded("parity")(parity)(small, (40, 7, 33, 25, 1) if args.quick else (300, 7, 129, 64, 1))
    for dtype in (torch.float16, torch.bfloat16):
        guarded("varlen-sdpa")(varlen)("sdpa", dtype)
        if flash_attn_varlen_func is not None:
            guarded("varlen-flash")(varlen)("flash", dtype)
        elif cuda or args.cpu_dry_run:
            row("varlen-flash", "SKIP", "flash-attn not importable (no wheel for this torch / CUDA?)")
    guarded("train-bf16")(train_bf16)(small)
    guarded("fsdp2-nccl")(fsdp2)(small)
    if not args.quick:
        for case in ("infer-var", "train"):
            guarded(f"speed-{case}-sdpa")(speed)(case, args.preset, "sdpa", args.rounds)
            if flash_attn_varlen_func is not None:
                guarded(f"speed-{case}-flash_attention_2")(speed)(case, args.preset, "flash_attention_2", args.rounds)
    guarded("precision-cpu", needs_cuda=False)(precision_cpu)()
    print("\n| check | status | numbers | detail |\n|---|---|---|---|")
    for r in ROWS:
        nums = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("check", "status", "detail"))
        print(f"| {r['check']} | {r['status']} | {nums} | {r['detail']} |")
    fails = [r["check"] for r in ROWS if r["status"] == "FAIL"]
    print(f"\n{len(ROWS)} checks: {sum(r['status'] == 'PASS' for r in ROWS)} pass, {len(fails)} fail, "
          f"{sum(r['status'] == 'SKIP' for r in ROWS)} skipped" + (f" ({', '.join(fails)})" if fails else ""))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
