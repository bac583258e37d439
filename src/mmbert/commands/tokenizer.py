"""``mmbert tokenizer``: train a language-balanced byte-fallback Unigram tokenizer, show one, or report
its per-language coverage.

    mmbert tokenizer train [--vocab-size 16384] [--tau 0.3] [--out DIR] [--exclude ID ...]   # default --out: the shipped one
    mmbert tokenizer info [--tokenizer PATH]
    mmbert tokenizer report [--tokenizer PATH] [--out DIR] [--split heldout|train|all] [--languages ID ...]
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmbert.tokenizer import TrainConfig

    d = TrainConfig()
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train on the corpus's training articles (held-out ones excluded)")
    train.add_argument("--corpus", help="corpus file (default: the shipped UDHR corpus)")
    train.add_argument("--out", help="output folder (default: the shipped mmbert/assets/tokenizer)")
    train.add_argument("--vocab-size", type=int, default=d.vocab_size, help=f"total pieces (default {d.vocab_size})")
    train.add_argument("--tau", type=float, default=d.tau, help=f"language sampling temperature (default {d.tau})")
    train.add_argument("--budget-chars", type=int, help="characters of balanced text (default: corpus size)")
    train.add_argument("--character-coverage", type=float, default=d.character_coverage)
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--exclude", nargs="+", metavar="LANG_ID", default=[],
                       help="leave these lang ids out of the training text (a model that never saw them: adapt demo)")
    info = sub.add_parser("info", help="vocabulary size, special tokens and a sample encoding")
    info.add_argument("--tokenizer", help="tokenizer.json or its folder (default: the shipped one)")
    report = sub.add_parser("report", help="tokens/char and unk/byte-fallback share per language")
    report.add_argument("--tokenizer", help="tokenizer.json or its folder (default: the shipped one)")
    report.add_argument("--corpus", help="corpus file (default: the shipped one)")
    report.add_argument("--out", default="runs/tokenizer_report", help="folder for coverage.{csv,md,png}")
    report.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    report.add_argument("--languages", nargs="+", metavar="LANG_ID", help="only these lang ids")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "info": _info, "report": _report}[args.action](args)


def _load(path):
    from mmbert.tokenizer import Tokenizer

    return Tokenizer.from_file(path) if path else Tokenizer.default()


def _train(args: argparse.Namespace) -> int:
    from mmbert.corpus import load_corpus
    from mmbert.corpus.tokenizer_training import train_on_corpus
    from mmbert.tokenizer import TrainConfig, default_tokenizer_path

    config = TrainConfig(vocab_size=args.vocab_size, tau=args.tau, budget_chars=args.budget_chars,
                         character_coverage=args.character_coverage, seed=args.seed)
    start = time.perf_counter()
    records = load_corpus(args.corpus)
    unknown = sorted(set(args.exclude) - {r.lang_id for r in records})
    if unknown:
        raise ValueError(f"--exclude: no corpus text for {unknown}")
    records = [r for r in records if r.lang_id not in set(args.exclude)]
    tok, info = train_on_corpus(records, config)
    info["excluded_languages"] = sorted(args.exclude)
    out = tok.save(args.out or default_tokenizer_path())
    (out / "mmbert_tokenizer_training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"trained {tok.vocab_size} pieces on {info['balanced_chars']} balanced characters of "
          f"{info['languages']} languages in {time.perf_counter() - start:.0f} s -> {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    print(f"vocab size: {tok.vocab_size} ({len(tok.byte_ids())} byte-fallback pieces)")
    for role in ("pad", "eos", "bos", "unk", "mask"):
        i = getattr(tok, f"{role}_id")
        print(f"{role:>5}: {i} {tok.backend.id_to_token(i) if i is not None else '-'}")
    sample = "All human beings are born free and equal in dignity and rights."
    print(f"sample: {tok.backend.encode(sample).tokens}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmbert.corpus import load_corpus
    from mmbert.corpus.coverage import format_table, measure, select_split, write_report

    tok = _load(args.tokenizer)
    records = select_split(load_corpus(args.corpus), args.split)
    if args.languages:
        wanted = set(args.languages)
        unknown = wanted - {r.lang_id for r in records}
        if unknown:
            raise ValueError(f"no corpus text for {sorted(unknown)}")
        records = [r for r in records if r.lang_id in wanted]
    rows = measure(tok, records)
    print(format_table(rows))
    paths = write_report(rows, args.out, title=f"tokenizer coverage ({args.split} articles)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
