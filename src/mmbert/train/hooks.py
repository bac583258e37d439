"""What the trainer asks of the layers above it, so that it runs unchanged on any corpus.

The trainer knows manifests, language ids and measured sizes. It does not know the shipped corpus, mmBERT's
phase language sets and published token counts, or how held-out text is scored (an evaluation, ``eval``).
A config may still name them (``data.builtin: udhr``, ``languages: {mmbert: pretrain}``, ``sizes: mmbert``):
the caller passes the functions that resolve the names. ``mmbert.recipe.training.MMBERT`` wires the shipped
corpus, mmBERT's tables and ``eval.heldout``; ``mmbert train`` and ``python -m mmbert.train`` use it.
A config that names something no hook resolves is an error naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class TrainerHooks:
    # (builtin name, directory): write the corpus's manifest.yaml (and heldout/) into directory
    export_builtin: Callable[[str, Path], Any] | None = None
    # (set name, corpus language ids) -> the ids in that named set, sorted
    language_set: Callable[[str, list[str]], list[str]] | None = None
    # (corpus language ids, table column) -> published n_i per id; 0 where none is published
    published_sizes: Callable[[list[str], str], dict[str, int]] | None = None
    # eval.heldout.heldout_mlm_loss's signature; None: no held-out evaluation
    heldout_loss: Callable[..., dict[str, float]] | None = None

    def need(self, name: str, what: str):
        """The hook ``name``, or a ValueError saying that ``what`` needs it."""
        hook = getattr(self, name)
        if hook is None:
            raise ValueError(f"{what} needs the trainer hook {name!r}, which this caller did not pass; "
                             "train through `mmbert train` or mmbert.recipe.training.train, which resolve "
                             "the shipped corpus and mmBERT's tables")
        return hook
