"""``mmbert run CONFIG``: the whole mmBERT recipe, end to end — train every phase (languages added, mask ratio
and tau annealed, context extended), the decay variants, their TIES merge, evaluation of each, and a report.

A recipe config is a training config (``mmbert.train.config``) plus a ``recipe:`` section:

    recipe:
      merge: {method: ties, density: 0.6, lambda: 1.0}   # mergekit names; the base is the checkpoint the
                                                         # decay variants started from
      evaluate: {mask_ratio: 0.15, seq_len: 128}         # held-out MLM loss + UDHR bitext, per language, one pass
                                                         # over each held-out article's first seq_len tokens
                                                         # (languages: all, or a list of corpus ids)
      quick: ["phases.0.steps=20", ...]                  # overrides applied by --quick (recipe.* keys too)

Every step is resumable: training continues from its newest checkpoint, and the merge and each evaluation
are skipped when their output already exists. Starting the same command again finishes an interrupted run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mmbert.recipe import report as rp
from mmbert.train.speed import PROBE_SHAPE, matmul_gflops

RECIPE_KEYS = {"merge", "evaluate", "quick"}
MERGE_KEYS = {"method", "density", "lambda", "weights", "normalize"}
EVAL_KEYS = {"mask_ratio", "seq_len", "bitext", "seed", "languages", "max_tokens_per_language"}


@dataclass
class Recipe:
    merge: dict[str, Any] = field(default_factory=lambda: {"method": "ties", "density": 0.6, "lambda": 1.0})
    evaluate: dict[str, Any] = field(default_factory=lambda: {"mask_ratio": 0.15, "seq_len": 128, "bitext": True})
    quick: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str) -> "Recipe":
        raw = dict(raw or {})
        for key, allowed in (("", RECIPE_KEYS), ("merge", MERGE_KEYS), ("evaluate", EVAL_KEYS)):
            section = raw if not key else raw.get(key) or {}
            if not isinstance(section, dict):
                raise ValueError(f"{where}: recipe.{key} must be a mapping")
            unknown = sorted(set(section) - allowed)
            if unknown:
                raise ValueError(f"{where}: unknown key recipe.{key + '.' if key else ''}{unknown[0]} "
                                 f"(known: {sorted(allowed)})")
        out = cls()
        out.merge = {**out.merge, **(raw.get("merge") or {})}
        out.evaluate = {**out.evaluate, **(raw.get("evaluate") or {})}
        out.quick = list(raw.get("quick") or [])
        return out


def load_recipe(path: str | Path, quick: bool = False, overrides: list[str] | None = None):
    """(TrainConfig, Recipe) from one YAML file."""
    from mmbert.train.config import apply_override, config_from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe config not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    quick_overrides = list(((raw.get("recipe") or {}).get("quick")) or []) if quick else []
    for item in quick_overrides + list(overrides or []):  # before the split: `recipe.*` keys can be set too
        apply_override(raw, item, str(path))
    recipe = Recipe.from_dict(raw.pop("recipe", None), str(path))
    return config_from_dict(raw, str(path)), recipe


def run_recipe(config_path: str | Path, run_dir: str | Path | None = None, quick: bool = False,
               overrides: list[str] | None = None) -> Path:
    """Run (or finish) the recipe into ``run_dir``; return the report's path. The run directory is locked
    for the whole recipe (``mmbert.train.rundir``): a second run on it stops with an error naming the first."""
    from mmbert.train.rundir import hold_run_dir

    t0 = time.perf_counter()
    config_path = Path(config_path)
    cfg, recipe = load_recipe(config_path, quick, overrides)
    run_dir = Path(run_dir or Path("runs") / (config_path.stem + ("-quick" if quick else "")))
    with hold_run_dir(run_dir):
        return _run_recipe(config_path, cfg, recipe, run_dir, quick, overrides, t0)


def _run_recipe(config_path: Path, cfg, recipe: Recipe, run_dir: Path, quick: bool, overrides: list[str] | None,
                t0: float) -> Path:
    from mmbert.recipe.training import train
    from mmbert.train.rundir import LOCK_NAME

    resume = any(p.name != LOCK_NAME for p in run_dir.iterdir())
    if resume:
        print(f"[mmbert run] {run_dir} exists: continuing from its newest checkpoints", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(
        {"config": str(config_path), "quick": quick, "overrides": overrides or [], "recipe": recipe.__dict__},
        sort_keys=False))

    from mmbert.train.optim import autocast, resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)
    machine_before = _machine_speed(precision)
    result = train(cfg, run_dir / "train", resume=resume)
    if not result.completed:
        raise SystemExit(f"[mmbert run] training stopped: {result.message}\n"
                         f"run the same command again to continue from {result.last_checkpoint}")
    t_train = time.perf_counter() - t0

    decay_phase = next((p for p in cfg.phases if p.variants), None)
    if decay_phase is None or len(result.variant_checkpoints) < 2:
        raise ValueError("a recipe needs a last phase with at least two decay variants to merge")
    parent = cfg.phases[cfg.phases.index(decay_phase) - 1].name
    base = result.phase_checkpoints[parent]
    variants = dict(result.variant_checkpoints)

    merged = run_dir / "merged"
    if not (merged / "model.safetensors").is_file():
        from mmbert.merge import merge

        m = recipe.merge
        merge(m["method"], list(variants.values()), merged, base=base, weights=m.get("weights"),
              density=m.get("density"), lambda_=m.get("lambda"), normalize=m.get("normalize"))
        print(f"[mmbert run] merged {len(variants)} decay variants with {m['method']} -> {merged}", flush=True)

    checkpoints = {f"before decay ({parent})": base}
    checkpoints.update({f"decay-{name}": path for name, path in variants.items()})
    checkpoints[f"merge ({recipe.merge['method'].upper()})"] = merged
    t_eval = time.perf_counter()
    evaluations = evaluate_all(checkpoints, run_dir / "eval", recipe.evaluate, lambda: autocast(precision, device))
    t_eval = time.perf_counter() - t_eval
    machine = {"precision": precision, "shape": list(PROBE_SHAPE), "gflops_before": machine_before,
               "gflops_after": _machine_speed(precision)}
    t_total = time.perf_counter() - t0
    path = write_report(run_dir, cfg, recipe, checkpoints, evaluations, t_train, t_total, quick, t_eval, machine)
    print(f"[mmbert run] report: {path}")
    print(f"[mmbert run] wall time {t_total / 60:.1f} min (training {t_train / 60:.1f} min)")
    return path


def _machine_speed(precision: str) -> float:
    """The machine's matmul GFLOP/s in the run's precision, now (``train.speed.matmul_gflops``): measured before
    training and after the evaluation, so the report's wall time can be read against the machine's speed."""
    return round(matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32), 1)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def evaluate_all(checkpoints: dict[str, Path], out_dir: Path, options: dict, autocast=None) -> dict[str, dict]:
    """Held-out MLM loss and UDHR bitext retrieval per language for each checkpoint (cached as JSON), from one
    forward pass a checkpoint (``eval.udhr.heldout_and_bitext``: bitext embeds the masked pieces).
    ``autocast``: the held-out forward's context manager factory (the run's training precision, so the final
    table and the trainer's curves are computed alike); the held-out set is tokenized and masked once."""
    from mmbert.corpus import load_corpus
    from mmbert.eval.report import write_json
    from mmbert.eval.udhr import heldout_and_bitext, heldout_loss
    from mmbert.model import MmBertForMaskedLM
    from mmbert.tokenizer import Tokenizer

    records = None
    results = {}
    tokenizers: dict[bytes, Tokenizer] = {}  # tokenizer.json bytes -> one object, so the held-out set is built once
    for name, path in checkpoints.items():
        target = out_dir / f"{_slug(name)}.json"
        if target.is_file() and target.stat().st_mtime >= (Path(path) / "model.safetensors").stat().st_mtime:
            results[name] = json.loads(target.read_text(encoding="utf-8"))
            continue
        records = records if records is not None else load_corpus()
        t = time.perf_counter()
        model = MmBertForMaskedLM.from_pretrained(path)
        tok_file = Path(path) / "tokenizer.json"
        key = tok_file.read_bytes() if tok_file.is_file() else b""
        if key not in tokenizers:
            tokenizers[key] = Tokenizer.from_file(path) if key else Tokenizer.default()
        tok = tokenizers[key]
        languages = None if options.get("languages", "all") == "all" else list(options["languages"])
        common = dict(records=records, languages=languages, mask_ratio=options.get("mask_ratio", 0.15),
                      seed=options.get("seed", 0), autocast=autocast)
        if options.get("bitext", True):  # both tables from one forward over each article's first seq_len tokens
            heldout, bitext = heldout_and_bitext(model, tok, seq_len=options.get("seq_len", 128), **common)
        else:
            heldout, bitext = heldout_loss(model, tok, seq_len=options.get("seq_len", 256),
                                           max_tokens_per_language=options.get("max_tokens_per_language"),
                                           **common), None
        results[name] = {"checkpoint": str(path), "heldout": heldout, "bitext": bitext}
        write_json(results[name], target)
        print(f"[mmbert run] evaluated {name}: held-out loss {heldout['average'].get('mlm_loss', math.nan):.3f}"
              + (f", bitext top-1 {bitext['average'].get('top1_accuracy', math.nan):.3f}" if bitext else "")
              + f" ({time.perf_counter() - t:.0f} s)", flush=True)
    return results


