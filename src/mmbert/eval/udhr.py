"""Offline evaluations on the shipped UDHR corpus, one number per language for every language in it.

- ``heldout_loss``: per-language masked-LM loss on the held-out articles 25-30 (fixed masking; the
  trainer's ``mmbert.eval.heldout.heldout_mlm_loss``), and its exponential (perplexity of the masked tokens).
- ``bitext_retrieval``: the shape of MTEB's bitext-mining tasks (Tatoeba, FLORES): each held-out article of a
  language is matched to its English version among all held-out English articles by the cosine of
  mean-pooled embeddings, and back (each English article among the language's held-out articles);
  top-1 accuracy each way. All texts are embedded once, in unpadded length-sorted batches, so the whole
  corpus (~530 versions x 6 articles) takes seconds for a miniature model.
- ``language_identification``: a fine-tuned sequence classifier over the corpus's languages, trained on
  articles 0-22, early-stopped on articles 23-24, tested on the held-out 25-30; accuracy per language (the
  share of its articles recognised), F1 per language and macro-F1 overall. Versions that differ only in
  orthography or translation (``ron_Latn`` and ``ron_Latn_1953``) share one label: language + script.

Every result groups languages by the mmBERT phase that added them; the decay-only (low-resource)
languages such as ``fao_Latn`` and ``tir_Ethi`` are reported on their own (``report.summarize``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from mmbert.corpus import load_corpus, split_heldout
from mmbert.corpus.languages import lang_of
from mmbert.eval.classification import finetune_classifier
from mmbert.eval.common import embed, encoder_of, load_model, load_tokenizer
from mmbert.eval.finetune import FinetuneConfig, config_with
from mmbert.eval.heldout import heldout_mlm_loss
from mmbert.eval.loaders import TextExample
from mmbert.eval.metrics import f1_per_class, macro_f1, top1_correct
from mmbert.eval.report import summarize
from mmbert.model import MmBertForMaskedLM, MmBertModel

PIVOT = "eng_Latn"
DEV_ARTICLES = frozenset({23, 24})


def _records(records, languages):
    records = load_corpus() if records is None else records
    if languages:
        wanted = set(languages)
        records = [r for r in records if r.lang_id in wanted or r.lang in wanted]
    return records


def _heldout_by_lang(records) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = defaultdict(dict)
    for r in split_heldout(records)[1]:
        out[r.lang_id][r.article] = r.text
    return out


def bitext_retrieval(model_or_path, tokenizer=None, *, records=None, languages=None, pivot: str = PIVOT,
                     max_length: int = 128, max_tokens: int = 16384, bf16: bool = True,
                     precision: str | None = None) -> dict:
    """Per-language top-1 accuracy of held-out article <-> English article matching, both directions.
    Each article is embedded from its first ``max_length`` tokens; ``bf16`` autocasts the encoder, unless
    ``precision`` (auto, fp32, bf16, int8; model/precision.py) is given: then the model runs converted to it
    (a loaded model is copied, not changed) and without autocast."""
    tok = load_tokenizer(model_or_path, tokenizer)
    if precision is not None:
        model, bf16 = load_model(MmBertModel, encoder_of(model_or_path) if hasattr(model_or_path, "config")
                                 else model_or_path, precision=precision), False
    else:
        model = load_model(MmBertModel, model_or_path) if not hasattr(model_or_path, "config") else model_or_path
    all_records = load_corpus() if records is None else records
    by_lang = _heldout_by_lang(_records(all_records, languages))
    pivot_texts = _heldout_by_lang([r for r in all_records if r.lang_id == pivot]).get(pivot)
    if not pivot_texts:
        raise ValueError(f"the pivot {pivot!r} has no held-out articles")
    by_lang.pop(pivot, None)
    keys = [(lang, a) for lang in sorted(by_lang) for a in sorted(by_lang[lang])]
    pivot_articles = sorted(pivot_texts)
    texts = [by_lang[lang][a] for lang, a in keys] + [pivot_texts[a] for a in pivot_articles]
    emb = embed(encoder_of(model), tok, texts, max_length, max_tokens, bf16=bf16)
    vectors = {lang: {} for lang in by_lang}
    for (lang, a), v in zip(keys, emb):
        vectors[lang][a] = v
    return _bitext_scores(vectors, dict(zip(pivot_articles, emb[len(keys):])), pivot)


def _bitext_scores(vectors: dict[str, dict[int, np.ndarray]], pivot_vectors: dict[int, np.ndarray],
                   pivot: str) -> dict:
    """Top-1 both ways from L2-normalised article vectors: {lang: {article: (H,)}} against the pivot's."""
    pivot_articles = sorted(pivot_vectors)
    eng = np.stack([pivot_vectors[a] for a in pivot_articles])  # (6, H)
    per_language = {}
    for lang in sorted(vectors):
        arts = [a for a in sorted(vectors[lang]) if a in pivot_vectors]
        if not arts:
            continue
        own_all = sorted(vectors[lang])
        own = np.stack([vectors[lang][a] for a in own_all])  # (n, H)
        sims = own @ eng.T  # (n, 6)
        xx2eng = [top1_correct(sims[own_all.index(a)], np.array(pivot_articles) == a) for a in arts]
        eng2xx = [top1_correct(sims[:, pivot_articles.index(a)], np.array(own_all) == a) for a in arts]
        fwd, bwd = float(np.mean(xx2eng)), float(np.mean(eng2xx))
        per_language[lang] = {"top1_accuracy": (fwd + bwd) / 2, "top1_xx2eng": fwd, "top1_eng2xx": bwd,
                              "articles": len(arts)}
    return summarize("udhr-bitext", per_language, "top1_accuracy", pivot=pivot, chance_xx2eng=1 / len(eng))


