"""Reliability of a run directory: one writer (lock), corrupt checkpoints (fallback, errors that name the
file), a full disk, torn metrics lines, leftovers of killed writes, thread count on resume."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmbert import MmBertForMaskedLM, ModelConfig
from mmbert.model.checkpoint import CHECKSUMS_NAME, CheckpointError, read_safetensors
from mmbert.train import checkpoint as ckpt
from mmbert.train import load_config, train
from mmbert.train.metrics import MetricsLog, read_metrics_records
from mmbert.train.rundir import RunDirLocked, hold_run_dir
from tests.train_helpers import REPO, SYNTHETIC, env, losses, records, run_train, train_cmd, write_config

ONE_PHASE = """
seed: 0
model: {preset: tiny}
data: {synthetic: true, synthetic_languages: 3}
micro_batch_tokens: 128
precision: fp32
progress: false
checkpoint: {every: 2, keep_last: 2}
eval: {at_phase_end: false}
phases:
  - {name: a, steps: 8, seq_len: 32, batch_tokens: 128}
"""


# ---- one writer per run directory -------------------------------------------------------------------------
def _wait_for_step(proc, out: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not any("event" not in r for r in records(out)):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert any("event" not in r for r in records(out)), "the first run logged no step in time"


def test_second_run_on_a_locked_directory_stops_and_names_the_holder(tmp_path):
    config = write_config(tmp_path, ONE_PHASE.replace("steps: 8", "steps: 5000"))
    out = tmp_path / "run"
    first = subprocess.Popen(train_cmd(config, out), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(first, out)
        for extra in ([], ["--resume"]):
            second = run_train(config, out, *extra, timeout=60)
            assert second.returncode == 1, second.stderr
            assert f"in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first run is untouched and still training
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    steps = [r["step"] for r in records(out) if "event" not in r]
    assert steps == sorted(set(steps))  # one writer: no step logged twice
    # the dead holder's lock is taken over without any manual cleanup
    done = max([int(p.name[5:]) for p in ckpt.list_checkpoints(out / "a" / "checkpoints")], default=0)
    third = run_train(config, out, "--resume", "--set", f"phases.0.steps={done + 2}")
    assert third.returncode == 0, third.stderr
    assert (out / "a" / "final" / "model.safetensors").is_file()
    with hold_run_dir(out):
        info = json.loads((out / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"]


def test_recipe_holds_its_directory(tmp_path):
    run_dir = tmp_path / "recipe"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmbert.train.rundir import hold_run_dir\n"
                               f"with hold_run_dir({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              env=env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from mmbert.recipe import run_recipe

        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid}"):
            run_recipe(REPO / "configs" / "miniature.yaml", run_dir, quick=True)
    finally:
        holder.kill()
        holder.wait(10)
    assert not (run_dir / "train").exists()  # nothing was written


def test_lock_is_reentrant_in_one_process(tmp_path):
    with hold_run_dir(tmp_path / "r"):
        with hold_run_dir(tmp_path / "r"):
            pass
        # still held after the inner block: another process cannot take it
        r = subprocess.run([sys.executable, "-c", "from mmbert.train.rundir import hold_run_dir\n"
                            f"with hold_run_dir({str(tmp_path / 'r')!r}): pass"], env=env(), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "RunDirLocked" in r.stderr


# ---- corrupt checkpoints ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A two-phase synthetic run trained to the end (phase b keeps step-10 and step-12)."""
    root = tmp_path_factory.mktemp("clean")
    cfg = load_config(write_config(root))
    train(cfg, root / "run")
    assert [p.name for p in ckpt.list_checkpoints(root / "run" / "b" / "checkpoints")] == ["step-00000010", "step-00000012"]
    return root


def _flip(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated weights": lambda c: _truncate(c / "model.safetensors"),
    "bit flip in weights": lambda c: _flip(c / "model.safetensors"),
    "truncated optimizer": lambda c: _truncate(c / "optimizer.pt"),
    "truncated trainer state": lambda c: _truncate(c / "trainer_state.json"),
    "missing weights": lambda c: (c / "model.safetensors").unlink(),
}


