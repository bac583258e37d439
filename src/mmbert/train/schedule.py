"""Schedules as pure functions of the step: learning rate (warmup-stable-decay) and batch-size warmup.

Choices:
- Warmup-stable-decay (the "trapezoidal" schedule of ModernBERT and mmBERT, arXiv:2412.13663 and
  2509.06888): linear warmup from 0, a plateau at the peak, then a decay over the last fraction of the
  phase down to ``floor * peak``. Each phase has its own shape, so mmBERT's recipe is pretraining =
  warmup + stable, mid-training = stable, decay phase = decay to (nearly) 0.
- ``inv_sqrt`` is the "1 - sqrt" cooldown (Hägele et al., 2024, arXiv:2405.18392), the inverse-square-root
  shaped decay ModernBERT and mmBERT use: it stays high longer than linear and still reaches the floor.
- The LR of step ``s`` (0-based) is the value *after* ``s + 1`` steps of warmup, so the first step does not
  run at LR 0 and the last step of a decay runs at exactly the floor.
- Batch-size warmup grows the global batch linearly (in whole micro-batches across all ranks) from a
  fraction of the target over the first part of a phase, as ModernBERT/mmBERT do.
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak: float, warmup: float = 0.0, decay: str = "none",
          decay_fraction: float = 0.0, floor: float = 0.0) -> float:
    """Learning rate of 0-based ``step`` of a phase of ``total_steps``; fractions are of ``total_steps``."""
    if total_steps <= 0 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside a phase of {total_steps} steps")
    warmup_steps = int(round(warmup * total_steps))
    decay_steps = int(round(decay_fraction * total_steps)) if decay != "none" else 0
    decay_start = total_steps - decay_steps
    if decay_steps and step >= decay_start:
        t = (step - decay_start + 1) / decay_steps  # in (0, 1]
        return peak * (floor + (1.0 - floor) * decay_factor(decay, t))
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak


def decay_factor(shape: str, t: float) -> float:
    """1 at t = 0 falling to 0 at t = 1."""
    if shape == "linear":
        return 1.0 - t
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if shape == "inv_sqrt":
        return 1.0 - math.sqrt(t)
    if shape == "none":
        return 1.0
    raise ValueError(f"unknown decay shape {shape!r}; expected none, linear, cosine or inv_sqrt")


def batch_tokens_at(step: int, total_steps: int, target_tokens: int, unit_tokens: int,
                    warmup: float = 0.0, start: float = 1.0) -> int:
    """Global batch (tokens) of ``step``: grows linearly from ``start * target`` to ``target`` over the first
    ``warmup`` fraction of the phase, rounded down to whole ``unit_tokens`` (micro-batch x ranks), at least one."""
    if target_tokens % unit_tokens:
        raise ValueError(f"target batch {target_tokens} is not a multiple of the unit {unit_tokens}")
    warmup_steps = int(round(warmup * total_steps))
    if warmup_steps == 0 or step >= warmup_steps:
        return target_tokens
    frac = start + (1.0 - start) * step / warmup_steps
    return max(unit_tokens, int(frac * target_tokens) // unit_tokens * unit_tokens)


def phase_steps(steps: int | None, tokens: int | None, batch_tokens: int) -> int:
    """Steps of a phase set by ``steps`` or by a token budget at the full batch size."""
    if steps is not None:
        return steps
    return max(1, math.ceil(tokens / batch_tokens))
