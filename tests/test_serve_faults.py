"""Faults a new user meets at the server, ``mmbert embed`` and the tokenizer wrapper, each reproduced: lone
surrogates and over-long integers (4xx, not 500), a 413 every client reads, slow and half-open clients
(header / body timeouts, a shutdown deadline), blank and undecodable lines in ``mmbert embed`` (file and
line named), and property-based fuzzing of the HTTP parsing and of ``Tokenizer.encode``.

Servers run on loopback only: in this process (``TestClient``), in a thread (real uvicorn, the same
``uvicorn_config`` that ``serve`` uses), or as a ``mmbert serve`` subprocess for the SIGTERM test.
Time bounds are generous (a loaded 2-core machine); each asserts an order of magnitude, not a tight figure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbert.cli import main as cli_main
from mmbert.serve import Encoder
from mmbert.tokenizer import InvalidTextError
from tests.serve_helpers import assert_allclose, make_checkpoint

JSON = {"content-type": "application/json"}
SLACK_S = 8.0  # scheduling slack on a loaded machine, added to every deadline


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("faults") / "ckpt", model_max_length=64)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return Encoder(checkpoint)


@pytest.fixture(scope="module")
def client(encoder):
    from fastapi.testclient import TestClient

    from mmbert.serve.server import Limits, create_app

    app = create_app(encoder, limits=Limits(max_body_bytes=20_000, max_inputs=8, max_tokens=48), max_wait_ms=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client, path: str, body) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # ensure_ascii: "\ud800" stays escaped
    return client.post(path, content=raw, headers=JSON)


def assert_openai_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


# -- 4: lone surrogates and integers past Python's 4,300-digit limit ---------------------------------------
@pytest.mark.parametrize("path,body,where", [
    ("/v1/embeddings", {"input": "a\ud800b"}, "input[0]"),
    ("/v1/embeddings", {"input": ["fine", "also fine", "\udfff"]}, "input[2]"),
    ("/fill-mask", {"text": "Paris is the <mask> \ud800"}, "text"),
])
def test_lone_surrogate_is_a_400_naming_the_input(client, path, body, where):
    error = assert_openai_error(post(client, path, body), 400, "invalid_text")
    assert where in error["message"] and "surrogate" in error["message"], error


@pytest.mark.parametrize("path,template", [
    ("/v1/embeddings", b'{"input": [%s]}'),
    ("/v1/embeddings", b'{"input": "a", "dimensions": %s}'),
    ("/fill-mask", b'{"text": "a <mask>", "top_k": %s}'),
])
def test_integer_of_5000_digits_is_a_400(client, path, template):
    error = assert_openai_error(post(client, path, template % (b"9" * 5000)), 400, "invalid_json")
    assert "digits" in error["message"], error


def test_content_length_that_is_not_a_number_is_a_400(client):
    for value in (b"\xb2", b"9" * 5000, b"-1"):  # '²' (latin-1 0xB2): isdigit() is True, int('²') raises
        r = client.post("/v1/embeddings", content=b"{}", headers={**JSON, "content-length": value})
        assert r.status_code == 400, (value[:10], r.status_code, r.text)


def test_encode_and_fill_mask_name_the_input_with_a_surrogate(encoder):
    with pytest.raises(ValueError, match=r"texts\[2\].*surrogate U\+D800 at character 1"):
        encoder.encode(["a", "b", "c\ud800"])
    with pytest.raises(ValueError, match="surrogate"):
        encoder.encode("\udc80")
    with pytest.raises(ValueError, match="surrogate"):
        encoder.fill_mask("<mask> \ud800")


def test_tokenizer_wrapper_refuses_surrogates_with_the_index(encoder):
    tok = encoder.tokenizer
    with pytest.raises(InvalidTextError) as info:
        tok.encode_batch(["ok", "x\ud83d"])  # half of an emoji's UTF-16 pair
    assert info.value.index == 1 and isinstance(info.value, ValueError)
    with pytest.raises(InvalidTextError, match="surrogate"):
        tok.encode("\ud800")
    assert tok.encode_batch(["ok", "\U0001f600"]) == [tok.encode("ok"), tok.encode("\U0001f600")]  # paired: fine


# -- a real uvicorn on loopback, configured as `mmbert serve` configures it ---------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(encoder):
    """(base URL, port) of a uvicorn thread with a 10 kB body limit and 1 s header / 2 s body timeouts."""
    import uvicorn

    from mmbert.serve.server import Limits, Timeouts, create_app, uvicorn_config

    port = free_port()
    app = create_app(encoder, limits=Limits(max_body_bytes=10_000, max_inputs=4, max_tokens=48, body_timeout_s=2.0))
    timeouts = Timeouts(header_s=1.0, keep_alive_s=5.0, graceful_shutdown_s=2.0)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, timeouts=timeouts, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=15)


# -- 5: a 413 that every client reads -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [50_000, 4_000_000, 20_000_000])  # the largest is past loopback's socket buffers
def test_urllib_reads_the_413_of_an_oversized_body(live, size):
    base, _ = live
    request = urllib.request.Request(f"{base}/v1/embeddings", data=b"x" * size, headers=JSON)  # Connection: close
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_httpx_reads_the_413_of_an_oversized_body(live, connection):
    base, _ = live
    with httpx.Client(base_url=base, timeout=30) as http:
        for body in (b"x" * 20_000_000, (b"y" * 1_000_000 for _ in range(20))):  # Content-Length, then chunked
            r = http.post("/v1/embeddings", content=body, headers={**JSON, "connection": connection})
            assert_openai_error(r, 413, "body_too_large")
        assert http.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


# -- 6: half-open and trickling clients ---------------------------------------------------------------------
def seconds_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (recv gives EOF or a reset), and what it sent first."""
    sock.settimeout(limit)
    start, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"connection still open after {limit:.0f} s")
    return time.monotonic() - start, received


