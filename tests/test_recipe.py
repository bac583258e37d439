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
