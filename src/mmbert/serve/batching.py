"""The server's request micro-batcher (the packing rule itself is ``model.batching.pack_by_tokens``).

The micro-batcher is the dynamic batching of inference servers (Triton, TEI): requests that arrive within
``max_wait_ms`` of the first one, up to ``max_batch_tokens``, share one forward pass in a single worker
thread, so the event loop stays free and concurrent clients do not run competing forward passes.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _Job:
    sequences: list[list[int]]
    tokens: int
    future: asyncio.Future


@dataclass
class BatcherStats:
    requests: int = 0
    batches: int = 0
    sequences: int = 0
    tokens: int = 0
    max_requests_per_batch: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests, "batches": self.batches, "sequences": self.sequences, "tokens": self.tokens,
            "max_requests_per_batch": self.max_requests_per_batch,
            "mean_requests_per_batch": round(self.requests / self.batches, 3) if self.batches else 0.0,
            "busy_s": round(self.busy_s, 3),
        }


@dataclass
class MicroBatcher:
    """Gathers concurrent ``submit`` calls into one call of ``run(sequences) -> (n, H) array``.

    ``start()`` and ``stop()`` must be called from the event loop that serves the requests (the app's
    lifespan). Model calls happen one at a time in ``executor`` (one thread), which is also where other
    model work (fill-mask) should go, so the model never runs twice at once.
    """

    run: Callable[[list[list[int]]], np.ndarray]
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 5.0
    stats: BatcherStats = field(default_factory=BatcherStats)
    _queue: asyncio.Queue | None = None
    _task: asyncio.Task | None = None
    executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mmbert-model")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="mmbert-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    async def submit(self, sequences: list[list[int]]) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(sequences, sum(map(len, sequences)), future))
        return await future

    async def call(self, fn, *args):
        """Run other model work (fill-mask) on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            jobs, tokens = [first], first.tokens
            deadline = loop.time() + self.max_wait_ms / 1000
            while tokens < self.max_batch_tokens:
                timeout = deadline - loop.time()
                try:
                    job = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if tokens + job.tokens > self.max_batch_tokens:
                    carry = job  # starts the next batch
                    break
                jobs.append(job)
                tokens += job.tokens
            jobs = [j for j in jobs if not j.future.done()]  # clients that went away
            if not jobs:
                continue
            sequences = [s for j in jobs for s in j.sequences]
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self.executor, self.run, sequences)
            except Exception as e:  # noqa: BLE001 - hand the error to every waiting request, keep serving
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            finally:
                self.stats.busy_s += time.perf_counter() - started
            self.stats.batches += 1
            self.stats.requests += len(jobs)
            self.stats.sequences += len(sequences)
            self.stats.tokens += tokens
            self.stats.max_requests_per_batch = max(self.stats.max_requests_per_batch, len(jobs))
            start = 0
            for j in jobs:
                end = start + len(j.sequences)
                if not j.future.done():
                    j.future.set_result(out[start:end])
                start = end