def test_connections_that_never_send_headers_are_closed_after_the_header_timeout(live):
    _, port = live
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    try:
        times = [seconds_until_closed(s, 1.0 + SLACK_S)[0] for s in [*silent, partial]]
    finally:
        for s in [*silent, partial]:
            s.close()
    assert max(times) < 1.0 + SLACK_S, times


def test_headers_trickled_byte_by_byte_do_not_reset_the_header_deadline(live):
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as s:
        start = time.monotonic()
        try:
            for byte in b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
                assert time.monotonic() - start < 1.0 + SLACK_S, "still accepting header bytes"
        except (BrokenPipeError, ConnectionResetError):
            pass
        seconds_until_closed(s, 1.0 + SLACK_S)
        assert time.monotonic() - start < 1.0 + SLACK_S


def test_a_body_trickled_past_the_body_timeout_gets_408(live):
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{\"input\": \"")
        start = time.monotonic()
        stop = threading.Event()

        def trickle():
            with contextlib_suppress():
                while not stop.wait(0.2):
                    s.sendall(b"a")

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            elapsed, received = seconds_until_closed(s, 2.0 + SLACK_S)
        finally:
            stop.set()
            t.join(5)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"request_timeout" in received and 1.5 < elapsed < 2.0 + SLACK_S, elapsed


def test_past_limit_concurrency_a_request_gets_503(encoder):
    import uvicorn

    from mmbert.serve.server import Timeouts, create_app, uvicorn_config

    port = free_port()
    config = uvicorn_config(create_app(encoder), "127.0.0.1", port, log_level="critical",
                            timeouts=Timeouts(limit_concurrency=3))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    held = []
    try:
        while not server.started:
            assert thread.is_alive(), "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/health").status_code == 200
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            time.sleep(0.3)
            assert http.get("/health").status_code == 503  # 4 connections open (3 idle + this one)
    finally:
        for s in held:
            s.close()
        server.should_exit = True
        thread.join(timeout=15)


def test_a_client_that_leaves_mid_body_is_not_an_internal_error(live, caplog):
    _, port = live
    with caplog.at_level("ERROR", logger="mmbert.serve"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"input\": ")
            time.sleep(0.3)
        time.sleep(1.0)  # the app sees the disconnect
    assert not [r for r in caplog.records if "unhandled" in r.getMessage()], caplog.text


