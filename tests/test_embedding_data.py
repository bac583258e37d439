"""Embedding training data: the shipped UDHR translation pairs, and trained sizes in served / exported models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmbert.cli import main as cli_main
from mmbert.corpus import HELDOUT_ARTICLES, load_corpus
from mmbert.corpus.pairs import DEV_ARTICLES, TRAIN_ARTICLES, translation_pairs, write_pairs
from mmbert.model.st_layout import EMBEDDING_INFO, trained_dimensions
from tests.serve_helpers import assert_allclose, make_checkpoint


@pytest.fixture(scope="module")
def records():
    return load_corpus()


def test_udhr_pairs_are_translations_of_training_articles_only(records, tmp_path):
    assert cli_main(["corpus", "pairs", "--out", str(tmp_path), "--languages", "fao_Latn", "deu_Latn",
                     "tir_Ethi"]) == 0
    text = {(r.lang_id, r.article): r.text for r in records}
    for split, articles in (("train", TRAIN_ARTICLES), ("dev", DEV_ARTICLES)):
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert {r["lang"] for r in rows} == {"fao_Latn", "deu_Latn", "tir_Ethi"}
        assert {r["article"] for r in rows} == set(articles)
        for r in rows:
            assert r["anchor"] == text[(r["lang"], r["article"])]
            assert r["positive"] == text[("eng_Latn", r["article"])]
    assert not set(TRAIN_ARTICLES) & set(DEV_ARTICLES)
    assert not (set(TRAIN_ARTICLES) | set(DEV_ARTICLES)) & HELDOUT_ARTICLES
    assert 0 not in TRAIN_ARTICLES  # the preamble is not an article
    with pytest.raises(ValueError, match="held out"):
        translation_pairs(records, [24, 25])
    with pytest.raises(ValueError, match="both the train and the dev"):
        write_pairs(tmp_path / "x", records, train_articles=[1, 2], dev_articles=[2, 3])
    all_pairs = translation_pairs(records, TRAIN_ARTICLES)
    assert len({r["lang"] for r in all_pairs}) > 500 and all(r["lang"] != "eng_Latn" for r in all_pairs)


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    """A checkpoint that declares Matryoshka training (as `mmbert finetune --task embedding` writes it)."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("emb") / "ckpt", model_max_length=64)
    (ckpt / EMBEDDING_INFO).write_text(json.dumps({"matryoshka_dims": [32, 16]}))
    return ckpt


def test_served_dimensions_are_the_trained_sizes(embedding_model):
    from fastapi.testclient import TestClient

    from mmbert.serve import Encoder
    from mmbert.serve.server import create_app

    enc = Encoder(embedding_model)
    assert enc.trained_dimensions == (64, 32, 16) == trained_dimensions(embedding_model, 64)
    with TestClient(create_app(enc)) as client:
        assert client.get("/health").json()["dimensions"] == [64, 32, 16]
        full = np.array(client.post("/v1/embeddings", json={"input": "hello"}).json()["data"][0]["embedding"])
        for d in (32, 16):
            got = client.post("/v1/embeddings", json={"input": "hello", "dimensions": d}).json()
            vec = np.array(got["data"][0]["embedding"])
            assert_allclose(vec, full[:d] / np.linalg.norm(full[:d]), 1e-6, f"dimensions={d}")
        r = client.post("/v1/embeddings", json={"input": "hello", "dimensions": 24})
        assert r.status_code == 400 and "[64, 32, 16]" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "dimensions"


def test_export_keeps_the_trained_sizes(embedding_model, tmp_path):
    from mmbert.serve.export import export

    out = export(embedding_model, "sentence-transformers", tmp_path / "st")
    assert json.loads((out / EMBEDDING_INFO).read_text())["matryoshka_dims"] == [32, 16]
    assert trained_dimensions(out, 64) == (64, 32, 16)
