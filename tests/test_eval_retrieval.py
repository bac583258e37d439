"""Embedding tasks (no fine-tuning): retrieval and bitext on fixtures, and the mteb adapter offline."""

import numpy as np
import pytest
import torch

from mmbert.eval import evaluate
from mmbert.eval.common import embed, load_tokenizer
from mmbert.eval.mteb_adapter import MtebEncoder
from mmbert.eval.retrieval import bitext_scores, retrieval_scores
from mmbert.model import MmBertForEmbedding
from tests.eval_helpers import FIXTURES, one_thread, tiny_checkpoint

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("retrieval"))


def test_embed_matches_the_embedding_head(ckpt):
    texts = ["Everyone has the right to education.", "a", "Tórshavn is the capital of the Faroe Islands. " * 5]
    model = MmBertForEmbedding.from_pretrained(ckpt)
    tok = load_tokenizer(ckpt)
    ours = embed(model, tok, texts, max_length=64)
    for i, t in enumerate(texts):  # one at a time through the padded head
        ids = tok.encode(t)[:63] + ([tok.eos_id] if len(tok.encode(t)) > 63 else [])
        ref = model(torch.tensor([ids])).detach().numpy()[0]
        diff = np.abs(ours[i] - ref)
        assert diff.max() < 1e-5, f"text {i}: max diff {diff.max():.3g}, mean {diff.mean():.3g}"


def test_scores_of_known_embeddings():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    r = retrieval_scores(q, d, np.array([[0, 1, 0], [0, 0, 1]]))
    # q0 ranks d1 (1.0) first: relevant at rank 1; q1 ranks d0 (1.0), d2 (0.8), d1 (0): relevant at rank 2
    assert r["top1_accuracy"] == pytest.approx(0.5) and r["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert r["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 2) and r["recall@5"] == pytest.approx(1.0)
    b = bitext_scores(np.eye(3), np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]))
    assert b["top1_src2tgt"] == pytest.approx(1 / 3) and b["top1_tgt2src"] == pytest.approx(1 / 3)


def test_retrieval_and_bitext_tasks(ckpt):
    r = evaluate(ckpt, "retrieval", test=[f"eng={FIXTURES / 'beir'}"])
    assert r["primary"] == "ndcg@10" and r["per_language"]["eng"]["queries"] == 2
    assert 0.0 <= r["average"]["ndcg@10"] <= 1.0
    b = evaluate(ckpt, "bitext", test=[FIXTURES / "bitext.fao.tsv"])
    assert list(b["per_language"]) == ["fao"] and b["low_resource"] == ["fao"]


def test_mteb_adapter_in_memory_bitext_task(ckpt, monkeypatch):
    mteb = pytest.importorskip("mteb")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining
    from mteb.models.models_protocols import EncoderProtocol

    pairs = [("Everyone has the right to education.", "Hvør maður hevur rætt til útbúgving."),
             ("Everyone has the right to work.", "Hvør maður hevur rætt til arbeiði."),
             ("No one shall be held in slavery.", "Eingin má verða hildin í trældómi.")]

    class ToyBitext(AbsTaskBitextMining):
        metadata = TaskMetadata(
            name="ToyUDHRBitext", dataset={"path": "local/toy", "revision": "0"}, description="in-memory toy",
            reference=None, type="BitextMining", category="t2t", modalities=["text"], eval_splits=["test"],
            eval_langs=["fao-Latn", "eng-Latn"], main_score="f1", date=None, domains=None, task_subtypes=[],
            license="cc-by-4.0", annotations_creators="derived", dialect=[], sample_creation="found",
            bibtex_citation="")

        def load_data(self, **kwargs):
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": [a for a, _ in pairs], "sentence2": [b for _, b in pairs]})})
            self.data_loaded = True

    encoder = MtebEncoder(str(ckpt), max_length=64)
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.embed_dim == 64
    results = mteb.evaluate(encoder, [ToyBitext()], cache=None)
    scores = results.task_results[0].scores["test"][0]
    assert 0.0 <= scores["f1"] <= 1.0 and "accuracy" in scores
