"""kopf wiring. Handlers are thin: find the InferenceService, call reconcile(), report.

Level-triggered: an event on an object an InferenceService owns (watch.py, filtered by the API
server), or one that changes what a pass renders from, asks for a full, idempotent pass on the
work queue (workqueue.py: one at a time per service, failures retried with backoff), so drift (an
edited label, a deleted Service, a scaled Deployment) is put back as soon as the watch reports it,
and a slow timer catches anything a watch missed. With a Lease (leader.py) only its holder runs
passes and timers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from kinfer import operator_metrics as metrics
from kinfer import watch as owned_watch
from kinfer.api import v1alpha1 as api
from kinfer.apply import Cluster, load_client_config
from kinfer.autoscaling import loop as autoscale
from kinfer.autoscaling.decision import ScalingState
from kinfer.autoscaling.prometheus import PrometheusSource, read_window
from kinfer.leader import Elector, KubeLease, default_identity
from kinfer.metrics_source import MetricsSource
from kinfer.reconcile import Outcome, failure_status, reconcile
from kinfer.rollout import tick as rollout
from kinfer.settings import OperatorConfig, load_config
from kinfer.workqueue import WorkQueue

# Our own log lines, each naming the InferenceService; kopf's per-handler "succeeded" lines are
# left at DEBUG (see cli.operator) so that the log says what changed, not that a timer ran.
log = logging.getLogger("kinfer.operator")
FINALIZER = "kinfer.dev/finalizer"
# Watches of owned objects are server-side filtered, resume from their resourceVersion and list
# again after a 410; a new leader passes over everything. The resync is a safety net only, and
# with 1,000 services every 5 minutes it would be most of an idle operator's CPU.
RESYNC_SECONDS = 1800.0
ROLLOUT_SECONDS = 10.0
# Read once at import: kopf registers timers before startup() loads the config file, so the
# interval comes from the environment (KINFER_AUTOSCALE_INTERVAL_SECONDS) or this default.
AUTOSCALE_SECONDS = float(os.environ.get("KINFER_AUTOSCALE_INTERVAL_SECONDS", "10"))
PASS_WORKERS = 8
# Failures in a row before a failing pass shows on the object (then it keeps being retried).
FAILURES_REPORTED = 3

# Set by `kinfer operator` before kopf starts.
CONFIG_PATH: str | None = None
METRICS_PORT = 8080
METRICS_ADDRESS = "127.0.0.1"
NAMESPACES: list[str] = []  # empty: all namespaces
LEASE: tuple[str, str] | None = None  # (namespace, name) of the leader Lease; None: standalone
IDENTITY = ""  # this replica's name in the Lease; empty: host name and a random suffix
LEASE_CREATE = True  # create the Lease when missing (the chart renders it and says False)


@dataclass
class Runtime:
    """Operator-wide state kept in kopf's memo."""

    cluster: Cluster
    config: OperatorConfig
    source: MetricsSource
    # Passes run on the queue's workers, retried with backoff; None runs them inline (unit tests).
    queue: WorkQueue | None = None
    # Leader election; None: this replica always works (--standalone, unit tests).
    elector: Elector | None = None
    guard: threading.Lock = field(default_factory=threading.Lock)
    # The autoscaler's memory between ticks, per InferenceService (see autoscaling/loop.py).
    scaling: dict[tuple[str, str], ScalingState] = field(default_factory=dict)
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    # Per InferenceService, inputs() of the last event that asked for a pass.
    seen: dict[tuple[str, str], str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def lock(self, key: tuple[str, str]) -> threading.Lock:
        """Held by a pass and by the timers: one of them at a time per InferenceService."""
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # kopf's own "handler succeeded" events are noise next to ours; keep its warnings.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = 8
    # kopf's timers need a finalizer on each InferenceService; give it our own name.
    settings.persistence.finalizer = FINALIZER
    # A timer tick running when its InferenceService is deleted holds the finalizer until kopf
    # polls again: 60 s by default, which kept `kubectl delete` (and the garbage collector) waiting.
    settings.background.cancellation_polling = 1
    config = load_config(CONFIG_PATH)
    runtime = Runtime(
        cluster=Cluster(load_client_config()),
        config=config,
        source=PrometheusSource(config.prometheus_url),
    )
    runtime.queue = WorkQueue(
        work=lambda key, trigger: _pass(runtime, key, trigger),
        failed=lambda key, trigger, count, error: _failed(runtime, key, trigger, count, error),
    )
    runtime.queue.start(PASS_WORKERS)
    memo.runtime = runtime
    if LEASE is not None:
        # Passes and timers run only while this replica holds the Lease; on winning it, one pass
        # for every InferenceService catches up on what happened while it waited.
        namespace, lease_name = LEASE
        runtime.elector = Elector(
            KubeLease(runtime.cluster.client, namespace, lease_name),
            IDENTITY or default_identity(),
            on_start=lambda: _catch_up(memo),
            create=LEASE_CREATE,
        )
        runtime.elector.start()
    # Owned objects: watched with a server-side label selector (kopf filters labels client-side).
    owned_watch.start(
        NAMESPACES or [None],
        lambda namespace, name, trigger: run_pass(memo, namespace, name, trigger),
        runtime.stop,
    )
    metrics.serve(METRICS_PORT, METRICS_ADDRESS)
    log.info(
        "kinfer operator started: metrics on %s:%d, config %s",
        METRICS_ADDRESS,
        METRICS_PORT,
        config.model_dump(mode="json"),
    )


def run_pass(memo: Any, namespace: str, name: str, trigger: str) -> None:
    """Ask for a pass; the queue runs it (and retries it until it succeeds)."""
    runtime: Runtime = memo.runtime
    if not runtime.leading():
        return  # the leader does it; on taking over, this replica passes over everything
    if runtime.queue is None:
        _pass(runtime, (namespace, name), trigger)
    else:
        runtime.queue.add((namespace, name), trigger)


def _catch_up(memo: Any) -> None:
    runtime: Runtime = memo.runtime
    for namespace, name in runtime.cluster.isvc_keys(NAMESPACES):
        run_pass(memo, namespace, name, "leader elected")


def _pass(runtime: Runtime, key: tuple[str, str], trigger: str) -> None:
    namespace, name = key
    with runtime.lock(key):
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
        report(runtime, outcome, namespace, name, trigger, elapsed)


def _failed(runtime: Runtime, key: tuple[str, str], trigger: str, count: int, error: Exception) -> None:
    """A pass failed (it is retried with backoff). From the FAILURES_REPORTED-th failure in a row
    on, Degraded=True, reason ReconcileFailed, says so on the object, with one Warning event; the
    next successful pass writes Degraded from what it observes again."""
    namespace, name = key
    why = describe_error(error)
    log.warning(
        "pass for %s/%s (trigger %s) failed %d times in a row: %s", namespace, name, trigger, count, why
    )
    if count != FAILURES_REPORTED:
        return
    with runtime.lock(key):
        isvc = runtime.cluster.get_isvc(namespace, name)
        if isvc is None:
            return
        message = f"{count} reconcile passes in a row failed, retrying with backoff; last: {why}"
        patch = failure_status(isvc, message, datetime.now(UTC))
        runtime.cluster.patch_status(namespace, name, patch, isvc["metadata"].get("resourceVersion"))
    _event(runtime, _owner(isvc), "Warning", "ReconcileFailed", message)


def describe_error(error: Exception) -> str:
    """One line: an API error's status and reason, else the exception's own words."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if status is not None:
        return f"{type(error).__name__}: {status} {reason or ''}".strip()
    return f"{type(error).__name__}: {error}"[:300]


def _event(runtime: Runtime, owner: kopf.Body, type: str, reason: str, message: str) -> None:
    """kopf's event poster inside its handlers; from the queue's threads, which have no kopf
    context, an Event written by us."""
    try:
        kopf.event(owner, type=type, reason=reason, message=message)
    except LookupError:
        runtime.cluster.post_event(dict(owner), type, reason, message)


def report(
    runtime: Runtime, outcome: Outcome, namespace: str, name: str, trigger: str, elapsed: float
) -> None:
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
            _event(runtime, owner, kind, reason, message)


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


def inputs(body: Mapping[str, Any]) -> str:
    """What a pass renders from, as one string: an event that leaves it alone (a status write by
    the autoscaler or the rollout, kopf's finalizer) needs no pass. render() reads the spec
    (generation), metadata, and of status only the replica count and the canary's state."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return json.dumps(
        [
            meta.get("uid"),
            meta.get("generation"),
            _plain(meta.get("labels")),
            _plain(meta.get("annotations")),
            meta.get("deletionTimestamp"),
            _plain(status.get("desiredReplicas")),
            _plain(status.get("canary")),
        ],
        sort_keys=True,
    )


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def isvc_changed(type: str, namespace: str | None, name: str, body: Any, memo: Any, **_: Any) -> None:
    if not namespace:
        return
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    if type == "DELETED":
        runtime.seen.pop(key, None)
        return
    fingerprint = inputs(body)
    if runtime.seen.get(key) != fingerprint:
        runtime.seen[key] = fingerprint
        run_pass(memo, namespace, name, "InferenceService")


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=RESYNC_SECONDS, sharp=False)
def resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    if namespace:
        run_pass(memo, namespace, name, "resync")


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    runtime.stop.set()
    if runtime.queue is not None:
        runtime.queue.stop()
    if runtime.elector is not None:
        runtime.elector.stop()  # gives the Lease up: a standby takes over at once


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


