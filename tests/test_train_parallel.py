"""Two gloo processes (torchrun) follow the same loss trajectory as one process with the same global batch."""

import subprocess
import sys

import pytest

from tests.train_helpers import REPO, env, losses, run_train, write_config

CONFIG = """
seed: 0
model: {preset: tiny}
data: {synthetic: true, synthetic_languages: 4}
micro_batch_tokens: 128
precision: fp32
progress: false
parallel: PARALLEL
checkpoint: {every: 0}
eval: {at_phase_end: false}
phases:
  - {name: a, steps: 3, mask_ratio: 0.3, tau: 0.7, seq_len: 32, batch_tokens: 512, lr: {warmup: 0.3}}
  - {name: b, steps: 2, mask_ratio: 0.15, tau: 0.5, seq_len: 64, batch_tokens: 512, global_rope_theta: 160000}
"""


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    config = write_config(tmp_path, CONFIG.replace("PARALLEL", parallel))
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_train(config, one)
    assert r1.returncode == 0, r1.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mmbert.train", str(config), "--out", str(two)]
    r2 = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r2.returncode == 0, r2.stderr[-3000:]
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
    diffs = [abs(l1[s][0] - l2[s][0]) for s in l1]
    assert max(diffs) < 1e-5, f"max diff {max(diffs):.3g} mean {sum(diffs) / len(diffs):.3g}: {l1} vs {l2}"


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_exit_process_flushes_and_skips_the_teardown_only_under_torchrun(world_size):
    code = ("import atexit, logging; from mmbert.train.parallel import exit_process; "
            "atexit.register(lambda: print(' atexit', end='')); "
            "logging.basicConfig(); logging.getLogger('t').warning('logged'); print('written', end=''); exit_process(3)")
    r = subprocess.run([sys.executable, "-c", code], env={**env(), "WORLD_SIZE": world_size}, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "logged" in r.stderr
    assert r.stdout == ("written atexit" if world_size == "1" else "written")  # buffered output is never lost
