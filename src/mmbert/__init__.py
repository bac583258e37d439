"""mmbert: build, pretrain with annealed language learning, merge, evaluate and serve ModernBERT-style
multilingual encoders."""

import os

# OpenMP workers that sleep when idle instead of spinning (set before torch loads its OpenMP runtime; an explicit
# OMP_WAIT_POLICY wins). Spinning workers collapse when another process shares the cores: one training step of the
# miniature with 2 threads on a 2-core machine running other jobs took 2.5x longer with spinning than with passive
# waits (benchmarks/train_step.py; ``mmbert.train.speed``).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
