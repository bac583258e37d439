"""Command line of the trainer, shared by ``mmbert train`` and ``python -m mmbert.train`` (torchrun).

An entry point, though it lives in ``train/``: it may import the recipe layer; nothing in ``train`` imports it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="training config (YAML)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set phases.0.steps=5 (repeatable)")
    parser.add_argument("--help-config", action="store_true", help="describe every config field and exit")


def run(args: argparse.Namespace) -> int:
    from mmbert.recipe.training import train  # the shipped corpus and mmBERT's tables resolve config names
    from mmbert.train.config import describe, load_config

    if args.help_config:
        print(describe())
        return 0
    if not args.config:
        print("mmbert train: error: CONFIG is required", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    result = train(cfg, out, resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        if result.completed:
            print(f"done: {result.step} steps, {result.tokens:,} tokens -> {out}")
            for name, path in {**result.phase_checkpoints, **result.variant_checkpoints}.items():
                print(f"  {name}: {path}")
        else:
            print(result.message, file=sys.stderr)
    if result.stopped == "signal":
        return 130
    return 0 if result.completed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmbert.train", description="train with a phased MLM config")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"mmbert train: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        from mmbert.model.checkpoint import disk_full_message

        message = disk_full_message(e, "--resume", args.out or "the run directory")
        if message is None:
            raise
        print(f"mmbert train: error: {message}", file=sys.stderr)
        return 1
