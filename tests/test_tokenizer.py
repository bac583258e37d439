"""The tokenizer: the shipped one (layout, exact round trips across scripts), training on a tiny seeded
corpus, loading foreign tokenizer.json files, AutoTokenizer compatibility, and the coverage report."""

from __future__ import annotations

import json
import pickle
import random

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

import mmbert.tokenizer as tokenizer_module
from mmbert.cli import main
from mmbert.corpus import Record
from mmbert.corpus.coverage import format_table, measure, write_report
from mmbert.corpus.tokenizer_training import train_on_corpus
from mmbert.model.config import ModelConfig
from mmbert.tokenizer import (
    BYTE_TOKENS,
    SPECIAL_TOKENS,
    Tokenizer,
    TrainConfig,
    balanced_texts,
    canonical_pieces,
    default_tokenizer_path,
    train_tokenizer,
)

SAMPLES = {  # UDHR article 1 or everyday text, one per script family the issue names
    "Latn": "All human beings are born free and equal in dignity and rights. Øll menniskju eru fødd fræls.",
    "Ethi": "ብመንፅር ክብርን መሰልን ኩሎም ሰባት እንትውለዱ ናፃን ማዕሪን እዮም።",
    "Arab": "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق.",
    "Deva": "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "Hani": "人人生而自由，在尊严和权利上一律平等。龘",  # 龘: a character the corpus never uses
    "Thai": "เราทุกคนเกิดมาอย่างอิสระ เราทุกคนมีความคิดและความเข้าใจเป็นของเราเอง",
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


# -- the shipped tokenizer ---------------------------------------------------------------------------
def test_shipped_layout_matches_mmbert_and_the_mini_preset(tok):
    assert tok.vocab_size == 16_384 == ModelConfig.from_preset("mini").vocab_size
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert [tok.backend.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert tok.mask_token == "<mask>" and tok.special_ids == frozenset(range(5))
    assert len(tok.byte_ids()) == 256 and tok.backend.token_to_id("<0x00>") == 5
    info = json.loads((default_tokenizer_path() / "mmbert_tokenizer_training.json").read_text())
    assert info["heldout_articles_excluded"] and info["final_vocab_size"] == 16_384


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_round_trip_is_exact_without_unk(tok, script):
    text = SAMPLES[script]
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_unseen_characters_fall_back_to_bytes(tok):
    text = "emoji 🙂 and 𝔘 and tab\tnewline\n  double space"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_id not in ids and tok.decode(ids) == text
    byte_tokens = [tok.backend.id_to_token(i) for i in ids if i in tok.byte_ids()]
    assert byte_tokens[:4] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]  # 🙂 = F0 9F 99 82


def test_wrapping_batch_and_pickling(tok):
    a, b = "Everyone has the right to life.", "Kila mtu ana haki ya kuishi."
    single = tok.encode(a, add_special_tokens=False)
    assert tok.encode(a) == [tok.bos_id, *single, tok.eos_id]
    pair = tok.backend.encode(a, b).ids
    assert pair == [tok.bos_id, *single, tok.eos_id, *tok.encode(b, add_special_tokens=False), tok.eos_id]
    assert tok.encode_batch([a, b]) == [tok.encode(a), tok.encode(b)]
    assert tok.encode("the <mask> is", add_special_tokens=False).count(tok.mask_id) == 1
    clone = pickle.loads(pickle.dumps(tok.backend))
    assert clone.encode(a).ids == tok.encode(a)


def test_save_loads_with_transformers_offline(tok, tmp_path):
    from transformers import AutoTokenizer

    saved = tok.save(tmp_path / "tok")
    assert {p.name for p in saved.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    hf = AutoTokenizer.from_pretrained(str(saved), local_files_only=True)
    assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id, hf.unk_token_id, hf.mask_token_id) == (0, 1, 2, 3, 4)
    assert hf.model_max_length == 8192
    text = SAMPLES["Ethi"]
    assert hf(text)["input_ids"] == tok.encode(text)
    assert Tokenizer.from_file(saved / "tokenizer.json").encode(text) == tok.encode(text)


# -- loading foreign files -------------------------------------------------------------------------------
def _wordlevel(tokens: list[str]) -> BackendTokenizer:
    backend = BackendTokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[-1]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return backend


def test_foreign_tokenizer_special_ids_by_content(tmp_path):
    path = tmp_path / "tokenizer.json"
    _wordlevel(["hello", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"]).save(str(path))
    bert = Tokenizer.from_file(tmp_path)
    assert (bert.pad_id, bert.eos_id, bert.bos_id, bert.unk_id, bert.mask_id) == (4, 2, 1, 5, 3)
    assert bert.mask_token == "[MASK]" and bert.byte_ids() == frozenset()
    _wordlevel(["<s>", "</s>", "<pad>", "hello", "<unk>"]).save(str(path))
    with pytest.raises(ValueError, match="no mask"):
        Tokenizer.from_file(path)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path / "missing")


# -- training ----------------------------------------------------------------------------------------
def test_balanced_texts_follow_the_temperature():
    groups = {"big": ["x" * 100] * 100, "small": ["y" * 100]}  # 10,000 vs 100 characters
    for tau, small_share in ((1.0, 100 / 10_100), (0.0, 0.5), (0.5, 10 / 110)):
        texts = balanced_texts(groups, tau, budget_chars=20_000, seed=0)
        small = sum(len(t) for t in texts if t[0] == "y")
        big = sum(len(t) for t in texts if t[0] == "x")
        # whole texts: each language overshoots its target by less than one text (100 characters)
        assert abs(small - 20_000 * small_share) <= 100 and small + big <= 20_200, (tau, small, big)
    assert balanced_texts(groups, 0.3, 20_000, seed=1) == balanced_texts(groups, 0.3, 20_000, seed=1)


def test_canonical_pieces_remove_run_to_run_noise():
    raw = [("ab", -1.0000000000001), ("c", -2.0), ("<0x41>", 0.0), ("z", -5.0), ("y", -5.0001), ("bc", -1.5)]
    assert canonical_pieces(raw) == [("ab", -1.0), ("bc", -1.5), ("c", -2.0), ("y", -2.0), ("z", -2.0)]
    shuffled = [("ab", -1.0000000000002), ("c", -2.0), ("y", -5.0), ("z", -5.0001), ("bc", -1.5)]
    assert canonical_pieces(shuffled) == canonical_pieces(raw)


def _tiny_records() -> list[Record]:
    rng = random.Random(0)
    words = {"eng_Latn": "human rights freedom dignity equal born".split(),
             "tir_Ethi": "ሰብ መሰል ናፅነት ክብሪ ማዕሪ ተወሊዱ".split(),
             "tha_Thai": "มนุษย์ สิทธิ เสรีภาพ ศักดิ์ศรี เท่าเทียม".split()}
    return [Record(lang=i[:3], script=i[4:], lang_id=i, source=i[:3], article=n, text=" ".join(rng.choices(w, k=40)))
            for i, w in words.items() for n in range(1, 31)]


def test_train_small_tokenizer_layout_and_round_trip():
    texts = [r.text for r in _tiny_records()]
    tok = train_tokenizer(texts, TrainConfig(vocab_size=400))
    vocab = tok.backend.get_vocab()
    assert [tok.backend.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert [vocab[b] for b in BYTE_TOKENS] == list(range(5, 261))
    assert 261 < tok.vocab_size <= 400
    for text in texts[:5] + ["unseen ✓ ሰላም"]:
        assert tok.decode(tok.encode(text)) == text


def test_training_never_sees_heldout_articles(monkeypatch):
    records = _tiny_records()
    records += [Record("eng", "Latn", "eng_Latn", "eng", n, f"HELDOUTMARKER{n}") for n in (0, 25, 30)]
    seen = []
    real = tokenizer_module.train_tokenizer
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda texts, c: seen.extend(texts) or real(texts, c))
    tok, info = train_on_corpus(records, TrainConfig(vocab_size=400, tau=0.3))
    assert any("HELDOUTMARKER0" == t for t in seen)  # the preamble (article 0) is training text
    assert not any("HELDOUTMARKER25" in t or "HELDOUTMARKER30" in t for t in seen)
    assert info["languages"] == 3 and info["heldout_articles_excluded"]


# -- coverage report ---------------------------------------------------------------------------------
def test_coverage_report_on_two_languages(tok, tmp_path, capsys):
    records = [Record("eng", "Latn", "eng_Latn", "eng", 25, SAMPLES["Latn"], "English"),
               Record("cmn", "Hans", "cmn_Hans", "cmn_hans", 25, "自由。龘", "Chinese")]
    rows = measure(tok, records)
    assert [r.lang_id for r in rows] == ["cmn_Hans", "eng_Latn"]
    for row, rec in zip(rows, sorted(records, key=lambda r: r.lang_id)):
        ids = tok.encode(rec.text, add_special_tokens=False)
        assert (row.chars, row.tokens, row.unk) == (len(rec.text), len(ids), 0)
        assert row.tokens_per_char == pytest.approx(len(ids) / len(rec.text))
    assert rows[0].byte_fallback == 3 and rows[1].byte_fallback == 0  # 龘 = 3 UTF-8 bytes
    paths = write_report(rows, tmp_path / "report")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["csv"].read_text().splitlines()[0].startswith("lang_id,script,name,chars,tokens")
    assert "| eng_Latn | Latn |" in format_table(rows)

    assert main(["tokenizer", "report", "--languages", "fao_Latn", "tir_Ethi", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| fao_Latn |" in out and "| tir_Ethi |" in out and "**all (2)**" in out
    assert (tmp_path / "cli" / "coverage.png").is_file()