def heldout_and_bitext(model, tokenizer, *, records=None, languages=None, mask_ratio: float = 0.15,
                       seq_len: int = 128, seed: int = 0, batch_tokens: int = 8192, autocast=None,
                       pivot: str = PIVOT) -> tuple[dict, dict]:
    """``heldout_loss`` and ``bitext_retrieval`` from one forward pass (the recipe's table of every checkpoint).

    Each held-out article contributes its first ``seq_len`` tokens, masked as ``heldout_loss`` masks (fixed
    seed per language): the masked tokens give the per-language loss, and the same forward's mean-pooled last
    hidden states are the article vectors matched against English. So bitext here embeds *masked* text - a
    harder, slightly lower-scoring variant of ``bitext_retrieval`` - at half the cost of the two passes
    (all ~530 versions x 6 articles of the shipped corpus: 14 s against 43 s for a miniature model, 2 cores).
    """
    from mmbert.eval.heldout import fixed_heldout_set

    all_records = load_corpus() if records is None else records
    by_lang = _heldout_by_lang(_records(all_records, languages))
    pivot_by_article = _heldout_by_lang([r for r in all_records if r.lang_id == pivot]).get(pivot)
    if not pivot_by_article:
        raise ValueError(f"the pivot {pivot!r} has no held-out articles")
    articles = {lang: sorted(arts) for lang, arts in by_lang.items()}
    texts = {lang: [by_lang[lang][a] for a in articles[lang]] for lang in by_lang}
    pivot_key = pivot if pivot in texts else f"{pivot} (pivot)"
    if pivot not in texts:
        articles[pivot_key] = sorted(pivot_by_article)
        texts[pivot_key] = [pivot_by_article[a] for a in articles[pivot_key]]
    held = fixed_heldout_set(tokenizer, texts, mask_ratio, seq_len, seed, None, batch_tokens, first_piece_only=True)
    losses, vectors = held.evaluate_with_embeddings(model, autocast)
    by_article = {lang: {articles[lang][t]: v.numpy() for t, v in vecs.items()} for lang, vecs in vectors.items()}
    pivot_vectors = by_article.pop(pivot_key)
    if pivot_key != pivot:
        losses.pop(pivot_key)
    else:
        by_article.pop(pivot, None)
    per_language = {lang: {"mlm_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "articles": len(texts[lang])}
                    for lang, loss in losses.items() if not math.isnan(loss)}
    heldout = summarize("udhr-mlm", per_language, "mlm_loss", mask_ratio=mask_ratio, seq_len=seq_len, seed=seed,
                        lower_is_better=True, first_piece_only=True)
    return heldout, _bitext_scores(by_article, pivot_vectors, pivot) | {"masked_input": True}


def heldout_loss(model_or_path, tokenizer=None, *, records=None, languages=None, mask_ratio: float = 0.15,
                 seq_len: int = 256, seed: int = 0, batch_tokens: int = 8192,
                 max_tokens_per_language: int | None = None, autocast=None) -> dict:
    """Per-language masked-token cross-entropy (and its exp) on the held-out articles. The tokenized, masked set
    is built once per tokenizer object and reused (``eval.heldout.fixed_heldout_set``); ``autocast``: an optional
    context manager factory for the forward (e.g. bf16)."""
    tok = load_tokenizer(model_or_path, tokenizer)
    model = load_model(MmBertForMaskedLM, model_or_path) if not hasattr(model_or_path, "config") else model_or_path
    texts = {lang: [t for _, t in sorted(arts.items())] for lang, arts in _heldout_by_lang(_records(records, languages)).items()}
    losses = heldout_mlm_loss(model, tok, texts, mask_ratio=mask_ratio, seq_len=seq_len, seed=seed,
                              batch_tokens=batch_tokens, max_tokens_per_language=max_tokens_per_language,
                              autocast=autocast)
    per_language = {lang: {"mlm_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "articles": len(texts[lang])}
                    for lang, loss in losses.items() if not math.isnan(loss)}
    # lower is better: the primary metric is still the loss; compare tables say so
    return summarize("udhr-mlm", per_language, "mlm_loss", mask_ratio=mask_ratio, seq_len=seq_len, seed=seed,
                     lower_is_better=True)


def langid_label(lang_id: str) -> str:
    """Language + script (``ron_Latn_1953`` -> ``ron_Latn``); ``und`` versions keep their whole id."""
    return lang_id if lang_of(lang_id) == "und" else "_".join(lang_id.split("_")[:2])


def language_identification(checkpoint, tokenizer=None, *, records=None, languages=None,
                            config: FinetuneConfig | None = None) -> dict:
    """Fine-tune a classifier over the corpus's languages; accuracy and F1 per language, macro-F1 overall."""
    config = config or config_with(epochs=1e6, lr=3e-4, batch_size=32, max_steps=400, eval_every=100, patience=2,
                                   max_length=64, progress=False)
    train, dev, test = [], [], []
    for r in _records(records, languages):
        ex = TextExample(r.text, None, langid_label(r.lang_id), langid_label(r.lang_id))
        (test if r.article >= 25 else dev if r.article in DEV_ARTICLES else train).append(ex)
    labels = {e.label for e in train}
    dev = [e for e in dev if e.label in labels]
    test = [e for e in test if e.label in labels]
    if not dev:
        dev = test  # only when the chosen languages lack articles 23-24
    per, info = finetune_classifier(checkpoint, train, dev, {"all": test}, tokenizer=tokenizer, config=config,
                                    primary="accuracy", return_predictions=True)
    preds, gold = info.pop("predictions")["all"], [e.label for e in test]
    f1 = f1_per_class(preds, gold)
    per_language = {}
    for lab in sorted(set(gold)):
        idx = [i for i, g in enumerate(gold) if g == lab]
        per_language[lab] = {"accuracy": sum(preds[i] == lab for i in idx) / len(idx), "f1": f1[lab],
                             "articles": len(idx)}
    info["overall"] = per["all"] | {"macro_f1": macro_f1(preds, gold)}
    return summarize("udhr-langid", per_language, "accuracy", training=info)
