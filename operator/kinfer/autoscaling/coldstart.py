"""The cold start of a service's pods, measured from the API: created → Ready.

Pure: the reconcile pass hands in the pods it listed and the previous ``status.coldStart``; the
result goes back to status, so the estimate survives an operator restart. A pod counts once,
when it is Ready with no container restart (a restart's Ready time is not a cold start), and
only if it became Ready after the newest pod counted so far.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

MIN_WEIGHT = 0.2
"""A new pod weighs at least this much in the estimate, so it follows a slower image or node."""


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def measured(pod: dict[str, Any]) -> tuple[str, float] | None:
    """(Ready time, seconds from creation to Ready) of a pod that started cleanly, else None."""
    status = pod.get("status") or {}
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if not created or not ready or ready.get("status") != "True" or not ready.get("lastTransitionTime"):
        return None
    if any(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or []):
        return None
    seconds = (_time(ready["lastTransitionTime"]) - _time(created)).total_seconds()
    return (ready["lastTransitionTime"], seconds) if seconds >= 0 else None


def update(previous: dict[str, Any] | None, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The new status.coldStart, or ``previous`` when no pod is new (None: nothing measured)."""
    seconds = float(previous["seconds"]) if previous else 0.0
    samples = int(previous.get("samples", 0)) if previous else 0
    until = str(previous.get("measuredUntil", "")) if previous else ""
    fresh = sorted(
        m for m in map(measured, pods) if m is not None and (not until or _time(m[0]) > _time(until))
    )
    if not fresh:
        return previous
    for ready_at, value in fresh:
        samples += 1
        seconds += (value - seconds) * max(1 / samples, MIN_WEIGHT)
        until = ready_at
    return {"seconds": round(seconds, 1), "samples": samples, "measuredUntil": until}
