"""Checkpoint directories in transformers' layout: ``config.json`` + ``model.safetensors``.

Key names are transformers' ModernBERT names. A bare encoder stores ``embeddings.*`` / ``layers.*``; a model
with a head stores the encoder under ``model.`` plus ``head.*``, ``decoder.*`` or ``classifier.*``. Loading
adds or strips the ``model.`` prefix as needed, so an MLM checkpoint loads as a bare encoder or under a new
task head. The tied ``decoder.weight`` is not stored (safetensors cannot hold shared tensors; transformers
re-ties it). Weights are read with safetensors only, never with pickle; sharded checkpoints
(``model.safetensors.index.json``) load too. Writes go to a temporary directory that is renamed into place.

Integrity: a writer may ask for a ``checksums.json`` manifest (size and SHA-256 of every file, computed
after the write, before the rename); ``read_safetensors`` then verifies the weight files against it, so a
truncated or bit-flipped file is a :class:`CheckpointError` naming the file, not a raw safetensors error
or silently wrong weights. SHA-256 (hashlib, streamed in 1 MiB blocks) rather than CRC32: it is the
checksum ``sha256sum`` and every mirror tool understands; it costs about one extra read of the file
(measured in the report of issue #13). Directories without the manifest (older checkpoints, foreign
ones) still load, unverified. A full disk while writing is a :class:`DiskFullError` naming the target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmbert.model.config import ModelConfig
from mmbert.model.precision import apply_precision

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CHECKSUMS_NAME = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (names the offending tensor) or is unreadable (names the file)."""


