"""`mmbert adapt`: vocabulary resize and row inits, tokenizer extension, grouped sampling, merge with an extended
vocabulary, transformers loading, bad input, and a quick end-to-end run on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmbert.corpus import load_corpus
from mmbert.data.sampling import draw_languages, language_probabilities, rng_for
from mmbert.model import MmBertForMaskedLM, ModelConfig
from mmbert.model import vocab as mv
from mmbert.tokenizer import TrainConfig, Tokenizer, extend_tokenizer, train_tokenizer
from tests.test_data_helpers import chi2_pvalue

OLD = ["eng_Latn", "fra_Latn", "deu_Latn"]
NEW = ["amh_Ethi", "kat_Geor"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def records():
    return [r for r in load_corpus() if r.lang_id in OLD + NEW]


@pytest.fixture(scope="module")
def old_tok(records):
    # A tokenizer that never saw the new scripts: they are byte-fallback pieces for it.
    texts = [r.text for r in records if r.lang_id in OLD and r.article <= 24]
    return train_tokenizer(texts, TrainConfig(vocab_size=640))


def tiny_model(vocab_size: int, seed: int = 0) -> MmBertForMaskedLM:
    torch.manual_seed(seed)
    return MmBertForMaskedLM(ModelConfig.from_preset("tiny").replace(vocab_size=vocab_size)).eval()


def new_texts(records):
    return [r.text for r in records if r.lang_id in NEW and r.article <= 24]


# ---- resize and inits ------------------------------------------------------------------------------------------------
def test_resize_keeps_old_rows_bit_identical_and_tied():
    model = tiny_model(512)
    with torch.no_grad():
        model.decoder.bias.normal_()
    emb = model.model.embeddings.tok_embeddings.weight.detach().clone()
    bias = model.decoder.bias.detach().clone()
    rows, b = torch.randn(64, 64), torch.randn(64)
    mv.resize_vocab(model, 576, rows, b)
    new_emb = model.model.embeddings.tok_embeddings.weight
    assert new_emb.shape == (576, 64) and model.decoder.bias.shape == (576,)
    assert torch.equal(new_emb[:512], emb) and torch.equal(model.decoder.bias[:512], bias)
    assert torch.equal(new_emb[512:], rows) and torch.equal(model.decoder.bias[512:], b)
    assert model.decoder.weight is new_emb  # still tied
    assert model.config.vocab_size == 576 and model.model.config.vocab_size == 576
    ids = torch.tensor([[2, 7, 520, 575, 1]])
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (1, 5, 576)
    with pytest.raises(ValueError, match="grows"):
        mv.resize_vocab(model, 100)


def test_fvt_equals_hand_computation():
    emb = torch.arange(20, dtype=torch.float32).view(5, 4)
    bias = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    rows, b = mv.fvt_rows(emb, bias, [[1, 3], [4], [0, 2, 4]])
    assert torch.equal(rows[0], (emb[1] + emb[3]) / 2) and torch.equal(rows[1], emb[4])
    assert torch.allclose(rows[2], torch.tensor([8.0, 9.0, 10.0, 11.0]))
    assert torch.allclose(b, torch.tensor([2.0, 4.0, 2.0]))
    mu = emb.mean(0)
    crow, cb = mv.calibrate_rows(rows, emb, bias, 0.25)
    assert torch.allclose(crow[0], mu + 0.25 * ((emb[1] + emb[3]) / 2 - mu))
    assert torch.allclose(cb, torch.full((3,), 2.0))


def test_sparsemax_projects_onto_the_simplex():
    # support k = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, tau = (sum of the support - 1) / k
    w = mv.sparsemax(torch.tensor([3.0, 1.0, 0.2, -1.0]))  # k = 1 (1 + 2*1 = 3 < 4): tau = 2
    assert torch.allclose(w, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    w = mv.sparsemax(torch.tensor([0.5, 0.4, -0.2]))  # k = 2 (1 + 3*-0.2 < 0.7): tau = -0.05
    assert torch.allclose(w, torch.tensor([0.55, 0.45, 0.0]))
    w = mv.sparsemax(torch.tensor([0.5, 0.4, 0.0]))  # k = 3: tau = -0.1 / 3
    assert torch.allclose(w, torch.tensor([0.5, 0.4, 0.0]) + 0.1 / 3) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


def test_extension_never_duplicates_and_keeps_a_multiple_of_64(records, old_tok):
    tok, added = extend_tokenizer(old_tok, new_texts(records), 300)
    old_vocab = old_tok.backend.get_vocab(with_added_tokens=True)
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    assert tok.vocab_size % 64 == 0 and tok.vocab_size > old_tok.vocab_size
    assert len(vocab) == tok.vocab_size  # no piece twice
    assert not set(added) & set(old_vocab) and len(set(added)) == len(added)
    assert all(vocab[p] == i for p, i in old_vocab.items())  # old ids unchanged
    text = [r.text for r in records if r.lang_id == "amh_Ethi"][0]
    assert len(tok.encode(text)) < len(old_tok.encode(text)) / 2  # the new script gets pieces
    assert tok.decode(tok.encode(text)) == text
    eng = [r.text for r in records if r.lang_id == "eng_Latn"][0]
    assert tok.encode(eng) == old_tok.encode(eng)  # a Latin text is unaffected by Ethiopic/Georgian pieces


# ---- sampling groups -------------------------------------------------------------------------------------------------
def test_group_probabilities_hand_computed_and_drawn():
    sizes = {"a": 400, "b": 100, "x": 900, "y": 100, "z": 1}
    groups = {"new": {"share": 0.7, "languages": ["a", "b"]}, "replay": {"share": 0.3, "languages": ["x", "y", "z"]}}
    p = language_probabilities(sizes, 0.5, groups)
    assert p["a"] == pytest.approx(0.7 * 20 / 30) and p["b"] == pytest.approx(0.7 * 10 / 30)
    assert p["x"] == pytest.approx(0.3 * 30 / 41) and p["z"] == pytest.approx(0.3 * 1 / 41)
    assert sum(p.values()) == pytest.approx(1.0)
    draws = draw_languages(p, 50_000, rng_for(1, 2))
    _, pvalue = chi2_pvalue({k: draws.count(k) for k in p}, p)
    assert pvalue > 1e-3
    # no group -> the plain formula; a missing language, an empty group or a shared language are errors
    assert language_probabilities(sizes, 0.5, None) == language_probabilities(sizes, 0.5)
    with pytest.raises(ValueError, match="no sampling group"):
        language_probabilities({**sizes, "w": 5}, 0.5, groups)
    with pytest.raises(ValueError, match="no language with data"):
        language_probabilities({"a": 1}, 0.5, {"g": {"share": 1, "languages": ["a"]}, "h": {"share": 1, "languages": ["q"]}})


# ---- merge with an extended vocabulary ----------------------------------------------------------------------------------
def test_merge_with_vocab_mismatch(tmp_path):
    from mmbert.merge import merge

    base = tiny_model(512, seed=1)
    base.save_pretrained(tmp_path / "base")
    adapted = tiny_model(512, seed=2)
    mv.resize_vocab(adapted, 576, torch.randn(64, 64), torch.randn(64))
    adapted.save_pretrained(tmp_path / "adapted")
    out = merge("linear", [tmp_path / "base", tmp_path / "adapted"], tmp_path / "lin", weights=[0.5, 0.5])
    m = MmBertForMaskedLM.from_pretrained(out)
    assert m.config.vocab_size == 576
    e_b, e_a = base.model.embeddings.tok_embeddings.weight, adapted.model.embeddings.tok_embeddings.weight
    e_m = m.model.embeddings.tok_embeddings.weight
    assert torch.allclose(e_m[:512], (e_b + e_a[:512]) / 2, atol=1e-6)
    assert torch.equal(e_m[512:], e_a[512:])
    assert torch.equal(m.decoder.bias[512:], adapted.decoder.bias[512:])
    w = m.model.layers[0].attn.Wqkv.weight
    assert torch.allclose(w, (base.model.layers[0].attn.Wqkv.weight + adapted.model.layers[0].attn.Wqkv.weight) / 2,
                          atol=1e-6)
    ties = MmBertForMaskedLM.from_pretrained(merge("ties", [tmp_path / "adapted"], tmp_path / "ties",
                                                   base=tmp_path / "base", density=1.0))
    assert torch.allclose(ties.model.embeddings.tok_embeddings.weight, e_a, atol=1e-6)  # density 1: all of the delta
    two = tiny_model(576, seed=3)
    two.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="only one input may extend"):
        merge("linear", [tmp_path / "base", tmp_path / "adapted", tmp_path / "other"], tmp_path / "bad")


# ---- transformers ------------------------------------------------------------------------------------------------------------
def test_extended_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(512)
    mv.resize_vocab(model, 576, torch.randn(64, 64) * 0.02, torch.randn(64) * 0.1)
    model.save_pretrained(tmp_path / "m")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "m"), local_files_only=True).eval()
    assert hf.config.vocab_size == 576
    ids = torch.tensor([[2, 10, 530, 575, 100, 1]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    diff = (ours - theirs).abs()
    assert diff.max() < 1e-4, f"max {diff.max():.2e} mean {diff.mean():.2e}"


# ---- bad input and the whole command -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory, records, old_tok):
    """A tiny checkpoint with ``old_tok`` (never saw NEW) and a manifest of OLD + NEW."""
    from mmbert.corpus import export_corpus

    root = tmp_path_factory.mktemp("adapt")
    manifest = export_corpus(root / "corpus", records)
    model = tiny_model(old_tok.vocab_size)
    model.config = model.config.replace(pad_token_id=old_tok.pad_id, mask_token_id=old_tok.mask_id)
    model.save_pretrained(root / "base")
    old_tok.save(root / "base")
    return root, manifest


def _opts(root, manifest, out, **kw):
    from mmbert.recipe.adapt import AdaptOptions

    base = dict(checkpoint=root / "base", languages=list(NEW), manifest=manifest, out=out, steps=4,
                batch_tokens=512, micro_batch_tokens=512, seq_len=64, eval_max_tokens=64, eval_seq_len=64,
                eval_old_languages=2, precision="fp32", device="cpu", progress=False)
    return AdaptOptions(**{**base, **kw})


def test_bad_input_is_refused_before_training(setup, tmp_path, old_tok):
    from mmbert.recipe.adapt import adapt

    root, manifest = setup
    with pytest.raises(ValueError, match="xho_Latn.*not in manifest"):
        adapt(_opts(root, manifest, tmp_path / "a", languages=["xho_Latn"]))
    # a tokenizer that does not match the checkpoint
    bad = tmp_path / "badckpt"
    tiny_model(old_tok.vocab_size + 64).save_pretrained(bad)
    old_tok.save(bad)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        adapt(_opts(root, manifest, tmp_path / "b", checkpoint=bad))
    # a checkpoint without an MLM head (an encoder)
    from mmbert.model import MmBertModel

    enc = tmp_path / "enc"
    MmBertModel(tiny_model(old_tok.vocab_size).config).save_pretrained(enc)
    old_tok.save(enc)
    with pytest.raises(ValueError, match="no MLM head"):
        adapt(_opts(root, manifest, tmp_path / "c", checkpoint=enc))
    # a --tokenizer whose old pieces moved
    other = train_tokenizer(["completely different text here"] * 50, TrainConfig(vocab_size=448))
    other.save(tmp_path / "othertok")
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        adapt(_opts(root, manifest, tmp_path / "d", tokenizer=str(tmp_path / "othertok")))
    assert not (tmp_path / "d" / "train").exists()


def test_adapt_end_to_end(setup, tmp_path):
    from mmbert.cli import main

    root, manifest = setup
    out = tmp_path / "run"
    rc = main(["adapt", str(root / "base"), "--languages", *NEW, "--data", str(manifest), "--out", str(out),
               "--steps", "4", "--extend-tokenizer", "200", "--batch-tokens", "512", "--micro-batch-tokens", "512",
               "--seq-len", "64", "--eval-old-languages", "2", "--precision", "fp32", "--device", "cpu",
               "--no-progress", "--set", "eval.max_tokens_per_language=64", "--set", "eval.seq_len=64"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert "Vocabulary extension" in report and (out / "report" / "new_languages.png").is_file()
    init = summary["init"]
    assert init["vocab_size"]["after"] % 64 == 0 and init["vocab_size"]["after"] > init["vocab_size"]["before"]
    assert set(init["init"]) >= {"random", "fvt"} and all(math.isfinite(v["mean"]) for v in init["init"].values())
    for lang in NEW:
        assert init["fertility"][lang]["after"] < init["fertility"][lang]["before"]
    merged = MmBertForMaskedLM.from_pretrained(out / "merged-ties")
    adapted = MmBertForMaskedLM.from_pretrained(out / "train" / "adapt" / "final")
    assert merged.config.vocab_size == adapted.config.vocab_size == init["vocab_size"]["after"]
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(out / "train" / "adapt" / "final"),
                                                           local_files_only=True).eval()
    assert hf.config.vocab_size == adapted.config.vocab_size
    ids = torch.tensor([[2, 10, adapted.config.vocab_size - 1, init["vocab_size"]["before"], 1]])
    with torch.no_grad():
        diff = (adapted(ids, attention_mask=torch.ones_like(ids)).logits
                - hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).abs()
    assert diff.max() < 1e-4, f"max {diff.max():.2e} mean {diff.mean():.2e}"
    assert (out / "merged-linear" / "tokenizer.json").is_file()
    assert Tokenizer.from_file(out / "merged-linear").vocab_size == init["vocab_size"]["after"]
    cfg = (out / "train-config.yaml").read_text()
    assert "groups" in cfg and "mask_ratio: 0.05" in cfg
    assert set(summary["heldout_new_mean"]) == {"original", "initialised", "adapted", "merged (ties)", "merged (linear)"}


def test_prior_bias_fits_the_old_line():
    bias = torch.tensor([0.0, 1.0, 3.0, 5.0, 9.0])
    old_scores = {1: -4.0, 2: -3.0, 3: -2.0}  # biases 1, 3, 5: b = 2 * score + 9
    b = mv.prior_bias(bias, old_scores, torch.tensor([-1.0, -5.0]))
    assert torch.allclose(b, torch.tensor([7.0, -1.0]))


def test_phase_groups_and_except_in_the_training_config():
    from mmbert.train.config import ConfigError, config_from_dict
    from mmbert.train.phases import resolve_languages

    phase = {"name": "a", "steps": 1, "batch_tokens": 64, "languages": ["x", "y"],
             "groups": {"new": {"share": 0.5, "languages": ["x"]}, "replay": {"share": 0.5, "languages": ["y"]}}}
    cfg = config_from_dict({"data": {"synthetic": True}, "phases": [phase]})
    assert cfg.phases[0].groups["new"]["languages"] == ["x"]
    bad = {**phase, "groups": {"new": {"share": 0, "languages": ["x"]}}}
    with pytest.raises(ConfigError, match=r"phases\.0\.groups\.new\.share"):
        config_from_dict({"data": {"synthetic": True}, "phases": [bad]})
    bad = {**phase, "groups": {"new": {"share": 1, "languages": ["x"]}, "b": {"share": 1, "languages": ["x"]}}}
    with pytest.raises(ConfigError, match="also in group"):
        config_from_dict({"data": {"synthetic": True}, "phases": [bad]})
    assert resolve_languages({"except": ["b"]}, {"a": 1, "b": 2, "c": 3}) == ["a", "c"]
