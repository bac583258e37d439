"""The per-phase MLM data loader: manifest -> sampled, tokenized, packed, masked batches, resumable.

Architecture (one process per data-parallel rank, ``num_workers`` DataLoader workers each):
- The main process parses the manifest, measures (or reads cached) language sizes, computes
  p ∝ n^τ and cuts every active language into shards. That plan is handed to the workers.
- Each worker is one *global worker* g = rank * W + w of G = world_size * W. It owns, per language,
  a :class:`LanguageStream`: its slice of the language's shards for the current epoch (sampling.py),
  a window of ``shuffle_window`` documents read lazily, tokenized in one ``encode_batch`` call and
  locally shuffled, and the token offset into the document being packed. A stream that reaches the
  end of its slice starts the next epoch of that language with a new shard order; epochs are counted.
- Each worker builds whole batches: draws ``batch_rows`` languages (p), fills each row with
  ``seq_len`` tokens from that language's stream, assembles the flat batch (packing.py) and masks it
  (masking.py). All randomness is a function of (seed, g, batch index, language, epoch, position).
- Every batch travels with its worker's state *after* that batch. The main-process iterator keeps the
  latest state per worker and which worker is next; DataLoader serves workers round-robin, so on
  resume the workers are rotated to start with the one that was next. Restoring therefore continues
  exactly the uninterrupted sequence of batches, with any ``num_workers`` >= 0 (the same as saved).

Pre-tokenized records (MDS token columns, ``token_field`` sources) skip the tokenizer: a window holds
records, each cut at <bos>/<eos> into documents (packing.split_documents), so an 8,192-token chunk
feeds ``seq_len`` rows like any long document. ``build_loader`` first checks the run's tokenizer
against the data (``check_pretokenized``); a later record with an id beyond the vocabulary is skipped
and counted (``token_out_of_range``).

Document text never enters the state: a stream's position is (epoch, slot, reader cursor at the
window start, document index, documents taken from the window, token offset); on resume the window
is re-read and re-tokenized (its bad records are not counted twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmbert.data.manifest import Manifest, load_manifest
from mmbert.data.masking import mask_tokens
from mmbert.data.packing import assemble_batch, split_documents
from mmbert.data.sampling import (
    assign_shards,
    draw_languages,
    epoch_shard_order,
    language_probabilities,
    rng_for,
    torch_seed_for,
    window_permutation,
)
from mmbert.data.sizes import measure_sizes
from mmbert.data.sources import DataErrors, ReadOptions, Shard, plan_shards, read_shard

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class PhaseData:
    """What the data of one training phase looks like (mmBERT anneals all of these across phases)."""

    languages: list[str] | str = "all"  # language codes active in this phase, or "all" in the manifest
    tau: float = 0.7  # sampling temperature: p_i ∝ n_i^tau (1 = proportional, 0 = uniform)
    mask_ratio: float = 0.3  # fraction of non-special tokens predicted (mmBERT: 0.30 → 0.15 → 0.05)
    seq_len: int = 1024  # tokens per packed row
    batch_rows: int = 8  # rows per batch per rank: a batch has batch_rows * seq_len tokens
    seed: int = 0  # root of every random choice of the phase
    size_unit: str = "bytes"  # n_i for sampling: "bytes" of text or "tokens" (needs a tokenization pass)
    shuffle_window: int = 64  # documents read, tokenized and shuffled together per language and worker
    groups: dict | None = None  # {name: {share, languages}}: fixed share per group, p ∝ n^tau inside (sampling.py)

    def __post_init__(self) -> None:
        if not (isinstance(self.languages, list) or self.languages == "all"):
            raise ValueError(f"PhaseData.languages must be a list of codes or 'all', got {self.languages!r}")
        if self.tau < 0:
            raise ValueError(f"PhaseData.tau must be >= 0, got {self.tau}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"PhaseData.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.seq_len < 2 or self.batch_rows < 1 or self.shuffle_window < 1:
            raise ValueError(f"PhaseData needs seq_len >= 2, batch_rows >= 1, shuffle_window >= 1: {self}")
        if self.size_unit not in ("bytes", "tokens"):
            raise ValueError(f"PhaseData.size_unit must be 'bytes' or 'tokens', got {self.size_unit!r}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "PhaseData":
        """From a config mapping (e.g. a YAML phase); an unknown key is an error naming it and ``where``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown PhaseData key(s) {unknown}{' in ' + where if where else ''}; allowed: {sorted(names)}")
        return cls(**d)


