"""Where a stage's batches come from: the corpus pipeline (``mmbert.data``) or synthetic documents.

Choices:
- The trainer sees one interface: an iterator of batches in the data pipeline's format (flat
  ``input_ids``/``labels``/``cu_seqlens``/``position_ids``, ``languages`` per row, ``num_tokens``) with
  ``state_dict()`` / ``load_state_dict()`` / ``close()``. ``mmbert.data.build_loader`` is one; the
  synthetic source below is the other.
- The synthetic source (benchmarks, parallelism and resume tests) makes random documents with a
  learnable per-language pattern (token j+1 = token j + step of the language, mod the vocabulary) and
  masks them with the pipeline's ``mask_tokens``. A micro-batch is a pure function of
  (seed, global micro-batch index) with index = local count * world_size + rank, so one process with
  gradient accumulation k sees exactly the micro-batches that k processes see in one step: the
  1-process and N-process loss trajectories can be compared.
"""

from __future__ import annotations

import dataclasses

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmbert.data.masking import mask_tokens
from mmbert.data.packing import assemble_batch
from mmbert.data.sampling import language_probabilities, rng_for, torch_seed_for
from mmbert.train.config import TrainConfig
from mmbert.train.hooks import TrainerHooks
from mmbert.train.parallel import World, barrier

log = logging.getLogger(__name__)

SYNTHETIC_SPECIALS = (0, 1, 2, 3, 4)  # pad, eos, bos, unk, mask: the tokenizer's layout
SYNTHETIC_MASK_ID = 4


@dataclass
class Corpus:
    """The training text of a run: where it is and how big each language is."""

    manifest: Path | None  # None for synthetic data
    heldout_dir: Path | None  # folder of <lang>.jsonl held-out files, if any
    sizes: dict[str, int]  # language -> bytes (synthetic: nominal sizes)


def prepare_corpus(cfg: TrainConfig, run_dir: Path, world: World, hooks: TrainerHooks = TrainerHooks(),
                   manifest: str | None = None) -> Corpus:
    """Export the builtin corpus (``hooks.export_builtin``; rank 0, once), and measure language sizes (cached
    beside the manifest). ``manifest`` (a phase's own) replaces ``data.manifest`` / ``data.builtin``."""
    d = cfg.data
    if manifest is not None:
        d = dataclasses.replace(d, builtin=None, manifest=manifest, synthetic=False)
    if d.synthetic:
        sizes = {f"syn_{i:03d}": 1000 * 2**i for i in range(d.synthetic_languages)}
        return Corpus(None, None, sizes)
    from mmbert.data import load_manifest
    from mmbert.data.sizes import measure_sizes

    if d.builtin is not None:
        manifest = run_dir / "corpus" / "manifest.yaml"
        export = hooks.need("export_builtin", f"data.builtin: {d.builtin}")
        if world.is_main and not manifest.is_file():
            export(d.builtin, run_dir / "corpus")
        barrier()
    else:
        manifest = Path(d.manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"corpus manifest not found: {manifest}")
    m = load_manifest(manifest)
    if world.is_main:  # measure (and write the cache) once; the other ranks read it
        measure_sizes(m)
    barrier()
    sizes = {k: v["bytes"] for k, v in measure_sizes(m).items() if v["bytes"]}
    heldout = Path(d.heldout_dir) if d.heldout_dir else manifest.parent / "heldout"
    return Corpus(manifest, heldout if heldout.is_dir() else None, sizes)


def load_heldout_texts(directory: str | Path, languages: list[str] | None = None) -> dict[str, list[str]]:
    """``{lang: [text, ...]}`` from ``directory/<lang>.jsonl`` (the corpus exporter's ``heldout/``)."""
    directory = Path(directory)
    out: dict[str, list[str]] = {}
    for f in sorted(directory.glob("*.jsonl")):
        lang = f.name[: -len(".jsonl")]
        if languages is not None and lang not in languages:
            continue
        with open(f, encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        if texts:
            out[lang] = texts
    return out


def build_source(corpus: Corpus, tokenizer, *, languages: list[str], sizes: dict[str, int], tau: float,
                 mask_ratio: float, seq_len: int, rows: int, seed: int, world: World, num_workers: int,
                 vocab_size: int, state: dict | None = None, groups: dict | None = None):
    """The batch iterator of this rank for one stage (``groups``: fixed sampling shares, ``data.sampling``)."""
    if corpus.manifest is None:
        return SyntheticSource(languages, sizes, tau, mask_ratio, seq_len, rows, seed, world.rank, world.world_size,
                               vocab_size, state, groups)
    from mmbert.data import PhaseData, build_loader

    phase = PhaseData(languages=list(languages), tau=tau, mask_ratio=mask_ratio, seq_len=seq_len, batch_rows=rows,
                      seed=seed, groups=groups or None)
    return build_loader(corpus.manifest, tokenizer, phase, rank=world.rank, world_size=world.world_size,
                        num_workers=num_workers, state=state, sizes=sizes)


class SyntheticSource:
    """Random documents with a per-language pattern; see the module docstring."""

    def __init__(self, languages: list[str], sizes: dict[str, int], tau: float, mask_ratio: float, seq_len: int,
                 rows: int, seed: int, rank: int, world_size: int, vocab_size: int, state: dict | None = None,
                 groups: dict | None = None):
        if vocab_size <= len(SYNTHETIC_SPECIALS) + 1:
            raise ValueError(f"synthetic data needs a vocabulary larger than {len(SYNTHETIC_SPECIALS) + 1}")
        self.languages = list(languages)
        self.probs = language_probabilities({k: sizes[k] for k in self.languages}, tau, groups or None)
        self.mask_ratio, self.seq_len, self.rows, self.seed = mask_ratio, seq_len, rows, seed
        self.rank, self.world_size, self.vocab_size = rank, world_size, vocab_size
        self.count = 0
        if state is not None:
            self.load_state_dict(state)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        index = self.count * self.world_size + self.rank
        self.count += 1
        return self.batch(index)

    def batch(self, index: int) -> dict:
        rng = rng_for(self.seed, index, 0x5EED)
        names = list(self.probs)
        p = np.array([self.probs[k] for k in names])
        langs = [names[i] for i in rng.choice(len(names), size=self.rows, p=p / p.sum())]
        n_ordinary = self.vocab_size - len(SYNTHETIC_SPECIALS)
        rows = []
        for lang in langs:
            step = 1 + self.languages.index(lang)
            pieces, left = [], self.seq_len
            while left > 0:
                n = min(left, int(rng.integers(8, self.seq_len + 1)))
                start = int(rng.integers(0, n_ordinary))
                pieces.append(len(SYNTHETIC_SPECIALS) + (start + step * np.arange(n)) % n_ordinary)
                left -= n
            rows.append(pieces)
        batch = assemble_batch(rows, langs)
        gen = torch.Generator().manual_seed(torch_seed_for(self.seed, index, 0x3A5C))
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], self.mask_ratio, SYNTHETIC_MASK_ID,
                                                          self.vocab_size, SYNTHETIC_SPECIALS, gen)
        return batch

    def state_dict(self) -> dict:
        return {"synthetic": True, "count": self.count, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size") != self.world_size or state.get("rank") != self.rank:
            raise ValueError(f"synthetic data state of rank {state.get('rank')}/{state.get('world_size')} "
                             f"cannot resume rank {self.rank}/{self.world_size}")
        self.count = int(state["count"])

    def close(self) -> None:
        pass
