"""Canary analysis: the PromQL it asks and the verdict it gives, with an in-memory Prometheus."""

from __future__ import annotations

import math
import re

import pytest

from kinfer.api import v1alpha1 as api
from kinfer.metrics_source import MetricsUnavailable
from kinfer.rollout.analysis import (
    ERROR_RATE,
    P95_LATENCY,
    P95_TTFT,
    TrackStats,
    Verdict,
    analyze,
    combine,
    judge,
    queries,
    read_track,
    unavailable,
)

SPEC = api.Analysis(max_p95_latency_ms=180, max_error_rate=0.005, min_requests=200)
GOOD = TrackStats(requests=1000, errors=1, p95_ms=120)


class FakePrometheus:
    """Answers the analysis' queries from per-track stats; ``down`` makes every query fail."""

    def __init__(self, tracks: dict[str, TrackStats], down: bool = False) -> None:
        self.tracks = tracks
        self.down = down
        self.asked: list[str] = []

    def scalar(self, promql: str) -> float | None:
        self.asked.append(promql)
        if self.down:
            raise MetricsUnavailable("connection refused")
        track = "canary" if 'kinfer_dev_track="canary"' in promql else "stable"
        stats = self.tracks.get(track)
        if stats is None:
            # An empty selector: sums have no sample, the quantile of nothing is NaN.
            return math.nan if promql.startswith("histogram_quantile") else None
        if promql.startswith("histogram_quantile"):
            return math.nan if stats.p95_ms is None else stats.p95_ms / 1000
        return stats.errors if 'code=~"5.."' in promql else stats.requests


def test_queries_select_one_track_of_one_service_on_the_window() -> None:
    q = queries("search", "ranker", "canary", 120)
    sel = 'namespace="search",kinfer_dev_isvc="ranker",kinfer_dev_track="canary"'
    assert q["requests"] == f"sum(increase(kinfer_requests_total{{{sel}}}[120s]))"
    assert q["errors"] == f'sum(increase(kinfer_requests_total{{{sel},code=~"5.."}}[120s]))'
    assert q["p95"] == (
        "histogram_quantile(0.95, sum by (le) "
        f'(rate(kinfer_request_duration_seconds_bucket{{{sel},phase="total"}}[120s])))'
    )


def test_a_generative_canary_is_timed_by_its_first_token() -> None:
    q = queries("chat", "llm", "canary", 120, generative=True)
    sel = 'namespace="chat",kinfer_dev_isvc="llm",kinfer_dev_track="canary"'
    assert q["p95"] == (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(kinfer_time_to_first_token_seconds_bucket{{{sel}}}[120s])))"
    )
    assert q["requests"] == queries("chat", "llm", "canary", 120)["requests"]


def test_label_values_are_quoted() -> None:
    assert 'namespace="a\\"b"' in queries('a"b', "x", "stable", 60)["requests"]


def test_canary_and_stable_are_read_on_the_same_window() -> None:
    prom = FakePrometheus({"canary": GOOD, "stable": GOOD})
    verdict = analyze(prom, "search", "ranker", SPEC, 95)
    assert verdict.passed
    assert len(prom.asked) == 6 and all("[95s]" in q for q in prom.asked)


def test_read_track_converts_seconds_and_treats_missing_series_as_zero() -> None:
    prom = FakePrometheus({"canary": TrackStats(requests=10, errors=0, p95_ms=250)})
    assert read_track(prom, "ns", "m", "canary", 60) == TrackStats(10, 0, 250)
    assert read_track(prom, "ns", "m", "stable", 60) == TrackStats(0, 0, None)


def test_prometheus_unavailable_is_inconclusive_never_failed() -> None:
    verdict = analyze(FakePrometheus({}, down=True), "ns", "m", SPEC, 60)
    assert verdict.outcome == "inconclusive"
    assert verdict.inconclusive == "MetricsUnavailable"
    assert verdict.message == "Prometheus unavailable (connection refused)"


