"""`mmbert finetune` / `mmbert predict` end to end on a tiny model: each task learns a small synthetic task,
saves a directory that transformers' AutoModelFor* loads with equal logits, and predicts; bad input is a
one-line error naming the file and line."""

import json
import random

import pytest
import torch

from mmbert.cli import main
from tests.eval_helpers import one_thread, tiny_checkpoint, toy_sentence, write_conll, write_squad

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

FAST = ["--no-progress", "--precision", "fp32", "--batch-tokens", "512", "--max-length", "32"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ft"))


def write_polarity(path, n, seed, fmt="csv"):
    """Texts with one polarity word among fillers; label pos / neg (JSONL: also a numeric score)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.random() < 0.5
        rows.append({"text": toy_sentence(rng, y), "label": "pos" if y else "neg", "score": float(y)})
    if fmt == "csv":
        path.write_text("text,label\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hf_logits(out, texts=None, pairs=None, words=None, kind="seq"):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    cls = {"seq": transformers.AutoModelForSequenceClassification, "tok": transformers.AutoModelForTokenClassification,
           "qa": transformers.AutoModelForQuestionAnswering}[kind]
    model = cls.from_pretrained(out, local_files_only=True, attn_implementation="eager").eval()
    enc = tok(texts, pairs, padding=True, return_tensors="pt") if pairs else tok(texts, padding=True,
                                                                                   return_tensors="pt")
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return enc, o


def assert_close(a, b, tol=1e-5):
    diff = (a - b).abs()
    assert diff.max() <= tol, f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"


# ---- classification -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clf_run(ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    tr, dv, te = write_polarity(d / "train.csv", 240, 1), write_polarity(d / "dev.csv", 60, 2), write_polarity(
        d / "test.csv", 100, 3)
    out = d / "out"
    assert main(["finetune", str(ckpt), "--task", "classification", "--train", f"eng={tr}", "--dev", str(dv),
                 "--test", f"eng={te}", f"fra={te}", "--out", str(out), "--lr", "2e-3", "--epochs", "8", *FAST]) == 0
    return d, out


def test_classification_learns_saves_and_reports(clf_run):
    d, out = clf_run
    r = json.loads((out / "results.json").read_text())
    assert r["test"]["eng"]["accuracy"] >= 0.95, r["test"]
    assert r["dev"]["accuracy"] >= 0.95 and r["labels"] == ["neg", "pos"]
    assert r["data"]["files"]["train"]["sha256"] and set(r["data"]["files"]) == {"train", "dev", "test:eng", "test:fra"}
    assert r["config"]["lr"] == 2e-3 and r["training"]["tokens_per_s"] > 0 and r["wall_seconds"] > 0
    assert r["zero_shot"]["other_languages"] == ["fra"]
    assert r["zero_shot"]["mean_other_languages"] == r["test"]["fra"]["accuracy"]
    assert "mean, not trained on (1)" in (out / "results.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["ModernBertForSequenceClassification"]
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}
    assert not (out / "checkpoints").exists() and not (out / "best").exists()
    assert main(["finetune", str(out.parent / "x"), "--task", "classification", "--train", str(d / "train.csv"),
                 "--out", str(out)]) == 1  # a finished output directory is not overwritten


def test_classification_loads_in_transformers_with_equal_logits(clf_run):
    from mmbert.model import MmBertForSequenceClassification

    _, out = clf_run
    texts = ["the film was good", "it was a really bad and ugly story with music", "nice"]
    enc, theirs = hf_logits(out, texts)
    ours = MmBertForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        mine = ours(enc["input_ids"], enc["attention_mask"]).logits
    assert_close(mine, theirs.logits)


def test_predict_and_export_onnx(clf_run, tmp_path):
    d, out = clf_run
    inp = tmp_path / "in.txt"
    inp.write_text("the film was good\nthe plot was awful\n", encoding="utf-8")
    assert main(["predict", str(out), "--input", str(inp), "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-5 and rows[0]["score"] == max(rows[0]["scores"].values())
    assert main(["export", str(out), "--to", "onnx", str(tmp_path / "onnx")]) == 0
    import onnxruntime

    from mmbert.model import MmBertForSequenceClassification

    enc, _ = hf_logits(out, ["the film was good", "it was a really bad and ugly story with music and plot"])
    sess = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()}
    (logits,) = sess.run(["logits"], feeds)
    with torch.no_grad():
        ours = MmBertForSequenceClassification.from_pretrained(out)(enc["input_ids"], enc["attention_mask"]).logits
    assert_close(torch.from_numpy(logits), ours, 1e-4)


def test_serve_classify(clf_run):
    from fastapi.testclient import TestClient

    from mmbert.serve.encoder import Encoder
    from mmbert.serve.server import create_app

    _, out = clf_run
    with TestClient(create_app(Encoder(out))) as client:
        r = client.post("/v1/classify", json={"input": ["the film was good", "the plot was awful"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["label"] for x in body["data"]] == ["pos", "neg"] and [x["index"] for x in body["data"]] == [0, 1]
        assert set(body["data"][0]["scores"]) == {"neg", "pos"} and body["usage"]["prompt_tokens"] > 0
        assert client.post("/v1/classify", json={"input": [1, 2]}).status_code == 400
        assert client.post("/v1/embeddings", json={"input": "still embeds"}).status_code == 200


def test_serve_classify_refused_on_an_mlm_checkpoint(ckpt):
    from fastapi.testclient import TestClient

    from mmbert.serve.encoder import Encoder
    from mmbert.serve.server import create_app

    with TestClient(create_app(Encoder(ckpt))) as client:
        r = client.post("/v1/classify", json={"input": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "classify_unavailable"


def test_regression_jsonl(ckpt, tmp_path):
    tr = write_polarity(tmp_path / "tr.jsonl", 240, 4, "jsonl")
    te = write_polarity(tmp_path / "te.jsonl", 80, 5, "jsonl")
    out = tmp_path / "out"
    assert main(["finetune", str(ckpt), "--task", "regression", "--train", str(tr), "--test", f"eng={te}",
                 "--label-column", "score", "--out", str(out), "--lr", "2e-3", "--epochs", "10", *FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["primary"] == "pearson" and r["test"]["eng"]["pearson"] >= 0.95, r["test"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_labels"] == 1 and cfg["problem_type"] == "regression"


# ---- token classification --------------------------------------------------------------------------
def test_token_classification_learns_and_matches_transformers(ckpt, tmp_path):
    from mmbert.model import MmBertForTokenClassification

    tr, dv, te = write_conll(tmp_path / "tr.txt", 200, 1), write_conll(tmp_path / "dv.txt", 40, 2), write_conll(
        tmp_path / "te.txt", 60, 3)
    out = tmp_path / "out"
    assert main(["finetune", str(ckpt), "--task", "token-classification", "--train", str(tr), "--dev", str(dv),
                 "--test", f"nob={te}", "--out", str(out), "--lr", "2e-3", "--epochs", "8", *FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["test"]["nob"]["f1"] >= 0.95, r["test"]
    words = ["the", "film", "mr", "Anna", "Mia", "in", "Oslo", "was", "fine"]
    enc, theirs = hf_logits(out, [" ".join(words)], kind="tok")
    ours = MmBertForTokenClassification.from_pretrained(out)
    with torch.no_grad():
        assert_close(ours(enc["input_ids"], enc["attention_mask"]).logits, theirs.logits)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"tokens": words}) + "\n", encoding="utf-8")
    assert main(["predict", str(out), "--input", str(inp), "--output", str(tmp_path / "p.jsonl")]) == 0
    tags = json.loads((tmp_path / "p.jsonl").read_text())["tokens"]
    assert [t["word"] for t in tags] == words
    assert [t["label"] for t in tags] == ["O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "O"]


# ---- QA -------------------------------------------------------------------------------------------
def test_qa_learns_with_windows_and_matches_transformers(ckpt, tmp_path):
    from mmbert.model import MmBertForQuestionAnswering

    tr, te = write_squad(tmp_path / "tr.json", 200, 1), write_squad(tmp_path / "te.json", 60, 2, "swahili")
    out = tmp_path / "out"
    assert main(["finetune", str(ckpt), "--task", "qa", "--train", str(tr), "--test", f"swh={te}", "--out", str(out),
                 "--lr", "2e-3", "--epochs", "6", "--set", "stride=8", *FAST[:-1], "40"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["test"]["swh"]["f1"] >= 95.0, r["test"]
    q, c = "what is the colour?", "the film was really a story and the colour is green and the plot was fine."
    enc, theirs = hf_logits(out, [q], [c], kind="qa")
    ours = MmBertForQuestionAnswering.from_pretrained(out)
    with torch.no_grad():
        o = ours(enc["input_ids"], enc["attention_mask"])
    m = enc["attention_mask"].bool()
    assert_close(o.start_logits[m], theirs.start_logits[m])
    assert_close(o.end_logits[m], theirs.end_logits[m])
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": q, "context": c}) + "\n", encoding="utf-8")
    assert main(["predict", str(out), "--input", str(inp), "--output", str(tmp_path / "p.jsonl")]) == 0
    p = json.loads((tmp_path / "p.jsonl").read_text())
    assert p["answer"] == "green" and c[p["start"]:p["end"]] == "green"


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, task, extra, message", [
    ("tr.csv", "text,label\nhello,a\n,b\n", "classification", [], "tr.csv:3: empty or non-text 'text'"),
    ("tr.csv", "sentence,label\nhello,a\n", "classification", [], "tr.csv:1: header lacks column(s) ['text']"),
    ("tr.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', "classification", [], "tr.jsonl:2: missing field"),
    ("tr.xlsx", "x", "classification", [], "unknown file format '.xlsx'"),
    ("tr.txt", "a X O\nb X\n", "token-classification", [], "tr.txt:2: 2 columns, earlier lines have 3"),
    ("tr.csv", "text,label\nhello,a\nworld,b\n", "classification", ["--dev", "DEV"], "dev labels ['c'] never occur"),
    ("tr.json", '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "1", "question": "q", '
                '"answers": [{"text": "zz", "answer_start": 0}]}]}]}]}', "qa", [], "does not occur in the context"),
])
def test_bad_input_is_one_line_naming_file_and_line(ckpt, tmp_path, capsys, name, content, task, extra, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    if "DEV" in extra:
        dev = tmp_path / "dev.csv"
        dev.write_text("text,label\nhi,c\n", encoding="utf-8")
        extra = ["--dev", str(dev)]
    rc = main(["finetune", str(ckpt), "--task", task, "--train", str(path), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_config_key_names_it(ckpt, tmp_path, capsys):
    assert main(["finetune", str(ckpt), "--task", "classification", "--train", "x.csv", "--out", str(tmp_path),
                 "--set", "learning_rate=1"]) == 1
    assert "unknown key 'learning_rate'" in capsys.readouterr().err


def test_heads_unpadded_equal_padded(ckpt):
    from mmbert.model import (
        MmBertForQuestionAnswering,
        MmBertForSequenceClassification,
        MmBertForTokenClassification,
    )

    torch.manual_seed(0)
    seqs = [[2, 10, 11, 12, 1], [2, 20, 1], [2, 30, 31, 32, 33, 34, 35, 1]]
    ids = torch.zeros(3, 8, dtype=torch.long)
    mask = torch.zeros(3, 8, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    flat = torch.tensor([t for s in seqs for t in s])
    cu = torch.tensor([0, 5, 8, 16], dtype=torch.int32)
    for pooling in ("cls", "mean"):
        m = MmBertForSequenceClassification.from_pretrained(ckpt, num_labels=3, classifier_pooling=pooling)
        with torch.no_grad():
            assert_close(m(flat, cu_seqlens=cu).logits, m(ids, mask).logits)
    t = MmBertForTokenClassification.from_pretrained(ckpt, num_labels=3)
    with torch.no_grad():
        assert_close(t(flat, cu_seqlens=cu).logits, t(ids, mask).logits[mask.bool()])
    q = MmBertForQuestionAnswering.from_pretrained(ckpt)
    with torch.no_grad():
        a, b = q(flat, cu_seqlens=cu), q(ids, mask)
    assert_close(a.start_logits, b.start_logits)  # both (3, 8), -1e4 past each end
    assert_close(a.end_logits, b.end_logits)


def test_predict_refuses_an_mlm_checkpoint(ckpt, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a\n")
    assert main(["predict", str(ckpt), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o")]) == 1
    assert "is not a task model" in capsys.readouterr().err


def test_label_order_is_stable():
    from mmbert.eval.finetune import label_order

    assert label_order(["b", "a", "b"]) == ["a", "b"]
    assert label_order(["10", "2", "1"]) == ["1", "2", "10"]


def test_table_readers_agree_across_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmbert.eval.loaders import read_text_examples

    rows = [{"premise": "a, \"quoted\" text", "hyp": "b", "y": "yes"}, {"premise": "c", "hyp": "d\u00e9", "y": "no"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "t.tsv").write_text("premise\thyp\ty\n" + "".join(f"{r['premise']}\t{r['hyp']}\t{r['y']}\n"
                                                                 for r in rows), encoding="utf-8")
    (tmp_path / "t.csv").write_text('premise,hyp,y\n"a, ""quoted"" text",b,yes\nc,d\u00e9,no\n', encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    got = {s: read_text_examples(tmp_path / f"t.{s}", "premise", "hyp", "y") for s in ("jsonl", "tsv", "csv", "parquet")}
    want = [(r["premise"], r["hyp"], r["y"]) for r in rows]
    for suffix, examples in got.items():
        assert [(e.text, e.text_pair, e.label) for e in examples] == want, suffix


def test_corpus_task_splits_by_article(tmp_path):
    from mmbert.corpus.tasks import write_classification_task

    c = write_classification_task(tmp_path, "language", ["eng", "fra", "deu"])
    assert c["labels"] == 3 and c["train"] > c["test"] > c["dev"] > 0
    from mmbert.corpus import load_corpus

    article = {(r.lang_id, r.text): r.article for r in load_corpus()}
    for split, ok in (("train", lambda a: a < 23), ("dev", lambda a: a in (23, 24)), ("test", lambda a: a >= 25)):
        rows = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert rows and all(ok(article[(r["lang"], r["text"])]) for r in rows), split
        assert {r["label"] for r in rows} == {"eng_Latn", "fra_Latn", "deu_Latn"}
