"""A tiny checkpoint for the serve / export tests: the "tiny" model preset (vocab 512) with random weights
and a 512-piece byte-level BPE tokenizer trained on a few sentences, laid out as mmBERT's
(``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, ``<bos> $A <eos>``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer

from mmbert import ModelConfig, MmBertForMaskedLM
from mmbert.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.",
    "人人生而自由，在尊严和权利上一律平等。",
    "Embeddings map sentences to vectors; similar sentences get similar vectors.",
] * 20

TEXTS = [  # mixed lengths, scripts and one long text (crosses the tiny model's 16-token window)
    "hello world",
    "Paris is the capital of France.",
    "",
    "Der schnelle braune Fuchs springt über den faulen Hund. " * 6,
    "人人生而自由",
    "a",
    "Embeddings map sentences to vectors.",
]


def tiny_tokenizer(model_max_length: int = 256) -> Tokenizer:
    backend = BackendTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return Tokenizer(backend, model_max_length=model_max_length)


def make_checkpoint(directory: Path, seed: int = 0, model_max_length: int = 256) -> Path:
    """An MLM checkpoint with perturbed norms (so a skipped norm shows) and its tokenizer."""
    torch.manual_seed(seed)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny")).init_weights(seed=seed).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    tok = tiny_tokenizer(model_max_length)
    assert tok.vocab_size <= 512, tok.vocab_size
    tok.save(directory)
    return Path(directory)


def assert_allclose(actual, expected, atol: float, what: str = "") -> None:
    """Fail with the max and mean absolute difference (arrays or tensors)."""
    actual, expected = (np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
                        for x in (actual, expected))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    assert diff.max() <= atol, f"{what}: max abs diff {diff.max():.3g} (mean {diff.mean():.3g}) > {atol}"
