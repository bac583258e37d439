"""Faults: NaN steps are skipped and logged, too many stop the run with a checkpoint; SIGTERM checkpoints."""

import json
import signal
import subprocess
import time

import torch

from mmbert import MmBertForMaskedLM, ModelConfig
from mmbert.train import load_config, train
from mmbert.train.optim import param_groups
from mmbert.train.trainer import set_rope
from tests.train_helpers import REPO, env, records, run_train, train_cmd, write_config

ONE_PHASE = """
seed: 0
model: {preset: tiny}
data: {synthetic: true, synthetic_languages: 3}
micro_batch_tokens: 128
precision: fp32
progress: false
max_bad_steps: 2
checkpoint: {every: 0}
eval: {at_phase_end: false}
phases:
  - {name: a, steps: 8, seq_len: 32, batch_tokens: 128}
"""


def test_nan_steps_are_skipped_then_the_run_stops_with_a_checkpoint(tmp_path, monkeypatch):
    original = MmBertForMaskedLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if calls["n"] in (2, 4, 5) and self.training:  # steps 3, 5 and 6
            out.loss = out.loss * float("nan")
        calls["n"] += 1
        return out

    monkeypatch.setattr(MmBertForMaskedLM, "forward", forward)
    cfg = load_config(write_config(tmp_path, ONE_PHASE))
    result = train(cfg, tmp_path / "run")
    assert result.stopped == "bad_steps" and "2 consecutive" in result.message
    rs = records(tmp_path / "run")
    assert [r["step"] for r in rs if r.get("event") == "skip"] == [3, 5, 6]
    assert [r["step"] for r in rs if "event" not in r] == [1, 2, 4]
    ckpt = result.last_checkpoint
    assert ckpt.name == "step-00000006" and (ckpt / "model.safetensors").is_file()
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert opt["state"][0]["step"].item() == 3  # only the finite steps updated the weights
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["bad_steps"] == 2 and state["step"] == 6


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path):
    config = write_config(tmp_path, ONE_PHASE.replace("steps: 8", "steps: 40"))
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(config, out), env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any("event" not in r for r in records(out)):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130, proc.stderr.read()
    stop = [r for r in records(out) if r.get("event") == "stop"]
    assert stop and stop[0]["reason"] == "signal" and stop[0]["step"] < 40
    assert (out / "a" / "checkpoints" / f"step-{stop[0]['step']:08d}" / "trainer_state.json").is_file()
    r = run_train(config, out, "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "a" / "final" / "model.safetensors").is_file()


def test_context_extension_changes_thetas_not_weights():
    torch.manual_seed(0)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny", global_rope_theta=10_000.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(5, 512, (1, 40))
    y0 = model(ids).logits
    set_rope(model, 160_000.0, 160_000.0, seq_len=2048)
    assert model.config.global_rope_theta == model.model.config.global_rope_theta == 160_000.0
    assert model.model.config.local_rope_theta == 160_000.0 and model.config.max_position_embeddings == 2048
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.allclose(model(ids).logits, y0)  # the positions are now encoded differently


def test_no_weight_decay_on_norms_biases_embeddings():
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    decay, other = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert all(p.ndim == 2 and "norm" not in names[id(p)] and "embeddings" not in names[id(p)]
               for p in decay["params"])
    other_names = {names[id(p)] for p in other["params"]}
    assert "model.embeddings.tok_embeddings.weight" in other_names and "decoder.bias" in other_names
    assert len(decay["params"]) + len(other["params"]) == len(list(model.parameters()))