def _resume_without_final(finished_run: Path, tmp_path: Path, corrupt) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    shutil.rmtree(run / "b" / "final")
    newest = run / "b" / "checkpoints" / "step-00000012"
    corrupt(newest)
    return run, newest


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_falls_back_past_a_corrupt_checkpoint_bit_identically(finished_run, tmp_path, caplog, kind):
    run, newest = _resume_without_final(finished_run, tmp_path, CORRUPTIONS[kind])
    cfg = load_config(write_config(tmp_path))
    with caplog.at_level(logging.WARNING):
        result = train(cfg, run, resume=True)
    assert result.completed
    assert f"checkpoint {newest} is unusable" in caplog.text and "step-00000010" in caplog.text
    clean = finished_run / "run" / "b" / "final" / "model.safetensors"
    a, b = read_safetensors(run / "b" / "final"), read_safetensors(clean.parent)
    for k in b:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max():.3g}"
    want, got = losses(finished_run / "run"), losses(run)
    for step in (11, 12, 13, 14):  # trained again after the fallback, the same as the first time
        assert got[step] == [want[step][0]] * len(got[step]) and len(got[step]) == 2, (step, got[step], want[step])


def test_every_checkpoint_corrupt_stops_with_the_file_named(finished_run, tmp_path):
    run, newest = _resume_without_final(finished_run, tmp_path, CORRUPTIONS["bit flip in weights"])
    _truncate(run / "b" / "checkpoints" / "step-00000010" / "optimizer.pt")
    with pytest.raises(CheckpointError, match=f"no usable checkpoint .*{newest / 'model.safetensors'}"):
        train(load_config(write_config(tmp_path)), run, resume=True)


def test_checkpoint_without_checksums_loads_unverified(finished_run, tmp_path, caplog):
    run, newest = _resume_without_final(finished_run, tmp_path, lambda c: (c / CHECKSUMS_NAME).unlink())
    with caplog.at_level(logging.WARNING):
        assert train(load_config(write_config(tmp_path)), run, resume=True).completed
    assert f"checkpoint {newest} has no {CHECKSUMS_NAME}" in caplog.text and "unusable" not in caplog.text


