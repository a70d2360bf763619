"""Output drift check: does the canary answer live inputs the way stable does? Off by default.

With ``spec.rollout.canary.analysis.drift`` set, render gives the canary pods
``KINFER_SHADOW_URL`` (the stable track's Service) and ``KINFER_SHADOW_RATE``. Each canary
runtime then sends a bounded sample of the requests it answered to stable as well (stable's
answer is discarded; users only ever see the track they were routed to), compares the outputs
and exports the comparison (runtime/kinfer_runtime/shadow.py):

- ``kinfer_shadow_comparisons_total``, ``kinfer_shadow_rows_total``,
  ``kinfer_shadow_argmax_agree_total`` (rows of the first output whose argmax agrees);
- ``kinfer_shadow_max_abs_diff`` histogram, one observation per comparison, 1-2-5 buckets from
  1e-6 to 100 (a shape or name mismatch is +Inf);
- ``kinfer_shadow_errors_total{reason}``.

For a generative canary a comparison is one sampled prompt answered greedily (temperature 0)
by both tracks and compared token by token: one row, agreeing when the answers are identical,
max abs diff 0 when they are and +Inf when not, and ``kinfer_shadow_first_difference_token``
(histogram) says at which token a differing answer first differed. So ``minArgmaxAgreement`` is
the share of prompts answered identically and ``maxAbsDiff`` (any value) fails on any difference.

Here the step's window is read from Prometheus (``read``, the only I/O) and judged (``judge``,
pure). A threshold between bucket bounds is compared at the bound above it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from kinfer.api import v1alpha1 as api
from kinfer.metrics_source import MetricsSource, MetricsUnavailable
from kinfer.rollout.analysis import OUTPUT_DRIFT, Verdict, selector, unavailable

# The runtime's histogram buckets (runtime/kinfer_runtime/shadow.py): 1-2-5 from 1e-6 to 100.
BUCKETS = tuple(float(f"{m}e{e}") for e in range(-6, 3) for m in (1, 2, 5) if float(f"{m}e{e}") <= 100)
# increase() extrapolates to the window's edges: a count below this is rounding, not a sample.
HALF_A_SAMPLE = 0.5


def bound(max_abs_diff: float) -> float:
    """The bucket bound a threshold is compared at: the smallest at or above it (inf above 100)."""
    i = bisect.bisect_left(BUCKETS, max_abs_diff)
    return BUCKETS[i] if i < len(BUCKETS) else float("inf")


@dataclass(frozen=True)
class DriftStats:
    """The canary's shadow comparisons over one window."""

    samples: float  # comparisons made
    rows: float  # rows compared (first output)
    argmax_agree: float  # rows whose argmax agrees
    above: float  # comparisons whose max abs diff is above the threshold's bound
    errors: float  # shadow calls that failed or were dropped
    differing: float = 0.0  # generative: greedy answers that differ from stable's
    first_difference_sum: float = 0.0  # generative: sum of their first differing positions

    @property
    def first_difference(self) -> float | None:
        """Generative: mean position (from 0) of the first differing token."""
        return self.first_difference_sum / self.differing if self.differing >= HALF_A_SAMPLE else None

    @property
    def agreement(self) -> float | None:
        # increase() extrapolates each counter on its own: agree can come out a little above rows
        # (100.4% seen on the test bed). More than all of them agreeing means all of them.
        return min(1.0, self.argmax_agree / self.rows) if self.rows >= HALF_A_SAMPLE else None


def queries(namespace: str, name: str, window_s: int, limit: float) -> dict[str, str]:
    w = f"[{int(window_s)}s]"
    canary = selector(namespace, name, "canary")
    le = "+Inf" if limit == float("inf") else floatToGoString(limit)  # type: ignore[no-untyped-call]
    within = selector(namespace, name, "canary", f'le="{le}"')
    return {
        "samples": f"sum(increase(kinfer_shadow_comparisons_total{canary}{w}))",
        "rows": f"sum(increase(kinfer_shadow_rows_total{canary}{w}))",
        "agree": f"sum(increase(kinfer_shadow_argmax_agree_total{canary}{w}))",
        "within": f"sum(increase(kinfer_shadow_max_abs_diff_bucket{within}{w}))",
        "errors": f"sum(increase(kinfer_shadow_errors_total{canary}{w}))",
        "differing": f"sum(increase(kinfer_shadow_first_difference_token_count{canary}{w}))",
        "first_difference_sum": f"sum(increase(kinfer_shadow_first_difference_token_sum{canary}{w}))",
    }


