"""HTTP server: OpenAI-compatible ``POST /v1/embeddings``, ``POST /fill-mask``, ``POST /v1/classify`` (models
fine-tuned for classification) and ``GET /health``.

``/v1/classify``: ``{"input": str | [str, ...], "model"?: str}`` ->
``{"object": "list", "data": [{"index", "label", "score", "scores": {label: probability}}], "model", "usage"}``
(regression models: ``{"index", "score"}``); the same input checks and limits as embeddings (texts only). A
model that is not a classifier answers 400 ``classify_unavailable``.

Built on FastAPI + uvicorn. Requests are parsed and checked by hand rather than by pydantic models, so every
refusal carries OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status,
and nothing a client sends can crash the process:

- the body is read in chunks up to ``max_body_bytes`` (413 beyond, whatever Content-Length claims); an
  over-limit body is still read and discarded up to ``max_drain_bytes``, so that a client which sends
  ``Connection: close`` (urllib always does) reads the 413 instead of a connection reset; the whole body must
  arrive within ``body_timeout_s`` (408 otherwise), so a client that trickles its body cannot hold a request;
- it must be UTF-8 JSON holding an object; ``input`` is a string, a list of strings, a list of token ids or
  a list of lists of token ids (ids are content ids, as ``encode(text, add_special_tokens=False)`` gives;
  the server wraps them in the special tokens, so ids and their text embed alike);
- at most ``max_inputs`` inputs per request and ``max_tokens`` tokens per input (special tokens included):
  the server refuses over-long inputs (400, ``context_length_exceeded``) instead of truncating them silently,
  as OpenAI does; the CLI and ``Encoder`` truncate.

Embedding requests from concurrent clients are micro-batched (``batching.MicroBatcher``): one unpadded
forward per few milliseconds, on one model thread. Floats are sent as JSON numbers (float32 values, exact)
or, with ``encoding_format: "base64"``, as base64 of little-endian float32 bytes, which is what the
official OpenAI client asks for by default. ``dimensions`` truncates and re-normalises (Matryoshka style): an
embedding model that declares its trained sizes (``mmbert_embedding.json``, written by ``mmbert finetune --task
embedding``) accepts only those (its Matryoshka dims and the full size), since a truncation the loss never saw
is a worse embedding; a checkpoint that declares none accepts any size up to the hidden size.

Connections (``Timeouts``, applied by ``uvicorn_config``): a request's headers must be complete within
``header_s`` of the connection opening or of the previous response (uvicorn has no such timeout; its
keep-alive timer stops at the first byte, so a half-open connection or one that trickles its headers
stayed open forever); idle keep-alive connections close after ``keep_alive_s``; on SIGTERM the server stops
accepting, lets running requests finish for up to ``graceful_shutdown_s`` and then cancels them; past
``limit_concurrency`` open connections a request gets a 503 (uvicorn's own, plain text) rather than the
process running out of file descriptors.

The server has no authentication: it binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmbert.serve.batching import MicroBatcher
from mmbert.serve.encoder import Encoder
from mmbert.tokenizer import InvalidTextError

log = logging.getLogger("mmbert.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024  # 4 MiB: 2,048 inputs of ~2 kB each
    max_inputs: int = 2048  # OpenAI's limit per embeddings request
    max_tokens: int | None = None  # per input, special tokens included; None = the encoder's max_length
    max_top_k: int = 100
    max_drain_bytes: int = 64 * 1024 * 1024  # an over-limit body is read and discarded up to this, then cut off
    body_timeout_s: float = 30.0  # the whole body, not per chunk: a 4 MiB body needs >= 140 kB/s


@dataclass
class Timeouts:
    """Connection-level limits, enforced by uvicorn and ``HeaderTimeoutH11Protocol``."""

    header_s: float = 10.0  # from connection open (or the last response) to a request's complete headers
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn's default)
    graceful_shutdown_s: float = 10.0  # on SIGTERM, running requests get this long, then are cancelled
    limit_concurrency: int | None = 1000  # open connections; beyond, 503 (under the usual 1,024-file limit)


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, type=self.type)


def error_response(status: int, message: str, *, param=None, code=None, type="invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


async def read_body(request: Request, max_bytes: int, max_drain_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        # isdigit() alone takes '²'; 19 digits bound int() well below Python's 4,300-digit limit
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:
            raise ApiError(400, "invalid Content-Length header", code="invalid_request")
        declared = int(declared)
    too_large = ApiError(413, f"request body is {'over ' if declared is None else f'{declared} bytes; '}"
                         f"the limit is {max_bytes} bytes", code="body_too_large")
    if declared is not None and declared > max_bytes and (
            declared > max_drain_bytes or request.headers.get("expect", "").lower() == "100-continue"):
        raise too_large  # not worth reading, or not sent yet (the client waits for "100 Continue")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= max_bytes:
                chunks.append(chunk)
            elif size > max_drain_bytes:
                break  # answer now; uvicorn discards what follows, the header timeout ends the connection
    except ClientDisconnect:  # nobody reads this answer; it keeps the disconnect out of the error log
        raise ApiError(400, "the client disconnected before sending the whole body",
                       code="client_disconnected") from None
    if size > max_bytes:
        raise too_large
    return b"".join(chunks)


async def read_json_object(request: Request, limits: Limits) -> dict:
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            body = await read_body(request, limits.max_body_bytes, limits.max_drain_bytes)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {limits.body_timeout_s:g} s",
                       code="request_timeout") from None
    if not body.strip():
        raise ApiError(400, "empty request body; send a JSON object", code="invalid_json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except ValueError as e:  # an integer past Python's int_max_str_digits: its message ends in advice for us
        raise ApiError(400, f"request body is not valid JSON for this server: {str(e).split(':')[0]}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_type")
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_input(value) -> tuple[str, list]:
    """("texts", [str]) or ("ids", [[int]]) from OpenAI's four input forms; ApiError otherwise."""
    def bad(message: str, code: str = "invalid_type") -> ApiError:
        return ApiError(400, message, param="input", code=code)

    if value is None:
        raise bad("missing required parameter 'input'", "missing_input")
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise bad(f"'input' must be a string, a list of strings or of token ids; got {type(value).__name__}")
    if not value:
        raise bad("'input' is empty", "empty_input")
    if all(isinstance(x, str) for x in value):
        empty = next((i for i, x in enumerate(value) if not x), None)
        if empty is not None:
            raise bad(f"input[{empty}] is an empty string", "empty_input")
        return "texts", value
    if all(_is_int(x) for x in value):
        return "ids", [value]
    if all(isinstance(x, list) for x in value):
        for i, seq in enumerate(value):
            if not seq:
                raise bad(f"input[{i}] is an empty list of token ids", "empty_input")
            if not all(_is_int(t) for t in seq):
                raise bad(f"input[{i}] must be a list of integer token ids")
        return "ids", value
    raise bad("'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids "
              "(items of one kind)")


