"""Vocabulary extension of a trained encoder: resize the embeddings and the tied decoder, initialise new rows.

Pure tensor math; the tokenizer side (which pieces are new, how the old tokenizer splits them) is the
caller's (``mmbert.recipe.adapt``), so this module imports no tokenizer.

Choices:
- ``resize_vocab`` keeps every old row of ``tok_embeddings`` and ``decoder.bias`` bit-identical (a copy,
  never a recomputation) and re-ties ``decoder.weight`` to the new embedding matrix.
- Initialisations of the new rows, each returning (embedding rows, decoder-bias entries):
  * ``fvt_rows`` — Fast Vocabulary Transfer (Gee et al., 2022): a new piece's row is the mean of the rows of
    the pieces the *old* tokenizer splits its string into; its bias the mean of their biases.
  * ``focus_rows`` — FOCUS (Dobler & de Melo, 2023), simplified: a new piece's row is a sparsemax-weighted
    combination of the old rows of *overlap* tokens (pieces in both vocabularies), the weights from cosine
    similarities in an auxiliary embedding space trained on the new languages' text tokenized with the new
    tokenizer. FOCUS trains fastText on that text; here the auxiliary space is count-based (positive PMI of
    window co-occurrences, truncated SVD: ``cooccurrence_vectors``, Levy & Goldberg 2014's equivalent of
    skip-gram). FOCUS initialises tokens that have no overlap candidates with random rows; here they fall
    back to FVT.
  * ``random_rows`` — the model's own init (truncated normal, std ``initializer_range``), bias 0.
- ``prior_bias`` — the decoder bias of a new row. FVT's mean of the split's biases gives every piece of a
  byte-fallback script about the bias of its byte pieces, whatever the piece's frequency. A trained decoder
  bias tracks log-frequency (corr. 0.72 with the Unigram score in the demo base), so the new piece's bias is
  put where an old piece of the same unigram log-probability sits: a least-squares line fitted on the old
  pieces, evaluated at the new piece's score from the tokenizer that learned it.
- ``calibrate_rows`` (optional, ``--init-shrink``) — a hypothesis for why plain FVT can start *above* random init: a piece of a script the old tokenizer
  covers only by byte fallback is the mean of a handful of byte rows; hundreds of new pieces then sit almost
  on top of each other, far from the mean of the vocabulary, and through the tied decoder every one of them
  gets the high logit of that byte cluster wherever the hidden state points there — the model is confidently
  wrong among near-duplicates. The calibration shrinks each new row toward the mean of the old rows,
  ``e = μ + s (e_fvt − μ)`` (Hewitt 2021: a row at μ cannot dominate the softmax, by Jensen), and sets the new
  decoder bias to the old biases' mean, so the new pieces start as a near-neutral guess whose
  differences are carried, scaled down, by the FVT direction. Measured on the demo base it *hurts* (shrink 0.5:
  8.39 against 7.63 for plain FVT at init; README), since the tied rows are also the inputs and shrinking erases what the
  context says; it is kept as an option, off by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

INIT_METHODS = ("fvt", "focus", "random")


def resize_vocab(model: nn.Module, new_size: int, rows: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> nn.Module:
    """Grow an ``MmBertForMaskedLM``'s vocabulary to ``new_size`` in place (and return it). Old rows are
    copied bit for bit; the ``new_size - old`` new rows are ``rows`` (and ``bias``), zeros when not given."""
    emb = model.model.embeddings.tok_embeddings
    old, hidden = emb.weight.shape
    if new_size < old:
        raise ValueError(f"resize_vocab grows a vocabulary: {new_size} < {old}")
    n_new = new_size - old
    if rows is not None and tuple(rows.shape) != (n_new, hidden):
        raise ValueError(f"new rows have shape {tuple(rows.shape)}, expected {(n_new, hidden)}")
    weight = emb.weight.detach()
    new_emb = nn.Embedding(new_size, hidden, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new_emb.weight[:old] = weight
        new_emb.weight[old:] = rows.to(weight.dtype) if rows is not None else 0.0
    model.model.embeddings.tok_embeddings = new_emb
    dec = model.decoder
    new_dec = nn.Linear(hidden, new_size, bias=dec.bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        if dec.bias is not None:
            new_dec.bias[:old] = dec.bias.detach()
            new_dec.bias[old:] = bias.to(weight.dtype) if bias is not None else 0.0
        if not model.config.tie_word_embeddings:
            new_dec.weight[:old] = dec.weight.detach()
            new_dec.weight[old:] = new_emb.weight[old:]
    model.decoder = new_dec
    configs = [m for m in model.modules() if hasattr(m, "config")]
    for m in configs:
        m.config = m.config.replace(vocab_size=new_size)
    model.tie_weights()
    return model


def old_bias(model: nn.Module) -> torch.Tensor:
    """The decoder bias (zeros when the model has none)."""
    b = model.decoder.bias
    return b.detach().float() if b is not None else torch.zeros(model.decoder.weight.shape[0])


def fvt_rows(embeddings: torch.Tensor, bias: torch.Tensor, pieces: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i = mean of ``embeddings[pieces[i]]`` (the old tokenizer's split of new piece i); bias likewise."""
    if any(len(p) == 0 for p in pieces):
        raise ValueError("fvt_rows: every new piece needs at least one old piece")
    rows = torch.stack([embeddings[list(p)].float().mean(0) for p in pieces])
    b = torch.stack([bias[list(p)].float().mean() for p in pieces])
    return rows, b