@pytest.mark.parametrize(
    ("canary", "stable", "outcome", "metric", "words"),
    [
        pytest.param(
            GOOD,
            GOOD,
            "passed",
            "",
            "canary p95 120 ms (stable 120 ms), errors 0.10% (stable 0.10%), 1000 requests; "
            "within p95 180 ms, errors 0.50%",
            id="healthy",
        ),
        pytest.param(
            TrackStats(1000, 1, 420),
            GOOD,
            "failed",
            P95_LATENCY,
            "p95 latency 420 ms > 180 ms; canary p95 420 ms (stable 120 ms)",
            id="slow-canary",
        ),
        pytest.param(
            TrackStats(1000, 120, 100),
            GOOD,
            "failed",
            ERROR_RATE,
            "error rate 12.00% > 0.50%; canary p95 100 ms (stable 120 ms), errors 12.00% (stable 0.10%)",
            id="erroring-canary",
        ),
        pytest.param(
            TrackStats(1000, 120, 420),
            GOOD,
            "failed",
            ERROR_RATE,
            "error rate 12.00% > 0.50%; p95 latency 420 ms > 180 ms",
            id="both-bad-errors-first",
        ),
        pytest.param(
            TrackStats(37, 0, 100),
            GOOD,
            "inconclusive",
            "",
            "not enough canary traffic: 37 of 200 requests",
            id="too-few-requests",
        ),
        pytest.param(
            TrackStats(37, 37, 900),
            GOOD,
            "inconclusive",
            "",
            "not enough canary traffic",
            id="too-few-requests-even-if-bad",
        ),
        pytest.param(
            TrackStats(1000, 0, None),
            GOOD,
            "inconclusive",
            "",
            "no latency histogram for the canary",
            id="no-histogram",
        ),
        pytest.param(
            TrackStats(1000, 1, 200),
            TrackStats(5000, 5, 210),
            "inconclusive",
            "",
            "stable breaches too (p95 latency 200 ms > 180 ms)",
            id="cluster-wide-slowness-is-not-the-canarys-fault",
        ),
        pytest.param(
            TrackStats(1000, 1, 400),
            TrackStats(5000, 5, 210),
            "failed",
            P95_LATENCY,
            "p95 latency 400 ms > 180 ms",
            id="much-worse-than-a-slow-stable",
        ),
        pytest.param(
            TrackStats(1000, 1, 200),
            TrackStats(10, 0, 210),
            "failed",
            P95_LATENCY,
            "p95 latency 200 ms > 180 ms",
            id="stable-too-quiet-to-excuse",
        ),
        pytest.param(
            GOOD,
            TrackStats(0, 0, None),
            "passed",
            "",
            "canary p95 120 ms (stable n/a), errors 0.10% (stable n/a)",
            id="canary-at-100-percent",
        ),
    ],
)
def test_judge(canary: TrackStats, stable: TrackStats, outcome: str, metric: str, words: str) -> None:
    verdict = judge(SPEC, canary, stable)
    assert (verdict.outcome, verdict.failed_metric) == (outcome, metric)
    assert words in verdict.message


@pytest.mark.parametrize(
    ("canary", "stable", "outcome", "metric", "words"),
    [
        pytest.param(
            GOOD,
            GOOD,
            "passed",
            "",
            "canary p95 TTFT 120 ms (stable 120 ms), errors 0.10% (stable 0.10%), 1000 requests; "
            "within p95 TTFT 180 ms",
            id="healthy",
        ),
        pytest.param(
            TrackStats(1000, 1, 420),
            GOOD,
            "failed",
            P95_TTFT,
            "p95 time to first token 420 ms > 180 ms; canary p95 TTFT 420 ms (stable 120 ms)",
            id="slow-first-token",
        ),
        pytest.param(
            TrackStats(1000, 1, 200),
            TrackStats(5000, 5, 210),
            "inconclusive",
            "",
            "stable breaches too (p95 time to first token 200 ms > 180 ms)",
            id="stable-slow-too",
        ),
        pytest.param(
            TrackStats(1000, 0, None),
            GOOD,
            "inconclusive",
            "",
            "no time-to-first-token histogram for the canary",
            id="no-histogram",
        ),
    ],
)
def test_judge_generative(
    canary: TrackStats, stable: TrackStats, outcome: str, metric: str, words: str
) -> None:
    verdict = judge(SPEC, canary, stable, generative=True)
    assert (verdict.outcome, verdict.failed_metric) == (outcome, metric)
    assert words in verdict.message


