"""Status from what the cluster shows: conditions a person can act on. Pure: pass `now` in.

Reads the Deployments kinfer owns and their pods; writes Kubernetes-convention conditions
(Ready, Progressing, Degraded) whose reasons and messages say what is wrong and where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}
CRASH_REASONS = {"CrashLoopBackOff", "RunContainerError", "CreateContainerConfigError"}


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) for the first thing keeping this pod from serving, if any."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return "Unschedulable", f"pod {name}: {cond.get('message') or 'cannot be scheduled'}"
    download = model_download_problem(pod)
    if download is not None:
        return download
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        detail = waiting.get("message") or reason
        if reason in IMAGE_PULL_REASONS:
            return (
                "ImagePullFailed",
                f"pod {name}: cannot pull image {container.get('image')}: {detail}",
            )
        if reason in CRASH_REASONS:
            restarts = container.get("restartCount", 0)
            last = ((container.get("lastState") or {}).get("terminated") or {}).get("message") or ""
            said = last_words(last)
            return "CrashLoop", (
                f"pod {name}: container {container['name']} keeps failing "
                f"({reason}, {restarts} restarts): {detail}" + (f"; it said: {said}" if said else "")
            )
    return None


INITIALIZER = "storage-initializer"
TRITON_INIT = "triton-repository"
# How a process says why it stops: Triton's "E1202 ... model_lifecycle.cc:...] failed to load
# 'm' version 1: Internal: ...", kinfer-runtime's JSON "level": "error" line.
_ERROR_MARKERS = ("failed to load", '"level": "error"', '"level":"error"', "error:", "Error:")


def last_words(message: str) -> str:
    """The line of a termination message (a log tail) that says why: the first holding the most
    specific error marker (Triton prints the cause, then other errors and a summary), else the
    last line; at most 500 characters."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    for marker in _ERROR_MARKERS:  # in order: the most specific first
        cause = next((line for line in lines if marker in line), None)
        if cause is not None:
            return cause[:500]
    return lines[-1][:500]


def model_download_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """The storage initializer's failure, in its own words (its termination message names the
    cause and the URI: "Forbidden: s3://bucket/key: HTTP 403 ..."), or a Secret it cannot get;
    or the Triton repository's (a config.pbtxt that disagrees with signature.json)."""
    name = pod["metadata"]["name"]
    for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if container.get("name") not in (INITIALIZER, TRITON_INIT):
            continue
        failed = "ModelDownloadFailed" if container["name"] == INITIALIZER else "ModelRepositoryInvalid"
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") == "CreateContainerConfigError":
            return failed, f"pod {name}: {waiting.get('message') or waiting['reason']}"
        # Done is done; while it runs or waits again, the last failure says why.
        term = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
        if "terminated" in state and term and term.get("exitCode", 0) == 0:
            continue
        if term and term.get("exitCode", 0) != 0:
            # The termination message, or the log's last line (FallbackToLogsOnError).
            lines = (term.get("message") or "").strip().splitlines()
            message = lines[-1].strip() if lines else f"exit code {term.get('exitCode')}"
            restarts = container.get("restartCount", 0)
            return failed, f"pod {name}: {message} ({restarts} retries)"
    return None


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ready_since(pod: dict[str, Any]) -> datetime | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def last_start(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """status.lastStart from the most recently ready pod's own timestamps and the storage
    initializer's report (its termination message): None while no pod is ready."""
    ready = [(since, pod) for pod in pods if (since := _ready_since(pod)) is not None]
    if not ready:
        return None
    since, pod = max(ready, key=lambda r: r[0])
    status = pod.get("status") or {}
    out: dict[str, Any] = {"pod": pod["metadata"]["name"]}
    created = _time(pod["metadata"].get("creationTimestamp"))
    if created is not None:
        out["createdToReadySeconds"] = round((since - created).total_seconds(), 3)
    server: dict[str, Any] = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == "server"), {}
    )
    started = _time(((server.get("state") or {}).get("running") or {}).get("startedAt"))
    if started is not None:
        out["startSeconds"] = round((since - started).total_seconds(), 3)
    for init in status.get("initContainerStatuses") or []:
        term = (init.get("state") or {}).get("terminated") or {}
        if init.get("name") == INITIALIZER and term.get("exitCode") == 0:
            try:
                report = json.loads(term.get("message") or "")
            except ValueError:
                break
            if isinstance(report, dict):
                out["downloadSeconds"] = round(float(report.get("download_seconds", 0.0)), 3)
                out["downloadBytes"] = int(report.get("bytes", 0))
                out["cacheHit"] = bool(report.get("cache_hit"))
    return out


