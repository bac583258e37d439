"""Task heads on the encoder, laid out as transformers' ModernBert*For* classes (``model.*``, ``head.*``,
``classifier.*``), so a fine-tuned mmbert checkpoint opens in transformers and back.

Each head accepts the padded call ``(input_ids (B, T), attention_mask (B, T))`` (the encoder unpads inside)
and the unpadded one ``(input_ids (N,), cu_seqlens=(D+1,))`` that fine-tuning batches use: no pads at
all, token outputs flat (N, ...), pooled outputs (D, ...). Same numbers either way.
The MLM checkpoint's ``head`` (dense -> act -> norm) is reused by the classification heads, as in
transformers; ``classifier`` is created fresh when the checkpoint has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmbert.model.config import ModelConfig
from mmbert.model.modeling import MmBertModel, MmBertPreTrainedModel, PredictionHead


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


@dataclass
class QuestionAnsweringOutput:
    loss: torch.Tensor | None
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def varlen_mean_pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Average of each sequence's vectors in an unpadded stream: (N, H), (D+1,) -> (D, H)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    pooled = torch.zeros(len(lengths), hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    pooled.index_add_(0, seq, hidden)
    return pooled / lengths.unsqueeze(-1).to(hidden.dtype)


class _HeadModel(MmBertPreTrainedModel):
    init_if_missing = ("head.", "classifier.")

    def __init__(self, config: ModelConfig, num_outputs: int):
        super().__init__(config)
        self.model = MmBertModel(config)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_outputs)
        self.init_weights(skip="model.")

    def _encode(self, input_ids, attention_mask, cu_seqlens=None, max_seqlen=None):
        if cu_seqlens is not None:
            return self.model(input_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen).last_hidden_state, None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model(input_ids, attention_mask).last_hidden_state, attention_mask


def segments(flat: torch.Tensor, cu_seqlens: torch.Tensor, fill: float) -> torch.Tensor:
    """Per-token values of an unpadded stream laid out per sequence: (N,), (D+1,) -> (D, T_max), ``fill``
    past each sequence's end."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device), lengths)
    pos = torch.arange(flat.shape[0], device=flat.device) - cu_seqlens[:-1].long()[seq]
    out = flat.new_full((len(lengths), int(lengths.max())), fill)
    out[seq, pos] = flat
    return out


class MmBertForSequenceClassification(_HeadModel):
    """Pooling (``config.classifier_pooling``: "cls" or "mean") -> head -> classifier. Single-label
    cross-entropy for integer labels, MSE when ``num_labels == 1``."""

    architecture = "ModernBertForSequenceClassification"

    def __init__(self, config: ModelConfig):
        super().__init__(config, config.num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None, *, cu_seqlens=None, max_seqlen=None
                ) -> ClassifierOutput:
        hidden, attention_mask = self._encode(input_ids, attention_mask, cu_seqlens, max_seqlen)
        if cu_seqlens is not None:
            pooled = (varlen_mean_pool(hidden, cu_seqlens) if self.config.classifier_pooling == "mean"
                      else hidden[cu_seqlens[:-1].long()])  # (D, H)
        elif self.config.classifier_pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            pooled = hidden[:, 0]
        logits = self.classifier(self.drop(self.head(pooled)))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return ClassifierOutput(loss, logits)


class MmBertForTokenClassification(_HeadModel):
    architecture = "ModernBertForTokenClassification"

    def __init__(self, config: ModelConfig):
        super().__init__(config, config.num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None, *, cu_seqlens=None, max_seqlen=None
                ) -> ClassifierOutput:
        hidden, _ = self._encode(input_ids, attention_mask, cu_seqlens, max_seqlen)
        logits = self.classifier(self.drop(self.head(hidden)))  # (B, T, num_labels) or unpadded (N, num_labels)
        loss = None
        if labels is not None:  # -100 marks pads and non-first sub-words
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return ClassifierOutput(loss, logits)


class MmBertForQuestionAnswering(_HeadModel):
    architecture = "ModernBertForQuestionAnswering"

    def __init__(self, config: ModelConfig):
        super().__init__(config.replace(num_labels=2), 2)  # start and end logits

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None, *, cu_seqlens=None,
                max_seqlen=None):
        """Start / end logits (B, T); unpadded input gives them per sequence too, (D, T_max), -1e4 past the end."""
        hidden, attention_mask = self._encode(input_ids, attention_mask, cu_seqlens, max_seqlen)
        logits = self.classifier(self.drop(self.head(hidden)))  # (B, T, 2) or (N, 2)
        start, end = logits.float().unbind(dim=-1)
        if cu_seqlens is not None:
            start, end = segments(start, cu_seqlens, -1e4), segments(end, cu_seqlens, -1e4)
        else:
            pad = ~attention_mask.bool()
            start, end = start.masked_fill(pad, -1e4), end.masked_fill(pad, -1e4)  # pads are never answers
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return QuestionAnsweringOutput(loss, start, end)


class MmBertForEmbedding(MmBertPreTrainedModel):
    """Sentence embeddings: mean over real tokens of the encoder's last layer, L2-normalised (as the
    sentence-transformers layout we export: Transformer -> Pooling(mean) -> Normalize). No new weights."""

    architecture = "ModernBertModel"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.model = MmBertModel(config)

    def save_pretrained(self, directory, metadata=None):
        return self.model.save_pretrained(directory, metadata)

    def forward(self, input_ids, attention_mask=None, *, cu_seqlens=None, normalize: bool = True) -> torch.Tensor:
        if cu_seqlens is not None:  # unpadded: one vector per sequence of the stream
            pooled = varlen_mean_pool(self.model(input_ids, cu_seqlens=cu_seqlens).last_hidden_state, cu_seqlens)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            pooled = mean_pool(self.model(input_ids, attention_mask).last_hidden_state, attention_mask)
        return F.normalize(pooled.float(), dim=-1) if normalize else pooled
