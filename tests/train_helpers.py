"""Shared pieces of the trainer tests: a small synthetic config and readers of a run's metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SYNTHETIC = """
seed: 0
model: {preset: tiny}
data: {synthetic: true, synthetic_languages: 6}
micro_batch_tokens: 128
precision: fp32
progress: false
checkpoint: {every: 2, keep_last: 2}
eval: {at_phase_end: false}
phases:
  - {name: a, steps: 6, languages: {top: 3}, mask_ratio: 0.3, tau: 0.7, seq_len: 32, batch_tokens: 256,
     lr: {warmup: 0.5}}
  - {name: b, steps: 8, languages: all, mask_ratio: 0.15, tau: 0.5, seq_len: 64, batch_tokens: 256,
     global_rope_theta: 160000, local_rope_theta: 160000, lr: {decay: linear, decay_fraction: 1.0}}
"""


def write_config(tmp_path: Path, text: str = SYNTHETIC, name: str = "train.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def env(threads: int = 1) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmbert.train", str(config), "--out", str(out), *extra]


def run_train(config: Path, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, out, *extra), env=env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a line being written is skipped
    return [json.loads(line) for line in lines if line.strip()]


def losses(run_dir: Path) -> dict[int, list[float]]:
    """step -> every loss logged for it (a resumed run logs the replayed steps twice)."""
    out: dict[int, list[float]] = {}
    for r in records(run_dir):
        if "event" not in r:
            out.setdefault(r["step"], []).append(r["loss"])
    return out
