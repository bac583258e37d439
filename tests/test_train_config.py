"""Training config: YAML -> dataclasses, errors naming key and file, --set overrides, variants."""

import pytest

from mmbert.train.config import ConfigError, describe, load_config

BASE = """
data: {synthetic: true}
phases:
  - {name: a, steps: 2, batch_tokens: 512, seq_len: 32}
  - name: b
    steps: 2
    batch_rows: 4
    seq_len: 64
    languages: {mmbert: ext}
    sizes: mmbert
    lr: {decay: cosine, decay_fraction: 1.0}
    variants: [{name: eng, languages: {mmbert: decay-eng}, sizes_phase: decay-eng}, {name: all, tau: 0.3}]
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_and_types(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    a, b = cfg.phases
    assert a.global_batch_tokens == 512 and b.global_batch_tokens == 256
    assert b.lr.decay == "cosine" and cfg.optimizer.betas == (0.9, 0.98)
    assert [v["name"] for v in b.variants] == ["eng", "all"]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, BASE.replace("seq_len: 64", "seq_len: 64\n    mask_ration: 0.2"))
    with pytest.raises(ConfigError, match=r"phases\.1\.mask_ration.*c\.yaml"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'optimiser'.*c\.yaml"):
        load_config(write(tmp_path, BASE + "optimiser: {lr: 1}\n"))


def test_missing_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'phases.0.name'"):
        load_config(write(tmp_path, "data: {synthetic: true}\nphases: [{steps: 1, batch_tokens: 8}]\n"))
    with pytest.raises(ConfigError, match=r"exactly one of steps / tokens"):
        load_config(write(tmp_path, "data: {synthetic: true}\nphases: [{name: a, batch_tokens: 8}]\n"))
    with pytest.raises(ConfigError, match=r"phases.0.mask_ratio.*integer|number"):
        load_config(write(tmp_path, "data: {synthetic: true}\nphases: [{name: a, steps: 1, batch_tokens: 8, mask_ratio: x}]\n"))
    with pytest.raises(ConfigError, match=r"mmbert: must be one of"):
        load_config(write(tmp_path, BASE.replace("{mmbert: ext}", "{mmbert: phase2}")))
    with pytest.raises(ConfigError, match=r"variants.*only the last phase"):
        load_config(write(tmp_path, BASE.replace("  - {name: a, steps: 2, batch_tokens: 512, seq_len: 32}",
                                                 "  - {name: a, steps: 2, batch_tokens: 512, variants: [{name: v}]}")))


def test_set_overrides_validated(tmp_path):
    p = write(tmp_path, BASE)
    cfg = load_config(p, ["phases.0.steps=5", "optimizer.lr=1e-3", "phases.1.languages=[eng_Latn]", "phases.1.sizes=corpus"])
    assert cfg.phases[0].steps == 5 and cfg.optimizer.lr == 1e-3 and cfg.phases[1].languages == ["eng_Latn"]
    with pytest.raises(ConfigError, match=r"phases.0.stepz"):
        load_config(p, ["phases.0.stepz=5"])
    with pytest.raises(ConfigError, match=r"not an index"):
        load_config(p, ["phases.7.steps=5"])


def test_variant_overrides_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"phases.1.variants.1.taux"):
        load_config(write(tmp_path, BASE.replace("tau: 0.3", "taux: 0.3")))


def test_shipped_configs_load_and_every_field_documented():
    tiny = load_config("configs/train-tiny.yaml")
    assert [p.name for p in tiny.phases] == ["pretrain", "ext", "decay"]
    full = load_config("configs/mmbert-base-full.yaml")
    assert sum(p.tokens for p in full.phases[:2]) == 2_900_000_000_000
    text = describe()
    assert "mask_ratio:" in text and "variants:" in text


def test_optimizer_kernel_and_threads(tmp_path):
    from mmbert.model import MmBertForMaskedLM, ModelConfig
    from mmbert.train.optim import build_optimizer

    cfg = load_config(write(tmp_path, BASE))
    assert cfg.optimizer.kernel == "fused" and cfg.threads == 0
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    assert build_optimizer(model, cfg.optimizer).defaults["fused"] is True
    loop = load_config(write(tmp_path, BASE), ["optimizer.kernel=for-loop"]).optimizer
    assert build_optimizer(model, loop).defaults["foreach"] is False
    with pytest.raises(ConfigError, match=r"optimizer.kernel.*c\.yaml"):
        load_config(write(tmp_path, BASE), ["optimizer.kernel=fastest"])
    with pytest.raises(ConfigError, match=r"threads"):
        load_config(write(tmp_path, BASE), ["threads=-1"])
