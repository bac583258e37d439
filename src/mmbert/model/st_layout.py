"""The sentence-transformers files beside a model directory, and what an embedding model declares it was trained for.

A model directory (config.json, model.safetensors, tokenizer files) becomes a sentence-transformers model with:
``modules.json`` (Transformer -> Pooling(mean) -> Normalize, the legacy class paths that load in old and new
releases), ``sentence_bert_config.json`` (``max_seq_length``), ``config_sentence_transformers.json`` (cosine),
``1_Pooling/config.json`` (mean pooling) and an empty ``2_Normalize/`` (see shared/reference/ecosystem-notes.md
for the pitfalls each file avoids). ``SentenceTransformer(DIR).encode`` then equals ``MmBertForEmbedding``
(masked mean of the last layer, L2-normalised).

``mmbert_embedding.json`` records how an embedding model was trained; ``matryoshka_dims`` are the leading
dimensions the loss trained (sentence-transformers' ``MatryoshkaLoss``), the only sizes ``mmbert serve`` truncates
to (``dimensions``). It lives here, in the model layer, because training writes it and serving reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

EMBEDDING_INFO = "mmbert_embedding.json"

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_sentence_transformers_files(out: str | Path, hidden_size: int, max_length: int,
                                      embedding_info: dict | None = None) -> None:
    """Add the sentence-transformers module files to the model directory ``out``; ``embedding_info`` (how it
    was trained: ``matryoshka_dims``, the loss, the data) goes to ``mmbert_embedding.json``."""
    out = Path(out)
    pooling = {
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True,
    }
    _dump(out / "modules.json", MODULES)
    _dump(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _dump(out / "config_sentence_transformers.json", {"similarity_fn_name": "cosine", "prompts": {},
                                                      "default_prompt_name": None})
    (out / "1_Pooling").mkdir(exist_ok=True)
    _dump(out / "1_Pooling" / "config.json", pooling)
    (out / "2_Normalize").mkdir(exist_ok=True)
    if embedding_info is not None:
        dims = [int(d) for d in embedding_info.get("matryoshka_dims") or []]
        bad = [d for d in dims if not 1 <= d <= hidden_size]
        if bad:
            raise ValueError(f"Matryoshka dimensions {bad} are outside [1, {hidden_size}]")
        _dump(out / EMBEDDING_INFO, {**embedding_info, "matryoshka_dims": sorted(set(dims), reverse=True)})


def read_embedding_info(directory: str | Path) -> dict | None:
    """``mmbert_embedding.json`` of a model directory, or None when it has none (not trained as an embedding model)."""
    path = Path(directory) / EMBEDDING_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    dims = info.get("matryoshka_dims", [])
    if not isinstance(info, dict) or not isinstance(dims, list) or not all(isinstance(d, int) for d in dims):
        raise ValueError(f"{path}: 'matryoshka_dims' must be a list of integers")
    return info


def trained_dimensions(directory: str | Path, hidden_size: int) -> tuple[int, ...] | None:
    """The embedding sizes a model was trained to give (its Matryoshka dims and the full size), largest first;
    None when the directory declares no embedding training."""
    info = read_embedding_info(directory)
    if info is None:
        return None
    return tuple(sorted({hidden_size, *info.get("matryoshka_dims", [])}, reverse=True))
