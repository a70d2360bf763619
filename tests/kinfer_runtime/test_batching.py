"""The batcher in-process: the pure flush rule, then real asyncio with a fake forward."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinfer_runtime.batching import Batcher, flush_delay
from kinfer_runtime.protocol.errors import DeadlineExceeded, ModelFailed, Overloaded


@pytest.mark.parametrize(
    ("queued", "oldest", "now", "want"),
    [
        (0, 0.0, 5.0, None),  # nothing queued: sleep until a request arrives
        (8, 1.0, 1.0, 0.0),  # a full batch flushes at once
        (9, 1.0, 1.0, 0.0),  # more than full too
        (
            3,
            1.0,
            1.0,
            pytest.approx(0.005),
        ),  # partial batch: wait out the delay from the oldest arrival
        (3, 1.0, 1.004, pytest.approx(0.001)),
        (3, 1.0, 1.0051, 0.0),  # the oldest has waited max_delay: flush
        (3, 1.0, 2.0, 0.0),  # long overdue never gives a negative wait
    ],
)
def test_flush_rule(queued: int, oldest: float, now: float, want: float | None) -> None:
    assert flush_delay(queued, oldest, now, max_batch_size=8, max_delay_s=0.005) == want


class Recorder:
    """A forward that records batch sizes and returns y = x * 10 + row marker."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.fail = fail
        self.thread_ids: set[int] = set()

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.thread_ids.add(threading.get_ident())
        x = inputs["x"]
        self.batches.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return {"y": x * 10}


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=30), st.integers(1, 12))
def test_each_caller_gets_its_own_rows(row_counts: list[int], max_batch: int) -> None:
    fwd = Recorder(delay=0.001)

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=max_batch, max_delay_s=0.002, max_queue_rows=10_000)
        b.start()
        xs = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate(row_counts)]
        outs = await asyncio.gather(*(b.submit({"x": x}, len(x)) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], x * 10)
        await b.stop()

    _run(main())
    # every batch respects the limit unless one request alone is larger
    assert all(n <= max(max_batch, *row_counts) for n in fwd.batches)
    assert sum(fwd.batches) == sum(row_counts)


def test_concurrent_callers_form_batches_off_the_loop() -> None:
    fwd = Recorder(delay=0.01)

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=16, max_delay_s=0.005, max_queue_rows=100)
        b.start()
        await asyncio.gather(*(b.submit({"x": np.ones((1, 2))}, 1) for _ in range(40)))
        await b.stop()

    _run(main())
    assert max(fwd.batches) > 1
    assert threading.get_ident() not in fwd.thread_ids  # the forward never ran on the loop


def test_one_failure_answers_every_caller_and_serving_goes_on() -> None:
    fwd = Recorder(fail=True)

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=8, max_delay_s=0.01, max_queue_rows=100)
        b.start()
        results = await asyncio.gather(
            *(b.submit({"x": np.ones((1, 2))}, 1) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, ModelFailed) and "boom" in str(r) for r in results)
        fwd.fail = False
        out = await b.submit({"x": np.ones((1, 2))}, 1)
        assert out["y"].shape == (1, 2)
        await b.stop()

    _run(main())
    assert fwd.batches[0] == 5


def test_full_queue_refuses_at_once() -> None:
    fwd = Recorder(delay=0.05)

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=2, max_delay_s=0.0, max_queue_rows=4)
        b.start()
        tasks = [asyncio.create_task(b.submit({"x": np.ones((1, 2))}, 1)) for _ in range(12)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert refused and "queue full" in str(refused[0])
        assert sum(isinstance(r, dict) for r in results) >= 4
        assert b.depth == 0
        await b.stop()

    _run(main())


def test_deadline_in_queue_never_runs_the_model() -> None:
    fwd = Recorder(delay=0.1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        b = Batcher(fwd, max_batch_size=1, max_delay_s=0.0, max_queue_rows=100)
        b.start()
        first = asyncio.create_task(b.submit({"x": np.zeros((1, 2))}, 1))
        await asyncio.sleep(0.01)  # the first request now occupies the model for 100 ms
        with pytest.raises(DeadlineExceeded, match="while queued"):
            await b.submit({"x": np.ones((1, 2))}, 1, deadline=loop.time() + 0.02)
        await first
        await asyncio.sleep(0.05)
        await b.stop()

    _run(main())
    assert fwd.batches == [1]  # the expired request never reached the forward


def test_cancelled_caller_frees_its_rows() -> None:
    fwd = Recorder(delay=0.05)

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=1, max_delay_s=0.0, max_queue_rows=2)
        b.start()
        busy = asyncio.create_task(b.submit({"x": np.zeros((1, 2))}, 1))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(b.submit({"x": np.zeros((1, 2))}, 1)) for _ in range(2)]
        await asyncio.sleep(0.001)
        with pytest.raises(Overloaded):
            await b.submit({"x": np.zeros((1, 2))}, 1)
        for t in waiting:
            t.cancel()
        await asyncio.sleep(0.001)
        out = await b.submit({"x": np.zeros((1, 2))}, 1)  # room again
        assert out["y"].shape == (1, 2)
        await busy
        await b.stop()

    _run(main())


def test_unbatched_models_run_one_request_at_a_time() -> None:
    fwd = Recorder()

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=8, max_delay_s=0.01, max_queue_rows=100,
                    concatenate=False)  # fmt: skip
        b.start()
        await asyncio.gather(*(b.submit({"x": np.ones((3, 2))}, 1) for _ in range(5)))
        await b.stop()

    _run(main())
    assert fwd.batches == [3] * 5


def test_requests_of_other_trailing_shapes_never_share_a_batch() -> None:
    """A signature dimension of -1 past the batch dimension: each caller still gets an answer,
    and a batch only ever holds one trailing shape (concatenating them would fail everyone)."""
    shapes: list[set[tuple[int, ...]]] = []

    def forward(inputs: dict[str, Any]) -> dict[str, Any]:
        shapes.append({inputs["x"].shape[1:]})
        time.sleep(0.002)
        return {"y": inputs["x"].sum(axis=1)}

    async def main() -> None:
        b = Batcher(forward, max_batch_size=32, max_delay_s=0.005, max_queue_rows=1000)
        b.start()
        xs = [np.full((1, 2 + i % 3), i, dtype=np.float32) for i in range(30)]
        outs = await asyncio.gather(*(b.submit({"x": x}, 1) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], x.sum(axis=1))
        await b.stop()

    _run(main())
    assert len(shapes) >= 3  # at least one batch per width
    assert all(len(s) == 1 for s in shapes)


def test_a_partial_batch_takes_requests_that_arrive_in_the_next_loop_turns() -> None:
    """No delay configured: requests already on their way (a few event-loop turns behind the
    first, as a request read from a socket is) still join its batch; no timer is waited on."""
    fwd = Recorder()

    async def main() -> None:
        b = Batcher(fwd, max_batch_size=8, max_delay_s=0.0, max_queue_rows=100)
        b.start()
        await asyncio.sleep(0.01)  # the batcher is idle, waiting for a request

        async def later(turns: int) -> Any:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await b.submit({"x": np.ones((1, 2))}, 1)

        await asyncio.gather(*(later(turns) for turns in (0, 1, 2, 3)))
        await b.stop()

    _run(main())
    assert fwd.batches == [4]
