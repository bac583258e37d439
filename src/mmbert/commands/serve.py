"""``mmbert serve``: the HTTP server (OpenAI-compatible /v1/embeddings, /fill-mask, /health).

    mmbert serve CKPT --port 8080
    curl -s 127.0.0.1:8080/v1/embeddings -d '{"input": ["hello", "world"]}'
"""

from __future__ import annotations

import argparse
import logging

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # as mmbert.model.precision.PRECISIONS; not imported: --help stays fast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; there is no auth)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--max-batch-tokens", type=int, default=16_384, help="token budget of one micro-batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a micro-batch waits for others (default 5 ms)")
    parser.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="request body limit (4 MiB)")
    parser.add_argument("--max-inputs", type=int, default=2048, help="inputs per request (default 2048)")
    parser.add_argument("--max-tokens", type=int, help="tokens per input (default: the model's max length)")
    parser.add_argument("--timeout-header", type=float, default=10.0,
                        help="seconds for a request's headers to arrive, from connection open or the previous "
                        "response; then the connection is closed (default 10)")
    parser.add_argument("--timeout-body", type=float, default=30.0,
                        help="seconds for a whole request body to arrive; then 408 (default 30)")
    parser.add_argument("--timeout-keep-alive", type=float, default=5.0,
                        help="an idle keep-alive connection is closed after this many seconds (default 5)")
    parser.add_argument("--timeout-graceful-shutdown", type=float, default=10.0,
                        help="on SIGTERM/Ctrl-C, running requests get this many seconds, then are cancelled "
                        "(default 10)")
    parser.add_argument("--limit-concurrency", type=int, default=1000,
                        help="open connections beyond which a request gets 503 (default 1000; 0 = no limit)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default), bf16, int8 or auto (bf16 where the CPU/GPU does it natively); see "
                        "mmbert embed --help")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from mmbert.serve.encoder import Encoder
    from mmbert.serve.server import Limits, Timeouts, serve

    for flag in ("timeout_header", "timeout_body", "timeout_keep_alive", "timeout_graceful_shutdown"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0 seconds, got {getattr(args, flag)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    encoder = Encoder(args.checkpoint, device=args.device, precision=args.precision)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs, max_tokens=args.max_tokens,
                    body_timeout_s=args.timeout_body)
    timeouts = Timeouts(header_s=args.timeout_header, keep_alive_s=args.timeout_keep_alive,
                        graceful_shutdown_s=args.timeout_graceful_shutdown,
                        limit_concurrency=args.limit_concurrency or None)
    serve(encoder, args.host, args.port, limits=limits, timeouts=timeouts, max_batch_tokens=args.max_batch_tokens,
          max_wait_ms=args.max_wait_ms, log_level=args.log_level)
    return 0
