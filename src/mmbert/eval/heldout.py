"""Per-language held-out MLM loss with a fixed masking, comparable across steps, checkpoints and runs.

An evaluation: ``eval.udhr.heldout_loss`` reports it per checkpoint, and the trainer logs it during training
through the function it is handed (``train.hooks.TrainerHooks.heldout_loss``; the train layer never imports eval).

Choices:
- Each held-out text is tokenized ``<bos> ... <eos>`` and cut into pieces of at most ``seq_len`` tokens;
  a piece attends only to itself (varlen ``cu_seqlens``), as in training.
- The masking is fixed: for a language, exactly ``round(mask_ratio * eligible)`` non-special positions are
  replaced by ``<mask>`` (no 10% random / 10% kept: the number measures prediction of hidden tokens),
  chosen by a generator seeded from (seed, language), so every evaluation of that language masks the
  same positions whatever the model, step or process.
- The loss is the mean cross-entropy over all masked tokens of the language (a token-weighted mean, not
  a mean of batch means). Languages share batches, so hundreds of small languages cost few forwards. With ~40 masked tokens a language is noisy: report group means too.
"""

from __future__ import annotations

import contextlib
import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from mmbert.data.sampling import torch_seed_for


def masked_pieces(tokenizer, texts: list[str], lang: str, mask_ratio: float, seq_len: int, seed: int,
                  max_tokens: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The fixed (inputs, labels) pieces of one language."""
    pieces: list[torch.Tensor] = []
    budget = max_tokens if max_tokens is not None else math.inf
    for ids in tokenizer.encode_batch(texts):
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len]
            if budget <= 0:
                break
            piece = piece[: int(min(len(piece), budget))]
            if piece:
                pieces.append(torch.tensor(piece, dtype=torch.long))
                budget -= len(piece)
    if not pieces:
        return [], []
    flat = torch.cat(pieces)
    specials = torch.tensor(sorted(set(tokenizer.special_ids) | {tokenizer.mask_id}), dtype=torch.long)
    eligible = torch.nonzero(~torch.isin(flat, specials), as_tuple=True)[0]
    k = max(1, int(round(mask_ratio * eligible.numel()))) if eligible.numel() else 0
    gen = torch.Generator().manual_seed(torch_seed_for(seed, zlib.crc32(lang.encode("utf-8"))))
    chosen = eligible[torch.randperm(eligible.numel(), generator=gen)[:k]]
    labels = torch.full_like(flat, -100)
    labels[chosen] = flat[chosen]
    inputs = flat.clone()
    inputs[chosen] = tokenizer.mask_id
    sizes = [len(p) for p in pieces]
    return list(inputs.split(sizes)), list(labels.split(sizes))


@torch.no_grad()
def heldout_mlm_loss(model: nn.Module, tokenizer, texts_by_lang: dict[str, list[str]], mask_ratio: float = 0.15,
                     seq_len: int = 256, seed: int = 0, max_tokens_per_language: int | None = None,
                     batch_tokens: int = 8192, autocast=None) -> dict[str, float]:
    """Mean masked-token cross-entropy per language (NaN for a language with no maskable token).

    Pieces of all languages are packed together into batches of up to ``batch_tokens`` (a language's
    loss does not depend on its batch-mates: pieces never attend across). ``model`` is an
    ``MmBertForMaskedLM`` (not a DDP wrapper); ``autocast`` an optional context manager factory (e.g.
    bf16) for the forward. The model's training/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    langs = sorted(texts_by_lang)
    pieces: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (language index, inputs, labels)
    for li, lang in enumerate(langs):
        inputs, labels = masked_pieces(tokenizer, texts_by_lang[lang], lang, mask_ratio, seq_len, seed,
                                       max_tokens_per_language)
        pieces += [(li, x, y) for x, y in zip(inputs, labels)]
    total = torch.zeros(len(langs), dtype=torch.float64)
    count = torch.zeros(len(langs), dtype=torch.float64)
    try:
        i = 0
        while i < len(pieces):
            j, n = i, 0
            while j < len(pieces) and (j == i or n + len(pieces[j][1]) <= batch_tokens):
                n += len(pieces[j][1])
                j += 1
            chunk = pieces[i:j]
            i = j
            lab = torch.cat([y for _, _, y in chunk])
            if not bool((lab != -100).any()):
                continue
            ids = torch.cat([x for _, x, _ in chunk])
            owner = torch.cat([torch.full((len(x),), li) for li, x, _ in chunk])  # (N,) language of each token
            lengths = torch.tensor([len(x) for _, x, _ in chunk])
            cu = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
            pos = torch.cat([torch.arange(len(x)) for _, x, _ in chunk])
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(ids.to(device), labels=lab.to(device), cu_seqlens=cu.to(device),
                            max_seqlen=int(lengths.max()), position_ids=pos.to(device))
            sel = lab != -100
            token_loss = F.cross_entropy(out.logits.float(), lab[sel].to(device), reduction="none").double().cpu()
            total.index_add_(0, owner[sel], token_loss)
            count.index_add_(0, owner[sel], torch.ones_like(token_loss))
    finally:
        model.train(was_training)
    return {lang: (float(total[k] / count[k]) if count[k] else float("nan")) for k, lang in enumerate(langs)}
