"""Sequence and sentence-pair classification: GLUE (SST-2, CoLA, MRPC, QQP, MNLI, QNLI, RTE, WNLI) and
XNLI with zero-shot cross-lingual transfer (fine-tune on one language, test on every language, as
XTREME does).

Input is ``<bos> A <eos> [B <eos>]``; the head is ``MmBertForSequenceClassification`` (pooling from the
checkpoint's config, "cls" unless set). Splits, as the benchmarks ship them:
- GLUE: ``DIR/train.tsv`` and ``DIR/dev.tsv`` (GLUE's test labels are hidden, so scores are on dev, as
  papers report); early stopping uses a seeded 10% of train, so dev never steers training.
- XNLI: ``DIR/xnli.dev.tsv`` and ``DIR/xnli.test.tsv``; training data from ``--train`` (MNLI's TSV) or
  else the ``train_language`` rows of xnli.dev.tsv; early stopping on ``train_language`` dev rows (or a
  seeded 10% of train when train came from dev); test on every language of xnli.test.tsv.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from mmbert.eval.common import data_file, encode, load_model, load_tokenizer, pad_batch, special_ids
from mmbert.eval.finetune import FinetuneConfig, finetune, seed_everything
from mmbert.eval.loaders import TSV_FORMATS, TextExample, TsvFormat, parse_file_spec, read_tsv
from mmbert.eval.metrics import classification_scores
from mmbert.model import MmBertForSequenceClassification


def split_dev(examples: list, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, dev): a seeded ``fraction`` (at least one example) held out for early stopping."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, int(round(fraction * len(examples))))
    dev = set(order[:n_dev])
    return [e for i, e in enumerate(examples) if i not in dev], [examples[i] for i in sorted(dev)]


def finetune_classifier(checkpoint, train: list[TextExample], dev: list[TextExample],
                        tests: dict[str, list[TextExample]], *, tokenizer=None, config: FinetuneConfig | None = None,
                        positive: str | None = None, primary: str = "accuracy",
                        return_predictions: bool = False) -> tuple[dict, dict]:
    """Fine-tune on ``train`` (early stopping on ``dev``'s ``primary``), score each language of ``tests``.
    Returns (per-language metrics, training info); the info holds ``predictions`` per language on request."""
    config = config or FinetuneConfig()
    tok = load_tokenizer(checkpoint, tokenizer)
    labels = sorted({e.label for e in train})
    label_id = {lab: i for i, lab in enumerate(labels)}
    seed_everything(config.seed)
    model = load_model(MmBertForSequenceClassification, checkpoint, num_labels=len(labels))
    _, _, pad = special_ids(tok, model.config)

    def features(examples):
        pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
        ids = encode(tok, [e.text for e in examples], pairs, config.max_length, model.config)
        return [{"input_ids": s, "label": label_id.get(e.label, -1)} for s, e in zip(ids, examples)]

    def collate(batch):
        ids, mask = pad_batch([f["input_ids"] for f in batch], pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in batch])}

    @torch.inference_mode()
    def predict(examples) -> list[str]:
        feats, out = features(examples), []
        for i in range(0, len(feats), 64):
            b = collate(feats[i:i + 64])
            logits = model(b["input_ids"], b["attention_mask"]).logits
            out += [labels[j] for j in logits.argmax(-1).tolist()]
        return out

    def scores(examples):
        return classification_scores(predict(examples), [e.label for e in examples], positive=positive)

    unknown = sorted({e.label for e in dev} - set(labels))
    if unknown:
        raise ValueError(f"dev labels {unknown} never occur in the training data")
    result = finetune(model, features(train), collate, lambda m: scores(dev)[primary], config)
    predictions = {lang: predict(examples) for lang, examples in sorted(tests.items())}
    per_language = {lang: classification_scores(predictions[lang], [e.label for e in tests[lang]], positive=positive)
                    | {"examples": len(tests[lang])} for lang in predictions}
    info = {"predictions": predictions} if return_predictions else {}
    info |= {"labels": labels, "train_examples": len(train), "dev_examples": len(dev), "best_step": result.best_step,
            "steps": result.steps, "dev_" + primary: result.best_score, "finetune": config.to_dict()}
    return per_language, info


def by_language(examples: list[TextExample]) -> dict[str, list[TextExample]]:
    out: dict[str, list[TextExample]] = {}
    for e in examples:
        out.setdefault(e.lang, []).append(e)
    return out


def run_glue(checkpoint, name: str, *, data=None, train=None, dev=None, test=None, tokenizer=None,
             config: FinetuneConfig | None = None, lang: str = "eng", **_) -> dict:
    """A GLUE task from its TSVs: fine-tune on train, score on dev (or on ``test`` files with labels)."""
    if name not in TSV_FORMATS or name == "xnli":
        raise ValueError(f"unknown GLUE task {name!r}; known: {sorted(set(TSV_FORMATS) - {'xnli'})}")
    fmt = TSV_FORMATS[name]
    config = config or FinetuneConfig()
    train_path = Path(train or data_file(data, "train.tsv"))
    train_ex = read_tsv(train_path, fmt, lang)
    if dev:
        dev_ex = read_tsv(dev, fmt, lang)
    else:
        train_ex, dev_ex = split_dev(train_ex, seed=config.seed)
    tests = _test_sets(test or [data_file(data, "dev.tsv")], fmt, lang)
    per_language, info = finetune_classifier(checkpoint, train_ex, dev_ex, tests, tokenizer=tokenizer,
                                             config=config, positive=fmt.positive, primary=fmt.primary)
    return {"primary": fmt.primary, "per_language": per_language, "training": info}


def run_xnli(checkpoint, *, data=None, train=None, dev=None, test=None, tokenizer=None,
             config: FinetuneConfig | None = None, train_language: str = "en", languages=None,
             train_format: str = "mnli", **_) -> dict:
    """Zero-shot cross-lingual XNLI: train on ``train_language`` only, test on every (or the listed) language."""
    config = config or FinetuneConfig()
    dev_path = Path(dev or data_file(data, "xnli.dev.tsv"))
    dev_all = read_tsv(dev_path, "xnli")
    dev_ex = [e for e in dev_all if e.lang == train_language]
    if train:
        fmt = TSV_FORMATS["xnli"] if _has_column(train, "language") else TSV_FORMATS[train_format]
        train_ex = [e for e in read_tsv(train, fmt, train_language) if e.lang == train_language]
    else:
        train_ex, dev_ex = split_dev(dev_ex, seed=config.seed)
    if not train_ex or not dev_ex:
        raise ValueError(f"no {train_language!r} examples to train on / stop early with in {train or dev_path}")
    tests = by_language(read_tsv(test or data_file(data, "xnli.test.tsv"), "xnli"))
    if languages:
        tests = {k: v for k, v in tests.items() if k in set(languages)}
    per_language, info = finetune_classifier(checkpoint, train_ex, dev_ex, tests, tokenizer=tokenizer, config=config)
    return {"primary": "accuracy", "per_language": per_language,
            "training": info | {"train_language": train_language, "zero_shot": True}}


def _test_sets(specs, fmt: TsvFormat, default_lang: str) -> dict[str, list[TextExample]]:
    out: dict[str, list[TextExample]] = {}
    for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
        lang, path = parse_file_spec(spec)
        for lang_, examples in by_language(read_tsv(path, fmt, lang or default_lang)).items():
            out.setdefault(lang_, []).extend(examples)
    return out


def _has_column(path, name: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return name in f.readline().rstrip("\n").split("\t")