def test_analyze_generative_reads_ttft_of_both_tracks() -> None:
    prom = FakePrometheus({"canary": TrackStats(1000, 0, 900), "stable": GOOD})
    verdict = analyze(prom, "chat", "llm", SPEC, 60, generative=True)
    assert verdict.failed_metric == P95_TTFT
    quantiles = [q for q in prom.asked if q.startswith("histogram_quantile")]
    assert len(quantiles) == 2 and all("kinfer_time_to_first_token_seconds_bucket" in q for q in quantiles)


def test_min_requests_zero_passes_an_idle_canary() -> None:
    idle = api.Analysis(min_requests=0)
    assert judge(idle, TrackStats(0, 0, None), GOOD).passed


def test_thresholds_are_inclusive() -> None:
    at_limit = TrackStats(requests=1000, errors=5, p95_ms=180)
    assert judge(SPEC, at_limit, GOOD).passed


def test_combine_prefers_failure_then_unavailable_then_waiting() -> None:
    ok = Verdict("passed", "metrics ok")
    wait = Verdict("inconclusive", "few", inconclusive="NotEnoughData")
    down = unavailable("timeout")
    bad = Verdict("failed", "drift", failed_metric="output_drift")
    assert combine(ok, wait, down, bad) is bad
    assert combine(ok, wait, down) is down
    assert combine(ok, wait) is wait
    assert combine(ok, Verdict("passed", "drift ok")) == Verdict("passed", "metrics ok; drift ok")


def test_a_triton_track_is_read_from_tritons_own_series() -> None:
    q = queries("search", "ranker", "canary", 120, server="triton")
    sel = 'namespace="search",kinfer_dev_isvc="ranker",kinfer_dev_track="canary"'
    assert q == {
        "requests": f"(sum(increase(nv_inference_request_success{{{sel}}}[120s])) or vector(0)) + "
        f"(sum(increase(nv_inference_request_failure{{{sel}}}[120s])) or vector(0))",
        "errors": f'sum(increase(nv_inference_request_failure{{{sel},reason=~"BACKEND|OTHER"}}[120s]))',
        "p95": f'max(max_over_time(nv_inference_request_summary_us{{{sel},quantile="0.95"}}[120s])) / 1e6',
    }


def test_a_failing_triton_canary_is_rolled_back_on_its_error_rate() -> None:
    answers = {
        "canary": {"requests": 400.0, "errors": 40.0, "p95": 0.05},
        "stable": {"requests": 400.0, "errors": 0.0, "p95": 0.05},
    }

    class TritonPrometheus:
        def scalar(self, promql: str) -> float | None:
            assert re.search(r"\bkinfer_(?!dev_)", promql) is None, promql  # no kinfer series
            track = "canary" if 'kinfer_dev_track="canary"' in promql else "stable"
            got = {v: k for k, v in queries("s", "r", track, 60, server="triton").items()}[promql]
            return answers[track][got]

    assert read_track(TritonPrometheus(), "s", "r", "canary", 60, server="triton") == TrackStats(400, 40, 50)
    verdict = analyze(TritonPrometheus(), "s", "r", SPEC, 60, server="triton")
    assert verdict.failed and verdict.failed_metric == ERROR_RATE
