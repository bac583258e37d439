"""One direction of dependencies (ARCHITECTURE.md, "Layers"): every import between mmbert's layers is an
allowed edge.

Every module under src/mmbert is parsed with ``ast``; all its imports count, including those inside functions
(lazy imports) and ``importlib.import_module`` calls with a literal (or literal-prefixed) module name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# module (or package prefix) -> layer; the longest matching prefix wins
LAYER_OF = {
    "mmbert": "package",  # the root __init__: the public facade (mmbert.MmBertModel, mmbert.Encoder)
    "mmbert.model": "model",
    "mmbert.data": "data",
    "mmbert.tokenizer": "tokenizer",
    "mmbert.corpus": "corpus",
    "mmbert.train": "train",
    "mmbert.train.entry": "entry",  # `python -m mmbert.train` / `mmbert train`: an entry point inside train/
    "mmbert.train.__main__": "entry",
    "mmbert.merge": "merge",
    "mmbert.eval": "eval",
    "mmbert.serve": "serve",
    "mmbert.recipe": "recipe",
    "mmbert.commands": "entry",
    "mmbert.cli": "entry",
}

# layer -> the layers it may import (besides itself). Nothing lists "entry": nothing imports an entry point.
ALLOWED = {
    "entry": {"recipe", "train", "merge", "eval", "serve", "corpus", "tokenizer", "data", "model", "package"},
    "recipe": {"train", "merge", "eval", "corpus", "tokenizer", "data", "model"},
    "train": {"data", "model", "tokenizer"},
    "merge": {"model"},
    "eval": {"train", "model", "tokenizer", "corpus", "data"},  # evaluation by fine-tuning is a client of the trainer
    "serve": {"model", "tokenizer"},
    "corpus": {"tokenizer"},
    "package": {"model", "serve"},
    "tokenizer": set(),
    "data": set(),
    "model": set(),
}
# names any module may take from the package root: a constant, not the facade
ROOT_CONSTANTS = {"__version__"}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def _literal_prefix(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value).rstrip(".")  # f"mmbert.eval.{name}" -> mmbert.eval
    return None


def imports_of(path: Path, known: set[str], src: Path = SRC) -> list[tuple[str, int]]:
    """(imported mmbert module, line) for every import in ``path``; ``from pkg import sub`` names ``pkg.sub``."""
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            if module == "mmbert" and set(names) <= ROOT_CONSTANTS:
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            out += [(s, node.lineno) for s in subs] or [(module, node.lineno)]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args):
            name = _literal_prefix(node.args[0])
            if name:
                out.append((name, node.lineno))
    return [(m, line) for m, line in out if m == "mmbert" or m.startswith("mmbert.")]


def offending_edges(src: Path = SRC) -> list[str]:
    files = sorted((src / "mmbert").rglob("*.py"))
    known = {module_name(f, src) for f in files}
    bad = []
    for f in files:
        me = module_name(f, src)
        mine = layer_of(me)
        for target, line in imports_of(f, known, src):
            theirs = layer_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{f.relative_to(src)}:{line}: {me} ({mine}) -> {target} ({theirs})")
    return bad


def test_every_layer_is_mapped():
    assert set(ALLOWED) == set(LAYER_OF.values())
    for f in (SRC / "mmbert").rglob("*.py"):
        assert layer_of(module_name(f)) in ALLOWED


def test_imports_follow_the_layers():
    bad = offending_edges()
    assert not bad, "imports against the layering (ARCHITECTURE.md, Layers):\n" + "\n".join(bad)


def test_allowed_edges_have_one_direction():
    # no two layers may import each other, directly or through others: the allowed graph is acyclic
    def reaches(a, b, seen=()):
        return any(x == b or (x not in seen and reaches(x, b, (*seen, x))) for x in ALLOWED[a])

    assert not [a for a in ALLOWED if reaches(a, a)]
    assert "entry" not in set().union(*ALLOWED.values())
    assert not {"data", "model"} & (ALLOWED["data"] | ALLOWED["model"])  # data and model never meet


@pytest.mark.parametrize("where, code, edge", [
    ("mmbert/model/extra.py", "def f():\n    from mmbert.data.sampling import rng_for\n", "(model) -> mmbert.data"),
    ("mmbert/train/extra.py", "from mmbert.eval import heldout\n", "(train) -> mmbert.eval.heldout (eval)"),
    ("mmbert/serve/extra.py", "import mmbert.eval.common as c\n", "(serve) -> mmbert.eval.common (eval)"),
    ("mmbert/data/extra.py", "from ..corpus import load_corpus\n", "(data) -> mmbert.corpus (corpus)"),
    ("mmbert/eval/extra.py", "import importlib\nimportlib.import_module(f'mmbert.serve.{x}')\n",
     "(eval) -> mmbert.serve (serve)"),
    ("mmbert/train/finetune/extra.py", "from mmbert.eval.metrics import accuracy\n",
     "(train) -> mmbert.eval.metrics (eval)"),
    ("mmbert/recipe/extra.py", "from mmbert.commands import run\n", "(recipe) -> mmbert.commands.run (entry)"),
])
def test_a_bad_import_is_caught(tmp_path, where, code, edge):
    for f in (SRC / "mmbert").rglob("*.py"):  # a copy of the tree plus one bad module
        dest = tmp_path / f.relative_to(SRC)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / where).write_text(code, encoding="utf-8")
    bad = offending_edges(tmp_path)
    assert len(bad) == 1 and bad[0].startswith(where) and edge in bad[0], bad


def test_the_trainer_alone_names_what_it_cannot_resolve(tmp_path):
    # the generic trainer knows no builtin corpus and no mmBERT language set: a clear error naming the key
    from mmbert.train import TrainerHooks, load_config, train
    from mmbert.train.config import PhaseConfig
    from mmbert.train.phases import resolve_languages, sampling_sizes

    cfg = load_config("configs/train-tiny.yaml")
    with pytest.raises(ValueError, match=r"data\.builtin: udhr needs the trainer hook 'export_builtin'"):
        train(cfg, tmp_path / "run")
    sizes = {"eng_Latn": 10, "fao_Latn": 5}
    with pytest.raises(ValueError, match=r"languages: \{mmbert: pretrain\} needs the trainer hook 'language_set'"):
        resolve_languages({"mmbert": "pretrain"}, sizes)
    assert resolve_languages({"mmbert": "pretrain"}, sizes, TrainerHooks(language_set=lambda s, ids: ids[:1])) == [
        "eng_Latn"]
    phase = PhaseConfig(name="p", steps=1, languages={"mmbert": "pretrain"}, sizes="mmbert")
    with pytest.raises(ValueError, match="needs the trainer hook 'published_sizes'"):
        sampling_sizes(phase, ["eng_Latn"], sizes)


def test_mmbert_hooks_resolve_the_shipped_tables():
    from mmbert.corpus.languages import corpus_phase_languages, mmbert_token_counts
    from mmbert.eval.heldout import heldout_mlm_loss
    from mmbert.recipe.training import MMBERT

    assert MMBERT.language_set is corpus_phase_languages and MMBERT.heldout_loss is heldout_mlm_loss
    split = MMBERT.published_sizes(["cmn_Hans", "cmn_Hant", "eng_Latn", "zzz_Latn"], "pretrain")
    assert split["cmn_Hans"] == split["cmn_Hant"] == mmbert_token_counts("cmn_Hans", "pretrain") // 2 > 0
    assert split["eng_Latn"] == mmbert_token_counts("eng_Latn", "pretrain") > 0 and split["zzz_Latn"] == 0
    with pytest.raises(ValueError, match="unknown builtin corpus 'nope'"):
        MMBERT.export_builtin("nope", Path("/nonexistent"))
