"""Measuring created→Ready of a service's pods from what the API shows."""

from __future__ import annotations

from typing import Any

from kinfer.api.v1alpha1 import ColdStartStatus
from kinfer.autoscaling.coldstart import MIN_WEIGHT, measured, update


def pod(created: str, ready: str | None, restarts: int = 0) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "Ready", "status": "True", "lastTransitionTime": ready}]
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"conditions": conditions, "containerStatuses": [{"restartCount": restarts}]},
    }


def test_a_clean_start_is_measured_others_are_not() -> None:
    assert measured(pod("2026-01-01T00:00:00Z", "2026-01-01T00:00:42Z")) == ("2026-01-01T00:00:42Z", 42.0)
    assert measured(pod("2026-01-01T00:00:00Z", None)) is None  # not Ready yet
    assert measured(pod("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", restarts=1)) is None
    unready = pod("2026-01-01T00:00:00Z", "2026-01-01T00:00:42Z")
    unready["status"]["conditions"][0]["status"] = "False"
    assert measured(unready) is None


def test_estimate_averages_then_follows_new_pods() -> None:
    first = update(None, [pod("2026-01-01T00:00:00Z", "2026-01-01T00:00:40Z")])
    assert first == {"seconds": 40.0, "samples": 1, "measuredUntil": "2026-01-01T00:00:40Z"}
    ColdStartStatus.model_validate(first)  # strict, as the CRD holds it
    # The same pod again (every pass lists it) changes nothing.
    assert update(first, [pod("2026-01-01T00:00:00Z", "2026-01-01T00:00:40Z")]) is first
    second = update(first, [pod("2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z")])
    assert second is not None and second["seconds"] == 50.0 and second["samples"] == 2
    # After many samples a new pod still moves it by at least MIN_WEIGHT of the difference.
    many = {"seconds": 50.0, "samples": 100, "measuredUntil": "2026-01-01T00:02:00Z"}
    slow = update(many, [pod("2026-01-01T01:00:00Z", "2026-01-01T01:02:30Z")])
    assert slow is not None and slow["seconds"] == round(50 + 100 * MIN_WEIGHT, 1)


def test_nothing_measured_yet() -> None:
    assert update(None, [pod("2026-01-01T00:00:00Z", None)]) is None
