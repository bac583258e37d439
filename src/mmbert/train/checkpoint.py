"""Training checkpoints: a usable model directory plus everything needed to continue exactly.

Layout of one checkpoint directory (flat, written to a temporary directory, fsynced, renamed)::

    config.json, model.safetensors     the model in transformers' ModernBERT layout (opens anywhere)
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
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from mmbert.model.checkpoint import WEIGHTS_NAME, atomic_directory_write, read_safetensors
from mmbert.train.parallel import is_fsdp, unwrap

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
        config = config.replace(extra={**config.extra, "architectures": ["ModernBertForMaskedLM"]})
        state = {**trainer_state, "world_size": len(per_rank),
                 "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank]}

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            config.save(tmp)
            if tokenizer is not None:
                tokenizer.save(tmp)
            torch.save(optim, tmp / OPTIMIZER)
            (tmp / TRAINER_STATE).write_text(json.dumps(state) + "\n")

        atomic_directory_write(Path(path), write)
        _fsync_dir(Path(path).parent)
    if dist.is_initialized():
        dist.barrier()
    return Path(path)


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
    return json.loads((Path(path) / TRAINER_STATE).read_text())


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
    state = torch.load(Path(path) / OPTIMIZER, map_location="cpu", weights_only=True)
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


def prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
