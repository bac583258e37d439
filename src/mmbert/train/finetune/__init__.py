"""Supervised fine-tuning: one loop (``loop.fit``) for every task, on the shared optimizer step.

Layout:
- ``config.py``  ``FinetuneConfig``: YAML + ``--set key=value`` overrides (the same machinery as
  ``mmbert train``'s config), every field documented, unknown keys an error naming the key;
- ``tasks.py``   the tasks (classification, regression, token-classification, qa) and their registry;
- ``batches.py`` features -> token-budgeted, *unpadded* micro-batches (flat ``input_ids`` + ``cu_seqlens``);
- ``loop.py``    ``fit``: AdamW (``train.optim``), warmup + linear / 1-sqrt decay (``train.schedule.lr_at``),
  gradient accumulation and the non-finite skip (``train.step.optimizer_step``), dev evaluation every N
  steps through an injected callable, early stopping, the best weights kept, atomic checkpoints and exact
  resume (``train.checkpoint``), metrics (``train.metrics``), torchrun DDP (``train.parallel``).

This package knows nothing of file formats, tokenisation of task data or metrics: those are eval's
(``eval/loaders.py``, ``eval/tasks``, ``eval/metrics.py``); ``recipe/finetune.py`` wires them to ``fit``.

The task interface (what a new task, e.g. ``--task embedding`` of issue #15, implements)
----------------------------------------------------------------------------------------
A task is an object with (``tasks.FinetuneTask``; ``train.step.Task`` is the part the step uses)::

    name: str                                    # the --task value
    model_class: type                            # a model.heads class (or any PretrainedMixin model)
    def collate(self, features: list[dict]) -> dict   # features -> one unpadded micro-batch (tensors, CPU)
    def count(self, batch: dict) -> tuple[int, int]   # (loss units, input tokens) of a micro-batch
    def loss(self, model, batch: dict, device) -> torch.Tensor   # forward + mean loss over the batch's units
    def length(self, feature: dict) -> int       # tokens of one feature (the token budget packs by it)

A *feature* is one training example already tokenised, a dict of plain Python values (JSON-able, so a
data order can be rebuilt on resume); ``collate`` is the only code that turns features into tensors.
Register with ``tasks.register_task(task)``; ``tasks.get_task(name)`` finds it. ``fit(model, features,
task, config, out_dir, evaluate=...)`` then trains it with everything above; ``evaluate(model) -> float``
(higher is better) is the dev metric.

Notes for a contrastive (in-batch negatives) task: ``optimizer_step`` sums per-micro-batch losses, so
negatives are shared within one micro-batch only. A task whose loss needs the whole global batch at once
(GradCache: embed every micro-batch without grad, loss on all embeddings, then re-run each micro-batch
with the cached embedding gradients) keeps the same interface by doing that inside ``loss`` on one
micro-batch that holds the whole step (``micro_batch_tokens >= batch_tokens``): the step then scales,
clips and skips non-finite updates exactly as for the other tasks.
"""

from mmbert.train.finetune.config import FinetuneConfig, load_finetune_config
from mmbert.train.finetune.loop import FitResult, fit
from mmbert.train.finetune.tasks import TASKS, FinetuneTask, get_task, register_task

__all__ = ["TASKS", "FinetuneConfig", "FinetuneTask", "FitResult", "fit", "get_task", "load_finetune_config",
           "register_task"]
