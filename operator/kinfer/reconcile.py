"""One pass of the control loop for one InferenceService: render, apply, prune, observe.

Safe to run any number of times: server-side apply of an unchanged object writes nothing, and
status is patched only when it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kinfer import status as status_mod
from kinfer.api.v1alpha1 import CanaryStatus, validate_spec
from kinfer.api.validation import problems
from kinfer.apply import Applied, ClusterAPI, NamespaceTerminating, key, stamped, up_to_date
from kinfer.autoscaling import coldstart
from kinfer.render import render
from kinfer.render.render import HTTP_PORT
from kinfer.rollout.machine import effective_model
from kinfer.settings import OperatorConfig


@dataclass
class Outcome:
    """What a pass did, for events, metrics and logs."""

    applied: list[Applied] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_changed: bool = False
    # (type, reason, message) for Kubernetes Events on the InferenceService.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    result: str = "ok"  # ok | invalid | gone
    uid: str = ""


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def reconcile(
    cluster: ClusterAPI, config: OperatorConfig, namespace: str, name: str, now: datetime
) -> Outcome:
    outcome = Outcome()
    isvc = cluster.get_isvc(namespace, name)
    if isvc is None or isvc["metadata"].get("deletionTimestamp"):
        outcome.result = "gone"  # the garbage collector removes what it owned
        return outcome
    generation = int(isvc["metadata"].get("generation") or 0)
    outcome.uid = isvc["metadata"]["uid"]
    previous: dict[str, Any] = isvc.get("status") or {}

    found = problems(isvc)
    if found:
        # The CRD's rules should have refused it; an older CRD may not have. Touch nothing.
        outcome.result = "invalid"
        message = "; ".join(found)
        cond = status_mod.Condition("Ready", "False", "InvalidSpec", message)
        new_status = {
            "observedGeneration": generation,
            "conditions": status_mod.merge(previous.get("conditions") or [], [cond], generation, now),
        }
        _finish(cluster, outcome, isvc, previous, new_status)
        if _condition(previous, "Ready").get("reason") != "InvalidSpec":
            outcome.events.append(("Warning", "InvalidSpec", message))
        return outcome

    if config.gateway_api is None:
        served = cluster.installed("gateway.networking.k8s.io/v1", "HTTPRoute")
        config = config.model_copy(update={"gateway_api": served})
    desired = render(isvc, config)  # problems() passed: the spec parses
    existing = cluster.owned(namespace, name)
    for rendered in desired:
        obj = stamped(rendered)
        before = existing.get(key(obj))
        if up_to_date(obj, before):  # nothing to write: no API call at all
            outcome.applied.append(Applied(obj["kind"], obj["metadata"]["name"], "unchanged"))
            continue
        try:
            result = cluster.apply(obj, before)
        except NamespaceTerminating:
            outcome.result = "gone"  # the namespace (and this InferenceService) is going away
            return outcome
        outcome.applied.append(result)
        if result.action != "unchanged":
            outcome.events.append(
                (
                    "Normal",
                    result.action.capitalize(),
                    f"{result.kind} {result.name} {result.action}",
                )
            )
    wanted = {key(obj) for obj in desired}
    for obj_key, obj in existing.items():
        # Only prune what this InferenceService owns; a labelled look-alike is left alone.
        if obj_key not in wanted and _owned_by(obj, outcome.uid):
            cluster.delete(obj)
            outcome.deleted.append(obj_key)
            outcome.events.append(("Normal", "Deleted", f"{obj_key[0]} {obj_key[1]} no longer needed"))

    # The Deployments' status is what the conditions are made of: read again after a write,
    # else the list the pass began with is current.
    if any(a.action != "unchanged" for a in outcome.applied) or outcome.deleted:
        deployments = cluster.deployments(namespace, name)
    else:
        deployments = [obj for (kind, _), obj in existing.items() if kind == "Deployment"]
    pods = cluster.pods(namespace, name)
    replicas = sum(status_mod.spec_replicas(d) for d in deployments)
    spec = validate_spec(isvc["spec"])
    canary_state = previous.get("canary")
    effective = effective_model(spec, CanaryStatus.model_validate(canary_state) if canary_state else None)
    # In mode metrics the autoscaler owns desiredReplicas; otherwise it is what runs.
    if spec.scaling.mode == "metrics":
        desired_replicas = int(previous.get("desiredReplicas", replicas))
    else:
        desired_replicas = replicas
    current = status_mod.conditions(deployments=deployments, pods=pods, desired=desired_replicas)
    new_status = {
        "observedGeneration": generation,
        "conditions": status_mod.merge(previous.get("conditions") or [], current, generation, now),
        "replicas": sum(int((d.get("status") or {}).get("replicas") or 0) for d in deployments),
        "readyReplicas": sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in deployments),
        "desiredReplicas": desired_replicas,
        "effectiveModelUri": effective.uri,
        "url": f"http://{name}.{namespace}.svc:{HTTP_PORT}",
    }
    cold_start = coldstart.update(previous.get("coldStart"), pods)
    if cold_start is not None:
        new_status["coldStart"] = cold_start
    last = status_mod.last_start(pods)
    if last is not None:
        new_status["lastStart"] = last
        if (previous.get("lastStart") or {}).get("pod") != last["pod"]:
            outcome.events.append(("Normal", "ModelStarted", status_mod.last_start_message(last)))
    _finish(cluster, outcome, isvc, previous, new_status)
    degraded = next(c for c in current if c.type == "Degraded")
    was_degraded = _condition(previous, "Degraded").get("status") == "True"
    if degraded.status == "True" and (
        not was_degraded or _condition(previous, "Degraded").get("reason") != degraded.reason
    ):
        outcome.events.append(("Warning", degraded.reason, degraded.message))
    elif degraded.status == "False" and was_degraded:
        outcome.events.append(("Normal", "Recovered", "no pod reports a problem any more"))
    return outcome


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _finish(
    cluster: ClusterAPI,
    outcome: Outcome,
    isvc: dict[str, Any],
    previous: dict[str, Any],
    new_status: dict[str, Any],
) -> None:
    """Patch status only when a field the operator writes has changed."""
    outcome.status = new_status
    if any(previous.get(k) != v for k, v in new_status.items()):
        meta = isvc["metadata"]
        cluster.patch_status(meta["namespace"], meta["name"], new_status, meta.get("resourceVersion"))
        outcome.status_changed = True


def failure_status(isvc: dict[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """The status patch for passes that keep failing: Degraded=True, reason ReconcileFailed.
    Other conditions stay; the next pass that succeeds writes Degraded from what it observes."""
    previous: dict[str, Any] = isvc.get("status") or {}
    generation = int(isvc["metadata"].get("generation") or 0)
    cond = status_mod.Condition("Degraded", "True", "ReconcileFailed", message)
    return {"conditions": status_mod.merge(previous.get("conditions") or [], [cond], generation, now)}
