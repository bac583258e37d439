"""How well a tokenizer covers each language of the corpus: tokens per character and the share of
``<unk>`` and byte-fallback pieces.

Measured on the held-out articles by default: the shipped tokenizer never saw them, so characters it
lacks show up as byte pieces the way they would on new text. Special tokens are not counted
(``add_special_tokens=False``). Outputs: a CSV, a markdown table and a PNG (matplotlib, Agg backend,
imported only when plotting).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from mmbert.corpus.records import Record
from mmbert.corpus.split import split_heldout


@dataclass(frozen=True)
class LanguageCoverage:
    lang_id: str
    script: str
    name: str
    chars: int
    tokens: int
    unk: int
    byte_fallback: int

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else 0.0

    @property
    def unk_share(self) -> float:
        return self.unk / self.tokens if self.tokens else 0.0

    @property
    def byte_share(self) -> float:
        return self.byte_fallback / self.tokens if self.tokens else 0.0


def select_split(records: list[Record], split: str) -> list[Record]:
    """``heldout``, ``train`` or ``all``. A version without held-out articles (a few have only article 1)
    is measured on its training text rather than left out, so every language is in the report."""
    if split == "all":
        return list(records)
    train, heldout = split_heldout(records)
    if split == "train":
        return train
    if split != "heldout":
        raise ValueError(f"unknown split {split!r}; expected heldout, train or all")
    have = {r.lang_id for r in heldout}
    return heldout + [r for r in train if r.lang_id not in have]


def measure(tokenizer, records: list[Record]) -> list[LanguageCoverage]:
    """Per-language counts, sorted by ``lang_id``. ``tokenizer`` is a ``mmbert.tokenizer.Tokenizer``."""
    by_lang: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_lang[r.lang_id].append(r)
    byte_ids = tokenizer.byte_ids()
    rows = []
    for lang_id in sorted(by_lang):
        recs = by_lang[lang_id]
        encoded = tokenizer.encode_batch([r.text for r in recs], add_special_tokens=False)
        ids = [i for seq in encoded for i in seq]
        rows.append(LanguageCoverage(
            lang_id=lang_id,
            script=recs[0].script,
            name=recs[0].name,
            chars=sum(len(r.text) for r in recs),
            tokens=len(ids),
            unk=sum(1 for i in ids if i == tokenizer.unk_id),
            byte_fallback=sum(1 for i in ids if i in byte_ids),
        ))
    return rows


_COLUMNS = ("lang_id", "script", "name", "chars", "tokens", "tokens_per_char", "unk_share", "byte_share")


def _row(c: LanguageCoverage) -> dict:
    return {**asdict(c), "tokens_per_char": c.tokens_per_char, "unk_share": c.unk_share, "byte_share": c.byte_share}


def format_table(rows: list[LanguageCoverage]) -> str:
    """A markdown table, one line per language, then a total line."""
    out = ["| lang_id | script | chars | tokens | tokens/char | unk % | byte % |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for c in rows:
        out.append(f"| {c.lang_id} | {c.script} | {c.chars} | {c.tokens} | {c.tokens_per_char:.3f} | "
                   f"{100 * c.unk_share:.2f} | {100 * c.byte_share:.2f} |")
    total = LanguageCoverage("all", "-", "", sum(c.chars for c in rows), sum(c.tokens for c in rows),
                             sum(c.unk for c in rows), sum(c.byte_fallback for c in rows))
    out.append(f"| **all ({len(rows)})** | - | {total.chars} | {total.tokens} | {total.tokens_per_char:.3f} | "
               f"{100 * total.unk_share:.2f} | {100 * total.byte_share:.2f} |")
    return "\n".join(out)


def write_csv(rows: list[LanguageCoverage], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(_COLUMNS) + ["unk", "byte_fallback"])
        writer.writeheader()
        for c in rows:
            writer.writerow({k: v for k, v in _row(c).items() if k in writer.fieldnames})
    return path


def plot(rows: list[LanguageCoverage], path: Path, title: str = "tokenizer coverage") -> Path:
    """Two panels over languages sorted by tokens/char, coloured by script: tokens/char and byte-fallback %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda c: (c.tokens_per_char, c.lang_id))
    scripts = sorted({c.script for c in rows}, key=lambda s: (-sum(c.script == s for c in rows), s))
    cmap = plt.get_cmap("tab20")
    colour = {s: cmap(i % 20) for i, s in enumerate(scripts)}
    x = range(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.03 * len(rows) + 6), 7), sharex=True)
    top.bar(x, [c.tokens_per_char for c in rows], color=[colour[c.script] for c in rows], width=1.0)
    top.set_ylabel("tokens / character")
    top.set_title(f"{title}: {len(rows)} languages")
    bottom.bar(x, [100 * (c.byte_share + c.unk_share) for c in rows], color=[colour[c.script] for c in rows], width=1.0)
    bottom.set_ylabel("byte-fallback + unk tokens (%)")
    bottom.set_xlabel("languages, sorted by tokens / character")
    if len(rows) <= 40:
        bottom.set_xticks(list(x), [c.lang_id for c in rows], rotation=90, fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[s]) for s in scripts[:20]]
    top.legend(handles, scripts[:20], ncol=4, fontsize=7, loc="upper left", title="script (top 20)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(rows: list[LanguageCoverage], out_dir: str | Path, title: str = "tokenizer coverage") -> dict[str, Path]:
    """``coverage.csv``, ``coverage.md`` and ``coverage.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "coverage.md"
    md.write_text(f"# {title}\n\n{format_table(rows)}\n", encoding="utf-8")
    return {"csv": write_csv(rows, out / "coverage.csv"), "markdown": md, "png": plot(rows, out / "coverage.png", title)}

