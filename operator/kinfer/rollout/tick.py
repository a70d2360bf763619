"""One rollout tick for one InferenceService: read analysis, step the machine, say what to write.

Pure apart from the MetricsSource it is given: the kopf timer in handlers.py patches the status
this returns and re-applies when the weight moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kinfer import status as status_mod
from kinfer.api import v1alpha1 as api
from kinfer.metrics_source import MetricsSource
from kinfer.render.render import split_replicas
from kinfer.rollout import analysis, drift, machine


@dataclass
class RolloutTick:
    status_patch: dict[str, Any] = field(default_factory=dict)
    events: list[machine.Event] = field(default_factory=list)
    reapply: bool = False


def _ready(d: dict[str, Any]) -> bool:
    """The Deployment's controller has seen its current spec and every wanted replica is ready."""
    st = d.get("status") or {}
    current = int(st.get("observedGeneration") or 0) >= int(d["metadata"].get("generation") or 0)
    return current and int(st.get("readyReplicas") or 0) >= status_mod.spec_replicas(d)


def canary_ready(deployments: list[dict[str, Any]]) -> bool:
    """Every desired canary replica runs the current template and is ready."""
    return any(d["metadata"]["name"].endswith("-canary") and _ready(d) for d in deployments)


def stable_promoted(deployments: list[dict[str, Any]], name: str, uri: str) -> bool:
    """Every stable replica runs model ``uri`` on the current template and is ready."""
    for d in deployments:
        if d["metadata"]["name"] == name:
            template = d["spec"]["template"]["metadata"].get("annotations") or {}
            st = d.get("status") or {}
            want = status_mod.spec_replicas(d)
            return (
                template.get("kinfer.dev/model-uri") == uri
                and _ready(d)
                and int(st.get("updatedReplicas") or 0) >= want
                and int(st.get("replicas") or 0) == want  # no pod of the old model left
            )
    return False


def route_accepted(route: dict[str, Any] | None) -> bool:
    """A Gateway implementation has accepted the route: its weights are what traffic follows."""
    parents = ((route or {}).get("status") or {}).get("parents") or []
    return any(
        c.get("type") == "Accepted" and c.get("status") == "True"
        for p in parents
        for c in p.get("conditions") or []
    )


def applied(name: str, route: dict[str, Any] | None, deployments: list[dict[str, Any]]) -> tuple[int, str]:
    """(percent of requests the canary gets, what decides it): the accepted route's canary
    weight, else the canary's share of the ready pods."""
    if route_accepted(route):
        assert route is not None
        weights = {b["name"]: int(b.get("weight", 1)) for b in route["spec"]["rules"][-1]["backendRefs"]}
        total = sum(weights.values())
        return (round(100 * weights.get(f"{name}-canary", 0) / total) if total else 0), "HTTPRoute"
    ready = {
        d["metadata"]["name"]: int((d.get("status") or {}).get("readyReplicas") or 0) for d in deployments
    }
    total = sum(ready.values())
    return (round(100 * ready.get(f"{name}-canary", 0) / total) if total else 0), "replicas"


def _step_note(routed: bool, weight: int, split: tuple[int, int]) -> str:
    """What a step's weight means on this cluster, for the CanaryStep event."""
    if routed:
        return f" (HTTPRoute and GRPCRoute weight {weight}%)"
    stable, canary = split
    share = round(100 * canary / (stable + canary)) if stable + canary else 0
    return (f" asked, but no Gateway has accepted the HTTPRoute: traffic follows the pods, "
            f"{canary} canary of {stable + canary} = {share}%")  # fmt: skip


def tick(
    isvc: dict[str, Any],
    source: MetricsSource,
    deployments: list[dict[str, Any]],
    now: datetime,
    route: dict[str, Any] | None = None,
) -> RolloutTick:
    meta = isvc["metadata"]
    spec = api.validate_spec(isvc["spec"])
    previous: dict[str, Any] = isvc.get("status") or {}
    raw = previous.get("canary")
    canary = spec.rollout.canary
    if canary is None and raw is None:
        return RolloutTick()
    state = api.CanaryStatus.model_validate(raw) if raw else None
    if state is not None and canary is not None and state.revision not in ("", canary.model.uri):
        state = None  # a new canary model: its rollout starts from the first step
    window = machine.analysis_window(state, now)
    verdict = None
    if window is not None and canary is not None:
        # A generative canary is judged on its p95 time to first token instead of request latency.
        generative = canary.model.format == "generative"
        verdict = analysis.analyze(
            source, meta["namespace"], meta["name"], canary.analysis, window, generative, spec.runtime.server
        )
        # At 100 % stable runs no pods to compare with: that step is judged on metrics alone.
        if canary.analysis.drift is not None and state is not None and state.weight < 100:
            found = drift.analyze(
                source, meta["namespace"], meta["name"], canary.analysis.drift, window, generative
            )
            verdict = analysis.combine(verdict, found)
    controls = machine.parse_controls(meta.get("annotations"))
    promoted = canary is not None and stable_promoted(deployments, meta["name"], canary.model.uri)
    moved = machine.step(
        spec.rollout, state, verdict, controls, now,
        canary_ready=canary_ready(deployments), stable_promoted=promoted,
    )  # fmt: skip
    new_canary = None
    routed = route_accepted(route)
    if moved.status is not None and canary is not None:
        weight, by = applied(meta["name"], route, deployments)
        update = {"revision": canary.model.uri, "applied_weight": weight, "applied_by": by}
        if spec.rollout.ab_test is not None:
            update.update(applied_weight=0, applied_by="")  # header routing: no weight applies
        new_canary = moved.status.model_copy(update=update).model_dump(by_alias=True)
    events = list(moved.events)
    if canary is not None and spec.rollout.ab_test is None and moved.status is not None:
        total = sum(status_mod.spec_replicas(d) for d in deployments)
        split = split_replicas(total, moved.status.weight)
        note = _step_note(routed, moved.status.weight, split)
        events = [e._replace(message=e.message + note) if e.reason == "CanaryStep" else e for e in events]
    out = RolloutTick(events=events, reapply=bool(moved.actions))
    if new_canary != raw:
        out.status_patch["canary"] = new_canary
    cond = machine.rollout_condition(moved.status)
    if cond is not None:
        generation = int(meta.get("generation") or 0)
        current = status_mod.Condition(cond.type, cond.status, cond.reason, cond.message)
        conditions = status_mod.merge(previous.get("conditions") or [], [current], generation, now)
        if conditions != previous.get("conditions"):
            out.status_patch["conditions"] = conditions
    return out