def random_rows(n: int, hidden: int, std: float, cutoff: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own init for ``n`` rows (truncated normal at ``cutoff`` std), bias 0."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.nn.init.trunc_normal_(torch.empty(n, hidden), 0.0, std, -cutoff * std, cutoff * std, generator=gen)
    return rows, torch.zeros(n)


def calibrate_rows(rows: torch.Tensor, embeddings: torch.Tensor, bias: torch.Tensor, shrink: float,
                   n_old: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``μ + shrink (row − μ)`` with μ the mean of the old rows, and bias = the mean old bias (module doc).
    ``n_old``: only the first ``n_old`` rows count as old (default all)."""
    old = embeddings[: n_old or embeddings.shape[0]].float()
    mu = old.mean(0)
    b = torch.full((rows.shape[0],), float(bias[: n_old or bias.shape[0]].float().mean()))
    return mu + shrink * (rows.float() - mu), b


def prior_bias(bias: torch.Tensor, old_scores: dict[int, float], new_scores: torch.Tensor) -> torch.Tensor:
    """Decoder bias of new pieces from their unigram log-probabilities: b = a·score + c, with (a, c) the least-squares
    fit of the old pieces' biases on their own scores (``old_scores``: old id -> score). A trained decoder bias
    tracks log-frequency, so a new piece gets the bias an old piece of the same probability has."""
    ids = sorted(old_scores)
    x = torch.tensor([old_scores[i] for i in ids], dtype=torch.float64)
    y = bias[ids].double()
    if len(ids) < 2 or float(x.std()) == 0.0:
        return torch.full((len(new_scores),), float(y.mean()) if len(ids) else 0.0)
    a = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    c = float(y.mean() - a * x.mean())
    return (a * new_scores.double() + c).float()


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Martins & Astudillo (2016): the Euclidean projection of ``z`` onto the simplex (sparse weights)."""
    zs, _ = torch.sort(z, dim=dim, descending=True)
    k = torch.arange(1, z.shape[dim] + 1, dtype=z.dtype, device=z.device)
    shape = [1] * z.dim()
    shape[dim] = -1
    k = k.view(shape)
    cums = zs.cumsum(dim)
    support = (1 + k * zs) > cums
    k_z = support.sum(dim=dim, keepdim=True)
    tau = (cums.gather(dim, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0)


def cooccurrence_vectors(sequences: Sequence[Sequence[int]], vocab_size: int, dim: int = 64, window: int = 4,
                         min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Auxiliary token vectors from id sequences: positive PMI of symmetric window co-occurrences, truncated
    SVD (U·sqrt(S)). Returns (vectors (V, dim), counts (V,)); tokens seen fewer than ``min_count`` times get 0."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    seen: list[np.ndarray] = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
    for s in seen:
        np.add.at(counts, s, 1)
    keep = np.nonzero(counts >= min_count)[0]
    index = np.full(vocab_size, -1, dtype=np.int64)
    index[keep] = np.arange(len(keep))
    n = len(keep)
    out = np.zeros((vocab_size, dim), dtype=np.float32)
    if n < 2:
        return out, counts
    cooc = np.zeros((n, n), dtype=np.float64)
    for s in seen:
        ids = index[s]
        for d in range(1, window + 1):
            a, b = ids[:-d], ids[d:]
            ok = (a >= 0) & (b >= 0)
            np.add.at(cooc, (a[ok], b[ok]), 1.0 / d)
            np.add.at(cooc, (b[ok], a[ok]), 1.0 / d)
    total = cooc.sum()
    if total == 0:
        return out, counts
    row = cooc.sum(1, keepdims=True)
    col = cooc.sum(0, keepdims=True) ** 0.75  # context-distribution smoothing, as word2vec
    col = col / col.sum() * total
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(cooc * total / (row * col))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    u, sv, _ = np.linalg.svd(ppmi, full_matrices=False)
    k = min(dim, len(sv))
    out[keep, :k] = (u[:, :k] * np.sqrt(sv[:k])).astype(np.float32)
    return out, counts


def focus_rows(embeddings: torch.Tensor, bias: torch.Tensor, aux: np.ndarray, new_ids: Sequence[int],
               overlap: dict[int, int], fallback: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """FOCUS-style rows (module doc). ``aux``: auxiliary vectors indexed by *new* ids; ``new_ids``: the new
    pieces' ids; ``overlap``: new id -> old id of tokens in both vocabularies (with an auxiliary vector);
    ``fallback``: (rows, bias) used for a new piece without auxiliary vector or candidates (FVT)."""
    rows, b = fallback[0].clone().float(), fallback[1].clone().float()
    cand_new = [i for i in overlap if np.any(aux[i])]
    if not cand_new:
        return rows, b
    cand = torch.from_numpy(aux[cand_new]).float()
    cand = cand / cand.norm(dim=1, keepdim=True).clamp_min(1e-12)
    src = embeddings[[overlap[i] for i in cand_new]].float()
    src_b = bias[[overlap[i] for i in cand_new]].float()
    for r, i in enumerate(new_ids):
        v = torch.from_numpy(aux[i]).float()
        if not torch.any(v):
            continue
        sims = cand @ (v / v.norm().clamp_min(1e-12))
        w = sparsemax(sims)
        if not math.isfinite(float(w.sum())) or float(w.sum()) <= 0:
            continue
        rows[r] = w @ src
        b[r] = w @ src_b
    return rows, b


__all__ = ["INIT_METHODS", "calibrate_rows", "cooccurrence_vectors", "focus_rows", "fvt_rows", "old_bias", "prior_bias",
           "random_rows", "resize_vocab", "sparsemax"]
