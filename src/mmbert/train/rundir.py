"""One writer per run directory: an exclusive lock held for the run's life, and cleanup of killed writes.

Choices:
- A POSIX record lock (``fcntl.lockf``) on ``RUN/.lock``, taken without waiting: a second ``mmbert train`` / ``mmbert run`` on
  the same directory stops at once with an error naming the holder (pid, host, start time, command),
  instead of overwriting the first run's checkpoints. The kernel drops the lock when its process dies,
  so a lock left by ``kill -9`` is simply taken over — no stale-lock heuristics. A record lock rather than
  ``flock``: forked children (DataLoader workers) do not inherit it, so workers that outlive a killed trainer
  for a few seconds do not keep the directory locked against its ``--resume``. (Record locks drop when the
  process closes *any* descriptor of the file: this module opens it once per process, see ``_held``.)
  The file itself stays (it only carries the holder's description; an unlocked file means nothing).
- Under DDP/FSDP rank 0 takes the lock and the outcome is shared with every rank, so all of them stop
  together. The lock is per host (and honoured by NFSv4 and most cluster filesystems); rank 0 is one host.
- Re-entrant within a process: ``mmbert run`` holds its directory and the trainer holds ``RUN/train``;
  a caller already holding a directory may call code that takes it again.
- Temporary directories of killed writes (``.step-N.tmp-*``, ``.final.tmp-*``, and the ``.NAME.old-PID``
  of a killed replace) are removed once the lock is held: no live writer can own them then.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_TEMP = re.compile(r"^\..+\.(tmp-[A-Za-z0-9_]+|old-\d+)$")
_held: dict[str, list] = {}  # resolved lock path -> [fd, depth]


class RunDirLocked(ValueError):  # a ValueError: the entry points report it as one line, like other user errors
    """Another live process holds the run directory."""


@contextlib.contextmanager
def lock_run_dir(run_dir: Path, world):
    """``hold_run_dir`` on rank 0 of ``world``, the outcome agreed by every rank; then stale temporary
    directories of killed writes are removed (rank 0)."""
    from mmbert.train.parallel import any_rank

    with contextlib.ExitStack() as stack:
        error = None
        if world.is_main:
            try:
                stack.enter_context(hold_run_dir(run_dir))
            except RunDirLocked as e:
                error = e
        if any_rank(error is not None, world.device):
            raise error or RunDirLocked(f"run directory {run_dir} is in use by another process (see rank 0)")
        if world.is_main:
            remove_stale_temps(Path(run_dir))
        yield


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, enabled: bool = True):
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the ``with`` block; ``enabled=False``
    (ranks other than 0) does nothing. Raises RunDirLocked naming the holder."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str((run_dir / LOCK_NAME).resolve())
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(Path(key)), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            os.close(_held.pop(key)[0])  # closing the descriptor releases the lock


def _acquire(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another process
        holder = _describe(os.pread(fd, 4096, 0))
        os.close(fd)
        raise RunDirLocked(f"run directory {path.parent} is in use by {holder}; wait for it to finish, stop it, "
                           "or choose another --out") from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']} (started {info['started']}: {info.get('command', '?')})"
    except (ValueError, KeyError, TypeError):
        return "another process (its lock file names no holder yet)"


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary directories of interrupted atomic writes under ``run_dir``; call with the lock held."""
    removed = []
    for root, dirs, _ in os.walk(run_dir):
        for d in list(dirs):
            if _TEMP.match(d):
                shutil.rmtree(Path(root) / d, ignore_errors=True)
                removed.append(Path(root) / d)
                dirs.remove(d)
    if removed:
        log.warning("removed %d temporary director%s of interrupted writes: %s", len(removed),
                    "y" if len(removed) == 1 else "ies", ", ".join(str(p) for p in removed[:5]))
    return removed
