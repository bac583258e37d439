"""MLM masking: realised ratio, the 80/10/10 split, and special tokens."""

from __future__ import annotations

import pytest
import torch

from mmbert.data import IGNORE_INDEX, mask_tokens
from mmbert.data.masking import _nonspecial_ids

VOCAB, MASK = 1000, 4
SPECIALS = frozenset({0, 1, 2, 3, 4, 500})  # an id in the middle too, to exercise the remapping


def sample_ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n,), generator=g)
    ids[::10] = 2  # <bos> every 10 tokens
    ids[9::10] = 1  # <eos>
    ids[5::37] = 500
    return ids


@pytest.mark.parametrize("ratio", [0.3, 0.15, 0.05])
def test_ratio_and_80_10_10_over_100k_tokens(ratio):
    ids = sample_ids(100_000)
    masked, labels = mask_tokens(ids, ratio, MASK, VOCAB, SPECIALS, torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(sorted(SPECIALS)))
    predicted = labels != IGNORE_INDEX
    eligible = int((~special).sum())
    realised = predicted.sum().item() / eligible
    assert abs(realised - ratio) < 1e-4, f"realised {realised:.5f} vs {ratio}"
    assert not (predicted & special).any(), "a special token was selected"
    assert torch.equal(labels[predicted], ids[predicted]) and torch.equal(masked[~predicted], ids[~predicted])
    k = predicted.sum().item()
    n_mask = (masked[predicted] == MASK).sum().item()
    changed = (masked[predicted] != ids[predicted]) & (masked[predicted] != MASK)
    n_kept = (masked[predicted] == ids[predicted]).sum().item()
    # Exact by construction except that a random draw can hit the original token (p ≈ 1/995).
    assert abs(n_mask / k - 0.8) < 0.002, f"mask share {n_mask / k:.4f}"
    assert abs(changed.sum().item() / k - 0.1) < 0.005, f"random share {changed.sum().item() / k:.4f}"
    assert abs(n_kept / k - 0.1) < 0.005, f"keep share {n_kept / k:.4f}"
    replaced = masked[predicted][masked[predicted] != MASK]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIALS))).any(), "a random replacement is special"


def test_random_replacements_are_uniform_over_ordinary_ids():
    j = torch.arange(VOCAB - len(SPECIALS))
    ids = _nonspecial_ids(j, torch.tensor(sorted(SPECIALS)))
    expected = torch.tensor([i for i in range(VOCAB) if i not in SPECIALS])
    assert torch.equal(ids, expected)  # a bijection onto the non-special ids, so uniform j -> uniform id


def test_deterministic_and_does_not_modify_input():
    ids = sample_ids(5000)
    before = ids.clone()
    a = mask_tokens(ids, 0.15, MASK, VOCAB, SPECIALS, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, 0.15, MASK, VOCAB, SPECIALS, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, 0.15, MASK, VOCAB, SPECIALS, torch.Generator().manual_seed(8))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_zero_ratio_and_all_special():
    ids = sample_ids(200)
    masked, labels = mask_tokens(ids, 0.0, MASK, VOCAB, SPECIALS, torch.Generator())
    assert torch.equal(masked, ids) and (labels == IGNORE_INDEX).all()
    specials = torch.tensor([0, 1, 2, 2, 1])
    masked, labels = mask_tokens(specials, 0.5, MASK, VOCAB, SPECIALS, torch.Generator())
    assert torch.equal(masked, specials) and (labels == IGNORE_INDEX).all()
