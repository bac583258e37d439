"""The trainer with mmBERT's knowledge: the shipped corpus, mmBERT's phase language sets and published token
counts, and eval's held-out loss, handed to the generic trainer as ``TrainerHooks`` (``train/hooks.py``).

Used by ``mmbert run`` (``run.py``), ``mmbert train`` and ``python -m mmbert.train``, so every config keeps
naming them (``data.builtin: udhr``, ``languages: {mmbert: P}``, ``sizes: mmbert``) while ``mmbert.train``
itself knows none of them.
"""

from __future__ import annotations

from pathlib import Path

from mmbert.corpus import export_corpus
from mmbert.corpus.languages import corpus_phase_languages, published_sizes
from mmbert.eval.heldout import heldout_mlm_loss
from mmbert.train import trainer
from mmbert.train.config import TrainConfig
from mmbert.train.hooks import TrainerHooks

BUILTIN_CORPORA = {"udhr": export_corpus}  # name in `data.builtin` -> exporter(directory)


def export_builtin(name: str, directory: Path) -> None:
    """Write the builtin corpus ``name`` (train/ + heldout/ JSONL, manifest.yaml) into ``directory``."""
    if name not in BUILTIN_CORPORA:
        raise ValueError(f"data.builtin: unknown builtin corpus {name!r} (known: {sorted(BUILTIN_CORPORA)})")
    BUILTIN_CORPORA[name](directory)


MMBERT = TrainerHooks(export_builtin=export_builtin, language_set=corpus_phase_languages,
                      published_sizes=published_sizes, heldout_loss=heldout_mlm_loss)


def train(config: TrainConfig | str | Path, run_dir: str | Path, resume: bool = False,
          overrides: list[str] | None = None) -> trainer.TrainResult:
    """``mmbert.train.train`` with the ``MMBERT`` hooks (same arguments, same result)."""
    return trainer.train(config, run_dir, resume, overrides, hooks=MMBERT)
