"""The merge math: pure tensor-in, tensor-out functions, one tensor (of every model) at a time.

Follows mergekit's ``generalized_task_arithmetic`` (linear, task arithmetic, TIES) and the TIES paper
(Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models"):

- ``linear``:           θ = Σ w_i θ_i / Σ w_i           (``normalize=False``: θ = Σ w_i θ_i)
- ``task_arithmetic``:  θ = θ_base + λ Σ w_i τ_i,  τ_i = θ_i − θ_base   (``normalize=True``: / Σ w_i)
- ``ties``:             τ̂_i = trim(τ_i, density);  s = sign(Σ w_i τ̂_i);
                        θ = θ_base + λ Σ_i [sign(w_i τ̂_i) = s] w_i τ̂_i / Σ_i [sign(w_i τ̂_i) = s] w_i
                        (``normalize=False`` drops the division, as mergekit).

Tie-breaking, made explicit (mergekit leaves the first to an unstable sort):

- trim keeps exactly k = ⌊density · n⌋ entries per tensor (n = numel; a 1e-6 slack absorbs float
  representation, so density 0.29 of 100 keeps 29 where mergekit's ``int()`` keeps 28). Entries whose
  magnitude is above the k-th largest are kept; among entries *equal* to it, the first ones in row-major
  (flattened) order are kept until k are. ``density`` 0 keeps nothing (mergekit refuses it); 1 keeps all.
- a summed value of exactly 0 elects the sign +1 (mergekit's ``>= 0``).
- a zero (trimmed) value agrees with neither sign: it adds to neither numerator nor divisor. Where no value
  agrees the divisor is taken as 1, so the merged delta there is 0 and the base is kept.

Arithmetic runs in float32 (float64 stays float64); callers cast the result back to the checkpoint dtype.
The ``*_`` / ``inplace=True`` forms reuse their inputs' memory so the streaming runner holds about
(N + 2) tensors for TIES and 4 for the others; the plain forms never modify their arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

METHODS = ("linear", "task_arithmetic", "ties")

# Elementwise stages run on flat chunks of this many elements, so their temporaries stay at a few
# chunks (1 Mi fp32 = 4 MiB) rather than a few copies of a 786 MB embedding matrix.
CHUNK = 1 << 20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every floating dtype narrower than 64 bits: bf16 sums over N models would round away
    the small task vectors TIES is about."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def keep_count(numel: int, density: float) -> int:
    """k = ⌊density · numel⌋, with a slack so 0.29 × 100 gives 29, not 28.999... → 28."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return min(numel, int(density * numel + 1e-6))


def trim_magnitude_(delta: torch.Tensor, density: float, chunk: int = CHUNK) -> torch.Tensor:
    """Zero all but the top-``density`` fraction of ``delta`` by magnitude, in place (see module doc for ties).

    The threshold comes from ``numpy.partition`` on one |delta| copy: introselect, O(n), one extra tensor.
    (``torch.kthvalue`` on CPU takes ~4 copies and is ~30x slower on a 50M-element tensor; ``argsort`` needs
    int64 indices, 2 copies.) The mask is then built chunk by chunk.
    """
    if not delta.is_floating_point():
        raise ValueError(f"trim needs a floating tensor, got {delta.dtype}")
    if not delta.is_contiguous():
        raise ValueError("trim_magnitude_ works in place on a contiguous tensor")
    flat = delta.view(-1)
    n = flat.numel()
    k = keep_count(n, density)
    if k >= n:
        return delta
    if k == 0:
        return delta.zero_()
    mags = flat.abs().to(compute_dtype(delta.dtype)).numpy()  # zero-copy view of the fresh |delta|
    mags.partition(n - k)
    threshold = float(mags[n - k])  # the k-th largest magnitude
    n_above = int(np.count_nonzero(mags[n - k + 1:] > threshold))
    del mags
    if threshold == 0.0:
        # Every non-zero is above the threshold and kept; which zeros count as "kept" changes nothing.
        return delta
    ties_left = k - n_above  # how many entries equal to the threshold are kept, first ones first
    for a in range(0, n, chunk):
        part = flat[a:a + chunk]
        mag = part.abs()
        keep = mag > threshold
        if ties_left > 0:
            tied = (mag == threshold).nonzero().view(-1)[:ties_left]  # ascending positions: first ones win
            keep[tied] = True
            ties_left -= tied.numel()
        part.masked_fill_(keep.logical_not_(), 0.0)
    return delta