class contextlib_suppress:
    """Suppress the socket errors a trickling writer gets once the server has closed."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def start_cli_server(checkpoint, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mmbert.cli", "serve", str(checkpoint), "--port", str(port), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("server did not become healthy")


def test_sigterm_with_a_trickling_client_exits_within_the_shutdown_deadline(checkpoint):
    port = free_port()
    proc = start_cli_server(checkpoint, port, "--timeout-graceful-shutdown", "2", "--timeout-body", "600",
                            "--timeout-header", "600")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"input\": \"")
        stop = threading.Event()

        def trickle():
            with contextlib_suppress():
                while not stop.wait(0.1):
                    s.sendall(b"a")

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        time.sleep(1.0)  # the request is in the app, waiting on its body
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2 + SLACK_S + 5)
        except subprocess.TimeoutExpired:
            pytest.fail("server still running after SIGTERM past the 2 s shutdown deadline")
        elapsed = time.monotonic() - start
        stop.set()
        t.join(5)
        s.close()
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 2 + SLACK_S, elapsed
    # 10: the start-up log shows the limits in force (the checkpoint's 64 tokens), not None
    assert "'max_tokens': 64" in log and "None" not in log.split("limits:")[1].splitlines()[0], log


# -- 10: `mmbert embed` input errors name the file and line --------------------------------------------------
def embed_error(checkpoint, path, capsys) -> str:
    assert cli_main(["embed", str(checkpoint), "--input", str(path), "--output", str(path) + ".npy"]) == 1
    return capsys.readouterr().err


def test_embed_refuses_an_empty_line_naming_file_and_line(checkpoint, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("first\n\nthird\n", encoding="utf-8")
    err = embed_error(checkpoint, src, capsys)
    assert f"{src}:2" in err and "empty" in err, err
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": ""}\n', encoding="utf-8")
    assert f"{jsonl}:2" in embed_error(checkpoint, jsonl, capsys)


def test_embed_names_file_and_line_of_invalid_utf8(checkpoint, tmp_path, capsys):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello\nworld\nab\xffcd\n")
    err = embed_error(checkpoint, src, capsys)
    assert f"{src}:3" in err and "UTF-8" in err and "0xff" in err, err


def test_embed_names_file_and_line_of_bad_jsonl(checkpoint, tmp_path, capsys):
    for n, bad in [(2, '{"text": "a\\ud800"}'), (3, '{"text": '), (2, "[" + "9" * 5000 + "]")]:
        jsonl = tmp_path / f"in{n}.jsonl"
        jsonl.write_text("\n".join(['{"text": "ok"}', *(['"ok"'] if n == 3 else []), bad]) + "\n", encoding="utf-8")
        err = embed_error(checkpoint, jsonl, capsys)
        assert f"{jsonl}:{n}" in err, (bad[:20], err)


def test_embed_one_text_per_newline_only(checkpoint, encoder, tmp_path):
    # str.splitlines would also split at U+2028, U+0085, \x0c...: line numbers would then be wrong
    texts = ["a\u2028b", "c\x0cd\u0085e", "crlf"]
    src = tmp_path / "t.txt"
    src.write_bytes(("\n".join(texts[:2]) + "\ncrlf\r\n").encode("utf-8"))
    assert cli_main(["embed", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "v.npy")]) == 0
    assert_allclose(np.load(tmp_path / "v.npy"), encoder.encode(texts), 1e-6, "one text per \\n")


def test_fill_mask_cli_names_an_argument_that_is_not_utf8(checkpoint, capsys):
    # a non-UTF-8 byte in argv reaches Python as a lone surrogate (surrogateescape)
    assert cli_main(["fill-mask", str(checkpoint), "Paris <mask> " + b"\xff".decode("utf-8", "surrogateescape")]) == 1
    err = capsys.readouterr().err
    assert "text argument" in err and "U+DCFF" in err, err


def test_effective_limits_are_known_to_the_app(encoder):
    from mmbert.serve.server import Limits, create_app

    assert create_app(encoder).state.limits.max_tokens == 64  # the checkpoint's model_max_length
    capped = create_app(encoder, limits=Limits(max_tokens=10_000)).state.limits.max_tokens
    assert capped == encoder.config.max_position_embeddings == 1024


# -- fuzzing: no request gives a 5xx, the tokenizer wrapper never fails but with InvalidTextError -----------
# Any code point, with lone surrogates, NUL and odd separators common enough to show up in 60 examples
CHARS = st.characters(codec=None, categories=None) | st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff",
                                                                     "\x00", "\u2028", "\ufeff", "\U0001f600"])
ANY_TEXT = st.lists(CHARS, max_size=40).map("".join)  # st.text(CHARS) would drop the surrogates
SCALARS = st.none() | st.booleans() | st.integers() | st.integers(-(10**4000), 10**4000) \
    | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=20)
FIELDS = st.sampled_from(["input", "model", "encoding_format", "dimensions", "text", "top_k", "user"])
BODIES = st.dictionaries(FIELDS | ANY_TEXT, JSON_VALUES, max_size=5) | JSON_VALUES
INPUTS = st.fixed_dictionaries({"input": ANY_TEXT | st.lists(ANY_TEXT, max_size=4)
                                | st.lists(st.integers(-5, 600), max_size=8)})
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dumps(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # NaN, Infinity: json.loads takes them (ints past 4,300
    # digits cannot be dumped; test_integer_of_5000_digits_is_a_400 sends them raw)


@FUZZ
@given(body=BODIES, path=st.sampled_from(["/v1/embeddings", "/fill-mask"]))
def test_fuzz_json_bodies_never_get_a_5xx(client, body, path):
    r = client.post(path, content=dumps(body), headers=JSON)
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert_openai_error(r, r.status_code)


@FUZZ
@given(body=INPUTS | st.fixed_dictionaries({"text": ANY_TEXT.map(lambda t: t + " <mask>")}))
def test_fuzz_unicode_inputs_never_get_a_5xx(client, body):
    path = "/fill-mask" if "text" in body else "/v1/embeddings"
    r = client.post(path, content=dumps(body), headers=JSON)
    assert r.status_code in (200, 400), (body, r.text)


@FUZZ
@given(raw=st.binary(max_size=300) | ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_raw_bytes_never_get_a_5xx(client, raw):
    for path in ("/v1/embeddings", "/fill-mask"):
        r = client.post(path, content=raw, headers=JSON)
        assert 400 <= r.status_code < 500 or r.status_code == 200, (raw, r.text)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_fuzz_tokenizer_and_encode_fail_only_with_invalid_text_error(encoder, texts):
    invalid = [i for i, t in enumerate(texts) if any(0xD800 <= ord(c) < 0xE000 for c in t)]
    try:
        ids = encoder.tokenizer.encode_batch(texts)
    except InvalidTextError as e:
        assert invalid and e.index == invalid[0], (texts, e)
        with pytest.raises(InvalidTextError):
            encoder.encode(texts)
        return
    assert not invalid
    assert len(ids) == len(texts) and all(isinstance(t, int) for seq in ids for t in seq)
    assert encoder.encode(texts).shape == (len(texts), encoder.hidden_size)
