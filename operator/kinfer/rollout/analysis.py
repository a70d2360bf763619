"""Canary analysis: canary and stable read from Prometheus over the same window, then judged.

Reading (``read_track``, ``analyze``) is the only I/O and goes through ``MetricsSource``. Judging
(``judge``) is pure. The verdict is ``passed``, ``failed`` (with the metric to blame) or
``inconclusive``; an inconclusive verdict never rolls back by itself (see ``machine``).

The latency judged is the request's p95 (``kinfer_request_duration_seconds``), or for a
generative canary the p95 time to first token (``kinfer_time_to_first_token_seconds``): a
stream lasts as long as its answer, so the runtime does not time it as a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kinfer.api import v1alpha1 as api
from kinfer.metrics_source import MetricsSource, MetricsUnavailable

Outcome = Literal["passed", "failed", "inconclusive"]
# Why a verdict is inconclusive. MetricsUnavailable holds the step for as long as it lasts;
# the others count toward the machine's no-verdict timeout.
Inconclusive = Literal["", "MetricsUnavailable", "NotEnoughData", "StableAlsoBreaches"]

ERROR_RATE = "error_rate"
P95_LATENCY = "p95_latency"
P95_TTFT = "p95_time_to_first_token"
OUTPUT_DRIFT = "output_drift"

# A breach the stable track shares (within this factor) is the cluster's, not the canary's.
STABLE_TOLERANCE = 1.1
# The stable track needs this many requests in the window before it can excuse a breach.
STABLE_MIN_REQUESTS = 20


@dataclass(frozen=True)
class TrackStats:
    """One track over one window. ``p95_ms`` is None when no request landed in the histogram."""

    requests: float
    errors: float
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    failed_metric: str = ""
    inconclusive: Inconclusive = ""

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def unavailable(why: str) -> Verdict:
    return Verdict("inconclusive", f"Prometheus unavailable ({why})", inconclusive="MetricsUnavailable")


# --- PromQL -------------------------------------------------------------------------------------


def selector(namespace: str, name: str, track: str, extra: str = "") -> str:
    # Label values come from validated DNS names; quote them anyway so a stray quote cannot leak.
    labels = [
        f'namespace="{_quote(namespace)}"',
        f'kinfer_dev_isvc="{_quote(name)}"',
        f'kinfer_dev_track="{_quote(track)}"',
    ]
    if extra:
        labels.append(extra)
    return "{" + ",".join(labels) + "}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def queries(
    namespace: str, name: str, track: str, window_s: int, generative: bool = False, server: str = "kinfer"
) -> dict[str, str]:
    """The three instant queries for one track: requests, errors (5xx) and p95 seconds (of the
    time to first token when ``generative``)."""
    if server == "triton":
        return triton_queries(namespace, name, track, window_s)
    w = f"[{int(window_s)}s]"
    total = selector(namespace, name, track)
    errors = selector(namespace, name, track, 'code=~"5.."')
    if generative:
        buckets = f"kinfer_time_to_first_token_seconds_bucket{total}"
    else:
        totals = selector(namespace, name, track, 'phase="total"')
        buckets = f"kinfer_request_duration_seconds_bucket{totals}"
    return {
        "requests": f"sum(increase(kinfer_requests_total{total}{w}))",
        "errors": f"sum(increase(kinfer_requests_total{errors}{w}))",
        "p95": f"histogram_quantile(0.95, sum by (le) (rate({buckets}{w})))",
    }


def triton_queries(namespace: str, name: str, track: str, window_s: int) -> dict[str, str]:
    """The same three from Triton's series: requests are successes plus failures; errors the
    failures of reason BACKEND (the model raised) or OTHER, not REJECTED (queue full, as kinfer's
    429) nor CANCELED (the client gave up); the p95 the largest 0.95 quantile of
    ``nv_inference_request_summary_us`` any pod reported in the window (summaries do not merge)."""
    w = f"[{int(window_s)}s]"
    total = selector(namespace, name, track)
    errors = selector(namespace, name, track, 'reason=~"BACKEND|OTHER"')
    p95 = selector(namespace, name, track, 'quantile="0.95"')
    success = f"(sum(increase(nv_inference_request_success{total}{w})) or vector(0))"
    failure = f"(sum(increase(nv_inference_request_failure{total}{w})) or vector(0))"
    return {
        "requests": f"{success} + {failure}",
        "errors": f"sum(increase(nv_inference_request_failure{errors}{w}))",
        "p95": f"max(max_over_time(nv_inference_request_summary_us{p95}{w})) / 1e6",
    }


def _finite(value: float | None) -> float | None:
    # histogram_quantile answers NaN on an empty window; that is "no data", not a number.
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def read_track(
    source: MetricsSource,
    namespace: str,
    name: str,
    track: str,
    window_s: int,
    generative: bool = False,
    server: str = "kinfer",
) -> TrackStats:
    """Stats of one track over the last ``window_s`` seconds. Raises MetricsUnavailable."""
    q = queries(namespace, name, track, window_s, generative, server)
    requests = _finite(source.scalar(q["requests"])) or 0.0
    # No 5xx series at all is the normal case: zero errors.
    errors = _finite(source.scalar(q["errors"])) or 0.0
    p95_s = _finite(source.scalar(q["p95"]))
    return TrackStats(requests, errors, None if p95_s is None else p95_s * 1000)


def analyze(
    source: MetricsSource,
    namespace: str,
    name: str,
    spec: api.Analysis,
    window_s: int,
    generative: bool = False,
    server: str = "kinfer",
) -> Verdict:
    """Read both tracks on the same window and judge. Prometheus down is inconclusive."""
    try:
        canary = read_track(source, namespace, name, "canary", window_s, generative, server)
        stable = read_track(source, namespace, name, "stable", window_s, generative, server)
    except MetricsUnavailable as exc:
        return unavailable(str(exc) or type(exc).__name__)
    return judge(spec, canary, stable, generative)


# --- judging ------------------------------------------------------------------------------------


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _excused(canary: float, stable: float | None, limit: float, stable_requests: float) -> bool:
    """True when stable breaks the same limit and the canary is no worse than stable."""
    if stable is None or stable_requests < STABLE_MIN_REQUESTS:
        return False
    return stable > limit and canary <= stable * STABLE_TOLERANCE


def judge(spec: api.Analysis, canary: TrackStats, stable: TrackStats, generative: bool = False) -> Verdict:
    """Pure verdict on one window. Thresholds are absolute (spec.analysis); stable is the
    baseline that can excuse a breach both tracks share, and context in the message.
    ``generative``: the p95s are of the time to first token, judged against maxP95LatencyMs."""
    short, long, metric, what = (
        ("p95 TTFT", "p95 time to first token", P95_TTFT, "time-to-first-token histogram")
        if generative
        else ("p95", "p95 latency", P95_LATENCY, "latency histogram")
    )
    if canary.requests < spec.min_requests:
        return Verdict(
            "inconclusive",
            f"not enough canary traffic: {canary.requests:.0f} of {spec.min_requests} requests",
            inconclusive="NotEnoughData",
        )
    if canary.requests == 0:
        return Verdict("passed", "no canary requests in the window; minRequests is 0")
    numbers = (
        f"canary {short} {_ms(canary.p95_ms)} (stable {_ms(stable.p95_ms)}), "
        f"errors {_pct(canary.error_rate)} (stable {_pct(stable.error_rate)}), "
        f"{canary.requests:.0f} requests"
    )
    breaches: list[tuple[str, str]] = []
    excused: list[str] = []
    rate = canary.error_rate or 0.0
    if rate > spec.max_error_rate:
        text = f"error rate {_pct(rate)} > {_pct(spec.max_error_rate)}"
        if _excused(rate, stable.error_rate, spec.max_error_rate, stable.requests):
            excused.append(text)
        else:
            breaches.append((ERROR_RATE, text))
    if canary.p95_ms is None:
        if not breaches:
            return Verdict(
                "inconclusive",
                f"no {what} for the canary; {numbers}",
                inconclusive="NotEnoughData",
            )
    elif canary.p95_ms > spec.max_p95_latency_ms:
        text = f"{long} {_ms(canary.p95_ms)} > {spec.max_p95_latency_ms} ms"
        if _excused(canary.p95_ms, stable.p95_ms, spec.max_p95_latency_ms, stable.requests):
            excused.append(text)
        else:
            breaches.append((metric, text))
    if breaches:
        what = "; ".join(text for _, text in breaches)
        return Verdict("failed", f"{what}; {numbers}", failed_metric=breaches[0][0])
    if excused:
        what = "; ".join(excused)
        return Verdict(
            "inconclusive",
            f"stable breaches too ({what}); {numbers}",
            inconclusive="StableAlsoBreaches",
        )
    return Verdict(
        "passed",
        f"{numbers}; within {short} {spec.max_p95_latency_ms} ms, errors {_pct(spec.max_error_rate)}",
    )


def combine(*verdicts: Verdict) -> Verdict:
    """One verdict from several (metrics, drift): any failure fails, then an unavailable
    source holds, then any other inconclusive waits."""
    ranked = sorted(verdicts, key=_severity)
    if ranked and _severity(ranked[0]) < 3:
        return ranked[0]
    return Verdict("passed", "; ".join(v.message for v in verdicts))


def _severity(v: Verdict) -> int:
    if v.failed:
        return 0
    if v.inconclusive == "MetricsUnavailable":
        return 1
    return 2 if v.outcome == "inconclusive" else 3
