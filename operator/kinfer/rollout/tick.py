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


def tick(
    isvc: dict[str, Any],
    source: MetricsSource,
    deployments: list[dict[str, Any]],
    now: datetime,
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
        verdict = analysis.analyze(source, meta["namespace"], meta["name"], canary.analysis, window)
        # At 100 % stable runs no pods to compare with: that step is judged on metrics alone.
        if canary.analysis.drift is not None and state is not None and state.weight < 100:
            found = drift.analyze(source, meta["namespace"], meta["name"], canary.analysis.drift, window)
            verdict = analysis.combine(verdict, found)
    controls = machine.parse_controls(meta.get("annotations"))
    promoted = canary is not None and stable_promoted(deployments, meta["name"], canary.model.uri)
    moved = machine.step(
        spec.rollout, state, verdict, controls, now,
        canary_ready=canary_ready(deployments), stable_promoted=promoted,
    )  # fmt: skip
    new_canary = None
    if moved.status is not None and canary is not None:
        new_canary = moved.status.model_copy(update={"revision": canary.model.uri}).model_dump(by_alias=True)
    out = RolloutTick(events=list(moved.events), reapply=bool(moved.actions))
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
