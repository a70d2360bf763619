"""The operator's own Prometheus metrics, served on /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

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


def serve(port: int, address: str) -> None:
    """Expose /metrics in a background thread (prometheus_client's own server)."""
    start_http_server(port, addr=address)
