"""Extractive QA in the SQuAD v1.1 format (SQuAD, TyDiQA-GoldP, XQuAD, MLQA), per language.

Follows transformers' ``run_qa.py``: ``<bos> question <eos> context-window <eos>``; a context longer than
the window is cut into overlapping windows (``stride`` tokens shared between neighbours) using the
tokenizer's character offsets; a training window that does not hold the whole answer points at ``<bos>``;
at prediction the best span (end >= start, at most ``max_answer_tokens``) over all windows of a question
is mapped back to characters of the context. Scored with SQuAD's EM and F1 (``metrics.squad_scores``).
Zero-shot transfer: fine-tune on one language's file (SQuAD, English), test on the others.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmbert.eval.classification import split_dev
from mmbert.eval.common import data_file, load_tokenizer, special_ids
from mmbert.eval.finetune import FinetuneConfig, FinetuneStopped, fit, fit_summary, get_task, run_unpadded, task_model
from mmbert.eval.loaders import QAExample, parse_file_spec, read_squad_json
from mmbert.eval.metrics import squad_scores
from mmbert.model import MmBertForQuestionAnswering


def windows(tok, example: QAExample, max_length: int, stride: int, max_query: int = 64, bos=2, eos=1) -> list[dict]:
    """Features of one question: ``input_ids``, ``offsets`` (a character span per token, None outside the
    context) and, for training, ``start`` / ``end`` token positions (0 = no answer in this window)."""
    q = tok.backend.encode(example.question, add_special_tokens=False).ids[:min(max_query, max_length // 2)]
    enc = tok.backend.encode(example.context, add_special_tokens=False)
    ids, offs = enc.ids, enc.offsets
    room = max_length - len(q) - 3
    if room < 8:
        raise ValueError(f"max_length {max_length} leaves {room} context tokens after a {len(q)}-token question")
    step = room - min(stride, room // 2)  # neighbours share ``stride`` tokens, at most half a window
    a_start = example.answer_starts[0] if example.answer_starts else None
    a_end = a_start + len(example.answers[0]) if a_start is not None else None  # exclusive
    out, begin = [], 0
    while True:
        chunk = range(begin, min(begin + room, len(ids)))
        head = [bos] + q + [eos]
        feat = {"input_ids": head + [ids[i] for i in chunk] + [eos],
                "offsets": [None] * len(head) + [offs[i] for i in chunk] + [None],
                "example_id": example.id, "start": 0, "end": 0}
        if a_start is not None:
            inside = [j for j, i in enumerate(chunk) if offs[i][1] > a_start and offs[i][0] < a_end]
            if inside and offs[chunk[inside[0]]][0] <= a_start and offs[chunk[inside[-1]]][1] >= a_end:
                feat["start"], feat["end"] = len(head) + inside[0], len(head) + inside[-1]
        out.append(feat)
        if chunk.stop >= len(ids):
            return out
        begin += step


def best_span(start_logits: list[float], end_logits: list[float], offsets: list, max_answer_tokens: int = 30,
              n_best: int = 20) -> tuple[float, tuple[int, int] | None]:
    """(score, character span) of the best valid span of one window; positions without offsets (question,
    specials, pads) are never part of an answer."""
    valid = [i for i, o in enumerate(offsets) if o is not None]
    if not valid:
        return float("-inf"), None
    starts = sorted(valid, key=lambda i: -start_logits[i])[:n_best]
    ends = sorted(valid, key=lambda i: -end_logits[i])[:n_best]
    best = (float("-inf"), None)
    for s in starts:
        for e in ends:
            if s <= e < s + max_answer_tokens:
                score = start_logits[s] + end_logits[e]
                if score > best[0]:
                    best = (score, (offsets[s][0], offsets[e][1]))
    return best


def finetune_qa(checkpoint, train: list[QAExample], dev: list[QAExample], tests: dict[str, list[QAExample]], *,
                tokenizer=None, config: FinetuneConfig | None = None, stride: int | None = None,
                max_answer_tokens: int = 30, out_dir=None, world=None, return_model: bool = False) -> tuple[dict, dict]:
    config = config or FinetuneConfig(max_length=256)
    stride = config.stride if stride is None else stride
    tok = load_tokenizer(checkpoint, tokenizer)
    torch.manual_seed(config.seed)
    model = task_model(MmBertForQuestionAnswering, checkpoint, with_labels=False)
    bos, eos, _ = special_ids(tok, model.config)

    def features(examples):
        return [f for e in examples for f in windows(tok, e, config.max_length, stride, bos=bos, eos=eos)]

    def predict(examples) -> dict[str, str]:
        return predict_answers(model, tok, examples, config.max_length, stride, max_answer_tokens)[0]

    def scores(examples):
        return squad_scores(predict(examples), {e.id: e.answers for e in examples})

    train_features = [{"input_ids": f["input_ids"], "start": f["start"], "end": f["end"]} for f in features(train)]
    result = fit(model, train_features, get_task("qa"), config, out_dir, evaluate=lambda m: scores(dev)["f1"],
                 tokenizer=tok, world=world)
    if not result.completed:
        raise FinetuneStopped(result)
    per_language = {lang: scores(ex) | {"examples": len(ex)} for lang, ex in sorted(tests.items())}
    info = {"train_examples": len(train), "dev_examples": len(dev), "best_step": result.best_step,
            "steps": result.steps, "dev_f1": result.best_score, "stride": stride, "finetune": config.to_dict(),
            "fit": fit_summary(result)}
    if return_model:
        info["model"], info["tokenizer"] = model, tok
    return per_language, info


def predict_answers(model, tok, examples: list[QAExample], max_length: int, stride: int, max_answer_tokens: int = 30,
                    with_scores: bool = False):
    """(answer text, character span in the context) per question id: the best span over all its windows;
    ``with_scores`` adds the span scores (start + end logit)."""
    bos, eos, _ = special_ids(tok, model.config)
    feats = [f for e in examples for f in windows(tok, e, max_length, stride, bos=bos, eos=eos)]
    best: dict[str, tuple[float, tuple[int, int] | None]] = {e.id: (float("-inf"), None) for e in examples}
    for group, out, _ in run_unpadded(model, [f["input_ids"] for f in feats]):
        for k, i in enumerate(group):
            f, n = feats[i], len(feats[i]["input_ids"])
            cand = best_span(out.start_logits[k, :n].tolist(), out.end_logits[k, :n].tolist(), f["offsets"],
                             max_answer_tokens)
            if cand[0] > best[f["example_id"]][0]:
                best[f["example_id"]] = cand
    context = {e.id: e.context for e in examples}
    spans = {qid: span for qid, (_, span) in best.items()}
    texts = {qid: context[qid][s[0]:s[1]].strip() if s else "" for qid, s in spans.items()}
    if with_scores:
        return texts, spans, {qid: score for qid, (score, _) in best.items()}
    return texts, spans


def run_qa(checkpoint, *, data=None, train=None, dev=None, test=None, tokenizer=None, config=None,
           languages=None, stride: int | None = None, **_) -> dict:
    """Files: ``train`` (SQuAD JSON), optional ``dev`` for early stopping (else a seeded 10% of train),
    ``test`` (one or more files, ``LANG=PATH`` or language from TyDiQA ids / the file name); with ``data``
    DIR the defaults are ``DIR/train.json`` and ``DIR/dev.json``."""
    config = config or FinetuneConfig(max_length=256)
    train_path = Path(train) if train else data_file(data, "train.json")
    train_ex = read_squad_json(train_path)
    if dev:
        dev_ex = read_squad_json(dev)
    else:
        train_ex, dev_ex = split_dev(train_ex, seed=config.seed)
    tests: dict[str, list[QAExample]] = {}
    for spec in test if isinstance(test, (list, tuple)) else [test or data_file(data, "dev.json")]:
        lang, path = parse_file_spec(spec)
        for e in read_squad_json(path, lang):
            tests.setdefault(e.lang, []).append(e)
    if languages:
        tests = {k: v for k, v in tests.items() if k in set(languages)}
    per_language, info = finetune_qa(checkpoint, train_ex, dev_ex, tests, tokenizer=tokenizer, config=config,
                                     stride=stride)
    return {"primary": "f1", "per_language": per_language, "training": info}
