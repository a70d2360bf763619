"""Output drift: comparison, tally and verdict, the bounded-rate sampler, and one shadow call."""

from __future__ import annotations

import math

import pytest

from kinfer.rollout.analysis import OUTPUT_DRIFT
from kinfer.rollout.drift import (
    ENABLED_BY_DEFAULT,
    Drift,
    RateSampler,
    Rows,
    Tally,
    Thresholds,
    compare,
    judge_drift,
    shadow,
)


def test_identical_outputs_do_not_drift() -> None:
    out = [[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]
    assert compare(out, out) == Drift(rows=2, max_abs_diff=0.0, argmax_agree=2)


def test_compare_reports_the_largest_difference_and_argmax_agreement() -> None:
    stable = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]
    canary = [[0.1, 0.6, 0.3], [0.2, 0.6, 0.2]]  # row 2 now picks another class
    d = compare(stable, canary)
    assert (d.rows, d.argmax_agree) == (2, 1)
    assert d.max_abs_diff == pytest.approx(0.3)


def test_a_shape_change_is_infinite_drift() -> None:
    assert compare([[1.0, 2.0]], [[1.0, 2.0, 3.0]]) == Drift(1, math.inf, 0)
    assert compare([[1.0]], [[1.0], [1.0]]) == Drift(1, math.inf, 0)


def tally_of(*drifts: Drift | None) -> Tally:
    t = Tally()
    for d in drifts:
        t = t.add(d)
    return t


def test_the_verdict_waits_for_enough_samples() -> None:
    v = judge_drift(Thresholds(min_samples=3), tally_of(Drift(1, 0, 1), None))
    assert (v.outcome, v.inconclusive) == ("inconclusive", "NotEnoughData")
    assert v.message == "drift: 1 of 3 shadow samples"


def test_low_argmax_agreement_fails_the_canary() -> None:
    t = tally_of(*[Drift(10, 0.01, 9)] * 5)
    v = judge_drift(Thresholds(min_argmax_agreement=0.95, min_samples=5), t)
    assert (v.outcome, v.failed_metric) == ("failed", OUTPUT_DRIFT)
    assert v.message.startswith("output drift: argmax agreement 90.0% < 95.0%")


def test_max_abs_diff_threshold() -> None:
    t = tally_of(*[Drift(4, 0.002, 4)] * 5)
    loose = judge_drift(Thresholds(max_abs_diff=0.01, min_samples=5), t)
    assert loose.passed
    assert loose.message == "drift: max abs diff 0.002, argmax agreement 100.0% over 20 rows"
    tight = judge_drift(Thresholds(max_abs_diff=0.001, min_samples=5), t)
    assert tight.failed and "0.002 > 0.001" in tight.message


def test_sampler_bounds_the_rate_whatever_the_traffic() -> None:
    sampler = RateSampler(per_second=2, burst=2)
    # 1000 requests a second for 10 seconds, timestamps passed in.
    admitted = sum(sampler.admit(i / 1000) for i in range(10_000))
    # The burst, then 2 a second over the 9.999 s the timestamps span.
    assert admitted == 2 + 19
    with pytest.raises(ValueError):
        RateSampler(per_second=0)


def test_sampler_refills_after_a_quiet_period_up_to_the_burst() -> None:
    sampler = RateSampler(per_second=1, burst=3)
    assert [sampler.admit(0.0) for _ in range(4)] == [True, True, True, False]
    assert [sampler.admit(100.0) for _ in range(4)] == [True, True, True, False]


def test_shadow_sends_the_same_input_to_both_tracks() -> None:
    seen: list[Rows] = []

    def stable(x: Rows) -> Rows:
        seen.append(x)
        return [[v * 2 for v in row] for row in x]

    def canary(x: Rows) -> Rows:
        seen.append(x)
        return [[v * 2 + 0.5 for v in row] for row in x]

    inputs = [[1.0, 2.0]]
    assert shadow(inputs, stable, canary) == Drift(1, 0.5, 1)
    assert seen == [inputs, inputs]


def test_a_failed_shadow_call_is_a_lost_sample_not_drift() -> None:
    def broken(x: Rows) -> Rows:
        raise ConnectionError("canary unreachable")

    assert shadow([[1.0]], lambda x: x, broken) is None
    assert tally_of(None).failures == 1


def test_off_by_default() -> None:
    assert ENABLED_BY_DEFAULT is False
