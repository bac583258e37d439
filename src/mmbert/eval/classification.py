"""Sequence and sentence-pair classification: GLUE (SST-2, CoLA, MRPC, QQP, MNLI, QNLI, RTE, WNLI) and
XNLI with zero-shot cross-lingual transfer (fine-tune on one language, test on every language, as
XTREME does).

Input is ``<bos> A <eos> [B <eos>]``; the head is ``MmBertForSequenceClassification`` (pooling from the
checkpoint's config, "cls" unless set), trained by ``train.finetune.fit`` on unpadded token-budgeted batches;
labels in sorted order (numerically when they are integers), saved as ``id2label`` / ``label2id``. Splits, as the benchmarks ship them:
- GLUE: ``DIR/train.tsv`` and ``DIR/dev.tsv`` (GLUE's test labels are hidden, so scores are on dev, as
  papers report); early stopping uses a seeded 10% of train, so dev never steers training.
- XNLI: ``DIR/xnli.dev.tsv`` and ``DIR/xnli.test.tsv``; training data from ``--train`` (MNLI's TSV) or
  else the ``train_language`` rows of xnli.dev.tsv; early stopping on ``train_language`` dev rows (or a
  seeded 10% of train when train came from dev); test on every language of xnli.test.tsv.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from mmbert.eval.common import data_file, encode, load_tokenizer
from mmbert.eval.finetune import (
    FinetuneConfig,
    FinetuneStopped,
    fit,
    fit_summary,
    get_task,
    label_order,
    run_unpadded,
    task_model,
)
from mmbert.eval.loaders import TSV_FORMATS, TextExample, TsvFormat, parse_file_spec, read_tsv
from mmbert.eval.metrics import classification_scores, regression_scores
from mmbert.model import MmBertForSequenceClassification

log = logging.getLogger(__name__)


def split_dev(examples: list, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, dev): a seeded ``fraction`` (at least one example) held out for early stopping."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, int(round(fraction * len(examples))))
    dev = set(order[:n_dev])
    return [e for i, e in enumerate(examples) if i not in dev], [examples[i] for i in sorted(dev)]


def text_features(tok, examples: list[TextExample], label_id: dict[str, int] | None, max_length: int,
                  config=None) -> list[dict]:
    """``{"input_ids", "label"}`` per example: ``<bos> A <eos> [B <eos>]``; ``label_id`` None = regression
    (the label parsed as a number); unlabelled examples get label -1."""
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    ids = encode(tok, [e.text for e in examples], pairs, max_length, config)
    if label_id is None:
        return [{"input_ids": s, "label": _number(e.label) if e.label else 0.0} for s, e in zip(ids, examples)]
    return [{"input_ids": s, "label": label_id.get(e.label, -1)} for s, e in zip(ids, examples)]


def _number(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        raise ValueError(f"regression label {label!r} is not a number") from None


def check_labels(labels: list[str], splits: dict[str, list[TextExample]], strict: bool = True) -> None:
    """A dev / test label that training never saw (it could never be predicted): an error, or with
    ``strict=False`` for test sets a warning (scored as misses)."""
    known = set(labels)
    for name, examples in splits.items():
        unknown = sorted({e.label for e in examples} - known)
        if unknown:
            message = f"{name} labels {unknown[:5]} never occur in the training data"
            if strict or name == "dev":
                raise ValueError(message)
            log.warning("%s: they are scored as misses", message)


def finetune_classifier(checkpoint, train: list[TextExample], dev: list[TextExample],
                        tests: dict[str, list[TextExample]], *, tokenizer=None, config: FinetuneConfig | None = None,
                        positive: str | None = None, primary: str = "accuracy", return_predictions: bool = False,
                        regression: bool = False, out_dir=None, world=None, return_model: bool = False,
                        strict_labels: bool = False) -> tuple[dict, dict]:
    """Fine-tune on ``train`` (early stopping on ``dev``'s ``primary``), score each language of ``tests``.
    Returns (per-language metrics, training info); the info holds ``predictions`` per language on request
    and the trained ``model`` with ``return_model``. ``regression``: one output, MSE, Pearson/Spearman
    (``primary`` defaults to pearson). ``out_dir`` / ``world``: resumable checkpoints and DDP (``fit``)."""
    config = config or FinetuneConfig()
    tok = load_tokenizer(checkpoint, tokenizer)
    labels = None if regression else label_order(e.label for e in train)
    if regression and primary == "accuracy":
        primary = "pearson"
    if labels is not None:
        check_labels(labels, {"dev": dev, **{f"test ({k})": v for k, v in tests.items()}}, strict_labels)
    label_id = None if labels is None else {lab: i for i, lab in enumerate(labels)}
    torch.manual_seed(config.seed)  # the new classifier's initialisation
    model = task_model(MmBertForSequenceClassification, checkpoint, labels,
                       classifier_pooling=config.classifier_pooling)

    def predict(examples) -> list:
        feats, out = text_features(tok, examples, label_id, config.max_length, model.config), [None] * len(examples)
        for group, o, _ in run_unpadded(model, [f["input_ids"] for f in feats]):
            logits = o.logits.float()
            vals = logits.squeeze(-1).tolist() if labels is None else [labels[j] for j in logits.argmax(-1).tolist()]
            for i, v in zip(group, vals):
                out[i] = v
        return out

    def scores(examples):
        preds = predict(examples)
        if labels is None:
            return regression_scores(preds, [_number(e.label) for e in examples])
        return classification_scores(preds, [e.label for e in examples], positive=positive)

    task = get_task("regression" if regression else "classification")
    result = fit(model, text_features(tok, train, label_id, config.max_length, model.config), task, config, out_dir,
                 evaluate=lambda m: scores(dev)[primary], tokenizer=tok, world=world)
    if not result.completed:
        raise FinetuneStopped(result)
    predictions = {lang: predict(examples) for lang, examples in sorted(tests.items())}
    per_language = {}
    for lang, preds in predictions.items():
        gold = tests[lang]
        s = (regression_scores(preds, [_number(e.label) for e in gold]) if labels is None
             else classification_scores(preds, [e.label for e in gold], positive=positive))
        per_language[lang] = s | {"examples": len(gold)}
    info = {"predictions": predictions} if return_predictions else {}
    info |= {"labels": labels, "train_examples": len(train), "dev_examples": len(dev), "best_step": result.best_step,
             "steps": result.steps, "dev_" + primary: result.best_score, "finetune": config.to_dict(),
             "fit": fit_summary(result)}
    if return_model:
        info["model"], info["tokenizer"] = model, tok
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
