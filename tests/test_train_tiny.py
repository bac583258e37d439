"""The shipped tiny recipe on the shipped corpus: every phase and variant runs, languages are added between
phases, and the log holds per-language held-out losses."""

from mmbert.recipe.training import train
from tests.train_helpers import records


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
