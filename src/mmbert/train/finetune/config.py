"""Fine-tuning configuration: a YAML file and/or ``--set key=value`` overrides -> ``FinetuneConfig``.

The building and checks are ``train.config``'s (unknown key -> an error naming it and the file; values
typed; overrides parsed as YAML). Defaults follow the composer configs ModernBERT's (and mmBERT's) GLUE
fine-tuning inherits from MosaicBERT: ``decoupled_adamw`` with betas (0.9, 0.98), eps 1e-6, weight decay
1e-5; ``linear_decay_with_warmup`` with ``t_warmup: 0.06dur`` (6% linear warmup, then linear decay; we
decay to 0 where some of those configs stop at ``alpha_f: 0.02``); gradient clipping at norm 1. The peak
LR is swept per task in those papers (about 1e-5 .. 8e-5 for base models; 5e-5 here; a small model
trained briefly wants 3e-4 .. 1e-3); a few epochs with the best dev checkpoint kept. ``decay: inv_sqrt``
gives the 1-sqrt cooldown instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmbert.train.config import ConfigError, _build, apply_override, field_docs


@dataclass
class FinetuneConfig:
    task: str = "classification"  # classification | regression | token-classification | qa | embedding (or a registered task)
    lr: float = 5e-5  # peak learning rate
    weight_decay: float = 1e-5  # decoupled AdamW weight decay (not on norms, biases, embeddings)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    epochs: float = 3.0  # passes over the training set (fractions allowed); max_steps caps it
    max_steps: int | None = None  # stop after this many optimizer steps (None = the epochs decide)
    warmup: float = 0.06  # fraction of the steps spent in linear warmup from 0
    decay: str = "linear"  # linear | inv_sqrt (1-sqrt) | cosine | none: the decay after warmup, to 0
    batch_tokens: int = 4096  # tokens of one optimizer step (all ranks together); whole examples, no pads
    micro_batch_tokens: int = 4096  # tokens per forward pass on one rank (gradient accumulation fills the rest)
    max_length: int = 128  # tokens per input sequence (QA: per window)
    stride: int = 32  # qa: tokens shared by neighbouring windows of a long context
    eval_every: int = 0  # evaluate on dev every this many steps (0 = at the end of every epoch)
    patience: int = 3  # early stopping: dev evaluations without improvement before stopping (0 = never stop)
    checkpoint_every: int = 0  # write a resumable checkpoint every this many steps (0 = at each evaluation)
    keep_last: int = 2  # resumable checkpoints kept
    max_bad_steps: int = 10  # stop after this many consecutive steps with a non-finite loss or gradient
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | bf16 | fp32
    seed: int = 0  # seeds the head's initialisation, dropout and the data order
    classifier_pooling: str | None = None  # classification: "cls" or "mean" (None = the checkpoint's config)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # a progress bar with loss, dev metric and tokens/s
    log_every: int = 10  # write a metrics.jsonl line every this many steps
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific settings (embedding: EmbeddingSettings)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def validate(cfg: FinetuneConfig, where: str) -> None:
    checks = [
        (cfg.lr > 0, "lr", "must be > 0"),
        (cfg.epochs > 0, "epochs", "must be > 0"),
        (cfg.max_steps is None or cfg.max_steps > 0, "max_steps", "must be > 0"),
        (0 <= cfg.warmup < 1, "warmup", "must be in [0, 1)"),
        (cfg.decay in ("linear", "inv_sqrt", "cosine", "none"), "decay", "must be linear, inv_sqrt, cosine or none"),
        (cfg.batch_tokens >= 1 and cfg.micro_batch_tokens >= 1, "batch_tokens", "token budgets must be >= 1"),
        (cfg.max_length >= 8, "max_length", "must be >= 8"),
        (cfg.precision in ("auto", "bf16", "fp32"), "precision", "must be auto, bf16 or fp32"),
        (cfg.classifier_pooling in (None, "cls", "mean"), "classifier_pooling", "must be cls or mean"),
        (cfg.max_bad_steps >= 1, "max_bad_steps", "must be >= 1"),
        (cfg.keep_last >= 1, "keep_last", "must be >= 1"),
        (cfg.log_every >= 1, "log_every", "must be >= 1"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{key} {msg} in {where}")


def load_finetune_config(path: str | Path | None = None, overrides: list[str] | None = None,
                         **values: Any) -> FinetuneConfig:
    """``path`` (YAML, optional), then ``values`` (flags that were given), then ``--set`` ``overrides``."""
    raw: dict[str, Any] = {}
    where = "<flags>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fine-tuning config not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        where = str(path)
    raw.update({k: v for k, v in values.items() if v is not None})
    for item in overrides or []:
        apply_override(raw, item, where)
    cfg = _build(FinetuneConfig, raw, "", where)
    validate(cfg, where)
    return cfg


def describe() -> str:
    return "\n".join(f"  {k}: {v}" for k, v in field_docs(FinetuneConfig).items())
