"""Continuous batching without torch: the pure scheduler, and the engine on a fake decoder."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kinfer_runtime.engine import Engine
from kinfer_runtime.protocol.errors import InvalidInput, Overloaded
from kinfer_runtime.scheduler import SamplingParams, Scheduler

EOS = 0


def detok(ids: list[int]) -> str:
    return "".join(chr(ord("a") + (i - 1) % 26) for i in ids)


def tok(text: str) -> int:
    return ord(text) - ord("a") + 1


def scheduler(**kw: int) -> Scheduler:
    args = dict(
        context_length=64, max_new_tokens=32, max_sequences=4, max_tokens_in_flight=1000, max_waiting=8
    )
    args.update(kw)
    return Scheduler(**args, eos_token_id=EOS, detokenize=detok)  # type: ignore[arg-type]


def params(max_tokens: int = 8, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)


def test_sequences_join_at_the_next_step_up_to_max_sequences() -> None:
    s = scheduler(max_sequences=2)
    a = s.add([1, 2], params(), 0.0)
    plan = s.plan()
    assert plan.admit == [a] and plan.decode == []
    b = s.add([3], params(), 1.0)
    c = s.add([4], params(), 1.0)
    plan = s.plan()
    assert plan.decode == [a] and plan.admit == [b]  # c waits: two sequences run
    assert list(s.waiting) == [c]


def test_token_budget_reserves_prompt_plus_max_tokens_and_a_lone_sequence_always_runs() -> None:
    s = scheduler(max_tokens_in_flight=20)
    big = s.add([1] * 10, params(max_tokens=15), 0.0)  # 25 > 20, but alone: runs
    small = s.add([1] * 2, params(max_tokens=2), 0.0)
    assert s.plan().admit == [big]
    assert s.plan().admit == []  # 25 + 4 > 20
    s.cancel(big)
    assert s.plan().admit == [small]
    assert s.tokens_in_flight == 4


def test_overload_and_impossible_prompts_are_refused_before_any_work() -> None:
    s = scheduler(max_waiting=2, context_length=8)
    s.add([1], params(), 0.0)
    s.add([1], params(), 0.0)
    with pytest.raises(Overloaded):
        s.add([1], params(), 0.0)
    with pytest.raises(InvalidInput, match="prompt: 8 tokens"):
        s.add([1] * 8, params(), 0.0)
    with pytest.raises(InvalidInput, match="max_tokens: 33"):
        s.add([1], params(max_tokens=33), 0.0)


def test_max_tokens_is_cut_to_what_the_context_leaves() -> None:
    s = scheduler(context_length=8)
    seq = s.add([1] * 5, params(max_tokens=30), 0.0)
    assert seq.params.max_tokens == 3


def _run(s: Scheduler, seq_tokens: list[int]) -> list[tuple[str, str]]:
    seq = s.add([1], params(max_tokens=len(seq_tokens) + 5, stop=("cd",)), 0.0)
    s.plan()
    out = []
    for t in seq_tokens:
        d = s.record(seq, t, 1.0)
        assert d is not None
        out.append((d.text, d.finish_reason))
        if d.finish_reason:
            break
    return out


def test_stop_string_is_never_sent_and_its_prefix_is_held_back() -> None:
    s = scheduler()
    out = _run(s, [tok(c) for c in "abxcbcdzz"])
    assert out == [("a", ""), ("b", ""), ("x", ""), ("", ""), ("cb", ""), ("", ""), ("", "stop")]
    assert "".join(t for t, _ in out) == "abxcb"


def test_eos_and_length_finish_and_the_sequence_is_evicted_next_step() -> None:
    s = scheduler()
    a = s.add([1], params(max_tokens=2), 0.0)
    b = s.add([1], params(max_tokens=9), 0.0)
    s.plan()
    d = s.record(a, 5, 1.0)
    assert d is not None and (d.text, d.finish_reason) == ("e", "")
    d = s.record(a, 6, 2.0)
    assert d is not None and d.finish_reason == "length"
    assert a.text == "ef" and len(a.generated) == 2
    d = s.record(b, EOS, 2.0)
    assert d is not None and d.finish_reason == "stop" and b.generated == []
    plan = s.plan()
    assert plan.evict == [a, b] and plan.decode == []


def test_cancel_running_frees_its_slot_at_the_next_step() -> None:
    s = scheduler(max_sequences=1)
    a = s.add([1], params(), 0.0)
    b = s.add([1], params(), 0.0)
    s.plan()
    s.cancel(a)
    plan = s.plan()
    assert plan.evict == [a] and plan.admit == [b]
    assert s.record(a, 3, 1.0) is None  # a token of the step it was cancelled in is dropped


class FakeDecoder:
    """Emits token (seq id % 25 + 1) forever; tracks the rows it holds like a real decoder."""

    def __init__(self) -> None:
        self.rows: set[int] = set()
        self.calls: list[tuple[list[int], list[int], list[int]]] = []

    def step(self, evict: list[int], admit: list[tuple[int, list[int], SamplingParams]],
             decode: list[int], early: Any = None) -> dict[int, int]:  # fmt: skip
        self.rows -= set(evict)
        assert self.rows == set(decode)
        new = [a[0] for a in admit]
        self.rows |= set(new)
        self.calls.append((evict, new, decode))
        return {i: i % 25 + 1 for i in [*decode, *new]}


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


def engine(**kw: int) -> tuple[Engine, FakeDecoder]:
    dec = FakeDecoder()
    return Engine(dec, scheduler(**kw)), dec


@run
async def test_engine_streams_text_and_a_late_sequence_joins_the_running_batch() -> None:
    eng, dec = engine()
    eng.start()
    a = eng.submit([1], params(max_tokens=6))
    first = await anext(a)
    b = eng.submit([1], params(max_tokens=3))
    rest_a = [d async for d in a]
    got_b = [d async for d in b]
    await eng.stop()
    assert "".join(d.text for d in [first, *rest_a]) == "bbbbbb" and rest_a[-1].finish_reason == "length"
    assert "".join(d.text for d in got_b) == "ccc"
    # b was admitted into a step where a was decoding: the batch grew mid-flight
    assert any(new == [b.seq.id] and decode == [a.seq.id] for _, new, decode in dec.calls)


@run
async def test_disconnect_frees_the_slot_within_one_step() -> None:
    eng, dec = engine(max_sequences=1)
    eng.start()
    a = eng.submit([1], params(max_tokens=32))
    await anext(a)
    b = eng.submit([1], params(max_tokens=2))
    await asyncio.sleep(0)  # a few steps of a; b waits for the slot
    steps_at_cancel = eng.steps
    a.cancel()  # the client went away
    got = [d async for d in b]
    await eng.stop()
    assert got[-1].finish_reason == "length"
    admitted_at = next(i for i, (_, new, _) in enumerate(dec.calls) if new == [b.seq.id])
    assert admitted_at <= steps_at_cancel + 1  # the very next step (one may have been running)
    assert dec.calls[admitted_at][0] == [a.seq.id]  # and a's rows were freed in that step


@run
async def test_a_thousand_cancelled_streams_leak_nothing() -> None:
    eng, dec = engine(max_sequences=16, max_waiting=2000)
    eng.start()
    for round_ in range(10):
        streams = [eng.submit([1, 2], params(max_tokens=32)) for _ in range(100)]
        for st in streams[: 16 + round_]:  # some got a token, the rest never started
            await anext(st)
        for st in streams:
            st.cancel()
    await asyncio.sleep(0.01)
    await eng.stop()
    s = eng.scheduler
    assert eng.active == 0 and not s.running and not s.waiting and s.tokens_in_flight == 0
    assert dec.rows == set()  # the decoder was told to forget every row


def test_an_incomplete_utf8_character_is_held_back_but_garbage_is_not() -> None:
    words = {1: b"\xe4", 2: b"\xb8", 3: b"\xad", 4: b"\xc3"}

    def utf8(ids: list[int]) -> str:
        return b"".join(words[i] for i in ids).decode("utf-8", "replace")

    s = Scheduler(context_length=64, max_new_tokens=32, max_sequences=4, max_tokens_in_flight=1000,
                  max_waiting=8, eos_token_id=EOS, detokenize=utf8)  # fmt: skip
    seq = s.add([1], params(max_tokens=8), 0.0)
    s.plan()
    got = [d.text for d in (s.record(seq, t, 1.0) for t in (1, 2, 3, 4, 4, 4)) if d is not None]
    assert got == ["", "", "\u4e2d", "", "\ufffd", "\ufffd"]  # 中 whole; lone 0xC3 bytes go out
