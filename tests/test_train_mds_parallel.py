"""Training on MDS shards: two gloo processes (torchrun) follow the same loss trajectory as one process.

The data pipeline's batches are a function of (seed, global worker, batch index) with G = world_size x
workers global workers; one process with 2 loader workers and two processes with none have the same
G = 2, and gradient accumulation in the one process takes the micro-batches the two ranks take in one step."""

import subprocess
import sys

from tests.test_data_mds import FIXTURES, fixture_tokenizer
from tests.train_helpers import REPO, env, losses, run_train, write_config

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


def test_two_processes_reading_mds_match_one(tmp_path):
    tok = tmp_path / "tokenizer.json"
    fixture_tokenizer().backend.save(str(tok))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("languages:\n" + "".join(f"  {lang}: [{FIXTURES / lang}]\n" for lang in ("eng_Latn", "fra_Latn", "deu_Latn")))
    config = write_config(tmp_path, CONFIG.format(tokenizer=tok, manifest=manifest))
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
