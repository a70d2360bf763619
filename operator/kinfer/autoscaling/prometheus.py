"""Collecting the autoscaler's signals from Prometheus: the PromQL and one ``read_window``.

Series carry the labels the scrape config copies from the pod: ``namespace``,
``kinfer_dev_isvc`` and ``kinfer_dev_track`` (stable|canary). Every query is an aggregate that
yields at most one sample, so ``MetricsSource.scalar`` is all this needs.

Triton pods (``runtime.server: triton``) export Triton's own series instead, mapped onto the
same window by ``triton_queries``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from urllib3.util.retry import Retry

from kinfer.autoscaling.window import MetricsWindow
from kinfer.metrics_source import MetricsSource, MetricsUnavailable

RATE_WINDOW = "1m"
"""Range of rate() and of the p95: four samples at a 15 s scrape interval, so one missed scrape
does not empty it, and short enough to follow a burst within a tick or two."""

SUBQUERY_STEP = "15s"
"""Resolution of the subquery over the pod count; the usual scrape interval."""

QUERY_TIMEOUT_SECONDS = 2.0
"""A slow Prometheus must not stall the operator's timer (default 10 s) for every service."""


@dataclass(frozen=True)
class Queries:
    """The PromQL for one InferenceService, or one track of it."""

    queue_depth: str
    ready_replicas: str
    latency_replicas: str
    inflight: str
    p95_latency_ms: str
    request_rate: str
    p95_ttft_ms: str
    tokens_in_flight: str
    # The runtime's forwards, for the fit of its batch-latency curve (decision.learn_forward).
    rows_per_second: str
    forwards_per_second: str
    busy_seconds_per_second: str
    rows_squared_per_second: str
    row_seconds_per_second: str


def selector(namespace: str, name: str, track: str | None = None) -> str:
    labels = [f'namespace="{_quote(namespace)}"', f'kinfer_dev_isvc="{_quote(name)}"']
    if track is not None:
        labels.append(f'kinfer_dev_track="{_quote(track)}"')
    return ",".join(labels)


def queries(namespace: str, name: str, track: str | None = None) -> Queries:
    sel = selector(namespace, name, track)
    buckets = f'kinfer_request_duration_seconds_bucket{{{sel},phase="total"}}'
    return Queries(
        # Rows waiting plus rows in the running forward, summed over the pods.
        queue_depth=f"sum(kinfer_queue_depth{{{sel}}})",
        # Pods whose gauge Prometheus has now: scraped, hence up and serving metrics.
        ready_replicas=f"count(kinfer_queue_depth{{{sel}}})",
        # The fewest pods of the latency window: the pool that the p95 describes.
        latency_replicas=(
            f"min_over_time(count(kinfer_queue_depth{{{sel}}})[{RATE_WINDOW}:{SUBQUERY_STEP}])"
        ),
        inflight=f"sum(kinfer_inflight_requests{{{sel}}})",
        # Aggregate the buckets across pods first: the p95 of the service, not a mean of p95s.
        p95_latency_ms=(f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{RATE_WINDOW}]))) * 1000"),
        request_rate=f"sum(rate(kinfer_requests_total{{{sel}}}[{RATE_WINDOW}]))",
        # Generative models: no series (None / 0) for other formats.
        p95_ttft_ms=(
            "histogram_quantile(0.95, sum by (le) "
            f"(rate(kinfer_time_to_first_token_seconds_bucket{{{sel}}}[{RATE_WINDOW}]))) * 1000"
        ),
        tokens_in_flight=f"sum(kinfer_tokens_in_flight{{{sel}}})",
        rows_per_second=f"sum(rate(kinfer_batch_size_sum{{{sel}}}[{RATE_WINDOW}]))",
        forwards_per_second=f"sum(rate(kinfer_batch_size_count{{{sel}}}[{RATE_WINDOW}]))",
        busy_seconds_per_second=f"sum(rate(kinfer_forward_seconds_total{{{sel}}}[{RATE_WINDOW}]))",
        rows_squared_per_second=f"sum(rate(kinfer_batch_rows_squared_total{{{sel}}}[{RATE_WINDOW}]))",
        # Each row observes its forward's seconds: the sum is Σ rows x seconds over forwards.
        row_seconds_per_second=(
            f'sum(rate(kinfer_request_duration_seconds_sum{{{sel},phase="compute"}}[{RATE_WINDOW}]))'
        ),
    )


