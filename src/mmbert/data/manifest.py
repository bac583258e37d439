"""Corpus manifest: which files hold which language.

Format (YAML; paths are relative to the manifest's folder; a source is a path/glob string or a dict)::

    languages:
      eng_Latn:
        - {path: train/eng_Latn.jsonl, text_field: text}
      fao_Latn:
        - train/fao/*.txt
      tir_Ethi:
        - {path: tir.parquet, text_column: text}
      deu_Latn:                              # pre-tokenized: MDS folders (index.json + shard.NNNNN.mds)
        - {path: mds/deu_Latn/*, special_ids: {bos: 2, eos: 1, mask: 4}}
      ita_Latn:
        - {path: ita.parquet, token_field: input_ids}   # a column of token ids: no tokenizer pass

Choices:
- Language codes are ``<ISO 639-3>_<ISO 15924 script>`` with an optional variant suffix
  (``eng_Latn_2``), checked against the embedded code lists in :mod:`mmbert.data.langcodes`; an
  unknown or malformed code, or an unknown key in a source dict, is an error naming the code/key and
  the manifest file (a typo must not silently drop a language).
- A missing path is *not* fatal: it is logged, recorded in ``Manifest.problems`` (reason
  ``missing_path``) and the language keeps its other sources; a language left with no files is
  dropped with a warning. Corpora are exported by other tools and a half-synced mirror should train
  on what is there.
- Folders expand recursively to the supported files they hold, sorted, except a folder written by
  ``datasets.Dataset.save_to_disk`` (it has ``state.json`` + ``dataset_info.json``), which is one
  Arrow source, and an MDS dataset folder (it has ``index.json``), which is one MDS source (its index
  may list shards of sub-folders; sub-folders that each have their own index are separate sources).
- Pre-tokenized sources: ``token_field`` names the token-id column/key of a JSONL/Parquet/Arrow source
  (a list of ints per record); such a source skips the tokenizer. An MDS source reads its
  ``input_ids`` column when it has one (else ``token_field``, else the ``text_field`` str column).
  ``special_ids`` (``{bos, eos, pad, mask, unk}`` -> id) declares the ids the data was tokenized with;
  the loader checks them against the run's tokenizer and stops with an error naming the source if they
  differ (a Gemma-tokenized corpus trained with another vocabulary is silently garbage otherwise).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmbert.data.langcodes import ISO_639_3, ISO_15924

log = logging.getLogger(__name__)

LANG_CODE = re.compile(r"^(?P<lang>[a-z]{3})_(?P<script>[A-Z][a-z]{3})(?:_(?P<variant>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*))?$")

# File kinds a source can be; "arrow" is a save_to_disk folder (or a single .arrow file).
FORMATS = ("txt", "jsonl", "jsonl.gz", "parquet", "arrow", "mds")
SPLITS = ("line", "paragraph")
SOURCE_KEYS = {"path", "text_field", "text_column", "split", "format", "token_field", "special_ids"}
SPECIAL_ROLES = ("bos", "eos", "pad", "mask", "unk")


class ManifestError(ValueError):
    """A manifest that cannot be used as written (bad code, unknown key, bad YAML)."""


@dataclass(frozen=True)
class SourceFile:
    """One readable file (or save_to_disk folder) of one language."""

    path: str  # absolute path
    format: str  # one of FORMATS
    text_field: str = "text"  # JSON key / parquet or arrow column holding the document text
    split: str = "line"  # txt only: one document per line, or blank-line separated paragraphs
    token_field: str | None = None  # column/key of token ids: the source is pre-tokenized (MDS: auto)
    special_ids: tuple[tuple[str, int], ...] = ()  # (role, id) the data was tokenized with, checked at load


@dataclass
class Manifest:
    """A parsed manifest: language -> files, plus the problems met while expanding it."""

    path: str  # absolute path of the YAML file
    languages: dict[str, list[SourceFile]]
    # (reason, file, detail) for every source that could not be used, e.g. a missing path.
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def root(self) -> str:
        return os.path.dirname(self.path)


def validate_language_code(code: str, where: str = "") -> str:
    """Return ``code`` if it is ``xxx_Scrp[_variant]`` with a known ISO 639-3 language and ISO 15924
    script; raise ManifestError naming it (and ``where``) otherwise."""
    suffix = f" in {where}" if where else ""
    m = LANG_CODE.match(code) if isinstance(code, str) else None
    if m is None:
        raise ManifestError(
            f"malformed language code {code!r}{suffix}: expected ISO 639-3 + script, e.g. 'eng_Latn' or 'eng_Latn_2'"
        )
    if m["lang"] not in ISO_639_3:
        raise ManifestError(f"unknown ISO 639-3 language {m['lang']!r} in code {code!r}{suffix}")
    if m["script"] not in ISO_15924:
        raise ManifestError(f"unknown ISO 15924 script {m['script']!r} in code {code!r}{suffix}")
    return code


def detect_format(path: str) -> str | None:
    """The format of a file or folder by its name/contents, or None if it is not a corpus file."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "index.json")):
            return "mds"
        if os.path.exists(os.path.join(path, "state.json")) and os.path.exists(os.path.join(path, "dataset_info.json")):
            return "arrow"
        return None
    name = path.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    for ext, fmt in ((".jsonl", "jsonl"), (".txt", "txt"), (".parquet", "parquet"), (".arrow", "arrow")):
        if name.endswith(ext):
            return fmt
    return None


