"""``mmbert fill-mask``: the most likely tokens behind each ``<mask>`` of a text.

    mmbert fill-mask CKPT "Paris is the <mask> of France." --top-k 5 [--json]
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="MLM checkpoint directory (with head.* / decoder.* weights)")
    parser.add_argument("text", help="text holding one or more <mask> tokens")
    parser.add_argument("--top-k", type=int, default=5, help="predictions per mask (default 5)")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    from mmbert.serve.encoder import Encoder
    from mmbert.tokenizer import InvalidTextError

    try:
        predictions = Encoder(args.checkpoint, device=args.device).fill_mask(args.text, top_k=args.top_k)
    except InvalidTextError as e:  # bytes of the argument that are not UTF-8 arrive as lone surrogates
        raise ValueError(f"the text argument {e.reason} (is the terminal's encoding UTF-8?)") from None
    if args.json:
        print(json.dumps(predictions, ensure_ascii=False, indent=2))
        return 0
    for n, preds in enumerate(predictions, 1):
        if len(predictions) > 1:
            print(f"mask {n}:")
        for p in preds:
            print(f"{p['score']:.4f}  {p['token_str']!r:20}  {p['sequence']}")
    return 0
