"""Several checkpoints' results on one task side by side: a Markdown table (group means, all-language
mean, then per language when there are few) and a PNG bar chart of the group means."""

from __future__ import annotations

from pathlib import Path

from mmbert.eval.report import GROUPS


def _label(result: dict, i: int) -> str:
    return Path(str(result.get("checkpoint", f"model{i}"))).name or f"model{i}"


def compare_markdown(results: list[dict], max_languages: int = 40) -> str:
    """Rows: group means, the overall mean, then each language (when at most ``max_languages``)."""
    if not results:
        raise ValueError("nothing to compare")
    task, metric = results[0]["task"], results[0]["primary"]
    if any(r["task"] != task for r in results):
        raise ValueError(f"results of different tasks: {sorted({r['task'] for r in results})}")
    names = [_label(r, i) for i, r in enumerate(results)]
    direction = "lower is better" if results[0].get("lower_is_better") else "higher is better"
    lines = [f"### {task}: {metric} ({direction})", "", "| | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]

    def cell(m):
        return f"{m[metric]:.4f}" if isinstance(m, dict) and isinstance(m.get(metric), (int, float)) else "-"

    for g in GROUPS:
        if any(g in r["groups"] for r in results):
            n = max(r["groups"].get(g, {}).get("languages", 0) for r in results)
            label = f"{g} ({n})" + (" — low-resource" if g == "decay" else "")
            lines.append(f"| mean {label} | " + " | ".join(cell(r["groups"].get(g)) for r in results) + " |")
    n = results[0]["average"].get("languages", 0)
    lines.append(f"| **mean all ({n})** | " + " | ".join(f"**{cell(r['average'])}**" for r in results) + " |")
    langs = sorted(set().union(*(r["per_language"] for r in results)))
    if len(langs) <= max_languages:
        for lang in langs:
            lines.append(f"| {lang} | " + " | ".join(cell(r["per_language"].get(lang)) for r in results) + " |")
    return "\n".join(lines) + "\n"


def compare_plot(results: list[dict], path: str | Path) -> Path:
    """Grouped bars: one group of bars per language group (and all), one bar per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results[0]["primary"]
    groups = [g for g in GROUPS if any(g in r["groups"] for r in results)] + ["all"]
    names = [_label(r, i) for i, r in enumerate(results)]
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(groups) * max(1, len(results) / 2)), 4))
    for i, (name, r) in enumerate(zip(names, results)):
        values = [(r["average"] if g == "all" else r["groups"].get(g, {})).get(metric, float("nan")) for g in groups]
        ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(groups))], values, width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(metric + (" (lower is better)" if results[0].get("lower_is_better") else ""))
    ax.set_title(f"{results[0]['task']}: mean {metric} per language group")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
