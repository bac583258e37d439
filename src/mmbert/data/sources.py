"""Lazy, resumable readers for corpus files, cut into shards that data-parallel workers split.

Choices:
- A *shard* is the unit handed to a worker: a byte range (``block_bytes``) of a ``.txt`` (one document
  per line) or ``.jsonl`` file, a whole ``.jsonl.gz`` or paragraph-mode ``.txt`` file (neither can be
  entered mid-way cheaply: gzip cannot seek, paragraph starts need look-behind), one Parquet row group,
  or one Arrow file of a ``save_to_disk`` folder. A line belongs to the block in which it *starts*
  (Hadoop's rule), so blocks of one file partition its lines without coordination.
- Nothing is loaded whole: text is read line by line with a byte cap, Parquet batch by batch within a
  row group, Arrow through a memory map.
- Every document comes with a JSON-able *cursor*: the position just after it (record position plus
  the number of pieces of that record already emitted). ``read_shard(shard, cursor)`` continues from
  there, which is what makes resume exact without storing any text.
- Long documents are **split**, not truncated: a decoded text longer than ``max_doc_chars`` becomes
  several documents of at most that many characters, cut at a space where one is near the limit; a
  ``.txt`` line is read in chunks of ``4 * max_doc_chars`` bytes (cut at a UTF-8 boundary) so one
  enormous line never sits in memory. A JSONL line longer than ``max_record_bytes`` cannot be parsed
  in pieces and is skipped (drained in chunks) with a ``record_too_long`` count.
- Bad records (invalid UTF-8, malformed JSON, a missing/non-string text field, empty text) are
  skipped, counted by reason in a :class:`DataErrors` and logged with file and line (or byte offset
  for blocks that do not start a file, whose line numbers are unknown without a scan from the start;
  invalid UTF-8 is rare enough to pay that scan and is always reported with its line).
- A file that breaks mid-way (truncated or corrupt gzip — ``zlib.error`` included —, a corrupt Parquet
  row group or Arrow file) ends its shard with an ``unreadable_file`` warning that names the file and
  what is skipped: the rest of the file, or for Parquet the rest of that row group only.
- Pre-tokenized records (``SourceFile.token_field``, and MDS token columns) are yielded as 1-D int64
  arrays instead of text; the loader skips the tokenizer for them. A record whose ids are not a flat
  list of non-negative ints is skipped as ``bad_field``. An MDS shard (mds.py) is cut into ranges of
  samples of about ``block_bytes``; its cursor is the next sample index.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mmbert.data import mds
from mmbert.data.manifest import SourceFile

log = logging.getLogger(__name__)

Cursor = list  # JSON-able position; its layout belongs to the reader of the shard's format


@dataclass(frozen=True)
class ReadOptions:
    """Limits of the readers (not phase-dependent)."""

    block_bytes: int = 64 << 20  # byte range one .txt/.jsonl shard covers: enough shards for many workers
    max_doc_chars: int = 100_000  # longer documents are split into pieces of at most this many characters
    max_record_bytes: int = 16 << 20  # a longer JSONL line is skipped (it cannot be parsed piecewise)
    max_logged_per_file: int = 5  # warnings per (file, reason); further ones are only counted

    def __post_init__(self) -> None:
        if self.block_bytes < 1 or self.max_doc_chars < 1 or self.max_record_bytes < 1:
            raise ValueError(f"ReadOptions limits must be positive: {self}")


@dataclass(frozen=True)
class Shard:
    """A piece of one source file that one worker reads start to end."""

    source: SourceFile
    start: int = 0  # first byte (txt line mode, jsonl) or row-group index (parquet); 0 otherwise
    end: int = -1  # byte end, exclusive (txt line mode, jsonl); -1: to the end of the file
    path: str = ""  # the file read: the source's path, or one data file of a save_to_disk folder
    mds: mds.MDSShard | None = None  # the MDS shard (start/end: a sample range of it)

    @property
    def file(self) -> str:
        return self.path or self.source.path

    def describe(self) -> str:
        if self.mds is not None:
            return f"{self.mds.file} [samples {self.start}:{self.end}]"
        if self.source.format == "parquet":
            return f"{self.file} [row group {self.start}]"
        if self.end >= 0:
            return f"{self.file} [bytes {self.start}:{self.end}]"
        return self.file


class DataErrors:
    """Counts skipped/split records by reason and logs the first few per (file, reason).

    ``enabled=False`` makes a sink that neither counts nor logs: used when a window is re-read on
    resume (its problems were counted the first time) and by workers that share a shard but are not
    the one responsible for reporting it.
    """

    def __init__(self, max_logged_per_file: int = 5, enabled: bool = True):
        self.counts: Counter[str] = Counter()
        self.max_logged = max_logged_per_file
        self.enabled = enabled
        self._logged: Counter[tuple[str, str]] = Counter()

    def record(self, reason: str, file: str, where: str, detail: str, level: int = logging.WARNING) -> None:
        if not self.enabled:
            return
        self.counts[reason] += 1
        n = self._logged[(file, reason)]
        if n < self.max_logged:
            log.log(level, "%s: %s: %s", where, reason, detail)
        elif n == self.max_logged:
            log.log(level, "%s: further '%s' records in this file are counted, not logged", file, reason)
        self._logged[(file, reason)] += 1


def _where(file: str, line: int, pos: int) -> str:
    return f"{file}:{line}" if line > 0 else f"{file} (byte {pos})"


def _line_at(file: str, pos: int) -> int:
    """1-based line number of byte ``pos`` of a plain file (a scan from the start; only for error messages)."""
    n, left = 1, pos
    with open(file, "rb") as f:
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def _where_bad_utf8(file: str, line: int, pos: int, raw: bytes, bad: int, compressed: bool = False) -> str:
    """File and line of the invalid byte ``raw[bad]`` of a record that starts at byte ``pos``, ``line``."""
    if line <= 0 and not compressed:
        line = _line_at(file, pos)
    return _where(file, line + raw.count(b"\n", 0, bad) if line > 0 else line, pos)


def split_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, at the last space in the second
    half of each window when there is one (so words stay whole), else exactly at the limit."""
    if len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        cut = text.rfind(" ", start + max_chars // 2, start + max_chars)
        cut = cut + 1 if cut > start else start + max_chars
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [p for p in (q.strip() for q in pieces) if p]


def _utf8_boundary(raw: bytes) -> int:
    """Length of the longest prefix of ``raw`` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b & 0xC0 != 0x80:  # a lead (or ASCII) byte: does its sequence fit?
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            return len(raw) if need <= back else len(raw) - back
    return len(raw)


def _read_capped_line(f, cap: int, utf8_cut: bool) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of the current line: (bytes, line_complete). When the cap is hit and
    ``utf8_cut``, the chunk is cut back after its last space in the second half (so words stay whole),
    else to a UTF-8 boundary, and the file is rewound to the cut."""
    raw = f.readline(cap)
    if raw.endswith(b"\n") or len(raw) < cap:
        return raw, True  # a complete line, or the file's last line without a newline
    if utf8_cut:
        space = raw.rfind(b" ", len(raw) // 2)
        keep = space + 1 if space >= 0 else _utf8_boundary(raw)
        if 0 < keep < len(raw):
            f.seek(keep - len(raw), os.SEEK_CUR)
            raw = raw[:keep]
    return raw, False


def _line_start(f, start: int) -> int:
    """The first line start at or after byte ``start`` (a line belongs to the block it starts in)."""
    if start == 0:
        return 0
    f.seek(start - 1)
    if f.read(1) == b"\n":
        return start
    while True:  # skip the rest of a line started in the previous block, in bounded chunks
        chunk = f.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return f.tell()


def _read_txt_lines(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    # cursor: [pos, line (1-based, -1 unknown), midline (0/1), skip]
    cap = 4 * opts.max_doc_chars
    end = shard.end if shard.end >= 0 else math.inf
    with open(shard.file, "rb") as f:
        if cursor is None:
            pos, line, midline, skip = _line_start(f, shard.start), (1 if shard.start == 0 else -1), 0, 0
        else:
            pos, line, midline, skip = cursor
        f.seek(pos)
        while midline or pos < end:
            raw, complete = _read_capped_line(f, cap, utf8_cut=True)
            if not raw:
                return
            nxt = f.tell()
            nline = line + 1 if (complete and line > 0) else line
            if not complete and not midline and skip == 0:
                errors.record("split_docs", shard.file, _where(shard.file, line, pos),
                              f"line longer than {cap} bytes; split into documents", logging.INFO)
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                errors.record("invalid_utf8", shard.file, _where_bad_utf8(shard.file, line, pos, raw, e.start),
                              f"{e.reason} at byte {pos + e.start}; record skipped")
                text = ""
            nc = [nxt, nline, 0 if complete else 1, 0]
            if text:
                pieces = split_text(text, opts.max_doc_chars)
                for k in range(skip, len(pieces)):
                    yield pieces[k], (nc if k == len(pieces) - 1 else [pos, line, midline, k + 1])
            pos, line, midline, skip = nxt, nline, 0 if complete else 1, 0


def _read_txt_paragraphs(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    # cursor: [pos, line, in_para (0/1: continuing a paragraph split for length), skip]
    cap = 4 * opts.max_doc_chars
    with open(shard.file, "rb") as f:
        pos, line, in_para, skip = cursor if cursor is not None else (0, 1, 0, 0)
        f.seek(pos)
        buf: list[bytes] = []
        size = 0
        rec_pos, rec_line, rec_para = pos, line, in_para

        def flush(next_cursor):
            nonlocal buf, size, skip
            data, buf, size = b"".join(buf), [], 0
            first, skip = skip, 0  # only the record the cursor points into has pieces already emitted
            try:
                text = data.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                errors.record("invalid_utf8", shard.file, _where_bad_utf8(shard.file, rec_line, rec_pos, data, e.start),
                              f"{e.reason} at byte {rec_pos + e.start}; paragraph skipped")
                return
            if text:
                pieces = split_text(text, opts.max_doc_chars)
                for k in range(first, len(pieces)):
                    yield pieces[k], (next_cursor if k == len(pieces) - 1 else [rec_pos, rec_line, rec_para, k + 1])

        while True:
            raw, complete = _read_capped_line(f, cap, utf8_cut=True)
            nxt = f.tell()
            nline = line + 1 if complete and raw else line
            if not raw or (complete and not raw.strip()):
                if buf:
                    yield from flush([nxt, nline, 0, 0])
                if not raw:
                    return
                rec_pos, rec_line, rec_para = nxt, nline, 0
            else:
                buf.append(raw)
                size += len(raw)
                if size >= cap:  # paragraph too long: emit what we have; the rest continues it
                    errors.record("split_docs", shard.file, _where(shard.file, rec_line, rec_pos),
                                  f"paragraph longer than {cap} bytes; split into documents", logging.INFO)
                    yield from flush([nxt, nline, 1, 0])
                    rec_pos, rec_line, rec_para = nxt, nline, 1
            pos, line = nxt, nline


def _check_text(value, errors: DataErrors, file: str, where: str, field: str) -> str | None:
    if value is None:
        errors.record("missing_field", file, where, f"no text field {field!r} (or null); record skipped")
        return None
    if not isinstance(value, str):
        errors.record("bad_field", file, where, f"field {field!r} is {type(value).__name__}, not a string; record skipped")
        return None
    value = value.strip()
    if not value:
        errors.record("empty_text", file, where, f"field {field!r} is empty; record skipped")
        return None
    return value


def _check_ids(value, errors: DataErrors, file: str, where: str, field: str):
    """A record's token ids as a 1-D int64 array, or None (skipped and counted) if they are not ids."""
    if value is None:
        errors.record("missing_field", file, where, f"no token field {field!r} (or null); record skipped")
        return None
    try:
        ids = np.asarray(value)
    except (ValueError, TypeError):
        ids = np.asarray([], dtype=object)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or (ids.size and ids.min() < 0):
        errors.record("bad_field", file, where, f"field {field!r} is not a flat list of token ids >= 0; record skipped")
        return None
    if ids.size == 0:
        errors.record("empty_text", file, where, f"field {field!r} is empty; record skipped")
        return None
    return ids.astype(np.int64, copy=False)


def _read_jsonl(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    # cursor: [pos, line, skip]; pos is the decompressed offset for .jsonl.gz
    gz = shard.source.format == "jsonl.gz"
    field = shard.source.text_field
    tokens = shard.source.token_field
    end = shard.end if shard.end >= 0 else math.inf
    opener = (lambda p: gzip.open(p, "rb")) if gz else (lambda p: open(p, "rb"))
    with opener(shard.file) as f:
        if cursor is None:
            pos, line, skip = (0, 1, 0) if gz else (_line_start(f, shard.start), 1 if shard.start == 0 else -1, 0)
        else:
            pos, line, skip = cursor
        f.seek(pos)
        while pos < end:
            raw, complete = _read_capped_line(f, opts.max_record_bytes, utf8_cut=False)
            if not raw:
                return
            where = _where(shard.file, line, pos)
            if not complete:
                while not complete:  # drain the rest of the line without keeping it
                    rest, complete = _read_capped_line(f, 1 << 20, utf8_cut=False)
                    complete = complete or not rest
                errors.record("record_too_long", shard.file, where, f"JSON line longer than {opts.max_record_bytes} bytes; skipped")
                raw = b""
            nxt = f.tell()
            nline = line + 1 if line > 0 else line
            text = None
            if raw.strip():
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    errors.record("invalid_utf8", shard.file, _where_bad_utf8(shard.file, line, pos, raw, e.start, gz),
                                  f"{e.reason} at byte {pos + e.start}" + (" (decompressed)" if gz else "")
                                  + "; record skipped")
                except json.JSONDecodeError as e:
                    errors.record("malformed_json", shard.file, where, f"{e.msg} (column {e.colno}); record skipped")
                else:
                    if not isinstance(obj, dict):
                        errors.record("malformed_json", shard.file, where, f"a JSON {type(obj).__name__}, not an object; record skipped")
                    elif tokens:
                        ids = _check_ids(obj.get(tokens), errors, shard.file, where, tokens)
                        if ids is not None:
                            yield ids, [nxt, nline, 0]
                    else:
                        text = _check_text(obj.get(field), errors, shard.file, where, field)
            if text:
                pieces = split_text(text, opts.max_doc_chars)
                if len(pieces) > 1 and skip == 0:
                    errors.record("split_docs", shard.file, where, f"text longer than {opts.max_doc_chars} characters; split", logging.INFO)
                for k in range(skip, len(pieces)):
                    yield pieces[k], ([nxt, nline, 0] if k == len(pieces) - 1 else [pos, line, k + 1])
            pos, line, skip = nxt, nline, 0


def _texts_of_batch(batch, field: str):
    idx = batch.schema.get_field_index(field)
    return None if idx < 0 else batch.column(idx).to_pylist()


def _read_rows(batches, shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions, where_row):
    # cursor: [row, skip] within the shard
    row, skip = cursor if cursor is not None else (0, 0)
    field = shard.source.token_field or shard.source.text_field
    first = 0
    for batch in batches:
        n = batch.num_rows
        if first + n <= row:  # fast-forward whole batches on resume
            first += n
            continue
        texts = _texts_of_batch(batch, field)
        if texts is None:
            errors.record("missing_field", shard.file, shard.describe(), f"no column {field!r} (has {batch.schema.names}); file skipped")
            return
        for i in range(max(0, row - first), n):
            r = first + i
            if shard.source.token_field:
                ids = _check_ids(texts[i], errors, shard.file, where_row(r), field)
                if ids is not None:
                    yield ids, [r + 1, 0]
                continue
            text = _check_text(texts[i], errors, shard.file, where_row(r), field)
            if text:
                pieces = split_text(text, opts.max_doc_chars)
                if len(pieces) > 1 and (r != row or skip == 0):
                    errors.record("split_docs", shard.file, where_row(r), f"text longer than {opts.max_doc_chars} characters; split", logging.INFO)
                for k in range(skip if r == row else 0, len(pieces)):
                    yield pieces[k], ([r + 1, 0] if k == len(pieces) - 1 else [r, k + 1])
        first += n


def _read_parquet(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(shard.file)
    field = shard.source.token_field or shard.source.text_field
    if field not in pf.schema_arrow.names:
        errors.record("missing_field", shard.file, shard.describe(), f"no column {field!r} (has {pf.schema_arrow.names}); skipped")
        return
    batches = pf.iter_batches(batch_size=1024, row_groups=[shard.start], columns=[field])
    yield from _read_rows(batches, shard, cursor, errors, opts, lambda r: f"{shard.file} [row group {shard.start}, row {r}]")


def _arrow_batches(path: str):
    import pyarrow as pa

    with pa.memory_map(path, "r") as src:
        try:
            reader = pa.ipc.open_stream(src)  # what datasets' save_to_disk writes
            yield from reader
        except pa.ArrowInvalid:
            src.seek(0)
            reader = pa.ipc.open_file(src)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def _read_arrow(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    yield from _read_rows(_arrow_batches(shard.file), shard, cursor, errors, opts, lambda r: f"{shard.file} [row {r}]")


def _read_mds(shard: Shard, cursor: Cursor | None, errors: DataErrors, opts: ReadOptions):
    # cursor: [next sample, pieces of it already emitted (a text sample split for length)]
    info = shard.mds
    start, skip = cursor if cursor is not None else (shard.start, 0)
    field = info.column
    for i, value in mds.iter_samples(info, start, shard.end):
        where = f"{info.file} sample {i}"
        if info.kind == "tokens":
            ids = _check_ids(value, errors, info.file, where, field)
            if ids is not None:
                yield ids, [i + 1, 0]
            continue
        text = _check_text(value, errors, info.file, where, field)
        if text:
            pieces = split_text(text, opts.max_doc_chars)
            for k in range(skip if i == start else 0, len(pieces)):
                yield pieces[k], ([i + 1, 0] if k == len(pieces) - 1 else [i, k + 1])


def read_shard(shard: Shard, cursor: Cursor | None = None, errors: DataErrors | None = None,
               opts: ReadOptions = ReadOptions()) -> Iterator[tuple[str, Cursor]]:
    """Yield ``(text or token ids, cursor_after)`` for each document of ``shard``, from ``cursor`` (None: its start).

    A file that cannot be opened or decoded as its format is logged and counted as ``unreadable_file``
    and yields nothing more; the caller moves on to the next shard.
    """
    errors = errors if errors is not None else DataErrors(opts.max_logged_per_file)
    fmt, src = shard.source.format, shard.source
    if fmt == "txt":
        gen = (_read_txt_paragraphs if src.split == "paragraph" else _read_txt_lines)(shard, cursor, errors, opts)
    elif fmt in ("jsonl", "jsonl.gz"):
        gen = _read_jsonl(shard, cursor, errors, opts)
    elif fmt == "parquet":
        gen = _read_parquet(shard, cursor, errors, opts)
    elif fmt == "arrow":
        gen = _read_arrow(shard, cursor, errors, opts)
    elif fmt == "mds":
        gen = _read_mds(shard, cursor, errors, opts)
    else:
        raise ValueError(f"unknown format {fmt!r} of {src.path}")
    try:
        yield from gen
    except (OSError, EOFError, ValueError, zlib.error) as e:
        # truncated gzip (EOFError), corrupt deflate data (zlib.error), corrupt parquet/arrow (ArrowInvalid
        # is a ValueError), an I/O error of the disk
        rest = "rest of this row group skipped" if fmt == "parquet" else "rest of the file skipped"
        errors.record("unreadable_file", shard.file, shard.describe(), f"{type(e).__name__}: {e}; {rest}")


def _arrow_files(folder: str) -> list[str]:
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    return [os.path.join(folder, d["filename"]) for d in state.get("_data_files", [])]


def _plan_mds(src: SourceFile, opts: ReadOptions, errors: DataErrors) -> list[Shard]:
    out = []
    for info in mds.read_index(src.path, src.token_field, src.text_field):
        if info.samples == 0:
            errors.record("empty_file", info.raw, info.raw, "no samples; skipped")
            continue
        if not os.path.exists(info.raw) and not (info.zip and os.path.exists(info.zip)):
            errors.record("unreadable_file", info.raw, info.raw, f"listed in {info.index} but missing; skipped")
            continue
        n = max(1, min(info.samples, math.ceil(info.raw_bytes / opts.block_bytes)))
        bounds = [info.samples * k // n for k in range(n + 1)]
        out += [Shard(src, a, b, info.file, info) for a, b in zip(bounds[:-1], bounds[1:])]
    return out


def plan_shards(files: list[SourceFile], opts: ReadOptions = ReadOptions(), errors: DataErrors | None = None) -> list[Shard]:
    """Cut a language's files into shards (see the module docstring). Empty and unreadable files are
    logged and counted (``empty_file``, ``unreadable_file``) and left out."""
    errors = errors if errors is not None else DataErrors(opts.max_logged_per_file)
    shards: list[Shard] = []
    for src in files:
        try:
            if src.format == "mds":
                shards += _plan_mds(src, opts, errors)
                continue
            if src.format == "parquet":
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(src.path).metadata
                if meta.num_rows == 0:
                    errors.record("empty_file", src.path, src.path, "no rows; skipped")
                shards += [Shard(src, start=i) for i in range(meta.num_row_groups) if meta.row_group(i).num_rows > 0]
                continue
            paths = _arrow_files(src.path) if (src.format == "arrow" and os.path.isdir(src.path)) else [src.path]
            for p in paths:
                size = os.path.getsize(p)
                if size == 0:
                    errors.record("empty_file", p, p, "file is empty; skipped")
                elif src.format == "jsonl" or (src.format == "txt" and src.split == "line"):
                    n = math.ceil(size / opts.block_bytes)
                    shards += [Shard(src, i * opts.block_bytes, min(size, (i + 1) * opts.block_bytes), p) for i in range(n)]
                else:
                    shards.append(Shard(src, path=p))
        except mds.MDSRefused:
            raise  # a pickle column is not bad data to skip: the source must not be read at all
        except (OSError, ValueError, KeyError) as e:
            errors.record("unreadable_file", src.path, src.path, f"{type(e).__name__}: {e}; skipped")
    return shards


def file_fingerprint(files: list[SourceFile]) -> list:
    """(path, size, mtime_ns) of every file behind ``files``: a change invalidates cached sizes."""
    out = []
    for src in files:
        paths = [src.path]
        if src.format == "mds":
            paths = [os.path.join(src.path, mds.INDEX)]
        elif src.format == "arrow" and os.path.isdir(src.path):
            try:
                paths = _arrow_files(src.path)
            except (OSError, ValueError, KeyError):
                pass
        for p in paths:
            try:
                st = os.stat(p)
                out.append([p, st.st_size, st.st_mtime_ns, src.format, src.text_field, src.split])
            except OSError:
                out.append([p, -1, -1, src.format, src.text_field, src.split])
    return out


def iter_texts(files: list[SourceFile], opts: ReadOptions = ReadOptions(), max_chars: int | None = None) -> Iterator[str]:
    """The text documents of one language's source files, in file order (pre-tokenized records are skipped),
    stopping once ``max_chars`` characters were yielded. For callers that need raw text (tokenizer training)."""
    total = 0
    for shard in plan_shards(files, opts):
        for text, _ in read_shard(shard, None, None, opts):
            if not isinstance(text, str):
                continue
            yield text
            total += len(text)
            if max_chars is not None and total >= max_chars:
                return
