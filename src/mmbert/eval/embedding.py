"""Embedding training on pairs (``mmbert finetune --task embedding``): features, the dev retrieval metric, the run.

- Features: each text of an example (anchor, positive, negatives) tokenised as every embedding is
  (``<bos> text <eos>``, cut to ``max_length``: ``common.encode``, the same ids as ``Encoder`` and
  sentence-transformers give), one ``{"texts": [...]}`` per example (``train.embedding``).
- Dev metric (early stopping, the best model kept): retrieval as sentence-transformers'
  ``InformationRetrievalEvaluator`` scores it — each anchor against every distinct positive and negative text
  of the dev file, cosine of the embeddings, its own positive relevant; nDCG@10 primary, with MRR@10,
  recall@k and top-1 accuracy (``metrics.ranking_scores``). The same for each ``--test`` file.
"""

from __future__ import annotations

import numpy as np

from mmbert.eval.common import embed, encode, load_model, load_tokenizer
from mmbert.eval.finetune import FinetuneConfig, FinetuneStopped, fit, fit_summary
from mmbert.eval.loaders import PairExample
from mmbert.eval.metrics import ranking_scores
from mmbert.model import MmBertForEmbedding
from mmbert.train.embedding import EmbeddingSettings, EmbeddingTask

PRIMARY = "ndcg@10"


def pair_features(tok, examples: list[PairExample], max_length: int, config=None) -> list[dict]:
    """One ``{"texts": [ids of anchor, positive, negatives...]}`` per example."""
    columns = {len(e.texts) for e in examples}
    if len(columns) > 1:
        raise ValueError(f"examples have different numbers of texts: {sorted(columns)}")
    width = columns.pop() if columns else 2
    ids = [encode(tok, [e.texts[c] for e in examples], max_length=max_length, config=config) for c in range(width)]
    return [{"texts": [ids[c][i] for c in range(width)]} for i in range(len(examples))]


def pair_retrieval(model, tok, examples: list[PairExample], max_length: int = 128, max_tokens: int = 16384) -> dict:
    """Each anchor retrieves its positive among every distinct positive / negative text of ``examples``."""
    docs = list(dict.fromkeys(t for e in examples for t in e.texts[1:]))
    col = {t: j for j, t in enumerate(docs)}
    queries = [e.texts[0] for e in examples]
    q = embed(model, tok, queries, max_length, max_tokens)
    d = embed(model, tok, docs, max_length, max_tokens)
    relevance = np.zeros((len(queries), len(docs)))
    relevance[np.arange(len(queries)), [col[e.texts[1]] for e in examples]] = 1.0
    return ranking_scores(q @ d.T, relevance) | {"queries": len(queries), "documents": len(docs)}


def finetune_embedding(checkpoint, train: list[PairExample], dev: list[PairExample],
                       tests: dict[str, list[PairExample]], *, tokenizer=None, config: FinetuneConfig | None = None,
                       out_dir=None, world=None, return_model: bool = False) -> tuple[dict, dict]:
    """Train an embedding model on ``train`` (early stopping on ``dev``'s nDCG@10); retrieval scores per
    ``tests`` language. Returns (per-language metrics, training info) as the other fine-tuning tasks do."""
    config = config or FinetuneConfig(task="embedding")
    settings = EmbeddingSettings.from_extra(config.extra)
    tok = load_tokenizer(checkpoint, tokenizer)
    model = load_model(MmBertForEmbedding, checkpoint)
    settings.validate(model.config.hidden_size)
    task = EmbeddingTask(settings, config.micro_batch_tokens, world.world_size if world is not None else 1)
    features = pair_features(tok, train, config.max_length, model.config)

    def score(m, examples):
        return pair_retrieval(m, tok, examples, config.max_length)

    result = fit(model, features, task, config, out_dir, evaluate=lambda m: score(m, dev)[PRIMARY], tokenizer=tok,
                 world=world)
    if not result.completed:
        raise FinetuneStopped(result)
    per_language = {lang: score(model, examples) for lang, examples in sorted(tests.items())}
    info = {"train_examples": len(train), "dev_examples": len(dev), "best_step": result.best_step,
            "steps": result.steps, "dev_" + PRIMARY: result.best_score, "finetune": config.to_dict(),
            "embedding": settings.to_dict(), "fit": fit_summary(result)}
    if return_model:
        info["model"], info["tokenizer"] = model, tok
    return per_language, info
