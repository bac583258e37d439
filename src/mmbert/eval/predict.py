"""A fine-tuned task model over inputs: labels with scores, word-level tags, answer spans.

``Predictor.load(DIR)`` opens a directory ``mmbert finetune`` wrote (or any transformers ModernBert*For*
checkpoint with a tokenizer): the head from ``architectures``, labels from ``id2label``, the fine-tuning
``max_length`` / ``stride`` from ``mmbert_finetune`` when present. Inputs run in token-budgeted unpadded
batches (``finetune.run_unpadded``), encoded exactly as in training (``classification.text_features``,
``token_classification.align``, ``qa.windows``), so predictions equal what the dev evaluation scored.

Output per input:
- classification: ``{"label", "score", "scores": {label: probability}}`` (softmax); regression: ``{"score"}``;
- token classification: ``{"tokens": [{"word", "label", "score"}]}``, one per input word (words past
  ``max_length`` get "O" and score null, as in evaluation);
- qa: ``{"answer", "start", "end", "score"}`` with character offsets into the context (``context[start:end]
  == answer``), ``answer`` "" and offsets null when no window gives a span.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmbert.eval.common import load_tokenizer, special_ids
from mmbert.eval.finetune import run_unpadded
from mmbert.eval.loaders import QAExample, TextExample
from mmbert.model import (
    MmBertForQuestionAnswering,
    MmBertForSequenceClassification,
    MmBertForTokenClassification,
    ModelConfig,
)

HEADS = {
    "ModernBertForSequenceClassification": ("classification", MmBertForSequenceClassification),
    "ModernBertForTokenClassification": ("token-classification", MmBertForTokenClassification),
    "ModernBertForQuestionAnswering": ("qa", MmBertForQuestionAnswering),
}


class Predictor:
    def __init__(self, model, tokenizer, task: str, max_length: int = 128, stride: int = 32, max_tokens: int = 8192):
        self.model, self.tok, self.task = model.eval(), tokenizer, task
        self.max_length, self.stride, self.max_tokens = max_length, stride, max_tokens
        extra = model.config.extra
        id2label = extra.get("id2label")
        self.labels = [id2label[str(i)] for i in range(len(id2label))] if id2label else None

    @classmethod
    def load(cls, directory, device: str = "cpu", max_length: int | None = None) -> "Predictor":
        directory = Path(directory)
        config = ModelConfig.load(directory)
        arch = (config.extra.get("architectures") or [""])[0]
        if arch not in HEADS:
            raise ValueError(f"{directory / 'config.json'}: architecture {arch!r} is not a task model; expected one "
                             f"of {sorted(HEADS)} (fine-tune it first: mmbert finetune)")
        task, head = HEADS[arch]
        if task == "classification" and config.num_labels == 1:
            task = "regression"
        meta = config.extra.get("mmbert_finetune", {})
        model = head.from_pretrained(directory, device=device)
        return cls(model, load_tokenizer(directory), task, max_length or meta.get("max_length", 128),
                   meta.get("stride", 32))

    # ---- classification / regression ------------------------------------------------------------------
    def classify(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        from mmbert.eval.classification import text_features

        if self.task not in ("classification", "regression"):
            raise ValueError(f"this is a {self.task} model, not a classifier")
        examples = [TextExample(t, p, "") for t, p in zip(texts, pairs or [None] * len(texts))]
        feats = text_features(self.tok, examples, {}, self.max_length, self.model.config)
        out: list[dict] = [{}] * len(texts)
        for group, o, _ in run_unpadded(self.model, [f["input_ids"] for f in feats], self.max_tokens):
            logits = o.logits.float()
            if self.task == "regression":
                for i, v in zip(group, logits.squeeze(-1).tolist()):
                    out[i] = {"score": v}
                continue
            probs = torch.softmax(logits, dim=-1)
            for i, p in zip(group, probs.tolist()):
                j = max(range(len(p)), key=p.__getitem__)
                out[i] = {"label": self._label(j), "score": p[j],
                          "scores": {self._label(k): v for k, v in enumerate(p)}}
        return out

    def _label(self, j: int) -> str:
        return self.labels[j] if self.labels else f"LABEL_{j}"

    # ---- token classification ---------------------------------------------------------------------
    def tag(self, sentences: list[list[str]]) -> list[list[dict]]:
        from mmbert.eval.token_classification import align

        if self.task != "token-classification":
            raise ValueError(f"this is a {self.task} model, not a tagger")
        bos, eos, _ = special_ids(self.tok, self.model.config)
        aligned = [align(self.tok, tuple(words), self.max_length, bos, eos) for words in sentences]
        out: list[list[dict]] = [[]] * len(sentences)
        for group, o, cu in run_unpadded(self.model, [ids for ids, _ in aligned], self.max_tokens):
            probs = torch.softmax(o.logits.float(), dim=-1)  # (N, C)
            for k, i in enumerate(group):
                words = sentences[i]
                tags = [{"word": w, "label": "O", "score": None} for w in words]
                for pos, w in enumerate(aligned[i][1]):
                    if w >= 0:
                        p = probs[int(cu[k]) + pos]
                        j = int(p.argmax())
                        tags[w] = {"word": words[w], "label": self._label(j), "score": float(p[j])}
                out[i] = tags
        return out

    # ---- extractive QA ------------------------------------------------------------------------------
    def answer(self, questions: list[str], contexts: list[str], max_answer_tokens: int = 30) -> list[dict]:
        from mmbert.eval.qa import predict_answers

        if self.task != "qa":
            raise ValueError(f"this is a {self.task} model, not a QA model")
        examples = [QAExample(str(i), q, c, (), ()) for i, (q, c) in enumerate(zip(questions, contexts))]
        texts, spans, scores = predict_answers(self.model, self.tok, examples, self.max_length, self.stride,
                                               max_answer_tokens, with_scores=True)
        out = []
        for e in examples:
            span = spans[e.id]
            if span is None:
                out.append({"answer": "", "start": None, "end": None, "score": None})
                continue
            s, t = span
            raw = e.context[s:t]
            s += len(raw) - len(raw.lstrip())  # the span without the piece's leading space
            t -= len(raw) - len(raw.rstrip())
            out.append({"answer": e.context[s:t], "start": s, "end": t, "score": scores[e.id]})
        return out