def _expand(path: str) -> list[str]:
    """A path, folder or glob -> the corpus files/folders it names, sorted; [] if nothing matches."""
    matches = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else ([path] if os.path.exists(path) else [])
    out: list[str] = []
    for m in matches:
        if os.path.isdir(m) and detect_format(m) is None:
            found: list[str] = []
            for dirpath, dirnames, filenames in os.walk(m):
                dirnames.sort()
                for d in list(dirnames):
                    sub = os.path.join(dirpath, d)
                    if detect_format(sub) in ("arrow", "mds"):
                        found.append(sub)
                        dirnames.remove(d)  # a save_to_disk / MDS folder is one source; don't list its files
                found.extend(os.path.join(dirpath, f) for f in filenames if detect_format(os.path.join(dirpath, f)))
            out.extend(sorted(found))
        else:
            out.append(m)
    return out


def _parse_source(entry, lang: str, where: str) -> dict:
    if isinstance(entry, str):
        return {"path": entry}
    if not isinstance(entry, dict):
        raise ManifestError(f"source of {lang} in {where} must be a path string or a mapping, got {entry!r}")
    unknown = set(entry) - SOURCE_KEYS
    if unknown:
        raise ManifestError(
            f"unknown key(s) {sorted(unknown)} in a source of {lang} in {where}; allowed: {sorted(SOURCE_KEYS)}"
        )
    if "path" not in entry:
        raise ManifestError(f"a source of {lang} in {where} has no 'path'")
    if entry.get("split", "line") not in SPLITS:
        raise ManifestError(f"split {entry['split']!r} of {lang} in {where}: expected one of {SPLITS}")
    if entry.get("format") is not None and entry["format"] not in FORMATS:
        raise ManifestError(f"format {entry['format']!r} of {lang} in {where}: expected one of {FORMATS}")
    specials = entry.get("special_ids", {})
    if not isinstance(specials, dict) or set(specials) - set(SPECIAL_ROLES) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in specials.values()):
        raise ManifestError(f"special_ids of {lang} in {where} must map roles {SPECIAL_ROLES} to ids >= 0, got {specials!r}")
    return entry


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and validate a manifest; expand its paths/globs/folders to files.

    Raises ManifestError for bad YAML, malformed/unknown language codes and unknown source keys.
    Missing paths are logged and recorded in ``problems``, not raised (see the module docstring).
    """
    path = os.path.abspath(os.fspath(path))
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("languages"), dict):
        raise ManifestError(f"manifest {path} must be a mapping with a 'languages' mapping")
    unknown = set(raw) - {"languages"}
    if unknown:
        raise ManifestError(f"unknown top-level key(s) {sorted(unknown)} in manifest {path}")
    root = os.path.dirname(path)
    languages: dict[str, list[SourceFile]] = {}
    problems: list[tuple[str, str, str]] = []
    for lang, sources in raw["languages"].items():
        validate_language_code(lang, path)
        if isinstance(sources, (str, dict)):
            sources = [sources]
        if not isinstance(sources, list):
            raise ManifestError(f"sources of {lang} in {path} must be a list")
        files: list[SourceFile] = []
        for entry in sources:
            spec = _parse_source(entry, lang, path)
            pattern = os.path.join(root, os.path.expanduser(str(spec["path"])))
            matches = _expand(pattern)
            if not matches:
                msg = f"{lang}: source {spec['path']!r} of manifest {path} matches no file ({pattern}); skipped"
                log.warning(msg)
                problems.append(("missing_path", pattern, msg))
                continue
            text_field = spec.get("text_field", spec.get("text_column", "text"))
            for m in matches:
                fmt = spec.get("format") or detect_format(m)
                if fmt is None:
                    msg = f"{lang}: {m} (from manifest {path}) is not a .txt/.jsonl/.jsonl.gz/.parquet/.arrow file, save_to_disk or MDS folder; skipped"
                    log.warning(msg)
                    problems.append(("unsupported_file", m, msg))
                    continue
                files.append(SourceFile(os.path.abspath(m), fmt, text_field, spec.get("split", "line"), spec.get("token_field"),
                                        tuple(sorted(spec.get("special_ids", {}).items()))))
        if not files:
            log.warning("%s: no usable source in manifest %s; language dropped", lang, path)
            continue
        languages[lang] = files
    return Manifest(path, languages, problems)