def last_start_message(cold: dict[str, Any]) -> str:
    """The event text for a new lastStart."""
    parts = [f"pod {cold['pod']}"]
    if "downloadSeconds" in cold:
        source = "node cache hit" if cold.get("cacheHit") else f"{cold.get('downloadBytes', 0) / 1e6:.1f} MB"
        parts.append(f"model fetched in {cold['downloadSeconds']:.2f} s ({source})")
    if "startSeconds" in cold:
        parts.append(f"server ready {cold['startSeconds']:.2f} s after start (load, warm-up)")
    if "createdToReadySeconds" in cold:
        parts.append(f"created to Ready {cold['createdToReadySeconds']:.2f} s")
    return ", ".join(parts)


def conditions(
    *,
    deployments: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    desired: int,
) -> list[Condition]:
    """Ready, Progressing and Degraded for the current observation."""
    problems = [p for p in (pod_problem(pod) for pod in pods) if p is not None]
    stable = next((d for d in deployments if "-canary" not in d["metadata"]["name"]), None)
    ready = sum(_int(d, "readyReplicas") for d in deployments)
    wanted = sum(spec_replicas(d) for d in deployments)
    updated = sum(_int(d, "updatedReplicas") for d in deployments)
    observed = all(_int(d, "observedGeneration") >= d["metadata"].get("generation", 0) for d in deployments)
    settled = observed and ready >= wanted and updated >= wanted

    if problems:
        reason, message = problems[0]
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more pods)"
        degraded = Condition("Degraded", "True", reason, message)
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "no pod reports a problem")

    if stable is None:
        ready_cond = Condition("Ready", "False", "NotCreated", "the stable Deployment does not exist yet")
    elif desired == 0 and wanted == 0:
        ready_cond = Condition("Ready", "True", "ScaledToZero", "scaled to zero; the next request wakes it")
    elif ready >= 1 and _int(stable, "readyReplicas") >= 1:
        ready_cond = Condition("Ready", "True", "Serving", f"{ready}/{wanted} replicas ready")
    elif problems:
        ready_cond = Condition("Ready", "False", degraded.reason, degraded.message)
    else:
        ready_cond = Condition(
            "Ready",
            "False",
            "Starting",
            f"{ready}/{wanted} replicas ready; waiting for the model to load",
        )

    if settled:
        progressing = Condition("Progressing", "False", "Stable", "every replica runs the current spec")
    elif not observed:
        progressing = Condition("Progressing", "True", "Updating", "a spec change is rolling out")
    else:
        progressing = Condition(
            "Progressing",
            "True",
            "ScalingUp" if updated >= wanted else "Updating",
            f"{ready}/{wanted} replicas ready, {updated} on the current spec",
        )
    return [ready_cond, progressing, degraded]


def spec_replicas(deployment: dict[str, Any]) -> int:
    """spec.replicas, which the API server defaults to 1 when a manifest leaves it out."""
    value = (deployment.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def _int(obj: dict[str, Any], field: str) -> int:
    return int((obj.get("status") or {}).get(field) or 0)


def merge(
    previous: list[dict[str, Any]], current: list[Condition], generation: int, now: datetime
) -> list[dict[str, Any]]:
    """Conditions with `current` written over `previous`, in a stable order (existing types keep
    their place, new ones go last), so that an unchanged observation is an unchanged list.
    lastTransitionTime moves only when a condition's status changes; conditions of other types
    (written by the autoscaler or the rollout) stay as they are."""
    fresh = {c.type: c for c in current}
    seen = {c.get("type") for c in previous}
    out: list[dict[str, Any]] = []
    for before in [*previous, *({"type": c.type} for c in current if c.type not in seen)]:
        cond = fresh.get(before.get("type", ""))
        if cond is None:
            out.append(before)
            continue
        since = rfc3339(now)
        if before.get("status") == cond.status:
            since = before.get("lastTransitionTime") or since
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return out
