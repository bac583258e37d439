"""The encoder against transformers' ModernBERT with the same random weights (fp32, max abs diff <= 1e-5)."""

import json

import pytest
import torch

from mmbert import (
    CheckpointError,
    ModelConfig,
    MmBertForMaskedLM,
    MmBertForQuestionAnswering,
    MmBertForSequenceClassification,
    MmBertForTokenClassification,
    MmBertModel,
)
from tests.conftest import assert_close

transformers = pytest.importorskip("transformers", reason="parity tests need mmbert[hf]")
ATOL = 1e-5

CONFIGS = {
    "tiny": ModelConfig.from_preset("tiny"),
    # biases everywhere, a global layer every 2nd layer, odd window, 5 layers
    "biased": ModelConfig.from_preset(
        "tiny", num_hidden_layers=5, global_attn_every_n_layers=2, local_attention=10, norm_bias=True,
        attention_bias=True, mlp_bias=True, classifier_bias=True, global_rope_theta=50_000.0,
    ),
}


def hf_config(cfg: ModelConfig, **extra):
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    return transformers.ModernBertConfig(**d, attn_implementation="sdpa", **extra)


def ragged_batch(vocab: int, lengths=(40, 7, 33, 25, 1)):
    """Right-padded batch; several rows are longer than the tiny window (16) so local layers matter."""
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def randomize_norms(model: torch.nn.Module) -> None:
    """LayerNorms start at 1/0; perturb them so a swapped or skipped norm cannot pass unnoticed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_masked_lm_logits_match_transformers(name):
    cfg = CONFIGS[name]
    ours = MmBertForMaskedLM(cfg).eval()
    randomize_norms(ours)
    theirs = transformers.ModernBertForMaskedLM(hf_config(cfg)).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    ids, mask = ragged_batch(cfg.vocab_size)
    real = mask.bool()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        unpadded = ours(ids, mask).logits
        ours.model.unpad = False
        padded = ours(ids, mask).logits
    assert_close(unpadded[real], expected[real], ATOL, "unpadded path")
    assert_close(padded[real], expected[real], ATOL, "padded path")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoder_hidden_states_match_transformers_padded_and_varlen(name):
    cfg = CONFIGS[name]
    ours = MmBertModel(cfg).eval()
    randomize_norms(ours)
    theirs = transformers.ModernBertModel(hf_config(cfg)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids, mask = ragged_batch(cfg.vocab_size)
    real = mask.bool()
    lengths = mask.sum(1)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        padded_call = ours(ids, mask).last_hidden_state
        varlen = ours(ids[real], cu_seqlens=cu, max_seqlen=int(lengths.max())).last_hidden_state
    assert_close(padded_call[real], expected[real], ATOL, "padded call")
    assert_close(varlen, expected[real], ATOL, "cu_seqlens call")
    assert torch.all(padded_call[~real] == 0), "pad positions are zero in our output"


def test_pads_and_batch_neighbours_do_not_change_real_tokens():
    cfg = CONFIGS["tiny"]
    model = MmBertModel(cfg).eval()
    seq = torch.randint(5, cfg.vocab_size, (1, 30))
    with torch.no_grad():
        alone = model(seq).last_hidden_state[0]
        ids, mask = ragged_batch(cfg.vocab_size, lengths=(45, 30, 12))
        ids[1, :30] = seq[0]
        extra_pads = torch.nn.functional.pad(ids, (0, 20)), torch.nn.functional.pad(mask, (0, 20))
        in_batch = model(*extra_pads).last_hidden_state[1, :30]
    assert_close(in_batch, alone, 1e-5, "same sequence alone vs in a padded batch")


def test_mlm_loss_is_sparse_and_equals_dense_cross_entropy():
    cfg = CONFIGS["tiny"]
    model = MmBertForMaskedLM(cfg).eval()
    ids, mask = ragged_batch(cfg.vocab_size)
    labels = torch.full_like(ids, -100)
    picked = (torch.rand(ids.shape) < 0.3) & mask.bool()
    labels[picked] = ids[picked]
    with torch.no_grad():
        out = model(ids, mask, labels=labels)
        dense = model(ids, mask).logits
    assert out.logits.shape == (int(picked.sum()), cfg.vocab_size)
    expected = torch.nn.functional.cross_entropy(dense[picked], ids[picked])
    assert_close(out.loss, expected, 1e-5, "sparse loss")


def test_save_in_mmbert_load_in_transformers_gives_identical_logits(tmp_path):
    cfg = CONFIGS["biased"]
    ours = MmBertForMaskedLM(cfg).eval()
    randomize_norms(ours)
    ours.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["model_type"] == "modernbert" and saved["global_attn_every_n_layers"] == 2
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ckpt", attn_implementation="sdpa").eval()
    assert type(theirs).__name__ == "ModernBertForMaskedLM"
    ids, mask = ragged_batch(cfg.vocab_size)
    with torch.no_grad():
        a, b = ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(a[real], b[real], ATOL, "mmbert-saved checkpoint in transformers")
    assert theirs.decoder.weight.data_ptr() == theirs.model.embeddings.tok_embeddings.weight.data_ptr()


@pytest.mark.parametrize("old_layout", [False, True])
def test_transformers_checkpoint_loads_in_mmbert(tmp_path, old_layout):
    cfg = CONFIGS["biased"]
    theirs = transformers.ModernBertForMaskedLM(hf_config(cfg)).eval()
    randomize_norms(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    if old_layout:  # what released mmBERT checkpoints carry (transformers 4.4x)
        path = tmp_path / "hf" / "config.json"
        d = json.loads(path.read_text())
        d.pop("layer_types"), d.pop("rope_parameters")
        d.update(global_attn_every_n_layers=2, global_rope_theta=50_000.0, local_rope_theta=10_000.0)
        path.write_text(json.dumps(d))
    ours = MmBertForMaskedLM.from_pretrained(tmp_path / "hf")
    assert ours.config.global_attn_every_n_layers == 2 and ours.config.global_rope_theta == 50_000.0
    ids, mask = ragged_batch(cfg.vocab_size)
    with torch.no_grad():
        a, b = ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(a[real], b[real], ATOL, "transformers-saved checkpoint in mmbert")


def test_round_trip_and_encoder_only_load(tmp_path):
    cfg = CONFIGS["tiny"]
    model = MmBertForMaskedLM(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    again = MmBertForMaskedLM.from_pretrained(tmp_path / "m")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    encoder = MmBertModel.from_pretrained(tmp_path / "m")  # the MLM head is dropped
    assert torch.equal(encoder.embeddings.tok_embeddings.weight, model.model.embeddings.tok_embeddings.weight)


def test_broken_checkpoints_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = CONFIGS["tiny"]
    MmBertForMaskedLM(cfg).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    key = "model.layers.1.mlp.Wi.weight"
    save_file({k: v for k, v in tensors.items() if k != key}, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.mlp\.Wi\.weight"):
        MmBertForMaskedLM.from_pretrained(tmp_path / "m")
    tensors[key] = tensors[key][:, :10].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.Wi\.weight.*shape"):
        MmBertForMaskedLM.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        MmBertForMaskedLM.from_pretrained(tmp_path / "nowhere")
    weights.unlink()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        MmBertForMaskedLM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classification_matches_transformers(tmp_path, pooling):
    cfg = CONFIGS["tiny"].replace(num_labels=3, classifier_pooling=pooling)
    MmBertForMaskedLM(cfg).save_pretrained(tmp_path / "mlm")
    ours = MmBertForSequenceClassification.from_pretrained(tmp_path / "mlm", classifier_pooling=pooling).eval()
    ours.save_pretrained(tmp_path / "cls")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "cls", attn_implementation="sdpa").eval()
    ids, mask = ragged_batch(cfg.vocab_size)
    with torch.no_grad():
        assert_close(ours(ids, mask).logits, theirs(input_ids=ids, attention_mask=mask).logits, ATOL, pooling)


def test_token_classification_and_qa_match_transformers(tmp_path):
    cfg = CONFIGS["tiny"].replace(num_labels=5)
    ids, mask = ragged_batch(cfg.vocab_size)
    real = mask.bool()
    tok = MmBertForTokenClassification(cfg).eval()
    tok.save_pretrained(tmp_path / "tok")
    hf_tok = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "tok").eval()
    qa = MmBertForQuestionAnswering(cfg).eval()
    qa.save_pretrained(tmp_path / "qa")
    hf_qa = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").eval()
    with torch.no_grad():
        assert_close(tok(ids, mask).logits[real], hf_tok(input_ids=ids, attention_mask=mask).logits[real], ATOL, "tok")
        a, b = qa(ids, mask), hf_qa(input_ids=ids, attention_mask=mask)
    assert_close(a.start_logits[real], b.start_logits[real], ATOL, "qa start")
    assert_close(a.end_logits[real], b.end_logits[real], ATOL, "qa end")


def test_bf16_autocast_error_is_no_worse_than_transformers_own():
    """bf16 cannot match fp32 to 1e-5; we require our bf16 error (vs fp32 transformers) to stay within
    0.1 absolute on unit-scale hidden states and within 1.5x of transformers' own bf16 error."""
    cfg = CONFIGS["tiny"]
    ours = MmBertModel(cfg).eval()
    theirs = transformers.ModernBertModel(hf_config(cfg)).eval()
    theirs.load_state_dict(ours.state_dict())
    ids, mask = ragged_batch(cfg.vocab_size)
    real = mask.bool()
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=mask).last_hidden_state[real]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16 = ours(ids, mask).last_hidden_state[real].float()
            theirs_bf16 = theirs(input_ids=ids, attention_mask=mask).last_hidden_state[real].float()
    our_err = (ours_bf16 - reference).abs().max().item()
    their_err = (theirs_bf16 - reference).abs().max().item()
    assert our_err <= 0.1, f"bf16 max abs error {our_err:.3g}"
    assert our_err <= 1.5 * their_err + 1e-3, f"ours {our_err:.3g} vs transformers' own bf16 {their_err:.3g}"


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_training_loss_matches_the_plain_decoder_loss_and_gradients(autocast):
    """Training (grad on) fuses decoder + cross-entropy in chunks; it must equal the unfused computation."""
    from mmbert.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = (torch.randn(50, 16) * 0.3).requires_grad_()
    b = (torch.randn(50) * 0.1).requires_grad_()
    y = torch.randint(0, 50, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = linear_cross_entropy(h, w, b, y, chunk=8)  # 5 chunks, the last one partial
    fused_grads = torch.autograd.grad(fused * 3.0, (h, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = torch.nn.functional.linear(h, w, b)
    plain = torch.nn.functional.cross_entropy(logits.float(), y)
    plain_grads = torch.autograd.grad(plain * 3.0, (h, w, b))
    tol = 2e-2 if autocast else 1e-5
    assert_close(fused, plain, tol * 0.1, "loss")
    for name, a, e in zip("hwb", fused_grads, plain_grads):
        assert_close(a, e, tol * e.abs().max().item(), f"grad {name}")


def test_fused_loss_of_a_confidently_wrong_prediction_is_finite_and_exact():
    """The fused loss reads -log p[y] off one softmax; where p[y] underflows (target 200 nat below the top logit)
    it must fall back to the exact log-softmax, not report inf. token_cross_entropy (evaluation) agrees too."""
    from mmbert.model.loss import linear_cross_entropy, token_cross_entropy

    h = torch.eye(4, 8, requires_grad=True)
    w = torch.zeros(6, 8)
    w[0, :4] = 200.0  # class 0 scores 200 for every row; the targets are other classes
    w[3, 1] = 5.0
    w.requires_grad_()
    y = torch.tensor([1, 3, 2, 0])
    plain = torch.nn.functional.cross_entropy(h.detach() @ w.detach().T, y, reduction="none")
    fused = linear_cross_entropy(h, w, None, y, chunk=3)
    assert torch.isfinite(fused)
    assert_close(fused, plain.mean(), 1e-4, "fused loss")
    fused.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()
    assert_close(token_cross_entropy(h.detach(), w.detach(), None, y, chunk=3), plain, 1e-4, "token loss")


def test_training_step_of_the_model_uses_the_fused_loss_with_equal_gradients():
    cfg = CONFIGS["tiny"]
    model = MmBertForMaskedLM(cfg)
    ids, mask = ragged_batch(cfg.vocab_size)
    labels = torch.where((torch.rand(ids.shape) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    out = model(ids, mask, labels=labels)
    assert out.logits is None  # fused path
    out.loss.backward()
    fused = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():
        reference_loss = model(ids, mask, labels=labels).loss
    assert_close(out.loss, reference_loss, 1e-5, "loss")
    hidden = model.model(ids, mask).last_hidden_state[labels != -100]
    torch.nn.functional.cross_entropy(model.decoder(model.head(hidden)), labels[labels != -100]).backward()
    for k, p in model.named_parameters():
        assert_close(fused[k], p.grad, 1e-5, k)


@pytest.mark.parametrize("autocast", [False, True])
def test_token_cross_entropy_equals_cross_entropy_of_the_logits(autocast):
    """The evaluation's per-token loss (log-sum-exp minus the target's logit, chunked) against F.cross_entropy of
    the same logits, with a bias, a partial last chunk and the default chunking."""
    from mmbert.model.loss import token_cross_entropy

    torch.manual_seed(0)
    h, w, b = torch.randn(37, 16), torch.randn(50, 16), torch.randn(50)
    y = torch.randint(0, 50, (37,))
    dtype = torch.bfloat16 if autocast else torch.float32  # under autocast: a bf16 matmul, the bias added in fp32
    logits = (h.to(dtype) @ w.to(dtype).T).float() + b
    want = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for chunk in (5, None):
            got = token_cross_entropy(h, w, b, y, chunk=chunk)
            assert got.dtype == torch.float32 and got.shape == (37,)
            assert_close(got, want, 1e-4, f"chunk {chunk}")


def test_fp32_inference_linears_run_on_onednn_and_match_f_linear(monkeypatch):
    """modeling.linear: fp32 inference on CPU goes through oneDNN (faster than MKL's sgemm at these shapes) and
    equals F.linear; anything autograd must record, training mode and bf16 autocast keep F.linear."""
    import torch.nn.functional as F

    from mmbert.model import modeling

    if not modeling._linear_gelu_usable(torch.zeros(1)):
        pytest.skip("oneDNN's linear is not in this torch build")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96).eval()
    x = torch.randn(37, 64)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(modeling.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k), raising=False)
    with torch.no_grad():
        got = modeling.linear(layer, x)
    assert calls == ["none"]
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    calls.clear()
    out = modeling.linear(layer, x)  # grad enabled, weights require grad: autograd's path
    assert out.grad_fn is not None and calls == []
    with torch.no_grad():
        layer.train()
        modeling.linear(layer, x)
        layer.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert modeling.linear(layer, x).dtype == torch.bfloat16
    assert calls == []
