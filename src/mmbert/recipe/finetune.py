"""``mmbert finetune``: a task model out of a checkpoint — read the data, fine-tune, write a transformers
checkpoint of the task plus a results file.

    finetune_job(CKPT, task="classification", train="train.csv", dev="dev.csv", tests=["de=test.de.csv"],
                 out="out/", config=FinetuneConfig(...))

What it wires (each piece lives in its layer): readers (``eval.loaders``: CSV/TSV/JSONL/parquet with named
columns, GLUE/XNLI TSVs, CoNLL, SQuAD JSON), features, metrics and prediction (``eval.classification``,
``eval.token_classification``, ``eval.qa``), the loop (``train.finetune.fit``, through those). The output
directory, as ``run_glue.py`` / ``run_ner.py`` / ``run_qa.py`` users expect:

    OUT/config.json, model.safetensors, tokenizer.json, ...   the best model: AutoModelFor{SequenceClassification,
                                                              TokenClassification,QuestionAnswering} load it
    OUT/results.json, OUT/results.md    resolved config, data files and their SHA-256, dev/test metrics per
                                        language, zero-shot table (mean over the languages not trained on),
                                        wall time, tokens/s
    OUT/metrics.jsonl                   the training log
    OUT/checkpoints/, OUT/best/         while it runs (resume); removed when it ends

Running the same command again on an unfinished OUT continues from its last checkpoint; on a finished OUT it
is an error (choose another --out). Without ``--dev``, a seeded 10% of train is held out for early stopping.
A ``--test`` file without ``LANG=`` (and no language in its name) is taken to be in the training language.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from mmbert.eval.classification import finetune_classifier, split_dev
from mmbert.eval.common import load_tokenizer
from mmbert.eval.embedding import finetune_embedding
from mmbert.eval.loaders import (TSV_FORMATS, parse_file_spec, read_conll, read_pairs, read_squad_json,
                                 read_text_examples, read_tsv)
from mmbert.eval.qa import finetune_qa
from mmbert.eval.token_classification import finetune_tagger
from mmbert.model.checkpoint import file_sha256
from mmbert.model.st_layout import write_sentence_transformers_files
from mmbert.train.finetune import FinetuneConfig
from mmbert.train.finetune.loop import BEST, CHECKPOINTS, save_model_dir
from mmbert.train.parallel import World, barrier, destroy_distributed, init_distributed

RESULTS = "results.json"
PRIMARY = {"classification": "accuracy", "regression": "pearson", "token-classification": "f1", "qa": "f1",
           "embedding": "ndcg@10"}


def read_split(task: str, path, *, columns: dict, tsv_format: str | None = None, lang: str = "und") -> list:
    """Examples of one file for ``task``: tables for classification / regression (or a GLUE/XNLI TSV with
    ``tsv_format``), CoNLL for token classification, SQuAD JSON for QA."""
    path = Path(path)
    if task in ("classification", "regression"):
        if tsv_format:
            if tsv_format not in TSV_FORMATS:
                raise ValueError(f"unknown --tsv-format {tsv_format!r}; known: {sorted(TSV_FORMATS)}")
            return read_tsv(path, tsv_format, lang)
        return read_text_examples(path, columns.get("text", "text"), columns.get("text_pair"),
                                  columns.get("label", "label"), lang, columns.get("lang"))
    if task == "token-classification":
        return read_conll(path, lang)
    if task == "qa":
        return read_squad_json(path, lang)
    if task == "embedding":
        return read_pairs(path, columns.get("anchor", "anchor"), columns.get("positive", "positive"),
                          columns.get("negatives"), columns.get("lang"), lang)
    raise ValueError(f"unknown task {task!r}; choose one of {sorted(PRIMARY)}")


def finetune_job(checkpoint, *, task: str, train, out, dev=None, tests=(), config: FinetuneConfig | None = None,
                 columns: dict | None = None, tsv_format: str | None = None, train_language: str | None = None,
                 tokenizer=None) -> dict:
    """Fine-tune ``checkpoint`` for ``task`` into ``out``; returns the results document (also written)."""
    config = config or FinetuneConfig(task=task)
    columns = columns or {}
    out = Path(out)
    if (out / RESULTS).is_file():
        raise ValueError(f"{out} holds a finished fine-tuning run ({out / RESULTS}); choose another --out")
    started = time.time()
    train_lang, train_path = parse_file_spec(train)
    train_lang = train_language or train_lang or "und"
    read = lambda p, lang: read_split(task, p, columns=columns, tsv_format=tsv_format, lang=lang)  # noqa: E731
    train_ex = read(train_path, train_lang)
    files = {"train": train_path}
    if dev:
        dev_ex = read(Path(dev), train_lang)
        files["dev"] = Path(dev)
    else:
        train_ex, dev_ex = split_dev(train_ex, seed=config.seed)
    test_sets: dict[str, list] = {}
    for spec in tests or []:
        lang, path = parse_file_spec(spec)
        lang = lang or (train_lang if train_lang not in test_sets else path.stem)  # unnamed: the training language
        if lang in test_sets:
            raise ValueError(f"two --test files for language {lang!r}; give LANG=FILE for each")
        test_sets[lang] = read(path, lang)
        files[f"test:{lang}"] = path
    world = init_distributed(config.device)
    try:
        per_language, info = _train(task, checkpoint, train_ex, dev_ex, {"dev": dev_ex, **test_sets}, config, out,
                                    world, tokenizer)
        result = _results(task, config, files, columns, tsv_format, train_lang, per_language, info, started)
        result["checkpoint"] = str(checkpoint)
        model = info["model"]  # what predict needs to encode as training did rides in config.json
        model.config = model.config.replace(extra={**model.config.extra, "mmbert_finetune": {
            "task": task, "max_length": config.max_length, "stride": config.stride}})
        if world.is_main:
            _write_output(out, model, info["tokenizer"], result)
        barrier()
        return result
    finally:
        destroy_distributed()


def _train(task, checkpoint, train, dev, tests, config, out, world: World, tokenizer):
    kw = dict(tokenizer=tokenizer, config=config, out_dir=out, world=world, return_model=True)
    if task in ("classification", "regression"):
        return finetune_classifier(checkpoint, train, dev, tests, regression=task == "regression",
                                   strict_labels=True, **kw)
    if task == "token-classification":
        return finetune_tagger(checkpoint, train, dev, tests, strict_labels=True, **kw)
    if task == "embedding":
        return finetune_embedding(checkpoint, train, dev, tests, **kw)
    return finetune_qa(checkpoint, train, dev, tests, **kw)


def _results(task, config, files, columns, tsv_format, train_lang, per_language, info, started) -> dict:
    primary = PRIMARY[task]
    dev = per_language.pop("dev")
    tests = per_language
    zero_shot = None
    if tests:
        others = [lang for lang in tests if lang != train_lang]
        mean = (sum(tests[lang][primary] for lang in others) / len(others)) if others else None
        zero_shot = {"train_language": train_lang, "metric": primary,
                     "per_language": {lang: tests[lang][primary] for lang in sorted(tests)},
                     "mean_other_languages": mean, "other_languages": others}
    fit = info["fit"]
    return {
        "task": task, "primary": primary, "checkpoint": None,
        "config": config.to_dict(),
        "data": {"files": {k: {"path": str(p), "sha256": file_sha256(Path(p))} for k, p in files.items()},
                 "columns": columns, "tsv_format": tsv_format, "train_language": train_lang,
                 "train_examples": info.get("train_examples", info.get("train_sentences")),
                 "dev_examples": info.get("dev_examples", info.get("dev_sentences"))},
        "labels": info.get("labels"),
        **({"embedding": info["embedding"]} if "embedding" in info else {}),
        "dev": dev, "test": tests, "zero_shot": zero_shot,
        "training": fit,
        "wall_seconds": round(time.time() - started, 2), "tokens_per_s": fit["tokens_per_s"],
    }


def _write_output(out: Path, model, tokenizer, result: dict) -> None:
    """The best model's files into OUT itself (each replaced atomically), then results, then cleanup."""
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=out))
    try:
        shutil.rmtree(tmp)
        if result["task"] == "embedding":  # the sentence-transformers layout, as `mmbert export` writes it
            save_embedding_dir(tmp, model, tokenizer, result)
        else:
            save_model_dir(tmp, model, tokenizer)
        for f in sorted(tmp.iterdir()):
            if f.name != "checksums.json":
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "results.md").write_text(results_markdown(result), encoding="utf-8")
    tmp_json = out / f".{RESULTS}.tmp"
    tmp_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_json, out / RESULTS)  # written last: its presence means the run finished
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out / BEST, ignore_errors=True)