@dataclass
class _Plan:
    """Everything a worker needs; built once in the main process, inherited/pickled by workers."""

    phase: PhaseData
    probs: dict[str, float]
    shards: dict[str, list[Shard]]
    tokenizer: Any
    opts: ReadOptions
    rank: int
    world_size: int
    num_workers: int  # as given to the DataLoader (0: batches are built in the main process)

    @property
    def workers_per_rank(self) -> int:
        return max(1, self.num_workers)


class LanguageStream:
    """One language's token stream for one global worker (see the module docstring)."""

    def __init__(self, lang: str, plan: _Plan, worker: int, errors: DataErrors, state: dict | None = None):
        self.lang, self.plan, self.worker, self.errors = lang, plan, worker, errors
        self.shards = plan.shards[lang]
        self.st = {"epoch": 0, "slot": 0, "cursor": None, "doc_index": 0, "taken": 0, "offset": 0,
                   "fallback": False, "epoch_docs": 0, "docs": 0, "tokens": 0}
        if state is not None:
            self.st.update(state)
        self._replay = state is not None  # the first window after a restore was already counted
        self._window: list[np.ndarray] | None = None
        self._window_end: tuple[Any, int, bool] | None = None
        self._assignment_epoch = -1
        self._assignment: list[tuple[int, int, int]] = []

    def state_dict(self) -> dict:
        return dict(self.st)

    def take(self, n: int) -> list[np.ndarray]:
        """The next ``n`` tokens as a list of document pieces (a piece ends where its document ends)."""
        out, st = [], self.st
        st["tokens"] += n
        while n > 0:
            doc = self._current()
            k = min(len(doc) - st["offset"], n)
            out.append(doc[st["offset"] : st["offset"] + k])
            n -= k
            st["offset"] += k
            if st["offset"] == len(doc):
                st["taken"], st["offset"], st["docs"] = st["taken"] + 1, 0, st["docs"] + 1
        return out

    def _current(self) -> np.ndarray:
        while True:
            if self._window is None:
                self._load_window()
            if self.st["taken"] < len(self._window):
                return self._window[self.st["taken"]]
            cursor, doc_index, shard_done = self._window_end
            self._window = None
            if shard_done:
                self.st.update(slot=self.st["slot"] + 1, cursor=None, doc_index=0)
            else:
                self.st.update(cursor=cursor, doc_index=doc_index)
            self.st.update(taken=0, offset=0)

    def _slice(self) -> list[tuple[int, int, int]]:
        st = self.st
        if self._assignment_epoch != st["epoch"]:
            order = epoch_shard_order(len(self.shards), self.plan.phase.seed, self.lang, st["epoch"])
            G = self.plan.world_size * self.plan.workers_per_rank
            self._assignment = [(s, 1, 0) for s in order] if st["fallback"] else assign_shards(order, G, self.worker)
            self._assignment_epoch = st["epoch"]
        return self._assignment

    def _load_window(self) -> None:
        st, phase = self.st, self.plan.phase
        while True:
            assignment = self._slice()
            if st["slot"] >= len(assignment):
                self._end_epoch()
                continue
            shard_idx, modulus, residue = assignment[st["slot"]]
            # Each bad record is reported once: in epoch 0, by the one worker whose slice holds it (a
            # shared shard's residue-0 worker); a replayed window was reported before the checkpoint.
            quiet = self._replay or st["epoch"] > 0 or st["fallback"] or (modulus > 1 and residue != 0)
            sink = DataErrors(enabled=False) if quiet else self.errors
            texts, end_cursor, j, done = [], st["cursor"], st["doc_index"], True
            shard = self.shards[shard_idx]
            with contextlib.closing(read_shard(shard, st["cursor"], sink, self.plan.opts)) as docs:
                for text, cursor in docs:
                    if j % modulus == residue and (isinstance(text, str) or self._ids_fit(text, shard, cursor, sink)):
                        texts.append(text)
                    j, end_cursor = j + 1, cursor
                    if len(texts) == phase.shuffle_window:
                        done = False
                        break
            if not texts:
                st.update(slot=st["slot"] + 1, cursor=None, doc_index=0, taken=0, offset=0)
                self._replay = False
                continue
            if not self._replay:
                st["epoch_docs"] += len(texts)
            self._replay = False
            ids = self._encode(texts)
            perm = window_permutation(len(ids), phase.seed, self.lang, st["epoch"], shard_idx, st["doc_index"])
            # Empty encodings would make zero-length pieces; dropping them keeps positions stable.
            # A pre-tokenized record (e.g. an 8,192-token MDS chunk) is cut back into its documents.
            tok = self.plan.tokenizer
            bos, eos = getattr(tok, "bos_id", None), getattr(tok, "eos_id", None)
            self._window = [d for i in perm for d in ([np.asarray(ids[i], dtype=np.int32)] if isinstance(texts[i], str)
                                                      else split_documents(ids[i].astype(np.int32), bos, eos)) if len(d)]
            self._window_end = (end_cursor, j, done)
            return

    def _encode(self, items: list) -> list:
        """Token ids of a window: texts tokenized in one batch, pre-tokenized records as they are."""
        texts = [x for x in items if isinstance(x, str)]
        if len(texts) == len(items):
            return self.plan.tokenizer.encode_batch(texts, add_special_tokens=True)
        encoded = iter(self.plan.tokenizer.encode_batch(texts, add_special_tokens=True) if texts else [])
        return [next(encoded) if isinstance(x, str) else x for x in items]

    def _ids_fit(self, ids: np.ndarray, shard: Shard, cursor, sink: DataErrors) -> bool:
        """A pre-tokenized record must fit the run's vocabulary; one that does not is skipped and counted
        (the first sample of every source was checked at build time, so this is damage, not a mismatch)."""
        vocab = self.plan.tokenizer.vocab_size
        if int(ids.max()) < vocab:
            return True
        sink.record("token_out_of_range", shard.file, f"{shard.describe()} before cursor {cursor}",
                    f"token id {int(ids.max())} >= vocabulary size {vocab}; record skipped")
        return False

    def _end_epoch(self) -> None:
        st = self.st
        if st["epoch_docs"] == 0:
            if st["fallback"]:
                raise RuntimeError(f"{self.lang}: no readable document in any of its {len(self.shards)} shards")
            # Fewer documents than workers: this worker's slice is empty. Read the whole language
            # rather than starve it (duplicates across workers are harmless for such a tiny language).
            log.warning("%s: worker %d has no documents in its slice; it reads the whole language", self.lang, self.worker)
            st["fallback"] = True
        else:
            if st["epoch"] == 0 and self.worker == 0:
                # once per language: a small language sampled often repeats its text many times, which
                # deserves a warning with the numbers, not one INFO line per epoch
                share = "the language" if self.plan.world_size * self.plan.workers_per_rank == 1 else "worker 0's share"
                log.warning("%s: all %d documents of %s read (sampling probability %.3f); its text repeats from "
                            "now on (further epochs are logged at DEBUG)", self.lang, st["epoch_docs"], share,
                            self.plan.probs.get(self.lang, float("nan")))
            else:
                log.debug("%s: worker %d finished epoch %d (%d documents); starting the next", self.lang,
                          self.worker, st["epoch"], st["epoch_docs"])
            st["epoch"] += 1
        st.update(slot=0, cursor=None, doc_index=0, taken=0, offset=0, epoch_docs=0)
        self._assignment_epoch = -1


