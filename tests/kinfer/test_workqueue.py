"""The pass queue: one pass per key at a time, bursts collapse, failures come back after a
jittered, capped backoff and are reported with their count."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable

import pytest

from kinfer.workqueue import Key, WorkQueue, backoff


def test_backoff_doubles_to_the_cap_and_jitters_within_half() -> None:
    assert [backoff(n, 0.999999, base=0.5, cap=5) for n in (1, 2, 3, 4, 5, 50)] == pytest.approx(
        [0.5, 1, 2, 4, 5, 5], rel=1e-5
    )
    assert backoff(3, 0.0, base=0.5, cap=5) == 1.0  # half of 2 s
    draws = random.Random(1)
    spread = {round(backoff(4, draws.random()), 3) for _ in range(50)}
    assert len(spread) > 40 and all(2 <= s < 4 for s in spread)


def _until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_failing_pass_is_retried_until_it_succeeds_and_each_failure_is_counted() -> None:
    runs: list[float] = []
    reported: list[int] = []

    def work(key: Key, trigger: str) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise RuntimeError("500 Internal Server Error")

    queue = WorkQueue(work, lambda key, trigger, n, error: reported.append(n), base=0.02, cap=0.05)
    queue.start(2)
    queue.add(("ns", "a"), "test")
    _until(lambda: len(runs) == 4 and queue.pending() == 0)
    queue.stop()
    assert reported == [1, 2, 3]
    assert queue.failures(("ns", "a")) == 0  # reset by the success
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.025  # base·2^n·[½, 1], capped
    time.sleep(0.1)
    assert len(runs) == 4  # no retry after the success


def test_one_pass_per_key_at_a_time_and_a_burst_while_running_is_one_more_pass() -> None:
    release = threading.Event()
    running: list[Key] = []
    concurrent = 0
    most = 0
    guard = threading.Lock()

    def work(key: Key, trigger: str) -> None:
        nonlocal concurrent, most
        with guard:
            concurrent += 1
            most = max(most, concurrent)
            running.append(key)
        release.wait(5)
        with guard:
            concurrent -= 1

    queue = WorkQueue(work, lambda *_: None)
    queue.start(4)
    queue.add(("ns", "a"), "first")
    _until(lambda: len(running) == 1)
    for _ in range(10):  # a burst of events while the pass runs
        queue.add(("ns", "a"), "event")
    queue.add(("ns", "b"), "other")
    _until(lambda: len(running) == 2)
    release.set()
    _until(lambda: queue.pending() == 0)
    queue.stop()
    assert sorted(running) == [("ns", "a"), ("ns", "a"), ("ns", "b")]
    assert most == 2  # a and b in parallel, never a twice
