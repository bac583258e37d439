"""mmbert vs transformers' ModernBERT: same config, same weights, same process, alternated A B A B.

Prints the median real tokens/s of each, their ratio, and (with --memory) the peak RSS of each measured in
its own child process. Cases:
  infer-var   inference, 32 sequences of lengths uniform in 16..512 (seeded)
  infer-long  inference, 4 sequences of 8,192 tokens
  train       one training step (forward, sparse MLM loss at 30% masking, backward, AdamW) on the same real
              tokens: ours unpadded, theirs padded
  peak        useful GFLOP/s of our inference against a matmul-peak measured in the same run

    python benchmarks/speed.py --preset mmbert-small --case infer-var --dtype fp32
    python benchmarks/speed.py --preset mmbert-base --case all --dtype bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

from mmbert import ModelConfig, MmBertForMaskedLM, MmBertModel


def make_batch(case: str, vocab: int, seed: int = 0, long_seqs: int = 4):
    g = torch.Generator().manual_seed(seed)
    if case == "infer-long":
        lengths = [8192] * long_seqs
    else:
        lengths = torch.randint(16, 513, (32,), generator=g).tolist()
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask, lengths


def build(preset: str, case: str, device: str, theirs_attn: str = "sdpa"):
    import transformers

    cfg = ModelConfig.from_preset(preset)
    hf_cfg = transformers.ModernBertConfig(
        **{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
        attn_implementation=theirs_attn,
    )
    if case == "train":
        ours = MmBertForMaskedLM(cfg)
        theirs = transformers.ModernBertForMaskedLM(hf_cfg)
        theirs.config.sparse_prediction = True
        theirs.sparse_prediction = True
    else:
        ours = MmBertModel(cfg)
        theirs = transformers.ModernBertModel(hf_cfg)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    return cfg, ours.to(device), theirs.to(device)


def autocast(dtype: str, device: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def runner(which: str, model, case: str, ids, mask, dtype: str, device: str):
    """A zero-argument function doing one unit of work."""
    ids, mask = ids.to(device), mask.to(device)
    if case != "train":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast(dtype, device):
                model(input_ids=ids, attention_mask=mask) if which == "theirs" else model(ids, mask)

        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    picked = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    labels = torch.where(picked, ids, torch.full_like(ids, -100))

    def step():
        with autocast(dtype, device):
            if which == "theirs":
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            else:
                loss = model(ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_once(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def matmul_peak_gflops(dtype: str, device: str, n: int = 2048) -> float:
    from mmbert.train.speed import matmul_gflops

    return matmul_gflops(torch.bfloat16 if dtype == "bf16" else torch.float32, (n, n, n), seconds=1.0, device=device)


def useful_flops(cfg: ModelConfig, lengths: list[int]) -> float:
    """Matmul FLOPs a perfect encoder needs for these sequences (no pads; local layers only the band)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    n = sum(lengths)
    dense = 2 * n * (h * 3 * h + h * h + h * 2 * i + i * h) * L
    attn = 0
    for layer in range(L):
        for t in lengths:
            keys = t if cfg.is_global(layer) else min(t, cfg.local_attention + 1)
            attn += 2 * 2 * t * keys * h  # QK^T and PV
    return dense + attn


def bench(args) -> dict:
    torch.manual_seed(0)
    cfg, ours, theirs = build(args.preset, args.case, args.device, args.theirs_attn)
    ids, mask, lengths = make_batch(args.case, cfg.vocab_size, long_seqs=args.long_seqs)
    fns = {w: runner(w, m, args.case, ids, mask, args.dtype, args.device) for w, m in (("ours", ours), ("theirs", theirs))}
    for fn in fns.values():  # warm-up
        fn()
    times = {"ours": [], "theirs": []}
    for _ in range(args.rounds):
        for which in ("ours", "theirs"):
            times[which].append(time_once(fns[which], args.device))
    tokens = sum(lengths)
    med = {w: statistics.median(t) for w, t in times.items()}
    result = {
        "preset": args.preset, "case": args.case, "dtype": args.dtype, "device": args.device,
        "real_tokens": tokens, "padding": round(1 - tokens / ids.numel(), 3),
        "ours_tok_s": round(tokens / med["ours"]), "theirs_tok_s": round(tokens / med["theirs"]),
        "ratio": round(med["theirs"] / med["ours"], 2), "threads": torch.get_num_threads(),
        "theirs_attn": args.theirs_attn,
    }
    if args.case in ("infer-var", "infer-long"):
        peak = matmul_peak_gflops(args.dtype, args.device)
        result["useful_gflops"] = round(useful_flops(cfg, lengths) / med["ours"] / 1e9, 1)
        result["matmul_peak_gflops"] = round(peak, 1)
        result["fraction_of_peak"] = round(result["useful_gflops"] / peak, 2)
    return result


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_work_memory(which: str, args) -> float:
    """In this (child) process: build both models, drop the other one, reset the peak-RSS mark, run the work
    twice; return the peak RSS above the resting RSS (MiB) - the activations and temporaries of the work."""
    import gc

    cfg, ours, theirs = build(args.preset, args.case, args.device)
    ids, mask, _ = make_batch(args.case, cfg.vocab_size, long_seqs=getattr(args, "long_seqs", 4))
    model = ours if which == "ours" else theirs
    del ours, theirs
    fn = runner(which, model, args.case, ids, mask, args.dtype, args.device)
    gc.collect()
    rest = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM (the peak RSS) to the current RSS
        f.write("5")
    fn()
    fn()
    return (_status_kib("VmHWM") - rest) / 1024


def peak_memory(args, which: str) -> float:
    """Extra peak RSS (MiB) of ``which`` doing the work, measured in a fresh child process."""
    code = (
        "import sys, argparse; sys.path.insert(0, '.'); from benchmarks.speed import measure_work_memory; "
        f"a = argparse.Namespace(preset={args.preset!r}, case={args.case!r}, device={args.device!r}, dtype={args.dtype!r}, "
        f"long_seqs={args.long_seqs}); "
        f"print(measure_work_memory({which!r}, a))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mmbert-small")
    p.add_argument("--case", default="infer-var", choices=["infer-var", "infer-long", "train", "all"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--theirs-attn", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"],
                   help="transformers' attention implementation (flash_attention_2: CUDA with flash-attn)")
    p.add_argument("--long-seqs", type=int, default=4, help="infer-long: how many 8,192-token sequences")
    p.add_argument("--memory", action="store_true",
                   help="also measure each side's peak RSS above its resting RSS, in a child process (Linux)")
    args = p.parse_args()
    cases = ["infer-var", "infer-long", "train"] if args.case == "all" else [args.case]
    for case in cases:
        args.case = case
        result = bench(args)
        if args.memory and args.device == "cpu":
            result["ours_peak_mib"] = round(peak_memory(args, "ours"))
            result["theirs_peak_mib"] = round(peak_memory(args, "theirs"))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
