"""The autoscaler tick between window and status: what it writes and when it stays quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kinfer.api.v1alpha1 import Scaling, validate_spec
from kinfer.autoscaling.loop import initial_state, tick
from kinfer.autoscaling.window import MetricsWindow

from .conftest import ROOT, load

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def load_spec(isvc: dict[str, Any]) -> Scaling:
    return validate_spec(isvc["spec"]).scaling


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
