"""Properties of ``decide`` over generated specs, windows and states."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from kinfer.api.v1alpha1 import ScaleToZero, Scaling, Targets
from kinfer.autoscaling.decision import (
    MAX_WINDOW_AGE_SECONDS,
    PANIC_HOLD_SECONDS,
    PANIC_THRESHOLD,
    ScalingState,
    decide,
)
from kinfer.autoscaling.window import MetricsWindow

T0 = 1_700_000_000.0
settings.register_profile("kinfer", max_examples=150, deadline=None)
settings.load_profile("kinfer")


@st.composite
def specs(draw: st.DrawFn, scale_to_zero: bool | None = None) -> Scaling:
    stz = draw(st.booleans()) if scale_to_zero is None else scale_to_zero
    lo = draw(st.integers(0 if stz else 1, 10))
    return Scaling(
        min_replicas=lo,
        max_replicas=draw(st.integers(max(lo, 1), 40)),
        targets=Targets(
            queue_depth_per_replica=draw(st.sampled_from([0.5, 1, 4, 8, 32])),
            p95_latency_ms=draw(st.sampled_from([50, 250, 1000])),
        ),
        scale_up_stabilization_seconds=draw(st.sampled_from([0, 30, 120])),
        scale_down_stabilization_seconds=draw(st.sampled_from([0, 60, 300])),
        max_scale_up_rate=draw(st.sampled_from([1, 2, 10])),
        scale_to_zero=ScaleToZero(enabled=stz, idle_seconds=draw(st.sampled_from([30, 600]))),
    )


queues = st.floats(0, 500, allow_nan=False)
latencies = st.one_of(st.none(), st.floats(0, 10_000, allow_nan=False))


@st.composite
def windows(draw: st.DrawFn, now: float = T0) -> MetricsWindow:
    window = MetricsWindow(
        sampled_at=now - draw(st.floats(0, 30)),
        queue_depth=draw(queues),
        inflight=draw(st.floats(0, 100)),
        p95_latency_ms=draw(latencies),
        request_rate=draw(st.floats(0, 100)),
        ready_replicas=draw(st.integers(0, 40)),
        max_batch_size=draw(st.sampled_from([None, 1, 8, 64])),
        cold_start_seconds=draw(st.one_of(st.none(), st.floats(1, 600))),
    )
    if not draw(st.booleans()):
        return window  # a runtime without the forward counters: sized by queue depth
    # Forward counters of a batching runtime: n forwards/s of mean b rows taking t s each.
    n, b, t = draw(st.floats(0.1, 100)), draw(st.floats(1, 32)), draw(st.floats(0.001, 2))
    return replace(
        window,
        rows_per_second=n * b,
        forwards_per_second=n,
        busy_seconds_per_second=n * t,
        rows_squared_per_second=n * b * b * draw(st.floats(1, 2)),
        row_seconds_per_second=n * b * t * draw(st.floats(0.5, 2)),
    )


@st.composite
def states(draw: st.DrawFn, now: float = T0) -> ScalingState:
    ages = draw(st.lists(st.floats(0, 400), max_size=8))
    recs = tuple(sorted((now - a, draw(st.integers(0, 40))) for a in ages))
    panic = draw(st.one_of(st.none(), st.floats(-60, 60)))
    return ScalingState(
        replicas=draw(st.integers(0, 40)),
        recommendations=recs,
        panic_until=None if panic is None else now + panic,
        panic_floor=draw(st.integers(0, 40)),
        last_demand_at=draw(st.one_of(st.none(), st.floats(now - 3600, now))),
        fit=draw(
            st.one_of(
                st.just((0.0, 0.0, 0.0, 0.0, 0.0, 0.0)),
                st.tuples(*[st.floats(0, 1000)] * 5, st.floats(now - 3600, now)),
            )
        ),
        history=tuple(
            sorted(
                (now - a, q, r)
                for a, q, r in draw(
                    st.lists(st.tuples(st.floats(1, 600), queues, st.floats(0, 500)), max_size=12)
                )
            )
        ),
    )


@given(specs(), windows(), states())
def test_result_within_bounds_or_zero_when_allowed(
    spec: Scaling, window: MetricsWindow, state: ScalingState
) -> None:
    d = decide(spec, window, state, T0)
    assert spec.min_replicas <= d.replicas <= spec.max_replicas or (
        d.replicas == 0 and spec.scale_to_zero.enabled
    )
    assert d.next_state.replicas == d.replicas


@given(specs(), windows(), states(), queues, queues)
def test_monotone_in_queue_depth(
    spec: Scaling, window: MetricsWindow, state: ScalingState, q1: float, q2: float
) -> None:
    lo, hi = sorted((q1, q2))
    low = decide(spec, replace(window, queue_depth=lo), state, T0)
    high = decide(spec, replace(window, queue_depth=hi), state, T0)
    assert low.replicas <= high.replicas


@given(specs(), windows(), states(), latencies, latencies)
def test_monotone_in_latency(
    spec: Scaling,
    window: MetricsWindow,
    state: ScalingState,
    p1: float | None,
    p2: float | None,
) -> None:
    lo, hi = sorted((p1, p2), key=lambda p: -1.0 if p is None else p)
    low = decide(spec, replace(window, p95_latency_ms=lo), state, T0)
    high = decide(spec, replace(window, p95_latency_ms=hi), state, T0)
    assert low.replicas <= high.replicas


@given(specs(), windows(), states(), st.booleans(), st.floats(0, 7200))
def test_never_scales_down_on_missing_or_stale_metrics(
    spec: Scaling, window: MetricsWindow, state: ScalingState, down: bool, age: float
) -> None:
    if down:
        window = MetricsWindow.unavailable(T0, "connection refused")
    else:
        window = replace(window, sampled_at=T0 - MAX_WINDOW_AGE_SECONDS - 1 - age)
    d = decide(spec, window, state, T0)
    assert d.replicas >= min(state.replicas, spec.max_replicas)
    assert not d.metrics_available
    # The hold is this tick's recommendation (a fall waits a full down window after metrics
    # return); nothing else is added.
    assert d.next_state.recommendations[-1] == (T0, d.replicas)
    assert set(d.next_state.recommendations[:-1]) <= set(state.recommendations)


@given(
    specs(scale_to_zero=False),
    states(),
    st.lists(st.tuples(st.floats(1, 60), windows()), min_size=1, max_size=30),
    windows(),
)
def test_no_scale_down_within_the_window_after_a_scale_up(
    spec: Scaling,
    state: ScalingState,
    later: list[tuple[float, MetricsWindow]],
    burst: MetricsWindow,
) -> None:
    first = decide(spec, burst, state, T0)
    if first.replicas <= state.replicas or "backlog" in first.reason:
        return  # a backlog's pods are a stock, not held by the window (panic holds them)
    peak, now, state = first.replicas, T0, first.next_state
    for step, window in later:
        now += step
        d = decide(spec, replace(window, sampled_at=now), state, now)
        if now < T0 + spec.scale_down_stabilization_seconds:
            assert d.replicas >= peak, d.reason
        peak, state = max(peak, d.replicas), d.next_state


@given(specs(), states(), st.integers(1, 40), st.floats(0, 300), windows())
def test_panic_scales_up_at_once_and_holds(
    spec: Scaling, state: ScalingState, ready: int, calm_after: float, calm: MetricsWindow
) -> None:
    # A burst big enough to panic, with no earlier panic or recommendations to muddy it.
    state = replace(
        state, replicas=ready, panic_until=None, panic_floor=0, recommendations=(), fit=(0.0,) * 6, history=()
    )  # type: ignore[arg-type]
    queue = PANIC_THRESHOLD * ready * spec.targets.queue_depth_per_replica * 1.01
    burst = MetricsWindow(sampled_at=T0, queue_depth=queue, request_rate=1, ready_replicas=ready)
    d = decide(spec, burst, state, T0)
    rate_cap = max(math.ceil(ready * spec.max_scale_up_rate), ready + 1)
    needed = math.ceil(queue / spec.targets.queue_depth_per_replica)
    assert d.panic
    # No up-stabilization wait, whatever the spec says: as far as rate and max allow, at once.
    assert d.replicas >= min(needed, rate_cap, spec.max_replicas)
    now = T0 + calm_after
    held = decide(spec, replace(calm, sampled_at=now), d.next_state, now)
    if now < T0 + PANIC_HOLD_SECONDS and held.metrics_available:
        assert held.replicas >= d.replicas


@given(specs(), windows(), states())
def test_zero_only_when_enabled_and_idle(spec: Scaling, window: MetricsWindow, state: ScalingState) -> None:
    d = decide(spec, window, state, T0)
    if d.replicas == 0:
        assert spec.scale_to_zero.enabled
        if d.metrics_available:
            assert not window.has_demand
            assert state.last_demand_at is not None
            assert T0 - state.last_demand_at >= spec.scale_to_zero.idle_seconds
        else:
            assert state.replicas == 0  # held at zero, never moved there without metrics


@given(
    specs(scale_to_zero=False),
    states(),
    windows(),
    st.lists(st.tuples(st.floats(1, 20), windows()), max_size=10),
)
def test_no_scale_down_while_panicking(
    spec: Scaling, state: ScalingState, burst: MetricsWindow, later: list[tuple[float, MetricsWindow]]
) -> None:
    d = decide(spec, burst, state, T0)
    now, floor = T0, d.replicas
    while d.panic and later:
        step, window = later.pop(0)
        now += step
        d = decide(spec, replace(window, sampled_at=now), d.next_state, now)
        if d.panic:
            assert d.replicas >= min(floor, spec.max_replicas), d.reason
            floor = max(floor, d.replicas)
