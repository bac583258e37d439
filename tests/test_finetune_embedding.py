"""`mmbert finetune --task embedding` end to end on a tiny model: it learns a synthetic translation task, writes a
sentence-transformers directory whose encode equals mmbert's, serves only its trained sizes, and runs unchanged
through `mmbert eval --task retrieval` and the mteb adapter; the pairs reader's formats and errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mmbert.cli import main as cli_main
from mmbert.eval.loaders import DataFormatError, read_pairs
from tests.eval_helpers import FIXTURES, make_checkpoint, one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

# Two made-up "languages" with a fixed word-for-word translation: a random model does not know it, so
# retrieving a sentence's translation among the others needs training (and generalises to new sentences).
_RNG = random.Random(0)
SOURCE = sorted({"".join(_RNG.choice("ptkmn") + _RNG.choice("aeiou") for _ in range(2)) for _ in range(60)})[:30]
TARGET = sorted({"".join(_RNG.choice("bdgrl") + _RNG.choice("yw") + _RNG.choice("aeiou")) for _ in range(80)})[:30]
LEXICON = dict(zip(SOURCE, TARGET))


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(SOURCE, rng.randint(3, 6))
        rows.append({"anchor": " ".join(words), "positive": " ".join(LEXICON[w] for w in words), "lang": "syn"})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    train, dev = _write_jsonl(root / "train.jsonl", _pairs(400, 1)), _write_jsonl(root / "dev.jsonl", _pairs(48, 2))
    texts = [r[k] for r in _pairs(300, 3) for k in ("anchor", "positive")]
    ckpt = make_checkpoint(root / "ckpt", texts)
    out = root / "model"
    args = ["finetune", str(ckpt), "--task", "embedding", "--train", str(train), "--dev", str(dev), "--out", str(out),
            "--batch-size", "32", "--cached", "--symmetric", "--matryoshka-dims", "32", "16", "--lr", "2e-3",
            "--epochs", "5", "--eval-every", "20", "--patience", "0", "--max-length", "16", "--precision", "fp32",
            "--no-progress", "--set", "micro_batch_tokens=96", "--set", "warmup=0.1"]
    assert cli_main(args) == 0
    return ckpt, out, dev


def test_learns_the_translation_and_writes_results(trained):
    ckpt, out, dev = trained
    from mmbert.eval.common import load_tokenizer
    from mmbert.eval.embedding import pair_retrieval
    from mmbert.model import MmBertForEmbedding

    result = json.loads((out / "results.json").read_text())
    before = pair_retrieval(MmBertForEmbedding.from_pretrained(ckpt), load_tokenizer(ckpt), read_pairs(dev), 16)
    after = result["dev"]
    assert result["task"] == "embedding" and result["primary"] == "ndcg@10"
    assert after["ndcg@10"] >= 0.9 and after["top1_accuracy"] >= 0.8, (before, after)
    assert before["top1_accuracy"] < 0.5, before  # the task is not solved by the random model
    assert result["embedding"]["matryoshka_dims"] == [32, 16] and result["embedding"]["cached"] is True
    assert result["training"]["dev_history"] and result["training"]["skipped_steps"] == 0


def test_output_is_a_sentence_transformers_model_equal_to_mmbert(trained):
    st = pytest.importorskip("sentence_transformers")
    from mmbert.serve import Encoder

    _, out, _ = trained
    texts = [r["anchor"] for r in _pairs(5, 9)] + ["", "ka " * 80]
    ours = Encoder(out).encode(texts)
    model = st.SentenceTransformer(str(out), local_files_only=True, device="cpu")
    got = model.encode(texts, batch_size=3, convert_to_numpy=True)
    diff = np.abs(got - ours)
    assert diff.max() < 1e-5, f"max {diff.max():.3g} mean {diff.mean():.3g}"
    assert not (out / "checkpoints").exists() and not (out / "best").exists()
    info = json.loads((out / "mmbert_embedding.json").read_text())
    assert info["matryoshka_dims"] == [32, 16] and info["loss"]["symmetric"] is True


def test_served_with_its_trained_sizes(trained):
    from fastapi.testclient import TestClient

    from mmbert.serve import Encoder
    from mmbert.serve.server import create_app

    _, out, _ = trained
    with TestClient(create_app(Encoder(out))) as client:
        assert client.get("/health").json()["dimensions"] == [64, 32, 16]
        ok = client.post("/v1/embeddings", json={"input": ["a b"], "dimensions": 16})
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 16
        assert client.post("/v1/embeddings", json={"input": ["a b"], "dimensions": 8}).status_code == 400


def test_eval_retrieval_and_mteb_run_on_the_trained_model(trained, tmp_path):
    from mmbert.eval import evaluate
    from mmbert.eval.mteb_adapter import MtebEncoder

    _, out, _ = trained
    r = evaluate(out, "retrieval", test=[f"eng={FIXTURES / 'beir'}"])
    assert r["per_language"]["eng"]["queries"] == 2 and 0.0 <= r["average"]["ndcg@10"] <= 1.0
    assert cli_main(["eval", str(out), "--task", "retrieval", "--test", f"eng={FIXTURES / 'beir'}",
                     "--out", str(tmp_path / "r.json")]) == 0
    enc = MtebEncoder(str(out), max_length=16)
    vectors = enc.encode([{"text": ["pa ka", "ma ni"]}])
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert enc.mteb_model_meta.embed_dim == 64


def test_pairs_reader_formats_columns_and_errors(tmp_path):
    rows = [{"q": "a", "d": "b", "negative_2": "y", "negative_1": "x"}, {"q": "c", "d": "e", "negative_2": "w",
                                                                         "negative_1": "z"}]
    _write_jsonl(tmp_path / "p.jsonl", rows)
    ex = read_pairs(tmp_path / "p.jsonl", "q", "d")
    assert [e.texts for e in ex] == [("a", "b", "x", "y"), ("c", "e", "z", "w")]  # negatives in number order
    (tmp_path / "p.csv").write_text('anchor,positive\n"a, quoted",b\nc,d\n', encoding="utf-8")
    assert [e.texts for e in read_pairs(tmp_path / "p.csv")] == [("a, quoted", "b"), ("c", "d")]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"anchor": ["a"], "positive": ["b"], "negative": ["n"]}), tmp_path / "p.parquet")
    assert [e.texts for e in read_pairs(tmp_path / "p.parquet")] == [("a", "b", "n")]
    _write_jsonl(tmp_path / "bad.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "", "positive": "b"}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: empty or non-text 'anchor'"):
        read_pairs(tmp_path / "bad.jsonl")
    with pytest.raises(DataFormatError, match="positive"):
        read_pairs(tmp_path / "p.jsonl", "q", "positive")
