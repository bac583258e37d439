"""``mmbert adapt CKPT --languages LANG ... --data MANIFEST --out DIR``: add languages to a trained model
(a decay-style phase of the ordinary trainer, optional vocabulary extension, merge-back, report).

    mmbert adapt runs/base/final --languages amh_Ethi kat_Geor --data corpus/manifest.yaml --out runs/adapted \\
        [--steps 200] [--extend-tokenizer 1024 | --tokenizer T] [--init fvt|focus|random] [--replay 0.5] \\
        [--merge ties linear]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmbert.recipe.adapt import AdaptOptions

    d = AdaptOptions(Path("."), [], Path("."), Path("."))
    p.add_argument("checkpoint", help="the trained model: a checkpoint dir with an MLM head")
    p.add_argument("--languages", nargs="+", required=True, metavar="LANG", help="the new languages (manifest ids)")
    p.add_argument("--data", required=True, help="corpus manifest (as `mmbert train` reads; `mmbert corpus export`)")
    p.add_argument("--out", required=True, help="output directory (an existing one is continued)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--extend-tokenizer", type=int, metavar="N",
                       help="learn N pieces on the new languages' text and add those the vocabulary lacks")
    vocab.add_argument("--tokenizer", help="a tokenizer extending the checkpoint's (old pieces at their ids)")
    p.add_argument("--init", default=d.init, choices=["fvt", "focus", "random"], help="new embedding rows (default fvt)")
    p.add_argument("--no-prior-bias", action="store_true",
                   help="fvt/focus: new decoder biases transferred as the rows are, not from the pieces' unigram scores")
    p.add_argument("--init-shrink", type=float, default=d.shrink,
                   help="fvt/focus: pull new rows toward the old mean by this factor, 0..1 (default: off; model/vocab.py)")
    p.add_argument("--replay", type=float, default=d.replay, help=f"share of rows from old languages (default {d.replay})")
    p.add_argument("--replay-languages", nargs="+", metavar="LANG", help="default: every other manifest language")
    p.add_argument("--merge", nargs="+", default=d.merge, choices=["ties", "linear"], help="merge-back methods (default both)")
    p.add_argument("--density", type=float, default=d.density, help=f"TIES density (default {d.density})")
    p.add_argument("--linear-weight", type=float, default=d.linear_weight,
                   help=f"weight of the adapted model in the linear merge (default {d.linear_weight})")
    p.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    p.add_argument("--micro-batch-tokens", type=int, default=d.micro_batch_tokens)
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak LR (default {d.lr})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out loss every N steps (0: at the end)")
    p.add_argument("--eval-old-languages", type=int, default=d.eval_old_languages,
                   help=f"old languages evaluated, evenly spaced (default {d.eval_old_languages}; 0 = all)")
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the training config (OUT/train-config.yaml), repeatable")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from mmbert.recipe.adapt import AdaptOptions, adapt

    opts = AdaptOptions(
        checkpoint=Path(args.checkpoint), languages=list(args.languages), manifest=Path(args.data), out=Path(args.out),
        steps=args.steps, extend_tokenizer=args.extend_tokenizer, tokenizer=args.tokenizer, init=args.init,
        prior=not args.no_prior_bias, shrink=args.init_shrink, replay=args.replay,
        replay_languages=args.replay_languages, merge=list(args.merge), density=args.density,
        linear_weight=args.linear_weight, mask_ratio=args.mask_ratio, tau=args.tau, seq_len=args.seq_len,
        batch_tokens=args.batch_tokens, micro_batch_tokens=args.micro_batch_tokens, lr=args.lr,
        eval_every=args.eval_every, eval_old_languages=args.eval_old_languages, precision=args.precision,
        device=args.device, seed=args.seed, overrides=list(args.overrides), progress=not args.no_progress)
    adapt(opts)
    return 0
