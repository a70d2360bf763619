"""Output drift check: does the canary answer the same inputs the way stable does? Off by default.

What is here and tested: the comparison of two outputs (``compare``: max abs diff and argmax
agreement per row), a running tally and its verdict (``Tally``, ``judge_drift``), a bounded-rate
sampler on passed-in timestamps (``RateSampler``), and ``shadow``, which sends one input to two
callables and compares what they return.

What is not wired: nothing captures live request inputs yet, and no analysis spec field enables
this (the proposed ``spec.rollout.canary.analysis.drift`` is in docs/rollout.md). The intended
wiring: the operator's canary timer, during Progressing, takes inputs the runtime sampled at a
bounded rate, calls ``shadow`` with the stable and canary Services' v2 infer calls (answers
discarded; users only ever see the track they were routed to), and ``analysis.combine``s
``judge_drift`` with the metrics verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kinfer.rollout.analysis import OUTPUT_DRIFT, Verdict

Rows = Sequence[Sequence[float]]  # one output row per input row (logits, scores, ...)

ENABLED_BY_DEFAULT = False


@dataclass(frozen=True)
class Drift:
    """One comparison. A shape mismatch is infinite drift with no agreeing row."""

    rows: int
    max_abs_diff: float
    argmax_agree: int


def _argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__) if row else -1


def compare(stable: Rows, canary: Rows) -> Drift:
    if len(stable) != len(canary) or any(len(a) != len(b) for a, b in zip(stable, canary, strict=True)):
        return Drift(rows=len(stable), max_abs_diff=math.inf, argmax_agree=0)
    pairs = list(zip(stable, canary, strict=True))
    diff = max((abs(x - y) for a, b in pairs for x, y in zip(a, b, strict=True)), default=0.0)
    agree = sum(_argmax(a) == _argmax(b) for a, b in pairs)
    return Drift(rows=len(stable), max_abs_diff=diff, argmax_agree=agree)


@dataclass(frozen=True)
class Tally:
    """Comparisons so far in one step; ``failures`` counts shadow calls that raised."""

    samples: int = 0
    rows: int = 0
    argmax_agree: int = 0
    max_abs_diff: float = 0.0
    failures: int = 0

    def add(self, d: Drift | None) -> Tally:
        if d is None:
            return replace(self, failures=self.failures + 1)
        return Tally(
            samples=self.samples + 1,
            rows=self.rows + d.rows,
            argmax_agree=self.argmax_agree + d.argmax_agree,
            max_abs_diff=max(self.max_abs_diff, d.max_abs_diff),
            failures=self.failures,
        )

    @property
    def agreement(self) -> float | None:
        return self.argmax_agree / self.rows if self.rows else None


@dataclass(frozen=True)
class Thresholds:
    """Proposed spec.rollout.canary.analysis.drift. None disables a check."""

    max_abs_diff: float | None = None
    min_argmax_agreement: float | None = 0.99
    min_samples: int = 20


def judge_drift(th: Thresholds, tally: Tally) -> Verdict:
    if tally.samples < th.min_samples:
        return Verdict(
            "inconclusive",
            f"drift: {tally.samples} of {th.min_samples} shadow samples",
            inconclusive="NotEnoughData",
        )
    numbers = (
        f"max abs diff {tally.max_abs_diff:.3g}, argmax agreement "
        f"{(tally.agreement or 0) * 100:.1f}% over {tally.rows} rows"
    )
    if th.max_abs_diff is not None and tally.max_abs_diff > th.max_abs_diff:
        return Verdict(
            "failed",
            f"output drift: max abs diff {tally.max_abs_diff:.3g} > {th.max_abs_diff:.3g}; " + numbers,
            failed_metric=OUTPUT_DRIFT,
        )
    agreement = tally.agreement or 0.0
    if th.min_argmax_agreement is not None and agreement < th.min_argmax_agreement:
        return Verdict(
            "failed",
            f"output drift: argmax agreement {agreement * 100:.1f}% < "
            f"{th.min_argmax_agreement * 100:.1f}%; " + numbers,
            failed_metric=OUTPUT_DRIFT,
        )
    return Verdict("passed", "drift: " + numbers)


class RateSampler:
    """Token bucket on timestamps the caller passes (monotonic seconds): at most ``per_second``
    samples on average and ``burst`` at once, however much traffic arrives."""

    def __init__(self, per_second: float, burst: int = 1) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("per_second must be > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def admit(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def shadow(inputs: Rows, stable: Callable[[Rows], Rows], canary: Callable[[Rows], Rows]) -> Drift | None:
    """Send one sampled input to both tracks and compare. None when either call fails: a failed
    shadow call says nothing about drift (errors are the metrics analysis' business)."""
    try:
        return compare(stable(inputs), canary(inputs))
    except Exception:  # any transport or decode failure is one lost sample
        return None
