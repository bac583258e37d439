"""``Encoder``: sentence embeddings and fill-mask from a checkpoint directory, in Python.

    enc = Encoder("ckpt/")
    vectors = enc.encode(["a text", "another, longer text"])   # (2, H) float32, L2-normalised
    enc.fill_mask("Paris is the <mask> of France.", top_k=5)   # one list of predictions per <mask>

Choices:
- Embeddings are the mean over real tokens of the last layer, L2-normalised (``MmBertForEmbedding``, the
  sentence-transformers layout Transformer -> Pooling(mean) -> Normalize that ``export.py`` writes).
- Texts are tokenised with the checkpoint's own ``tokenizer.json``, sorted by length and packed into
  token-budgeted batches (``model.batching.pack_by_tokens``) that run *unpadded* (``cu_seqlens``): no compute on
  pads, so mixed lengths do not collapse throughput. Outputs come back in input order.
- A text longer than ``max_length`` tokens (default: the smaller of the tokenizer's ``model_max_length``
  and the model's ``max_position_embeddings``) is truncated: its content is cut, the special tokens that
  wrap it (``<bos> ... <eos>``) are kept, as transformers' truncation does.
- fp32 by default so results are exact and equal across CLI, Python and HTTP; ``precision`` ``bf16``,
  ``int8`` or ``auto`` converts the model once at load (``model/precision.py``: bf16 autocast, or int8
  linear layers; fidelity to fp32 in benchmarks/README.md).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmbert.model import (
    CheckpointError,
    ModelConfig,
    MmBertForEmbedding,
    MmBertForMaskedLM,
    MmBertForSequenceClassification,
)
from mmbert.model.batching import pack_by_tokens
from mmbert.model.precision import resolve_precision
from mmbert.model.st_layout import trained_dimensions
from mmbert.tokenizer import Tokenizer

DEFAULT_BATCH_TOKENS = 16_384  # 16k tokens: ~1 GB of activations at H=768 in fp32; fine on CPU and GPU
PROGRESS_MIN_TEXTS = 1_000  # below this a bar is noise


def load_tokenizer(directory: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """The checkpoint's tokenizer; else the shipped one, only if its vocabulary has the model's size."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(directory)
    else:
        try:
            tok = Tokenizer.default()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{directory} has no tokenizer.json and no default tokenizer is installed") from e
        if tok.vocab_size != vocab_size:
            raise ValueError(
                f"{directory} has no tokenizer.json, and the default tokenizer's vocabulary ({tok.vocab_size}) "
                f"does not match the model's ({vocab_size}); copy the tokenizer used in training into {directory}"
            )
        warnings.warn(f"{directory} has no tokenizer.json; using mmbert's default tokenizer (same vocabulary size)",
                      stacklevel=3)
    if tok.vocab_size > vocab_size:
        raise ValueError(f"tokenizer vocabulary ({tok.vocab_size}) is larger than the model's ({vocab_size})")
    return tok


