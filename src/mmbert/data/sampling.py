"""Language sampling (p ∝ n^τ) and the deterministic sharding of a language over workers.

Choices:
- Temperature sampling as in XLM-R / mmBERT (arXiv:2509.06888, "annealed language learning"): over the
  languages active in a phase, p_i = n_i^τ / Σ_j n_j^τ; τ = 1 follows the data, τ = 0 is exactly
  uniform. mmBERT anneals τ 0.7 → 0.5 → 0.3 while adding languages (60 → 110 → 1833).
- Groups (``mmbert adapt``: new languages vs a replay share of the old ones): each group g gets a fixed
  share s_g of the rows, and p ∝ n^τ holds within it: p_i = s_g · n_i^τ / Σ_{j∈g} n_j^τ. Without groups
  this is the plain formula (one group, share 1).
- The pipeline draws one language per packed *row*, so the token share of a language is p_i exactly
  (drawing documents would skew it toward languages with long documents).
- All randomness is derived from counters (seed, language, epoch, worker, batch index) through
  ``numpy.random.SeedSequence``, never from a running generator, so the state to checkpoint is a few
  integers and any position can be reproduced without replaying what came before.
- Sharding: in each epoch of a language, its shards are permuted (the same permutation on every worker)
  and dealt round-robin to the ``G = world_size * num_workers`` global workers. A language with fewer
  shards than workers has each shard read by several workers, each keeping every m-th document, so the
  workers' documents are still disjoint and cover the epoch.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


def language_probabilities(sizes: dict[str, int], tau: float,
                           groups: dict[str, dict] | None = None) -> dict[str, float]:
    """p_i ∝ n_i^τ over ``sizes`` (language -> bytes or tokens); τ = 0 gives exactly uniform.

    ``groups`` ({name: {"share": s, "languages": [ids]}}) fix each group's total probability to its share
    (shares are normalised to sum to 1) with p ∝ n^τ inside the group. Every language of ``sizes`` must be
    in exactly one group; group members absent from ``sizes`` (no text) are ignored, but a group left with
    no member is an error: its share could not be drawn."""
    if groups:
        return _grouped_probabilities(sizes, tau, groups)
    if not sizes:
        raise ValueError("language_probabilities needs at least one language")
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    bad = {k: v for k, v in sizes.items() if not v > 0}
    if bad:
        raise ValueError(f"languages with no data cannot be sampled: {bad}")
    if tau == 0:
        return {k: 1.0 / len(sizes) for k in sizes}
    # In log space: n^τ overflows float64 for n ~ 1e12 and τ ~ 30.
    logits = np.array([tau * math.log(v) for v in sizes.values()], dtype=np.float64)
    w = np.exp(logits - logits.max())
    p = w / w.sum()
    return {k: float(x) for k, x in zip(sizes, p)}


def _grouped_probabilities(sizes: dict[str, int], tau: float, groups: dict[str, dict]) -> dict[str, float]:
    owner: dict[str, str] = {}
    for name, g in groups.items():
        share = g.get("share") if isinstance(g, dict) else None
        if not isinstance(share, (int, float)) or not share > 0 or not math.isfinite(share):
            raise ValueError(f"sampling group {name!r}: share must be a number > 0, got {share!r}")
        for lang in g.get("languages") or []:
            if lang in owner:
                raise ValueError(f"language {lang!r} is in sampling groups {owner[lang]!r} and {name!r}")
            owner[lang] = name
    outside = sorted(set(sizes) - set(owner))
    if outside:
        raise ValueError(f"languages in no sampling group: {outside}")
    total = sum(float(g["share"]) for g in groups.values())
    out: dict[str, float] = {}
    for name, g in groups.items():
        members = {k: sizes[k] for k in g["languages"] if k in sizes}
        if not members:
            raise ValueError(f"sampling group {name!r} has no language with data (listed: {g['languages']})")
        inner = language_probabilities(members, tau)
        out.update({k: float(g["share"]) / total * p for k, p in inner.items()})
    return {k: out[k] for k in sizes}


def draw_languages(probs: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` i.i.d. language draws with probabilities ``probs`` (order of ``probs`` fixes the mapping)."""
    names = list(probs)
    p = np.array([probs[k] for k in names], dtype=np.float64)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def lang_key(lang: str) -> int:
    """A stable 32-bit integer for a language code (``hash()`` is salted per process)."""
    return zlib.crc32(lang.encode("utf-8"))


def rng_for(*key: int) -> np.random.Generator:
    """A generator that is a pure function of integer ``key`` (seed, worker, counters...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def torch_seed_for(*key: int) -> int:
    """A 63-bit torch seed that is a pure function of ``key``."""
    a, b = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


def epoch_shard_order(num_shards: int, seed: int, lang: str, epoch: int) -> list[int]:
    """The permutation of a language's shards for one epoch (identical on every worker)."""
    return [int(i) for i in rng_for(seed, lang_key(lang), epoch, 0x5A4D).permutation(num_shards)]


def assign_shards(order: list[int], num_workers_global: int, worker: int) -> list[tuple[int, int, int]]:
    """The slice of one epoch that global ``worker`` reads: a list of (shard, modulus, residue),
    meaning "read this shard, keep documents whose index i within it has i % modulus == residue".

    With S >= G shards, worker g gets order[g], order[g+G], ... whole (modulus 1). With S < G, shard
    order[g % S] is shared by the m workers g' ≡ g (mod S), which split its documents m ways. Over all
    workers the assignments partition the epoch's documents.
    """
    S, G, g = len(order), num_workers_global, worker
    if not 0 <= g < G:
        raise ValueError(f"worker {g} out of range for {G} workers")
    if S == 0:
        return []
    if S >= G:
        return [(order[i], 1, 0) for i in range(g, S, G)]
    s = g % S
    m = len(range(s, G, S))  # workers sharing shard position s
    return [(order[s], m, g // S)]


def window_permutation(n: int, seed: int, lang: str, epoch: int, shard: int, doc_index: int) -> list[int]:
    """Order in which a window of ``n`` documents (starting at document ``doc_index`` of ``shard``) is
    consumed: a local shuffle that is reproducible from the window's position alone."""
    return [int(i) for i in rng_for(seed, lang_key(lang), epoch, shard, doc_index, 0x57).permutation(n)]
