"""Token classification (NER / PAN-X / CoNLL-2002/2003) from CoNLL files, scored with entity-level F1.

Words are joined with single spaces and tokenised once; each sub-word is assigned to the word its
character offsets fall in, and only a word's first sub-word carries the label (the rest are -100), as
transformers' ``run_ner.py``. Words cut off by ``max_length`` are predicted ``O``. Zero-shot transfer:
train on one language's file, test on the others.
"""

from __future__ import annotations

import bisect
import logging

import torch

from mmbert.eval.classification import split_dev
from mmbert.eval.common import data_file, load_tokenizer, special_ids
from mmbert.eval.finetune import (
    FinetuneConfig,
    FinetuneStopped,
    fit,
    fit_summary,
    get_task,
    label_order,
    run_unpadded,
    task_model,
)
from mmbert.eval.loaders import TokenExample, parse_file_spec, read_conll
from mmbert.eval.metrics import entity_scores
from mmbert.model import MmBertForTokenClassification

log = logging.getLogger(__name__)


def align(tok, words: tuple[str, ...], max_length: int, bos: int, eos: int) -> tuple[list[int], list[int]]:
    """(input_ids, word index per position: -1 for specials and non-first sub-words)."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    enc = tok.backend.encode(" ".join(words), add_special_tokens=False)
    ids, first_of, seen = [bos], [-1], set()
    for t, (s, e) in zip(enc.ids, enc.offsets):
        if len(ids) >= max_length - 1:
            break
        # the word holding the token's last character: a leading "▁" (the space) does not move it back
        w = bisect.bisect_right(starts, max(s, e - 1)) - 1
        ids.append(t)
        first_of.append(w if w not in seen else -1)
        seen.add(w)
    return ids + [eos], first_of + [-1]


def tag_features(tok, examples: list[TokenExample], label_id: dict[str, int], max_length: int, bos: int,
                 eos: int) -> list[dict]:
    """``{"input_ids", "labels", "first_of"}`` per sentence: the label on each word's first piece, -100 elsewhere."""
    out = []
    for e in examples:
        ids, first_of = align(tok, e.tokens, max_length, bos, eos)
        out.append({"input_ids": ids, "first_of": first_of,
                    "labels": [label_id.get(e.tags[w], -100) if w >= 0 else -100 for w in first_of]})
    return out


def finetune_tagger(checkpoint, train: list[TokenExample], dev: list[TokenExample],
                    tests: dict[str, list[TokenExample]], *, tokenizer=None,
                    config: FinetuneConfig | None = None, out_dir=None, world=None,
                    return_model: bool = False, strict_labels: bool = False) -> tuple[dict, dict]:
    """Fine-tune a tagger; dev / test tags unseen in training are an error with ``strict_labels`` (the
    product), else a warning (benchmarks scored zero-shot on another tag set count them as misses)."""
    config = config or FinetuneConfig()
    tok = load_tokenizer(checkpoint, tokenizer)
    labels = label_order(t for e in train for t in e.tags)
    for name, examples in {"dev": dev, **{f"test ({k})": v for k, v in tests.items()}}.items():
        unknown = sorted({t for e in examples for t in e.tags} - set(labels))
        if unknown:
            message = f"{name} tags {unknown[:5]} never occur in the training data"
            if strict_labels:
                raise ValueError(message)
            log.warning("%s: they are scored as misses", message)
    label_id = {lab: i for i, lab in enumerate(labels)}
    torch.manual_seed(config.seed)
    model = task_model(MmBertForTokenClassification, checkpoint, labels)
    bos, eos, _ = special_ids(tok, model.config)

    def predict(examples) -> list[list[str]]:
        feats, out = tag_features(tok, examples, label_id, config.max_length, bos, eos), [None] * len(examples)
        for group, o, cu in run_unpadded(model, [f["input_ids"] for f in feats]):
            pred = o.logits.argmax(-1).tolist()  # (N,) over the stream
            for k, i in enumerate(group):
                tags = ["O"] * len(examples[i].tokens)  # words cut off by max_length: O
                for pos, w in enumerate(feats[i]["first_of"]):
                    if w >= 0:
                        tags[w] = labels[pred[int(cu[k]) + pos]]
                out[i] = tags
        return out

    def scores(examples):
        s = entity_scores(predict(examples), [list(e.tags) for e in examples])
        return {k: v for k, v in s.items() if k != "per_type"} | {"per_type_f1": s["per_type"]}

    feats = tag_features(tok, train, label_id, config.max_length, bos, eos)
    result = fit(model, feats, get_task("token-classification"), config, out_dir,
                 evaluate=lambda m: scores(dev)["f1"], tokenizer=tok, world=world)
    if not result.completed:
        raise FinetuneStopped(result)
    per_language = {lang: scores(ex) | {"sentences": len(ex)} for lang, ex in sorted(tests.items())}
    info = {"labels": labels, "train_sentences": len(train), "dev_sentences": len(dev),
            "best_step": result.best_step, "steps": result.steps, "dev_f1": result.best_score,
            "finetune": config.to_dict(), "fit": fit_summary(result)}
    if return_model:
        info["model"], info["tokenizer"] = model, tok
    return per_language, info


def run_ner(checkpoint, *, data=None, train=None, dev=None, test=None, tokenizer=None, config=None,
            languages=None, train_language: str = "und", **_) -> dict:
    """Files: ``train`` (CoNLL), optional ``dev`` (else a seeded 10% of train), ``test`` files
    (``LANG=PATH`` or the language shown by the file name); ``data`` DIR defaults: train, dev, test files
    named ``train.txt`` / ``dev.txt`` / ``test.txt``."""
    config = config or FinetuneConfig()
    train_ex = read_conll(train or data_file(data, "train.txt"), train_language)
    if dev:
        dev_ex = read_conll(dev, train_language)
    else:
        train_ex, dev_ex = split_dev(train_ex, seed=config.seed)
    tests: dict[str, list[TokenExample]] = {}
    for spec in test if isinstance(test, (list, tuple)) else [test or data_file(data, "test.txt")]:
        lang, path = parse_file_spec(spec)
        tests.setdefault(lang or train_language, []).extend(read_conll(path, lang or train_language))
    if languages:
        tests = {k: v for k, v in tests.items() if k in set(languages)}
    per_language, info = finetune_tagger(checkpoint, train_ex, dev_ex, tests, tokenizer=tokenizer, config=config)
    return {"primary": "f1", "per_language": per_language, "training": info}
