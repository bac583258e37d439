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
- The set is fixed in a second sense: tokenized, masked and packed once (``HeldoutSet``), then reused by every
  evaluation with the same tokenizer, texts and settings. Batches are unpadded, 8k tokens by default.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmbert.data.sampling import torch_seed_for
from mmbert.model.heads import varlen_mean_pool
from mmbert.model.loss import token_cross_entropy


def masked_pieces(tokenizer, texts: list[str], lang: str, mask_ratio: float, seq_len: int, seed: int,
                  max_tokens: int | None = None, first_piece_only: bool = False,
                  text_index: list[int] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The fixed (inputs, labels) pieces of one language. ``first_piece_only``: each text's first ``seq_len``
    tokens only (one piece a text). ``text_index``: a list that receives the index of each piece's text."""
    pieces: list[torch.Tensor] = []
    budget = max_tokens if max_tokens is not None else math.inf
    for t, ids in enumerate(tokenizer.encode_batch(texts)):
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len]
            if budget <= 0 or (first_piece_only and start > 0):
                break
            piece = piece[: int(min(len(piece), budget))]
            if piece:
                pieces.append(torch.tensor(piece, dtype=torch.long))
                budget -= len(piece)
                if text_index is not None:
                    text_index.append(t)
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


@dataclass
class HeldoutSet:
    """The fixed held-out set: every language's masked pieces, packed once into unpadded batches.

    Built once (tokenized, masked and packed), evaluated any number of times: ``heldout_mlm_loss`` keeps the last
    few sets it built, so the trainer's evaluation every N steps and the recipe's evaluation of each checkpoint
    tokenize nothing again. The masks are ``masked_pieces``'s, so the numbers do not depend on the batching.
    Built with ``first_piece_only``, each text is one piece, and ``evaluate_with_embeddings`` also returns each
    text's mean-pooled last hidden state from the same forward (the recipe's bitext retrieval: one pass).
    """

    langs: list[str]
    batches: list[dict]  # input_ids, labels, target/owner (masked positions), cu_seqlens, position_ids, max_seqlen,
    #                      piece_lang/piece_text (language and text index of each piece)

    @classmethod
    def build(cls, tokenizer, texts_by_lang: dict[str, list[str]], mask_ratio: float = 0.15, seq_len: int = 256,
              seed: int = 0, max_tokens_per_language: int | None = None, batch_tokens: int = 8192,
              first_piece_only: bool = False) -> "HeldoutSet":
        langs = sorted(texts_by_lang)
        pieces: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (language index, text index, inputs, labels)
        for li, lang in enumerate(langs):
            text_of: list[int] = []
            inputs, labels = masked_pieces(tokenizer, texts_by_lang[lang], lang, mask_ratio, seq_len, seed,
                                           max_tokens_per_language, first_piece_only, text_of)
            pieces += [(li, t, x, y) for t, x, y in zip(text_of, inputs, labels)]
        batches = []
        i = 0
        while i < len(pieces):
            j, n = i, 0
            while j < len(pieces) and (j == i or n + len(pieces[j][2]) <= batch_tokens):
                n += len(pieces[j][2])
                j += 1
            chunk = pieces[i:j]
            i = j
            lab = torch.cat([y for *_, y in chunk])
            sel = lab != -100
            lengths = torch.tensor([len(x) for *_, x, _ in chunk])
            owner = torch.cat([torch.full((len(x),), li) for li, _, x, _ in chunk])  # (N,) language of each token
            batches.append({"input_ids": torch.cat([x for *_, x, _ in chunk]), "labels": lab,
                            "target": lab[sel], "owner": owner[sel],
                            "cu_seqlens": F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32),
                            "position_ids": torch.cat([torch.arange(len(x)) for *_, x, _ in chunk]),
                            "max_seqlen": int(lengths.max()),
                            "piece_lang": torch.tensor([li for li, *_ in chunk]),
                            "piece_text": torch.tensor([t for _, t, *_ in chunk])})
        return cls(langs, batches)

    def evaluate(self, model: nn.Module, autocast=None) -> dict[str, float]:
        """Mean masked-token cross-entropy per language (NaN for a language with no maskable token)."""
        return self._run(model, autocast, pool=False)[0]

    def evaluate_with_embeddings(self, model: nn.Module, autocast=None
                                 ) -> tuple[dict[str, float], dict[str, dict[int, torch.Tensor]]]:
        """The losses, and per language {text index: L2-normalised mean of the piece's last hidden states} (the
        first piece's, for a text cut into several), from the same forward."""
        return self._run(model, autocast, pool=True)

    @torch.no_grad()
    def _run(self, model: nn.Module, autocast, pool: bool):
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total = torch.zeros(len(self.langs), dtype=torch.float64)
        count = torch.zeros(len(self.langs), dtype=torch.float64)
        vectors: dict[str, dict[int, torch.Tensor]] = {lang: {} for lang in self.langs}
        try:
            for b in self.batches:
                cu = b["cu_seqlens"].to(device)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    hidden = model.model(b["input_ids"].to(device), cu_seqlens=cu, max_seqlen=b["max_seqlen"],
                                         position_ids=b["position_ids"].to(device)).last_hidden_state
                    if len(b["target"]):
                        predicted = model.head(hidden[b["labels"].to(device) != -100])  # (M, H)
                        # one cross-entropy pass, chunked (the forward's own loss would be a second one over (M, V))
                        token_loss = token_cross_entropy(predicted, model.decoder.weight, model.decoder.bias,
                                                         b["target"].to(device))
                        total.index_add_(0, b["owner"], token_loss.double().cpu())
                        count.index_add_(0, b["owner"], torch.ones(len(b["owner"]), dtype=torch.float64))
                if pool:
                    pooled = F.normalize(varlen_mean_pool(hidden.float(), cu), dim=-1).cpu()
                    for li, t, v in zip(b["piece_lang"].tolist(), b["piece_text"].tolist(), pooled):
                        vectors[self.langs[li]].setdefault(t, v)
        finally:
            model.train(was_training)
        losses = {lang: (float(total[k] / count[k]) if count[k] else float("nan")) for k, lang in enumerate(self.langs)}
        return losses, vectors