class WorkerStream:
    """Builds the batches of one global worker."""

    def __init__(self, plan: _Plan, worker: int, state: dict | None = None):
        self.plan, self.worker = plan, worker
        self.errors = DataErrors(plan.opts.max_logged_per_file)
        self.batch_index = 0
        self._lang_states: dict[str, dict] = {}
        if state is not None:
            self.batch_index = state["batch_index"]
            self.errors.counts.update(state["counts"])
            self._lang_states = state["languages"]
        self.streams: dict[str, LanguageStream] = {}
        tok = plan.tokenizer
        self._mask_args = (tok.mask_id, tok.vocab_size, frozenset(tok.special_ids))

    def _stream(self, lang: str) -> LanguageStream:
        if lang not in self.streams:
            self.streams[lang] = LanguageStream(lang, self.plan, self.worker, self.errors, self._lang_states.get(lang))
        return self.streams[lang]

    def next_batch(self) -> dict:
        phase = self.plan.phase
        langs = draw_languages(self.plan.probs, phase.batch_rows, rng_for(phase.seed, self.worker, self.batch_index, 0xBA7C))
        rows = [self._stream(lang).take(phase.seq_len) for lang in langs]
        batch = assemble_batch(rows, langs)
        gen = torch.Generator().manual_seed(torch_seed_for(phase.seed, self.worker, self.batch_index, 0x3A5C))
        mask_id, vocab_size, specials = self._mask_args
        input_ids, labels = mask_tokens(batch["input_ids"], phase.mask_ratio, mask_id, vocab_size, specials, gen)
        self.batch_index += 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "cu_seqlens": batch["cu_seqlens"],
            "max_seqlen": batch["max_seqlen"],
            "position_ids": batch["position_ids"],
            "languages": batch["languages"],
            "num_tokens": batch["num_tokens"],
        }

    def state_dict(self) -> dict:
        languages = dict(self._lang_states)
        languages.update({k: s.state_dict() for k, s in self.streams.items()})
        return {"batch_index": self.batch_index, "counts": dict(self.errors.counts), "languages": languages}