def _has_canary(spec: Any, status: Any, **_: Any) -> bool:
    return bool((spec.get("rollout") or {}).get("canary") or status.get("canary"))


def _metrics_mode(spec: Any, **_: Any) -> bool:
    return bool((spec.get("scaling") or {}).get("mode", "metrics") == "metrics")


# `when`: kopf runs a timer only for objects it matches (re-checked on every change), so a
# service without a canary, or not in mode metrics, costs no ticks at all.
@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=ROLLOUT_SECONDS, sharp=False, when=_has_canary)
def rollout_timer(
    namespace: str | None, name: str, spec: Any, status: Any, body: Any, memo: Any, **_: Any
) -> None:
    """Canary steps: analysis, promotion and rollback, all recorded in status.canary."""
    if not memo.runtime.leading():
        return
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
        route = runtime.cluster.http_route(namespace, name)
        try:
            result = rollout.tick(isvc, runtime.source, deployments, datetime.now(UTC), route)
        except Exception:
            metrics.ERRORS.labels("rollout").inc()
            raise
        if result.status_patch:
            version = isvc["metadata"].get("resourceVersion")
            runtime.cluster.patch_status(namespace, name, result.status_patch, version)
        canary = result.status_patch.get("canary", (isvc.get("status") or {}).get("canary"))
        metrics.CANARY_WEIGHT.labels(namespace, name).set((canary or {}).get("weight", 0))
        for event in result.events:
            log.info("rollout %s/%s: %s: %s", namespace, name, event.reason, event.message)
            kopf.event(_owner(isvc), type=event.type, reason=event.reason, message=event.message)
    if result.reapply:
        run_pass(memo, namespace, name, "rollout")


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=AUTOSCALE_SECONDS, sharp=False, when=_metrics_mode)
def autoscale_timer(namespace: str | None, name: str, spec: Any, body: Any, memo: Any, **_: Any) -> None:
    """Mode metrics: read the window, decide, record it, and scale through a reconcile pass."""
    if not memo.runtime.leading():
        return
    if not namespace or (spec.get("scaling") or {}).get("mode", "metrics") != "metrics":
        return
    if skip_invalid(memo, namespace, name, body):
        return
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    server = str(((spec or {}).get("runtime") or {}).get("server", "kinfer"))
    window = read_window(runtime.source, namespace, name, now=time.time(), server=server)
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
            version = isvc["metadata"].get("resourceVersion")
            runtime.cluster.patch_status(namespace, name, result.status_patch, version)
        for kind, reason, message in result.events:
            log.info("autoscale %s/%s: %s: %s", namespace, name, reason, message)
            kopf.event(_owner(isvc), type=kind, reason=reason, message=message)
    if result.decision.changed:
        metrics.SCALES.labels("up" if result.decision.replicas > result.decision.previous else "down").inc()
        run_pass(memo, namespace, name, "autoscale")
