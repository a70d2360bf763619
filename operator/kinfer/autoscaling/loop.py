"""One autoscaler tick for one InferenceService, between reading the window and writing status.

Pure: the kopf timer in handlers.py reads the window (prometheus.read_window), keeps the
ScalingState in memory between ticks, patches the status this returns, and re-applies the
Deployments when the count changed (render reads status.desiredReplicas).

Status is written only when something a person would see changed (the count, a condition, the
rounded metrics), and the autoscaler's state (status.autoscaler: stabilization history, panic,
learned throughput, rate history) when the count or the panic changes and otherwise at most
every SAVE_SECONDS while the service sees demand. A new leader starts from that state and
status.desiredReplicas; with no saved state decide() waits a full scale-down window before
removing anything.

The window gets two inputs that are not Prometheus': the runtime's maxBatchSize from the spec
and the measured cold start (status.coldStart, see coldstart.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kinfer import status as status_mod
from kinfer.api import v1alpha1 as api
from kinfer.autoscaling.decision import Decision, ScalingState, decide
from kinfer.autoscaling.window import MetricsWindow
from kinfer.render.render import total_replicas


@dataclass
class ScaleTick:
    decision: Decision
    status_patch: dict[str, Any] = field(default_factory=dict)
    # (type, reason, message) for Events on the InferenceService.
    events: list[tuple[str, str, str]] = field(default_factory=list)


SAVE_SECONDS = 60.0
"""status.autoscaler is rewritten at most this often when nothing else changed: a new leader
loses at most this much history."""


def initial_state(spec: api.Scaling, status: dict[str, Any]) -> ScalingState:
    """The state a fresh operator (or a new leader) starts from: the count that runs now, and
    what the previous leader saved in status.autoscaler."""
    saved = status.get("autoscaler")
    state = ScalingState.from_dict(saved) if isinstance(saved, dict) else ScalingState()
    return replace(state, replicas=total_replicas(spec, status))


def saved_state(state: ScalingState, now: float) -> dict[str, Any]:
    """status.autoscaler for a state (replicas live in desiredReplicas)."""
    data = {k: v for k, v in state.to_dict().items() if k != "replicas" and v is not None}
    return {**data, "savedAt": now}


def inputs(isvc: dict[str, Any], window: MetricsWindow) -> MetricsWindow:
    """The window with the spec's maxBatchSize and the measured cold start filled in."""
    spec = api.validate_spec(isvc["spec"])
    cold = ((isvc.get("status") or {}).get("coldStart") or {}).get("seconds")
    return replace(
        window,
        max_batch_size=spec.runtime.batching.max_batch_size,
        cold_start_seconds=None if cold is None else float(cold),
    )


def observed_metrics(window: MetricsWindow, previous: dict[str, Any]) -> dict[str, Any]:
    """status.metrics, rounded so that noise below what a person reads does not write status."""
    values = {
        "queueDepth": round(window.queue_depth_per_replica, 2),
        "p95LatencyMs": None if window.p95_latency_ms is None else round(window.p95_latency_ms, 1),
        "requestsPerSecond": round(window.request_rate, 2),
    }
    if all(previous.get(k) == v for k, v in values.items()):
        return previous
    sampled = datetime.fromtimestamp(window.sampled_at, UTC)
    return {
        **{k: v for k, v in values.items() if v is not None},
        "sampledAt": status_mod.rfc3339(sampled),
    }


def tick(isvc: dict[str, Any], window: MetricsWindow, state: ScalingState, now: datetime) -> ScaleTick:
    spec = api.validate_spec(isvc["spec"]).scaling
    previous: dict[str, Any] = isvc.get("status") or {}
    generation = int(isvc["metadata"].get("generation") or 0)
    window = inputs(isvc, window)
    decision = decide(spec, window, state, now.timestamp())
    out = ScaleTick(decision)
    patch = out.status_patch

    if decision.metrics_available:
        available = status_mod.Condition(
            "MetricsAvailable", "True", "Sampled", "queue depth and latency read from Prometheus"
        )
        metrics = observed_metrics(window, previous.get("metrics") or {})
        if metrics != previous.get("metrics"):
            patch["metrics"] = metrics
    else:
        # decision.reason says why the window was unusable (down, stale, no pod reporting).
        available = status_mod.Condition("MetricsAvailable", "False", "MetricsUnavailable", decision.reason)
    active = status_mod.Condition(
        "ScalingActive",
        "True",
        "Panic" if decision.panic else "Scaling",
        decision.reason,
    )
    conditions = status_mod.merge(previous.get("conditions") or [], [available, active], generation, now)
    # The reason text of ScalingActive changes every tick; write it only with something else.
    was = {c["type"]: c.get("status") for c in previous.get("conditions") or []}
    if was.get("MetricsAvailable") != available.status or was.get("ScalingActive") != "True":
        patch["conditions"] = conditions
    if decision.changed:
        patch["conditions"] = conditions
        patch["desiredReplicas"] = decision.replicas
        patch["lastScaleTime"] = status_mod.rfc3339(now)
        patch["lastScaleReason"] = decision.reason
        out.events.append(
            (
                "Normal",
                "Scaled",
                f"{decision.previous} → {decision.replicas} replicas: {decision.reason}",
            )
        )
    saved = previous.get("autoscaler") or {}
    panic_changed = (saved.get("panicUntil") is None) != (decision.next_state.panic_until is None)
    due = now.timestamp() - float(saved.get("savedAt") or 0) >= SAVE_SECONDS
    # An idle service saves nothing periodically: the last save, made while demand was seen,
    # already holds what a new leader needs, and an idle service costs no API writes.
    idle = window.request_rate == 0 and window.queue_depth == 0 and window.inflight == 0
    if decision.metrics_available and (decision.changed or panic_changed or (due and not idle)):
        patch["autoscaler"] = saved_state(decision.next_state, now.timestamp())
    if was.get("MetricsAvailable") == "True" and available.status == "False":
        out.events.append(("Warning", "MetricsUnavailable", available.message))
    elif was.get("MetricsAvailable") == "False" and available.status == "True":
        out.events.append(("Normal", "MetricsAvailable", "Prometheus answers again"))
    return out