def test_every_loader_error_names_the_file(finished_run, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(finished_run / "run" / "b" / "final", final)
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["num_threads"] == torch.get_num_threads()
    assert json.loads((final / CHECKSUMS_NAME).read_text())["algorithm"] == "sha256"
    _flip(final / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{final / 'model.safetensors'}: SHA-256 differs"):
        MmBertForMaskedLM.from_pretrained(final)  # embed, fill-mask, serve and export load through here
    (final / CHECKSUMS_NAME).unlink()  # a foreign or old directory: the safetensors error itself is named
    _truncate(final / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{final / 'model.safetensors'}: cannot read the weights"):
        MmBertForMaskedLM.from_pretrained(final)
    (final / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"no model.safetensors in {final}"):
        MmBertForMaskedLM.from_pretrained(final)
    _truncate(final / "optimizer.pt")
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    with pytest.raises(CheckpointError, match=f"{final / 'optimizer.pt'}: unreadable optimizer state"):
        ckpt.load_optimizer(final, model, torch.optim.AdamW(model.parameters()))
    _truncate(final / "trainer_state.json")
    with pytest.raises(CheckpointError, match=f"{final / 'trainer_state.json'}: unreadable trainer state"):
        ckpt.read_trainer_state(final)


def test_resume_under_another_thread_count_warns(caplog):
    state = {"world_size": 1, "num_threads": torch.get_num_threads() + 1, "data": [None],
             "rng": [ckpt.rng_state()]}
    with caplog.at_level(logging.WARNING):
        ckpt.restore_rank_state(state, 0, 1)
    assert f"written with {torch.get_num_threads() + 1} torch threads" in caplog.text


def test_temporaries_of_killed_writes_are_removed_on_resume(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    leftovers = [run / "a" / "checkpoints" / ".step-00000004.tmp-k1ll3d", run / "b" / ".final.tmp-abc_12",
                 run / "b" / ".final.old-4242"]
    for d in leftovers:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    assert train(load_config(write_config(tmp_path)), run, resume=True).completed
    assert not any(d.exists() for d in leftovers)
    assert (run / "b" / "final" / "model.safetensors").is_file()


# ---- a full disk --------------------------------------------------------------------------------------------
def test_disk_full_is_one_line_a_stop_event_and_resumable(tmp_path, monkeypatch, capsys):
    from mmbert import cli
    from mmbert.train import checkpoint as train_ckpt

    config = write_config(tmp_path, ONE_PHASE)
    out = tmp_path / "run"
    original = train_ckpt.save_file

    def full(tensors, filename, metadata=None):
        if "step-00000004" in filename:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(train_ckpt, "save_file", full)
    assert cli.main(["train", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    step4 = out / "a" / "checkpoints" / "step-00000004"
    assert err[-1] == f"mmbert train: error: disk full while writing {step4}: free space and --resume"
    stop = [r for r in records(out) if r.get("event") == "stop"]
    assert stop and stop[-1]["reason"] == "disk_full" and stop[-1]["step"] == 4
    assert not step4.exists() and not [p for p in step4.parent.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(train_ckpt, "save_file", original)
    assert cli.main(["train", str(config), "--out", str(out), "--resume"]) == 0
    assert (out / "a" / "final" / "model.safetensors").is_file()


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A tmpfs too small for the third checkpoint: needs root and permission to mount."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        config = write_config(tmp_path, ONE_PHASE.replace("steps: 8", "steps: 20").replace("keep_last: 2", "keep_last: 9"))
        r = subprocess.run([sys.executable, "-m", "mmbert.cli", "train", str(config), "--out", str(mnt / "run")],
                           env=env(), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"mmbert train: error: disk full while writing {mnt / 'run'}") and \
            last.endswith("free space and --resume"), r.stderr
        assert "Traceback" not in r.stderr
        saved = tmp_path / "moved"
        shutil.copytree(mnt / "run", saved)  # "free space": the state on the full disk resumes elsewhere
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert [r for r in records(saved) if r.get("event") == "stop"][-1]["reason"] == "disk_full"
    resumed = run_train(config, saved, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (saved / "a" / "final" / "model.safetensors").is_file()


# ---- metrics.jsonl ------------------------------------------------------------------------------------------
def test_a_torn_last_metrics_line_is_skipped_by_readers_and_cut_by_the_writer(tmp_path, caplog):
    from mmbert.recipe.report import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0, "phase": "a"}\n{"event": "stage_start", "step": 1}\n{"step": 2, "lo')
    with caplog.at_level(logging.WARNING):
        steps, events = read_metrics(path)  # what `mmbert run`'s report reads
    assert [s["step"] for s in steps] == [1] and len(events) == 1
    assert f"{path}:3: torn last line" in caplog.text
    log = MetricsLog(tmp_path)
    log.write({"step": 2, "loss": 1.5, "phase": "a"})
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert [r.get("step") for r in read_metrics_records(path)] == [1, 1, 2]


def test_tiny_preset_takes_the_tokenizers_vocabulary():
    from mmbert.tokenizer import Tokenizer

    tok = Tokenizer.default()
    config = ModelConfig.from_preset("tiny", tokenizer=tok)
    assert config.vocab_size == tok.vocab_size > ModelConfig.from_preset("tiny").vocab_size
    assert (config.mask_token_id, config.pad_token_id) == (tok.mask_id, tok.pad_id)
    ids = torch.tensor([tok.encode_batch(["Hello, world! Ünïcödé 漢字"], add_special_tokens=True)[0]])
    assert MmBertForMaskedLM(config)(ids).logits.shape[-1] == tok.vocab_size


def test_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked children; one that outlives a kill -9 of its trainer must not keep the
    directory locked against the --resume (CI saw this with flock, which children inherit)."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from mmbert.train.rundir import hold_run_dir\n"
        f"with hold_run_dir({str(run_dir)!r}):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLocked):
            with hold_run_dir(run_dir):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with hold_run_dir(run_dir):  # the orphaned child still runs, but holds nothing
            pass
    finally:
        holder.kill()
        subprocess.run(["pkill", "-f", f"hold_run_dir\\({str(run_dir)!r}"], check=False)