def save_embedding_dir(path: Path, model, tokenizer, result: dict) -> Path:
    """An embedding model directory: the bare encoder (transformers' ModernBertModel layout), the tokenizer, the
    sentence-transformers modules and ``mmbert_embedding.json`` (the trained Matryoshka sizes, the loss, the data)."""
    model.save_pretrained(path)  # MmBertForEmbedding: the encoder's keys, no task head
    tokenizer.save(path)
    emb = result["embedding"]
    info = {"matryoshka_dims": emb["matryoshka_dims"], "loss": {k: emb[k] for k in ("scale", "symmetric",
            "matryoshka_weights", "gather", "batch_size", "cached")},
            "train_file": result["data"]["files"]["train"], "max_length": result["config"]["max_length"]}
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    write_sentence_transformers_files(path, model.config.hidden_size, max_length, info)
    return path


def results_markdown(r: dict) -> str:
    p = r["primary"]
    lines = [f"# Fine-tuning: {r['task']}", "",
             f"- train: `{r['data']['files']['train']['path']}` ({r['data']['train_examples']} examples, "
             f"language {r['data']['train_language']})",
             f"- steps {r['training']['steps']} (best {r['training']['best_step']}), "
             f"{r['training']['tokens_per_s']:,.0f} tokens/s, wall {r['wall_seconds']:.1f} s", "",
             f"dev {p}: {r['dev'][p]:.4f}", ""]
    if r["test"]:
        lines += [f"| language | {p} | examples |", "|---|---|---|"]
        for lang, m in sorted(r["test"].items()):
            n = m.get("examples", m.get("sentences", ""))
            mark = " (train)" if lang == r["data"]["train_language"] else ""
            lines.append(f"| {lang}{mark} | {m[p]:.4f} | {n} |")
        z = r["zero_shot"]
        if z and z["mean_other_languages"] is not None:
            lines.append(f"| **mean, not trained on ({len(z['other_languages'])})** | "
                         f"**{z['mean_other_languages']:.4f}** | |")
    return "\n".join(lines) + "\n"


def check_tokenizer(checkpoint, tokenizer=None):
    """Fail early when the checkpoint has no tokenizer (before any data is read)."""
    return load_tokenizer(checkpoint, tokenizer)
