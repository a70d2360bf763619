"""The autoscaler decision: each named step on its own, then scenarios on a synthetic clock."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kinfer.api.v1alpha1 import ScaleToZero, Scaling, Targets
from kinfer.autoscaling.decision import (
    MAX_WINDOW_AGE_SECONDS,
    PANIC_HOLD_SECONDS,
    Decision,
    ScalingState,
    bounds,
    by_latency,
    by_queue_depth,
    clamp,
    decide,
    is_idle,
    limit_scale_up,
    panicking,
    record,
    stabilize,
    track_demand,
    usable,
)
from kinfer.autoscaling.explain import explain, explain_recorded
from kinfer.autoscaling.window import MetricsWindow

T0 = 1_700_000_000.0
S = 1.0
MIN = 60.0

SPEC = Scaling(min_replicas=1, max_replicas=20, targets=Targets(queue_depth_per_replica=4))


@dataclass(frozen=True)
class Load:
    """What Prometheus would report; the helper stamps it with the tick's time."""

    queue: float = 0.0
    ready: int = 1
    p95_ms: float | None = None
    rate: float | None = None

    def at(self, now: float) -> MetricsWindow:
        rate = self.rate if self.rate is not None else (1.0 if self.queue else 0.0)
        return MetricsWindow(
            sampled_at=now,
            queue_depth=self.queue,
            inflight=self.queue,
            p95_latency_ms=self.p95_ms,
            request_rate=rate,
            ready_replicas=self.ready,
        )


class Autoscaler:
    """One InferenceService's autoscaler across ticks: the state goes from one call to the next."""

    def __init__(self, spec: Scaling = SPEC, replicas: int = 1) -> None:
        self.spec = spec
        self.state = ScalingState(replicas=replicas)

    def expect_decision(
        self, seen: Load | MetricsWindow, *, now: float, want: int, reason: str = ""
    ) -> Decision:
        window = seen.at(now) if isinstance(seen, Load) else seen
        d = decide(self.spec, window, self.state, now)
        explained = "\n".join(f"  {t.name}={t.value} {t.note}" for t in d.terms)
        assert d.replicas == want, f"at t0+{now - T0:g}s got {d.replicas}:\n{explained}"
        assert reason in d.reason, d.reason
        self.state = d.next_state
        return d


# --- steps -------------------------------------------------------------------------------------


def test_usable_window() -> None:
    assert usable(Load().at(T0), T0 + 10, 1) == ""
    assert "unavailable: down" in usable(MetricsWindow.unavailable(T0, "down"), T0, 1)
    assert "stale" in usable(Load().at(T0), T0 + MAX_WINDOW_AGE_SECONDS + 1, 1)
    assert "future" in usable(Load().at(T0 + 3600), T0, 1)
    assert "no ready replica" in usable(Load(ready=0).at(T0), T0, 2)
    assert usable(Load(ready=0).at(T0), T0, 0) == ""  # at zero, nothing should report


def test_pods_that_report_nothing_hold_the_count() -> None:
    a = Autoscaler(replicas=5)
    d = a.expect_decision(Load(queue=0, ready=0), now=T0, want=5)
    assert not d.metrics_available


@pytest.mark.parametrize(("queue", "want"), [(0, 0), (0.5, 1), (4, 1), (4.01, 2), (8, 2), (33, 9)])
def test_by_queue_depth(queue: float, want: int) -> None:
    assert by_queue_depth(SPEC, Load(queue=queue).at(T0)) == want


@pytest.mark.parametrize(
    ("p95", "ready", "want"),
    [(None, 3, 0), (500, 0, 0), (250, 3, 3), (270, 3, 3), (230, 3, 3), (500, 3, 6), (100, 4, 2)],
)
def test_by_latency(p95: float | None, ready: int, want: int) -> None:
    assert by_latency(SPEC, Load(p95_ms=p95, ready=ready).at(T0)) == want


def test_by_latency_uses_the_pool_behind_the_p95() -> None:
    window = MetricsWindow(sampled_at=T0, p95_latency_ms=1000, ready_replicas=8, latency_replicas=2)
    assert by_latency(SPEC, window) == 8  # 2 pods x 4, not 8 pods x 4


def test_by_latency_does_not_chase_a_drained_backlog() -> None:
    # The pool grew from 3 to 24 during the window; the p95 is from the backlog the 3 built.
    drained = MetricsWindow(
        sampled_at=T0, queue_depth=15, p95_latency_ms=2500, ready_replicas=24, latency_replicas=3
    )  # 15 rows over 24 pods: within target
    assert by_latency(SPEC, drained) == 24  # hold the ready pods, not 3 x 2500/250 = 30
    backlog = replace(drained, queue_depth=24 * 4 + 1)  # still over target: the p95 is evidence
    assert by_latency(SPEC, backlog) == 30
    stable = MetricsWindow(sampled_at=T0, p95_latency_ms=500, ready_replicas=3, latency_replicas=3)
    assert by_latency(SPEC, stable) == 6  # a pool that did not change: the p95 is its own


