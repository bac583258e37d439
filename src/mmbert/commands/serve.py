"""``mmbert serve``: the HTTP server (OpenAI-compatible /v1/embeddings, /fill-mask, /health).

    mmbert serve CKPT --port 8080
    curl -s 127.0.0.1:8080/v1/embeddings -d '{"input": ["hello", "world"]}'
"""

from __future__ import annotations

import argparse
import logging


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
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from mmbert.serve.encoder import Encoder
    from mmbert.serve.server import Limits, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    encoder = Encoder(args.checkpoint, device=args.device, precision=args.precision)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs, max_tokens=args.max_tokens)
    serve(encoder, args.host, args.port, limits=limits, max_batch_tokens=args.max_batch_tokens,
          max_wait_ms=args.max_wait_ms, log_level=args.log_level)
    return 0
