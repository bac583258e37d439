"""Results: per-language metrics, their averages over all languages and over mmBERT's language groups,
the JSON file and the printed table.

Groups follow the phase in which mmBERT first trained a language (``assets/mmbert_language_token_counts.csv``):
``pretrain`` (its 60 pre-training languages), ``midtrain`` (the 50 added for mid-training / context
extension), ``decay`` (the ~1,700 added only in the decay phase: the low-resource languages such as
``fao`` and ``tir``) and ``unseen`` (not in mmBERT's data). Benchmarks name languages by ISO 639-1 code
(XNLI ``sw``) or English name (TyDiQA ``swahili``); both are mapped to ISO 639-3 first.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmbert.corpus.languages import mmbert_token_counts

GROUPS = ("pretrain", "midtrain", "decay", "unseen")
LOW_RESOURCE = "decay"

# The languages of XNLI, XQuAD, MLQA, TyDiQA, PAN-X's larger part: ISO 639-1 / English name -> ISO 639-3.
_TO_639_3 = {
    "af": "afr", "ar": "arb", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "en": "eng", "es": "spa",
    "et": "ekk", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hu": "hun",
    "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz", "ko": "kor", "ml": "mal",
    "mr": "mar", "ms": "zlm", "my": "mya", "nl": "nld", "pt": "por", "ru": "rus", "sw": "swh", "ta": "tam",
    "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "ur": "urd", "vi": "vie", "yo": "yor", "zh": "cmn",
    "fo": "fao", "ti": "tir", "is": "isl", "am": "amh", "ro": "ron", "pl": "pol", "cs": "ces", "uk": "ukr",
    "arabic": "arb", "bengali": "ben", "english": "eng", "finnish": "fin", "indonesian": "ind",
    "japanese": "jpn", "korean": "kor", "russian": "rus", "swahili": "swh", "telugu": "tel", "thai": "tha",
}


def language_group(lang: str) -> str:
    """mmBERT's group for a corpus id (``fao_Latn``), an ISO 639-3 / 639-1 code or a TyDiQA name."""
    code = _TO_639_3.get(lang.lower(), lang)
    if mmbert_token_counts(code, "pretrain") > 0:
        return "pretrain"
    if mmbert_token_counts(code, "ext") > 0:
        return "midtrain"
    if mmbert_token_counts(code, "decay-all") > 0:
        return "decay"
    return "unseen"


def mean_metrics(rows: list[dict]) -> dict[str, float]:
    """Unweighted mean over languages of every numeric metric all rows share."""
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and all(k in r for r in rows)]
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys} | {"languages": len(rows)}


def summarize(task: str, per_language: dict[str, dict], primary: str, **extra) -> dict:
    """The result document: per language, averaged, averaged per group, and the low-resource list."""
    groups = {g: [lang for lang in sorted(per_language) if language_group(lang) == g] for g in GROUPS}
    return {
        "task": task,
        "primary": primary,
        "per_language": {k: per_language[k] for k in sorted(per_language)},
        "average": mean_metrics([per_language[k] for k in sorted(per_language)]),
        "groups": {g: mean_metrics([per_language[k] for k in langs]) for g, langs in groups.items() if langs},
        "low_resource": groups[LOW_RESOURCE],
        **extra,
    }


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def _metric_keys(result: dict) -> list[str]:
    rows = list(result["per_language"].values())
    keys = [k for k, v in (rows[0] if rows else {}).items() if isinstance(v, (int, float))]
    primary = result["primary"]
    return ([primary] if primary in keys else []) + [k for k in keys if k != primary]


def format_table(result: dict, per_language: bool = True) -> str:
    """Per-language rows (the low-resource ones in their own block), then the averages."""
    keys = _metric_keys(result)
    head = f"{'language':<24}{'group':<10}" + "".join(f"{k:>14}" for k in keys)
    lines = [f"{result['task']}  ({result.get('checkpoint', '')})", head, "-" * len(head)]

    def row(name, group, metrics):
        return f"{name:<24}{group:<10}" + "".join(
            f"{metrics[k]:>14.4f}" if isinstance(metrics.get(k), (int, float)) else f"{'-':>14}" for k in keys)

    low = set(result["low_resource"])
    if per_language:
        for lang, m in result["per_language"].items():
            if lang not in low:
                lines.append(row(lang, language_group(lang), m))
        if low:
            lines += ["", f"low-resource languages (mmBERT's decay phase only): {len(low)}", head, "-" * len(head)]
            lines += [row(lang, LOW_RESOURCE, result["per_language"][lang]) for lang in sorted(low)]
        lines.append("-" * len(head))
    for g, m in result["groups"].items():
        lines.append(row(f"mean {g} ({m['languages']})", g, m))
    lines.append(row(f"mean all ({result['average'].get('languages', 0)})", "", result["average"]))
    return "\n".join(lines)
