"""Evaluation by fine-tuning, on the trainer's loop: what the task files (classification, token
classification, QA, UDHR language id) share to train a task head with ``train.finetune.fit`` and to run
the trained model over many inputs.

``eval`` sits above ``train`` for this: the loop (token-budgeted unpadded batches, warmup + decay, dev
evaluation with early stopping, the best weights kept, resume) is the trainer's, and a task here only
turns its examples into features (``train.finetune.tasks`` says their shape) and scores predictions.
``FinetuneConfig`` is the trainer's; ``batch_size`` (examples) of older call sites is read as a token
budget of ``batch_size * max_length``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from mmbert.model.batching import pack_by_tokens
from mmbert.train.finetune import FinetuneConfig, fit, get_task

__all__ = ["FinetuneConfig", "FinetuneStopped", "config_with", "fit", "fit_summary", "get_task", "label_fields",
           "label_order", "run_unpadded", "task_model"]


def config_with(base: FinetuneConfig | None = None, **values) -> FinetuneConfig:
    """``base`` (default: the trainer's defaults) with ``values``; ``batch_size`` becomes ``batch_tokens``."""
    base = base or FinetuneConfig()
    size = values.pop("batch_size", None)
    cfg = dataclasses.replace(base, **values)
    if size is not None:
        cfg = dataclasses.replace(cfg, batch_tokens=size * cfg.max_length, micro_batch_tokens=size * cfg.max_length)
    return cfg


def label_order(labels) -> list[str]:
    """The training labels in a stable order: numerically when every label is an integer, else sorted."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(uniq)


def label_fields(labels: list[str] | None) -> dict:
    """ModelConfig overrides for a head over ``labels`` (None: regression, one output), saved in config.json
    as transformers expects (``id2label`` / ``label2id``, ``problem_type``)."""
    if labels is None:
        return {"num_labels": 1, "extra": {"problem_type": "regression", "id2label": {"0": "LABEL_0"},
                                           "label2id": {"LABEL_0": 0}}}
    return {"num_labels": len(labels), "extra": {"problem_type": "single_label_classification",
                                                 "id2label": {str(i): lab for i, lab in enumerate(labels)},
                                                 "label2id": {lab: i for i, lab in enumerate(labels)}}}


@torch.inference_mode()
def run_unpadded(model, seqs: list[list[int]], max_tokens: int = 8192
                 ) -> Iterator[tuple[list[int], object, torch.Tensor]]:
    """Forward ``seqs`` in token-budgeted unpadded batches: yields (indices into ``seqs``, the model's output,
    cu_seqlens) per batch. No compute on pads."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for group in pack_by_tokens([len(s) for s in seqs], max_tokens):
            lengths = torch.tensor([len(seqs[i]) for i in group])
            flat = torch.tensor([t for i in group for t in seqs[i]], dtype=torch.long, device=device)
            cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).to(device)
            yield group, model(flat, cu_seqlens=cu, max_seqlen=int(lengths.max())), cu
    finally:
        model.train(was_training)


def task_model(cls, checkpoint, labels: list[str] | None = None, with_labels: bool = True, **overrides):
    """``cls`` over ``checkpoint``'s encoder (``common.load_model``) with the label maps merged into the
    checkpoint's own config fields."""
    from mmbert.eval.common import load_model
    from mmbert.model import ModelConfig

    base = checkpoint.config if hasattr(checkpoint, "config") else ModelConfig.load(checkpoint)
    if with_labels:
        fields = label_fields(labels)
        overrides = {**overrides, "num_labels": fields["num_labels"], "extra": {**base.extra, **fields["extra"]}}
    return load_model(cls, checkpoint, **{k: v for k, v in overrides.items() if v is not None})


class FinetuneStopped(RuntimeError):
    """``fit`` stopped before the end (a signal, or a run of non-finite steps); its message says how to go on."""

    def __init__(self, result):
        super().__init__(result.message)
        self.result = result


def fit_summary(result) -> dict:
    """The JSON-able facts of a ``FitResult`` for a results file."""
    return {"steps": result.steps, "total_steps": result.total_steps, "best_step": result.best_step,
            "best_dev": result.best_score, "dev_history": [list(h) for h in result.history],
            "early_stopped": result.early_stopped, "skipped_steps": result.skipped_steps, "tokens": result.tokens,
            "train_seconds": round(result.train_seconds, 3), "tokens_per_s": round(result.tokens_per_s, 1),
            "resumed_from": result.resumed_from}
