"""``mmbert export``: a checkpoint for transformers, sentence-transformers or ONNX Runtime.

    mmbert export CKPT --to hf OUT
    mmbert export CKPT --to sentence-transformers OUT [--max-length 512]
    mmbert export CKPT --to onnx OUT
"""

from __future__ import annotations

import argparse

FORMATS = ("hf", "sentence-transformers", "onnx")  # as mmbert.serve.export.FORMATS; not imported: --help stays fast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format")
    parser.add_argument("out", help="output directory (written atomically)")
    parser.add_argument("--max-length", type=int, help="model_max_length / max_seq_length written for the tokenizer "
                                                       "(default: the checkpoint tokenizer's, capped by the model)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from mmbert.serve.export import export

    try:
        out = export(args.checkpoint, args.to, args.out, max_length=args.max_length, overwrite=args.overwrite)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    print(f"exported {args.checkpoint} ({args.to}) -> {out}")
    return 0
