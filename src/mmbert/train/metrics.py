"""Run observability: a JSONL metrics log, TensorBoard when installed, and a tqdm progress bar.

Choices:
- ``metrics.jsonl`` in the run dir is the record of truth: one JSON object per line, a ``step`` line
  (step, phase, variant, loss, lr, mask_ratio, tau, seq_len, n_languages, tokens, tokens_per_s, ...) or
  an event (``event``: stage_start, eval, skip, checkpoint, stop, stage_end). It is appended to, so a
  resumed run continues the same file.
- Only rank 0 writes or shows anything.
- TensorBoard is optional (``tensorboard`` is not a dependency); scalars of step lines and per-language
  held-out losses go to ``RUN/tensorboard`` when it imports.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
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
        self._file.write(json.dumps(record, default=_json_default, allow_nan=True) + "\n")
        self._file.flush()
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
            self._file.close()
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
