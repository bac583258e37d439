"""The run report: ``report.md`` beside PNG plots, from ``metrics.jsonl`` and the evaluation results.

Plots (matplotlib, Agg): training loss by stage with phase boundaries; the schedules (LR, mask ratio, tau,
active languages); held-out loss by mmBERT language group over training (the decay-only, low-resource
languages are the ones the decay phase adds); per-language held-out loss before vs after the decay phase;
the variants-vs-merge comparison. Every number comes from the run's own files.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

GROUP_LABELS = {
    "pretrain": "mmBERT pretraining languages",
    "midtrain": "added in mid-training",
    "decay": "added only in decay (low-resource)",
    "unseen": "not in mmBERT's data",
}
GROUP_COLORS = {"pretrain": "tab:blue", "midtrain": "tab:green", "decay": "tab:red", "unseen": "tab:gray"}
HIGHLIGHT = ("fao_Latn", "tir_Ethi")


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(step records, event records); a resumed run's repeated steps keep their last value."""
    from mmbert.train.metrics import read_metrics_records

    steps: dict[tuple, dict] = {}
    events = []
    for rec in read_metrics_records(Path(path)):
        if "event" in rec:
            events.append(rec)
        else:
            steps[(rec.get("phase"), rec.get("variant"), rec["step"])] = rec
    return sorted(steps.values(), key=lambda r: (r["step"], str(r.get("variant")))), events


def _stage(rec: dict) -> str:
    return rec["phase"] + (f"/{rec['variant']}" if rec.get("variant") else "")


def _by_stage(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[_stage(r)].append(r)
    return out


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        if math.isfinite(v):
            acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc if acc is not None else math.nan)
    return out


