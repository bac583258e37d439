"""``mmbert export``: a checkpoint for transformers, sentence-transformers or ONNX Runtime.

    mmbert export CKPT --to hf OUT
    mmbert export CKPT --to sentence-transformers OUT [--max-length 512]
    mmbert export CKPT --to onnx OUT
    mmbert export CKPT --to onnx --quantize int8 OUT    # onnxruntime's dynamic int8 quantiser
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
    parser.add_argument("--quantize", choices=["int8"], help="--to onnx only: write model.onnx quantised to int8 by "
                        "onnxruntime's dynamic quantiser (int8 weights per channel, activations per tensor)")


def run(args: argparse.Namespace) -> int:
    from mmbert.serve.export import export

    try:
        out = export(args.checkpoint, args.to, args.out, max_length=args.max_length, overwrite=args.overwrite,
                     quantize=args.quantize)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    kind = f"{args.to}, {args.quantize}" if args.quantize else args.to
    print(f"exported {args.checkpoint} ({kind}) -> {out}")
    return 0
