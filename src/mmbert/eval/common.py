"""What every evaluation task shares: loading a checkpoint under a task head, encoding single texts and
pairs as mmBERT wraps them (``<bos> A <eos>`` and ``<bos> A <eos> B <eos>``, truncating the longer
side first as transformers' ``longest_first``), padding, and mean-pooled embeddings computed without
pads (length-sorted, unpadded ``cu_seqlens`` batches: the eval sets are ragged, and pads would be most
of the compute).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmbert.model import MmBertModel, varlen_mean_pool
from mmbert.model.batching import pack_by_tokens
from mmbert.model.precision import apply_precision
from mmbert.tokenizer import Tokenizer


def load_tokenizer(checkpoint, tokenizer=None) -> Tokenizer:
    """``tokenizer`` as given (a ``Tokenizer`` or a path), else the one saved in the checkpoint directory."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer is not None:
        return Tokenizer.from_file(tokenizer)
    if isinstance(checkpoint, (str, os.PathLike)) and (Path(checkpoint) / "tokenizer.json").is_file():
        return Tokenizer.from_file(checkpoint)
    raise ValueError(f"no tokenizer: {checkpoint} has no tokenizer.json and none was given")


def load_model(cls, checkpoint, precision: str | None = None, **config_overrides):
    """``cls`` (a model class) with the weights of ``checkpoint``: a directory, or a loaded model whose
    encoder (and MLM ``head``) are copied; task heads missing from the source start fresh. ``precision``
    (auto, fp32, bf16, int8): converted for inference (``model/precision.py``); a loaded model is copied
    first, so the caller's stays as it was."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return cls.from_pretrained(checkpoint, precision=precision, **config_overrides)
    config = checkpoint.config.replace(**config_overrides) if config_overrides else checkpoint.config
    model = cls(config)
    state = {k: v.detach().float() for k, v in checkpoint.state_dict().items()}
    if isinstance(checkpoint, MmBertModel):
        state = {f"model.{k}": v for k, v in state.items()} if hasattr(model, "model") else state
    model.load_checkpoint_state(state, source=type(checkpoint).__name__)
    if precision is not None:
        apply_precision(model, precision, next(model.parameters()).device)
    return model.eval()


def encoder_of(model) -> MmBertModel:
    return model if isinstance(model, MmBertModel) else model.model


def special_ids(tok: Tokenizer, config=None) -> tuple[int, int, int]:
    """(bos, eos, pad): the tokenizer's, falling back on the model config's cls / sep."""
    bos = tok.bos_id if tok.bos_id is not None else config.cls_token_id
    eos = tok.eos_id if tok.eos_id is not None else config.sep_token_id
    return bos, eos, tok.pad_id


def wrap(ids_a: list[int], ids_b: list[int] | None, max_length: int, bos: int, eos: int) -> list[int]:
    """``<bos> a <eos> [b <eos>]``, cut to ``max_length`` by trimming the longer of a / b one token at a time."""
    a, b = list(ids_a), (list(ids_b) if ids_b is not None else None)
    budget = max_length - (3 if b is not None else 2)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text")
    if b is None:
        return [bos] + a[:budget] + [eos]
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return [bos] + a + [eos] + b + [eos]


def encode(tok: Tokenizer, texts: list[str], pairs: list[str] | None = None, max_length: int = 128,
           config=None) -> list[list[int]]:
    bos, eos, _ = special_ids(tok, config)
    a = tok.encode_batch(list(texts), add_special_tokens=False)
    b = tok.encode_batch(list(pairs), add_special_tokens=False) if pairs is not None else [None] * len(a)
    return [wrap(x, y, max_length, bos, eos) for x, y in zip(a, b)]


def pad_batch(seqs: list[list[int]], pad_id: int, value_pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) right-padded to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id if value_pad is None else value_pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def data_file(data, name: str) -> Path:
    """``data/name`` of a benchmark folder, with a clear error when either is missing."""
    if data is None:
        raise ValueError(f"give --data DIR (holding {name}) or the files themselves (--train/--dev/--test)")
    path = Path(data) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected in the benchmark's own layout)")
    return path


@torch.inference_mode()
def embed(model, tok: Tokenizer, texts: list[str], max_length: int = 256, max_tokens: int = 16384,
          normalize: bool = True, bf16: bool = False) -> np.ndarray:
    """Mean-pooled (and L2-normalised) last-layer vectors, (N, H) float32, in the order of ``texts``.
    ``bf16``: autocast the encoder (about 2x faster on CPUs with AMX; vectors differ by ~1e-4)."""
    encoder = encoder_of(model)
    seqs = encode(tok, texts, max_length=max_length, config=encoder.config)
    out = np.zeros((len(seqs), encoder.config.hidden_size), dtype=np.float32)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    for group in pack_by_tokens([len(s) for s in seqs], max_tokens):
        lengths = torch.tensor([len(seqs[i]) for i in group])
        flat = torch.tensor([t for i in group for t in seqs[i]], dtype=torch.long, device=device)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = encoder(flat, cu_seqlens=cu, max_seqlen=int(lengths.max())).last_hidden_state.float()  # (N, H)
        pooled = varlen_mean_pool(hidden, cu)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        out[group] = pooled.cpu().numpy()
    encoder.train(was_training)
    return out
