"""MLM masking: choose positions to predict, then 80% <mask> / 10% random token / 10% unchanged (BERT).

Choices:
- The number of predicted positions is exactly ``round(mask_ratio * eligible)`` per call, drawn as a
  uniformly random subset of the non-special positions, and the 80/10/10 split of that subset is exact
  too (ModernBERT/HF draw Bernoulli per token; an exact count gives the same expectation with no
  batch-to-batch variance in the number of predicted tokens). mmBERT anneals the ratio 30% → 15% → 5%.
- Special tokens (<pad>, <bos>, <eos>, <mask>, <unk>, ...) are never chosen and never drawn as random
  replacements: a replacement is uniform over the ``vocab_size - len(special_ids)`` ordinary ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def _nonspecial_ids(j: torch.Tensor, specials_sorted: torch.Tensor) -> torch.Tensor:
    """Map j in [0, vocab - k) to the j-th id that is not special: id = j + #{specials s_i : s_i - i <= j}."""
    if specials_sorted.numel() == 0:
        return j
    shifted = specials_sorted - torch.arange(specials_sorted.numel(), dtype=specials_sorted.dtype)
    return j + torch.searchsorted(shifted, j, right=True)


def mask_tokens(
    input_ids: torch.Tensor,
    mask_ratio: float,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_ids, labels)``; labels hold the original id where predicted, -100 elsewhere.

    ``input_ids`` (any shape, int64) is not modified. ``special_ids`` must include ``mask_id``.
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    specials = torch.tensor(sorted({int(s) for s in special_ids} | {int(mask_id)}), dtype=torch.long)
    specials = specials[specials < vocab_size]
    flat = input_ids.reshape(-1)
    eligible = torch.nonzero(~torch.isin(flat, specials), as_tuple=True)[0]  # (E,)
    k = int(round(mask_ratio * eligible.numel()))
    order = torch.randperm(eligible.numel(), generator=generator)[:k]
    chosen = eligible[order]  # (k,) in random order, so slicing it gives random subsets
    n_mask, n_random = int(round(0.8 * k)), int(round(0.1 * k))
    masked = flat.clone()
    labels = torch.full_like(flat, IGNORE_INDEX)
    labels[chosen] = flat[chosen]
    masked[chosen[:n_mask]] = mask_id
    rand_pos = chosen[n_mask : n_mask + n_random]
    j = torch.randint(0, vocab_size - specials.numel(), (rand_pos.numel(),), generator=generator)
    masked[rand_pos] = _nonspecial_ids(j, specials)
    # chosen[n_mask + n_random:] keep their token but are still predicted.
    return masked.view_as(input_ids), labels.view_as(input_ids)
