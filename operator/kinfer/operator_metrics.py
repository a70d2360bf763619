"""The operator's own Prometheus metrics, served on /metrics."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "kinfer_operator_reconcile_total",
    "Reconcile passes, by result (ok, invalid, gone, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "kinfer_operator_reconcile_duration_seconds",
    "Time one reconcile pass took, by result.",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECTS_APPLIED = Counter(
    "kinfer_operator_objects_applied_total",
    "Objects server-side applied, by kind and action (created, updated, unchanged, deleted).",
    ["kind", "action"],
)
ERRORS = Counter(
    "kinfer_operator_errors_total",
    "Errors, by where they happened (reconcile, autoscale, rollout).",
    ["stage"],
)
SCALES = Counter(
    "kinfer_operator_scale_total",
    "Replica changes the autoscaler made, by direction (up, down).",
    ["direction"],
)

# Per InferenceService, for dashboards: what the operator decided, next to what the pods report.
# Label names match the ones Prometheus gives the runtime's series (from the pod labels).
DESIRED_REPLICAS = Gauge(
    "kinfer_operator_desired_replicas",
    "Replicas the operator wants for an InferenceService (all tracks).",
    ["namespace", "kinfer_dev_isvc"],
)
CANARY_WEIGHT = Gauge(
    "kinfer_operator_canary_weight_percent",
    "Percent of traffic the rollout sends to the canary (status.canary.weight).",
    ["namespace", "kinfer_dev_isvc"],
)


def forget(namespace: str, name: str) -> None:
    """Drop an InferenceService's series once it is gone."""
    for gauge in (DESIRED_REPLICAS, CANARY_WEIGHT):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


def serve(port: int, address: str) -> None:
    """Expose /metrics in a background thread (prometheus_client's own server)."""
    start_http_server(port, addr=address)
