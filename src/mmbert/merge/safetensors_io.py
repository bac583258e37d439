"""Safetensors, one tensor at a time: read a header without touching the data, read one tensor, and write a
file whose header is known up front so tensors can be appended as they are computed.

Format (https://github.com/huggingface/safetensors#format): 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded with
spaces to a multiple of 8 bytes, then the tensors' bytes back to back in offset order.

Why not ``safe_open`` kept open for the whole merge: since safetensors 0.6 ``get_tensor`` returns a view of
a private memory map, and every page it touches stays in the process's RSS until the file is closed, so a
merge that keeps N+1 files open ends up holding all of them. ``read_tensor`` opens, copies out, closes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' name: "F32", "BF16", ...
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported safetensors dtype {self.dtype!r}")
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.torch_dtype.itemsize


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors (name -> dtype, shape; file order) and ``__metadata__`` of a safetensors file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from e
    metadata = header.pop("__metadata__", None) or {}
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return {k: TensorInfo(v["dtype"], tuple(v["shape"])) for k, v in entries}, metadata


def read_tensor(path: str | os.PathLike, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor as memory this process owns (converted to ``dtype`` if given); the file is closed again.

    The map is dropped before returning, so the transient cost is one tensor of file pages.
    """
    with safe_open(str(path), framework="pt") as f:
        view = f.get_tensor(name)
        return view.to(dtype or view.dtype, copy=True).contiguous()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_streaming(
    path: str | os.PathLike,
    layout: dict[str, TensorInfo],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (name, tensor) — in ``layout``'s order, matching its dtypes and shapes — to ``path``.

    The header is written first from ``layout``, so only the tensor being written is in memory.
    """
    path = Path(path)
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata keys and values must be strings (JSON-encode the rest)")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, info in layout.items():
        header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned, as safetensors itself writes
    expected = iter(layout.items())
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, tensor in tensors:
            want_name, info = next(expected, (None, None))
            if name != want_name:
                raise ValueError(f"writing {path}: got tensor {name!r}, expected {want_name!r}")
            if tensor.dtype != info.torch_dtype or tuple(tensor.shape) != info.shape:
                raise ValueError(
                    f"writing {path}: tensor {name!r} is {DTYPE_NAMES.get(tensor.dtype)} {tuple(tensor.shape)}, "
                    f"header says {info.dtype} {info.shape}"
                )
            # A uint8 view, through numpy's buffer protocol: no bytes copy. safetensors is little-endian,
            # as are the machines torch runs on.
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
        missing = next(expected, None)
        if missing is not None:
            raise ValueError(f"writing {path}: tensor {missing[0]!r} was never written")
        f.flush()
        os.fsync(f.fileno())
    return path
