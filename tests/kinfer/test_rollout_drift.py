"""Output drift: the canary's shadow comparisons read from Prometheus and judged.

The comparing itself happens in the canary's runtime (tests/kinfer_runtime/test_shadow.py); the
e2e rollout tests run both halves against real Prometheus.
"""

from __future__ import annotations

import pytest

from kinfer.api import v1alpha1 as api
from kinfer.metrics_source import MetricsUnavailable
from kinfer.rollout.analysis import OUTPUT_DRIFT
from kinfer.rollout.drift import BUCKETS, DriftStats, analyze, bound, judge, queries
from kinfer_runtime.metrics import DIFF_BUCKETS


def stats(
    samples: float, above: float = 0, rows: float | None = None, agree: float | None = None
) -> DriftStats:
    rows = samples if rows is None else rows
    return DriftStats(samples, rows, rows if agree is None else agree, above, errors=0)


def test_the_buckets_are_the_runtimes_1_2_5_series() -> None:
    assert BUCKETS[:4] == (1e-6, 2e-6, 5e-6, 1e-5) and BUCKETS[-1] == 100
    assert len(BUCKETS) == 25
    # The analysis names the runtime's bucket bounds in its queries: the two must not drift.
    assert BUCKETS == DIFF_BUCKETS


@pytest.mark.parametrize(
    ("threshold", "compared_at"),
    [(0.003, 0.005), (0.01, 0.01), (0, 1e-6), (150, float("inf"))],
)
def test_a_threshold_is_compared_at_the_bucket_bound_at_or_above_it(
    threshold: float, compared_at: float
) -> None:
    assert bound(threshold) == compared_at


def test_no_verdict_before_enough_comparisons() -> None:
    verdict = judge(api.DriftCheck(max_abs_diff=0.01, min_samples=20), stats(7))
    assert verdict.inconclusive == "NotEnoughData" and "7 of 20" in verdict.message


def test_a_request_above_the_threshold_fails_naming_the_numbers() -> None:
    verdict = judge(api.DriftCheck(max_abs_diff=0.003), stats(40, above=3))
    assert verdict.failed and verdict.failed_metric == OUTPUT_DRIFT
    assert "3 of 40 sampled requests differ from stable by more than 0.005" in verdict.message


def test_extrapolation_noise_is_not_a_sample() -> None:
    assert judge(api.DriftCheck(max_abs_diff=0.01), stats(40, above=0.2)).passed


def test_low_argmax_agreement_fails() -> None:
    spec = api.DriftCheck(min_argmax_agreement=0.99)
    verdict = judge(spec, stats(40, rows=100, agree=90))
    assert verdict.failed and "argmax agreement 90.0% < 99.0%" in verdict.message
    assert judge(spec, stats(40, rows=100, agree=100)).passed


def test_same_outputs_pass_with_the_numbers() -> None:
    verdict = judge(api.DriftCheck(max_abs_diff=0.01, min_argmax_agreement=0.99), stats(25))
    assert verdict.passed
    assert (
        verdict.message
        == "drift: max abs diff within 0.01, 25 comparisons, argmax agreement 100.0% over 25 rows"
    )


class Recorded:
    """Answers queries by the metric they name; records what was asked."""

    def __init__(self, values: dict[str, float | None]) -> None:
        self.values, self.asked = values, []  # type: ignore[var-annotated]

    def scalar(self, promql: str) -> float | None:
        self.asked.append(promql)
        for metric, value in self.values.items():
            if metric in promql:
                return value
        return None


def test_analyze_reads_the_canary_track_over_the_window() -> None:
    source = Recorded(
        {
            "comparisons_total": 30,
            "rows_total": 30,
            "argmax_agree_total": 30,
            "max_abs_diff_bucket": 27,  # 3 comparisons above 0.005
            "errors_total": None,  # no series: no error
        }
    )
    verdict = analyze(source, "search", "ranker", api.DriftCheck(max_abs_diff=0.004), 120)
    assert verdict.failed and "3 of 30" in verdict.message
    assert all('kinfer_dev_track="canary"' in q and "[120s]" in q for q in source.asked)
    assert any('le="0.005"' in q for q in source.asked)


