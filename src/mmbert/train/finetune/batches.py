"""Token-budgeted steps over a fine-tuning set, and their split into unpadded micro-batches per rank.

- An epoch is a seeded permutation of the examples (``seed``, ``epoch``), cut greedily into steps of at
  most ``batch_tokens`` tokens in that order: the batch is fixed in tokens, not examples, so long and
  short texts cost what they hold (no pads anywhere), and the order stays random (not length-sorted).
- The plan is a pure function of (lengths, seed, epoch, budget), so a resume rebuilds it from the step
  number alone.
- A step's examples are packed into micro-batches of at most ``micro_batch_tokens`` with
  ``model.batching.pack_by_tokens``; ranks take every ``world_size``-th micro-batch. Every rank must run
  the same number of backward passes (DDP syncs on the last), so micro-batches are split in two until
  their count is a multiple of the world size.
"""

from __future__ import annotations

from typing import Callable

import torch

from mmbert.model.batching import pack_by_tokens


def plan_epoch(lengths: list[int], seed: int, epoch: int, batch_tokens: int) -> list[list[int]]:
    """Steps of one epoch: lists of example indices, each at most ``batch_tokens`` tokens (or one example)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return pack_by_tokens(lengths, batch_tokens, order=torch.randperm(len(lengths), generator=g).tolist())


def plan(lengths: list[int], seed: int, epochs: float, batch_tokens: int, max_steps: int | None,
         planner: Callable[[int], list[list[int]]] | None = None) -> list[list[int]]:
    """Every step of the run: whole epochs, then the leading share of the last (fractional) one. ``planner``
    (epoch -> steps) replaces ``plan_epoch`` for a task that batches otherwise (the embedding task: examples
    without duplicate texts); it must be a pure function of the epoch, as resume rebuilds the plan."""
    planner = planner or (lambda e: plan_epoch(lengths, seed, e, batch_tokens))
    out: list[list[int]] = []
    epoch = 0
    while epoch < epochs:
        steps = planner(epoch)
        take = len(steps) if epochs - epoch >= 1 else max(1, round((epochs - epoch) * len(steps)))
        out += steps[:take]
        epoch += 1
        if max_steps is not None and len(out) >= max_steps:
            break
    return out[:max_steps] if max_steps is not None else out


def epoch_ends(lengths: list[int], seed: int, epochs: float, batch_tokens: int, total: int,
               planner: Callable[[int], list[list[int]]] | None = None) -> set[int]:
    """1-based step numbers that end an epoch (where ``eval_every: 0`` evaluates)."""
    planner = planner or (lambda e: plan_epoch(lengths, seed, e, batch_tokens))
    ends, n, epoch = set(), 0, 0
    while n < total:
        n += len(planner(epoch))
        ends.add(min(n, total))
        epoch += 1
    return ends


def micro_batches(step: list[int], lengths: list[int], budget: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This rank's micro-batches (example indices) of one step."""
    groups = [[step[j] for j in g] for g in pack_by_tokens([lengths[i] for i in step], budget)]
    while len(groups) % world_size:
        k = max(range(len(groups)), key=lambda j: (len(groups[j]), -j))
        if len(groups[k]) < 2:
            raise ValueError(f"a step of {len(step)} examples cannot give each of {world_size} ranks a micro-batch; "
                             "raise batch_tokens")
        g = groups.pop(k)
        groups[k:k] = [g[: len(g) // 2], g[len(g) // 2:]]
    return groups[rank::world_size]