class PackedMLMDataset(IterableDataset):
    """Infinite stream of ``(batch, {"worker", "state"})``; use with ``DataLoader(batch_size=None)``."""

    def __init__(self, plan: _Plan, worker_states: list[dict | None], first_worker: int = 0):
        self.plan, self.worker_states, self.first_worker = plan, worker_states, first_worker

    def __iter__(self):
        info = get_worker_info()
        n = self.plan.workers_per_rank
        if (info.num_workers if info else 0) != self.plan.num_workers:
            raise RuntimeError(f"dataset planned for {self.plan.num_workers} workers runs with {info.num_workers if info else 0}")
        logical = ((info.id if info else 0) + self.first_worker) % n
        stream = WorkerStream(self.plan, self.plan.rank * n + logical, self.worker_states[logical])
        while True:
            batch = stream.next_batch()
            yield batch, {"worker": logical, "state": stream.state_dict()}


def _worker_init(_: int) -> None:
    # Each worker is one tokenizer thread: the cores are shared with the training step and the other
    # workers, and it silences tokenizers' fork-after-parallelism warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class DataPipeline:
    """Iterator of batches for one rank and phase, with ``state_dict()`` / ``load_state_dict()`` / ``stats()``."""

    def __init__(self, plan: _Plan, problems: Counter, state: dict | None = None,
                 pin_memory: bool = False, prefetch_factor: int = 4):
        self.plan = plan
        self._problems = problems
        self._pin_memory, self._prefetch = pin_memory, prefetch_factor
        self._it = None
        self._loader = None
        n = plan.workers_per_rank
        self._worker_states: list[dict | None] = [None] * n
        self._next_worker = 0
        self._batches = 0
        if state is not None:
            self.load_state_dict(state)

    def _identity(self) -> dict:
        p = self.plan
        return {"phase": dataclasses.asdict(p.phase), "rank": p.rank, "world_size": p.world_size, "num_workers": p.num_workers}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            dataset = PackedMLMDataset(self.plan, list(self._worker_states), self._next_worker)
            extra = {"prefetch_factor": self._prefetch, "worker_init_fn": _worker_init} if self.plan.num_workers else {}
            self._loader = DataLoader(dataset, batch_size=None, num_workers=self.plan.num_workers,
                                      pin_memory=self._pin_memory, **extra)
            self._it = iter(self._loader)
        batch, meta = next(self._it)
        w = meta["worker"]
        self._worker_states[w] = meta["state"]
        self._next_worker = (w + 1) % self.plan.workers_per_rank
        self._batches += 1
        return batch

    def state_dict(self) -> dict:
        """JSON-serialisable position after the last batch returned."""
        return {"version": STATE_VERSION, **self._identity(), "next_worker": self._next_worker,
                "batches": self._batches, "workers": [None if s is None else _jsonable(s) for s in self._worker_states]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (of a pipeline with the same phase, rank, world size and workers)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} != {STATE_VERSION}")
        mine = self._identity()
        wrong = [k for k in mine if state.get(k) != mine[k]]
        if wrong:
            raise ValueError(f"data state does not match this pipeline in {wrong}: saved "
                             f"{ {k: state.get(k) for k in wrong} }, now { {k: mine[k] for k in wrong} }")
        self.close()
        self._worker_states = [None if s is None else _jsonable(s) for s in state["workers"]]
        self._next_worker = state["next_worker"]
        self._batches = state["batches"]

    def stats(self) -> dict:
        """Counters so far, summed over this rank's workers: skipped records by reason (each bad record
        once, however many epochs re-read it), split documents, manifest problems, and per language the
        documents and tokens packed, completed epochs (max over workers) and the number of workers
        whose slice was empty so that they read the whole language."""
        counts: Counter[str] = Counter(self._problems)
        langs: dict[str, dict] = {}
        for s in self._worker_states:
            if s is None:
                continue
            counts.update(s["counts"])
            for lang, ls in s["languages"].items():
                agg = langs.setdefault(lang, {"docs": 0, "tokens": 0, "epochs": 0, "whole_language_workers": 0})
                agg["docs"] += ls["docs"]
                agg["tokens"] += ls["tokens"]
                agg["epochs"] = max(agg["epochs"], ls["epoch"])
                agg["whole_language_workers"] += int(ls["fallback"])
        split = counts.pop("split_docs", 0)
        return {"batches": self._batches, "skipped": dict(counts), "split_docs": split, "languages": langs,
                "probabilities": dict(self.plan.probs)}

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it = self._loader = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _jsonable(state: dict) -> dict:
    """Deep copy through plain types (worker states arrive as nested dicts/lists of ints and strings)."""
    return json.loads(json.dumps(state))


