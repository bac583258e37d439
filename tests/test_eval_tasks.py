"""Every fine-tuned task type end to end on a tiny checkpoint, through the Python API and `mmbert eval`."""

import json

import pytest

from mmbert.cli import main
from mmbert.eval import evaluate
from tests.eval_helpers import (
    FIXTURES, one_thread, tiny_checkpoint, write_conll, write_squad, write_sst2, write_xnli,
)

FAST = dict(lr=1e-3, batch_size=16, eval_every=20, max_length=32)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("eval"))


def test_finetune_separable_toy_reaches_high_accuracy(ckpt, tmp_path):
    train, test = write_sst2(tmp_path / "train.tsv", 200, 1), write_sst2(tmp_path / "dev.tsv", 60, 2)
    r = evaluate(ckpt, "glue-sst2", train=train, test=[test], max_steps=60, **FAST)
    assert r["average"]["accuracy"] >= 0.9, r["average"]
    assert r["primary"] == "accuracy" and r["training"]["best_step"] in (20, 40, 60)
    again = evaluate(ckpt, "glue-sst2", train=train, test=[test], max_steps=60, **FAST)
    assert again["per_language"] == r["per_language"]  # seeded: identical


def test_cli_glue_layout_and_cola_mcc(ckpt, tmp_path):
    data = tmp_path / "CoLA"
    data.mkdir()
    lines = [ln.split("\t") for ln in write_sst2(tmp_path / "s.tsv", 80, 3).read_text().splitlines()[1:]]
    (data / "train.tsv").write_text("".join(f"src\t{y}\t\t{s}\n" for s, y in lines))  # CoLA: no header
    (data / "dev.tsv").write_text((FIXTURES / "glue/CoLA/dev.tsv").read_text())
    out = tmp_path / "cola.json"
    assert main(["eval", str(ckpt), "--task", "glue-cola", "--data", str(data), "--max-steps", "20", "--lr", "1e-3",
                 "--eval-every", "10", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["primary"] == "mcc" and set(r["per_language"]["eng"]) >= {"mcc", "accuracy", "examples"}
    assert r["per_language"]["eng"]["examples"] == 3 and r["finetune"]["max_steps"] == 20


def test_cli_xnli_zero_shot(ckpt, tmp_path, capsys):
    write_xnli(tmp_path / "xnli.dev.tsv", 60, 4)
    write_xnli(tmp_path / "xnli.test.tsv", 20, 5, languages=("en", "fr", "sw"))
    out = tmp_path / "xnli.json"
    assert main(["eval", str(ckpt), "--task", "xnli", "--data", str(tmp_path), "--train-language", "en",
                 "--max-steps", "20", "--eval-every", "10", "--lr", "1e-3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert sorted(r["per_language"]) == ["en", "fr", "sw"] and r["training"]["zero_shot"]
    assert r["training"]["train_examples"] + r["training"]["dev_examples"] == 60  # en rows of xnli.dev only
    assert r["groups"]["pretrain"]["languages"] == 3
    assert "mean all (3)" in capsys.readouterr().out


def test_qa_with_stride(ckpt, tmp_path):
    train, test = write_squad(tmp_path / "train.json", 150, 1), write_squad(tmp_path / "t.json", 30, 2, "swahili")
    r = evaluate(ckpt, "qa", train=train, test=[test, f"en={FIXTURES / 'squad.json'}"], max_steps=60, stride=8,
                 **FAST | {"max_length": 40})  # 40 tokens: most contexts need two or three windows
    assert sorted(r["per_language"]) == ["en", "swahili"]
    assert r["per_language"]["swahili"]["exact_match"] >= 80.0, r["per_language"]
    assert r["primary"] == "f1" and r["training"]["stride"] == 8


def test_ner_entity_f1(ckpt, tmp_path):
    train, test = write_conll(tmp_path / "train.txt", 150, 1), write_conll(tmp_path / "test.txt", 40, 2)
    r = evaluate(ckpt, "ner", train=train, test=[f"nob={test}", f"eng={FIXTURES / 'conll2003.txt'}"],
                 max_steps=60, **FAST)
    assert sorted(r["per_language"]) == ["eng", "nob"]
    assert r["per_language"]["nob"]["f1"] >= 0.5, r["per_language"]["nob"]
    assert set(r["per_language"]["nob"]["per_type_f1"]) <= {"PER", "LOC"}


def test_unknown_task_and_missing_data(ckpt):
    with pytest.raises(ValueError, match="unknown task 'glue-foo'"):
        evaluate(ckpt, "glue-foo")
    with pytest.raises(ValueError, match="give --data"):
        evaluate(ckpt, "qa")


def test_qa_windows_cover_the_answer(ckpt):
    from mmbert.eval.common import load_tokenizer
    from mmbert.eval.loaders import QAExample
    from mmbert.eval.qa import best_span, windows

    tok = load_tokenizer(ckpt)
    context = " ".join(["the film was really a story"] * 6) + " the colour is red and the plot was fine."
    ex = QAExample("x", "what is the colour?", context, ("red",), (context.index("red"),))
    feats = windows(tok, ex, max_length=40, stride=8)
    assert len(feats) >= 2
    hits = [f for f in feats if f["start"] > 0]
    assert hits, "no window holds the answer"
    for f in hits:
        s, e = f["offsets"][f["start"]][0], f["offsets"][f["end"]][1]
        assert context[s:e].strip() == "red"
        logits_s = [0.0] * len(f["input_ids"])
        logits_e = list(logits_s)
        logits_s[f["start"]], logits_e[f["end"]] = 5.0, 5.0
        assert context[slice(*best_span(logits_s, logits_e, f["offsets"])[1])].strip() == "red"
    assert all(f["start"] == 0 and f["end"] == 0 for f in feats if f not in hits)
