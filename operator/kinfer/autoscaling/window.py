"""What the autoscaler saw: one plain snapshot of an InferenceService's signals.

Collection (``prometheus.py``) fills it, the decision (``decision.py``) reads it. "No data" is a
value here (``available=False`` with a reason), never an exception, so the decision can hold the
current scale instead of failing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MetricsWindow:
    """Signals of one InferenceService (or one track of it) at ``sampled_at``.

    ``queue_depth`` and ``inflight`` are sums over the ready pods; ``ready_replicas`` is how many
    pods reported the queue-depth gauge. ``p95_latency_ms`` is None when no request finished in
    the latency window (no evidence either way).
    """

    sampled_at: float
    """Unix seconds when Prometheus was asked."""
    available: bool = True
    reason: str = ""
    """Why the window is unavailable (or a note, e.g. "no series"), for status and events."""
    queue_depth: float = 0.0
    inflight: float = 0.0
    p95_latency_ms: float | None = None
    request_rate: float = 0.0
    """Requests answered per second over the rate window."""
    ready_replicas: int = 0
    latency_replicas: int | None = None
    """Fewest pods that reported during the latency window: the pool that produced the p95.
    Right after a scale-up the p95 still describes the old, smaller pool. None: use
    ready_replicas."""
    rows_per_second: float | None = None
    """Rows the pods' forwards finished per second over the rate window (the batch-size
    histogram's sum). None: not measured."""
    forwards_per_second: float | None = None
    """Forward passes finished per second over the rate window (the batch-size histogram's
    count). Mean batch size = rows_per_second / forwards_per_second."""
    busy_seconds_per_second: float | None = None
    """Seconds of forwards per second, summed over the pods (rate of
    kinfer_forward_seconds_total). Mean forward time = this / forwards_per_second."""
    rows_squared_per_second: float | None = None
    """Rate of the sum of rows² over forwards (kinfer_batch_rows_squared_total)."""
    row_seconds_per_second: float | None = None
    """Rate of the sum over rows of their forward's seconds (the compute-phase duration
    histogram's sum). With the four rates above: a least-squares line t = a + b x rows over
    every forward of the window."""
    max_batch_size: int | None = None
    """The runtime's largest batch (spec.runtime.batching.maxBatchSize), from the spec, not
    from Prometheus. None: unknown."""
    cold_start_seconds: float | None = None
    """How long a new pod takes from created to Ready, as measured for this service (status
    coldStartSeconds). None: not measured yet."""

    @classmethod
    def unavailable(cls, sampled_at: float, reason: str) -> MetricsWindow:
        return cls(sampled_at=sampled_at, available=False, reason=reason)

    @property
    def queue_depth_per_replica(self) -> float:
        """Queue depth averaged over reporting pods; the whole queue when none report."""
        return self.queue_depth / max(self.ready_replicas, 1)

    @property
    def has_demand(self) -> bool:
        """Anything waiting, running or arriving: the opposite of idle."""
        return self.queue_depth > 0 or self.inflight > 0 or self.request_rate > 0

    def age(self, now: float) -> float:
        return now - self.sampled_at

    def is_stale(self, now: float, max_age_seconds: float) -> bool:
        return self.age(now) > max_age_seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricsWindow:
        p95 = data.get("p95_latency_ms")
        lr = data.get("latency_replicas")

        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        mb = data.get("max_batch_size")
        return cls(
            sampled_at=float(data["sampled_at"]),
            available=bool(data.get("available", True)),
            reason=str(data.get("reason", "")),
            queue_depth=float(data.get("queue_depth", 0.0)),
            inflight=float(data.get("inflight", 0.0)),
            p95_latency_ms=None if p95 is None else float(p95),
            request_rate=float(data.get("request_rate", 0.0)),
            ready_replicas=int(data.get("ready_replicas", 0)),
            latency_replicas=None if lr is None else int(lr),
            rows_per_second=opt("rows_per_second"),
            forwards_per_second=opt("forwards_per_second"),
            busy_seconds_per_second=opt("busy_seconds_per_second"),
            rows_squared_per_second=opt("rows_squared_per_second"),
            row_seconds_per_second=opt("row_seconds_per_second"),
            max_batch_size=None if mb is None else int(mb),
            cold_start_seconds=opt("cold_start_seconds"),
        )
