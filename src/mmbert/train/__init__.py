"""Phased MLM training: mmBERT's schedule (phases, decay variants), exact resume, DDP/FSDP2.

Modules: ``config`` (YAML -> dataclasses), ``schedule`` (LR and batch-size schedules, pure functions),
``optim`` (AdamW groups, clipping, precision), ``phases`` (stages, languages, sampling sizes),
``batches`` (corpus pipeline or synthetic batches), ``checkpoint`` (atomic training checkpoints),
``parallel`` (process group, ``parallelize()``), ``hooks`` (what the layers above resolve: builtin
corpus, named language sets, published sizes, held-out loss), ``metrics`` (JSONL / TensorBoard / progress
bar), ``trainer`` (the loop), ``entry`` (command line: an entry point, above the recipe layer).

    from mmbert.train import train                               # generic: manifest, explicit languages
    from mmbert.recipe.training import train                     # + shipped corpus, {mmbert: P}, held-out loss
    result = train("configs/train-tiny.yaml", "runs/tiny")      # TrainResult
    result.phase_checkpoints, result.variant_checkpoints         # name -> final checkpoint dir
"""

from mmbert.train.config import ConfigError, TrainConfig, load_config
from mmbert.train.hooks import TrainerHooks
from mmbert.train.trainer import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainerHooks", "load_config", "train"]
