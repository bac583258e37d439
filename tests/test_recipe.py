"""The main job end to end: `mmbert run configs/miniature.yaml --quick` (the same pipeline, few steps)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmbert.recipe import load_recipe
from mmbert.recipe.report import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "miniature.yaml"


def test_quick_run_writes_every_artifact_with_finite_numbers(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mmbert.cli", "run", str(CONFIG), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wall time" in proc.stdout
    report = (out / "report.md").read_text()
    for png in ("loss", "schedules", "before_after", "comparison"):
        assert (out / "report" / f"{png}.png").stat().st_size > 5_000, png
        assert f"report/{png}.png" in report
    for stage in ("pretrain/final", "ext/final", "decay/eng/final", "decay/mid/final", "decay/all/final"):
        assert (out / "train" / stage / "model.safetensors").is_file(), stage
    merged_meta = json.loads((out / "merged" / "config.json").read_text())
    assert merged_meta["model_type"] == "modernbert"
    steps, events = read_metrics(out / "train" / "metrics.jsonl")
    assert all(math.isfinite(s["loss"]) for s in steps)
    # languages are added between phases; the mask ratio and tau anneal
    starts = [e for e in events if e["event"] == "stage_start"]
    by_phase = {e["phase"]: e for e in starts if not e.get("variant")}
    assert by_phase["pretrain"]["n_languages"] < by_phase["ext"]["n_languages"]
    assert [by_phase[p]["mask_ratio"] for p in ("pretrain", "ext")] == [0.30, 0.15]
    summary = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in summary["comparison"]]
    assert names[0].startswith("before decay") and names[-1].startswith("merge") and len(names) == 5
    for row in summary["comparison"]:
        assert math.isfinite(row["heldout_all"]) and 0.0 <= row["bitext_all"] <= 1.0
    # the machine's speed before training and after the evaluation, beside the wall time it explains
    machine = summary["machine"]
    assert machine["gflops_before"] > 0 and machine["gflops_after"] > 0 and machine["precision"] in ("bf16", "fp32")
    assert f"{machine['gflops_before']:,.0f} GFLOP/s before training" in report
    for name in ("decay-eng", "merge-TIES"):
        result = json.loads((out / "eval" / f"{name}.json").read_text())
        assert {"fao_Latn", "tir_Ethi"} <= set(result["heldout"]["per_language"])
    # a second start of the same command finishes at once from what is there (resumable)
    again = subprocess.run([sys.executable, "-m", "mmbert.cli", "run", str(CONFIG), "--quick", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "continuing" in again.stdout, again.stderr[-2000:]


def test_recipe_section_is_validated(tmp_path):
    bad = yaml.safe_load(CONFIG.read_text())
    bad["recipe"]["merge"]["densty"] = 0.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="densty"):
        load_recipe(path)
    cfg, recipe = load_recipe(CONFIG, quick=True)
    assert cfg.phases[0].steps == 12 and "fao_Latn" in recipe.evaluate["languages"]


def test_headline_numbers_by_hand():
    """The report's first table: decay-only gain, the share the merge keeps, merge vs best variant per group."""
    from mmbert.recipe.report import headline, headline_table

    group = {"a": "pretrain", "b": "pretrain", "m": "midtrain", "x": "decay", "y": "decay"}.get
    loss = {"before": {"a": 5.0, "b": 5.0, "m": 6.0, "x": 8.0, "y": 9.0},
            "eng": {"a": 4.0, "b": 4.2, "m": 5.9, "x": 7.9, "y": 8.9},
            "all": {"a": 4.4, "b": 4.4, "m": 5.5, "x": 6.8, "y": 8.0},  # decay gain (1.2 + 1.0) / 2 = 1.1
            "merge": {"a": 4.1, "b": 4.2, "m": 5.6, "x": 7.1, "y": 8.1}}  # merge gain (0.9 + 0.9) / 2 = 0.9
    h = headline(loss, "before", "all", "merge", ["eng", "all"], group)
    assert math.isclose(h["decay_gain"], 1.1) and math.isclose(h["merge_keeps"], 0.9 / 1.1)
    assert math.isclose(h["merge_gap"]["pretrain"], 4.15 - 4.1) and math.isclose(h["merge_gap"]["midtrain"], 0.1)
    table = "\n".join(headline_table(h, wall_min=9.5, train_tok_s=7000))
    assert "1.100 nat" in table and "82%" in table and "+0.050 / +0.100" in table and "9.5 min" in table
    assert table.count("✓") == 3 and table.count("✗") == 1  # the midtrain gap of 0.1 misses 0.05