def _phase_starts(events: list[dict]) -> list[tuple[int, str]]:
    seen, out = set(), []
    for e in events:
        if e["event"] == "stage_start" and e["phase"] not in seen:
            seen.add(e["phase"])
            out.append((e["step"], e["phase"]))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(steps: list[dict], events: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for stage, recs in _by_stage(steps).items():
        xs = [r["step"] for r in recs]
        ys = [r["loss"] for r in recs]
        line, = ax.plot(xs, _ema(ys), label=stage, lw=1.6)
        ax.plot(xs, ys, color=line.get_color(), alpha=0.2, lw=0.8)
    for step, phase in _phase_starts(events):
        ax.axvline(step, color="k", ls="--", lw=0.8)
        ax.text(step, ax.get_ylim()[1], f" {phase}", va="top", fontsize=8)
    ax.set(xlabel="optimizer step", ylabel="MLM loss (EMA; raw faint)", title="Training loss by phase / decay variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_schedules(steps: list[dict], events: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    keys = [("lr", "learning rate"), ("mask_ratio", "mask ratio"), ("tau", "sampling temperature τ"),
            ("n_languages", "active languages")]
    for ax, (key, label) in zip(axes.flat, keys):
        for stage, recs in _by_stage(steps).items():
            ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=stage, lw=1.4)
        for step, _ in _phase_starts(events):
            ax.axvline(step, color="k", ls="--", lw=0.6)
        ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle("Annealed language learning: the schedules")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heldout_curves(events: list[dict], group_of) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """stage -> group -> [(step, mean held-out loss)], from the trainer's eval events."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e["event"] != "eval" or not e.get("heldout"):
            continue
        by_group = defaultdict(list)
        for lang, loss in e["heldout"].items():
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                by_group[group_of(lang)].append(loss)
        for g, losses in by_group.items():
            curves[_stage(e)][g].append((e["step"], sum(losses) / len(losses)))
    return curves


def plot_heldout_curves(curves, path: Path, events: list[dict]) -> Path:
    """Colour = language group, line style = decay variant; each variant's line continues the shared trunk."""
    from matplotlib.lines import Line2D

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    trunk = [s for s in curves if "/" not in s]
    variants = [s for s in curves if "/" in s] or trunk[-1:]
    styles = ["-", "--", ":", "-."]
    for i, stage in enumerate(variants):
        for g, color in GROUP_COLORS.items():
            pts = sorted(p for t in trunk for p in curves[t].get(g, []))
            if stage not in trunk:
                pts += sorted(curves[stage].get(g, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[i % len(styles)], marker="o", ms=3,
                        color=color, lw=1.4)
    for step, phase in _phase_starts(events):
        ax.axvline(step, color="k", ls="--", lw=0.6)
        ax.text(step, ax.get_ylim()[1], f" {phase}", va="top", fontsize=8)
    handles = [Line2D([], [], color=c, lw=2, label=GROUP_LABELS[g]) for g, c in GROUP_COLORS.items()
               if any(g in curves[s] for s in curves)]
    handles += [Line2D([], [], color="k", ls=styles[i % len(styles)], label=s) for i, s in enumerate(variants)]
    ax.legend(handles=handles, fontsize=7)
    ax.set(xlabel="optimizer step", ylabel="held-out MLM loss (group mean)",
           title="Held-out loss by language group; the decay phase adds the low-resource languages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_before_after(before: dict, after: dict, group_of, path: Path, after_label: str) -> Path:
    """Per-language held-out loss before the decay phase (x) and after it (y); below the diagonal = better."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    langs = sorted(set(before) & set(after))
    for g in GROUP_COLORS:
        pts = [(before[lang], after[lang]) for lang in langs if group_of(lang) == g]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10 if g != "decay" else 14,
                       color=GROUP_COLORS[g], alpha=0.7, label=f"{GROUP_LABELS[g]} ({len(pts)})")
    for lang in HIGHLIGHT:
        if lang in before and lang in after:
            ax.annotate(lang, (before[lang], after[lang]), fontsize=8, weight="bold")
    lo = min([before[lang] for lang in langs] + [after[lang] for lang in langs], default=0)
    hi = max([before[lang] for lang in langs] + [after[lang] for lang in langs], default=1)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="held-out loss before decay (end of mid-training)", ylabel=f"after decay ({after_label})",
           title="Per-language held-out loss across the decay phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(rows: list[dict], path: Path) -> Path:
    """Grouped bars: held-out loss per language group for each checkpoint."""
    plt = _plt()
    groups = [g for g in GROUP_COLORS if any(g in r["heldout_groups"] for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(groups))]
        axes[0].bar(xs, [r["heldout_groups"].get(g, math.nan) for g in groups], width, label=r["name"])
        axes[1].bar(xs, [r["bitext_groups"].get(g, math.nan) for g in groups], width, label=r["name"])
    for ax, title in zip(axes, ("held-out MLM loss (lower is better)", "UDHR bitext top-1 vs English (higher is better)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [g for g in groups])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle("Decay variants and their merge")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def comparison_table(rows: list[dict]) -> str:
    groups = [g for g in GROUP_COLORS if any(g in r["heldout_groups"] for r in rows)]
    head = ("| checkpoint | held-out loss, all | " + " | ".join(f"loss: {g}" for g in groups)
            + " | bitext top-1, all | " + " | ".join(f"bitext: {g}" for g in groups) + " |")
    sep = "|" + "---|" * (3 + 2 * len(groups))
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_fmt(r['heldout_all'])} | "
            + " | ".join(_fmt(r["heldout_groups"].get(g)) for g in groups)
            + f" | {_fmt(r['bitext_all'])} | "
            + " | ".join(_fmt(r["bitext_groups"].get(g)) for g in groups) + " |"
        )
    return "\n".join(lines)


def summary_row(name: str, heldout: dict, bitext: dict) -> dict:
    return {
        "name": name,
        "heldout_all": heldout["average"].get("mlm_loss"),
        "heldout_groups": {g: v["mlm_loss"] for g, v in heldout["groups"].items()},
        "bitext_all": bitext["average"].get("top1_accuracy"),
        "bitext_groups": {g: v["top1_accuracy"] for g, v in bitext["groups"].items()},
    }


# The targets of issue #19: what the miniature must show for the recipe's effects to count as reproduced.
TARGETS = {"decay_gain": 1.0, "merge_keeps": 0.80, "merge_gap": 0.05, "wall_time_min": 10.0}


def headline(loss_of: dict[str, dict[str, float]], before: str, after: str, merged: str, variants: list[str],
             language_group) -> dict:
    """The recipe's effects in four numbers, from per-language held-out losses of each checkpoint:
    ``decay_gain``: mean over the decay-only languages of (loss before decay - loss after ``after``), in nats;
    ``merge_keeps``: the merge's gain on those languages as a fraction of ``decay_gain``;
    ``merge_gap``: per group (pretrain, midtrain), the merge's group-mean loss minus the best variant's."""
    def group_mean(name, group):
        vals = [v for lang, v in loss_of[name].items() if language_group(lang) == group and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    decay = [lang for lang in loss_of[before] if language_group(lang) == "decay"]

    def gain(name):
        d = [loss_of[before][lang] - loss_of[name][lang] for lang in decay if lang in loss_of[name]]
        return sum(d) / len(d) if d else math.nan

    g = gain(after)
    gaps = {grp: group_mean(merged, grp) - min(group_mean(v, grp) for v in variants)
            for grp in ("pretrain", "midtrain")}
    return {"decay_gain": g, "merge_gain": gain(merged), "merge_keeps": gain(merged) / g if g else math.nan,
            "merge_gap": gaps, "n_decay_languages": len(decay)}


def headline_table(h: dict, wall_min: float, train_tok_s: float) -> list[str]:
    """Markdown lines: each headline number beside its target and whether it was met."""
    def row(what, value, target, ok):
        return f"| {what} | {value} | {target} | {'✓' if ok else '✗'} |"

    gap = max(h["merge_gap"].values())
    return ["| headline | measured | target | met |", "|---|---|---|---|",
            row(f"decay-only languages ({h['n_decay_languages']}): held-out gain of decay-all vs before decay",
                f"{h['decay_gain']:.3f} nat", f"≥ {TARGETS['decay_gain']:.1f} nat", h["decay_gain"] >= TARGETS["decay_gain"]),
            row("TIES merge keeps of that gain", f"{h['merge_keeps']:.0%} ({h['merge_gain']:.3f} nat)",
                f"≥ {TARGETS['merge_keeps']:.0%}", h["merge_keeps"] >= TARGETS["merge_keeps"]),
            row("merge minus best variant, pretrain / midtrain group mean loss",
                " / ".join(f"{h['merge_gap'][g]:+.3f}" for g in ("pretrain", "midtrain")),
                f"≤ {TARGETS['merge_gap']:.2f} nat", gap <= TARGETS["merge_gap"]),
            row("wall time of the whole command", f"{wall_min:.1f} min", f"≤ {TARGETS['wall_time_min']:.0f} min",
                wall_min <= TARGETS["wall_time_min"]),
            f"| training throughput (all stages, incl. evaluations during training) | {train_tok_s:,.0f} tokens/s | | |"]
