"""The full-size configs carry mmBERT's released hyper-parameters (JHU-CLSP/mmBERT configs/*.yaml)."""

import pytest

from mmbert.data import load_manifest
from mmbert.train.config import load_config

# (phase, tokens, seq_len, mask_ratio, theta, batch_rows) as released; base pretraining mask 0.25 as in
# configs/mmBERT-base.yaml (see the comment in the config for the choice)
RELEASED = {
    "base": [("pretrain", 2.3e12, 1024, 0.25, 10_000, 4608), ("ext", 6e11, 8192, 0.15, 160_000, 4608),
             ("decay", 1e11, 8192, 0.05, None, 4608)],
    "small": [("pretrain", 2.3e12, 1024, 0.30, 10_000, 4608), ("ext", 6e11, 8192, 0.15, 160_000, 4608),
              ("decay", 1e11, 8192, 0.05, None, 4608)],
}


@pytest.mark.parametrize("size", ["base", "small"])
def test_released_numbers(size):
    cfg = load_config(f"configs/mmbert-{size}-full.yaml")
    o = cfg.optimizer
    assert (o.name, o.lr, o.betas, o.eps, o.weight_decay, o.grad_clip) == ("decoupled_stableadamw", 8e-4, (0.9, 0.95), 1e-8, 8e-5, 0.0)
    assert cfg.model.preset == f"mmbert-{size}"
    for p, (name, tokens, seq_len, mask, theta, rows) in zip(cfg.phases, RELEASED[size]):
        assert (p.name, p.tokens, p.seq_len, p.mask_ratio, p.global_rope_theta, p.local_rope_theta, p.batch_rows) == (
            name, tokens, seq_len, mask, theta, theta, rows)
    pre, ext, dec = cfg.phases
    assert pre.batch_warmup_start * 4608 == pytest.approx(48, abs=1e-3)  # batch-size warm-up from 48 sequences
    warm_tokens = {"base": 3e9, "small": 4e9}[size]
    assert pre.lr.warmup * pre.tokens == pytest.approx(warm_tokens, rel=1e-4)
    assert pre.batch_warmup * pre.tokens == pytest.approx({"base": 60e9, "small": 100e9}[size], rel=1e-4)
    if size == "base":  # 8e-4 throughout, 1-sqrt to 0.02 of peak over the last 100B
        assert ext.lr.peak is None and (dec.lr.peak, dec.lr.decay, dec.lr.decay_fraction, dec.lr.floor) == (None, "inv_sqrt", 1.0, 0.02)
    else:  # 4e-4 after pretraining, linear WSD decay to 0.04
        assert ext.lr.peak == 4e-4 and (dec.lr.peak, dec.lr.decay, dec.lr.floor) == (4e-4, "linear", 0.04)


@pytest.mark.parametrize("template", ["mmbert-published", "mmbert-published-midtraining", "mmbert-published-decay"])
def test_published_manifest_templates_parse(tmp_path, template):
    m = tmp_path / "manifest.yaml"
    m.write_text(open(f"configs/{template}.manifest.yaml").read())
    man = load_manifest(m)  # nothing downloaded: every path is a recorded problem, not an error
    assert {r for r, _, _ in man.problems} == {"missing_path"} and not man.languages


@pytest.mark.parametrize("size", ["base", "small"])
def test_each_phase_reads_its_published_dataset(size):
    """Pretraining, mid-training and decay data are separate published datasets."""
    cfg = load_config(f"configs/mmbert-{size}-full.yaml")
    assert cfg.data.manifest.endswith("pretrain.manifest.yaml")
    assert [p.manifest for p in cfg.phases] == [None, "corpora/mmbert-published/midtraining.manifest.yaml",
                                                "corpora/mmbert-published/decay.manifest.yaml"]
