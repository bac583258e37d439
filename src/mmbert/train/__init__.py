"""Phased MLM training: mmBERT's schedule (phases, decay variants), exact resume, DDP/FSDP2.

Modules: ``config`` (YAML -> dataclasses), ``schedule`` (LR and batch-size schedules, pure functions),
``optim`` (AdamW groups, clipping, precision), ``phases`` (stages, languages, sampling sizes),
``batches`` (corpus pipeline or synthetic batches), ``checkpoint`` (atomic training checkpoints),
``parallel`` (process group, ``parallelize()``), ``heldout`` (per-language held-out MLM loss),
``metrics`` (JSONL / TensorBoard / progress bar), ``trainer`` (the loop), ``entry`` (command line).

    from mmbert.train import load_config, train
    result = train("configs/train-tiny.yaml", "runs/tiny")      # TrainResult
    result.phase_checkpoints, result.variant_checkpoints         # name -> final checkpoint dir
"""

from mmbert.train.config import ConfigError, TrainConfig, load_config
from mmbert.train.heldout import heldout_mlm_loss, load_heldout_texts
from mmbert.train.trainer import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "heldout_mlm_loss", "load_config", "load_heldout_texts",
           "train"]
