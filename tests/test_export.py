"""Exports load offline in transformers, sentence-transformers and onnxruntime, with outputs equal to mmbert's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbert import MmBertForMaskedLM, MmBertModel
from mmbert.cli import main as cli_main
from mmbert.serve import Encoder
from mmbert.serve.export import export
from tests.serve_helpers import TEXTS, assert_allclose, make_checkpoint

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "ckpt", seed=1, model_max_length=128)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return Encoder(checkpoint)


def padded(tokenizer, texts):
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_hf_export_loads_offline_with_equal_outputs(checkpoint, encoder, tmp_path):
    out = tmp_path / "hf"
    assert cli_main(["export", str(checkpoint), "--to", "hf", str(out)]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok(TEXTS)["input_ids"] == encoder.tokenize(TEXTS), "AutoTokenizer ids differ from mmbert's"
    assert tok.pad_token == "<pad>" and tok.mask_token == "<mask>" and tok.model_max_length == 128
    ids, mask = padded(tok, TEXTS)
    real = mask.bool()

    hf_mlm = transformers.AutoModelForMaskedLM.from_pretrained(out, local_files_only=True).eval()
    ours_mlm = MmBertForMaskedLM.from_pretrained(checkpoint)
    hf_enc = transformers.AutoModel.from_pretrained(out, local_files_only=True).eval()
    ours_enc = MmBertModel.from_pretrained(checkpoint)
    with torch.no_grad():
        assert_allclose(hf_mlm(input_ids=ids, attention_mask=mask).logits[real],
                        ours_mlm(ids, mask).logits[real], 1e-5, "AutoModelForMaskedLM logits")
        hidden = hf_enc(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_allclose(hidden[real], ours_enc(ids, mask).last_hidden_state[real], 1e-5, "AutoModel hidden")
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert_allclose(torch.nn.functional.normalize(pooled, dim=-1), encoder.encode(TEXTS), 1e-5, "pooled")
    assert cli_main(["export", str(checkpoint), "--to", "hf", str(out)]) == 1  # exists: refuse without --overwrite
    assert cli_main(["export", str(checkpoint), "--to", "hf", str(out), "--overwrite"]) == 0


def test_sentence_transformers_export_encodes_like_mmbert(checkpoint, encoder, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    out = export(checkpoint, "sentence-transformers", tmp_path / "st")
    model = st.SentenceTransformer(str(out), local_files_only=True, device="cpu")
    assert model.max_seq_length == 128
    long_texts = TEXTS + ["Paris is the capital of France. " * 40]  # truncated alike by both
    got = model.encode(long_texts, batch_size=3, convert_to_numpy=True)
    assert_allclose(got, encoder.encode(long_texts), 1e-5, "SentenceTransformer.encode vs Encoder.encode")
    assert_allclose(np.linalg.norm(got, axis=1), np.ones(len(long_texts)), 1e-5, "normalised")


def test_onnx_export_matches_pytorch(checkpoint, encoder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = export(checkpoint, "onnx", tmp_path / "onnx")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ref_model = MmBertModel.from_pretrained(checkpoint)
    for texts in (TEXTS, TEXTS[:1], TEXTS[3:5]):  # other batch sizes and sequence lengths than traced
        ids, mask = padded(tok, texts)
        hidden, pooled = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            expected = ref_model(ids, mask).last_hidden_state
        real = mask.bool().numpy()
        assert_allclose(hidden[real], expected.numpy()[real], 1e-5, f"ONNX hidden states, batch {len(texts)}")
        assert_allclose(pooled, encoder.encode(texts), 1e-5, f"ONNX sentence_embedding, batch {len(texts)}")


def test_onnx_int8_export_loads_and_is_close_to_fp32(checkpoint, encoder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.quantization")
    out = export(checkpoint, "onnx", tmp_path / "onnx8", quantize="int8")
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, sorted(ops)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == ["model.onnx"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids, mask = padded(tok, TEXTS)
    _, pooled = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    cos = (pooled * encoder.encode(TEXTS)).sum(axis=1)
    assert cos.min() > 0.99, f"int8 ONNX vs fp32: min cosine {cos.min():.5f}"  # tiny model: measured 0.99999
    assert np.abs(pooled - encoder.encode(TEXTS)).max() > 1e-6  # it really is quantised


def test_quantize_only_for_onnx(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="only --to onnx --quantize int8"):
        export(checkpoint, "hf", tmp_path / "hf8", quantize="int8")
    with pytest.raises(ValueError, match="only --to onnx --quantize int8"):
        export(checkpoint, "onnx", tmp_path / "o4", quantize="int4")
