"""Graceful stop of a training loop: SIGINT/SIGTERM set a flag the loop reads after each optimizer step, so it
writes a checkpoint and returns instead of dying mid-write. Both loops use it (the phased trainer and
``train/finetune``)."""

from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """SIGINT/SIGTERM set ``self.signal``; a second SIGINT interrupts at once. Handlers are installed only in the
    main thread (Python allows no other) and restored on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