def check_pretokenized(shards: dict[str, list[Shard]], tokenizer, options: ReadOptions = ReadOptions()) -> None:
    """Check the run's tokenizer against the pre-tokenized sources before training on them: the
    ``special_ids`` every source declares must be the tokenizer's, and the ids of the first readable
    record of each language's pre-tokenized data must be below its vocabulary size (one record per
    language keeps this cheap for thousands of MDS folders; every later record is checked as it is
    read). Raises ValueError naming the source otherwise."""
    for lang, lang_shards in shards.items():
        declared: set[str] = set()
        sampled = False
        for shard in lang_shards:
            src = shard.source
            if src.path not in declared:
                declared.add(src.path)
                for role, want in src.special_ids:
                    have = getattr(tokenizer, f"{role}_id", None)
                    if have != want:
                        raise ValueError(f"{lang}: source {src.path} was tokenized with {role} id {want}, the run's "
                                         f"tokenizer has {have}: train with the tokenizer the data was made with")
            if sampled or not (src.token_field or (shard.mds is not None and shard.mds.kind == "tokens")):
                continue
            with contextlib.closing(read_shard(shard, None, DataErrors(enabled=False), options)) as docs:
                first = next((d for d, _ in docs if not isinstance(d, str)), None)
            if first is None:
                continue  # unreadable or empty: the next shard is tried
            sampled = True
            if int(first.max()) >= tokenizer.vocab_size:
                raise ValueError(f"{lang}: source {src.path} ({shard.describe()}) holds token id {int(first.max())}, "
                                 f"not below the run's vocabulary size {tokenizer.vocab_size}: the data was tokenized "
                                 f"with another tokenizer")


def build_loader(manifest: str | os.PathLike | Manifest, tokenizer, phase: PhaseData, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, state: dict | None = None, *,
                 options: ReadOptions = ReadOptions(), sizes: dict[str, int] | None = None,
                 pin_memory: bool = False, prefetch_factor: int = 4) -> DataPipeline:
    """The batch iterator of one rank for one phase (see the package docstring for the batch format).

    ``sizes`` overrides the measured per-language sizes (language -> n for p ∝ n^τ); otherwise they
    are measured once and cached beside the manifest (in ``phase.size_unit``). ``tokenizer`` is any
    object with ``encode_batch(texts, add_special_tokens=True)``, ``mask_id``, ``vocab_size`` and
    ``special_ids``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    problems: Counter[str] = Counter(reason for reason, _, _ in m.problems)
    if phase.languages == "all":
        wanted = list(m.languages)
    else:
        missing = [lang for lang in phase.languages if lang not in m.languages]
        if missing:
            raise ValueError(f"phase languages {missing} have no usable source in manifest {m.path}")
        wanted = list(phase.languages)
    if sizes is None:
        measured = measure_sizes(m, tokenizer if phase.size_unit == "tokens" else None, options, wanted)
        sizes = {k: v[phase.size_unit] for k, v in measured.items()}
    plan_errors = DataErrors(options.max_logged_per_file)
    shards = {lang: plan_shards(m.languages[lang], options, plan_errors) for lang in wanted}
    problems.update(plan_errors.counts)
    empty = [lang for lang in wanted if not sizes.get(lang)]
    if empty:
        log.warning("languages with no readable text are left out of the phase: %s (manifest %s)", empty, m.path)
    active = [lang for lang in wanted if sizes.get(lang)]
    if not active:
        raise ValueError(f"no language of the phase has readable text in manifest {m.path}")
    probs = language_probabilities({lang: sizes[lang] for lang in active}, phase.tau, phase.groups)
    shards = {lang: shards[lang] for lang in active}
    no_shards = [lang for lang, s in shards.items() if not s]
    if no_shards:
        raise ValueError(f"languages {no_shards} have sizes but no readable shard in {m.path}; delete the stale {m.path} size cache")
    check_pretokenized(shards, tokenizer, options)
    plan = _Plan(phase, probs, shards, tokenizer, options, rank, world_size, num_workers)
    return DataPipeline(plan, problems, state, pin_memory, prefetch_factor)