def read(source: MetricsSource, namespace: str, name: str, spec: api.DriftCheck, window_s: int) -> DriftStats:
    """Raises MetricsUnavailable. No series yet (no comparison made) reads as zero."""
    limit = bound(spec.max_abs_diff) if spec.max_abs_diff is not None else float("inf")
    q = queries(namespace, name, window_s, limit)
    value = {k: source.scalar(v) or 0.0 for k, v in q.items()}
    return DriftStats(
        samples=value["samples"],
        rows=value["rows"],
        argmax_agree=value["agree"],
        above=max(0.0, value["samples"] - value["within"]),
        errors=value["errors"],
        differing=value["differing"],
        first_difference_sum=value["first_difference_sum"],
    )


def judge(spec: api.DriftCheck, stats: DriftStats, generative: bool = False) -> Verdict:
    """Pure verdict on one window's comparisons (greedy answers, token by token, when
    ``generative``)."""
    errors = f", {stats.errors:.0f} shadow calls failed" if stats.errors >= HALF_A_SAMPLE else ""
    if stats.samples < spec.min_samples:
        return Verdict(
            "inconclusive",
            f"drift: {stats.samples:.0f} of {spec.min_samples} shadow comparisons{errors}",
            inconclusive="NotEnoughData",
        )
    if generative:
        return _judge_greedy(spec, stats, errors)
    agreement = stats.agreement
    shown = "n/a" if agreement is None else f"{agreement * 100:.1f}%"
    numbers = f"{stats.samples:.0f} comparisons, argmax agreement {shown} over {stats.rows:.0f} rows{errors}"
    if spec.max_abs_diff is not None and stats.above >= HALF_A_SAMPLE:
        limit = bound(spec.max_abs_diff)
        return Verdict(
            "failed",
            f"output drift: {stats.above:.0f} of {stats.samples:.0f} sampled requests differ from "
            f"stable by more than {limit:g} (maxAbsDiff {spec.max_abs_diff:g}); {numbers}",
            failed_metric=OUTPUT_DRIFT,
        )
    if (
        spec.min_argmax_agreement is not None
        and agreement is not None
        and agreement < spec.min_argmax_agreement
    ):
        return Verdict(
            "failed",
            f"output drift: argmax agreement {shown} < {spec.min_argmax_agreement * 100:.1f}%; {numbers}",
            failed_metric=OUTPUT_DRIFT,
        )
    within = f"max abs diff within {bound(spec.max_abs_diff):g}, " if spec.max_abs_diff is not None else ""
    return Verdict("passed", f"drift: {within}{numbers}")


def _judge_greedy(spec: api.DriftCheck, stats: DriftStats, errors: str) -> Verdict:
    # The share identical from the differing count: with none differing it is exactly 100 %,
    # where agree / rows, two counters extrapolated apart, can read 99.6 %.
    same = 1.0 if stats.differing < HALF_A_SAMPLE else max(0.0, 1 - stats.differing / stats.samples)
    shown = f"{same * 100:.1f}%"
    where = stats.first_difference
    first = "" if where is None else f", the first differing token at position {where:.1f} on average"
    numbers = (
        f"{stats.samples:.0f} prompts answered greedily by both tracks, {shown} identical{first}{errors}"
    )
    if spec.max_abs_diff is not None and stats.differing >= HALF_A_SAMPLE:
        return Verdict(
            "failed",
            f"output drift: {stats.differing:.0f} of {stats.samples:.0f} greedy answers differ from "
            f"stable's token by token (maxAbsDiff set: any difference fails); {numbers}",
            failed_metric=OUTPUT_DRIFT,
        )
    if spec.min_argmax_agreement is not None and same < spec.min_argmax_agreement:
        return Verdict(
            "failed",
            f"output drift: greedy answers identical to stable's for {shown} of prompts < "
            f"{spec.min_argmax_agreement * 100:.1f}% (minArgmaxAgreement); {numbers}",
            failed_metric=OUTPUT_DRIFT,
        )
    return Verdict("passed", f"drift: {numbers}")


def analyze(
    source: MetricsSource,
    namespace: str,
    name: str,
    spec: api.DriftCheck,
    window_s: int,
    generative: bool = False,
) -> Verdict:
    try:
        stats = read(source, namespace, name, spec, window_s)
    except MetricsUnavailable as exc:
        return unavailable(str(exc) or type(exc).__name__)
    return judge(spec, stats, generative)
