"""One optimizer step at the miniature's size: mmbert's training step vs transformers' ModernBERT, same process.

The case the main job (``configs/miniature.yaml``) spends its time in: the ``mini`` preset (6 layers, hidden 256,
16k vocabulary), one optimizer step of 16 rows x 256 packed tokens, 15% of them predicted (80/10/10 masking),
bf16 autocast where the CPU has native bf16 (else fp32), gradient clipping at 1.0 and AdamW.

- ours: the trainer's pieces - ``build_optimizer`` (the optimizer the trainer builds from an ``optimizer:``
  section), ``clip_gradients``, the unpadded batch with document pieces (``cu_seqlens``; pieces of 30-250
  tokens, as UDHR articles pack) and, with ``--compile``, ``mmbert.train.speed.compile_model`` as the trainer
  applies it (``train.compile``);
- theirs: ``transformers.ModernBertForMaskedLM`` (sparse prediction on, SDPA) fed the same 16 full rows as a
  (16, 256) batch, all-ones attention mask, torch's default AdamW (foreach) and ``clip_grad_norm_``.

Same initial weights, alternated A B A B; prints the median tokens/s of each and the ratio. ``--profile`` prints
torch.profiler's top operators of our step (self CPU time).

    python benchmarks/train_step.py --rounds 10
    python benchmarks/train_step.py --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def make_batch(vocab: int, rows: int = 16, seq_len: int = 256, mask_ratio: float = 0.15, seed: int = 0) -> dict:
    """16 full rows of document pieces, masked as the data pipeline masks them (``data.masking``)."""
    from mmbert.data.masking import mask_tokens
    from mmbert.data.packing import assemble_batch
    import numpy as np

    rng = np.random.default_rng(seed)
    table = []
    for _ in range(rows):
        row, left = [], seq_len
        while left:
            n = min(left, int(rng.integers(30, 250)))
            row.append(rng.integers(5, vocab, n))
            left -= n
        table.append(row)
    batch = assemble_batch(table, ["xxx"] * rows)
    g = torch.Generator().manual_seed(seed)
    batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], mask_ratio, 4, vocab, (0, 1, 2, 3, 4), g)
    batch["labels_full"] = batch["labels"].view(rows, seq_len)
    batch["rows"] = batch["input_ids"].view(rows, seq_len)
    return batch


def build(args):
    import transformers

    from mmbert.model import MmBertForMaskedLM, ModelConfig
    from mmbert.train.config import OptimizerSection
    from mmbert.train.optim import build_optimizer

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("mini")
    ours = MmBertForMaskedLM(cfg)
    hf_cfg = transformers.ModernBertConfig(
        **{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
        attn_implementation="sdpa")
    theirs = transformers.ModernBertForMaskedLM(hf_cfg)
    theirs.config.sparse_prediction = True
    theirs.sparse_prediction = True
    theirs.load_state_dict(ours.state_dict(), strict=False)
    ours.train(), theirs.train()
    opt_cfg = OptimizerSection(lr=1e-4, weight_decay=1e-5, grad_clip=1.0, kernel=args.kernel)
    ours_opt = build_optimizer(ours, opt_cfg)
    theirs_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-5)
    model = ours
    if args.compile:
        from mmbert.train.speed import compile_model

        model = compile_model(ours)
    return cfg, model, ours, ours_opt, theirs, theirs_opt


def step_fns(args, model, ours, ours_opt, theirs, theirs_opt, batch):
    from mmbert.train.optim import autocast as ac, clip_gradients

    device = torch.device("cpu")
    precision = args.precision
    n_pred = int((batch["labels"] != -100).sum())

    def ours_step():
        with ac(precision, device):
            out = model(batch["input_ids"], labels=batch["labels"], cu_seqlens=batch["cu_seqlens"],
                        max_seqlen=batch["max_seqlen"], position_ids=batch["position_ids"])
            loss = out.loss.float() * n_pred
        (loss / n_pred).backward()
        clip_gradients(ours, 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    mask = torch.ones_like(batch["rows"])

    def theirs_step():
        with ac(precision, device):
            loss = theirs(input_ids=batch["rows"], attention_mask=mask, labels=batch["labels_full"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        theirs_opt.step()
        theirs_opt.zero_grad(set_to_none=True)

    return {"ours": ours_step, "theirs": theirs_step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the trainer's choice)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the model (train.compile)")
    p.add_argument("--kernel", default="fused", choices=["fused", "foreach", "for-loop"],
                   help="ours: optimizer.kernel (the trainer's AdamW implementation)")
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa"],
                   help="ours: sdpa = the banded / per-sequence backend (the dense backend off), to compare")
    p.add_argument("--profile", action="store_true", help="print the profile of our step and exit")
    p.add_argument("--only", choices=["ours", "theirs"], default=None, help="time one side only (side-by-side runs)")
    args = p.parse_args()
    from mmbert.train.optim import resolve_precision
    from mmbert.train.speed import set_threads

    set_threads(args.threads)
    if args.attention == "sdpa":
        import mmbert.model.attention as attention

        attention.DENSE_MAX_LEN = 0  # every layout is "not applicable": auto falls back to sdpa
    args.precision = resolve_precision(args.precision, torch.device("cpu"))
    cfg, model, ours, ours_opt, theirs, theirs_opt = build(args)
    batch = make_batch(cfg.vocab_size)
    fns = step_fns(args, model, ours, ours_opt, theirs, theirs_opt, batch)
    for fn in fns.values():  # warm-up (and compilation)
        fn(), fn()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fns["ours"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    sides = [args.only] if args.only else ["ours", "theirs"]
    times = {w: [] for w in sides}
    for _ in range(args.rounds):
        for w in sides:
            t = time.perf_counter()
            fns[w]()
            times[w].append(time.perf_counter() - t)
    tokens = batch["num_tokens"]
    med = {w: statistics.median(t) for w, t in times.items()}
    out = {"case": "train-step mini 16x256 mask 0.15", "precision": args.precision, "compile": args.compile,
           "kernel": args.kernel, "attention": args.attention,
           "threads": torch.get_num_threads(), "rounds": args.rounds,
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    out.update({f"{w}_tok_s": round(tokens / med[w]) for w in sides})
    if len(sides) == 2:
        out["ratio"] = round(med["theirs"] / med["ours"], 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
