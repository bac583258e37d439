"""Embeddings and fill-mask from Python, CLI and HTTP: packing, order, truncation, parity with the padded
model, identical results across the three entry points, and a server that answers bad requests with 4xx."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mmbert import MmBertForEmbedding, MmBertForMaskedLM
from mmbert.cli import main as cli_main
from mmbert.serve import Encoder
from mmbert.model.batching import pack_by_tokens
from tests.serve_helpers import TEXTS, assert_allclose, make_checkpoint

ATOL = 1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt", model_max_length=64)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return Encoder(checkpoint)


# -- packing -------------------------------------------------------------------------------------------------
def test_pack_by_tokens_hand_computed():
    # lengths 5, 1, 7, 3, 3 with budget 8: longest first -> [7], [5, 3], [3, 1]
    assert pack_by_tokens([5, 1, 7, 3, 3], 8) == [[2], [0, 3], [4, 1]]
    assert pack_by_tokens([10, 2], 4) == [[0], [1]]  # over-budget sequence runs alone
    assert pack_by_tokens([], 4) == []
    batches = pack_by_tokens(list(range(1, 50)), 64)
    assert sorted(i for b in batches for i in b) == list(range(49))
    assert all(sum(range(1, 50)[i] for i in b) <= 64 for b in batches)
    with pytest.raises(ValueError):
        pack_by_tokens([1], 0)


# -- Python API ----------------------------------------------------------------------------------------------
def padded_reference(checkpoint, ids: list[list[int]], normalize=True) -> np.ndarray:
    """The dense padded path, one right-padded batch: an independent computation of the same embeddings."""
    model = MmBertForEmbedding.from_pretrained(checkpoint)
    model.model.unpad = False
    t = max(map(len, ids))
    x = torch.zeros(len(ids), t, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        return model(x, mask, normalize=normalize).numpy()


def test_encode_matches_padded_model_in_input_order(encoder, checkpoint):
    out = encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 64) and out.dtype == np.float32
    ids = [encoder.truncate(s) for s in encoder.tokenize(TEXTS)]
    assert_allclose(out, padded_reference(checkpoint, ids), 1e-5, "unpadded batches vs padded model")
    assert_allclose(np.linalg.norm(out, axis=1), np.ones(len(TEXTS)), 1e-5, "unit norm")
    raw = encoder.encode(TEXTS, normalize=False)
    assert_allclose(raw, padded_reference(checkpoint, ids, normalize=False), 1e-5, "raw mean pooling")


def test_batch_budget_and_singles_do_not_change_results(encoder):
    whole = encoder.encode(TEXTS)
    tiny_batches = encoder.encode(TEXTS, batch_tokens=8)  # every text in a batch of its own, or nearly
    singles = np.stack([encoder.encode(t) for t in TEXTS])
    reversed_ = encoder.encode(TEXTS[::-1])[::-1]
    assert_allclose(tiny_batches, whole, ATOL, "batch_tokens=8")
    assert_allclose(singles, whole, ATOL, "one text at a time")
    assert_allclose(reversed_, whole, ATOL, "reversed input order")


def test_long_texts_are_truncated_keeping_special_tokens(encoder):
    long_text = "Paris is the capital of France. " * 40
    ids = encoder.tokenize([long_text])[0]
    assert len(ids) > encoder.max_length == 64
    cut = encoder.truncate(ids)
    assert len(cut) == 64 and cut[0] == encoder.prefix[0] and cut[-1] == encoder.suffix[-1]
    assert cut[1:-1] == ids[1:63]
    assert_allclose(encoder.encode(long_text), encoder.encode_ids([cut])[0], 0.0, "truncated text")


def test_token_ids_embed_like_their_text(encoder):
    content = encoder.tokenizer.encode(TEXTS[1], add_special_tokens=False)
    assert_allclose(encoder.encode_ids([encoder.wrap(content)])[0], encoder.encode(TEXTS[1]), 0.0, "ids vs text")


def test_encode_rejects_non_strings(encoder):
    with pytest.raises(TypeError, match="item 1"):
        encoder.encode(["ok", 3])


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no bf16 on this CPU")
def test_bf16_autocast_is_close_to_fp32(checkpoint, encoder):
    bf16 = Encoder(checkpoint, precision="bf16").encode(TEXTS)
    assert bf16.dtype == np.float32
    cos = (bf16 * encoder.encode(TEXTS)).sum(axis=1)
    assert cos.min() > 0.99, cos


def test_fill_mask_matches_mlm_softmax(encoder, checkpoint):
    text = "Paris is the <mask> of <mask>."
    preds = encoder.fill_mask(text, top_k=3)
    assert len(preds) == 2 and all(len(p) == 3 for p in preds)
    ids = encoder.tokenize([text])[0]
    positions = [i for i, t in enumerate(ids) if t == encoder.tokenizer.mask_id]
    mlm = MmBertForMaskedLM.from_pretrained(checkpoint)
    mlm.model.unpad = False
    with torch.no_grad():
        probs = mlm(torch.tensor([ids])).logits[0, positions].softmax(-1)
    top = probs.topk(3, dim=-1)
    for k, p in enumerate(preds):
        assert [x["token"] for x in p] == top.indices[k].tolist()
        assert_allclose([x["score"] for x in p], top.values[k].numpy(), 1e-6, f"mask {k} scores")
        assert set(p[0]) == {"score", "token", "token_str", "sequence"}
        assert p[0]["sequence"].count("<mask>") == 1  # the other mask stays
    with pytest.raises(ValueError, match="no <mask>"):
        encoder.fill_mask("no mask here")


def test_fill_mask_without_head_is_a_clear_error(tmp_path, checkpoint):
    encoder_only = tmp_path / "enc"
    MmBertForEmbedding.from_pretrained(checkpoint).save_pretrained(encoder_only)
    Encoder(checkpoint).tokenizer.save(encoder_only)
    enc = Encoder(encoder_only)
    assert enc.encode("hello").shape == (64,)
    with pytest.raises(ValueError, match="no masked-LM head"):
        enc.fill_mask("a <mask>")


def test_missing_tokenizer_with_other_vocab_size_is_an_error(tmp_path, checkpoint):
    bare = tmp_path / "bare"
    MmBertForMaskedLM.from_pretrained(checkpoint).save_pretrained(bare)
    with pytest.raises((ValueError, FileNotFoundError), match="tokenizer"):
        Encoder(bare)


# -- CLI -----------------------------------------------------------------------------------------------------
def test_cli_embed_npy_and_jsonl_equal_python(encoder, checkpoint, tmp_path, capsys):
    texts = [t for t in TEXTS if t]  # an empty line is an error (test_serve_faults), as "" is at the server
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert cli_main(["embed", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "v.npy"),
                     "--batch-tokens", "32"]) == 0
    expected = encoder.encode(texts)
    assert_allclose(np.load(tmp_path / "v.npy"), expected, ATOL, "CLI .npy")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    assert cli_main(["embed", str(checkpoint), "--input", str(jsonl), "--output", str(tmp_path / "v.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(texts)))
    assert_allclose([r["embedding"] for r in rows], expected, ATOL, "CLI .jsonl")
    assert cli_main(["embed", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "raw.npy"),
                     "--no-normalize"]) == 0
    assert_allclose(np.load(tmp_path / "raw.npy"), encoder.encode(texts, normalize=False), ATOL, "CLI raw")


def test_cli_fill_mask(checkpoint, encoder, capsys):
    assert cli_main(["fill-mask", str(checkpoint), "Paris is the <mask> of France.", "--top-k", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["token"] for p in printed[0]] == [p["token"] for p in encoder.fill_mask("Paris is the <mask> of France.", 2)[0]]
    assert cli_main(["fill-mask", str(checkpoint), "no mask"]) == 1  # a clear error line, not a traceback
    assert "no <mask>" in capsys.readouterr().err


# -- HTTP ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(encoder):
    from fastapi.testclient import TestClient

    from mmbert.serve.server import Limits, create_app

    app = create_app(encoder, limits=Limits(max_body_bytes=20_000, max_inputs=8, max_tokens=48), max_wait_ms=30)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def embed_http(client, **body):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_http_embeddings_equal_cli_and_python(client, encoder, checkpoint, tmp_path):
    texts = [t for t in TEXTS if t and len(encoder.tokenize([t])[0]) <= 48]
    python = encoder.encode(texts)
    src = tmp_path / "t.txt"
    src.write_text("\n".join(texts), encoding="utf-8")
    assert cli_main(["embed", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "v.npy")]) == 0
    cli = np.load(tmp_path / "v.npy")
    out = embed_http(client, input=texts, model="anything")
    assert out["object"] == "list" and out["model"] == checkpoint.name
    assert [d["index"] for d in out["data"]] == list(range(len(texts)))
    http = np.array([d["embedding"] for d in out["data"]], dtype=np.float32)
    b64 = embed_http(client, input=texts, encoding_format="base64")
    http_b64 = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert_allclose(cli, python, ATOL, "CLI vs Python")
    assert_allclose(http, python, ATOL, "HTTP float vs Python")
    assert_allclose(http_b64, http, 0.0, "HTTP base64 vs float")
    n_tokens = sum(len(s) for s in encoder.tokenize(texts))
    assert out["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_http_input_forms_and_dimensions(client, encoder):
    text = TEXTS[1]
    ids = encoder.tokenizer.encode(text, add_special_tokens=False)
    ref = encoder.encode(text)
    single = embed_http(client, input=text)["data"][0]["embedding"]
    one_ids = embed_http(client, input=ids)["data"][0]["embedding"]
    many_ids = embed_http(client, input=[ids, ids[:3]])["data"]
    assert_allclose(single, ref, ATOL, "string")
    assert_allclose(one_ids, ref, ATOL, "token ids")
    assert_allclose(many_ids[0]["embedding"], ref, ATOL, "list of token-id lists")
    short = np.array(embed_http(client, input=text, dimensions=16)["data"][0]["embedding"])
    assert_allclose(short, ref[:16] / np.linalg.norm(ref[:16]), 1e-6, "dimensions=16")


def test_http_fill_mask_and_health(client, encoder):
    r = client.post("/fill-mask", json={"text": "Paris is the <mask> of France.", "top_k": 4})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == json.loads(json.dumps(encoder.fill_mask("Paris is the <mask> of France.", 4)))
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["hidden_size"] == 64 and health["fill_mask"] is True


def test_concurrent_requests_are_micro_batched(client, encoder):
    before = client.get("/health").json()["batching"]
    texts = [f"text {i} " * (1 + i % 5) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda t: embed_http(client, input=t)["data"][0]["embedding"], texts))
    assert_allclose(results, encoder.encode(texts), ATOL, "concurrent requests")
    after = client.get("/health").json()["batching"]
    assert after["requests"] - before["requests"] == 12
    assert after["batches"] - before["batches"] < 12, (before, after)  # some requests shared a forward pass


BAD_REQUESTS = [  # (description, raw body or JSON, expected status, expected code)
    ("invalid JSON", b'{"input": ', 400, "invalid_json"),
    ("not UTF-8", b'{"input": "\xff\xfe"}', 400, "invalid_encoding"),
    ("empty body", b"", 400, "invalid_json"),
    ("JSON array body", [1, 2], 400, "invalid_type"),
    ("missing input", {"model": "x"}, 400, "missing_input"),
    ("input null", {"input": None}, 400, "missing_input"),
    ("input number", {"input": 3.5}, 400, "invalid_type"),
    ("input object", {"input": {"a": 1}}, 400, "invalid_type"),
    ("empty list", {"input": []}, 400, "empty_input"),
    ("empty string", {"input": ""}, 400, "empty_input"),
    ("empty string in list", {"input": ["a", ""]}, 400, "empty_input"),
    ("mixed types", {"input": ["a", 1]}, 400, "invalid_type"),
    ("bools as ids", {"input": [True, False]}, 400, "invalid_type"),
    ("float ids", {"input": [[1.5, 2]]}, 400, "invalid_type"),
    ("empty id list", {"input": [[5], []]}, 400, "empty_input"),
    ("id out of vocab", {"input": [5, 100000]}, 400, "invalid_token_id"),
    ("negative id", {"input": [[5, -1]]}, 400, "invalid_token_id"),
    ("too many inputs", {"input": ["a"] * 9}, 400, "too_many_inputs"),
    ("text too long", {"input": "word " * 200}, 400, "context_length_exceeded"),
    ("ids too long", {"input": [7] * 100}, 400, "context_length_exceeded"),
    ("body too large", {"input": "x" * 30_000}, 413, "body_too_large"),
    ("bad encoding_format", {"input": "a", "encoding_format": "int8"}, 400, "invalid_value"),
    ("dimensions too large", {"input": "a", "dimensions": 65}, 400, "invalid_value"),
    ("dimensions zero", {"input": "a", "dimensions": 0}, 400, "invalid_value"),
    ("dimensions string", {"input": "a", "dimensions": "8"}, 400, "invalid_value"),
    ("model not a string", {"input": "a", "model": 3}, 400, "invalid_type"),
    ("deep nesting", b"[" * 100_000, 413, "body_too_large"),
    ("deep nesting under limit", b"[" * 19_000, 400, "invalid_json"),
]


@pytest.mark.parametrize("what,body,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_embedding_requests_get_openai_errors(client, what, body, status, code):
    if isinstance(body, bytes):
        r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, (what, r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"], error


@pytest.mark.parametrize("body,status", [
    ({"text": "no mask"}, 400), ({"text": 5}, 400), ({}, 400), ({"text": "a <mask>", "top_k": 0}, 400),
    ({"text": "a <mask>", "top_k": 1000}, 400), ({"text": "a <mask> " + "word " * 100}, 400),
])
def test_bad_fill_mask_requests(client, body, status):
    r = client.post("/fill-mask", json=body)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_unknown_route_and_method_use_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/embeddings")
    assert r.status_code == 405 and "error" in r.json()
    assert client.get("/health").status_code == 200  # still serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_on_loopback_survives_malformed_requests(encoder):
    import httpx
    import uvicorn

    from mmbert.serve.server import Limits, create_app

    port = free_port()
    app = create_app(encoder, limits=Limits(max_body_bytes=10_000, max_inputs=4, max_tokens=48))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            statuses = [
                http.post("/v1/embeddings", content=b"\xff\xfe\x00garbage").status_code,
                http.post("/v1/embeddings", content=b'{"input": [1, "a"]}').status_code,
                http.post("/v1/embeddings", content=b"x" * 50_000).status_code,
                http.post("/v1/embeddings", content=(b"y" * 20_000 for _ in range(3))).status_code,  # chunked, no length
            ]
            assert statuses == [400, 400, 413, 413], statuses
            good = http.post("/v1/embeddings", json={"input": ["hello world"]})
            assert good.status_code == 200
            assert_allclose(good.json()["data"][0]["embedding"], encoder.encode("hello world"), ATOL, "uvicorn")
            assert http.get("/health").json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()
