"""A reader of MDS datasets (MosaicML ``streaming``'s format), the format mmBERT's data is published in.

Written from the format as ``mosaicml-streaming`` 0.13.0 defines it (``base/format/mds/{writer,reader,
encodings}.py``, ``base/format/base/writer.py``, ``base/compression.py``); that library cannot be a
dependency (it pins ``transformers<5``, ``numpy<2.2`` and needs torchvision). Proven against shards its
real ``MDSWriter`` wrote: ``tests/fixtures/mds`` (how they were made: its README).

Format:
- A dataset folder holds ``index.json``: ``{"version": 2, "shards": [entry, ...]}``. An entry names the
  shard's ``raw_data`` (and ``zip_data`` when ``compression`` is set) by a basename relative to the
  folder (``merge_index`` writes ``sub/shard.00000.mds``), its ``samples``, and its columns
  (``column_names`` sorted, ``column_encodings``, ``column_sizes``: bytes for fixed-size encodings).
- A raw shard: ``uint32 n``, ``uint32 offsets[n + 1]`` (absolute, little-endian), the writer config as
  JSON, then the samples. Sample i spans ``offsets[i]:offsets[i + 1]``: one ``uint32`` size per
  variable-size column, then each column's bytes, in ``column_names`` order.
- Encodings decoded here: ``ndarray[:dtype[:shape]]`` (dynamic dtype: one dtype byte; dynamic shape:
  a byte ``ndim << 2 | shape-dtype`` then the shape), ``str``, ``bytes``, ``int`` (int64), the numpy
  scalars, ``str_int``, ``str_float``, ``json``. ``pkl`` is refused (unpickling runs arbitrary code);
  the image encodings are not token data and are refused with the column named.
- Compression: the whole shard file is compressed (``shard.00000.mds.zstd``). ``gz`` and ``bz2`` are
  decompressed with the standard library; ``zstd`` needs the ``zstandard`` or ``zstd`` module (neither
  is a dependency: the published mmBERT shards are uncompressed ``shard.NNNNN.mds`` files, as its own
  ``data/online_streaming.py`` reads them). Like streaming, a compressed shard is decompressed once to
  its raw basename beside it (or, read-only folder, under the temp dir), then read like a raw one.

Choices:
- Nothing is loaded whole: a shard's offset table is read, then one sample at a time (seek + read, as
  streaming's own reader does); the header
  is checked against the index (sample count, monotone offsets inside the file) before the first read,
  so a truncated or corrupt shard is reported by name with the reason instead of yielding garbage.
- Hashes in the index are not verified (sha1 of every shard at each start would be a full data scan);
  the header checks catch truncation, the usual damage of an interrupted copy.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

INDEX = "index.json"
TOKEN_FIELD = "input_ids"  # the token column of ModernBERT's and mmBERT's tokenized MDS data

_VALUE_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
                 34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_SHAPE_DTYPES = {0: "uint8", 1: "uint16", 2: "uint32", 3: "uint64"}
_SCALARS = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
_TEXT = {"str", "str_int", "str_float", "str_decimal", "json", "bytes", "int"}
_IMAGES = {"pil", "jpeg", "jpeg_array", "jpegarray", "png", "list[pil]", "list[jpeg]", "list[png]"}
_INT_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}


class MDSError(ValueError):
    """An MDS dataset or shard that cannot be read as written; the message names the file."""


class MDSRefused(MDSError):
    """A column this reader will not decode by design (pickle): an error, never a skipped record."""


@dataclass(frozen=True)
class MDSShard:
    """One shard of an index, with the column a reader takes from it."""

    index: str  # the index.json it is listed in
    raw: str  # absolute path of the uncompressed shard (may not exist yet when compressed)
    zip: str  # absolute path of the compressed shard, "" if none
    compression: str  # "" or e.g. "zstd:7"
    samples: int
    raw_bytes: int
    columns: tuple[str, ...]
    encodings: tuple[str, ...]
    sizes: tuple[int | None, ...]
    column: str  # the column read: token ids or text
    kind: str  # "tokens" or "text"
    config_len: int  # bytes of the writer config in the shard header (rebuilt as MDSWriter.get_config writes it)

    @property
    def file(self) -> str:
        return self.raw if (os.path.exists(self.raw) or not self.zip) else self.zip

    def estimated_tokens(self) -> int:
        """Token count of a ``tokens`` shard from the index alone (no read): payload bytes less the known
        per-sample overhead, over the token dtype's size. Exact when the token column is the only
        variable-size one and its dtype is in the encoding; otherwise within the other columns' bytes
        (an ``id`` string is ~0.1% of an 8,192-token sample), assuming 4-byte ids for a dynamic dtype."""
        j = self.columns.index(self.column)
        name, _, arg = self.encodings[j].partition(":")
        dtype = arg.split(":")[0] if arg else ""
        itemsize = np.dtype(dtype).itemsize if dtype else 4
        header = 4 + 4 * (self.samples + 1)
        fixed = sum(s for s in self.sizes if s)  # fixed-size columns, including a static-shape token column
        per_sample = 4 * sum(1 for s in self.sizes if not s) + fixed
        if not self.sizes[j]:  # dtype byte when dynamic; ndim byte + a uint16 length (256..65,535-token chunks)
            per_sample += (0 if dtype else 1) + (0 if arg.count(":") else 3)
        payload = self.raw_bytes - header - self.samples * per_sample
        payload -= self.config_len
        return max(0, payload // itemsize) + (self.samples * (self.sizes[j] // itemsize) if self.sizes[j] else 0)


def _pick_column(columns: list[str], encodings: list[str], token_field: str | None, text_field: str, where: str) -> tuple[str, str]:
    """Which column a source reads, and whether it holds token ids or text."""
    for name in ([token_field] if token_field else [TOKEN_FIELD]):
        if name in columns:
            enc = encodings[columns.index(name)].partition(":")[0]
            if enc == "pkl":
                raise MDSRefused(f"{where}: token column {name!r} is pickled ('pkl'); refused, unpickling runs arbitrary code")
            if enc not in ("ndarray", *_INT_DTYPES, "json"):
                raise MDSError(f"{where}: token column {name!r} has encoding {encodings[columns.index(name)]!r}, not ndarray/json")
            return name, "tokens"
    if token_field:
        raise MDSError(f"{where}: no token column {token_field!r} (columns: {columns})")
    if text_field in columns:
        enc = encodings[columns.index(text_field)]
        if enc != "str":
            raise MDSError(f"{where}: text column {text_field!r} has encoding {enc!r}, not str")
        return text_field, "text"
    raise MDSError(f"{where}: neither a token column {TOKEN_FIELD!r} nor a text column {text_field!r} (columns: {columns})")


def _config_len(entry: dict) -> int:
    keys = ("version", "format", "compression", "hashes", "size_limit", "column_names", "column_encodings", "column_sizes")
    return len(json.dumps({k: entry.get(k) for k in keys}, sort_keys=True).encode("utf-8"))


def read_index(folder: str, token_field: str | None = None, text_field: str = "text") -> list[MDSShard]:
    """The shards listed in ``folder/index.json``, in index order. Raises MDSError naming the index for
    a malformed index, an unsupported version/format, or a pickle column that would be read."""
    path = os.path.join(folder, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise MDSError(f"cannot read MDS index {path}: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("shards"), list):
        raise MDSError(f"MDS index {path} has no 'shards' list")
    if obj.get("version") != 2:
        raise MDSError(f"MDS index {path}: version {obj.get('version')!r}, expected 2")
    out = []
    for k, s in enumerate(obj["shards"]):
        where = f"{path} shard {k}"
        try:
            if s.get("format") != "mds" or s.get("version") != 2:
                raise MDSError(f"{where}: format {s.get('format')!r} version {s.get('version')!r}, expected mds version 2")
            columns, encodings = list(s["column_names"]), list(s["column_encodings"])
            sizes = tuple(s.get("column_sizes") or [None] * len(columns))
            column, kind = _pick_column(columns, encodings, token_field, text_field, where)
            enc = encodings[columns.index(column)]
            if enc == "pkl":
                raise MDSRefused(f"{where}: column {column!r} is pickled ('pkl'); refused, unpickling runs arbitrary code")
            raw = os.path.join(folder, s["raw_data"]["basename"])
            zipped = os.path.join(folder, s["zip_data"]["basename"]) if s.get("zip_data") else ""
            out.append(MDSShard(path, os.path.abspath(raw), os.path.abspath(zipped) if zipped else "",
                                s.get("compression") or "", int(s["samples"]), int(s["raw_data"]["bytes"]),
                                tuple(columns), tuple(encodings), sizes, column, kind, _config_len(s)))
        except (KeyError, TypeError) as e:
            raise MDSError(f"{where}: malformed entry ({type(e).__name__}: {e})") from e
    return out


def _decompressor(algo: str, src: str):
    """A readable binary stream of the decompressed shard ``src``, or MDSError saying what is missing."""
    if algo == "gz":
        return gzip.open(src, "rb")
    if algo == "bz2":
        return bz2.open(src, "rb")
    if algo == "zstd":
        try:
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(open(src, "rb"), closefd=True)
        except ImportError:
            pass
        try:
            import io

            import zstd

            with open(src, "rb") as f:  # the 'zstd' module has no streaming API: one shard in memory
                return io.BytesIO(zstd.decompress(f.read()))
        except ImportError:
            pass
        raise MDSError(f"{src}: zstd-compressed shard; install 'zstandard' to read it, or decompress the "
                       f"folder once (zstd -d) so shard.NNNNN.mds sits beside it")
    raise MDSError(f"{src}: compression {algo!r} is not supported (gz, bz2, zstd are); decompress the shards first")


def ensure_raw(shard: MDSShard) -> str:
    """Path of the uncompressed shard, decompressing the zip once if needed (atomically: a temporary
    file then a rename, so workers racing on it never read half a file)."""
    if os.path.exists(shard.raw) or not shard.zip:
        return shard.raw
    algo = shard.compression.partition(":")[0]
    for target in (shard.raw, os.path.join(tempfile.gettempdir(), "mmbert-mds-" + hashlib.sha1(shard.raw.encode()).hexdigest()[:16],
                                           os.path.basename(shard.raw))):
        if os.path.exists(target):
            return target
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp.{os.getpid()}"
            with _decompressor(algo, shard.zip) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)
            return target
        except PermissionError:
            continue
    raise MDSError(f"{shard.zip}: cannot write its decompressed copy beside it or under {tempfile.gettempdir()}")


def _decode(encoding: str, data: memoryview, where: str):
    name, _, arg = encoding.partition(":")
    if name == "ndarray":
        i, args = 0, arg.split(":") if arg else []
        if args and args[0]:
            dtype = args[0]
        else:
            dtype = _VALUE_DTYPES.get(data[0]) if len(data) else None
            i = 1
        if dtype is None:
            raise MDSError(f"{where}: bad ndarray dtype byte")
        if len(args) > 1:
            shape = tuple(int(x) for x in args[1].split(","))
        else:
            if len(data) <= i:
                raise MDSError(f"{where}: ndarray shape missing")
            b = data[i]
            ndim, sdt = b >> 2, _SHAPE_DTYPES[b & 3]
            i += 1
            n = ndim * np.dtype(sdt).itemsize
            shape = tuple(int(x) for x in np.frombuffer(data[i : i + n], sdt))
            i += n
        arr = np.frombuffer(data[i:], dtype)
        if arr.size != int(np.prod(shape)):
            raise MDSError(f"{where}: ndarray of shape {shape} has {arr.size} values")
        return arr.reshape(shape)
    if name in _SCALARS:
        return np.frombuffer(data, name)[0]
    if name == "int":
        return int(np.frombuffer(data, np.int64)[0])
    if name == "bytes":
        return bytes(data)
    if name in _TEXT:
        text = bytes(data).decode("utf-8")
        return json.loads(text) if name == "json" else int(text) if name == "str_int" else float(text) if name == "str_float" else text
    if name == "pkl":
        raise MDSError(f"{where}: pickled column refused (unpickling runs arbitrary code)")
    if name in _IMAGES:
        raise MDSError(f"{where}: image encoding {encoding!r} is not token or text data")
    raise MDSError(f"{where}: unknown MDS encoding {encoding!r}")


def iter_samples(shard: MDSShard, start: int = 0, end: int = -1) -> Iterator[tuple[int, object]]:
    """Yield ``(sample index, value of shard.column)`` for samples ``start:end`` (-1: to the last).

    Raises MDSError naming the file when its header disagrees with the index or points outside the
    file (truncation), or when a sample cannot be decoded; samples before the damage were yielded.
    """
    path = ensure_raw(shard)
    j = shard.columns.index(shard.column)
    variable = [s is None or s == 0 for s in shard.sizes]
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        if len(head) < 4:
            raise MDSError(f"{path}: {size} bytes, too short for an MDS header (truncated)")
        n = int(np.frombuffer(head, "<u4")[0])
        if n != shard.samples:
            raise MDSError(f"{path}: header says {n} samples, index {shard.index} says {shard.samples}")
        table = f.read(4 * (n + 1))
        if len(table) < 4 * (n + 1):
            raise MDSError(f"{path}: {size} bytes, shorter than its offset table (truncated)")
        offsets = np.frombuffer(table, "<u4").astype(np.int64)
        if (np.diff(offsets) < 0).any() or offsets[0] < 4 * (n + 2):
            raise MDSError(f"{path}: corrupt offset table")
        if offsets[-1] > size:
            raise MDSError(f"{path}: {size} bytes but its samples end at byte {offsets[-1]} (truncated)")
        stop = n if end < 0 else min(end, n)
        for i in range(start, stop):
            f.seek(offsets[i])
            data = memoryview(f.read(offsets[i + 1] - offsets[i]))
            where = f"{path} sample {i}"
            pos, lens = 0, []
            for k, var in enumerate(variable):
                if var:
                    if pos + 4 > len(data):
                        raise MDSError(f"{where}: sample shorter than its column sizes")
                    lens.append(int(np.frombuffer(data[pos : pos + 4], "<u4")[0]))
                    pos += 4
                else:
                    lens.append(shard.sizes[k])
            if pos + sum(lens) != len(data):
                raise MDSError(f"{where}: column sizes {lens} do not add up to the sample's {len(data)} bytes")
            pos += sum(lens[:j])
            yield i, _decode(shard.encodings[j], data[pos : pos + lens[j]], where)


def _encode(encoding: str, value) -> bytes:
    """The inverse of :func:`_decode` for the encodings a corpus writer needs."""
    name, _, arg = encoding.partition(":")
    if name == "ndarray":
        arr = np.asarray(value)
        args = arg.split(":") if arg else []
        head = b""
        if not (args and args[0]):
            code = {v: k for k, v in _VALUE_DTYPES.items()}.get(arr.dtype.name)
            if code is None:
                raise ValueError(f"ndarray dtype {arr.dtype} is not an MDS dtype")
            head += bytes([code])
        elif arr.dtype.name != args[0]:
            raise ValueError(f"ndarray of dtype {arr.dtype}, the column is {args[0]}")
        if len(args) < 2:
            if arr.ndim == 0 or arr.size == 0:
                raise ValueError("MDS cannot store a scalar or empty ndarray")
            x = max(arr.shape)
            sdt = 0 if x < 1 << 8 else 1 if x < 1 << 16 else 2 if x < 1 << 32 else 3
            head += bytes([(arr.ndim << 2) | sdt]) + np.array(arr.shape, _SHAPE_DTYPES[sdt]).tobytes()
        return head + arr.tobytes()
    if name == "str":
        return value.encode("utf-8")
    if name == "int":
        return np.int64(value).tobytes()
    if name in _SCALARS:
        return np.dtype(name).type(value).tobytes()
    if name == "json":
        return json.dumps(value).encode("utf-8")
    if name == "bytes":
        return bytes(value)
    raise ValueError(f"writing MDS encoding {encoding!r} is not supported")


def write_mds(folder: str, columns: dict[str, str], samples, size_limit: int = 1 << 26) -> list[str]:
    """Write ``samples`` (dicts of ``columns`` name -> encoding) as an uncompressed MDS dataset in
    ``folder``: the files ``streaming``'s ``MDSWriter`` writes for the same input (same shard cuts and
    bytes; checked against its output in the tests), without hashes. Returns the shard paths.

    For converting a corpus once (e.g. pre-tokenizing text into ``input_ids: ndarray:uint32``) and for
    tests and benchmarks; nothing else in mmbert writes MDS."""
    names = sorted(columns)
    encodings = [columns[n] for n in names]
    sizes = [{"int": 8}.get(e, np.dtype(e).itemsize if e in _SCALARS else None) for e in encodings]
    cfg = {"version": 2, "format": "mds", "compression": None, "hashes": [], "size_limit": size_limit,
           "column_names": names, "column_encodings": encodings, "column_sizes": sizes}
    config = json.dumps(cfg, sort_keys=True).encode("utf-8")
    os.makedirs(folder, exist_ok=True)
    shards: list[dict] = []
    paths: list[str] = []
    cache: list[bytes] = []
    cache_size = 8 + len(config)  # MDSWriter's extra bytes per shard

    def flush():
        n = len(cache)
        offsets = np.array([0] + [len(s) for s in cache]).cumsum().astype(np.uint32)
        offsets += 4 + 4 * (n + 1) + len(config)
        data = np.uint32(n).tobytes() + offsets.tobytes() + config + b"".join(cache)
        basename = f"shard.{len(shards):05}.mds"
        path = os.path.join(folder, basename)
        with open(path, "wb") as f:
            f.write(data)
        shards.append({"samples": n, "raw_data": {"basename": basename, "bytes": len(data), "hashes": {}},
                       "zip_data": None, **cfg})
        paths.append(path)

    for sample in samples:
        parts = [_encode(e, sample[n]) for n, e in zip(names, encodings)]
        head = np.array([len(p) for p, s in zip(parts, sizes) if s is None], np.uint32).tobytes()
        encoded = head + b"".join(parts)
        if size_limit and size_limit < cache_size + len(encoded) + 4:
            flush()
            cache, cache_size = [], 8 + len(config)
        cache.append(encoded)
        cache_size += len(encoded) + 4
    if cache:
        flush()
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump({"version": 2, "shards": shards}, f, sort_keys=True)
    return paths
