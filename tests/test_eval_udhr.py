"""The offline UDHR evaluations: per-language numbers for every shipped language, low-resource apart."""

import json

import pytest

from mmbert.cli import main
from mmbert.corpus import load_corpus
from mmbert.eval.udhr import bitext_retrieval, heldout_and_bitext, heldout_loss, langid_label
from mmbert.model import MmBertForMaskedLM
from tests.eval_helpers import one_thread, tiny_checkpoint

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
SOME = ["eng_Latn", "fra_Latn", "deu_Latn", "fao_Latn", "tir_Ethi", "isl_Latn", "rus_Cyrl", "cmn_Hans"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("udhr"))


def test_bitext_every_shipped_language(ckpt):
    model = MmBertForMaskedLM.from_pretrained(ckpt)  # a loaded model, as `mmbert run` calls it
    from mmbert.eval.common import load_tokenizer

    r = bitext_retrieval(model, load_tokenizer(ckpt), max_length=24)
    versions = {rec.lang_id for rec in load_corpus() if rec.article >= 25} - {"eng_Latn"}
    assert set(r["per_language"]) == versions  # every version with held-out articles, English is the pivot
    assert "fao_Latn" in r["low_resource"] and "tir_Ethi" in r["low_resource"]
    assert "fra_Latn" not in r["low_resource"]
    for m in r["per_language"].values():
        assert 0.0 <= m["top1_xx2eng"] <= 1.0 and 0.0 <= m["top1_eng2xx"] <= 1.0
    assert set(r["groups"]) == {"pretrain", "midtrain", "decay", "unseen"}
    assert sum(g["languages"] for g in r["groups"].values()) == len(versions)


def test_bitext_identical_model_scores_perfect_on_itself(ckpt):
    # the pivot compared with itself under another name: every article finds itself
    records = [r for r in load_corpus() if r.lang_id == "eng_Latn"]
    twin = [type(r)(**{**r.__dict__, "lang_id": "eng_Latn_twin"}) for r in records]
    r = bitext_retrieval(ckpt, records=records + twin, max_length=64)
    assert r["per_language"]["eng_Latn_twin"]["top1_accuracy"] == 1.0


def test_heldout_loss_per_language(ckpt, tmp_path):
    r = heldout_loss(ckpt, languages=SOME, seq_len=64)
    assert sorted(r["per_language"]) == sorted(SOME)
    for m in r["per_language"].values():  # random tiny model: about ln(512) = 6.2 nats
        assert 4.0 < m["mlm_loss"] < 9.0
    assert r["low_resource"] == ["fao_Latn", "tir_Ethi"] and r["lower_is_better"]
    again = heldout_loss(ckpt, languages=SOME, seq_len=64)
    assert again["per_language"] == r["per_language"]


def test_langid_and_cli(ckpt, tmp_path, capsys):
    out = tmp_path / "langid.json"
    assert main(["eval", str(ckpt), "--task", "udhr-langid", "--languages", *SOME, "--max-steps", "60",
                 "--eval-every", "30", "--lr", "2e-3", "--batch-size", "16", "--max-length", "32",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert sorted(r["per_language"]) == sorted(langid_label(x) for x in SOME)
    assert r["training"]["overall"]["accuracy"] > 0.5, r["training"]["overall"]  # chance is 1/8
    assert "macro_f1" in r["training"]["overall"]
    printed = capsys.readouterr().out
    assert "low-resource languages (mmBERT's decay phase only): 2" in printed and "tir_Ethi" in printed


def test_compare_two_checkpoints(ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    model = MmBertForMaskedLM.from_pretrained(ckpt)
    for p in model.parameters():
        p.data.mul_(0.5)
    model.save_pretrained(other)
    for f in ckpt.glob("tokenizer*"):
        (other / f.name).write_bytes(f.read_bytes())
    assert main(["eval", str(ckpt), str(other), "--task", "udhr-bitext", "--languages", *SOME, "--compare",
                 "--out-dir", str(tmp_path / "cmp"), "--summary"]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"| | {ckpt.name} | other |" in md and "| mean decay (2) — low-resource |" in md and "| fao_Latn |" in md
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "cmp").glob("*.json"))) == 2


def test_one_pass_table_matches_its_parts(ckpt):
    """The recipe's table: held-out loss of each article's first seq_len tokens, and bitext from the same forward.
    An exact copy of the pivot finds every article; the loss equals heldout_mlm_loss on those first pieces."""
    from mmbert.eval.common import load_tokenizer
    from mmbert.eval.heldout import heldout_mlm_loss

    model, tok = MmBertForMaskedLM.from_pretrained(ckpt), load_tokenizer(ckpt)
    records = [r for r in load_corpus() if r.lang_id in ("eng_Latn", "fao_Latn")]
    twin = [type(r)(**{**r.__dict__, "lang_id": "eng_Latn_twin"}) for r in records if r.lang_id == "eng_Latn"]
    heldout, bitext = heldout_and_bitext(model, tok, records=records + twin, seq_len=48)
    assert bitext["per_language"]["eng_Latn_twin"]["top1_accuracy"] == 1.0
    assert set(bitext["per_language"]) == {"eng_Latn_twin", "fao_Latn"}  # the pivot is not matched to itself
    assert set(heldout["per_language"]) == {"eng_Latn", "eng_Latn_twin", "fao_Latn"}
    direct = heldout_mlm_loss(model, tok, {"fao_Latn": [r.text for r in sorted(
        (r for r in records if r.lang_id == "fao_Latn" and r.article >= 25), key=lambda r: r.article)]},
        seq_len=48, first_piece_only=True)
    assert abs(heldout["per_language"]["fao_Latn"]["mlm_loss"] - direct["fao_Latn"]) < 1e-6
