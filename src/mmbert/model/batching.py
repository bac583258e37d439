"""Token-budgeted batching: which sequences share one unpadded forward pass.

Packing follows the unpadded execution of the encoder (``modeling.py``): a batch is a stream of whole
sequences whose lengths sum to at most ``budget`` tokens, so its cost is set by tokens, not by
``batch_size x longest``. Sequences are taken longest first, which keeps the big ones together and makes
the number of batches close to ``total_tokens / budget`` on mixed lengths. Used by serving (``serve.encoder``),
evaluation (``eval.common``) and fine-tuning (``train.finetune.batches``, in a shuffled order); it lives here,
beside the unpadded batching, so none imports another.
"""

from __future__ import annotations

from typing import Sequence


def pack_by_tokens(lengths: Sequence[int], budget: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of at most ``budget`` tokens, longest first (or taken
    greedily in ``order``, e.g. a shuffled epoch of fine-tuning).

    A sequence longer than ``budget`` gets a batch of its own (it must run somewhere). Every index
    appears exactly once.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches
