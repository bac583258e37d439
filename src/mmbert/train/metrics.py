"""Run observability: a JSONL metrics log, TensorBoard when installed, and a tqdm progress bar.

Choices:
- ``metrics.jsonl`` in the run dir is the record of truth: one JSON object per line, a ``step`` line
  (step, phase, variant, loss, lr, mask_ratio, tau, seq_len, n_languages, tokens, tokens_per_s, ...) or
  an event (``event``: stage_start, eval, skip, checkpoint, stop, stage_end). It is appended to, so a
  resumed run continues the same file. A kill or a full disk can leave a torn last line: the writer cuts
  it off before appending, and ``read_metrics_records`` (every reader's one parser) skips it with a warning.
- Only rank 0 writes or shows anything.
- TensorBoard is optional (``tensorboard`` is not a dependency); scalars of step lines and per-language
  held-out losses go to ``RUN/tensorboard`` when it imports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mmbert.model.checkpoint import DiskFullError, is_disk_full

log = logging.getLogger(__name__)


def read_metrics_records(path: Path) -> list[dict]:
    """Every record of a ``metrics.jsonl``; a line that does not parse (a torn last line after a kill or
    a full disk, or a line damaged in place) is skipped with a warning naming the file and line."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                torn = not line.endswith("\n")
                log.warning("%s:%d: %s; skipped", path, n, "torn last line (the writer was killed)" if torn
                            else "not a JSON object")
                continue
            records.append(rec)
    return records


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline, so appended lines do not glue onto a torn one."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        pos = size
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                pos = pos - step + i + 1
                break
            pos -= step
        if pos < size:
            log.warning("%s: cut a torn last line of %d bytes (a killed run wrote it)", path, size - pos)
            f.truncate(pos)


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                _cut_torn_tail(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed (or broken): the JSONL log is enough
                self._tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        try:
            self._file.write(json.dumps(record, default=_json_default, allow_nan=True) + "\n")
            self._file.flush()
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(self.path) from e
            raise
        if self._tb is not None:
            step = record.get("step", 0)
            if "event" not in record:
                for k in ("loss", "lr", "tokens_per_s", "grad_norm", "mask_ratio", "tau", "n_languages"):
                    if isinstance(record.get(k), (int, float)):
                        self._tb.add_scalar(f"train/{k}", record[k], step)
            elif record["event"] == "eval":
                for lang, v in record.get("heldout", {}).items():
                    if isinstance(v, float) and math.isfinite(v):
                        self._tb.add_scalar(f"heldout/{lang}", v, step)
                for k in ("heldout_mean", "heldout_mean_active", "heldout_mean_inactive"):
                    if isinstance(record.get(k), float):
                        self._tb.add_scalar(f"eval/{k}", record[k], step)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the disk is full: the write that failed has already been reported
                pass
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


class Progress:
    """tqdm bar over one stage's steps (rank 0 only, and only when enabled)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
                        mininterval=0.5) if enabled else None

    def update(self, **postfix) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
