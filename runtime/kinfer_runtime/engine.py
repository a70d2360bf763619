"""Continuous batching, the running part: one decoding step after another on a worker thread.

The scheduler (pure) says who runs; the decoder (`torch_model.CausalLM`, or a fake in tests)
runs one step for them; each sequence's new text goes to its own stream. The loop sleeps on
an event that a new sequence sets — it never polls. A step that raises ends every sequence in
it with `ModelFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from kinfer_runtime.protocol.errors import InferenceError, ModelFailed
from kinfer_runtime.scheduler import Delta, SamplingParams, Scheduler, Sequence

log = logging.getLogger("kinfer_runtime.engine")


class Decoder(Protocol):
    def step(
        self,
        evict: list[int],
        admit: list[tuple[int, list[int], SamplingParams]],
        decode: list[int],
        early: Callable[[dict[int, int]], None] | None = None,
    ) -> dict[int, int]:
        """Forget `evict`; prefill `admit` (prompt tokens) and decode one token for `decode`.
        Returns the next token of every admitted and decoded sequence, by sequence id. A
        decoder may hand the admitted sequences' first tokens to `early` (from its thread)
        before it decodes the rest, so they need not wait for the whole step."""
        ...


class TokenObserver(Protocol):
    """What the engine reports; `metrics.RuntimeMetrics` implements it."""

    def sequences(self, running: int, waiting: int, tokens_in_flight: int) -> None: ...
    def first_token(self, seconds: float, prompt_tokens: int) -> None: ...
    def output_token(self, seconds: float) -> None: ...


class _NoObserver:
    def sequences(self, running: int, waiting: int, tokens_in_flight: int) -> None:
        pass

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        pass

    def output_token(self, seconds: float) -> None:
        pass


class Stream:
    """The deltas of one sequence, in order, as an async iterator that ends after the delta
    with a finish reason. `cancel()` (the client went away) frees its slot at the next step."""

    def __init__(self, engine: Engine, seq: Sequence) -> None:
        self.seq = seq
        self._engine = engine
        self._queue: asyncio.Queue[Delta | InferenceError] = asyncio.Queue()
        self._done = False

    def put(self, item: Delta | InferenceError) -> None:
        self._queue.put_nowait(item)

    def cancel(self) -> None:
        self._engine.cancel(self)  # no-op once finished

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, InferenceError):
            self._done = True
            raise item
        self._done = bool(item.finish_reason)
        return item


class Engine:
    def __init__(
        self,
        decoder: Decoder,
        scheduler: Scheduler,
        executor: Executor | None = None,
        observer: TokenObserver | None = None,
    ) -> None:
        self.decoder = decoder
        self.scheduler = scheduler
        self._executor = executor
        self._observer = observer or _NoObserver()
        self._streams: dict[int, Stream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = 0  # decoding steps run so far (tests count them)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def active(self) -> int:
        """Streams not yet finished (leak checks read it)."""
        return len(self._streams)

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream:
        """Queue a sequence; raises at once (before any token) if it is refused."""
        seq = self.scheduler.add(prompt, params, time.perf_counter())
        stream = Stream(self, seq)
        self._streams[seq.id] = stream
        self._report()
        self._wake.set()
        return stream

    def cancel(self, stream: Stream) -> None:
        self.scheduler.cancel(stream.seq)
        self._streams.pop(stream.seq.id, None)
        self._report()
        self._wake.set()  # so the slot is freed at the next step even if nothing else runs

    def _report(self) -> None:
        s = self.scheduler
        self._observer.sequences(len(s.running), len(s.waiting), s.tokens_in_flight)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            plan = self.scheduler.plan()
            if plan.empty and not plan.evict:
                self._report()
                self._wake.clear()
                await self._wake.wait()
                continue
            admit = [(s.id, s.prompt, s.params) for s in plan.admit]
            decode = [s.id for s in plan.decode]
            evict = [s.id for s in plan.evict]
            self._report()
            early_done: set[int] = set()

            def record_early(
                tokens: dict[int, int], seqs: list[Sequence] = plan.admit, done: set[int] = early_done
            ) -> None:
                self._record([s for s in seqs if s.id in tokens], tokens)
                done.update(tokens)

            def early(tokens: dict[int, int]) -> None:  # on the worker thread
                loop.call_soon_threadsafe(record_early, tokens)

            try:
                tokens = await loop.run_in_executor(
                    self._executor, self.decoder.step, evict, admit, decode, early
                )
            except Exception as exc:
                log.exception("decoding step failed")
                self._fail(plan.admit + plan.decode, ModelFailed(f"decoding step failed: {exc}"))
                continue
            self.steps += 1
            self._record([s for s in plan.admit + plan.decode if s.id not in early_done], tokens)

    def _record(self, seqs: list[Sequence], tokens: dict[int, int]) -> None:
        now = time.perf_counter()
        for seq in seqs:
            previous = seq.last_token_at
            delta = self.scheduler.record(seq, tokens[seq.id], now)
            if delta is None:
                continue  # cancelled during the step
            if previous is None:
                self._observer.first_token(now - seq.arrived, len(seq.prompt))
            else:
                self._observer.output_token(now - previous)
            stream = self._streams.get(seq.id)
            if stream is not None:
                stream.put(delta)
            if delta.finish_reason:
                self._streams.pop(seq.id, None)

    def _fail(self, seqs: list[Sequence], error: InferenceError) -> None:
        for seq in seqs:
            stream = self._streams.pop(seq.id, None)
            self.scheduler.cancel(seq)
            if stream is not None:
                stream.put(error)
