"""mmbert: build, pretrain with annealed language learning, merge, evaluate and serve ModernBERT-style
multilingual encoders."""

from mmbert.model import (
    CheckpointError,
    ModelConfig,
    MmBertForEmbedding,
    MmBertForMaskedLM,
    MmBertForQuestionAnswering,
    MmBertForSequenceClassification,
    MmBertForTokenClassification,
    MmBertModel,
)

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "ModelConfig", "MmBertForEmbedding", "MmBertForMaskedLM", "MmBertForQuestionAnswering",
    "MmBertForSequenceClassification", "MmBertForTokenClassification", "MmBertModel", "__version__",
]
