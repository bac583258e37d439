"""mmbert: build, pretrain with annealed language learning, merge, evaluate and serve ModernBERT-style
multilingual encoders."""

from mmbert import process

process.configure()  # OpenMP waits and the allocator, before torch loads (mmbert/process.py)

from mmbert.model import (  # noqa: E402
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
    "MmBertForSequenceClassification", "MmBertForTokenClassification", "MmBertModel", "Encoder", "__version__",
]


def __getattr__(name: str):
    # Lazy, so `import mmbert` stays light: the serving stack loads only when it is used.
    if name == "Encoder":
        from mmbert.serve.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'mmbert' has no attribute {name!r}")
