"""Sizing for the arrival rate: each new step on its own, then scenarios on a synthetic clock.

The runtime here is the batching curve t(b) = 50 ms + 25 ms x b with batches of up to 8 rows,
so a replica serves 7 rows per 225 ms = 31.1 rows/s with a 450 ms p95 target (a request takes
about two forwards), and 32 rows/s when the target allows full batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from kinfer.api.v1alpha1 import Scaling, Targets
from kinfer.autoscaling.decision import (
    DEFAULT_COLD_START_SECONDS,
    FIT_HALF_LIFE_SECONDS,
    HEADROOM_SPREAD,
    PANIC_HOLD_SECONDS,
    Decision,
    ScalingState,
    arrival_rate,
    burst_headroom,
    by_backlog,
    by_rate,
    check_latency,
    decide,
    forward_sums,
    learn_forward,
    rate_trend,
    record_history,
    throughput,
)
from kinfer.autoscaling.explain import explain
from kinfer.autoscaling.window import MetricsWindow

T0 = 1_700_000_000.0
SPEC = Scaling(
    min_replicas=1, max_replicas=40, targets=Targets(queue_depth_per_replica=8, p95_latency_ms=450)
)
BASE_S, ROW_S, MAX_BATCH = 0.050, 0.025, 8
CAPACITY = 7 / (BASE_S + ROW_S * 7)  # 31.1 rows/s


def forward_s(rows: float) -> float:
    return BASE_S + ROW_S * rows


@dataclass(frozen=True)
class Busy:
    """Pods answering ``rate`` rows/s in forwards of ``batches`` rows (alternating sizes give the
    fit a slope), as the runtime's counters would show over the rate window."""

    rate: float
    ready: int
    batches: tuple[int, ...] = (2, 6)
    queue: float = 0.0
    p95_ms: float | None = 200.0
    cold_start: float | None = 60.0

    def at(self, now: float) -> MetricsWindow:
        mean_b = sum(self.batches) / len(self.batches)
        forwards = self.rate / mean_b
        per = forwards / len(self.batches)
        return MetricsWindow(
            sampled_at=now,
            queue_depth=self.queue,
            inflight=self.queue,
            p95_latency_ms=self.p95_ms,
            request_rate=self.rate,
            ready_replicas=self.ready,
            rows_per_second=self.rate,
            forwards_per_second=forwards,
            busy_seconds_per_second=sum(per * forward_s(b) for b in self.batches),
            rows_squared_per_second=sum(per * b * b for b in self.batches),
            row_seconds_per_second=sum(per * b * forward_s(b) for b in self.batches),
            max_batch_size=MAX_BATCH,
            cold_start_seconds=self.cold_start,
        )


class Autoscaler:
    def __init__(self, spec: Scaling = SPEC, replicas: int = 1) -> None:
        self.spec = spec
        self.state = ScalingState(replicas=replicas)

    def expect_decision(
        self, seen: Busy | MetricsWindow, *, now: float, want: int, reason: str = ""
    ) -> Decision:
        window = seen.at(now) if isinstance(seen, Busy) else seen
        d = decide(self.spec, window, self.state, now)
        explained = "\n".join(f"  {t.name}={t.value} {t.note}" for t in d.terms)
        assert d.replicas == want, f"at t0+{now - T0:g}s got {d.replicas}:\n{explained}"
        assert reason in d.reason, d.reason
        self.state = d.next_state
        return d

    def run(self, seen: Busy, start: float, seconds: float, step: float = 10.0) -> Decision:
        """Ticks every ``step`` s; the pods become what the decision set (ready at once)."""
        d = None
        now = start
        while now < start + seconds:
            d = decide(self.spec, replace(seen, ready=max(self.state.replicas, 1)).at(now), self.state, now)
            self.state = d.next_state
            now += step
        assert d is not None
        return d


def learned(seen: Busy, ticks: int = 6) -> tuple[float, float, float, float, float, float]:
    fit = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for k in range(ticks):
        fit = learn_forward(fit, seen.at(T0 + 10 * k), T0 + 10 * k)
    return fit


# --- steps -------------------------------------------------------------------------------------


def test_forward_sums_need_every_counter() -> None:
    window = Busy(rate=40, ready=2).at(T0)
    assert forward_sums(window) is not None
    assert forward_sums(replace(window, row_seconds_per_second=None)) is None
    assert forward_sums(replace(window, forwards_per_second=0.0)) is None
    assert forward_sums(MetricsWindow(sampled_at=T0)) is None


