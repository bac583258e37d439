"""Fine-tuning reliability: seeded runs repeat, kill -9 + the same command ends where an uninterrupted run
does, non-finite steps are skipped and a run of them stops with a clear message; the optimizer step
accumulates micro-batches exactly."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmbert.cli import main
from mmbert.train.finetune import FinetuneConfig, fit, get_task
from tests.eval_helpers import one_thread, tiny_checkpoint
from tests.test_finetune import write_polarity
from tests.train_helpers import REPO, env, records

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    ckpt = tiny_checkpoint(d)
    return ckpt, write_polarity(d / "train.csv", 160, 7), write_polarity(d / "dev.csv", 40, 8)


def cmd(data, out, *extra):
    ckpt, train, dev = data
    return ["finetune", str(ckpt), "--task", "classification", "--train", str(train), "--dev", str(dev),
            "--out", str(out), "--lr", "1e-3", "--max-steps", "24", "--eval-every", "4", "--patience", "0",
            "--batch-tokens", "256", "--max-length", "32", "--precision", "fp32", "--no-progress",
            "--set", "checkpoint_every=3", *extra]


def test_same_command_twice_same_dev_metric(data, tmp_path):
    assert main(cmd(data, tmp_path / "a")) == 0
    assert main(cmd(data, tmp_path / "b")) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    assert a["training"]["dev_history"] == b["training"]["dev_history"] and a["dev"] == b["dev"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_kill_9_then_the_same_command_matches_an_uninterrupted_run(data, tmp_path):
    assert main(cmd(data, tmp_path / "whole")) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mmbert.cli", *cmd(data, out)], env=env(1), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(r.get("event") == "checkpoint" and r["step"] >= 9 for r in records(out)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "results.json").exists()
    killed_at = max(r["step"] for r in records(out) if "event" not in r or r["event"] == "checkpoint")
    assert killed_at < 24
    assert main(cmd(data, out)) == 0  # the same command continues
    whole, resumed = (json.loads((tmp_path / x / "results.json").read_text()) for x in ("whole", "killed"))
    assert resumed["training"]["resumed_from"] is not None and resumed["training"]["resumed_from"] >= 9
    assert resumed["training"]["dev_history"] == whole["training"]["dev_history"]
    assert resumed["dev"] == whole["dev"]
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_resume_with_other_settings_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cmd(data, out, "--set", "max_bad_steps=1", "--set", "lr=1e9")) == 1  # diverges, checkpoints, stops
    capsys.readouterr()
    assert main(cmd(data, out, "--set", "max_bad_steps=1", "--set", "lr=1e-3")) == 1
    assert "written with other settings (lr differ)" in capsys.readouterr().err


class NanAt:
    """The classification task with a NaN loss on the given 1-based steps (one micro-batch per step)."""

    def __init__(self, steps):
        self.base, self.steps, self.calls = get_task("classification"), set(steps), 0
        self.name = "nan-test"

    def __getattr__(self, name):
        return getattr(self.base, name)

    def loss(self, model, batch, device):
        self.calls += 1
        loss = self.base.loss(model, batch, device)
        return loss * float("nan") if self.calls in self.steps else loss


def features(n=64):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 500, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist(),
             "label": i % 2} for i in range(n)]


def test_non_finite_steps_are_skipped_and_counted(data, tmp_path):
    from mmbert.model import MmBertForSequenceClassification

    model = MmBertForSequenceClassification.from_pretrained(data[0], num_labels=2)
    cfg = FinetuneConfig(max_steps=8, epochs=100, batch_tokens=64, micro_batch_tokens=64, progress=False,
                         precision="fp32", max_bad_steps=3, lr=1e-3)
    task = NanAt({2, 5})
    r = fit(model, features(), task, cfg, tmp_path / "run")
    assert r.completed and r.steps == 8 and r.skipped_steps == 2
    rs = records(tmp_path / "run")
    assert [x["step"] for x in rs if x.get("event") == "skip"] == [2, 5]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_of_non_finite_steps_stops_with_a_clear_message(data, tmp_path, monkeypatch, capsys):
    task = get_task("classification")
    monkeypatch.setattr(type(task), "loss", lambda self, m, b, d: torch.tensor(float("nan"), requires_grad=True))
    assert main(cmd(data, tmp_path / "nan", "--set", "max_bad_steps=3")) == 1
    err = capsys.readouterr().err
    assert "3 consecutive steps with a non-finite loss or gradient" in err and "lower lr" in err
    assert (tmp_path / "nan" / "checkpoints").is_dir()  # resumable after fixing the cause


def test_accumulated_micro_batches_equal_one_batch(data):
    """optimizer_step over 3 micro-batches gives the gradient of the mean loss over all units at once."""
    from mmbert.model import MmBertForSequenceClassification
    from mmbert.train.step import optimizer_step

    feats, task = features(12), get_task("classification")
    runs = []
    for split in ([feats], [feats[:3], feats[3:8], feats[8:]]):
        torch.manual_seed(0)
        model = MmBertForSequenceClassification.from_pretrained(data[0], num_labels=2).train()
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is minus the gradient
        r = optimizer_step(model, opt, [task.collate(f) for f in split], task, device=torch.device("cpu"),
                           grad_clip=0.0)
        runs.append((r, {k: before[k] - v.detach() for k, v in model.named_parameters()}))
    (one, g1), (three, g3) = runs
    assert one.units == three.units == 12 and one.tokens == three.tokens
    assert abs(one.loss - three.loss) < 1e-6
    worst = max(float((g1[k] - g3[k]).abs().max()) for k in g1)
    assert worst < 1e-6, worst
    assert float(g1["classifier.weight"].abs().max()) > 0


def test_two_processes_follow_one(data, tmp_path):
    """torchrun with 2 gloo ranks: the same global batches, the same per-step losses as one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--set", "log_every=1", "--max-steps", "6")
    assert main(cmd(data, one, *extra)) == 0
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmbert.cli",
           *cmd(data, two, *extra)]
    r = subprocess.run(run, env=env(1), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    l1, l2 = ({x["step"]: x["loss"] for x in records(d) if "event" not in x} for d in (one, two))
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5, 6]
    diffs = [abs(l1[s] - l2[s]) for s in l1]
    assert max(diffs) < 1e-5, f"max diff {max(diffs):.3g} mean {sum(diffs) / len(diffs):.3g}"
    assert (two / "results.json").is_file() and (two / "config.json").is_file()
