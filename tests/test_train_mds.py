"""Training on MDS shards: two gloo processes (torchrun) follow the same loss trajectory as one process,
and a run killed with SIGKILL (2 loader workers, StableAdamW) resumes to the uninterrupted losses.

The data pipeline's batches are a function of (seed, global worker, batch index) with G = world_size x
workers global workers; one process with 2 loader workers and two processes with none have the same
G = 2, and gradient accumulation in the one process takes the micro-batches the two ranks take in one step."""

import signal
import subprocess
import sys
import time

from tests.test_data_mds import FIXTURES, fixture_tokenizer
from tests.train_helpers import REPO, env, losses, records, run_train, train_cmd, write_config

CONFIG = """
seed: 0
model: {{preset: tiny}}
tokenizer: {tokenizer}
data: {{manifest: {manifest}, num_workers: 0}}
micro_batch_tokens: 64
precision: fp32
progress: false
parallel: ddp
optimizer: {{name: decoupled_stableadamw, lr: 3.0e-3, betas: [0.9, 0.95], eps: 1.0e-8, weight_decay: 8.0e-5, grad_clip: 0.0}}
checkpoint: {{every: 0}}
eval: {{at_phase_end: false}}
phases:
  - {{name: a, steps: 3, mask_ratio: 0.3, tau: 0.7, seq_len: 16, batch_tokens: 128, lr: {{warmup: 0.3}}}}
  - {{name: b, steps: 2, mask_ratio: 0.15, tau: 0.5, seq_len: 32, batch_tokens: 128, global_rope_theta: 160000}}
"""


def mds_config(tmp_path, text=CONFIG):
    tok = tmp_path / "tokenizer.json"
    fixture_tokenizer().backend.save(str(tok))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("languages:\n" + "".join(f"  {lang}: [{FIXTURES / lang}]\n" for lang in ("eng_Latn", "fra_Latn", "deu_Latn")))
    return write_config(tmp_path, text.format(tokenizer=tok, manifest=manifest))


def test_two_processes_reading_mds_match_one(tmp_path):
    config = mds_config(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_train(config, one, "--set", "data.num_workers=2", timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mmbert.train", str(config), "--out", str(two)]
    r2 = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
    diffs = [abs(l1[s][0] - l2[s][0]) for s in l1]
    assert max(diffs) < 1e-5, f"max diff {max(diffs):.3g} mean {sum(diffs) / len(diffs):.3g}: {l1} vs {l2}"


def test_sigkill_then_resume_with_workers_repeats_the_uninterrupted_losses(tmp_path):
    text = CONFIG.replace("num_workers: 0", "num_workers: 2").replace("checkpoint: {{every: 0}}", "checkpoint: {{every: 2, keep_last: 2}}")
    text = text.replace("steps: 2, mask_ratio: 0.15", "steps: 6, mask_ratio: 0.15")
    config = mds_config(tmp_path, text)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    victim = subprocess.Popen(train_cmd(config, killed_dir), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    clean = subprocess.Popen(train_cmd(config, clean_dir), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240

    def ready() -> bool:  # inside phase b, after a mid-phase checkpoint and one more step
        rs = records(killed_dir)
        ckpts = [r["step"] for r in rs if r.get("event") == "checkpoint" and r["step"] >= 5]
        return bool(ckpts) and any("event" not in r and r["step"] > max(ckpts) for r in rs)

    try:
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
    assert clean.wait(240) == 0, clean.stderr.read()[-3000:]
    resumed = run_train(config, killed_dir, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = losses(clean_dir), losses(killed_dir)
    assert sorted(want) == list(range(1, 10)) and sorted(got) == sorted(want)
    assert any(len(v) > 1 for v in got.values()), "no step was computed both before the kill and after the resume"
    for step, values in got.items():
        for v in values:
            assert v == want[step][0], f"step {step}: loss {v!r} != uninterrupted {want[step][0]!r}"


def test_a_phase_reads_its_own_manifest(tmp_path):
    """mmBERT's pretraining, mid-training and decay data are separate datasets: ``phases[].manifest``
    replaces ``data.manifest`` for that phase, and the phase samples only that manifest's languages."""
    tok = tmp_path / "tokenizer.json"
    fixture_tokenizer().backend.save(str(tok))
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("languages:\n" + "".join(f"  {lang}: [{FIXTURES / lang}]\n" for lang in ("eng_Latn", "fra_Latn")))
    second.write_text(f"languages:\n  deu_Latn: [{FIXTURES / 'deu_Latn'}]\n")
    text = CONFIG.replace("global_rope_theta: 160000}}", f"global_rope_theta: 160000, manifest: {second}}}}}")
    config = write_config(tmp_path, text.format(tokenizer=tok, manifest=first))
    r = run_train(config, tmp_path / "run", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    starts = {rec["phase"]: rec["languages"] for rec in records(tmp_path / "run") if rec.get("event") == "stage_start"}
    assert starts == {"a": ["eng_Latn", "fra_Latn"], "b": ["deu_Latn"]}
