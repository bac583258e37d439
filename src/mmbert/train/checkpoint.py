"""Training checkpoints: a usable model directory plus everything needed to continue exactly.

Layout of one checkpoint directory (flat, written to a temporary directory, fsynced, renamed)::

    config.json, model.safetensors     the model in transformers' ModernBERT layout (opens anywhere), under
                                       its own architecture (ModernBertForMaskedLM, or a fine-tuned task head)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   when the run has a tokenizer
    optimizer.pt                       AdamW state (torch.save; loaded with weights_only=True)
    trainer_state.json                 step, tokens, stage, data-pipeline state and RNG states per rank

Choices:
- Only complete checkpoints have the name ``step-NNNNNNNN``: the temporary directory is dot-prefixed,
  so a SIGKILL mid-write leaves nothing that ``latest_checkpoint`` would pick.
- The data and RNG states are gathered from every rank and stored as a list by rank; a resume needs the
  same world size (the data pipeline's position is per rank).
- Under FSDP2 the model and optimizer state are gathered to full tensors on rank 0 with
  ``torch.distributed.checkpoint.state_dict`` and broadcast back on load; under DDP or one process the
  plain state dicts are used.
- JSON, not pickle, for the trainer state: it is human-readable and safe to load.
- Every checkpoint carries ``checksums.json`` (SHA-256 per file, written by the atomic writer). Resume
  takes the newest checkpoint that verifies and falls back past a corrupt one with a warning
  (``latest_valid_checkpoint``); one without the manifest (older versions) gets structural checks only
  and a warning that it is unverified. Every read error names the file.
- The trainer state records ``torch.get_num_threads()``: CPU kernels reduce in a thread-count dependent
  order, so a resume under another count is not bit-identical (a warning says so).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from mmbert.model.checkpoint import (
    CHECKSUMS_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    atomic_directory_write,
    read_safetensors,
    verify_checksums,
)
from mmbert.train.parallel import is_fsdp, unwrap

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"


# ---- RNG --------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _gather(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---- save -------------------------------------------------------------------------------------------------
def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
    """(model tensors, optimizer state) on rank 0, full and on CPU; (None, None) on other ranks of FSDP."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        tensors = get_model_state_dict(model, options=opts)
        optim = get_optimizer_state_dict(model, optimizer, options=opts)
        if dist.get_rank() != 0:
            return None, None
        return tensors, optim
    if dist.is_initialized() and dist.get_rank() != 0:
        return None, None
    return unwrap(model).state_dict(), optimizer.state_dict()


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict,
                    data_state: dict | None, tokenizer=None) -> Path:
    """Write a checkpoint (collective: every rank calls it; rank 0 writes). ``trainer_state`` must be JSON-able."""
    per_rank = _gather({"data": data_state, "rng": rng_state()})
    tensors, optim = full_state(model, optimizer)
    if tensors is not None:
        config = unwrap(model).config
        if getattr(config, "tie_word_embeddings", False):
            tensors.pop("decoder.weight", None)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        # the model's own class name in transformers (MaskedLM, or a task head of fine-tuning)
        architecture = getattr(unwrap(model), "architecture", "ModernBertForMaskedLM")
        config = config.replace(extra={**config.extra, "architectures": [architecture]})
        state = {**trainer_state, "world_size": len(per_rank), "num_threads": torch.get_num_threads(),
                 "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank]}

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            config.save(tmp)
            if tokenizer is not None:
                tokenizer.save(tmp)
            _save_torch(optim, tmp / OPTIMIZER)
            (tmp / TRAINER_STATE).write_text(json.dumps(state) + "\n")

        atomic_directory_write(Path(path), write, checksums=True)
        _fsync_dir(Path(path).parent)
    if dist.is_initialized():
        dist.barrier()
    return Path(path)


class _Writer:
    """A file that remembers the OSError of a failed write: torch.save reports it as a RuntimeError
    ("unexpected pos ...") that does not say the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _save_torch(obj, path: Path) -> None:
    with open(path, "wb") as f:
        w = _Writer(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- load -------------------------------------------------------------------------------------------------
def read_trainer_state(path: Path) -> dict:
    file = Path(path) / TRAINER_STATE
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable trainer state ({e}); the file is truncated or corrupt") from e
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file}: not a trainer state (no 'step')")
    return state


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Copy a checkpoint's weights into ``model`` (plain, DDP or FSDP2)."""
    tensors = read_safetensors(path)
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        own = unwrap(model).state_dict()
        full = {k: tensors.get(k, tensors.get("model.embeddings.tok_embeddings.weight")) if k == "decoder.weight"
                else tensors[k] for k in own}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_checkpoint_state(tensors, source=str(path))


def load_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    file = Path(path) / OPTIMIZER
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch reports a torn zip as RuntimeError("PytorchStreamReader failed ...")
        raise CheckpointError(f"{file}: unreadable optimizer state ({type(e).__name__}: {e}); the file is "
                              "truncated or corrupt") from e
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def restore_rank_state(trainer_state: dict, rank: int, world_size: int) -> dict | None:
    """Set this rank's RNG states; return its data-pipeline state."""
    saved = trainer_state.get("world_size", 1)
    if saved != world_size:
        raise ValueError(f"checkpoint was written by {saved} processes; resume with the same number "
                         f"(now {world_size}): the data position is per rank")
    threads = trainer_state.get("num_threads")
    if rank == 0 and threads is not None and threads != torch.get_num_threads():
        log.warning("checkpoint was written with %d torch threads, this process has %d: the resumed run is "
                    "not bit-identical to an uninterrupted one (set OMP_NUM_THREADS=%d to make it so)",
                    threads, torch.get_num_threads(), threads)
    set_rng_state(trainer_state["rng"][rank])
    return trainer_state["data"][rank]


# ---- directory of checkpoints -----------------------------------------------------------------------------
def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(path: Path) -> bool:
    """Check every file of a training checkpoint: True when its checksums verify, False when it has no
    manifest and passed the structural checks (trainer state parses, safetensors header and size agree,
    optimizer zip directory intact). A problem is a CheckpointError naming the file."""
    path = Path(path)
    if (path / CHECKSUMS_NAME).is_file():
        verify_checksums(path)
        for name in (WEIGHTS_NAME, OPTIMIZER, TRAINER_STATE):
            if not (path / name).is_file():
                raise CheckpointError(f"{path / name}: missing")
        read_trainer_state(path)
        return True
    read_trainer_state(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        with open(weights, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors header ({e})") from e
    if weights.stat().st_size != 8 + n + end:
        raise CheckpointError(f"{weights}: {weights.stat().st_size} bytes, its header says {8 + n + end}; truncated")
    try:
        with zipfile.ZipFile(path / OPTIMIZER) as z:
            z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path / OPTIMIZER}: unreadable ({e}); the file is truncated or corrupt") from e
    return False


def latest_valid_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` that verifies, falling back past corrupt ones with a warning;
    None when there is none. When every checkpoint is corrupt, the newest one's problem is raised."""
    found = list_checkpoints(root)
    first_error: CheckpointError | None = None
    for path in reversed(found):
        try:
            verified = verify_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as e:
            log.warning("checkpoint %s is unusable: %s; trying the one before it", path, e)
            first_error = first_error or CheckpointError(str(e))
            continue
        if first_error is not None:
            log.warning("resuming from %s, an older checkpoint: the steps after it are trained again", path)
        if not verified:
            log.warning("checkpoint %s has no %s (written by an older mmbert): loaded unverified", path,
                        CHECKSUMS_NAME)
        return path
    if first_error is not None:
        raise CheckpointError(f"no usable checkpoint in {root}: {first_error}")
    return None


def prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
