"""kopf wiring. Handlers are thin: find the InferenceService, call reconcile(), report.

Level-triggered: every event on an InferenceService or on an object it owns runs a full,
idempotent pass, so drift (an edited label, a deleted Service, a scaled Deployment) is put back
as soon as the watch reports it, and a slow timer catches anything a watch missed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from kinfer import operator_metrics as metrics
from kinfer.api import v1alpha1 as api
from kinfer.apply import ISVC_LABEL, Cluster, load_client_config
from kinfer.autoscaling import loop as autoscale
from kinfer.autoscaling.decision import ScalingState
from kinfer.autoscaling.prometheus import PrometheusSource, read_window
from kinfer.metrics_source import MetricsSource
from kinfer.reconcile import Outcome, reconcile
from kinfer.rollout import tick as rollout
from kinfer.settings import OperatorConfig, load_config

# Our own log lines, each naming the InferenceService; kopf's per-handler "succeeded" lines are
# left at DEBUG (see cli.operator) so that the log says what changed, not that a timer ran.
log = logging.getLogger("kinfer.operator")
MANAGED = {"app.kubernetes.io/managed-by": "kinfer"}
FINALIZER = "kinfer.dev/finalizer"
# Watches repair drift within seconds; the resync is only a safety net for a missed event.
RESYNC_SECONDS = 300.0
ROLLOUT_SECONDS = 10.0
# Read once at import: kopf registers timers before startup() loads the config file, so the
# interval comes from the environment (KINFER_AUTOSCALE_INTERVAL_SECONDS) or this default.
AUTOSCALE_SECONDS = float(os.environ.get("KINFER_AUTOSCALE_INTERVAL_SECONDS", "10"))
# Owned kinds whose changes trigger a pass; pods for status (readiness, crash loops, scheduling).
WATCHED = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("", "v1", "pods"),
)

# Set by `kinfer operator` before kopf starts.
CONFIG_PATH: str | None = None
METRICS_PORT = 8080
METRICS_ADDRESS = "127.0.0.1"


@dataclass
class Runtime:
    """Operator-wide state kept in kopf's memo."""

    cluster: Cluster
    config: OperatorConfig
    source: MetricsSource
    guard: threading.Lock = field(default_factory=threading.Lock)
    # The autoscaler's memory between ticks, per InferenceService (see autoscaling/loop.py).
    scaling: dict[tuple[str, str], ScalingState] = field(default_factory=dict)
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    queued: set[tuple[str, str]] = field(default_factory=set)

    def lock(self, key: tuple[str, str]) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())

    @contextmanager
    def turn(self, key: tuple[str, str]) -> Iterator[bool]:
        """One pass at a time per InferenceService; a pass already waiting covers later events."""
        with self.guard:
            if key in self.queued:
                yield False
                return
            self.queued.add(key)
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            with self.guard:
                self.queued.discard(key)
            yield True


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # kopf's own "handler succeeded" events are noise next to ours; keep its warnings.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # A killed leader's peering record expires after this; a standby takes over within it.
    settings.peering.lifetime = 15
    settings.execution.max_workers = 8
    # kopf's timers need a finalizer on each InferenceService; give it our own name.
    settings.persistence.finalizer = FINALIZER
    # A timer tick running when its InferenceService is deleted holds the finalizer until kopf
    # polls again: 60 s by default, which kept `kubectl delete` (and the garbage collector) waiting.
    settings.background.cancellation_polling = 1
    config = load_config(CONFIG_PATH)
    memo.runtime = Runtime(
        cluster=Cluster(load_client_config()),
        config=config,
        source=PrometheusSource(config.prometheus_url),
    )
    metrics.serve(METRICS_PORT, METRICS_ADDRESS)
    log.info(
        "kinfer operator started: metrics on %s:%d, config %s",
        METRICS_ADDRESS,
        METRICS_PORT,
        config.model_dump(mode="json"),
    )


def run_pass(memo: Any, namespace: str, name: str, trigger: str) -> None:
    runtime: Runtime = memo.runtime
    with runtime.turn((namespace, name)) as mine:
        if not mine:
            return
        started = time.monotonic()
        try:
            outcome = reconcile(runtime.cluster, runtime.config, namespace, name, datetime.now(UTC))
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            metrics.ERRORS.labels("reconcile").inc()
            metrics.RECONCILE_SECONDS.labels("error").observe(time.monotonic() - started)
            raise
        elapsed = time.monotonic() - started
        metrics.RECONCILES.labels(outcome.result).inc()
        metrics.RECONCILE_SECONDS.labels(outcome.result).observe(elapsed)
        report(outcome, namespace, name, trigger, elapsed)


def report(outcome: Outcome, namespace: str, name: str, trigger: str, elapsed: float) -> None:
    if outcome.result == "gone":
        metrics.forget(namespace, name)
    elif "desiredReplicas" in outcome.status:
        metrics.DESIRED_REPLICAS.labels(namespace, name).set(outcome.status["desiredReplicas"])
    for applied in outcome.applied:
        metrics.OBJECTS_APPLIED.labels(applied.kind, applied.action).inc()
    for kind, _ in outcome.deleted:
        metrics.OBJECTS_APPLIED.labels(kind, "deleted").inc()
    changed = [a for a in outcome.applied if a.action != "unchanged"]
    if changed or outcome.deleted or outcome.status_changed:
        log.info(
            "reconciled %s/%s (trigger %s, %.0f ms): %s%s%s",
            namespace,
            name,
            trigger,
            elapsed * 1000,
            ", ".join(f"{a.kind}/{a.name} {a.action}" for a in changed) or "objects unchanged",
            "".join(f", {k}/{n} deleted" for k, n in outcome.deleted),
            ", status updated" if outcome.status_changed else "",
        )
    if outcome.events:
        owner = _owner({"metadata": {"name": name, "namespace": namespace, "uid": outcome.uid}})
        for kind, reason, message in outcome.events:
            kopf.event(owner, type=kind, reason=reason, message=message)


