"""GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
a contrastive loss over a batch far larger than the activations that fit in memory.

:func:`cached_forward_backward` runs in three passes, as sentence-transformers' ``CachedMultipleNegativesRankingLoss``:
1. embed every chunk of the batch without a graph (memory: one chunk's activations), keeping the RNG state
   each chunk started from;
2. the loss on all embeddings at once, and its gradient with respect to the embeddings (cheap: (M, D));
3. embed each chunk again, with a graph, from the RNG state it had in pass 1 (``RngState``: sentence-transformers'
   ``RandContext``, so dropout draws the same masks), and backpropagate that chunk's cached gradient.
The result (loss, and the parameter gradients accumulated in ``.grad``) equals :func:`forward_backward`, the
plain version that keeps every chunk's graph, to float rounding (tests/test_train_contrastive.py); memory is
bounded by the chunk, so batch 256+ runs on a CPU or a small GPU. The price is one extra forward.

Both take ``embed(chunk) -> (n, D)`` and ``loss_fn(all embeddings (M, D)) -> 0-d``; chunks are whatever ``embed``
takes (unpadded token-budgeted groups of texts in the embedding task). ``sync(last: bool)`` gives the context
for a chunk's backward (DDP's ``no_sync`` on all chunks but the last: one gradient all-reduce per step).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch


class RngState:
    """The CPU (and CUDA device) RNG state at construction; ``restore()`` replays from it inside a fork, so the
    RNG outside is left where it was."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @contextlib.contextmanager
    def restore(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def forward_backward(embed: Callable, chunks: Sequence, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                     scale: float = 1.0) -> torch.Tensor:
    """The uncached reference: every chunk's graph kept, one backward of ``loss * scale``; returns the loss."""
    loss = loss_fn(torch.cat([embed(c) for c in chunks]))
    (loss * scale).backward()
    return loss.detach()


def cached_forward_backward(embed: Callable, chunks: Sequence, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                            device: torch.device, scale: float = 1.0,
                            sync: Callable[[bool], ContextManager] | None = None) -> torch.Tensor:
    """GradCache: the same loss and gradients as :func:`forward_backward`, one chunk's activations at a time."""
    states, reps = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(RngState(device))
            reps.append(embed(c))
    cached = torch.cat(reps).detach().requires_grad_()  # (M, D)
    loss = loss_fn(cached)
    (loss * scale).backward()  # gradients reach the embeddings only (a leaf); gathers all-reduce here
    grads = cached.grad.split([r.shape[0] for r in reps])
    last = len(chunks) - 1
    for i, (c, state, grad) in enumerate(zip(chunks, states, grads)):
        with state.restore(), (sync(i == last) if sync is not None else contextlib.nullcontext()):
            embed(c).backward(grad.to(reps[i].dtype))
    return loss.detach()