def test_track_demand_and_idle() -> None:
    spec = Scaling(min_replicas=0, scale_to_zero=ScaleToZero(enabled=True, idle_seconds=60))
    assert track_demand(None, Load().at(T0), T0) == T0  # a fresh state starts the idle clock now
    assert track_demand(T0, Load().at(T0 + 30), T0 + 30) == T0
    assert track_demand(T0, Load(queue=1).at(T0 + 30), T0 + 30) == T0 + 30
    assert not is_idle(spec, T0, T0 + 59)
    assert is_idle(spec, T0, T0 + 60)
    assert not is_idle(SPEC, T0, T0 + 86400)  # disabled


def test_bounds_and_clamp() -> None:
    assert bounds(SPEC, idle=False) == (1, 20)
    assert bounds(SPEC, idle=True) == (0, 20)
    assert bounds(Scaling(min_replicas=0, scale_to_zero=ScaleToZero(enabled=True)), False)[0] == 1
    assert clamp(30, 1, 20) == 20
    assert clamp(0, 1, 20) == 1


def test_panicking() -> None:
    assert panicking(8, 4, T0, None) == (True, T0 + PANIC_HOLD_SECONDS)
    assert panicking(7, 4, T0, None) == (False, None)
    assert panicking(3, 4, T0 + 10, T0 + 30) == (True, T0 + 30)  # held
    assert panicking(3, 4, T0 + 30, T0 + 30) == (False, None)  # over
    assert panicking(5, 0, T0, None) == (False, None)  # from zero is activation, not panic


def test_record_prunes_to_horizon() -> None:
    recs = ((T0, 1), (T0 + 100, 2))
    assert record(recs, T0 + 200, 3, horizon=150) == ((T0 + 100, 2), (T0 + 200, 3))


def test_stabilize() -> None:
    recs = ((T0, 5), (T0 + 100, 2), (T0 + 200, 3))
    # down: the highest of the last 300 s (5); up: the lowest of the last 0 s (3).
    assert stabilize(4, recs, T0 + 200, 0, 300) == (4, 3, 5)
    assert stabilize(6, recs, T0 + 200, 0, 300) == (5, 3, 5)
    assert stabilize(6, recs, T0 + 200, 0, 50) == (3, 3, 3)
    assert stabilize(1, recs, T0 + 200, 150, 0) == (2, 2, 3)


def test_limit_scale_up() -> None:
    assert limit_scale_up(2, 30, 10) == 20
    assert limit_scale_up(2, 30, 1) == 3  # a rate of 1 still moves
    assert limit_scale_up(0, 30, 2) == 2
    assert limit_scale_up(5, 3, 2) == 3


def test_state_round_trips_through_json() -> None:
    state = ScalingState(
        replicas=3,
        recommendations=((T0, 2), (T0 + 10, 3)),
        panic_until=T0 + 60,
        panic_floor=3,
        last_demand_at=T0 + 10,
        last_scale_at=T0,
    )
    assert ScalingState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert ScalingState.from_dict({}) == ScalingState()


def test_window_round_trips() -> None:
    window = Load(queue=3, ready=2, p95_ms=120).at(T0)
    assert MetricsWindow.from_dict(json.loads(json.dumps(window.to_dict()))) == window
    assert window.queue_depth_per_replica == 1.5


# --- scenarios ---------------------------------------------------------------------------------


def test_steady_load_at_target_holds() -> None:
    a = Autoscaler(replicas=2)
    for tick in range(10):
        a.expect_decision(Load(queue=8, ready=2, p95_ms=240), now=T0 + tick * 10, want=2)


def test_more_queue_scales_up_at_once() -> None:
    a = Autoscaler(replicas=2)
    a.expect_decision(Load(queue=8, ready=2), now=T0, want=2)
    d = a.expect_decision(Load(queue=12, ready=2), now=T0 + 10, want=3, reason="scale up")
    assert d.changed and d.next_state.last_scale_at == T0 + 10


def test_scale_up_stabilization_needs_the_rise_to_hold() -> None:
    a = Autoscaler(Scaling(max_replicas=20, scale_up_stabilization_seconds=30), replicas=2)
    a.expect_decision(Load(queue=8, ready=2), now=T0, want=2)
    a.expect_decision(Load(queue=12, ready=2), now=T0 + 10, want=2)
    a.expect_decision(Load(queue=12, ready=2), now=T0 + 30, want=2)
    a.expect_decision(Load(queue=12, ready=2), now=T0 + 40, want=3, reason="scale up")


