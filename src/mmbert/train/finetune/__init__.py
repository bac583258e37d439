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

Optional hooks, for a task whose loss is over the whole batch (``train/embedding.py``, ``--task embedding``):
``plan_epoch(features, seed, epoch) -> [[example index, ...] per step]`` replaces the token-budgeted plan
(a pure function of the epoch: resume rebuilds it); ``micro_batches(step, rank, world_size) -> [[index, ...]]``
replaces the token-budgeted split (the embedding task: the rank's share as one micro-batch); and
``forward_backward(model, batch, device, scale) -> detached mean loss`` replaces ``loss`` in the step when the
task must run its own backward (GradCache), backpropagating ``mean loss x scale`` itself.
"""

from mmbert.train.finetune.config import FinetuneConfig, load_finetune_config
from mmbert.train.finetune.loop import FitResult, fit
from mmbert.train.finetune.tasks import TASKS, FinetuneTask, get_task, register_task

__all__ = ["TASKS", "FinetuneConfig", "FinetuneTask", "FitResult", "fit", "get_task", "load_finetune_config",
           "register_task"]
