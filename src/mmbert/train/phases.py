"""From the config's phases to the stages the trainer runs: directories, languages, sampling sizes, RoPE.

Choices:
- A *stage* is one phase, or one decay variant of the last phase. Stages run in order; each starts
  from the final checkpoint of its *parent* (the previous phase; for every variant the same one), so
  variants are independent runs from one starting point, as mmBERT's decay variants are.
- Directories: ``RUN/<phase>/`` for a phase, ``RUN/<phase>/<variant>/`` for a variant; each holds
  ``checkpoints/step-NNNNNNNN/`` and, once the stage is done, ``final/``.
- Languages: ``all`` | an explicit list | ``{top: K}`` (the K largest in the corpus) | ``{except: [ids]}``
  (every other corpus language) | ``{mmbert: P}``
  (mmBERT's published language set of phase P intersected with the corpus). Sizes for p ∝ n^τ: the
  corpus' measured bytes, or mmBERT's published token counts of a phase (``sizes: mmbert``), split
  evenly among the corpus versions of one language (``cmn_Hans`` / ``cmn_Hant``); a language the table
  lacks gets the smallest published count of the phase, so it is sampled, rarely. mmBERT's sets and
  counts are not known here: ``TrainerHooks`` (``hooks.py``) brings them from the layer above.
- RoPE thetas carry forward: a phase that does not set them keeps the previous phase's values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mmbert.train.config import PhaseConfig, TrainConfig, variant_phase
from mmbert.train.hooks import TrainerHooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    index: int  # position in the run order
    phase_index: int  # index of the config phase it trains
    phase: PhaseConfig  # the phase (a variant's fields merged in)
    variant: str | None  # decay variant name, None for a plain phase
    dir: Path  # RUN/<phase>[/<variant>]
    parent: Path | None  # the stage dir whose final checkpoint starts this one (None: the initial model)
    global_rope_theta: float  # effective thetas in this stage
    local_rope_theta: float

    @property
    def label(self) -> str:
        return f"{self.phase_index}:{self.phase.name}" + (f"/{self.variant}" if self.variant else "")

    @property
    def final(self) -> Path:
        return self.dir / "final"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"


def plan_stages(cfg: TrainConfig, run_dir: Path, global_theta: float, local_theta: float) -> list[Stage]:
    stages: list[Stage] = []
    parent: Path | None = None
    for i, phase in enumerate(cfg.phases):
        global_theta = phase.global_rope_theta if phase.global_rope_theta is not None else global_theta
        local_theta = phase.local_rope_theta if phase.local_rope_theta is not None else local_theta
        if not phase.variants:
            d = run_dir / phase.name
            stages.append(Stage(len(stages), i, phase, None, d, parent, global_theta, local_theta))
            parent = d
            continue
        for j, v in enumerate(phase.variants):
            vp = variant_phase(phase, v, "config", f"phases.{i}.variants.{j}")
            g = vp.global_rope_theta if vp.global_rope_theta is not None else global_theta
            loc = vp.local_rope_theta if vp.local_rope_theta is not None else local_theta
            stages.append(Stage(len(stages), i, vp, v["name"], run_dir / phase.name / v["name"], parent, g, loc))
    return stages


def resolve_languages(spec, corpus_sizes: dict[str, int], hooks: TrainerHooks = TrainerHooks()) -> list[str]:
    """The corpus language ids a phase trains (sorted), from its ``languages`` spec; a named set
    (``{mmbert: P}``) is resolved by ``hooks.language_set``."""
    available = sorted(corpus_sizes)
    if spec == "all":
        return available
    if isinstance(spec, list):
        missing = [x for x in spec if x not in corpus_sizes]
        if missing:
            raise ValueError(f"phase languages not in the corpus: {missing}")
        return sorted(spec)
    (kind, value), = spec.items()
    if kind == "except":
        return [k for k in available if k not in set(value)]
    if kind == "top":
        return sorted(sorted(available, key=lambda k: (-corpus_sizes[k], k))[:value])
    langs = hooks.need("language_set", f"languages: {{{kind}: {value}}}")(value, available)
    if not langs:
        raise ValueError(f"no corpus language is in mmBERT's {value!r} language set")
    return langs


def sampling_sizes(phase: PhaseConfig, languages: list[str], corpus_sizes: dict[str, int],
                   hooks: TrainerHooks = TrainerHooks()) -> dict[str, int]:
    """n_i for p ∝ n^τ over ``languages``; published counts (``sizes: mmbert``) come from
    ``hooks.published_sizes``."""
    if phase.sizes == "corpus":
        return {k: corpus_sizes[k] for k in languages}
    table_phase = phase.sizes_phase or phase.languages["mmbert"]
    sizes = dict(hooks.need("published_sizes", f"phase {phase.name!r} sizes: {phase.sizes}")(languages, table_phase))
    present = [v for v in sizes.values() if v > 0]
    absent = sorted(k for k, v in sizes.items() if v <= 0)
    if absent:
        if not present:
            raise ValueError(f"none of the phase's languages has a published mmBERT count in {table_phase!r}")
        log.info("%d languages have no published %s count; sampled at the smallest count: %s",
                 len(absent), table_phase, " ".join(absent[:20]) + (" ..." if len(absent) > 20 else ""))
        for k in absent:
            sizes[k] = min(present)
    return sizes
