"""``--task embedding``: contrastive training of a sentence-embedding model on (anchor, positive[, negatives]).

A *feature* is one example, tokenised: ``{"texts": [[anchor ids], [positive ids], [negative ids], ...]}`` (the
same number of columns in every feature of a run). What differs from the other fine-tuning tasks, and how it
plugs into the shared loop (``train/finetune``) and step (``train/step.py``):

- Batches are counted in examples (``batch_size``, sentence-transformers' ``per_device_train_batch_size`` times
  the number of ranks), not tokens, and hold no text twice (:func:`no_duplicate_batches`, sentence-transformers'
  ``BatchSamplers.NO_DUPLICATES``): a duplicate would be a false negative. ``plan_epoch`` gives the loop that
  order; it is a pure function of (seed, epoch), so resume rebuilds it.
- The loss is over the whole batch (in-batch negatives), so a step is one micro-batch per rank
  (``micro_batches``: rank ``r`` takes examples ``r, r + W, ...``), and negatives of all ranks are gathered
  (``train.contrastive``). Loss units are this rank's anchors.
- ``forward_backward`` runs the forward and the backward itself: plainly (one unpadded forward of every text
  of the micro-batch), or with ``cached: true`` by GradCache (``train.gradcache``) in chunks of at most
  ``micro_batch_tokens`` tokens, so a batch of 256+ pairs trains in bounded memory.
- Embeddings are ``MmBertForEmbedding``'s (mean over real tokens, L2-normalised) on unpadded batches, under the
  step's autocast (bf16 where the hardware has it); the loss is computed in fp32 outside autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from mmbert.model import MmBertForEmbedding
from mmbert.train.contrastive import DEFAULT_SCALE, ContrastiveLoss
from mmbert.train.gradcache import cached_forward_backward, forward_backward
from mmbert.train.parallel import no_sync


@dataclass
class EmbeddingSettings:
    """The embedding task's settings (``FinetuneConfig.extra``; flags of ``mmbert finetune --task embedding``)."""

    batch_size: int = 32  # examples per optimizer step, all ranks together (in-batch negatives: bigger is better)
    cached: bool = False  # GradCache: chunks of at most micro_batch_tokens tokens, any batch size in bounded memory
    scale: float = DEFAULT_SCALE  # cosine similarity x scale are the logits (1 / temperature)
    symmetric: bool = False  # add the positive -> anchor term and average (MultipleNegativesSymmetricRankingLoss)
    matryoshka_dims: list[int] = field(default_factory=list)  # leading dimensions trained together, e.g. [256, 128, 64]
    matryoshka_weights: list[float] | None = None  # one per Matryoshka dim (default 1 each)
    gather: bool = True  # under torchrun, every rank's examples are negatives for every anchor

    def validate(self, hidden_size: int | None = None) -> None:
        if self.batch_size < 2:
            raise ValueError(f"embedding batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if not self.scale > 0:
            raise ValueError(f"embedding scale must be > 0, got {self.scale}")
        if self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError(f"matryoshka_weights {self.matryoshka_weights} needs one weight per dim "
                             f"{self.matryoshka_dims}")
        if hidden_size is not None:
            bad = [d for d in self.matryoshka_dims if not 1 <= d <= hidden_size]
            if bad:
                raise ValueError(f"matryoshka_dims {bad} are outside [1, {hidden_size}] (the model's hidden size)")

    @classmethod
    def from_extra(cls, extra: dict, where: str = "<config>") -> "EmbeddingSettings":
        """From ``FinetuneConfig.extra`` (YAML ``extra:`` / ``--set extra.KEY=V``); an unknown key is an error."""
        from mmbert.train.config import _build

        return _build(cls, dict(extra or {}), "extra", where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def loss(self) -> ContrastiveLoss:
        weights = tuple(self.matryoshka_weights) if self.matryoshka_weights is not None else None
        return ContrastiveLoss(self.scale, self.symmetric, tuple(self.matryoshka_dims), weights, self.gather)


def no_duplicate_batches(keys: list[tuple], batch_size: int, seed: int, epoch: int,
                         min_size: int = 2) -> list[list[int]]:
    """A seeded order of the examples cut into batches of ``batch_size`` in which no key (text) occurs twice.

    sentence-transformers' NoDuplicatesBatchSampler: walk the shuffled examples, take each one whose keys are
    not yet in the batch, leave the others for a later batch. The last batches of an epoch may be smaller; those
    under ``min_size`` examples (no negative, or not one example per rank) are dropped."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    remaining = dict.fromkeys(torch.randperm(len(keys), generator=g).tolist())
    batches = []
    while remaining:
        batch, seen = [], set()
        for i in remaining:
            if seen.isdisjoint(keys[i]):
                batch.append(i)
                seen.update(keys[i])
                if len(batch) == batch_size:
                    break
        for i in batch:
            del remaining[i]
        if len(batch) >= min_size:
            batches.append(batch)
    return batches


def feature_keys(feature: dict) -> tuple:
    """What must not repeat within a batch: each text of the example (by its token ids)."""
    return tuple(tuple(ids) for ids in feature["texts"])


class EmbeddingTask:
    """See the module docstring. One instance per run: it holds the run's settings."""

    name = "embedding"
    model_class = MmBertForEmbedding

    def __init__(self, settings: EmbeddingSettings | None = None, micro_batch_tokens: int = 8192,
                 world_size: int = 1):
        self.settings = settings or EmbeddingSettings()
        self.settings.validate()
        self.micro_batch_tokens = micro_batch_tokens
        self.world_size = world_size
        self.contrastive = self.settings.loss()

    # ---- data ----------------------------------------------------------------------------------------
    def length(self, feature: dict) -> int:
        return sum(len(ids) for ids in feature["texts"])

    def plan_epoch(self, features: list[dict], seed: int, epoch: int) -> list[list[int]]:
        keys = [feature_keys(f) for f in features]
        return no_duplicate_batches(keys, self.settings.batch_size, seed, epoch, min_size=max(2, self.world_size))

    def micro_batches(self, step: list[int], rank: int, world_size: int) -> list[list[int]]:
        """This rank's share of a step, as one micro-batch (the loss needs all its examples at once)."""
        return [step[rank::world_size]]

    def collate(self, features: list[dict]) -> dict:
        """Texts column by column (anchors, positives, negatives...), flat and unpadded, with GradCache chunks:
        contiguous runs of texts of at most ``micro_batch_tokens`` tokens (a longer text is a chunk alone)."""
        columns = {len(f["texts"]) for f in features}
        if len(columns) != 1:
            raise ValueError(f"examples of one batch have different numbers of texts: {sorted(columns)}")
        seqs = [f["texts"][c] for c in range(columns.pop()) for f in features]
        lengths = [len(s) for s in seqs]
        chunks, start, used = [], 0, 0
        for i, n in enumerate(lengths):
            if i > start and used + n > self.micro_batch_tokens:
                chunks.append((start, i))
                start, used = i, 0
            used += n
        chunks.append((start, len(seqs)))
        return {"seqs": seqs, "chunks": chunks, "units": len(features), "num_tokens": sum(lengths)}

    def count(self, batch: dict) -> tuple[int, int]:
        return int(batch["units"]), int(batch["num_tokens"])

    # ---- loss ----------------------------------------------------------------------------------------
    def _embed(self, model, seqs: list[list[int]], device: torch.device) -> torch.Tensor:
        lengths = torch.tensor([len(s) for s in seqs])
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).to(device)
        return model(flat, cu_seqlens=cu, normalize=False)  # (n, H); normalised (per Matryoshka dim) in the loss

    def _loss_of(self, units: int):
        def loss_fn(emb: torch.Tensor) -> torch.Tensor:
            with torch.autocast(emb.device.type, enabled=False):  # the loss in fp32 whatever the forward ran in
                cols = emb.float().split(units)  # anchors, positives, negatives...
                return self.contrastive(*cols)
        return loss_fn

    def loss(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        """Forward + mean loss over this rank's anchors (one forward; for callers that backpropagate)."""
        return self._loss_of(batch["units"])(self._embed(model, batch["seqs"], device))

    def forward_backward(self, model, batch: dict, device: torch.device, scale: float) -> torch.Tensor:
        """Backpropagate ``mean loss x scale``; return the mean loss (detached). Cached: GradCache over the
        batch's chunks, one gradient all-reduce (DDP) on the last chunk."""
        seqs, loss_fn = batch["seqs"], self._loss_of(batch["units"])
        if not self.settings.cached:
            return forward_backward(lambda s: self._embed(model, s, device), [seqs], loss_fn, scale=scale)
        chunks = [seqs[a:b] for a, b in batch["chunks"]]
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        sync = (lambda last: no_sync(model, last)) if ddp else (lambda last: contextlib.nullcontext())
        return cached_forward_backward(lambda s: self._embed(model, s, device), chunks, loss_fn, device=device,
                                       scale=scale, sync=sync)
