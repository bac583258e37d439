"""Model configuration: one dataclass whose fields carry transformers' ``ModernBertConfig`` names.

Reads both config layouts in the wild:
- transformers >= 5 writes ``layer_types`` (``full_attention`` / ``sliding_attention`` per layer) and
  ``rope_parameters`` (``{"full_attention": {"rope_theta": ..}, "sliding_attention": {..}}``);
- released mmBERT / ModernBERT checkpoints (transformers 4.4x) carry ``global_attn_every_n_layers``,
  ``global_rope_theta`` and ``local_rope_theta``.
We write both, consistently, so either transformers generation reads our checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    vocab_size: int = 256_000  # Gemma-2 vocabulary, as mmBERT
    hidden_size: int = 768
    intermediate_size: int = 1152  # per GLU half: Wi projects to 2 * intermediate_size
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"  # exact (erf) GELU, as transformers' ACT2FN["gelu"]
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0  # truncated-normal init cut at +-factor * std
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    cls_token_id: int = 2  # mmBERT wraps sequences as <bos> ... <eos>
    sep_token_id: int = 1
    mask_token_id: int = 4  # not a transformers field; read from the tokenizer when we have one
    global_attn_every_n_layers: int = 3  # layer i is global when i % n == 0
    local_attention: int = 128  # total window: local layers see |i - j| <= local_attention // 2
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 160_000.0  # mmBERT: 10k in pretraining, 160k after context extension
    attention_bias: bool = False
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"  # "cls" or "mean" for sequence classification
    classifier_dropout: float = 0.0
    classifier_bias: bool = False  # the prediction head's dense layer
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True
    num_labels: int = 2  # for classification heads
    # Unknown fields read from a config.json are kept here and written back, so nothing is lost.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.global_attn_every_n_layers < 1:
            raise ValueError("global_attn_every_n_layers must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> list[str]:
        n = self.global_attn_every_n_layers
        return ["full_attention" if i % n == 0 else "sliding_attention" for i in range(self.num_hidden_layers)]

    def is_global(self, layer_idx: int) -> bool:
        return layer_idx % self.global_attn_every_n_layers == 0

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, tokenizer: Any = None, **overrides: Any) -> "ModelConfig":
        """A preset's shape. Its vocabulary and special ids are placeholders (``tiny`` has 512 tokens, for
        tests on synthetic ids): pass ``tokenizer`` (any object with ``vocab_size``, ``pad_id``,
        ``mask_id``, ``bos_id``, ``eos_id``, e.g. ``mmbert.tokenizer.Tokenizer.default()``) to take them
        from it, as the trainer does; explicit ``overrides`` win."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        ids = tokenizer_fields(tokenizer) if tokenizer is not None else {}
        return cls(**{**PRESETS[name], **ids, **overrides})

    # ---- transformers config.json --------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {**self.extra, **d}
        d.update(
            model_type="modernbert",
            architectures=d.get("architectures") or ["ModernBertForMaskedLM"],
            layer_types=self.layer_types,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": float(self.global_rope_theta)},
                "sliding_attention": {"rope_type": "default", "rope_theta": float(self.local_rope_theta)},
            },
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if d.get("model_type", "modernbert") != "modernbert":
            raise ValueError(f"expected a ModernBERT config (model_type 'modernbert'), got {d.get('model_type')!r}")
        layer_types = d.pop("layer_types", None)
        rope = d.pop("rope_parameters", None) or {}
        if layer_types:
            d["global_attn_every_n_layers"] = _every_n_from_layer_types(layer_types)
        if rope:  # transformers 5 layout wins where both are present: it is what v5 itself reads
            if "full_attention" in rope and "rope_theta" in rope["full_attention"]:
                d["global_rope_theta"] = rope["full_attention"]["rope_theta"]
            if "sliding_attention" in rope and "rope_theta" in rope["sliding_attention"]:
                d["local_rope_theta"] = rope["sliding_attention"]["rope_theta"]
        if "local_rope_theta" in d and d["local_rope_theta"] is None and not rope:
            d["local_rope_theta"] = d.get("global_rope_theta") or _HF_DEFAULTS["global_rope_theta"]  # 4.x meaning
        for k, v in _HF_DEFAULTS.items():  # absent fields mean transformers' defaults, not ours
            if d.get(k) is None:
                d[k] = v
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        for k in ("eos_token_id",):  # transformers allows a list here
            if isinstance(kwargs.get(k), list):
                kwargs[k] = kwargs[k][0]
        if "num_labels" not in kwargs and isinstance(extra.get("id2label"), dict):
            kwargs["num_labels"] = len(extra["id2label"])
        return cls(**kwargs, extra=extra)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d)


def _every_n_from_layer_types(layer_types: list[str]) -> int:
    """Recover ``global_attn_every_n_layers`` from an explicit per-layer list (it must be periodic)."""
    globals_ = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    unknown = set(layer_types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"unsupported layer_types {sorted(unknown)}")
    n = globals_[1] - globals_[0] if len(globals_) > 1 else len(layer_types)
    if not globals_ or globals_[0] != 0 or any(
        (t == "full_attention") != (i % n == 0) for i, t in enumerate(layer_types)
    ):
        raise ValueError(
            f"layer_types must put a global layer every n layers from layer 0; got {layer_types}"
        )
    return max(n, 1)


# transformers' ModernBertConfig defaults where they differ from ours: a config.json that omits a
# field means what transformers would read, so parity holds for any checkpoint.
_HF_DEFAULTS = dict(vocab_size=50368, pad_token_id=50283, eos_token_id=50282, bos_token_id=50281,
                    cls_token_id=50281, sep_token_id=50282, global_rope_theta=160_000.0,
                    local_rope_theta=10_000.0)

_MMBERT = dict(vocab_size=256_000, max_position_embeddings=8192, global_rope_theta=160_000.0,
               local_rope_theta=160_000.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
               cls_token_id=2, sep_token_id=1, mask_token_id=4)

def tokenizer_fields(tokenizer: Any) -> dict[str, int]:
    """The ModelConfig fields a tokenizer decides: vocabulary size and special-token ids."""
    ids = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id, "mask_token_id": tokenizer.mask_id}
    if getattr(tokenizer, "bos_id", None) is not None:
        ids.update(bos_token_id=tokenizer.bos_id, cls_token_id=tokenizer.bos_id)
    if getattr(tokenizer, "eos_id", None) is not None:
        ids.update(eos_token_id=tokenizer.eos_id, sep_token_id=tokenizer.eos_id)
    return ids


PRESETS: dict[str, dict[str, Any]] = {
    # For tests: 4 layers -> global, local, local, global; window 16 so short test batches cross it.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                 num_attention_heads=4, local_attention=16, max_position_embeddings=1024,
                 global_rope_theta=160_000.0, local_rope_theta=10_000.0, pad_token_id=0,
                 eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1, mask_token_id=4),
    # The miniature recipe (see shared/reference/miniature-feasibility.md): 7.5M params at 16k vocab.
    "mini": dict(vocab_size=16_384, hidden_size=256, intermediate_size=384, num_hidden_layers=6,
                 num_attention_heads=4, local_attention=64, max_position_embeddings=1024,
                 global_rope_theta=10_000.0, local_rope_theta=10_000.0, pad_token_id=0,
                 eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1, mask_token_id=4),
    "mmbert-small": dict(_MMBERT, hidden_size=384, intermediate_size=1152, num_hidden_layers=22,
                         num_attention_heads=6),
    "mmbert-base": dict(_MMBERT, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                        num_attention_heads=12),
}
