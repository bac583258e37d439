"""Load test of ``mmbert serve``: the server runs in a subprocess on a loopback port; this process drives it
with N concurrent clients (bounded by a request count and a time limit), then sends a burst of malformed
requests and checks the server still answers. Reports requests/s, p50/p99 latency, errors, and the server's
micro-batching (requests per forward pass).

    python benchmarks/serve_load.py                          # a random "tiny" model, 8 clients, 400 requests
    python benchmarks/serve_load.py --checkpoint CKPT --concurrency 16 --requests 2000 --duration 60
    python benchmarks/serve_load.py --soak-minutes 2          # soak: mixed valid, malformed and slow clients

Soak mode (``--soak-minutes N``) runs N minutes of ``--concurrency`` valid clients, one client cycling
through malformed requests (bad JSON, lone surrogates, 5,000-digit integers, oversized bodies, sent with
httpx and, for the oversized ones, with urllib's ``Connection: close``), and ``--slow-clients`` raw sockets
that open and never send, trickle headers, or trickle a body. It reports answers by status code per kind
of traffic, p50/p99 latency of the valid requests, how the server ended the slow connections, and the
server's RSS (sampled from /proc every 5 s; growth = last sample - first sample after warm-up).

Without --checkpoint it builds a random checkpoint of --preset with a small byte-level BPE tokenizer in a
temporary directory: speed numbers of an untrained model, which are the same as a trained one's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib.error
import urllib.request

import httpx
import numpy as np

WORDS = ("the of and to in is was for on that with as by at from language model text vector sentence "
         "Paris Berlin Fuchs renard zorro люди свободными 人人 自由 capital embeddings").split()


def build_checkpoint(directory: Path, preset: str) -> Path:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as Backend

    from mmbert import ModelConfig, MmBertForMaskedLM
    from mmbert.tokenizer import Tokenizer

    config = ModelConfig.from_preset(preset)
    MmBertForMaskedLM(config).init_weights(seed=0).save_pretrained(directory)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=12)) for _ in range(500)]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=min(config.vocab_size, 1024), special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    Tokenizer(backend, model_max_length=512).save(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout:.0f} s")


def random_request(rng: random.Random, max_texts: int, max_words: int) -> dict:
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, max_words))) for _ in range(rng.randint(1, max_texts))]
    return {"input": texts, "model": "mmbert", "encoding_format": rng.choice(["float", "base64"])}


async def drive(base: str, args) -> dict:
    rng = random.Random(args.seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    stop_at = time.monotonic() + args.duration
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued, tokens
        while issued < args.requests and time.monotonic() < stop_at:
            issued += 1
            body = random_request(rng, args.texts_per_request, args.max_words)
            start = time.perf_counter()
            try:
                r = await client.post("/v1/embeddings", json=body)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    tokens += r.json()["usage"]["total_tokens"]
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "requests": issued, "ok": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1), "tokens_per_s": round(tokens / elapsed),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


MALFORMED = [b'{"input": ', b'{"input": "\xff\xfe"}', b"", b"[1, 2]", b'{"input": []}', b'{"input": [1, "a"]}',
             b'{"input": {"a": 1}}', b'{"input": "a", "dimensions": 100000}', b"[" * 50_000, b"x" * 8_000_000]


def malformed_burst(base: str) -> dict:
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for body in MALFORMED:
            try:
                code = str(client.post("/v1/embeddings", content=body).status_code)
            except httpx.HTTPError as e:
                code = type(e).__name__
            statuses[code] = statuses.get(code, 0) + 1
        healthy = client.get("/health").json()
    return {"statuses": statuses, "all_4xx": all(k.startswith("4") for k in statuses), "batching": healthy["batching"]}


SOAK_MALFORMED = [b'{"input": ', b'{"input": "\xff\xfe"}', b"", b"[1, 2]", b'{"input": []}', b'{"input": [""]}',
                  b'{"input": [1, "a"]}', b'{"input": "a\\ud800b"}', b'{"input": ["ok", "\\udfff"]}',
                  b'{"input": [' + b"9" * 5000 + b"]}", b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}",
                  b'{"input": "a", "dimensions": 100000}', b'{"input": "a", "encoding_format": 3}', b"[" * 50_000]
SOAK_FILL_MASK = [b'{"text": "Paris <mask> \\ud800"}', b'{"text": "no mask"}', b'{"text": "a <mask>", "top_k": 0}',
                  b'{"text": 5}', b'{"text": "a <mask>", "top_k": ' + b"9" * 5000 + b"}"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def count(table: dict, key) -> None:
    table[str(key)] = table.get(str(key), 0) + 1


async def slow_client(port: int, mode: str, stop_at: float, outcomes: dict, close_times: list) -> None:
    """Connect, misbehave (``silent``: send nothing; ``headers``: a header byte per 0.5 s; ``body``: complete
    headers, then a body byte per 0.5 s), record how the connection ended, repeat."""
    while time.monotonic() < stop_at:
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            count(outcomes, f"{mode}: connect {type(e).__name__}")
            await asyncio.sleep(1)
            continue
        if mode == "body":
            writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        if mode == "headers":
            drip = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        else:
            drip = b"a" * 100_000
        received, i = b"", 0
        try:
            while time.monotonic() < stop_at:
                if mode != "silent":
                    writer.write(drip[i:i + 1])
                    i += 1
                    await writer.drain()
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.5)
                except asyncio.TimeoutError:
                    continue
                if not chunk:
                    break
                received += chunk
            else:
                count(outcomes, f"{mode}: still open at the end")
                writer.close()
                return
        except OSError:
            pass
        status = received[9:12].decode("ascii", "replace") if received.startswith(b"HTTP/1.1 ") else "no response"
        count(outcomes, f"{mode}: closed by server ({status})")
        close_times.append(time.monotonic() - start)
        writer.close()


def urllib_oversized(base: str, size: int) -> str:
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}/v1/embeddings", data=b"x" * size), timeout=30)
        return "200"
    except urllib.error.HTTPError as e:
        return str(e.code)
    except OSError as e:
        return type(getattr(e, "reason", e)).__name__


async def soak(base: str, port: int, server_pid: int, args) -> dict:
    rng = random.Random(args.seed)
    stop_at = time.monotonic() + args.soak_minutes * 60
    latencies: list[float] = []
    valid, malformed, slow = {}, {}, {}
    close_times: list[float] = []
    rss: list[tuple[float, float]] = []

    async def valid_worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            body = random_request(rng, args.texts_per_request, args.max_words)
            start = time.perf_counter()
            try:
                r = await client.post("/v1/embeddings", json=body)
                count(valid, r.status_code)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as e:
                count(valid, type(e).__name__)

    async def malformed_worker(client: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            try:
                if n % 25 == 0:  # oversized: 20 MB with Connection: close (urllib), then with httpx keep-alive
                    count(malformed, "urllib 20MB " + await asyncio.to_thread(urllib_oversized, base, 20_000_000))
                    r = await client.post("/v1/embeddings", content=b"x" * 20_000_000)
                    count(malformed, f"httpx 20MB {r.status_code}")
                else:
                    path, bodies = ("/fill-mask", SOAK_FILL_MASK) if n % 3 == 0 else ("/v1/embeddings", SOAK_MALFORMED)
                    r = await client.post(path, content=rng.choice(bodies),
                                          headers={"content-type": "application/json"})
                    count(malformed, r.status_code)
            except httpx.HTTPError as e:
                count(malformed, type(e).__name__)
            await asyncio.sleep(0.05)

    async def sample_rss() -> None:
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            rss.append((time.monotonic() - t0, rss_mb(server_pid)))
            await asyncio.sleep(5)
        rss.append((time.monotonic() - t0, rss_mb(server_pid)))

    modes = ["silent", "headers", "body"]
    limits = httpx.Limits(max_connections=args.concurrency + 1)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        await asyncio.gather(
            *(valid_worker(client) for _ in range(args.concurrency)), malformed_worker(client), sample_rss(),
            *(slow_client(port, modes[i % 3], stop_at, slow, close_times) for i in range(args.slow_clients)))
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    mem = [m for _, m in rss]
    return {
        "minutes": args.soak_minutes, "valid": valid, "malformed": malformed, "slow_clients": slow,
        "slow_close_s": {"median": round(float(np.median(close_times)), 2) if close_times else None,
                         "max": round(max(close_times), 2) if close_times else None},
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "rss_mb": {"first": round(mem[0], 1), "last": round(mem[-1], 1), "max": round(max(mem), 1),
                   "growth": round(mem[-1] - mem[0], 1), "samples": len(mem),
                   "series": [round(m, 1) for m in mem]},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (default: a random --preset model)")
    p.add_argument("--preset", default="tiny", help="model preset for the random checkpoint (default tiny)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=400, help="stop after this many requests")
    p.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds of load")
    p.add_argument("--texts-per-request", type=int, default=4, help="1..N texts per request")
    p.add_argument("--max-words", type=int, default=40, help="1..N words per text")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server micro-batch wait")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soak-minutes", type=float, help="soak mode: this many minutes of mixed traffic (see above)")
    p.add_argument("--slow-clients", type=int, default=6, help="soak: slow connections kept up (default 6)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else build_checkpoint(Path(tmp) / "ckpt", args.preset)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # soak: short connection timeouts, so slow clients are cut and come back many times in a few minutes
        soak_flags = ["--timeout-header", "5", "--timeout-body", "10"] if args.soak_minutes else []
        server = subprocess.Popen(
            [sys.executable, "-m", "mmbert.cli", "serve", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--max-wait-ms", str(args.max_wait_ms), *soak_flags],
        )
        try:
            wait_ready(base, server, timeout=120)
            if args.soak_minutes:
                report = asyncio.run(soak(base, port, server.pid, args))
            else:
                report = asyncio.run(drive(base, args))
                report["malformed"] = malformed_burst(base)
            report["server_alive"] = server.poll() is None
        finally:
            server.terminate()
            started = time.monotonic()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            report["shutdown_s"] = round(time.monotonic() - started, 2)
    report["config"] = {k: getattr(args, k) for k in ("preset", "concurrency", "requests", "duration",
                                                      "texts_per_request", "max_words", "max_wait_ms")}
    if args.soak_minutes:
        report["config"].update(soak_minutes=args.soak_minutes, slow_clients=args.slow_clients)
        print(json.dumps(report, indent=2))
        bad_valid = {k: v for k, v in report["valid"].items() if k != "200"}
        bad_malformed = {k: v for k, v in report["malformed"].items() if not k.split()[-1].startswith("4")}
        return 0 if report["server_alive"] and not bad_valid and not bad_malformed else 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        b = report["malformed"]["batching"]
        print(f"load: {report['ok']}/{report['requests']} ok in {report['seconds']} s, concurrency {args.concurrency}: "
              f"{report['requests_per_s']} req/s, {report['tokens_per_s']} tokens/s, "
              f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, errors {report['errors'] or 0}")
        print(f"micro-batching: {b['requests']} requests in {b['batches']} forward passes "
              f"(mean {b['mean_requests_per_batch']}, max {b['max_requests_per_batch']} per pass)")
        print(f"malformed burst: {report['malformed']['statuses']} -> all 4xx: {report['malformed']['all_4xx']}; "
              f"server alive afterwards: {report['server_alive']}")
    ok = not report["errors"] and report["malformed"]["all_4xx"] and report["server_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