def special_affixes(tok: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a text (``[<bos>]``, ``[<eos>]``)."""
    probe = "hello world"
    bare = tok.encode(probe, add_special_tokens=False)
    full = tok.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError("cannot tell which special tokens the tokenizer adds around a text")


class Encoder:
    """Embeddings and fill-mask for one checkpoint directory (config.json + model.safetensors + tokenizer)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        max_length: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        tokenizer: Tokenizer | None = None,
    ):
        self.path = Path(path)
        self.config = ModelConfig.load(self.path)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)  # auto -> bf16 | fp32; refuses what cannot run
        self.tokenizer = tokenizer or load_tokenizer(self.path, self.config.vocab_size)
        limit = min(self.tokenizer.model_max_length, self.config.max_position_embeddings)
        if max_length is not None and not 1 <= max_length <= self.config.max_position_embeddings:
            raise ValueError(f"max_length must be in [1, {self.config.max_position_embeddings}], got {max_length}")
        self.max_length = max_length or limit
        self.batch_tokens = batch_tokens
        self.prefix, self.suffix = special_affixes(self.tokenizer)
        if self.max_length <= len(self.prefix) + len(self.suffix):
            raise ValueError(f"max_length {self.max_length} leaves no room for text beside the special tokens")
        self.model = MmBertForEmbedding.from_pretrained(self.path, device=self.device, precision=self.precision)
        # the sizes an embedding model was trained to give (Matryoshka dims + full); None: not declared
        self.trained_dimensions = trained_dimensions(self.path, self.config.hidden_size)
        self._mlm: MmBertForMaskedLM | None = None
        self._classifier: MmBertForSequenceClassification | None = None

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def __repr__(self) -> str:
        return f"Encoder({str(self.path)!r}, hidden_size={self.hidden_size}, max_length={self.max_length})"

    # -- tokens ----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids with special tokens, *not* truncated (callers that enforce limits need the true length)."""
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def wrap(self, token_ids: Sequence[int]) -> list[int]:
        """Content ids (as ``encode(text, add_special_tokens=False)`` gives) -> the model's input."""
        return [*self.prefix, *token_ids, *self.suffix]

    def truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        s = len(self.suffix)
        return ids[: self.max_length - s] + ids[len(ids) - s :] if s else ids[: self.max_length]

    # -- embeddings ------------------------------------------------------------------------------------
    def encode(
        self, texts: str | Sequence[str], *, normalize: bool = True, batch_tokens: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """(N, H) float32 embeddings in input order ((H,) for a single string). Long texts are truncated to
        ``max_length`` tokens. ``progress``: None shows a bar on a terminal for 1,000+ texts."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must be strings; item {bad} is {type(texts[bad]).__name__}")
        ids = [self.truncate(x) for x in self.tokenize(texts)]
        out = self.encode_ids(ids, normalize=normalize, batch_tokens=batch_tokens, progress=progress)
        return out[0] if single else out

    def encode_ids(
        self, sequences: Sequence[Sequence[int]], *, normalize: bool = True, batch_tokens: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embeddings of already tokenised sequences (special tokens included, within ``max_length``)."""
        lengths = [len(s) for s in sequences]
        if any(n == 0 for n in lengths):
            raise ValueError("an input has no tokens")
        if any(n > self.config.max_position_embeddings for n in lengths):
            raise ValueError(f"an input is longer than max_position_embeddings ({self.config.max_position_embeddings})")
        out = np.empty((len(sequences), self.hidden_size), dtype=np.float32)
        if not sequences:
            return out
        from tqdm.auto import tqdm

        show = progress if progress is not None else (None if len(sequences) >= PROGRESS_MIN_TEXTS else False)
        with tqdm(total=len(sequences), unit="text", disable=None if show is None else not show) as bar:
            for batch in pack_by_tokens(lengths, batch_tokens or self.batch_tokens):
                flat = torch.tensor([t for i in batch for t in sequences[i]], dtype=torch.long, device=self.device)
                cu = torch.tensor(np.concatenate([[0], np.cumsum([lengths[i] for i in batch])]),
                                  dtype=torch.int32, device=self.device)
                with torch.inference_mode():
                    vectors = self.model(flat, cu_seqlens=cu, normalize=normalize)  # (len(batch), H)
                out[batch] = vectors.float().cpu().numpy()
                bar.update(len(batch))
        return out

    # -- classification (a checkpoint written by `mmbert finetune --task classification`) ---------------
    @property
    def is_classifier(self) -> bool:
        return (self.config.extra.get("architectures") or [""])[0] == "ModernBertForSequenceClassification"

    def classifier(self) -> MmBertForSequenceClassification:
        """The sequence-classification model, loaded on first use; it shares the encoder with embeddings."""
        if self._classifier is None:
            if not self.is_classifier:
                raise ValueError(f"{self.path} is not a sequence-classification model (its config.json names "
                                 f"{self.config.extra.get('architectures')}); fine-tune one with mmbert finetune")
            clf = MmBertForSequenceClassification.from_pretrained(self.path, device=self.device,
                                                                  precision=self.precision)
            self.model.model = clf.model
            self._classifier = clf
        return self._classifier

    def labels(self) -> list[str]:
        id2label = self.config.extra.get("id2label") or {}
        return [id2label.get(str(i), f"LABEL_{i}") for i in range(self.config.num_labels)]

    def classify_ids(self, sequences: Sequence[Sequence[int]], batch_tokens: int | None = None) -> list[dict]:
        """``{"label", "score", "scores": {label: probability}}`` per tokenised sequence (regression models:
        ``{"score": value}``), in input order; unpadded token-budgeted batches."""
        clf, labels = self.classifier(), self.labels()
        out: list[dict] = [{}] * len(sequences)
        lengths = [len(s) for s in sequences]
        for batch in pack_by_tokens(lengths, batch_tokens or self.batch_tokens):
            flat = torch.tensor([t for i in batch for t in sequences[i]], dtype=torch.long, device=self.device)
            cu = torch.tensor(np.concatenate([[0], np.cumsum([lengths[i] for i in batch])]), dtype=torch.int32,
                              device=self.device)
            with torch.inference_mode():
                logits = clf(flat, cu_seqlens=cu, max_seqlen=max(lengths[i] for i in batch)).logits.float()
            if self.config.num_labels == 1:
                for i, v in zip(batch, logits.squeeze(-1).tolist()):
                    out[i] = {"score": v}
                continue
            for i, p in zip(batch, logits.softmax(dim=-1).tolist()):
                j = max(range(len(p)), key=p.__getitem__)
                out[i] = {"label": labels[j], "score": p[j], "scores": dict(zip(labels, p))}
        return out

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """Labels with scores for ``texts`` (truncated to ``max_length``), as ``classify_ids``."""
        return self.classify_ids([self.truncate(x) for x in self.tokenize(list(texts))])

    # -- fill-mask -------------------------------------------------------------------------------------
    def masked_lm(self) -> MmBertForMaskedLM:
        """The MLM model, loaded on first use; it then also serves embeddings, so weights are held once."""
        if self._mlm is None:
            try:
                mlm = MmBertForMaskedLM.from_pretrained(self.path, device=self.device, precision=self.precision)
            except CheckpointError as e:
                raise ValueError(f"{self.path} has no masked-LM head (head.* / decoder.*), so no fill-mask: {e}") from e
            self.model.model = mlm.model
            self._mlm = mlm
        return self._mlm

    def fill_mask(self, text: str, top_k: int = 5) -> list[list[dict]]:
        """For each ``<mask>`` in ``text``, in order, the ``top_k`` predictions as transformers' fill-mask
        pipeline names them: ``{"score", "token", "token_str", "sequence"}`` (``sequence``: the text with that
        mask filled). Always one list per mask, even for a single mask."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        tok = self.tokenizer
        ids = self.truncate(self.tokenize([text])[0])
        positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
        if not positions:
            raise ValueError(f"the text has no {tok.mask_token} token (within the first {self.max_length} tokens)")
        mlm = self.masked_lm()
        flat = torch.tensor(ids, dtype=torch.long, device=self.device)
        cu = torch.tensor([0, len(ids)], dtype=torch.int32, device=self.device)
        with torch.inference_mode():
            logits = mlm(flat, cu_seqlens=cu).logits[positions]  # (masks, V)
        probs = logits.float().softmax(dim=-1)[:, : tok.vocab_size]  # the model may pad its vocabulary
        scores, tokens = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        content = slice(len(self.prefix), len(ids) - len(self.suffix))
        results = []
        for pos, row_scores, row_tokens in zip(positions, scores.tolist(), tokens.tolist()):
            preds = []
            for score, token in zip(row_scores, row_tokens):
                filled = list(ids)
                filled[pos] = token
                preds.append({
                    "score": score, "token": token, "token_str": tok.decode([token], skip_special_tokens=False),
                    "sequence": tok.decode(filled[content], skip_special_tokens=False),  # other masks stay
                })
            results.append(preds)
        return results
