"""The autoscaler's generative input: tokens in flight and p95 time to first token per replica."""

from __future__ import annotations

from kinfer.api.v1alpha1 import Scaling, Targets
from kinfer.autoscaling.decision import ScalingState, by_generation, decide
from kinfer.autoscaling.prometheus import queries
from kinfer.autoscaling.window import MetricsWindow

T0 = 1_700_000_000.0
LLM = Scaling(
    min_replicas=1,
    max_replicas=10,
    targets=Targets(p95_time_to_first_token_ms=500, tokens_in_flight_per_replica=8000),
)


def window(tokens: float = 0.0, ttft_ms: float | None = None, ready: int = 2) -> MetricsWindow:
    return MetricsWindow(sampled_at=T0, tokens_in_flight=tokens, p95_ttft_ms=ttft_ms, ready_replicas=ready,
                         request_rate=1.0, inflight=1.0)  # fmt: skip


def test_tokens_in_flight_size_the_pool() -> None:
    assert by_generation(LLM, window(tokens=30000)) == 4


def test_slow_first_tokens_grow_the_pods_behind_them_within_tolerance_they_hold() -> None:
    assert by_generation(LLM, window(ttft_ms=1500, ready=2)) == 6
    assert by_generation(LLM, window(ttft_ms=540, ready=2)) == 2


def test_without_targets_the_term_is_silent() -> None:
    assert by_generation(Scaling(), window(tokens=1e6, ttft_ms=1e5)) == 0


def test_decide_recommends_a_generative_service_up_on_ttft() -> None:
    got = decide(LLM, window(tokens=1000, ttft_ms=2000, ready=2), ScalingState(replicas=2), T0)
    terms = {t.name: t.value for t in got.terms}
    assert terms["by_generation"] == 8
    assert terms["recommendation"] == 8  # what the later steps (stabilise, panic, rate) start from


def test_window_round_trips_and_promql_reads_the_runtime_metrics() -> None:
    w = window(tokens=12, ttft_ms=80)
    assert MetricsWindow.from_dict(w.to_dict()) == w
    q = queries("ns", "chat")
    assert "kinfer_time_to_first_token_seconds_bucket" in q.p95_ttft_ms
    assert q.tokens_in_flight == 'sum(kinfer_tokens_in_flight{namespace="ns",kinfer_dev_isvc="chat"})'
