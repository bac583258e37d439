"""The fine-tuning tasks: how features become an unpadded micro-batch and how its loss is computed.

Features (one tokenised example, plain Python values) per task:
- ``classification``: ``{"input_ids": [...], "label": int}``; ``regression``: ``"label": float``
  (the head's single output, MSE, as transformers' ``problem_type: regression``);
- ``token-classification``: ``{"input_ids": [...], "labels": [...]}``, one label per token, -100 where a
  token carries none (specials, a word's later pieces: labels on the first piece, as ``run_ner.py``);
- ``qa``: ``{"input_ids": [...], "start": int, "end": int}``, token positions of the answer in the
  window (0, the ``<bos>``, when the window does not hold it, as ``run_qa.py``).

Loss units (what the global mean is over): examples for classification/regression, labelled tokens for
token classification, windows for QA — so accumulation over micro-batches gives the loss of the whole
batch, whatever its split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmbert.model import MmBertForQuestionAnswering, MmBertForSequenceClassification, MmBertForTokenClassification
from mmbert.train.embedding import EmbeddingTask


def flat_batch(features: list[dict]) -> dict:
    """Concatenate the features' ``input_ids``: (N,) ids, (D+1,) int32 cu_seqlens, max_seqlen, num_tokens."""
    lengths = [len(f["input_ids"]) for f in features]
    ids = torch.tensor([t for f in features for t in f["input_ids"]], dtype=torch.long)
    cu = F.pad(torch.tensor(lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    return {"input_ids": ids, "cu_seqlens": cu, "max_seqlen": max(lengths), "num_tokens": sum(lengths)}


class FinetuneTask:
    """Base: subclasses set ``name`` / ``model_class`` and implement ``collate`` and ``loss``."""

    name = ""
    model_class: type = MmBertForSequenceClassification

    def length(self, feature: dict) -> int:
        return len(feature["input_ids"])

    def collate(self, features: list[dict]) -> dict:
        raise NotImplementedError

    def count(self, batch: dict) -> tuple[int, int]:
        return int(batch["units"]), int(batch["num_tokens"])

    def loss(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _inputs(batch: dict, device: torch.device) -> dict:
        return {"cu_seqlens": batch["cu_seqlens"].to(device), "max_seqlen": int(batch["max_seqlen"])}


class ClassificationTask(FinetuneTask):
    name = "classification"
    model_class = MmBertForSequenceClassification

    def collate(self, features: list[dict]) -> dict:
        b = flat_batch(features)
        b["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        b["units"] = len(features)
        return b

    def loss(self, model, batch: dict, device) -> torch.Tensor:
        logits = model(batch["input_ids"].to(device), **self._inputs(batch, device)).logits  # (D, C)
        return F.cross_entropy(logits.float(), batch["labels"].to(device))


class RegressionTask(ClassificationTask):
    name = "regression"

    def collate(self, features: list[dict]) -> dict:
        b = flat_batch(features)
        b["labels"] = torch.tensor([float(f["label"]) for f in features], dtype=torch.float32)
        b["units"] = len(features)
        return b

    def loss(self, model, batch: dict, device) -> torch.Tensor:
        logits = model(batch["input_ids"].to(device), **self._inputs(batch, device)).logits  # (D, 1)
        return F.mse_loss(logits.float().squeeze(-1), batch["labels"].to(device))


class TokenClassificationTask(FinetuneTask):
    name = "token-classification"
    model_class = MmBertForTokenClassification

    def collate(self, features: list[dict]) -> dict:
        b = flat_batch(features)
        b["labels"] = torch.tensor([t for f in features for t in f["labels"]], dtype=torch.long)  # (N,)
        b["units"] = int((b["labels"] != -100).sum())
        return b

    def loss(self, model, batch: dict, device) -> torch.Tensor:
        logits = model(batch["input_ids"].to(device), **self._inputs(batch, device)).logits  # (N, C)
        labels = batch["labels"].to(device)
        if batch["units"] == 0:  # a micro-batch without a labelled token: zero loss that keeps the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)


class QuestionAnsweringTask(FinetuneTask):
    name = "qa"
    model_class = MmBertForQuestionAnswering

    def collate(self, features: list[dict]) -> dict:
        b = flat_batch(features)
        b["start"] = torch.tensor([f["start"] for f in features], dtype=torch.long)
        b["end"] = torch.tensor([f["end"] for f in features], dtype=torch.long)
        b["units"] = len(features)
        return b

    def loss(self, model, batch: dict, device) -> torch.Tensor:
        out = model(batch["input_ids"].to(device), **self._inputs(batch, device))  # (D, T_max) each
        return (F.cross_entropy(out.start_logits, batch["start"].to(device))
                + F.cross_entropy(out.end_logits, batch["end"].to(device))) / 2


TASKS: dict[str, FinetuneTask] = {}


def register_task(task: FinetuneTask) -> FinetuneTask:
    """Make ``task`` available as ``--task task.name`` (a later registration of the same name replaces it)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> FinetuneTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


for _t in (ClassificationTask(), RegressionTask(), TokenClassificationTask(), QuestionAnsweringTask(),
           EmbeddingTask()):  # a run builds its own EmbeddingTask(settings); this one has the defaults
    register_task(_t)