def test_queries_name_the_bucket_as_prometheus_client_writes_it() -> None:
    assert 'le="1e-06"' in queries("ns", "x", 60, 1e-6)["within"]
    assert 'le="1.0"' in queries("ns", "x", 60, 1.0)["within"]
    assert 'le="+Inf"' in queries("ns", "x", 60, float("inf"))["within"]


def test_prometheus_down_holds() -> None:
    class Down:
        def scalar(self, promql: str) -> float | None:
            raise MetricsUnavailable("connection refused")

    verdict = analyze(Down(), "ns", "x", api.DriftCheck(max_abs_diff=0.01), 60)
    assert verdict.inconclusive == "MetricsUnavailable"


def test_off_by_default() -> None:
    assert api.Analysis().drift is None


# ---- generative canaries: greedy answers compared token by token ----


def greedy(samples: float, differing: float, first_difference_sum: float = 0) -> DriftStats:
    """``samples`` prompts, one row each; the differing ones do not agree."""
    return DriftStats(samples, samples, samples - differing, differing, 0, differing, first_difference_sum)


def test_a_differing_greedy_answer_fails_with_maxabsdiff_naming_where() -> None:
    verdict = judge(api.DriftCheck(max_abs_diff=0), greedy(30, differing=3, first_difference_sum=12), True)
    assert verdict.failed and verdict.failed_metric == OUTPUT_DRIFT
    assert verdict.message.startswith(
        "output drift: 3 of 30 greedy answers differ from stable's token by token"
    )
    assert "90.0% identical, the first differing token at position 4.0 on average" in verdict.message


def test_greedy_agreement_below_the_share_fails_and_above_it_passes() -> None:
    spec = api.DriftCheck(min_argmax_agreement=0.9)
    verdict = judge(spec, greedy(20, differing=4, first_difference_sum=2), True)
    assert verdict.failed
    assert "greedy answers identical to stable's for 80.0% of prompts < 90.0%" in verdict.message
    assert "position 0.5 on average" in verdict.message
    assert judge(spec, greedy(20, differing=2, first_difference_sum=2), True).passed


def test_identical_greedy_answers_pass() -> None:
    verdict = judge(api.DriftCheck(max_abs_diff=0.01), greedy(25, differing=0), True)
    assert verdict == judge(api.DriftCheck(max_abs_diff=1e6), greedy(25, differing=0), True)
    assert verdict.passed
    assert verdict.message == "drift: 25 prompts answered greedily by both tracks, 100.0% identical"


def test_any_maxabsdiff_fails_a_differing_greedy_answer() -> None:
    # Above the histogram's last bound the tensor check cannot see a difference; tokens can.
    assert judge(api.DriftCheck(max_abs_diff=1e6), greedy(25, differing=1), True).failed


def test_greedy_queries_read_the_first_difference_histogram() -> None:
    q = queries("chat", "llm", 60, 0.01)
    sel = 'namespace="chat",kinfer_dev_isvc="llm",kinfer_dev_track="canary"'
    assert q["differing"] == f"sum(increase(kinfer_shadow_first_difference_token_count{{{sel}}}[60s]))"
    assert (
        q["first_difference_sum"] == f"sum(increase(kinfer_shadow_first_difference_token_sum{{{sel}}}[60s]))"
    )


def test_extrapolated_agreement_above_all_rows_reads_as_all() -> None:
    # increase() extrapolates each counter on its own (the test bed showed 100.4%).
    assert DriftStats(30.2, 30.1, 30.22, 0, 0).agreement == 1.0


@pytest.mark.parametrize("agree", [29.9, 30.3])
def test_greedy_answers_none_differing_are_all_identical_whatever_the_extrapolation(agree: float) -> None:
    verdict = judge(api.DriftCheck(min_argmax_agreement=1.0), DriftStats(30.2, 30.1, agree, 0, 0), True)
    assert verdict.passed and "100.0% identical" in verdict.message
