"""The shipped tiny recipe on the shipped corpus: every phase and variant runs, languages are added between
phases, and the log holds per-language held-out losses."""

from mmbert.recipe.training import train
from mmbert.train import load_config
from mmbert.train import train as train_only
from tests.train_helpers import SYNTHETIC, records, write_config


def test_train_tiny_config_runs_all_phases(tmp_path):
    overrides = ["phases.0.steps=2", "phases.1.steps=1", "phases.2.steps=1", "micro_batch_tokens=512",
                 "phases.0.batch_tokens=512", "phases.1.batch_tokens=512", "phases.2.batch_tokens=512",
                 "eval.max_tokens_per_language=32", "progress=false"]
    result = train("configs/train-tiny.yaml", tmp_path / "run", overrides=overrides)
    assert result.completed
    assert set(result.phase_checkpoints) == {"pretrain", "ext"}
    assert set(result.variant_checkpoints) == {"eng", "all"}
    for path in [*result.phase_checkpoints.values(), *result.variant_checkpoints.values()]:
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    rs = records(tmp_path / "run")
    starts = {(r["phase"], r["variant"]): r for r in rs if r.get("event") == "stage_start"}
    n = [starts[("pretrain", None)]["n_languages"], starts[("ext", None)]["n_languages"],
         starts[("decay", "all")]["n_languages"]]
    assert n[0] < n[1] < n[2], f"languages must be added between phases: {n}"
    assert starts[("ext", None)]["global_rope_theta"] == 160_000 and starts[("pretrain", None)]["seq_len"] == 64
    evals = [r for r in rs if r.get("event") == "eval"]
    assert len(evals) == 4 and len(evals[0]["heldout"]) > 400
    assert evals[0]["heldout_mean_inactive"] is not None  # languages not yet trained are measured too


def test_a_phase_batch_smaller_than_the_micro_batch_runs_at_its_own_size(tmp_path):
    """micro_batch_tokens caps a micro-batch; a phase whose global batch is smaller (the miniature's decay at
    2,048 tokens beside 4,096) trains at its own batch instead of failing on the cap."""
    text = SYNTHETIC.replace("micro_batch_tokens: 128", "micro_batch_tokens: 512").replace(
        "checkpoint: {every: 2, keep_last: 2}", "checkpoint: {every: 0}")
    cfg = load_config(write_config(tmp_path, text), ["phases.1.batch_tokens=128", "phases.1.steps=2"])
    assert train_only(cfg, tmp_path / "run").completed
    steps = [r for r in records(tmp_path / "run") if "event" not in r]
    assert {r["batch_tokens"] for r in steps if r["phase"] == "a"} == {256}
    b = [r for r in steps if r["phase"] == "b"]
    assert len(b) == 2 and {r["batch_tokens"] for r in b} == {128}
    assert all(0 < r["predicted"] <= 0.3 * 128 for r in b)