def test_throughput_from_the_fitted_curve_at_the_latency_target() -> None:
    fit = learned(Busy(rate=40, ready=2))
    assert throughput(fit, MAX_BATCH, 450) == pytest.approx(CAPACITY)
    assert throughput(fit, MAX_BATCH, 1000) == pytest.approx(8 / forward_s(8))  # full batches
    assert throughput(fit, 4, 1000) == pytest.approx(4 / forward_s(4))  # maxBatchSize caps it
    # A target below two forwards of one row: size for single rows, the best it can do.
    assert throughput(fit, MAX_BATCH, 100) == pytest.approx(1 / forward_s(1))


def test_throughput_without_a_slope_is_the_rows_per_busy_second_seen() -> None:
    fit = learned(Busy(rate=40, ready=2, batches=(3,)))
    assert throughput(fit, MAX_BATCH, 450) == pytest.approx(3 / forward_s(3))  # a lower bound
    assert throughput(learned(Busy(rate=40, ready=2)), None, 450) == pytest.approx(4 / 0.15)
    assert throughput((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), MAX_BATCH, 450) is None


def test_the_fit_forgets_by_half_life() -> None:
    fit = learn_forward((0.0,) * 6, Busy(rate=40, ready=2).at(T0), T0)  # type: ignore[arg-type]
    later = learn_forward(fit, MetricsWindow(sampled_at=T0), T0 + FIT_HALF_LIFE_SECONDS)
    assert later[0] == pytest.approx(fit[0] / 2)
    assert later[5] == T0 + FIT_HALF_LIFE_SECONDS


def test_arrival_rate_adds_the_queue_growth() -> None:
    history = ((T0 - 60, 100.0, 50.0), (T0 - 30, 400.0, 50.0))
    window = Busy(rate=64, ready=2, queue=700).at(T0)
    assert arrival_rate(window, history, T0) == pytest.approx(64 + 600 / 60)
    assert arrival_rate(replace(window, queue_depth=10), history, T0) == 64  # shrinking: answered
    assert arrival_rate(window, (), T0) == 64