def test_scale_down_waits_for_the_down_window() -> None:
    a = Autoscaler(replicas=2)
    a.expect_decision(Load(queue=20, ready=2), now=T0, want=5)
    for t in range(10, 300, 30):
        a.expect_decision(Load(queue=4, ready=5), now=T0 + t, want=5)
    a.expect_decision(Load(queue=4, ready=5), now=T0 + 5 * MIN + 1, want=1, reason="scale down")


def test_scale_down_follows_the_highest_of_the_window() -> None:
    a = Autoscaler(replicas=6)
    a.expect_decision(Load(queue=24, ready=6), now=T0, want=6)
    a.expect_decision(Load(queue=16, ready=6), now=T0 + 100, want=6)
    a.expect_decision(Load(queue=4, ready=6), now=T0 + 200, want=6)
    a.expect_decision(Load(queue=4, ready=6), now=T0 + 301, want=4)  # T0's 6 left the window
    a.expect_decision(Load(queue=4, ready=4), now=T0 + 401, want=1)


def test_latency_over_target_scales_up_with_a_short_queue() -> None:
    a = Autoscaler(replicas=2)
    d = a.expect_decision(Load(queue=2, ready=2, p95_ms=500), now=T0, want=4)
    assert "p95 latency" in d.reason


def test_latency_near_target_is_tolerated() -> None:
    a = Autoscaler(replicas=3)
    a.expect_decision(Load(queue=2, ready=3, p95_ms=270), now=T0, want=3)


def test_burst_panics_scales_at_once_and_holds() -> None:
    spec = Scaling(max_replicas=20, scale_up_stabilization_seconds=120)
    a = Autoscaler(spec, replicas=2)
    a.expect_decision(Load(queue=8, ready=2), now=T0, want=2)
    d = a.expect_decision(Load(queue=40, ready=2), now=T0 + 10, want=10, reason="panic")
    assert d.panic
    # Demand collapses: still panicking, so no scale-down even with a zero down window.
    a.spec = spec.model_copy(update={"scale_down_stabilization_seconds": 0})
    d = a.expect_decision(Load(queue=4, ready=10), now=T0 + 40, want=10, reason="panic")
    assert d.panic
    d = a.expect_decision(Load(queue=4, ready=10), now=T0 + 10 + PANIC_HOLD_SECONDS, want=1)
    assert not d.panic


def test_panic_keeps_climbing_past_the_rate_limit() -> None:
    a = Autoscaler(Scaling(max_replicas=50, max_scale_up_rate=2), replicas=2)
    a.expect_decision(Load(queue=80, ready=2), now=T0, want=4, reason="panic")
    a.expect_decision(Load(queue=80, ready=2), now=T0 + 10, want=8, reason="panic")
    a.expect_decision(Load(queue=80, ready=4), now=T0 + 20, want=16)
    a.expect_decision(Load(queue=80, ready=8), now=T0 + 30, want=20)


def test_capped_at_max_replicas() -> None:
    a = Autoscaler(Scaling(max_replicas=5), replicas=2)
    a.expect_decision(Load(queue=400, ready=2, p95_ms=5000), now=T0, want=5)


def test_never_below_min_replicas() -> None:
    a = Autoscaler(Scaling(min_replicas=3, max_replicas=8), replicas=3)
    a.expect_decision(Load(queue=0, ready=3), now=T0, want=3)
    a.expect_decision(Load(queue=0, ready=3), now=T0 + 3600, want=3)


def test_prometheus_down_holds_and_says_so() -> None:
    a = Autoscaler(replicas=4)
    a.expect_decision(Load(queue=16, ready=4), now=T0, want=4)
    d = a.expect_decision(MetricsWindow.unavailable(T0 + 10, "timeout"), now=T0 + 10, want=4)
    assert not d.metrics_available and "timeout" in d.reason
    for t in range(20, 3600, 300):  # an hour without metrics: still 4
        a.expect_decision(MetricsWindow.unavailable(T0 + t, "down"), now=T0 + t, want=4)
    d = a.expect_decision(Load(queue=16, ready=4), now=T0 + 3600, want=4)
    assert d.metrics_available


