"""Continuous batching, the pure part: which sequences run at the next decoding step.

No torch, no asyncio, no clock: the engine passes `now` and the tokens the model produced, and
this module decides admission, eviction and when a sequence is finished (max tokens, end of
text, a stop string, the context limit). Sequences join the running batch at the next step;
the token budget reserves each sequence's worst case (prompt + max tokens), so a running
sequence is never preempted.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from kinfer_runtime.protocol.errors import InvalidInput, Overloaded

Detokenize = Callable[[list[int]], str]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-text (benchmarks)


@dataclass(slots=True, eq=False)
class Sequence:
    id: int
    prompt: list[int]
    params: SamplingParams
    arrived: float
    generated: list[int] = field(default_factory=list)
    text: str = ""  # text of `generated`, cut at a stop string once one is seen
    sent: int = 0  # characters of `text` already handed out
    state: str = "waiting"  # waiting | running | finished
    finish_reason: str = ""  # length | stop | cancelled
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def budget(self) -> int:
        """Tokens this sequence may hold in the cache at most."""
        return len(self.prompt) + self.params.max_tokens


@dataclass(frozen=True, slots=True)
class Delta:
    """What one step produced for one sequence: new text (maybe empty) and, at the end, why."""

    seq: Sequence
    text: str
    finish_reason: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """One step: forget `evict`, prefill `admit` (their first token), decode `decode`."""

    evict: list[Sequence]
    admit: list[Sequence]
    decode: list[Sequence]

    @property
    def empty(self) -> bool:
        return not (self.admit or self.decode)


class Scheduler:
    def __init__(
        self,
        *,
        context_length: int,
        max_new_tokens: int,
        max_sequences: int,
        max_tokens_in_flight: int,
        max_waiting: int,
        eos_token_id: int | None,
        detokenize: Detokenize,
    ) -> None:
        self.context_length = context_length
        self.max_new_tokens = max_new_tokens
        self.max_sequences = max_sequences
        self.max_tokens_in_flight = max_tokens_in_flight
        self.max_waiting = max_waiting
        self.eos_token_id = eos_token_id
        self._detokenize = detokenize
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self._cancelled_running: list[Sequence] = []
        self._ids = itertools.count(1)

    @property
    def tokens_in_flight(self) -> int:
        """Tokens reserved by the running sequences (prompt + max tokens each)."""
        return sum(s.budget for s in self.running)

    def add(self, prompt: list[int], params: SamplingParams, now: float) -> Sequence:
        """Queue a sequence, or refuse it before any work: InvalidInput if it can never fit,
        Overloaded if the waiting queue is full."""
        if not prompt:
            raise InvalidInput("prompt: must not be empty")
        if len(prompt) >= self.context_length:
            raise InvalidInput(
                f"prompt: {len(prompt)} tokens, the model's context is {self.context_length} tokens "
                "(the prompt must leave room for at least one new token)"
            )
        if params.max_tokens > self.max_new_tokens:
            raise InvalidInput(
                f"max_tokens: {params.max_tokens} exceeds this model's limit {self.max_new_tokens}"
            )
        if len(self.waiting) >= self.max_waiting:
            raise Overloaded(f"{len(self.waiting)} sequences waiting (limit {self.max_waiting}); retry later")
        room = self.context_length - len(prompt)
        if params.max_tokens > room:  # never write past the context: cut max_tokens to what fits
            params = dataclasses.replace(params, max_tokens=room)
        seq = Sequence(next(self._ids), list(prompt), params, now)
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """The client went away: a waiting sequence leaves now, a running one at the next step."""
        if seq.state == "finished" or seq.cancelled:
            return
        seq.cancelled = True
        if seq.state == "waiting":
            self.waiting.remove(seq)
            self._finish(seq, "cancelled")
        else:
            self.running.remove(seq)
            self._cancelled_running.append(seq)
            self._finish(seq, "cancelled")

    def plan(self) -> Plan:
        """The next step. Admits waiting sequences in arrival order while both bounds hold."""
        evict, self._cancelled_running = self._cancelled_running, []
        decode = list(self.running)
        admit = []
        used = self.tokens_in_flight
        while self.waiting and len(self.running) < self.max_sequences:
            nxt = self.waiting[0]
            if self.running and used + nxt.budget > self.max_tokens_in_flight:
                break  # a lone sequence always runs, whatever its budget
            self.waiting.popleft()
            nxt.state = "running"
            self.running.append(nxt)
            admit.append(nxt)
            used += nxt.budget
        return Plan(evict, admit, decode)

    def record(self, seq: Sequence, token: int, now: float) -> Delta | None:
        """One new token of a running sequence -> the text to hand out, and whether it ended.
        A finished sequence is evicted at the next step. None: it was cancelled meanwhile."""
        if seq.state != "running":
            return None
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.last_token_at = now
        reason = ""
        if token == self.eos_token_id and not seq.params.ignore_eos:
            reason = "stop"
        else:
            seq.generated.append(token)
            seq.text = self._detokenize(seq.generated)
            cut = _first_stop(seq.text, seq.params.stop, seq.sent)
            if cut is not None:
                seq.text = seq.text[:cut]
                reason = "stop"
            elif len(seq.generated) >= seq.params.max_tokens:
                reason = "length"
        if reason:
            text = seq.text[seq.sent :]
            seq.sent = len(seq.text)
            self.running.remove(seq)
            self._cancelled_running.append(seq)  # its cache rows go at the next step
            self._finish(seq, reason)
            return Delta(seq, text, reason)
        end = _safe_end(seq.text, seq.params.stop)
        text = seq.text[seq.sent : end] if end > seq.sent else ""
        seq.sent = max(seq.sent, end)
        return Delta(seq, text)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.state = "finished"
        seq.finish_reason = reason


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Index where the earliest stop string starts (searching what may still be unsent)."""
    best = None
    for stop in stops:
        i = text.find(stop, max(0, sent - len(stop) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can go out now: hold back a last incomplete UTF-8 character (its bytes
    decode as one U+FFFD until the rest arrives; earlier ones are invalid bytes and stay so) and
    any tail that could be the start of a stop string."""
    end = len(text)
    if end and text[end - 1] == "\ufffd":
        end -= 1
    head = text[:end]
    cut = end
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if head.endswith(stop[:k]):
                cut = min(cut, end - k)
                break
    return cut