def _owner(isvc: dict[str, Any]) -> kopf.Body:
    """Enough of the InferenceService for kopf to post an Event about it."""
    meta = isvc["metadata"]
    return kopf.Body(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
        }
    )


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def isvc_changed(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    if type != "DELETED" and namespace:
        run_pass(memo, namespace, name, "InferenceService")


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=RESYNC_SECONDS, sharp=False)
def resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    if namespace:
        run_pass(memo, namespace, name, "resync")


def _owned_changed(body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    owner = body.metadata.labels.get(ISVC_LABEL)
    if owner and namespace:
        run_pass(memo, namespace, owner, f"{body.get('kind', 'object')} {body.metadata.name}")


for _group, _version, _plural in WATCHED:
    kopf.on.event(_group, _version, _plural, labels={**MANAGED, ISVC_LABEL: kopf.PRESENT})(_owned_changed)


def _plain(value: Any) -> Any:
    """kopf's body views as plain JSON values."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def skip_invalid(memo: Any, namespace: str, name: str, body: Any) -> bool:
    """A spec the API server would refuse (an older CRD let it in): timers leave it alone.

    The pass records Ready=False, InvalidSpec (and one Warning event); a timer asks for that pass
    only while the condition is missing for this generation, so an invalid service costs one
    parse per tick and no traceback.
    """
    try:
        api.validate_spec(_plain(body.get("spec")))
    except api.InvalidSpec:
        status = body.get("status") or {}
        conditions: list[dict[str, Any]] = status.get("conditions") or []
        ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        generation = (body.get("metadata") or {}).get("generation")
        if ready.get("reason") != "InvalidSpec" or status.get("observedGeneration") != generation:
            run_pass(memo, namespace, name, "invalid spec")
        return True
    return False


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=ROLLOUT_SECONDS, sharp=False)
def rollout_timer(
    namespace: str | None, name: str, spec: Any, status: Any, body: Any, memo: Any, **_: Any
) -> None:
    """Canary steps: analysis, promotion and rollback, all recorded in status.canary."""
    # Most services run no canary: decide that from the watched body, without an API call.
    if not namespace or not ((spec.get("rollout") or {}).get("canary") or status.get("canary")):
        return
    if skip_invalid(memo, namespace, name, body):
        return
    runtime: Runtime = memo.runtime
    with runtime.lock((namespace, name)):
        isvc = runtime.cluster.get_isvc(namespace, name)
        if isvc is None:
            return
        deployments = runtime.cluster.deployments(namespace, name)
        try:
            result = rollout.tick(isvc, runtime.source, deployments, datetime.now(UTC))
        except Exception:
            metrics.ERRORS.labels("rollout").inc()
            raise
        if result.status_patch:
            runtime.cluster.patch_status(namespace, name, result.status_patch)
        canary = result.status_patch.get("canary", (isvc.get("status") or {}).get("canary"))
        metrics.CANARY_WEIGHT.labels(namespace, name).set((canary or {}).get("weight", 0))
        for event in result.events:
            log.info("rollout %s/%s: %s: %s", namespace, name, event.reason, event.message)
            kopf.event(_owner(isvc), type=event.type, reason=event.reason, message=event.message)
    if result.reapply:
        run_pass(memo, namespace, name, "rollout")


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=AUTOSCALE_SECONDS, sharp=False)
def autoscale_timer(namespace: str | None, name: str, spec: Any, body: Any, memo: Any, **_: Any) -> None:
    """Mode metrics: read the window, decide, record it, and scale through a reconcile pass."""
    if not namespace or (spec.get("scaling") or {}).get("mode", "metrics") != "metrics":
        return
    if skip_invalid(memo, namespace, name, body):
        return
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    window = read_window(runtime.source, namespace, name, now=time.time())
    with runtime.lock(key):
        isvc = runtime.cluster.get_isvc(namespace, name)
        if isvc is None:
            runtime.scaling.pop(key, None)
            return
        scaling = api.validate_spec(isvc["spec"]).scaling
        state = runtime.scaling.get(key) or autoscale.initial_state(scaling, isvc.get("status") or {})
        try:
            result = autoscale.tick(isvc, window, state, datetime.now(UTC))
        except Exception:
            metrics.ERRORS.labels("autoscale").inc()
            raise
        runtime.scaling[key] = result.decision.next_state
        if result.status_patch:
            runtime.cluster.patch_status(namespace, name, result.status_patch)
        for kind, reason, message in result.events:
            log.info("autoscale %s/%s: %s: %s", namespace, name, reason, message)
            kopf.event(_owner(isvc), type=kind, reason=reason, message=message)
    if result.decision.changed:
        metrics.SCALES.labels("up" if result.decision.replicas > result.decision.previous else "down").inc()
        run_pass(memo, namespace, name, "autoscale")
