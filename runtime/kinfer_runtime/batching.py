"""Dynamic batching: a queue, one future per request, one forward per batch.

The flush rule is a pure function of (queued rows, oldest arrival, now) on the event loop's
monotonic clock. The batcher sleeps on a future that a new request or a single timer wakes — it
never polls. The forward runs on a worker thread; whatever it raises answers every caller of
that batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kinfer_runtime.protocol.errors import DeadlineExceeded, InferenceError, ModelFailed, Overloaded

Arrays = dict[str, Any]  # tensor name -> numpy array, batch dimension first
_READY_TURNS = 4  # most rounds of event-loop turns a partial batch waits for arrived requests
Forward = Callable[[Arrays], Arrays]


def flush_delay(
    queued_rows: int,
    oldest_enqueued_at: float,
    now: float,
    max_batch_size: int,
    max_delay_s: float,
) -> float | None:
    """Seconds to wait before flushing: 0 = flush now, None = nothing queued.

    Flush when a full batch is waiting, or when the oldest request has waited `max_delay_s`.
    """
    if queued_rows <= 0:
        return None
    if queued_rows >= max_batch_size:
        return 0.0
    return max(0.0, oldest_enqueued_at + max_delay_s - now)


class BatchObserver(Protocol):
    """What the batcher reports; `metrics.RuntimeMetrics` implements it."""

    def queue_depth(self, rows: int) -> None: ...
    def batch(self, rows: int, queue_s: Sequence[float], compute_s: float) -> None: ...


class _NoObserver:
    def queue_depth(self, rows: int) -> None:
        pass

    def batch(self, rows: int, queue_s: Sequence[float], compute_s: float) -> None:
        pass


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Arrays
    rows: int
    enqueued_at: float
    deadline: float | None
    future: asyncio.Future[Arrays] = field(repr=False)
    # shapes past the batch dimension: only requests with equal ones are concatenated
    trailing: tuple[tuple[int, ...], ...] = ()
    # perf_counter at arrival, for the metrics: uvloop's loop clock ticks in milliseconds
    arrived: float = field(default_factory=time.perf_counter)
    queued: bool = True
    taken: bool = False  # handed to a forward


class Batcher:
    """Forms batches of up to `max_batch_size` rows, waiting at most `max_delay_s`.

    With `concatenate=False` (models without a batch dimension) each request runs alone.
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_rows: int,
        concatenate: bool = True,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._forward = forward
        self.max_batch_size = max_batch_size if concatenate else 1
        self.max_delay_s = max_delay_s
        self.max_queue_rows = max_queue_rows
        self._concatenate = concatenate
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="kinfer-forward")
        self._own_executor = executor is None
        self._observer: BatchObserver = observer or _NoObserver()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._inflight_rows = 0
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- callers ----

    @property
    def depth(self) -> int:
        """Rows waiting plus rows in the running forward."""
        return self._queued_rows + self._inflight_rows

    async def submit(self, inputs: Arrays, rows: int, deadline: float | None = None) -> Arrays:
        """Queue one request; return its rows of every output. `deadline` is loop time."""
        if self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(
                f"queue full: {self._queued_rows} rows waiting, limit {self.max_queue_rows}; retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline passed before the request was queued")
        trailing = tuple(getattr(v, "shape", ())[1:] for v in inputs.values()) if self._concatenate else ()
        item = _Pending(inputs, rows, now, deadline, loop.create_future(), trailing=trailing)
        item.future.add_done_callback(lambda _f: self._forget(item))
        self._queue.append(item)
        self._queued_rows += rows
        self._observer.queue_depth(self.depth)
        self._wake()
        if deadline is None:
            return await item.future
        try:
            async with asyncio.timeout_at(deadline):
                return await item.future
        except TimeoutError:
            raise DeadlineExceeded(
                f"deadline exceeded after {loop.time() - now:.3f}s "
                f"({'while the model ran' if item.taken else 'while queued'})"
            ) from None

    def _forget(self, item: _Pending) -> None:
        # a caller gave up (deadline, disconnect) while still queued: free its rows at once
        if item.queued and item.future.cancelled():
            item.queued = False
            self._queued_rows -= item.rows
            self._observer.queue_depth(self.depth)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ---- lifecycle ----

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Cancel the loop; anything still queued is answered with an error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ModelFailed("server stopped before the request ran"))
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # ---- the loop ----

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._queue and not self._queue[0].queued:
                self._queue.popleft()
            now = loop.time()
            oldest = self._queue[0].enqueued_at if self._queue else now
            delay = flush_delay(self._queued_rows, oldest, now, self.max_batch_size, self.max_delay_s)
            if delay is None or delay > 0:
                waiter = self._waiter = loop.create_future()
                timer = None if delay is None else loop.call_at(now + delay, self._wake)
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if timer is not None:
                        timer.cancel()
                continue
            await self._gather_ready()
            batch = self._take(loop.time())
            if batch:
                await self._run_batch(loop, batch)

    async def _gather_ready(self) -> None:
        """Before a partial batch runs, let requests that have already arrived join it.

        Yield to the event loop for as long as each turn brings more rows (at most a few
        turns): a turn reads the sockets that are ready and runs the handlers they start,
        which takes microseconds, and no timer is involved.
        """
        for _ in range(_READY_TURNS):
            if self._queued_rows >= self.max_batch_size or not self._concatenate:
                return
            before = self._queued_rows
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # a parsed request reaches submit() one turn after its read
            if self._queued_rows <= before:
                return

    def _take(self, now: float) -> list[_Pending]:
        """The oldest request and the ones after it that fit and have its trailing shapes;
        requests of other shapes keep their places for the next batch."""
        batch: list[_Pending] = []
        other_shapes: list[_Pending] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if not item.queued:
                self._queue.popleft()
                continue
            if batch and rows + item.rows > self.max_batch_size:
                break
            self._queue.popleft()
            if batch and item.trailing != batch[0].trailing:
                other_shapes.append(item)
                continue
            item.queued = False
            self._queued_rows -= item.rows
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            item.taken = True
            batch.append(item)
            rows += item.rows
            if not self._concatenate:
                break
        self._queue.extendleft(reversed(other_shapes))
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        rows = sum(item.rows for item in batch)
        self._inflight_rows = rows
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._forward_batch, [item.inputs for item in batch], rows
            )
        except asyncio.CancelledError:
            self._fail(batch, ModelFailed("server stopped while the batch ran"))
            raise
        except InferenceError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # the model's own error: answer everyone, keep serving
            self._fail(batch, ModelFailed(f"model forward failed: {type(exc).__name__}: {exc}"))
            return
        finally:
            self._inflight_rows = 0
            self._observer.queue_depth(self.depth)
        compute_s = time.perf_counter() - started
        self._observer.batch(rows, [started - item.arrived for item in batch], compute_s)
        offset = 0
        for item in batch:
            if not item.future.done():
                if len(batch) == 1:
                    item.future.set_result(outputs)
                else:
                    item.future.set_result({k: v[offset : offset + item.rows] for k, v in outputs.items()})
            offset += item.rows

    @staticmethod
    def _fail(batch: list[_Pending], exc: InferenceError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(type(exc)(exc.message))

    def _forward_batch(self, inputs: list[Arrays], rows: int) -> Arrays:
        """Runs on the worker thread: concatenate, forward, check the batch dimension."""
        if len(inputs) == 1:
            merged = inputs[0]
        else:
            merged = {k: np.concatenate([x[k] for x in inputs]) for k in inputs[0]}
        outputs = self._forward(merged)
        if self._concatenate and len(inputs) > 1:
            for name, value in outputs.items():
                if getattr(value, "shape", (None,))[:1] != (rows,):
                    raise ModelFailed(
                        f"output '{name}' has shape {getattr(value, 'shape', None)}; a batch of "
                        f"{rows} rows needs {rows} rows out"
                    )
        return outputs
