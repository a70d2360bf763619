"""The rollout timer's pure part: what it writes to status for a live InferenceService."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kinfer.metrics_source import MetricsUnavailable
from kinfer.rollout.tick import canary_ready, stable_promoted, tick

from .conftest import ROOT, load

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class DownSource:
    def scalar(self, promql: str) -> float | None:
        raise MetricsUnavailable("connection refused")


def _isvc() -> dict[str, Any]:
    isvc = load(ROOT / "examples" / "gpu-canary.yaml")
    isvc["metadata"].update({"uid": "u", "generation": 1})
    return isvc


def _canary_deployment(ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "ranker-canary", "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "readyReplicas": ready},
    }


def test_a_new_canary_starts_pending_at_the_first_step() -> None:
    result = tick(_isvc(), DownSource(), [], T0)
    canary = result.status_patch["canary"]
    assert (canary["phase"], canary["weight"], canary["revision"]) == (
        "Pending",
        10,
        "pvc://models/ranker/8",
    )
    (cond,) = result.status_patch["conditions"]
    assert (cond["type"], cond["status"]) == ("RolloutSucceeded", "Unknown")


def test_nothing_to_write_without_a_canary() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    result = tick(isvc, DownSource(), [], T0)
    assert (result.status_patch, result.events, result.reapply) == ({}, [], False)


def test_a_different_canary_model_restarts_the_rollout() -> None:
    isvc = _isvc()
    isvc["status"] = {
        "canary": {"phase": "Failed", "step": 2, "weight": 0, "revision": "pvc://models/ranker/7"}
    }
    result = tick(isvc, DownSource(), [], T0)
    assert result.status_patch["canary"]["phase"] == "Pending"


def test_prometheus_down_never_rolls_back() -> None:
    isvc = _isvc()
    first = tick(isvc, DownSource(), [_canary_deployment(1)], T0)
    isvc["status"] = dict(first.status_patch)
    now = T0
    for _ in range(60):
        now += timedelta(seconds=30)
        result = tick(isvc, DownSource(), [_canary_deployment(1)], now)
        isvc["status"].update(result.status_patch)
        assert isvc["status"]["canary"]["phase"] in ("Pending", "Progressing")


def test_canary_ready_needs_every_replica_on_the_current_template() -> None:
    assert canary_ready([_canary_deployment(1)])
    assert not canary_ready([_canary_deployment(0)])
    stale = _canary_deployment(1)
    stale["metadata"]["generation"] = 2
    assert not canary_ready([stale])
    assert not canary_ready([])


def _stable_deployment(uri: str, ready: int, replicas: int | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "ranker", "generation": 3},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {"kinfer.dev/model-uri": uri}}}},
        "status": {
            "observedGeneration": 3,
            "replicas": 2 if replicas is None else replicas,
            "updatedReplicas": ready,
            "readyReplicas": ready,
        },
    }


def test_stable_is_promoted_when_every_replica_runs_the_canary_model() -> None:
    new = "pvc://models/ranker/8"
    assert stable_promoted([_stable_deployment(new, 2)], "ranker", new)
    assert not stable_promoted([_stable_deployment(new, 1)], "ranker", new)
    assert not stable_promoted([_stable_deployment(new, 2, replicas=3)], "ranker", new)  # old pod left
    assert not stable_promoted([_stable_deployment("pvc://models/ranker/7", 2)], "ranker", new)
    assert not stable_promoted([], "ranker", new)


def test_a_succeeded_rollout_is_handed_over_to_stable() -> None:
    isvc = _isvc()
    isvc["status"] = {
        "canary": {"phase": "Succeeded", "step": 3, "weight": 100, "revision": "pvc://models/ranker/8"}
    }
    result = tick(isvc, DownSource(), [_stable_deployment("pvc://models/ranker/8", 2)], T0)
    assert result.status_patch["canary"]["handedOver"] is True
    assert result.reapply and [e.reason for e in result.events] == ["CanaryHandedOver"]


class Answers:
    """Prometheus answers picked by the first matching fragment of the query."""

    def __init__(self, *answers: tuple[str, float]) -> None:
        self.answers = answers

    def scalar(self, promql: str) -> float | None:
        return next((value for fragment, value in self.answers if fragment in promql), None)


# Prometheus answers for a canary whose latency and errors are fine.
HEALTHY = (('code=~"5.."', 0.0), ("kinfer_requests_total", 500.0), ("histogram_quantile", 0.05))


def _progressing_with_drift(step: int, weight: int) -> dict[str, Any]:
    """A step past its stepSeconds, with the drift check on."""
    isvc = _isvc()
    isvc["spec"]["rollout"]["canary"]["analysis"]["drift"] = {"maxAbsDiff": 0.01}
    started = (T0 - timedelta(seconds=130)).strftime("%Y-%m-%dT%H:%M:%SZ")
    isvc["status"] = {
        "canary": {"phase": "Progressing", "step": step, "weight": weight, "stepStartedAt": started,
                   "revision": "pvc://models/ranker/8"}
    }  # fmt: skip
    return isvc


def _comparisons(within_bound: float) -> tuple[tuple[str, float], ...]:
    return (("comparisons_total", 30.0), ("rows_total", 30.0), ("agree_total", 30.0),
            ("max_abs_diff_bucket", within_bound))  # fmt: skip


def test_a_step_with_good_metrics_but_drifting_outputs_rolls_back() -> None:
    isvc = _progressing_with_drift(step=0, weight=10)
    result = tick(isvc, Answers(*HEALTHY, *_comparisons(12.0)), [_canary_deployment(1)], T0)
    canary = result.status_patch["canary"]
    assert canary["phase"] == "RollingBack"
    assert "output drift: 18 of 30 sampled requests differ from stable by more than 0.01" in canary["message"]
    result = tick(isvc, Answers(*HEALTHY, *_comparisons(30.0)), [_canary_deployment(1)], T0)
    assert result.status_patch["canary"]["phase"] == "Progressing"
    assert result.status_patch["canary"]["step"] == 1


def test_the_step_at_100_percent_is_judged_without_drift() -> None:
    isvc = _progressing_with_drift(step=3, weight=100)
    result = tick(isvc, Answers(*HEALTHY, ("kinfer_shadow", 0.0)), [_canary_deployment(1)], T0)
    assert result.status_patch["canary"]["phase"] == "Promoting"


def _deployment(name: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {}}}},
        "status": {"observedGeneration": 1, "readyReplicas": ready},
    }


def _route(stable: int, canary: int, accepted: bool) -> dict[str, Any]:
    backends = [{"name": "ranker-stable", "weight": stable}, {"name": "ranker-canary", "weight": canary}]
    status = "True" if accepted else "False"
    parents = [{"parentRef": {"name": "kinfer"}, "conditions": [{"type": "Accepted", "status": status}]}]
    return {"spec": {"rules": [{"backendRefs": backends}]}, "status": {"parents": parents}}


def test_the_step_event_and_status_say_the_weight_the_route_applies() -> None:
    isvc = _isvc()
    tracks = [_deployment("ranker", 1, 1), _deployment("ranker-canary", 1, 1)]
    isvc["status"] = dict(tick(isvc, DownSource(), tracks, T0).status_patch)  # Pending
    result = tick(isvc, DownSource(), tracks, T0 + timedelta(seconds=10), _route(100, 0, accepted=True))
    canary = result.status_patch["canary"]
    assert (canary["phase"], canary["weight"]) == ("Progressing", 10)
    # The route still says 0 %: the re-render that sets 10 % follows this tick.
    assert (canary["appliedWeight"], canary["appliedBy"]) == (0, "HTTPRoute")
    (step,) = [e for e in result.events if e.reason == "CanaryStep"]
    assert step.message.endswith("10% of traffic to the canary (HTTPRoute and GRPCRoute weight 10%)")
    isvc["status"].update(result.status_patch)
    later = tick(isvc, DownSource(), tracks, T0 + timedelta(seconds=20), _route(90, 10, accepted=True))
    assert later.status_patch["canary"]["appliedWeight"] == 10


def test_without_an_accepted_route_the_pods_decide_and_the_event_says_so() -> None:
    isvc = _isvc()
    tracks = [_deployment("ranker", 1, 1), _deployment("ranker-canary", 1, 1)]
    isvc["status"] = dict(tick(isvc, DownSource(), tracks, T0).status_patch)
    # Stored but accepted by no Gateway: weights do nothing; 1 canary pod of 2 takes half.
    result = tick(isvc, DownSource(), tracks, T0 + timedelta(seconds=10), _route(90, 10, accepted=False))
    canary = result.status_patch["canary"]
    assert (canary["weight"], canary["appliedWeight"], canary["appliedBy"]) == (10, 50, "replicas")
    (step,) = [e for e in result.events if e.reason == "CanaryStep"]
    assert "no Gateway has accepted the HTTPRoute" in step.message
    assert step.message.endswith("1 canary of 2 = 50%"), step.message


def test_a_generative_canary_slow_to_its_first_token_rolls_back_naming_it() -> None:
    isvc = _progressing_with_drift(step=0, weight=10)
    del isvc["spec"]["rollout"]["canary"]["analysis"]["drift"]
    isvc["spec"]["model"]["format"] = isvc["spec"]["rollout"]["canary"]["model"]["format"] = "generative"
    isvc["spec"]["runtime"] = {"server": "kinfer"}
    slow = Answers(('code=~"5.."', 0.0), ("kinfer_requests_total", 500.0),
                   ('kinfer_time_to_first_token_seconds_bucket{namespace="search",kinfer_dev_isvc="ranker",'
                    'kinfer_dev_track="canary"', 2.5), ("histogram_quantile", 0.05))  # fmt: skip
    result = tick(isvc, slow, [_canary_deployment(1)], T0)
    canary = result.status_patch["canary"]
    assert canary["phase"] == "RollingBack"
    assert "p95 time to first token 2500 ms >" in canary["message"]
    assert any("p95 time to first token 2500 ms" in e.message for e in result.events)
    condition = next(c for c in result.status_patch["conditions"] if c["type"] == "RolloutSucceeded")
    assert "p95 time to first token" in condition["message"]


def test_a_generative_canary_whose_greedy_answers_differ_rolls_back_saying_where() -> None:
    isvc = _progressing_with_drift(step=0, weight=10)
    isvc["spec"]["rollout"]["canary"]["analysis"]["drift"] = {"minArgmaxAgreement": 0.95}
    isvc["spec"]["model"]["format"] = isvc["spec"]["rollout"]["canary"]["model"]["format"] = "generative"
    greedy = (("first_difference_token_count", 3.0), ("first_difference_token_sum", 6.0),
              ("comparisons_total", 30.0), ("rows_total", 30.0), ("agree_total", 27.0))  # fmt: skip
    result = tick(isvc, Answers(*greedy, *HEALTHY), [_canary_deployment(1)], T0)
    canary = result.status_patch["canary"]
    assert canary["phase"] == "RollingBack"
    assert "greedy answers identical to stable's for 90.0% of prompts < 95.0%" in canary["message"]
    assert "the first differing token at position 2.0 on average" in canary["message"]
