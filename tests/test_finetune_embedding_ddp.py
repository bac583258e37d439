"""torchrun: two gloo ranks of `mmbert finetune --task embedding`, negatives gathered across ranks, follow the
one-process run (same global batch: the loss over every anchor against every candidate is the same number)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.eval_helpers import make_checkpoint
from tests.test_finetune_embedding import _pairs, _write_jsonl
from tests.train_helpers import REPO, env


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_ranks_follow_one(tmp_path):
    train, dev = _write_jsonl(tmp_path / "train.jsonl", _pairs(96, 1)), _write_jsonl(tmp_path / "dev.jsonl", _pairs(16, 2))
    ckpt = make_checkpoint(tmp_path / "ckpt", [r[k] for r in _pairs(200, 3) for k in ("anchor", "positive")])
    args = ["finetune", str(ckpt), "--task", "embedding", "--train", str(train), "--dev", str(dev), "--batch-size",
            "16", "--cached", "--symmetric", "--lr", "2e-3", "--max-steps", "4", "--eval-every", "2", "--patience",
            "0", "--max-length", "16", "--precision", "fp32", "--no-progress", "--set", "micro_batch_tokens=64"]
    one = subprocess.run([sys.executable, "-m", "mmbert.cli", *args, "--out", str(tmp_path / "one")], env=env(),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "mmbert.cli", *args, "--out", str(tmp_path / "two")], env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = _records(tmp_path / "one"), _records(tmp_path / "two")
    steps1 = {r["step"]: r for r in r1 if "event" not in r}
    steps2 = {r["step"]: r for r in r2 if "event" not in r}
    assert steps1.keys() == steps2.keys() == {4}
    assert steps1[4]["units"] == steps2[4]["units"] == 16  # the global batch, on both
    assert abs(steps1[4]["loss"] - steps2[4]["loss"]) < 1e-4, (steps1[4], steps2[4])
    dev1 = [r["dev"] for r in r1 if r.get("event") == "eval"]
    dev2 = [r["dev"] for r in r2 if r.get("event") == "eval"]
    assert len(dev1) == len(dev2) == 2 and max(abs(a - b) for a, b in zip(dev1, dev2)) < 1e-4, (dev1, dev2)
