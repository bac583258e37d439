"""An mmbert checkpoint as an ``mteb`` (2.x) encoder: ``mteb.evaluate(MtebEncoder(ckpt), tasks)``.

Implements ``mteb.models.models_protocols.EncoderProtocol``: ``encode(inputs: DataLoader, *, task_metadata,
hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray (N, dim)`` where each batch is a dict with
the texts under ``"text"``; ``similarity`` / ``similarity_pairwise`` (cosine, mteb's own functions) and
``mteb_model_meta``. Embeddings are the masked mean of the last layer, L2-normalised (the same vectors
as ``MmBertForEmbedding`` and our sentence-transformers export). No prompts: mmBERT is not instruction-tuned.
``mteb`` is imported only when its metadata or similarity functions are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmbert.eval.common import embed, encoder_of, load_model, load_tokenizer
from mmbert.model import MmBertModel


class MtebEncoder:
    def __init__(self, model_name, revision: str | None = None, *, tokenizer=None, max_length: int = 512,
                 max_tokens: int = 16384, device: str | None = None, **_):
        self.model = encoder_of(load_model(MmBertModel, model_name) if isinstance(model_name, (str, os.PathLike))
                                else model_name)
        if device:
            self.model.to(device)
        self.tokenizer = load_tokenizer(model_name, tokenizer)
        self.name = f"mmbert/{Path(model_name).name}" if isinstance(model_name, (str, os.PathLike)) else "mmbert/in-memory"
        self.revision = revision
        self.max_length, self.max_tokens = max_length, max_tokens

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "", prompt_type=None,
               **kwargs) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            texts.extend(batch["text"] if isinstance(batch, dict) else batch)
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return embed(self.model, self.tokenizer, texts, self.max_length, self.max_tokens)

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta

        n_params = sum(p.numel() for p in self.model.parameters())
        return ModelMeta.create_empty(overwrites=dict(
            name=self.name, revision=self.revision or "local", embed_dim=self.model.config.hidden_size,
            max_tokens=self.max_length, n_parameters=n_params, similarity_fn_name="cosine",
            framework=["PyTorch"], modalities=["text"], open_weights=True))