def test_headroom_from_the_spread_of_rate_changes_over_a_cold_start() -> None:
    steady = tuple((T0 - 600 + 10 * k, 0.0, 100.0) for k in range(60))
    assert burst_headroom(steady, T0, 60) == 0
    swinging = tuple((T0 - 600 + 10 * k, 0.0, 100.0 + (20 if (k // 6) % 2 else 0)) for k in range(60))
    h = burst_headroom(swinging, T0, 60)
    assert h == pytest.approx(HEADROOM_SPREAD * 20)  # every 60 s apart differ by 20
    assert burst_headroom(swinging, T0, 10) < h  # a shorter cold start needs less
    assert burst_headroom((), T0, 60) == 0


def test_trend_extrapolates_a_steady_rise_but_not_a_step() -> None:
    rising = tuple((T0 - 120 + 10 * k, 0.0, 100.0 + k) for k in range(12))  # +0.1 req/s per s
    assert rate_trend(rising, 112.0, T0, 90) == pytest.approx(0.1 * 90)
    step = tuple((T0 - 120 + 10 * k, 0.0, 100.0 if k < 9 else 200.0) for k in range(12))
    assert rate_trend(step, 200.0, T0, 90) == 0  # the first half did not rise
    falling = tuple((T0 - 120 + 10 * k, 0.0, 200.0 - k) for k in range(12))
    assert rate_trend(falling, 188.0, T0, 90) == 0
    assert rate_trend((), 100.0, T0, 90) == 0


def test_by_rate() -> None:
    assert by_rate(150, 0, CAPACITY) == 5
    assert by_rate(155.5, 0, CAPACITY) == 5  # 155.5 / 31.11 = 4.999
    assert by_rate(150, 10, CAPACITY) == 6
    assert by_rate(0, 0, CAPACITY) == 0


def test_backlog_that_drains_within_a_cold_start_adds_nothing() -> None:
    # 4 pods (124 rows/s) against 100 req/s: a backlog of 600 beyond the forwards drains in 25 s.
    window = Busy(rate=100, ready=4, queue=600 + 4 * MAX_BATCH).at(T0)
    assert by_backlog(window, 100, CAPACITY, 60) == 0
    # With 1 s cold starts it outlasts one: sized to drain within DRAIN_SECONDS (4 pods).
    assert by_backlog(window, 100, CAPACITY, 1) == 4


def test_backlog_that_outlasts_a_cold_start_is_sized_to_drain() -> None:
    # 2 pods (62 rows/s) against 100 req/s: the backlog grows; in 60 s it is 2000 + 38 x 60.
    window = Busy(rate=100, ready=2, queue=2000 + 2 * MAX_BATCH).at(T0)
    left = 2000 + (100 - 2 * CAPACITY) * 60
    from kinfer.autoscaling.decision import DRAIN_SECONDS

    assert by_backlog(window, 100, CAPACITY, 60) == math.ceil((100 + left / DRAIN_SECONDS) / CAPACITY)
    assert by_backlog(replace(window, queue_depth=2 * MAX_BATCH), 100, CAPACITY, 60) == 0  # all in forwards


def test_latency_check_adds_one_pod_at_a_time() -> None:
    assert check_latency(30, 4) == 5
    assert check_latency(3, 4) == 3


def test_history_is_pruned() -> None:
    history = ((T0 - 1000, 1.0, 1.0), (T0 - 100, 2.0, 2.0))
    assert record_history(history, T0, 3.0, 3.0) == ((T0 - 100, 2.0, 2.0), (T0, 3.0, 3.0))


# --- scenarios ---------------------------------------------------------------------------------


def test_steady_load_is_sized_for_the_rate() -> None:
    a = Autoscaler(replicas=5)
    d = a.run(Busy(rate=150, ready=5), T0, 600)
    assert d.replicas == 5, explain(d)  # 150 / 31.1 = 4.8, no spread, no trend
    names = [t.name for t in d.terms]
    for term in ("cold_start_seconds", "throughput", "arrival_rate", "headroom", "by_rate", "by_backlog"):
        assert term in names
    assert "arrival rate" in d.reason


def test_a_short_backlog_starts_no_pods() -> None:
    a = Autoscaler(replicas=5)
    a.run(Busy(rate=120, ready=5), T0, 200)
    # 300 rows queued beyond the forwards: 5 pods (155 rows/s) against about 126 req/s drain it
    # in about 10 s, long before a pod started now (60 s) could help.
    d = decide(SPEC, Busy(rate=120, ready=5, queue=300 + 40).at(T0 + 200), a.state, T0 + 200)
    backlog = next(t for t in d.terms if t.name == "by_backlog")
    assert backlog.value == 0, explain(d)
    assert d.replicas == 5, explain(d)


def test_backlog_pods_do_not_hold_the_down_window() -> None:
    a = Autoscaler(replicas=3)
    a.run(Busy(rate=90, ready=3), T0, 300)
    # The queue outruns 3 pods for longer than a cold start.
    d = decide(SPEC, Busy(rate=93, ready=3, queue=3000).at(T0 + 300), a.state, T0 + 300)
    assert d.replicas > 6 and d.panic and "backlog" in d.reason, explain(d)
    a.state, peak = d.next_state, d.replicas
    # The backlog is gone and the rate is back: held while panicking, then straight to the
    # flow's count (5: the 143 req/s the queue's growth showed), not a 300 s window at the peak.
    calm = Busy(rate=90, ready=peak)
    a.expect_decision(calm, now=T0 + 310, want=peak, reason="panic")
    a.expect_decision(calm, now=T0 + 300 + PANIC_HOLD_SECONDS + 10, want=5, reason="scale down")


def test_cold_start_defaults_until_measured() -> None:
    d = decide(SPEC, Busy(rate=100, ready=4, cold_start=None).at(T0), ScalingState(replicas=4), T0)
    term = next(t for t in d.terms if t.name == "cold_start_seconds")
    assert term.value == DEFAULT_COLD_START_SECONDS and "default" in term.note


def test_without_forward_metrics_it_sizes_by_queue_depth() -> None:
    window = MetricsWindow(sampled_at=T0, queue_depth=24, request_rate=10, ready_replicas=1)
    d = decide(SPEC, window, ScalingState(replicas=1), T0)
    assert d.replicas == 3 and "queue depth" in d.reason


def test_state_with_fit_and_history_round_trips() -> None:
    a = Autoscaler(replicas=5)
    a.run(Busy(rate=150, ready=5), T0, 120)
    assert ScalingState.from_dict(a.state.to_dict()) == a.state
