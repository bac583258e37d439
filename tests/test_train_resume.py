"""Exact resume: SIGKILL a training process after a checkpoint, resume, and get the uninterrupted losses."""

import signal
import subprocess
import time

import torch
from safetensors.torch import load_file

from tests.conftest import assert_close
from tests.train_helpers import REPO, env, losses, records, run_train, train_cmd, write_config


def test_sigkill_then_resume_repeats_the_uninterrupted_losses(tmp_path):
    config = write_config(tmp_path)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    victim = subprocess.Popen(train_cmd(config, killed_dir), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    clean = subprocess.Popen(train_cmd(config, clean_dir), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        # kill inside phase b, after its first mid-phase checkpoint and after at least one more step, so
        # the resume restores data position, optimizer, RNG and counters mid-phase and replays steps
        # the victim is frozen (SIGSTOP) while we check, so a checkpoint cannot land between check and kill
        def ready() -> bool:
            rs = records(killed_dir)
            ckpts = [r["step"] for r in rs if r.get("event") == "checkpoint" and r["step"] >= 8]
            return bool(ckpts) and any("event" not in r and r["step"] > max(ckpts) for r in rs)

        while time.time() < deadline:
            assert victim.poll() is None, f"finished before it could be killed: {victim.stderr.read()}"
            if ready():
                victim.send_signal(signal.SIGSTOP)
                if ready():
                    break
                victim.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        victim.kill()
    assert not (killed_dir / "b" / "final").exists()
    assert clean.wait(120) == 0, clean.stderr.read()

    resumed = run_train(config, killed_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    want, got = losses(clean_dir), losses(killed_dir)
    assert sorted(want) == list(range(1, 15)) and sorted(got) == sorted(want)
    replayed = [s for s, v in got.items() if len(v) > 1]
    for step, values in got.items():
        for v in values:  # every logged value, before the kill and after the resume
            assert v == want[step][0], f"step {step}: loss {v!r} != uninterrupted {want[step][0]!r}"
    assert replayed, "no step was computed both before the kill and after the resume"
    a, b = load_file(killed_dir / "b" / "final" / "model.safetensors"), load_file(clean_dir / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert_close(a[k], b[k], 0.0, k)
    opt_a = torch.load(killed_dir / "b" / "final" / "optimizer.pt", weights_only=True)
    assert opt_a["state"][0]["step"].item() == 14  # AdamW state carried over both phases and the resume


def test_resume_without_flag_refuses_to_overwrite(tmp_path):
    config = write_config(tmp_path, name="c.yaml")
    out = tmp_path / "run"
    (out / "a" / "checkpoints").mkdir(parents=True)
    (out / "a" / "checkpoints" / "x").mkdir()
    r = run_train(config, out)
    assert r.returncode == 1 and "--resume" in r.stderr
