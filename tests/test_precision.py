"""Inference precisions (model/precision.py): each mode close to fp32 within a stated bound, the same API and
output dtype, the flags of embed / serve / eval, and clear refusals of modes the device cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mmbert import Encoder, MmBertForMaskedLM, MmBertModel, ModelConfig
from mmbert.cli import main as cli_main
from mmbert.model import precision as P
from tests.serve_helpers import TEXTS, make_checkpoint

TEXTS = [t for t in TEXTS if t]
# Bounds on the tiny model (hidden 64, 4 layers, perturbed norms): min cosine of each token vector / each text
# embedding to fp32. Measured 0.9999998 for both since the forward autocasts (fp32 residual stream; 0.99998 with
# bf16 weights); bf16 keeps ~3 significant digits per matmul, int8 adds 1/254 of the range per linear input.
MIN_COSINE = {"bf16": 0.99995, "int8": 0.9995}
needs_bf16 = pytest.mark.skipif(not P.cpu_supports_bf16(), reason="no native bf16 on this CPU")
needs_int8 = pytest.mark.skipif(not P.cpu_supports_int8(), reason="no AMX/VNNI int8 on this CPU")
MODES = [pytest.param("bf16", marks=needs_bf16), pytest.param("int8", marks=needs_int8)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("prec") / "ckpt", model_max_length=64)


@pytest.fixture(scope="module")
def fp32_vectors(checkpoint):
    return Encoder(checkpoint).encode(TEXTS)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    mask[2, 7:] = 0
    return ids, mask


@pytest.mark.parametrize("mode", MODES)
def test_from_pretrained_precision_close_to_fp32_same_signature(checkpoint, mode):
    ids, mask = _batch()
    ref = MmBertModel.from_pretrained(checkpoint)
    model = MmBertModel.from_pretrained(checkpoint, precision=mode)
    assert P.model_precision(model) == mode
    with torch.inference_mode():
        want = ref(ids, mask).last_hidden_state
        got = model(ids, mask).last_hidden_state  # padded call, unpadded inside
        flat = ids[mask.bool()]
        cu = torch.tensor([0, 40, 60, 67], dtype=torch.int32)
        got_varlen = model(flat, cu_seqlens=cu).last_hidden_state  # unpadded call
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.all(got[~mask.bool()] == 0)
    cos = nn.functional.cosine_similarity(got[mask.bool()], want[mask.bool()], dim=-1)
    assert cos.min() > MIN_COSINE[mode], f"{mode}: min cosine {cos.min():.6f} (mean {cos.mean():.6f})"
    torch.testing.assert_close(got_varlen, got[mask.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_encoder_precision_close_to_fp32(checkpoint, fp32_vectors, mode):
    enc = Encoder(checkpoint, precision=mode)
    vectors = enc.encode(TEXTS)
    assert vectors.dtype == np.float32
    cos = (vectors * fp32_vectors).sum(axis=1)
    assert cos.min() > MIN_COSINE[mode], f"{mode}: min cosine {cos.min():.6f}"
    assert np.abs(vectors - fp32_vectors).max() > 0  # the mode really changed the arithmetic


@pytest.mark.parametrize("mode", MODES)
def test_masked_lm_precision_keeps_fp32_heads_and_predictions(checkpoint, mode):
    ids, mask = _batch()
    ref = MmBertForMaskedLM.from_pretrained(checkpoint)
    model = MmBertForMaskedLM.from_pretrained(checkpoint, precision=mode)
    assert model.decoder.weight.dtype == torch.float32  # weights stay fp32: the forward autocasts
    with torch.inference_mode():
        want, got = ref(ids, mask).logits, model(ids, mask).logits
    assert got.dtype == torch.float32
    real = mask.bool()
    agree = (got[real].argmax(-1) == want[real].argmax(-1)).float().mean()
    assert agree > 0.9, f"{mode}: top-1 agreement with fp32 {agree:.3f}"


@needs_int8
def test_int8_linear_matches_float_linear_and_keeps_mlp_out():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(33, 64)
    q = P.Int8Linear(lin, torch.float32)
    want = lin(x)
    got = q(x)
    rel = (got - want).norm() / want.norm()
    assert rel < 0.02, f"relative error {rel:.4f}"
    enc = MmBertModel(ModelConfig.from_preset("tiny"))
    assert P.quantize_linears_int8(enc, torch.bfloat16) == 4 * 3  # Wqkv, attn.Wo, Wi per layer; mlp.Wo kept
    assert all(isinstance(layer.mlp.Wo, nn.Linear) for layer in enc.layers)
    # attn.Wo feeds the fp32 residual add directly: it writes fp32, the others the compute dtype
    assert {layer.attn.Wo.out_dtype for layer in enc.layers} == {torch.float32}
    assert {layer.attn.Wqkv.out_dtype for layer in enc.layers} == {torch.bfloat16}


@needs_int8
@pytest.mark.parametrize("act_name", ["gelu", "gelu_pytorch_tanh", "silu"])
def test_int8_geglu_matches_the_float_mlp(act_name):
    """Two int8 GEMMs on one quantised input, GELU in the first one's epilogue (or the activation after it,
    for one oneDNN cannot fuse), against the float MLP: same function to int8 precision."""
    from mmbert.model.modeling import MLP

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", hidden_activation=act_name)
    mlp = MLP(cfg).eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(57, cfg.hidden_size)
    q = P.Int8MLP(mlp, torch.float32)
    assert (q.gated.algorithm is None) == (act_name == "silu")
    with torch.inference_mode():
        want, got = mlp(x), q(x)
    rel = (got - want).norm() / want.norm()
    assert rel < 0.03, f"{act_name}: relative error {rel:.4f}"
    assert q.Wo is mlp.Wo  # the output projection is kept as it is (INT8_KEEP)


@pytest.mark.parametrize("autocast", [False, pytest.param(True, marks=needs_bf16)])
def test_fused_linear_gelu_is_the_same_mlp(autocast, monkeypatch):
    """Inference on CPU runs GeGLU's input half with GELU in oneDNN's epilogue (model/modeling.py MLP); it
    computes what the chunked path does (fp32: to rounding; bf16: to bf16's precision)."""
    from mmbert.model import modeling as M

    torch.manual_seed(0)
    mlp = M.MLP(ModelConfig.from_preset("tiny")).eval()
    x = torch.randn(41, mlp.Wi.in_features)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = mlp(x).float()
        monkeypatch.setattr(M, "_linear_gelu_usable", lambda x: False)
        plain = mlp(x).float()
    tol = 2e-2 if autocast else 1e-5
    assert torch.allclose(fused, plain, atol=tol * plain.abs().max(), rtol=0)
    assert fused.dtype == torch.float32


@needs_bf16  # int8 without native bf16 keeps fp32 attention
@pytest.mark.parametrize("mode", MODES)
def test_bf16_modes_use_the_bmm_attention_on_cpu(checkpoint, mode, monkeypatch):
    import mmbert.model.attention as attention

    chosen = []
    choose = attention.auto_backend
    monkeypatch.setattr(attention, "auto_backend", lambda *a, **k: chosen.append(choose(*a, **k)) or chosen[-1])
    ids = torch.randint(5, 100, (2, 40))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        MmBertModel.from_pretrained(checkpoint, precision=mode)(ids, mask)
        assert chosen and set(chosen) == {"bmm"}
        chosen.clear()
        MmBertModel.from_pretrained(checkpoint)(ids, mask)  # fp32: CPU flash SDPA
    assert chosen and set(chosen) == {"sdpa"}


def test_uint8_view_shares_the_quantised_codes():
    x = torch.randn(40, 16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(x, 0.02, 128, torch.quint8)
    view = P._uint8_view(qx)
    assert view.dtype == torch.uint8 and torch.equal(view, qx.int_repr())
    assert view.untyped_storage().data_ptr() == qx.untyped_storage().data_ptr()  # no copy


def test_unknown_precision_is_a_clear_error(checkpoint):
    with pytest.raises(P.PrecisionError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16, int8"):
        Encoder(checkpoint, precision="fp16")
    with pytest.raises(P.PrecisionError, match="unknown precision"):
        MmBertModel.from_pretrained(checkpoint, precision="int4")


def test_modes_the_cpu_cannot_run_are_refused(monkeypatch, checkpoint):
    monkeypatch.setattr(P, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(P, "cpu_supports_int8", lambda: False)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(P.PrecisionError, match="'bf16' needs native bf16.*use 'fp32' or 'auto'"):
        Encoder(checkpoint, precision="bf16")
    with pytest.raises(P.PrecisionError, match="'int8' needs a CPU with AMX-INT8 or AVX"):
        P.resolve_precision("int8", "cpu")
    with pytest.raises(P.PrecisionError, match="'int8' runs on CPU only"):
        P.resolve_precision("int8", "cuda")


def test_auto_follows_the_trainers_detection(monkeypatch):
    from mmbert.train import optim

    assert optim.cpu_supports_bf16 is P.cpu_supports_bf16  # one detection, shared
    monkeypatch.setattr(P, "cpu_supports_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize("mode", MODES)
def test_cli_embed_precision(checkpoint, fp32_vectors, tmp_path, mode):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert cli_main(["embed", str(checkpoint), "--input", str(src), "--output", str(out), "--precision", mode]) == 0
    cos = (np.load(out) * fp32_vectors).sum(axis=1)
    assert cos.min() > MIN_COSINE[mode]


@pytest.mark.parametrize("command", ["embed", "serve", "eval"])
def test_cli_refuses_unknown_precision(checkpoint, command, capsys):
    extra = ["--task", "udhr-bitext"] if command == "eval" else []
    with pytest.raises(SystemExit) as e:
        cli_main([command, str(checkpoint), *extra, "--precision", "fp16"])
    assert e.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_eval_precision_only_for_embedding_tasks(checkpoint):
    from mmbert.eval import evaluate

    with pytest.raises(ValueError, match="precision applies to the embedding tasks"):
        evaluate(checkpoint, "glue-sst2", precision="bf16", data="unused")


@needs_bf16
def test_eval_udhr_bitext_precision(checkpoint, tmp_path):
    out = tmp_path / "r.json"
    args = ["eval", str(checkpoint), "--task", "udhr-bitext", "--languages", "deu", "fra", "--max-length", "32"]
    assert cli_main([*args, "--precision", "fp32", "--out", str(out)]) == 0
    fp32 = json.loads(out.read_text())
    assert cli_main([*args, "--precision", "bf16", "--out", str(out)]) == 0
    bf16 = json.loads(out.read_text())
    langs = set(fp32["per_language"])
    assert langs == set(bf16["per_language"]) and langs and all(x.startswith(("deu", "fra")) for x in langs)
    # 6 articles each way: bf16 may flip at most one ranking per direction of the random tiny model
    for lang in langs:
        assert abs(fp32["per_language"][lang]["top1_accuracy"] - bf16["per_language"][lang]["top1_accuracy"]) <= 1 / 6


@pytest.mark.parametrize("mode", MODES)
def test_precision_autocasts_the_forward_and_leaves_weights_and_training_alone(checkpoint, mode):
    """bf16 / int8 run the matmuls in bf16 under the encoder's own autocast: the weights that are not quantised
    stay fp32 (a bf16 residual stream cost 100x the error), and a model never converted never autocasts."""
    model = MmBertModel.from_pretrained(checkpoint, precision=mode)
    assert model.autocast_dtype == (torch.bfloat16 if P.cpu_supports_bf16() else None)  # int8 without bf16: fp32
    assert model.embeddings.tok_embeddings.weight.dtype == torch.float32
    assert all(layer.mlp.Wo.weight.dtype == torch.float32 for layer in model.layers)
    assert MmBertModel.from_pretrained(checkpoint).autocast_dtype is None