_SETS: "OrderedDict[tuple, tuple[object, HeldoutSet]]" = OrderedDict()  # key -> (tokenizer, set); newest last
_KEEP = 4  # sets kept: the trainer's (one per language choice) and the recipe's


def fixed_heldout_set(tokenizer, texts_by_lang: dict[str, list[str]], mask_ratio: float = 0.15, seq_len: int = 256,
                      seed: int = 0, max_tokens_per_language: int | None = None,
                      batch_tokens: int = 8192, first_piece_only: bool = False) -> HeldoutSet:
    """The ``HeldoutSet`` of these arguments, built on first use and reused while the same tokenizer object and
    the same texts are passed (the key holds the texts themselves, so changed text builds a new set)."""
    key = (id(tokenizer), tuple((lang, tuple(texts_by_lang[lang])) for lang in sorted(texts_by_lang)), mask_ratio,
           seq_len, seed, max_tokens_per_language, batch_tokens, first_piece_only)
    hit = _SETS.get(key)
    if hit is not None and hit[0] is tokenizer:
        _SETS.move_to_end(key)
        return hit[1]
    built = HeldoutSet.build(tokenizer, texts_by_lang, mask_ratio, seq_len, seed, max_tokens_per_language,
                             batch_tokens, first_piece_only)
    _SETS[key] = (tokenizer, built)
    while len(_SETS) > _KEEP:
        _SETS.popitem(last=False)
    return built


def heldout_mlm_loss(model: nn.Module, tokenizer, texts_by_lang: dict[str, list[str]], mask_ratio: float = 0.15,
                     seq_len: int = 256, seed: int = 0, max_tokens_per_language: int | None = None,
                     batch_tokens: int = 8192, autocast=None, first_piece_only: bool = False) -> dict[str, float]:
    """Mean masked-token cross-entropy per language (NaN for a language with no maskable token).

    Pieces of all languages are packed together into batches of up to ``batch_tokens`` (a language's
    loss does not depend on its batch-mates: pieces never attend across). ``model`` is an
    ``MmBertForMaskedLM`` (not a DDP wrapper); ``autocast`` an optional context manager factory (e.g.
    bf16) for the forward. The model's training/eval mode is restored afterwards. The tokenized, masked
    and packed set is built once per (tokenizer, texts, settings) and reused (``fixed_heldout_set``).
    """
    held = fixed_heldout_set(tokenizer, texts_by_lang, mask_ratio, seq_len, seed, max_tokens_per_language,
                             batch_tokens, first_piece_only)
    return held.evaluate(model, autocast)
