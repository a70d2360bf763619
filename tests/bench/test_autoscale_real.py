"""The pure parts of bench/autoscale_real.py: segment, rate scale, replica-seconds, attainment."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import autoscale_real as real


def minutes_of(counts: list[int]) -> np.ndarray:
    """Arrivals spread evenly inside each minute, ``counts[m]`` of them in minute m."""
    return np.sort(
        np.concatenate([m * 60 + (np.arange(c) + 0.5) * 60 / c for m, c in enumerate(counts) if c])
    )


def test_the_segment_is_the_window_whose_minute_rates_vary_most() -> None:
    arrivals = minutes_of([10, 10, 10, 30, 10, 10, 10, 10, 10])
    assert real.choose_segment(arrivals, 2) == 2  # [10, 30] is the first window with ratio 3
    assert real.choose_segment(arrivals, 8) == 0  # both 8-minute windows hold the 30: the earliest


def test_the_segment_leaves_out_the_last_partial_minute() -> None:
    # Minute 3 has one arrival only because the trace ends in it: not a quiet minute.
    arrivals = np.append(minutes_of([10, 12, 10]), 180.5)
    assert real.choose_segment(arrivals, 2) == 0
    with pytest.raises(ValueError, match="fewer than 4"):
        real.choose_segment(arrivals, 4)


def test_cut_gives_offsets_from_the_segment_start() -> None:
    arrivals = np.array([1.0, 59.9, 60.0, 61.5, 119.9, 120.0])
    assert real.cut(arrivals, 60.0, 60.0).tolist() == pytest.approx([0.0, 1.5, 59.9])


def test_copies_load_the_asked_number_of_replicas() -> None:
    assert real.copies_for(rate=5.0, capacity=10.0, mean_pods=3) == 6
    assert real.copies_for(rate=100.0, capacity=10.0, mean_pods=3) == 1  # never fewer than one


def test_copies_of_the_trace_scale_the_rate_of_a_segment() -> None:
    trace = real.sim.DEFAULT_TRACE
    one = real.cut(real.sim.load_trace(trace, 1, 0.0), 600.0, 600.0)
    six = real.cut(real.sim.load_trace(trace, 6, 7.3), 600.0, 600.0)
    assert len(six) == pytest.approx(6 * len(one), rel=0.02)
    assert np.all(np.diff(six) >= 0) and six[0] >= 0 and six[-1] < 600


def test_replica_seconds_hold_each_sample_until_the_next() -> None:
    samples = [(0.0, 2.0), (10.0, 3.0), (25.0, 1.0)]
    assert real.integrate(samples, 0.0, 30.0) == pytest.approx(2 * 10 + 3 * 15 + 1 * 5)
    assert real.integrate(samples, 5.0, 12.0) == pytest.approx(2 * 5 + 3 * 2)
    # The first value holds before the first sample; nothing counts past the end.
    assert real.integrate([(1.0, 4.0), (40.0, 9.0)], 0.0, 20.0) == pytest.approx(80.0)
    assert real.integrate([], 0.0, 10.0) == 0.0


def test_attainment_counts_failed_and_unanswered_as_late() -> None:
    latencies = np.array([0.1, 0.5, 0.50001, math.inf, 0.2])
    assert real.attainment(latencies, 0.5) == pytest.approx(3 / 5)
    assert real.attainment(np.array([]), 0.5) == 0.0


def test_the_summary_line_and_the_goals() -> None:
    line = real.summary_line(1123.0, 1000.0, 0.9641, 0.98)
    assert line == (
        "REAL: real_replica_s=1123 sim_replica_s=1000 ratio=1.123 "
        "real_attainment=0.9641 sim_attainment=0.9800 diff=-0.0159"
    )
    assert real.goals_line(1123.0, 1000.0, 0.9641, 0.98).count("met") == 2
    assert "UNMET" not in real.goals_line(1123.0, 1000.0, 0.9641, 0.98)
    assert real.goals_line(1200.0, 1000.0, 0.95, 0.98).count("UNMET") == 2


def test_the_least_outstanding_pod_takes_the_request() -> None:
    targets = real.Targets()
    assert targets.pick() is None
    targets.update(["10.88.3.2", "10.88.3.3"])
    targets.outstanding["10.88.3.2"] = 2
    assert targets.pick() == "10.88.3.3"
    targets.outstanding["10.88.3.3"] = 2
    assert {targets.pick(), targets.pick()} == {"10.88.3.2", "10.88.3.3"}  # ties take turns


def test_the_simulated_half_runs_the_kinfer_policy_at_the_api_defaults() -> None:
    model = real.sim.Model(100.0, 0.0, 1)
    arrivals = np.sort(np.random.default_rng(0).uniform(0, 120, 1200))  # 10 req/s for 2 min
    setup = real.sim_setup(model, 0.5, 5.0)
    assert (setup.max_replicas, setup.queue_target, setup.p95_target_ms) == (8, 4, 250)
    result, ticks = real.run_sim(arrivals, setup, initial=2)
    assert ticks[0] == (0.0, 2) and len(ticks) > 10
    # The recorded ticks integrate to about the simulator's own replica-seconds.
    assert real.integrate(ticks, 0.0, float(arrivals[-1]) + real.TAIL_S) == pytest.approx(
        result.replica_seconds, rel=0.05
    )
