"""The autoscaler tick between window and status: what it writes and when it stays quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kinfer.api.v1alpha1 import InferenceServiceSpec, InferenceServiceStatus, Scaling, validate_spec
from kinfer.autoscaling.loop import initial_state, inputs, tick
from kinfer.autoscaling.window import MetricsWindow

from .conftest import ROOT, load

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def load_spec(isvc: dict[str, Any]) -> Scaling:
    return validate_spec(isvc["spec"]).scaling


def load_full(isvc: dict[str, Any]) -> InferenceServiceSpec:
    return validate_spec(isvc["spec"])


def _isvc() -> dict[str, Any]:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    isvc["metadata"]["generation"] = 1
    isvc["status"] = {"desiredReplicas": 1}
    return isvc


def _window(at: datetime, queue: float, ready: int = 1) -> MetricsWindow:
    return MetricsWindow(
        sampled_at=at.timestamp(),
        queue_depth=queue,
        ready_replicas=ready,
        inflight=queue,
        request_rate=10.0 if queue else 0.0,
    )


def _apply(isvc: dict[str, Any], patch: dict[str, Any]) -> None:
    isvc["status"].update(patch)


def test_queue_pressure_scales_up_and_records_why() -> None:
    isvc = _isvc()
    state = initial_state(load_spec(isvc), isvc["status"])
    result = tick(isvc, _window(T0, queue=12), state, T0)
    assert result.decision.replicas == 3
    patch = result.status_patch
    assert patch["desiredReplicas"] == 3
    assert patch["lastScaleTime"] == "2026-11-27T12:00:00Z"
    assert "queue depth" in patch["lastScaleReason"]
    assert patch["metrics"]["queueDepth"] == 12.0
    assert result.events[0][:2] == ("Normal", "Scaled")


def test_idle_service_writes_nothing_after_the_first_tick() -> None:
    isvc = _isvc()
    state = initial_state(load_spec(isvc), isvc["status"])
    first = tick(isvc, _window(T0, queue=0), state, T0)
    _apply(isvc, first.status_patch)
    second = tick(
        isvc,
        _window(T0 + timedelta(seconds=10), queue=0),
        first.decision.next_state,
        T0 + timedelta(seconds=10),
    )
    assert second.status_patch == {} and second.events == []


def test_idle_service_does_not_save_its_state_every_minute() -> None:
    isvc = _isvc()
    state = initial_state(load_spec(isvc), isvc["status"])
    first = tick(isvc, _window(T0, queue=0), state, T0)
    _apply(isvc, first.status_patch)
    at, state = T0, first.decision.next_state
    for _ in range(3):  # well past SAVE_SECONDS, still no demand
        at += timedelta(seconds=70)
        quiet = tick(isvc, _window(at, queue=0), state, at)
        assert "autoscaler" not in quiet.status_patch, quiet.status_patch
        state = quiet.decision.next_state
    busy = tick(isvc, _window(at + timedelta(seconds=70), queue=1), state, at + timedelta(seconds=70))
    assert "autoscaler" in busy.status_patch  # demand again: saved when due


def test_prometheus_down_holds_and_says_so_once() -> None:
    isvc = _isvc()
    state = initial_state(load_spec(isvc), isvc["status"])
    first = tick(isvc, _window(T0, queue=0), state, T0)
    _apply(isvc, first.status_patch)
    down = MetricsWindow.unavailable(T0.timestamp(), "connection refused")
    second = tick(isvc, down, first.decision.next_state, T0 + timedelta(seconds=10))
    assert second.decision.replicas == 1 and not second.decision.changed
    cond = {c["type"]: c for c in second.status_patch["conditions"]}["MetricsAvailable"]
    assert (cond["status"], cond["reason"]) == ("False", "MetricsUnavailable")
    assert "connection refused" in cond["message"]
    assert second.events == [("Warning", "MetricsUnavailable", cond["message"])]
    _apply(isvc, second.status_patch)
    third = tick(isvc, down, second.decision.next_state, T0 + timedelta(seconds=20))
    assert third.status_patch == {} and third.events == []


def test_state_saved_in_status_carries_over_to_a_new_leader() -> None:
    isvc = _isvc()
    state = initial_state(load_spec(isvc), isvc["status"])
    up = tick(isvc, _window(T0, queue=12), state, T0)
    _apply(isvc, up.status_patch)
    saved = isvc["status"]["autoscaler"]
    InferenceServiceStatus.model_validate(isvc["status"])  # strict: what the CRD's schema holds
    assert saved["recommendations"][-1] == [T0.timestamp(), 3]
    # A new leader reads status: the scale-up is in its down window, so a quiet minute later it
    # holds 3 instead of dropping to 1 (a fresh state would too, but only from its first tick).
    fresh = initial_state(load_spec(isvc), isvc["status"])
    assert fresh.replicas == 3 and fresh.recommendations == up.decision.next_state.recommendations
    later = T0 + timedelta(seconds=60)
    assert tick(isvc, _window(later, queue=0), fresh, later).decision.replicas == 3
    # Saved again only when due, or when the count or panic changes.
    quiet = tick(
        isvc,
        _window(T0 + timedelta(seconds=10), queue=12),
        up.decision.next_state,
        T0 + timedelta(seconds=10),
    )
    assert "autoscaler" not in quiet.status_patch


def test_the_decision_sees_the_measured_cold_start_and_max_batch() -> None:
    isvc = _isvc()
    isvc["status"]["coldStart"] = {"seconds": 12.5, "samples": 3, "measuredUntil": "2026-11-27T11:00:00Z"}
    state = initial_state(load_spec(isvc), isvc["status"])
    terms = {t.name: t for t in tick(isvc, _window(T0, queue=2), state, T0).decision.terms}
    assert terms["cold_start_seconds"].value == 12.5 and "measured" in terms["cold_start_seconds"].note
    assert (
        inputs(isvc, _window(T0, queue=2)).max_batch_size == load_full(isvc).runtime.batching.max_batch_size
    )
