"""One optimizer step, shared by every trainer (MLM pretraining, fine-tuning, embedding training).

A *task* says two things about its micro-batches, and nothing else: how many loss units one holds
(predicted tokens for MLM, examples for classification, labelled first pieces for tagging, windows
for QA) and how to run forward + loss on it (the mean loss over its units). :func:`optimizer_step`
does the rest, the same way for every task:

- the unit and token counts of all micro-batches on all ranks are summed first; each micro-batch's
  summed loss (mean x its units) is scaled by ``world_size / global units``, so after DDP's gradient
  average the gradient is that of the mean loss over every unit of the global batch — the same as one
  process accumulating the same micro-batches;
- gradients are synchronised on the last micro-batch only (``no_sync``), forward runs under the given
  autocast (bf16 where the hardware has it), weights stay fp32;
- the global gradient norm is clipped; a step whose global loss or gradient norm is not finite changes
  no weight (the caller counts it and stops after a run of them).

The MLM trainer (``trainer.py``) calls this with :class:`MlmTask`; its numbers are bit-identical to the
loop body it replaced (checked with ``mmbert run configs/miniature.yaml --quick``: summary.json equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mmbert.train.optim import clip_gradients
from mmbert.train.parallel import all_reduce_sum, no_sync


class Task(Protocol):
    """What the step needs of a task: micro-batches are whatever the task's batcher yields (dicts here)."""

    def count(self, batch: Any) -> tuple[int, int]:
        """(loss units, input tokens) of one micro-batch, computed on the host (no device sync)."""

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """Forward ``batch`` through ``model`` on ``device``; the mean loss over its units (a 0-d tensor)."""

    # Optional, instead of ``loss``: a task that must run its own backward (GradCache re-runs the forward chunk
    # by chunk after the loss, ``train/embedding.py``) defines
    #     forward_backward(model, batch, device, scale: float) -> torch.Tensor
    # which backpropagates ``mean loss x scale`` itself and returns the mean loss, detached.


@dataclass
class StepResult:
    loss: float  # mean loss over every unit of the global batch (nan/inf when the step was skipped)
    grad_norm: float  # global gradient norm before clipping (nan when the loss was not finite)
    tokens: int  # input tokens of the global batch
    units: int  # loss units of the global batch

    @property
    def ok(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


class MlmTask:
    """Masked-LM micro-batches of ``data.loader``: units are predicted tokens (label != -100)."""

    def count(self, b: dict) -> tuple[int, int]:
        return int((b["labels"] != -100).sum()), int(b["num_tokens"])

    def loss(self, model, b: dict, device: torch.device) -> torch.Tensor:
        out = model(b["input_ids"].to(device), labels=b["labels"].to(device), cu_seqlens=b["cu_seqlens"].to(device),
                    max_seqlen=int(b["max_seqlen"]), position_ids=b["position_ids"].to(device))
        return out.loss


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list, task: Task,
                   *, device: torch.device, world_size: int = 1, autocast=None, grad_clip: float = 1.0) -> StepResult:
    """Accumulate ``micro_batches`` (this rank's share of the global batch), then step ``optimizer`` unless
    the loss or gradient is not finite. ``autocast``: a callable returning the forward's context manager."""
    counts = [task.count(b) for b in micro_batches]
    totals = torch.tensor([sum(c[0] for c in counts), sum(c[1] for c in counts)], dtype=torch.float64, device=device)
    n_units, n_tokens = (int(x) for x in all_reduce_sum(totals).tolist())
    scale = world_size / max(n_units, 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    last = len(micro_batches) - 1
    own_backward = getattr(task, "forward_backward", None)
    for i, (b, (n_i, _)) in enumerate(zip(micro_batches, counts)):
        if own_backward is not None:  # the task backpropagates (mean loss x n_i x scale) itself
            with no_sync(model, i == last), (autocast() if autocast is not None else _null()):
                unit_loss = own_backward(model, b, device, scale * n_i).float() * n_i
        else:
            with no_sync(model, i == last), (autocast() if autocast is not None else _null()):
                unit_loss = task.loss(model, b, device).float() * n_i
            (unit_loss * scale).backward()
        loss_sum += unit_loss.detach().double()
    loss = float(all_reduce_sum(loss_sum)) / max(n_units, 1)
    grad_norm = float(clip_gradients(model, grad_clip)) if math.isfinite(loss) else math.nan
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm, n_tokens, n_units)


def _null():
    import contextlib

    return contextlib.nullcontext()