def triton_queries(namespace: str, name: str, track: str | None = None) -> Queries:
    """Triton's series on the autoscaler's window:

    - queue depth: ``nv_inference_pending_request_count`` (requests queued in Triton's scheduler,
      not rows, and not those executing), also the in-flight count;
    - replicas: pods with that gauge (``count by (pod)``: one series per model and version);
    - p95: ``nv_inference_request_summary_us`` (``--metrics-config=summary_latencies=true``),
      quantile 0.95, the worst pod's: Triton's duration is a counter, not a histogram, and
      quantiles of pods cannot be merged;
    - request rate: ``nv_inference_request_success`` plus ``nv_inference_request_failure``.

    Triton has no batch-shape series: the forward-fit queries (and the generative ones) keep the
    kinfer names, which have no series on Triton pods, so they read None (no fit)."""
    sel = selector(namespace, name, track)
    pending = f"nv_inference_pending_request_count{{{sel}}}"
    pods = f"count(count by (pod) ({pending}))"
    success = f"sum(rate(nv_inference_request_success{{{sel}}}[{RATE_WINDOW}]))"
    failure = f"(sum(rate(nv_inference_request_failure{{{sel}}}[{RATE_WINDOW}])) or vector(0))"
    return replace(
        queries(namespace, name, track),
        queue_depth=f"sum({pending})",
        ready_replicas=pods,
        latency_replicas=f"min_over_time({pods}[{RATE_WINDOW}:{SUBQUERY_STEP}])",
        inflight=f"sum({pending})",
        p95_latency_ms=f'max(nv_inference_request_summary_us{{{sel},quantile="0.95"}}) / 1000',
        request_rate=f"{success} + {failure}",
    )


def read_window(
    source: MetricsSource,
    namespace: str,
    name: str,
    track: str | None = None,
    *,
    now: float,
    server: str = "kinfer",
) -> MetricsWindow:
    """The signals now. Never raises: Prometheus down, slow or odd gives ``available=False``.

    A query with no sample means no series (no pod reports, or no request in the rate window):
    zero for sums and counts, None for the p95. Whether zero reporting pods is trustworthy is
    the decision's call, which knows how many replicas should be there.
    """
    q = triton_queries(namespace, name, track) if server == "triton" else queries(namespace, name, track)
    try:
        depth = source.scalar(q.queue_depth)
        ready = source.scalar(q.ready_replicas)
        latency_replicas = source.scalar(q.latency_replicas)
        inflight = source.scalar(q.inflight)
        p95 = source.scalar(q.p95_latency_ms)
        rate = source.scalar(q.request_rate)
        ttft = source.scalar(q.p95_ttft_ms)
        tokens = source.scalar(q.tokens_in_flight)
        forwards = tuple(
            source.scalar(promql)
            for promql in (
                q.rows_per_second,
                q.forwards_per_second,
                q.busy_seconds_per_second,
                q.rows_squared_per_second,
                q.row_seconds_per_second,
            )
        )
    except MetricsUnavailable as err:
        return MetricsWindow.unavailable(now, str(err) or "Prometheus unavailable")
    except Exception as err:  # a buggy source must not take the operator's timer down
        return MetricsWindow.unavailable(now, f"{type(err).__name__}: {err}")
    return MetricsWindow(
        sampled_at=now,
        available=True,
        reason="" if ready else "no series",
        queue_depth=_finite(depth),
        inflight=_finite(inflight),
        p95_latency_ms=None if p95 is None or math.isnan(p95) else p95,
        request_rate=_finite(rate),
        ready_replicas=int(_finite(ready)),
        latency_replicas=None if latency_replicas is None else int(_finite(latency_replicas)),
        p95_ttft_ms=None if ttft is None or math.isnan(ttft) else ttft,
        tokens_in_flight=_finite(tokens),
        rows_per_second=_optional(forwards[0]),
        forwards_per_second=_optional(forwards[1]),
        busy_seconds_per_second=_optional(forwards[2]),
        rows_squared_per_second=_optional(forwards[3]),
        row_seconds_per_second=_optional(forwards[4]),
    )


class PrometheusSource:
    """``MetricsSource`` over the Prometheus HTTP API (prometheus-api-client)."""

    def __init__(self, url: str, timeout_seconds: float = QUERY_TIMEOUT_SECONDS) -> None:
        from prometheus_api_client import PrometheusConnect

        self._timeout = timeout_seconds
        # No retries: the next tick is the retry, and retries with backoff would outlast it.
        self._client: Any = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0))

    def scalar(self, promql: str) -> float | None:
        try:
            result = self._client.custom_query(
                # Prometheus durations take no decimal point: "2.0s" is refused, "2000ms" is not.
                promql,
                params={"timeout": f"{round(self._timeout * 1000)}ms"},
                timeout=self._timeout,
            )
        except Exception as err:  # requests and client errors alike: Prometheus could not answer
            raise MetricsUnavailable(f"{type(err).__name__}: {err}") from err
        return parse_scalar(result)


def parse_scalar(result: Any) -> float | None:
    """One instant-vector sample's value, None for none. Anything else is a bad answer."""
    if not isinstance(result, list):
        raise MetricsUnavailable(f"unexpected answer: {result!r:.200}")
    if not result:
        return None
    if len(result) > 1:
        raise MetricsUnavailable(f"expected one sample, got {len(result)}")
    try:
        return float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise MetricsUnavailable(f"unexpected sample: {result[0]!r:.200}") from err


def _finite(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else value


def _optional(value: float | None) -> float | None:
    """None for no series (a runtime without the counter) or a non-finite answer."""
    return None if value is None or not math.isfinite(value) else value


def _quote(value: str) -> str:
    # Kubernetes names cannot hold quotes or backslashes; escape anyway so a query stays valid.
    return value.replace("\\", "\\\\").replace('"', '\\"')
