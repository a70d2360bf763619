"""Reading the autoscaler's window: PromQL per service and track, and every way Prometheus fails."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from kinfer.autoscaling.prometheus import (
    PrometheusSource,
    parse_scalar,
    queries,
    read_window,
    triton_queries,
)
from kinfer.metrics_source import MetricsUnavailable

T0 = 1_700_000_000.0


class FakeSource:
    """In-memory MetricsSource: answers by query text; ``down`` makes every query fail."""

    def __init__(self, answers: dict[str, float | None] | None = None, down: str = "") -> None:
        self.answers = answers or {}
        self.down = down
        self.asked: list[str] = []

    def scalar(self, promql: str) -> float | None:
        self.asked.append(promql)
        if self.down:
            raise MetricsUnavailable(self.down)
        return self.answers.get(promql)


class BrokenSource:
    def scalar(self, promql: str) -> float | None:
        raise RuntimeError("bug in a source")


def answers(track: str | None = None, **values: float | None) -> dict[str, float | None]:
    q = queries("ml", "resnet", track)
    return {getattr(q, key): value for key, value in values.items()}


def test_queries_select_one_service_and_track() -> None:
    q = queries("ml", "resnet", "canary")
    sel = 'namespace="ml",kinfer_dev_isvc="resnet",kinfer_dev_track="canary"'
    assert q.queue_depth == f"sum(kinfer_queue_depth{{{sel}}})"
    assert q.ready_replicas == f"count(kinfer_queue_depth{{{sel}}})"
    assert q.latency_replicas == f"min_over_time(count(kinfer_queue_depth{{{sel}}})[1m:15s])"
    assert q.inflight == f"sum(kinfer_inflight_requests{{{sel}}})"
    assert q.p95_latency_ms == (
        "histogram_quantile(0.95, sum by (le) (rate(kinfer_request_duration_seconds_bucket"
        f'{{{sel},phase="total"}}[1m]))) * 1000'
    )
    assert q.request_rate == f"sum(rate(kinfer_requests_total{{{sel}}}[1m]))"
    assert "kinfer_dev_track" not in queries("ml", "resnet").queue_depth


def test_window_from_answers() -> None:
    source = FakeSource(
        answers(queue_depth=12, ready_replicas=3, inflight=10, p95_latency_ms=180.5, request_rate=40)
    )
    w = read_window(source, "ml", "resnet", now=T0)
    assert w.available and w.sampled_at == T0
    assert (w.queue_depth, w.ready_replicas, w.inflight) == (12, 3, 10)
    assert (w.p95_latency_ms, w.request_rate) == (180.5, 40)
    assert w.queue_depth_per_replica == 4
    assert w.latency_replicas is None  # no answer: the decision falls back to ready_replicas
    assert w.rows_per_second is None and w.row_seconds_per_second is None  # an older runtime
    assert len(source.asked) == 13  # 11, and the two generative signals


def test_window_reads_the_forward_counters() -> None:
    source = FakeSource(
        answers(
            queue_depth=4,
            ready_replicas=2,
            rows_per_second=40,
            forwards_per_second=10,
            busy_seconds_per_second=1.5,
            rows_squared_per_second=200,
            row_seconds_per_second=7.0,
        )
    )
    w = read_window(source, "ml", "resnet", now=T0)
    assert (w.rows_per_second, w.forwards_per_second, w.busy_seconds_per_second) == (40, 10, 1.5)
    assert (w.rows_squared_per_second, w.row_seconds_per_second) == (200, 7.0)
    q = queries("ml", "resnet")
    assert q.busy_seconds_per_second.startswith("sum(rate(kinfer_forward_seconds_total{")
    assert 'phase="compute"' in q.row_seconds_per_second


def test_track_window_asks_for_that_track() -> None:
    source = FakeSource(answers("stable", queue_depth=2, ready_replicas=1))
    w = read_window(source, "ml", "resnet", "stable", now=T0)
    assert w.queue_depth == 2 and w.ready_replicas == 1
    assert all('kinfer_dev_track="stable"' in q for q in source.asked)


def test_no_series_is_zero_load_with_no_p95() -> None:
    w = read_window(FakeSource(), "ml", "resnet", now=T0)
    assert w.available and w.reason == "no series"
    assert (w.queue_depth, w.ready_replicas, w.p95_latency_ms, w.request_rate) == (0, 0, None, 0)


def test_nan_p95_means_no_requests() -> None:
    source = FakeSource(answers(ready_replicas=2, p95_latency_ms=float("nan")))
    assert read_window(source, "ml", "resnet", now=T0).p95_latency_ms is None


def test_prometheus_down_gives_an_unavailable_window() -> None:
    w = read_window(FakeSource(down="connection refused"), "ml", "resnet", now=T0)
    assert not w.available and w.reason == "connection refused" and w.sampled_at == T0


def test_a_buggy_source_never_raises() -> None:
    w = read_window(BrokenSource(), "ml", "resnet", now=T0)
    assert not w.available and "RuntimeError" in w.reason


def test_parse_scalar() -> None:
    assert parse_scalar([]) is None
    assert parse_scalar([{"metric": {}, "value": [T0, "3.5"]}]) == 3.5
    bad: Any
    for bad in ({"x": 1}, [{"metric": {}}], [{"value": [T0, "1"]}] * 2, [{"value": [T0, "x"]}]):
        with pytest.raises(MetricsUnavailable):
            parse_scalar(bad)


# --- the real client against a small local HTTP server ---------------------------------------


class _Prometheus(BaseHTTPRequestHandler):
    delay = 0.0
    status = 200
    body: ClassVar[dict[str, object]] = {}

    def do_GET(self) -> None:
        params = parse_qs(urlparse(self.path).query)
        query = params["query"][0]
        # Prometheus refuses a duration with a decimal point ("2.0s") with HTTP 400: so do we.
        if not re.fullmatch(r"[0-9]+(ms|s|m)", params.get("timeout", ["1s"])[0]):
            self.send_error(400, "invalid parameter timeout")
            return
        time.sleep(self.delay)
        payload = json.dumps(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": self.body.get(query, [])},
            }
        ).encode()
        try:
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def prometheus() -> Iterator[tuple[str, type[_Prometheus]]]:
    handler = type("Handler", (_Prometheus,), {"body": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_prometheus_source_reads_a_sample(prometheus: tuple[str, type[_Prometheus]]) -> None:
    url, handler = prometheus
    handler.body = {"up": [{"metric": {}, "value": [T0, "7"]}], "none": []}
    source = PrometheusSource(url)
    assert source.scalar("up") == 7
    assert source.scalar("none") is None


def test_prometheus_source_timeout(prometheus: tuple[str, type[_Prometheus]]) -> None:
    url, handler = prometheus
    handler.delay = 0.5
    started = time.monotonic()
    w = read_window(PrometheusSource(url, timeout_seconds=0.1), "ml", "resnet", now=T0)
    assert not w.available and "Timeout" in w.reason
    assert time.monotonic() - started < 0.45


def test_prometheus_source_error_status(prometheus: tuple[str, type[_Prometheus]]) -> None:
    url, handler = prometheus
    handler.body, handler.status = {"up": []}, 503
    with pytest.raises(MetricsUnavailable, match="503"):
        PrometheusSource(url).scalar("up")


def test_prometheus_source_connection_refused() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Prometheus) as closed:
        port = closed.server_address[1]
    w = read_window(PrometheusSource(f"http://127.0.0.1:{port}"), "ml", "resnet", now=T0)
    assert not w.available and w.reason


def test_triton_series_fill_the_same_window() -> None:
    q = triton_queries("ml", "resnet", "stable")
    sel = 'namespace="ml",kinfer_dev_isvc="resnet",kinfer_dev_track="stable"'
    pending = f"nv_inference_pending_request_count{{{sel}}}"
    assert q.queue_depth == q.inflight == f"sum({pending})"
    # one series per model and version: pods are counted, not series
    assert q.ready_replicas == f"count(count by (pod) ({pending}))"
    assert q.latency_replicas == f"min_over_time(count(count by (pod) ({pending}))[1m:15s])"
    assert q.p95_latency_ms == f'max(nv_inference_request_summary_us{{{sel},quantile="0.95"}}) / 1000'
    assert q.request_rate == (
        f"sum(rate(nv_inference_request_success{{{sel}}}[1m])) + "
        f"(sum(rate(nv_inference_request_failure{{{sel}}}[1m])) or vector(0))"
    )
    source = FakeSource(
        {
            q.queue_depth: 6.0,
            q.ready_replicas: 2.0,
            q.latency_replicas: 2.0,
            q.p95_latency_ms: 41.5,
            q.request_rate: 30.0,
        }
    )
    window = read_window(source, "ml", "resnet", "stable", now=T0, server="triton")
    assert window.available and window.reason == ""
    assert (window.queue_depth, window.inflight, window.ready_replicas) == (6.0, 6.0, 2)
    assert (window.p95_latency_ms, window.request_rate, window.latency_replicas) == (41.5, 30.0, 2)
    # no batch-shape series on Triton: no forward fit
    assert window.rows_per_second is None and window.busy_seconds_per_second is None
    assert any(p.startswith("sum(nv_inference_pending_request_count") for p in source.asked)


def test_a_triton_window_without_requests_has_no_p95() -> None:
    q = triton_queries("ml", "resnet")
    source = FakeSource({q.ready_replicas: 1.0, q.p95_latency_ms: float("nan")})
    window = read_window(source, "ml", "resnet", now=T0, server="triton")
    assert window.available and window.p95_latency_ms is None and window.request_rate == 0.0
