"""``mmbert merge``: linear, task arithmetic or TIES over checkpoint directories (mergekit's parameter names).

    mmbert merge --method ties --base BASE --models A B C --density 0.2 --out MERGED
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=["linear", "task_arithmetic", "ties"])
    parser.add_argument("--base", help="base checkpoint dir (task vectors are taken against it; "
                                       "for linear it only supplies config/tokenizer and is not averaged)")
    parser.add_argument("--models", nargs="+", required=True, metavar="DIR", help="checkpoint dirs to merge")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per model (default 1 each)")
    parser.add_argument("--density", type=float, metavar="D", help="ties: fraction of each task vector kept per tensor (required)")
    parser.add_argument("--lambda", dest="lambda_", type=float, metavar="L", help="task_arithmetic / ties: scale of the merged "
                                                                    "task vector (default 1)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="divide by the (agreeing) weights' sum (default: on for linear and ties, off for "
                             "task_arithmetic)")
    parser.add_argument("--out", required=True, help="output checkpoint dir (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from mmbert.merge import merge
    from mmbert.merge.safetensors_io import read_header

    out = merge(args.method, args.models, args.out, base=args.base, weights=args.weights, density=args.density,
                lambda_=args.lambda_, normalize=args.normalize, overwrite=args.overwrite)
    layout, metadata = read_header(out / "model.safetensors")
    params = json.loads(metadata["merge"])["parameters"]
    print(f"merged {len(args.models)} models ({args.method}, {params}): {len(layout)} tensors -> {out}")
    return 0
