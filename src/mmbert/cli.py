"""The ``mmbert`` command: a thin dispatcher to one module per subcommand.

Each subcommand lives in ``mmbert.commands.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``mmbert --help``
stays fast and one command's optional dependencies never break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep alphabetical.
COMMANDS: dict[str, tuple[str, str]] = {
    "adapt": ("mmbert.commands.adapt", "add languages to a trained model: continued training, new vocabulary, merge-back"),
    "corpus": ("mmbert.commands.corpus", "build or inspect the embedded multilingual corpus"),
    "embed": ("mmbert.commands.embed", "embed texts with a checkpoint (mean-pooled, unpadded batches)"),
    "eval": ("mmbert.commands.eval", "evaluate a checkpoint on a task, per language"),
    "export": ("mmbert.commands.export", "export a checkpoint for transformers / sentence-transformers / ONNX"),
    "fill-mask": ("mmbert.commands.fill_mask", "predict the tokens behind <mask>"),
    "finetune": ("mmbert.commands.finetune", "fine-tune a checkpoint into a task model (classification, NER, QA)"),
    "info": ("mmbert.commands.info", "show a checkpoint's or preset's configuration and size"),
    "merge": ("mmbert.commands.merge", "merge checkpoints: linear, task arithmetic, TIES"),
    "predict": ("mmbert.commands.predict", "run a fine-tuned task model over a file (labels, tags, answer spans)"),
    "run": ("mmbert.commands.run", "run a whole recipe: train all phases, merge, evaluate, report"),
    "serve": ("mmbert.commands.serve", "serve embeddings and fill-mask over HTTP"),
    "tokenizer": ("mmbert.commands.tokenizer", "train, inspect or report on a tokenizer"),
    "train": ("mmbert.commands.train", "train with a phased MLM config"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmbert", description="Multilingual ModernBERT encoders, end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = {}
    for name, (module, help_) in COMMANDS.items():
        available[name] = (module, sub.add_parser(name, help=help_, description=help_))
    # Only the chosen command's module is imported (and can add its arguments).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in available:
        module_name, p = available[chosen]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("mmbert"):
                parser.error(f"command {chosen!r} is not available in this version ({e.name} missing)")
            parser.error(f"command {chosen!r} needs the package {e.name!r}: pip install 'mmbert[dev]'")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:  # user errors: a clear line, not a traceback
        print(f"mmbert {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk is one line too; the atomic writers left the old files intact
        from mmbert.model.checkpoint import disk_full_message

        message = disk_full_message(e, _AFTER_DISK_FULL.get(args.command, "run it again"))
        if message is None:
            raise
        print(f"mmbert {args.command}: error: {message}", file=sys.stderr)
        return 1


# What to do after freeing space: training continues from its checkpoints; other commands start over.
_AFTER_DISK_FULL = {"train": "--resume", "run": "run the same command again", "finetune": "run the same command again",
                    "adapt": "run the same command again"}


if __name__ == "__main__":  # `torchrun ... -m mmbert.cli finetune ...` runs this
    from mmbert.train.parallel import exit_process

    exit_process(main())
