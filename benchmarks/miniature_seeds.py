"""The spread of the main job's headline numbers over seeds: ``mmbert run configs/miniature.yaml --set seed=S``
for each seed, one after another (each run alone on the machine), then mean, min and max of every headline
number (decay-only gain, share of it the merge keeps, merge vs best variant per group, wall time, tokens/s,
the machine's matmul speed before training).

The seed changes the model's initialisation, the data order and the training masks; the held-out set's masks
stay fixed (``recipe.evaluate.seed``), so the spread is that of training, not of the measurement.

    python benchmarks/miniature_seeds.py --seeds 0 1 2 --out runs/seeds
    python benchmarks/miniature_seeds.py --seeds 0 1 --quick --out /tmp/seeds   # the pipeline, in minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def headline_values(summary: dict) -> dict[str, float]:
    h = summary["headline"]
    return {"decay_gain": h["decay_gain"], "merge_keeps": h["merge_keeps"],
            "merge_gap_pretrain": h["merge_gap"]["pretrain"], "merge_gap_midtrain": h["merge_gap"]["midtrain"],
            "wall_time_min": summary["wall_time_s"] / 60, "train_tokens_per_s": summary["train_tokens_per_s"],
            # the machine's matmul GFLOP/s before training (mmbert.train.speed.matmul_gflops): wall times of runs
            # at different machine speeds do not compare
            "machine_gflops": (summary.get("machine") or {}).get("gflops_before", float("nan"))}


def spread(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {"mean": sum(r[k] for r in rows) / len(rows), "min": min(r[k] for r in rows),
                "max": max(r[k] for r in rows)} for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "miniature.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/seeds", help="one run folder per seed below this")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rows = {}
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        cmd = [sys.executable, "-m", "mmbert.cli", "run", args.config, "--out", str(out), "--set", f"seed={seed}"]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
        rows[seed] = headline_values(json.loads((out / "summary.json").read_text()))
        print(json.dumps({"seed": seed, **rows[seed]}), flush=True)
    print(json.dumps({"seeds": args.seeds, "spread": spread(list(rows.values()))}, indent=2))


if __name__ == "__main__":
    main()