class DiskFullError(OSError):
    """No space left on the device while writing ``filename`` (the target; what was there before is intact)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, "disk full while writing", str(path))

    def __str__(self) -> str:
        return f"disk full while writing {self.filename}"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, also when a writer wraps it (safetensors reports ``os error 28`` in a SafetensorError)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text


def disk_full_message(exc: BaseException, after: str, where: str = "the output") -> str | None:
    """The one line an entry point prints for a full disk (None when ``exc`` is another error)."""
    if not is_disk_full(exc):
        return None
    return f"disk full while writing {getattr(exc, 'filename', None) or where}: free space and {after}"


def read_safetensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded), verified against its checksum
    manifest when it has one; an unreadable file is a CheckpointError that names it."""
    directory = Path(directory)
    files = weight_files(directory)
    verify_checksums(directory, [f.name for f in files])
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    tensors[key] = sf.get_tensor(key)
        except Exception as e:  # SafetensorError (truncated, bad header) is not an OSError or ValueError
            raise CheckpointError(f"{f}: cannot read the weights ({type(e).__name__}: {e}); the file is "
                                  "truncated or corrupt") from e
    return tensors


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record size and SHA-256 of every file under ``directory`` in its ``checksums.json``."""
    files = sorted(f for f in directory.rglob("*") if f.is_file() and f.name != CHECKSUMS_NAME)
    manifest = {"algorithm": "sha256",
                "files": {f.relative_to(directory).as_posix(): {"size": f.stat().st_size, "sha256": file_sha256(f)}
                          for f in files}}
    (directory / CHECKSUMS_NAME).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_checksums(directory: str | os.PathLike, names: list[str] | None = None) -> bool:
    """Check ``names`` (default: every file the manifest lists) against ``checksums.json``: True when
    verified, False when the directory has no manifest (unverified); a missing, resized or changed file
    is a CheckpointError naming it."""
    directory = Path(directory)
    path = directory / CHECKSUMS_NAME
    if not path.is_file():
        return False
    try:
        listed = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checksum manifest ({e})") from e
    for name in listed if names is None else names:
        f = directory / name
        want = listed.get(name)
        if want is None:
            raise CheckpointError(f"{f}: not listed in {path}")
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {path})")
        if f.stat().st_size != want["size"]:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, {want['size']} when written; the file is truncated "
                                  "or was replaced")
        if file_sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 differs from {path}; the file is corrupt")
    return True


def weight_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    if (directory / INDEX_NAME).is_file():
        index = json.loads((directory / INDEX_NAME).read_text())
        return [directory / name for name in sorted(set(index["weight_map"].values()))]
    # optimizer.pt of a training checkpoint is not a weights file: its presence says nothing about the format
    if any(directory.glob("*.bin")) or any(p.name != "optimizer.pt" for p in directory.glob("*.pt")):
        raise CheckpointError(
            f"{directory} holds only pickled weights (*.bin / *.pt); mmbert reads safetensors only. Convert "
            "them once with transformers: AutoModelForMaskedLM.from_pretrained(dir).save_pretrained(out)"
        )
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")


def atomic_directory_write(target: Path, write, checksums: bool = False) -> Path:
    """Run ``write(tmp_dir)`` in a temporary sibling of ``target``, (with ``checksums``, record every file's
    SHA-256 in ``checksums.json``), fsync what it wrote, then rename it into place (replacing an older
    ``target``). A crash leaves either the old directory or the new one, never half; a full disk is a
    DiskFullError naming ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(target) from e
        raise
    try:
        write(tmp)
        if checksums:
            write_checksums(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(target) from e
        raise
    return target


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for the models in ``modeling.py`` and ``heads.py``."""

    config: ModelConfig
    # Key prefixes a class may create fresh when the checkpoint lacks them (a new task head).
    init_if_missing: tuple[str, ...] = ()
    architecture: str = "ModernBertForMaskedLM"

    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        model: nn.Module = self  # type: ignore[assignment]
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("decoder.weight", None)
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        config = self.config.replace(extra={**self.config.extra, "architectures": [self.architecture]})

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
            config.save(tmp)

        return atomic_directory_write(Path(directory), write)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
        precision: str | None = None, **config_overrides,
    ):
        """``precision`` (``auto``, ``fp32``, ``bf16``, ``int8``): convert for inference after loading
        (``model/precision.py``); the forward is unchanged and the encoder still returns fp32."""
        directory = Path(directory)
        config = ModelConfig.load(directory)
        if config_overrides:
            config = config.replace(**config_overrides)
        model = cls(config)
        model.load_checkpoint_state(read_safetensors(directory), source=str(directory))
        model.eval()
        if dtype is not None:
            model.to(dtype)
        model.to(device)
        if precision is not None:
            apply_precision(model, precision, device)
        return model

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy ``tensors`` into the model, matching names; any mismatch is an error that names the tensor."""
        model: nn.Module = self  # type: ignore[assignment]
        own = model.state_dict()
        tied = {"decoder.weight"} if getattr(self.config, "tie_word_embeddings", False) else set()
        expected = set(own) - tied
        has_encoder_prefix = any(k.startswith("model.") for k in own)
        tensors = _align_prefix(tensors, has_encoder_prefix)
        foreign_heads = ("head.", "decoder.", "classifier.")
        unexpected = [k for k in tensors if k not in own and not k.startswith(foreign_heads)]
        if unexpected:
            raise CheckpointError(f"{source}: unexpected tensor(s) not in the model: {sorted(unexpected)[:10]}")
        missing = sorted(k for k in expected if k not in tensors and not k.startswith(self.init_if_missing))
        if missing:
            raise CheckpointError(f"{source}: missing tensor(s): {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
        with torch.no_grad():
            for key in sorted(expected & set(tensors)):
                src, dst = tensors[key], own[key]
                if src.shape != dst.shape:
                    raise CheckpointError(
                        f"{source}: tensor {key!r} has shape {tuple(src.shape)}, the model expects {tuple(dst.shape)}"
                    )
                dst.copy_(src.to(dst.dtype))
        self.tie_weights()  # type: ignore[attr-defined]


def _align_prefix(tensors: dict[str, torch.Tensor], want_prefix: bool) -> dict[str, torch.Tensor]:
    have_prefix = any(k.startswith("model.") for k in tensors)
    if want_prefix and not have_prefix:
        return {(k if k.startswith(("head.", "decoder.", "classifier.")) else f"model.{k}"): v for k, v in tensors.items()}
    if not want_prefix and have_prefix:
        return {k.removeprefix("model."): v for k, v in tensors.items()}
    return tensors
