"""Evaluation harness: one task per module, one entry point.

    evaluate(checkpoint, "xnli", data="XNLI-1.0/", train_language="en", max_steps=200) -> dict

Tasks (``TASKS``): GLUE (``glue-sst2``, ``glue-cola``, ...) and ``xnli`` (classification.py), ``qa``
(qa.py: SQuAD / TyDiQA-GoldP / XQuAD JSON), ``ner`` (token_classification.py: CoNLL files),
``retrieval`` and ``bitext`` (retrieval.py: embeddings, no fine-tuning) and the offline corpus tasks
``udhr-mlm``, ``udhr-bitext``, ``udhr-langid`` (udhr.py). Every result has the same shape
(``report.summarize``): ``per_language``, ``average``, ``groups`` (mmBERT's pretrain / midtrain / decay /
unseen languages) and ``low_resource``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time

from mmbert.eval.finetune import FinetuneConfig, config_with
from mmbert.eval.report import format_table, summarize, write_json

_FINETUNE_KEYS = {f.name for f in dataclasses.fields(FinetuneConfig)} | {"batch_size"}
# the harness's defaults: a bounded number of steps, dev every 50, no progress bar
_EVAL_DEFAULTS = dict(epochs=1e6, max_steps=500, eval_every=50, patience=3, progress=False)  # max_steps decides


def _glue(name):
    def run(checkpoint, **kw):
        from mmbert.eval.classification import run_glue

        return run_glue(checkpoint, name, **kw)
    return run


def _lazy(module: str, fn: str):
    def run(checkpoint, **kw):
        import importlib

        return getattr(importlib.import_module(f"mmbert.eval.{module}"), fn)(checkpoint, **kw)
    return run


def _udhr(fn: str):
    def run(checkpoint, *, languages=None, tokenizer=None, config=None, data=None, **kw):
        from mmbert.corpus import load_corpus
        from mmbert.eval import udhr

        records = load_corpus(data) if data else None
        func = getattr(udhr, fn)
        if fn == "language_identification":
            return func(checkpoint, tokenizer, records=records, languages=languages, config=config)
        if fn == "heldout_loss" and "max_length" in kw:
            kw["seq_len"] = kw.pop("max_length")
        accepted = inspect.signature(func).parameters
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            raise ValueError(f"task option(s) {unknown} do not apply to {fn}")
        return func(checkpoint, tokenizer, records=records, languages=languages, **kw)
    return run


TASKS = {
    **{f"glue-{n}": _glue(n) for n in ("sst2", "cola", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli")},
    "xnli": _lazy("classification", "run_xnli"),
    "qa": _lazy("qa", "run_qa"),
    "ner": _lazy("token_classification", "run_ner"),
    "retrieval": _lazy("retrieval", "run_retrieval"),
    "bitext": _lazy("retrieval", "run_bitext"),
    "udhr-mlm": _udhr("heldout_loss"),
    "udhr-bitext": _udhr("bitext_retrieval"),
    "udhr-langid": _udhr("language_identification"),
}
EMBEDDING = frozenset({"retrieval", "bitext", "udhr-bitext"})  # tasks that take ``precision``
FINETUNED = frozenset({n for n in TASKS if n.startswith("glue-")} | {"xnli", "qa", "ner", "udhr-langid"})
ALIASES = {"squad": "qa", "tydiqa": "qa", "xquad": "qa", "conll": "ner", "panx": "ner", "sst2": "glue-sst2",
           "cola": "glue-cola", "mnli": "glue-mnli"}


def evaluate(checkpoint, task: str, *, out=None, **options) -> dict:
    """Run ``task`` on ``checkpoint`` (a directory, or a loaded model with ``tokenizer=``) and return the
    result document; with ``out``, also write it as JSON. Fine-tuning options (``lr``, ``batch_size`` (read as
    ``batch_tokens = batch_size * max_length``), ``max_steps``, ``eval_every``, ``patience``, ``max_length``,
    ``seed``, or any other ``train.finetune.FinetuneConfig`` field) go to ``FinetuneConfig``; the rest
    to the task (``data``, ``train``, ``dev``, ``test``, ``languages``, ``train_language`` ...)."""
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)} (aliases: {sorted(ALIASES)})")
    options = {k: v for k, v in options.items() if v is not None}
    if "precision" in options and name not in EMBEDDING:
        raise ValueError(f"precision applies to the embedding tasks ({', '.join(sorted(EMBEDDING))}), not to {name}")
    ft = {k: options.pop(k) for k in list(options) if k in _FINETUNE_KEYS} if name in FINETUNED else {}
    if ft:
        base = options.pop("config", None) or (
            config_with(**_EVAL_DEFAULTS | {"max_length": 256}) if name == "qa" else
            config_with(**_EVAL_DEFAULTS | dict(lr=3e-4, batch_size=32, max_steps=400, eval_every=100, patience=2,
                                                max_length=64)) if name == "udhr-langid"
            else config_with(**_EVAL_DEFAULTS))
        options["config"] = config_with(base, **ft)
    started = time.perf_counter()
    raw = TASKS[name](checkpoint, **options)
    result = raw if "average" in raw else summarize(name, raw.pop("per_language"), raw.pop("primary"), **raw)
    result["task"] = name
    result["checkpoint"] = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else type(checkpoint).__name__
    result["seconds"] = round(time.perf_counter() - started, 2)
    if "config" in options:
        result.setdefault("finetune", options["config"].to_dict())
    if out is not None:
        write_json(result, out)
    return result


__all__ = ["ALIASES", "EMBEDDING", "FINETUNED", "TASKS", "FinetuneConfig", "evaluate", "format_table"]