def test_no_scale_down_right_after_metrics_return() -> None:
    # Prometheus down for two minutes under steady load (the fault run found this): its first
    # windows back hold a rate from a sample or two and say half the load. The down window
    # counts from the return: the count holds, and the true rate is back before it ends.
    spec = Scaling(min_replicas=1, max_replicas=2, scale_down_stabilization_seconds=30)
    a = Autoscaler(spec, replicas=2)
    a.expect_decision(Load(queue=8, ready=2), now=T0, want=2)
    for t in range(10, 130, 10):
        a.expect_decision(MetricsWindow.unavailable(T0 + t, "down"), now=T0 + t, want=2)
    for t in range(130, 155, 5):
        a.expect_decision(Load(queue=0, ready=2, rate=0.0), now=T0 + t, want=2, reason="steady")
    a.expect_decision(Load(queue=8, ready=2), now=T0 + 160, want=2)


def test_stale_window_holds() -> None:
    a = Autoscaler(replicas=4)
    d = a.expect_decision(Load(queue=0, ready=4).at(T0), now=T0 + 5 * MIN, want=4)
    assert not d.metrics_available and "stale" in d.reason


def test_fail_static_still_obeys_a_lowered_max() -> None:
    a = Autoscaler(Scaling(max_replicas=3), replicas=5)
    a.expect_decision(MetricsWindow.unavailable(T0, "down"), now=T0, want=3)


STZ = Scaling(min_replicas=0, scale_to_zero=ScaleToZero(enabled=True, idle_seconds=600))


def test_scale_to_zero_after_idle_and_back_on_demand() -> None:
    a = Autoscaler(STZ, replicas=1)
    a.expect_decision(Load(queue=2, ready=1), now=T0, want=1)
    a.expect_decision(Load(queue=0, ready=1), now=T0 + 5 * MIN, want=1)
    a.expect_decision(Load(queue=0, ready=1), now=T0 + 10 * MIN - 1, want=1)
    a.expect_decision(Load(queue=0, ready=1), now=T0 + 10 * MIN, want=0, reason="scale to zero")
    a.expect_decision(Load(queue=0, ready=0), now=T0 + 11 * MIN, want=0, reason="staying at zero")
    # Queued demand (e.g. from a buffering gateway) brings it back at once, sized to the queue.
    a.expect_decision(Load(queue=9, ready=0), now=T0 + 12 * MIN, want=3, reason="activating")


def test_activation_from_zero_skips_the_up_window() -> None:
    spec = STZ.model_copy(update={"scale_up_stabilization_seconds": 300})
    a = Autoscaler(spec, replicas=0)
    a.expect_decision(Load(queue=1, ready=0), now=T0, want=1, reason="activating")


def test_requests_without_a_queue_still_count_as_demand() -> None:
    a = Autoscaler(STZ, replicas=1)
    for t in range(0, 3600, 60):
        a.expect_decision(Load(queue=0, ready=1, rate=0.1), now=T0 + t, want=1)


def test_scale_to_zero_off_keeps_min() -> None:
    a = Autoscaler(Scaling(min_replicas=1), replicas=1)
    a.expect_decision(Load(queue=0), now=T0, want=1)
    a.expect_decision(Load(queue=0), now=T0 + 86400, want=1)


def test_zero_held_when_metrics_vanish_at_zero() -> None:
    a = Autoscaler(STZ, replicas=0)
    a.expect_decision(MetricsWindow.unavailable(T0, "down"), now=T0, want=0)


def test_decision_explains_every_step() -> None:
    d = decide(SPEC, Load(queue=9, ready=2, p95_ms=300).at(T0), ScalingState(replicas=2), T0)
    names = [t.name for t in d.terms]
    for step in ("current", "metrics", "by_queue_depth", "by_latency", "recommendation", "panic"):
        assert step in names
    assert names[-1] == "replicas"


def test_explain_recorded_window(tmp_path: Path) -> None:
    recorded = tmp_path / "window.yaml"
    recorded.write_text(
        "spec: {minReplicas: 1, maxReplicas: 8, targets: {queueDepthPerReplica: 4}}\n"
        f"window: {{sampled_at: {T0}, queue_depth: 12, ready_replicas: 2, p95_latency_ms: 180}}\n"
        f"state: {{replicas: 2, recommendations: [[{T0 - 10}, 2]]}}\n"
        f"now: {T0 + 5}\n"
    )
    text = explain_recorded(recorded)
    assert text.splitlines()[0] == "scale 2 -> 3: scale up: queue depth wants 3"
    assert re.search(r"by_queue_depth +3  \(queue 12 / target 4\)", text), text
    assert '"replicas": 3' in text.splitlines()[-1]


def test_explain_says_metrics_are_missing() -> None:
    d = decide(SPEC, MetricsWindow.unavailable(T0, "timeout"), ScalingState(replicas=3), T0)
    assert "MetricsAvailable=False" in explain(d)
    assert explain(d).startswith("keep 3 -> 3: holding 3: metrics unavailable: timeout")
