"""Reconcile passes as a work queue: one pass per InferenceService at a time, failures retried.

Events and timers only add a key; worker threads run the passes. A key added while its pass runs
is run once more afterwards; a key added while already waiting is one pending pass. A failed pass
comes back after a jittered, capped exponential backoff, until one succeeds; the caller is told
how many times in a row a key has failed, so that it can report it (a condition and an event).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[str, str]  # (namespace, name)
log = logging.getLogger(__name__)

BASE_SECONDS = 0.5
CAP_SECONDS = 5.0  # short: a transient error is repaired within seconds of its end


def backoff(failures: int, draw: float, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> float:
    """Seconds before retry number `failures` (1, 2, …): base·2^(failures-1), capped, then scaled
    by `draw` in [0, 1) into [half, all] of it, so that many keys failing together spread out."""
    full: float = min(cap, base * 2.0 ** min(failures - 1, 30))
    return full * (0.5 + draw / 2)


@dataclass
class WorkQueue:
    """`work(key, trigger)` runs a pass and raises on failure; `failed(key, trigger, n, error)` is
    called after the n-th failure in a row (before the retry is scheduled)."""

    work: Callable[[Key, str], None]
    failed: Callable[[Key, str, int, Exception], None]
    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS
    rng: random.Random = field(default_factory=random.Random)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _ready: deque[Key] = field(default_factory=deque)
    _triggers: dict[Key, str] = field(default_factory=dict)  # waiting keys, with what asked
    _running: set[Key] = field(default_factory=set)
    _again: dict[Key, str] = field(default_factory=dict)  # added while running
    _later: list[tuple[float, Key, str]] = field(default_factory=list)  # (due, key, trigger) heap
    _due: dict[Key, float] = field(default_factory=dict)  # the one retry per key that counts
    _failures: dict[Key, int] = field(default_factory=dict)
    _stopped: bool = False

    def add(self, key: Key, trigger: str) -> None:
        with self._cond:
            if key in self._running:
                self._again.setdefault(key, trigger)
            elif key not in self._triggers:
                self._triggers[key] = trigger
                self._ready.append(key)
                self._cond.notify()

    def failures(self, key: Key) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def pending(self) -> int:
        """Keys waiting, running or due for a retry (for tests and metrics)."""
        with self._cond:
            return len(self._triggers) + len(self._running) + len(self._due)

    def start(self, workers: int) -> None:
        for i in range(workers):
            threading.Thread(target=self._worker, name=f"kinfer-pass-{i}", daemon=True).start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _next(self) -> tuple[Key, str] | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    due, key, trigger = heapq.heappop(self._later)
                    if self._due.get(key) != due:
                        continue  # superseded by a later failure, or the key succeeded since
                    del self._due[key]
                    if key not in self._triggers and key not in self._running:
                        self._triggers[key] = trigger
                        self._ready.append(key)
                    elif key in self._running:
                        self._again.setdefault(key, trigger)
                if self._ready:
                    key = self._ready.popleft()
                    self._running.add(key)
                    return key, self._triggers.pop(key)
                timeout = self._later[0][0] - now if self._later else None
                self._cond.wait(timeout)
            return None

    def _worker(self) -> None:
        while (item := self._next()) is not None:
            key, trigger = item
            error: Exception | None = None
            try:
                self.work(key, trigger)
            except Exception as exc:  # any failure is retried; the pass logs what it was
                error = exc
            if error is not None:
                with self._cond:
                    count = self._failures[key] = self._failures.get(key, 0) + 1
                try:
                    self.failed(key, trigger, count, error)
                except Exception:
                    log.exception("reporting the failure of %s/%s failed", *key)
                delay = backoff(count, self.rng.random(), self.base, self.cap)
            with self._cond:
                self._running.discard(key)
                if error is None:
                    self._failures.pop(key, None)
                    self._due.pop(key, None)
                else:
                    due = time.monotonic() + delay
                    self._due[key] = due
                    heapq.heappush(self._later, (due, key, trigger))
                again = self._again.pop(key, None)
                if again is not None and key not in self._triggers:
                    self._triggers[key] = again
                    self._ready.append(key)
                self._cond.notify_all()