async def tokenize(encoder: Encoder, texts: list[str], param: str) -> list[list[int]]:
    """Token ids (with special tokens) off the event loop; a text that is not valid Unicode is a 400."""
    try:
        return await asyncio.to_thread(encoder.tokenize, texts)
    except InvalidTextError as e:
        where = f"input[{e.index}]" if param == "input" else f"'{param}'"
        raise ApiError(400, f"{where} {e.reason}", param=param, code="invalid_text") from None


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list:
    if encoding_format == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()


def create_app(
    encoder: Encoder, *, limits: Limits | None = None, max_batch_tokens: int = 16_384, max_wait_ms: float = 5.0,
    model_name: str | None = None,
) -> FastAPI:
    limits = limits or Limits()
    max_tokens = min(limits.max_tokens or encoder.max_length, encoder.config.max_position_embeddings)
    limits = replace(limits, max_tokens=max_tokens)  # the values in force, for /health and the start-up log
    model_name = model_name or encoder.name
    batcher = MicroBatcher(lambda seqs: encoder.encode_ids(seqs, progress=False), max_batch_tokens, max_wait_ms)
    try:
        encoder.masked_lm()
        fill_mask_error = None
    except ValueError as e:
        fill_mask_error = str(e)
    encoder.encode_ids(encoder.tokenize(["warm-up"]), progress=False)  # warm-up: the first forward pays one-off set-up costs
    if encoder.is_classifier:
        encoder.classify(["warm-up"])  # loads the head now, not on the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="mmbert", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.encoder = encoder
    app.state.limits = limits

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error", type="server_error", code="internal_error")

    @app.get("/health")
    async def health():
        return {
            "status": "ok", "model": model_name, "hidden_size": encoder.hidden_size, "max_tokens": max_tokens,
            "dimensions": list(encoder.trained_dimensions) if encoder.trained_dimensions else None,
            "max_inputs": limits.max_inputs, "fill_mask": fill_mask_error is None, "classify": encoder.is_classifier,
            "batching": batcher.stats.as_dict(),
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        data = await read_json_object(request, limits)
        kind, items = parse_input(data.get("input"))
        if len(items) > limits.max_inputs:
            raise ApiError(400, f"'input' has {len(items)} items; the limit is {limits.max_inputs}",
                           param="input", code="too_many_inputs")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
        fmt = data.get("encoding_format")
        fmt = "float" if fmt is None else fmt
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                           param="encoding_format", code="invalid_value")
        dims = data.get("dimensions")
        if dims is not None and (not _is_int(dims) or not 1 <= dims <= encoder.hidden_size):
            raise ApiError(400, f"'dimensions' must be an integer in [1, {encoder.hidden_size}], got {dims!r}",
                           param="dimensions", code="invalid_value")
        trained = encoder.trained_dimensions
        if dims is not None and trained is not None and dims not in trained:
            raise ApiError(400, f"'dimensions' {dims} is not a size this model was trained for; use one of "
                           f"{list(trained)}", param="dimensions", code="invalid_value")
        if kind == "texts":
            sequences = await tokenize(encoder, items, "input")
        else:
            vocab = encoder.config.vocab_size
            for i, seq in enumerate(items):
                if not all(0 <= t < vocab for t in seq):
                    raise ApiError(400, f"input[{i}] holds a token id outside [0, {vocab})", param="input",
                                   code="invalid_token_id")
            sequences = [encoder.wrap(seq) for seq in items]
        for i, seq in enumerate(sequences):
            if len(seq) > max_tokens:
                raise ApiError(400, f"input[{i}] has {len(seq)} tokens; the limit is {max_tokens} per input",
                               param="input", code="context_length_exceeded")
        try:
            vectors = await batcher.submit(sequences)
        except ValueError as e:
            raise ApiError(400, str(e), param="input", code="invalid_value") from None
        if dims is not None and dims < vectors.shape[1]:
            vectors = vectors[:, :dims]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        n_tokens = sum(map(len, sequences))
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e}
                     for i, e in enumerate(encode_vectors(vectors, fmt))],
            "model": model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })

    @app.post("/v1/classify")
    async def classify(request: Request):
        data = await read_json_object(request, limits)
        kind, items = parse_input(data.get("input"))
        if kind != "texts":
            raise ApiError(400, "'input' must be a string or a list of strings for /v1/classify", param="input",
                           code="invalid_type")
        if len(items) > limits.max_inputs:
            raise ApiError(400, f"'input' has {len(items)} items; the limit is {limits.max_inputs}",
                           param="input", code="too_many_inputs")
        if not encoder.is_classifier:
            raise ApiError(400, f"model {model_name!r} is not a classifier (fine-tune one with mmbert finetune)",
                           code="classify_unavailable")
        sequences = await tokenize(encoder, items, "input")
        for i, seq in enumerate(sequences):
            if len(seq) > max_tokens:
                raise ApiError(400, f"input[{i}] has {len(seq)} tokens; the limit is {max_tokens} per input",
                               param="input", code="context_length_exceeded")
        results = await batcher.call(encoder.classify_ids, sequences)
        n_tokens = sum(map(len, sequences))
        return {"object": "list", "data": [{"index": i, **r} for i, r in enumerate(results)], "model": model_name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @app.post("/fill-mask")
    async def fill_mask(request: Request):
        data = await read_json_object(request, limits)
        text = data.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "'text' must be a non-empty string holding "
                           f"{encoder.tokenizer.mask_token}", param="text", code="invalid_type")
        top_k = data.get("top_k", 5)
        if not _is_int(top_k) or not 1 <= top_k <= limits.max_top_k:
            raise ApiError(400, f"'top_k' must be an integer in [1, {limits.max_top_k}]", param="top_k",
                           code="invalid_value")
        if fill_mask_error is not None:
            raise ApiError(400, fill_mask_error, code="fill_mask_unavailable")
        n = len((await tokenize(encoder, [text], "text"))[0])
        if n > max_tokens:
            raise ApiError(400, f"'text' has {n} tokens; the limit is {max_tokens}", param="text",
                           code="context_length_exceeded")
        try:
            predictions = await batcher.call(encoder.fill_mask, text, top_k)
        except ValueError as e:
            raise ApiError(400, str(e), param="text", code="invalid_value") from None
        return {"model": model_name, "predictions": predictions}

    return app


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline: a connection must deliver a request's complete headers
    within ``header_s`` of opening, and the next request's within ``header_s`` of the previous response,
    else it is closed. The deadline is not pushed back by bytes that arrive, so trickling does not help."""

    header_s: float = Timeouts.header_s

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request's headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        self._arm_header_timer()  # first: the parent may go on to a pipelined request, which cancels it
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: FastAPI, host: str, port: int, *, timeouts: Timeouts | None = None,
                   log_level: str = "info") -> "uvicorn.Config":
    """The uvicorn configuration ``serve`` runs (h11, so the header timeout applies; tests use it too)."""
    import uvicorn

    timeouts = timeouts or Timeouts()
    protocol = type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_s": timeouts.header_s})
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=protocol, timeout_keep_alive=timeouts.keep_alive_s,
        timeout_graceful_shutdown=timeouts.graceful_shutdown_s, limit_concurrency=timeouts.limit_concurrency)


def serve(encoder: Encoder, host: str = "127.0.0.1", port: int = 8080, *, limits: Limits | None = None,
          timeouts: Timeouts | None = None, max_batch_tokens: int = 16_384, max_wait_ms: float = 5.0,
          log_level: str = "info") -> None:
    import uvicorn

    if host not in LOOPBACK:
        log.warning("binding to %s: the server has no authentication; anyone who can reach it can use it", host)
    app = create_app(encoder, limits=limits, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms)
    timeouts = timeouts or Timeouts()
    log.info("limits: %s", asdict(app.state.limits))
    log.info("timeouts: %s", asdict(timeouts))
    uvicorn.Server(uvicorn_config(app, host, port, timeouts=timeouts, log_level=log_level)).run()

