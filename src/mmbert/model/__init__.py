"""The encoder, its heads and checkpoint I/O."""

from mmbert.model.checkpoint import CheckpointError
from mmbert.model.config import PRESETS, ModelConfig
from mmbert.model.heads import (
    MmBertForEmbedding,
    MmBertForQuestionAnswering,
    MmBertForSequenceClassification,
    MmBertForTokenClassification,
    mean_pool,
    varlen_mean_pool,
)
from mmbert.model.modeling import EncoderOutput, MaskedLMOutput, MmBertForMaskedLM, MmBertModel

__all__ = [
    "PRESETS", "CheckpointError", "EncoderOutput", "MaskedLMOutput", "ModelConfig", "MmBertForEmbedding",
    "MmBertForMaskedLM", "MmBertForQuestionAnswering", "MmBertForSequenceClassification",
    "MmBertForTokenClassification", "MmBertModel", "mean_pool", "varlen_mean_pool",
]
