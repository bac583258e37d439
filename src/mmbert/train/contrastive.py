"""Contrastive losses over sentence embeddings, as sentence-transformers (6.x) computes them.

- :func:`mnrl_loss` is ``MultipleNegativesRankingLoss`` (in-batch negatives InfoNCE; van den Oord et al.,
  2018): for anchor ``i`` the candidates are every positive of the batch and every hard negative, scored by
  cosine similarity x ``scale`` (20, i.e. temperature 0.05), and the loss is the cross-entropy of its own
  positive, averaged over anchors. Candidates are laid out as sentence-transformers lays them out:
  ``[positives (B) | negatives_1 (B) | ... ]``, so anchor ``i``'s label is ``i`` (``offset + i`` when gathered).
- ``symmetric=True`` adds the backward term (each positive picks its anchor among all anchors) and averages
  the two: sentence-transformers' ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``
  (the older ``MultipleNegativesSymmetricRankingLoss``).
- :func:`matryoshka_loss` is ``MatryoshkaLoss`` (Kusupati et al., 2022): the same loss on the first ``d``
  dimensions of every embedding, each truncation re-normalised, summed with weights (default 1 each).
- ``gather=True`` under ``torch.distributed``: anchors and candidates of every rank are gathered so each
  anchor sees the whole global batch as negatives (as ``gather_across_devices=True``). :func:`all_gather_with_grad`
  sums the gradients of every rank's loss back to the rank that owns each embedding, so after DDP's gradient
  average the gradient is that of the mean loss over all anchors of the global batch. It is written here, not
  taken from ``torch.distributed.nn``, because it must also work on gloo (CPU) and with unequal batch sizes.
Pure tensor functions: no model, no data; tested against hand computations and sentence-transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_SCALE = 20.0  # sentence-transformers' default: cosine x 20 (temperature 0.05)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' (n_r, D) tensors concatenated; backward sums every rank's gradient and keeps the own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: tuple[int, ...], rank: int):
        width = max(sizes)
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss reaches every embedding
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gathered_sizes(n: int, device: torch.device) -> tuple[int, ...]:
    """The local batch size of every rank (one small all_gather); ``(n,)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return (n,)
    local = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return tuple(int(p) for p in parts)


def all_gather_with_grad(tensor: torch.Tensor, sizes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, int]:
    """(every rank's rows concatenated in rank order, the offset of this rank's rows). Without a process group:
    ``(tensor, 0)``. ``sizes``: the rows of each rank when already known (from :func:`gathered_sizes`)."""
    sizes = sizes or gathered_sizes(tensor.shape[0], tensor.device)
    if len(sizes) == 1:
        return tensor, 0
    rank = dist.get_rank()
    return _GatherWithGrad.apply(tensor, tuple(sizes), rank), sum(sizes[:rank])


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) cosine similarities (sentence-transformers' ``cos_sim``)."""
    return F.normalize(a, p=2, dim=-1) @ F.normalize(b, p=2, dim=-1).T


def mnrl_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: Sequence[torch.Tensor] = (), *,
              scale: float = DEFAULT_SCALE, symmetric: bool = False, gather: bool = False) -> torch.Tensor:
    """MultipleNegativesRankingLoss of (B, D) anchors against their (B, D) positives and any (B, D) hard
    negatives (one tensor per negative column); a 0-d fp32 tensor, the mean over this rank's anchors."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    b = anchors.shape[0]
    if positives.shape != anchors.shape or any(n.shape != anchors.shape for n in negatives):
        raise ValueError(f"anchors {tuple(anchors.shape)}, positives {tuple(positives.shape)} and negatives "
                         f"{[tuple(n.shape) for n in negatives]} must have the same shape")
    anchors, positives = anchors.float(), positives.float()
    negatives = [n.float() for n in negatives]
    offset = 0
    all_anchors, all_pos, all_neg = anchors, positives, negatives
    if gather:
        sizes = gathered_sizes(b, anchors.device)
        all_anchors, offset = all_gather_with_grad(anchors, sizes)
        all_pos, _ = all_gather_with_grad(positives, sizes)
        all_neg = [all_gather_with_grad(n, sizes)[0] for n in negatives]
    labels = torch.arange(offset, offset + b, device=anchors.device)
    candidates = torch.cat([all_pos, *all_neg]) if all_neg else all_pos  # (B_global * (1 + k), D)
    forward = F.cross_entropy(cosine_matrix(anchors, candidates) * scale, labels)
    if not symmetric:
        return forward
    backward = F.cross_entropy(cosine_matrix(positives, all_anchors) * scale, labels)  # doc -> query
    return (forward + backward) / 2


def shrink(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` dimensions, L2-normalised again (sentence-transformers' Matryoshka ``shrink``)."""
    if not 1 <= dim <= x.shape[-1]:
        raise ValueError(f"Matryoshka dimension {dim} must be in [1, {x.shape[-1]}]")
    return F.normalize(x[..., :dim].float(), p=2, dim=-1)


def matryoshka_loss(loss: Callable[..., torch.Tensor], embeddings: Sequence[torch.Tensor], dims: Sequence[int],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """``sum_k weights[k] * loss(*[shrink(e, dims[k]) for e in embeddings])`` (MatryoshkaLoss, all dims each step)."""
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if not dims or len(weights) != len(dims):
        raise ValueError(f"Matryoshka needs dims and one weight per dim, got dims={list(dims)} weights={weights}")
    return sum(w * loss(*[shrink(e, d) for e in embeddings]) for d, w in zip(dims, weights))


@dataclass(frozen=True)
class ContrastiveLoss:
    """The embedding task's loss: MNRL, optionally symmetric, optionally over Matryoshka dimensions."""

    scale: float = DEFAULT_SCALE  # cosine x scale = logits (1 / temperature)
    symmetric: bool = False  # also each positive -> its anchor among all anchors, averaged with the forward term
    matryoshka_dims: tuple[int, ...] = field(default_factory=tuple)  # () = the full dimension only
    matryoshka_weights: tuple[float, ...] | None = None  # one per dim; None = 1 each
    gather: bool = True  # under torch.distributed, negatives from every rank

    def __call__(self, anchors: torch.Tensor, positives: torch.Tensor, *negatives: torch.Tensor) -> torch.Tensor:
        def base(a, p, *n):
            return mnrl_loss(a, p, n, scale=self.scale, symmetric=self.symmetric, gather=self.gather)

        if not self.matryoshka_dims:
            return base(anchors, positives, *negatives)
        return matryoshka_loss(base, [anchors, positives, *negatives], self.matryoshka_dims, self.matryoshka_weights)
