"""Held-out per-language MLM loss: fixed masking, batching-independent, matches a direct computation."""

import math

import torch
import torch.nn.functional as F

from mmbert import MmBertForMaskedLM, ModelConfig
from mmbert.eval.heldout import heldout_mlm_loss, masked_pieces


class CharTokenizer:
    """Characters -> ids 5..; <pad>0 <eos>1 <bos>2 <unk>3 <mask>4, wrapped <bos> ... <eos>."""

    pad_id, eos_id, bos_id, mask_id = 0, 1, 2, 4
    special_ids = frozenset({0, 1, 2, 3, 4})
    vocab_size = 512

    def encode_batch(self, texts, add_special_tokens=True):
        return [[2] + [5 + (ord(c) % 500) for c in t] + [1] for t in texts]


TEXTS = {"eng_Latn": ["the cat sat on the mat " * 6, "all human beings are born free"],
         "fra_Latn": ["tous les etres humains naissent libres " * 4],
         "deu_Latn": ["alle menschen sind frei und gleich an wurde " * 3]}


def test_masking_is_fixed_per_language_and_seed():
    tok = CharTokenizer()
    a = masked_pieces(tok, TEXTS["eng_Latn"], "eng_Latn", 0.15, 32, seed=3)
    b = masked_pieces(tok, TEXTS["eng_Latn"], "eng_Latn", 0.15, 32, seed=3)
    c = masked_pieces(tok, TEXTS["eng_Latn"], "eng_Latn", 0.15, 32, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert not all(torch.equal(x, y) for x, y in zip(a[1], c[1]))
    labels = torch.cat(a[1])
    eligible = sum(len(t) for t in TEXTS["eng_Latn"])  # every character; <bos>/<eos> never masked
    assert int((labels != -100).sum()) == round(0.15 * eligible)
    assert max(len(x) for x in a[0]) <= 32


def test_loss_matches_direct_computation_and_ignores_batching():
    torch.manual_seed(0)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    tok = CharTokenizer()
    small = heldout_mlm_loss(model, tok, TEXTS, 0.2, 32, seed=1, batch_tokens=40)
    big = heldout_mlm_loss(model, tok, TEXTS, 0.2, 32, seed=1, batch_tokens=4096)
    assert small.keys() == TEXTS.keys()
    for k in small:
        assert math.isclose(small[k], big[k], rel_tol=0, abs_tol=1e-5), f"{k}: {small[k]} vs {big[k]}"
    # direct: one language, one piece at a time, token-weighted
    inputs, labels = masked_pieces(tok, TEXTS["fra_Latn"], "fra_Latn", 0.2, 32, seed=1)
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for x, y in zip(inputs, labels):
            logits = model(x[None], torch.ones_like(x)[None]).logits[0]
            sel = y != -100
            tot += float(F.cross_entropy(logits[sel], y[sel], reduction="sum"))
            n += int(sel.sum())
    assert math.isclose(big["fra_Latn"], tot / n, abs_tol=1e-4), f"{big['fra_Latn']} vs {tot / n}"
    assert model.training is False  # mode restored (it was eval here)


class CountingTokenizer(CharTokenizer):
    def __init__(self):
        self.calls = 0

    def encode_batch(self, texts, add_special_tokens=True):
        self.calls += 1
        return super().encode_batch(texts, add_special_tokens)


def test_fixed_set_is_built_once_and_reused():
    """The trainer evaluates every N steps and the recipe each checkpoint: the set is tokenized and masked once
    per (tokenizer, texts, settings); changed text or settings build a new one; the numbers are the same."""
    from mmbert.eval.heldout import HeldoutSet

    torch.manual_seed(0)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    tok = CountingTokenizer()
    first = heldout_mlm_loss(model, tok, TEXTS, seq_len=32, seed=1)
    calls = tok.calls
    assert calls == len(TEXTS)  # one encode_batch a language
    assert heldout_mlm_loss(model, tok, TEXTS, seq_len=32, seed=1) == first
    assert tok.calls == calls  # reused: nothing tokenized again
    heldout_mlm_loss(model, tok, TEXTS, seq_len=32, seed=2)
    assert tok.calls == 2 * calls  # another masking seed: another set
    changed = {**TEXTS, "fra_Latn": ["autre texte " * 5]}
    heldout_mlm_loss(model, tok, changed, seq_len=32, seed=1)
    assert tok.calls == 3 * calls
    fresh = HeldoutSet.build(CharTokenizer(), TEXTS, seq_len=32, seed=1, batch_tokens=40).evaluate(model)
    for lang in TEXTS:  # many small batches or one large: the same losses
        assert math.isclose(fresh[lang], first[lang], rel_tol=1e-5)


def test_one_pass_embeddings_are_the_mean_pooled_masked_first_pieces():
    """evaluate_with_embeddings: the same losses as evaluate, and each text's vector is the L2-normalised mean of
    the encoder's last hidden states over its (masked) first piece, computed here one piece at a time."""
    from mmbert.eval.heldout import HeldoutSet

    torch.manual_seed(0)
    model = MmBertForMaskedLM(ModelConfig.from_preset("tiny"))
    tok = CharTokenizer()
    held = HeldoutSet.build(tok, TEXTS, 0.2, 24, seed=1, batch_tokens=50, first_piece_only=True)
    losses, vectors = held.evaluate_with_embeddings(model)
    assert losses == held.evaluate(model)
    assert {k: sorted(v) for k, v in vectors.items()} == {k: list(range(len(t))) for k, t in TEXTS.items()}
    model.eval()
    for lang, texts in TEXTS.items():
        inputs, _ = masked_pieces(tok, texts, lang, 0.2, 24, seed=1, first_piece_only=True)
        assert len(inputs) == len(texts) and all(len(x) <= 24 for x in inputs)
        for t, x in enumerate(inputs):
            with torch.no_grad():
                direct = F.normalize(model.model(x[None]).last_hidden_state[0].mean(0), dim=0)
            assert torch.allclose(vectors[lang][t], direct, atol=1e-5), (lang, t)