def write_report(run_dir: Path, cfg, recipe: Recipe, checkpoints: dict[str, Path], evaluations: dict[str, dict],
                 t_train: float, t_total: float, quick: bool, t_eval: float = math.nan,
                 machine: dict | None = None) -> Path:
    from mmbert.eval.report import language_group

    steps, events = rp.read_metrics(run_dir / "train" / "metrics.jsonl")
    figures = run_dir / "report"
    figures.mkdir(exist_ok=True)
    rp.plot_loss(steps, events, figures / "loss.png")
    rp.plot_schedules(steps, events, figures / "schedules.png")
    curves = rp.heldout_curves(events, language_group)
    if curves:
        rp.plot_heldout_curves(curves, figures / "heldout_curves.png", events)
    names = list(checkpoints)
    before_name, variant_names = names[0], names[1:-1]
    loss_of = {n: {lang: v["mlm_loss"] for lang, v in evaluations[n]["heldout"]["per_language"].items()} for n in names}
    after_name = next((n for n in variant_names if n.endswith("all")), variant_names[-1])
    rp.plot_before_after(loss_of[before_name], loss_of[after_name], language_group, figures / "before_after.png",
                         after_name)
    rows = [rp.summary_row(n, evaluations[n]["heldout"], evaluations[n]["bitext"] or {"average": {}, "groups": {}})
            for n in names]
    rp.plot_comparison(rows, figures / "comparison.png")

    stage_rows = []
    for e in events:
        if e["event"] == "stage_start" and not any(r["stage"] == rp._stage(e) for r in stage_rows):
            recs = [s for s in steps if rp._stage(s) == rp._stage(e)]
            tps = [s["tokens_per_s"] for s in recs if s.get("tokens_per_s")]
            stage_rows.append({"stage": rp._stage(e), "steps": e["total_steps"], "languages": e["n_languages"],
                               "mask": e["mask_ratio"], "tau": e["tau"], "seq_len": e["seq_len"],
                               "theta": f"{e['global_rope_theta']:g}/{e['local_rope_theta']:g}",
                               "batch": e["batch_tokens"], "tok_s": sorted(tps)[len(tps) // 2] if tps else math.nan})

    decay_langs = [lang for lang in loss_of[before_name] if language_group(lang) == "decay"]
    improved = {n: sum(loss_of[n].get(lang, math.inf) < loss_of[before_name][lang] for lang in decay_langs)
                for n in names[1:]}
    highlight = [lang for lang in rp.HIGHLIGHT if lang in loss_of[before_name]]

    merged_name = names[-1]
    head = rp.headline(loss_of, before_name, after_name, merged_name, variant_names, language_group)
    train_tokens = max((s.get("tokens", 0) for s in steps), default=0)
    variant_tokens = sum(s["batch_tokens"] for s in steps if s.get("variant"))  # tokens run after the branch point
    tok_s = sum(s["batch_tokens"] for s in steps) / t_train if t_train else math.nan

    md = [f"# mmBERT recipe in miniature — `{run_dir}`", ""]
    md += ["## Did the recipe's effects reproduce?", "", *rp.headline_table(head, t_total / 60, tok_s), "",
           f"Training {t_train / 60:.1f} min, evaluation of {len(names)} checkpoints {t_eval:.0f} s; "
           f"{sum(s['batch_tokens'] for s in steps):,} tokens trained ({variant_tokens:,} in the decay variants).", ""]
    md += [f"Wall time **{t_total / 60:.1f} min** (training {t_train / 60:.1f} min) on this machine"
           + (" — `--quick` run (numbers are a smoke test, not a result)" if quick else "") + "."
           + (f" Machine speed ({machine['precision']} matmul, {' × '.join(map(str, machine['shape'][:2]))} · "
              f"{' × '.join(map(str, machine['shape'][1:]))}): {machine['gflops_before']:,.0f} GFLOP/s before "
              f"training, {machine['gflops_after']:,.0f} after the evaluation; wall times measured at different "
              "machine speeds do not compare." if machine else ""),
           f"Model: `{cfg.model.preset or cfg.model.config}`; precision `{cfg.precision}`; "
           f"evaluation: held-out articles 25–30 of every corpus language "
           f"(mask {recipe.evaluate.get('mask_ratio', 0.15)}, fixed seed)"
           + (f", their first {recipe.evaluate.get('seq_len', 128)} tokens; UDHR bitext retrieval against English "
              "from the same forward (mean-pooled masked articles)" if recipe.evaluate.get("bitext", True) else "")
           + f"; {t_eval / max(1, len(names)):.0f} s a checkpoint.", ""]
    md += ["## Phases", "", "| stage | steps | languages | mask | τ | seq len | RoPE θ global/local | batch tokens | median tokens/s |",
           "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['stage']} | {r['steps']} | {r['languages']} | {r['mask']} | {r['tau']} | {r['seq_len']} | "
           f"{r['theta']} | {r['batch']} | {r['tok_s']:,.0f} |" for r in stage_rows]
    md += ["", "## Training loss", "", "![loss](report/loss.png)", "", "## Schedules", "", "![schedules](report/schedules.png)", ""]
    if curves:
        md += ["## Held-out loss by language group during training", "",
               "Group means of the per-language held-out loss the trainer logs at each evaluation. "
               "The red group is the languages mmBERT adds only in the decay phase (low-resource).", "",
               "![heldout](report/heldout_curves.png)", ""]
    md += ["## Across the decay phase", "",
           f"Per-language held-out loss at the end of `{before_name.split('(')[-1].rstrip(')')}` (x) and after "
           f"`{after_name}` (y); points below the diagonal improved.", "", "![before-after](report/before_after.png)", "",
           f"Decay-only (low-resource) languages evaluated: **{len(decay_langs)}**.", ""]
    md += ["| checkpoint | decay-only languages improved vs before decay |", "|---|---|"]
    md += [f"| {n} | {improved[n]} / {len(decay_langs)} |" for n in names[1:]]
    if highlight:
        md += ["", "| language | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        md += [f"| {lang} | " + " | ".join(rp._fmt(loss_of[n].get(lang)) for n in names) + " |" for lang in highlight]
    md += ["", "## Decay variants vs their merge", "", rp.comparison_table(rows), "", "![comparison](report/comparison.png)", "",
           "## Files", "", "- `train/metrics.jsonl` — every step and evaluation; `train/config.yaml` — the resolved config",
           "- `train/<phase>/final`, `train/decay/<variant>/final` — checkpoints (transformers layout + tokenizer)",
           "- `merged/` — the merged model; `eval/*.json` — per-language results of every checkpoint", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    summary = {"wall_time_s": round(t_total, 1), "train_time_s": round(t_train, 1), "quick": quick,
               "checkpoints": {n: str(p) for n, p in checkpoints.items()}, "comparison": rows,
               "decay_languages_improved": improved, "n_decay_languages": len(decay_langs),
               "headline": head, "targets": rp.TARGETS, "eval_time_s": round(t_eval, 1),
               "train_tokens_per_s": round(tok_s), "train_tokens": train_tokens, "machine": machine}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