def trim_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Out-of-place ``trim_magnitude_``: a new tensor, ``delta`` untouched."""
    return trim_magnitude_(delta.clone(memory_format=torch.contiguous_format), density)


def elect_sign(weighted: Sequence[torch.Tensor]) -> torch.Tensor:
    """+1 where Σ_i weighted_i >= 0 (an exact 0 elects +1), else -1; the dtype of the inputs."""
    total = weighted[0].clone()
    for w in weighted[1:]:
        total += w
    return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)


def disjoint_merge(
    weighted: Sequence[torch.Tensor], weights: Sequence[float], sign: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Σ_i [sign(weighted_i) = sign] weighted_i, divided (``normalize``) by Σ_i [agree_i] w_i (0 -> 1).

    ``weighted`` holds w_i τ̂_i. With all w_i = 1 this is the TIES paper's disjoint mean.
    """
    if len(weighted) != len(weights):
        raise ValueError(f"{len(weighted)} tensors but {len(weights)} weights")
    num = torch.zeros_like(sign)
    den = torch.zeros_like(sign)
    for wd, w in zip(weighted, weights):
        # wd * sign is |wd| where wd agrees with the elected sign and <= 0 where it does not (or is 0), so
        # Σ clamp(wd * sign, 0) * sign is the sum of the agreeing values, bit for bit (negation is exact).
        agreeing = (wd * sign).clamp_(min=0)
        num += agreeing
        den.add_((agreeing > 0).to(den.dtype), alpha=w)
    num.mul_(sign)
    if not normalize:
        return num
    den[den == 0] = 1.0
    return num.div_(den)


def linear(
    tensors: Iterable[torch.Tensor], weights: Sequence[float], normalize: bool = True, inplace: bool = False
) -> torch.Tensor:
    """Σ w_i θ_i (/ Σ w_i). ``tensors`` may be a generator: one is read at a time.

    ``inplace=True`` reuses the first tensor (already in the compute dtype) as the accumulator.
    """
    out = None
    for t, w in zip(tensors, weights, strict=True):
        if out is None:
            out = t.mul_(w) if inplace else t.to(compute_dtype(t.dtype)) * w
        else:
            out.add_(t.to(out.dtype), alpha=w)
    if out is None:
        raise ValueError("linear merge needs at least one model")
    return out.div_(_divisor(weights)) if normalize else out


def task_arithmetic(
    base: torch.Tensor,
    tensors: Iterable[torch.Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """θ_base + λ Σ w_i (θ_i − θ_base) (Σ divided by Σ w_i when ``normalize``).

    ``inplace=True`` writes the result into ``base`` and the deltas into the model tensors (both must be
    in the compute dtype); the runner uses it with tensors it owns.
    """
    scale = lambda_ / (_divisor(weights) if normalize else 1.0)
    cdt = compute_dtype(base.dtype)
    if inplace and base.dtype != cdt:
        raise ValueError(f"inplace merge needs the base in {cdt}, got {base.dtype}")
    # Deltas are summed apart from the base: every τ_i must be taken against the unchanged base.
    acc = None
    for t, w in zip(tensors, weights, strict=True):
        delta = t.sub_(base) if inplace else t.to(cdt) - base.to(cdt)
        if acc is None:
            acc = delta.mul_(scale * w)  # the first delta's memory becomes the accumulator
        else:
            acc.add_(delta, alpha=scale * w)
    if acc is None:
        raise ValueError("task_arithmetic needs at least one model besides the base")
    return base.add_(acc) if inplace else base.to(cdt) + acc


def ties(
    base: torch.Tensor,
    tensors: Iterable[torch.Tensor],
    weights: Sequence[float],
    density: float,
    lambda_: float = 1.0,
    normalize: bool = True,
    inplace: bool = False,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """TIES: trim each task vector, elect signs, disjoint (weighted) mean, add λ × it to the base.

    Holds all N trimmed task vectors (sign election needs every one), then combines them chunk by chunk.
    ``inplace=True`` turns each model tensor into its task vector and writes the result into ``base``.
    """
    cdt = compute_dtype(base.dtype)
    if inplace and base.dtype != cdt:
        raise ValueError(f"inplace merge needs the base in {cdt}, got {base.dtype}")
    weights = list(weights)
    deltas = []
    for t, w in zip(tensors, weights, strict=True):
        if inplace:
            delta = t.sub_(base)
        else:
            delta = (t.to(cdt) - base.to(cdt)).contiguous()
        trim_magnitude_(delta, density)
        if w != 1.0:
            delta.mul_(w)
        deltas.append(delta.view(-1))
    if not deltas:
        raise ValueError("ties needs at least one model besides the base")
    out = base if inplace else base.to(cdt, copy=True).contiguous()
    flat = out.view(-1)
    for a in range(0, flat.numel(), chunk):
        parts = [d[a:a + chunk] for d in deltas]
        merged = disjoint_merge(parts, weights, elect_sign(parts), normalize)
        flat[a:a + chunk].add_(merged, alpha=lambda_)
    return out


def _divisor(weights: Sequence[float]) -> float:
    """Σ w_i, or 1 when it is ~0 (mergekit's guard), so a normalised merge never divides by zero."""
    total = float(sum(weights))
    return 1.0 if abs(total) < 1e-8 else total
