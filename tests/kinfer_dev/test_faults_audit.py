"""The fault run's judge of decisions, as named scenarios of polled status."""

from __future__ import annotations

from typing import Any

from kinfer_dev.faults import Audit


def canary(phase: str, step: int, started: str, message: str = "") -> dict[str, Any]:
    return {"canary": {"phase": phase, "step": step, "stepStartedAt": started, "message": message}}


def audit() -> Audit:
    return Audit(min_replicas=1, max_replicas=2, step_seconds=60)


def test_a_steady_count_under_load_is_no_wrong_decision() -> None:
    a = audit()
    a.observe({"desiredReplicas": 1}, "t0")
    a.observe({"desiredReplicas": 2}, "t1")
    a.demand = True
    for t in range(5):
        a.observe({"desiredReplicas": 2}, f"t{t + 2}")
    a.observe({}, "t8")  # a read without the field holds nothing against the operator
    assert a.count() == 0


def test_a_scale_down_before_the_demand_held_is_not_counted_after_it_is() -> None:
    a = audit()
    a.observe({"desiredReplicas": 2}, "t0")
    a.observe({"desiredReplicas": 1}, "t1")  # warm-up: no demand recorded yet
    assert a.scale_downs == []
    a.observe({"desiredReplicas": 2}, "t2")
    a.demand = True
    a.observe({"desiredReplicas": 1}, "t3")
    assert a.scale_downs == ["t3: desiredReplicas 2 -> 1 under load"]


def test_a_count_outside_the_bounds_is_wrong() -> None:
    a = audit()
    a.observe({"desiredReplicas": 3}, "t0")
    a.observe({"desiredReplicas": 0}, "t1")
    assert len(a.wrong) == 2 and "outside [1, 2]" in a.wrong[0]


def test_a_canary_that_bakes_each_step_is_no_wrong_decision() -> None:
    a = audit()
    a.observe(canary("Pending", 0, "2026-12-02T10:00:00Z"), "t0")
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:20Z"), "t1")
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:20Z"), "t2")
    a.observe(canary("Promoting", 0, "2026-12-02T10:01:25Z"), "t3")
    a.observe(canary("Succeeded", 0, "2026-12-02T10:01:25Z"), "t4")
    assert a.count() == 0, a.wrong


def test_a_premature_promotion_is_wrong() -> None:
    a = audit()
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:00Z"), "t0")
    a.observe(canary("Promoting", 0, "2026-12-02T10:00:30Z"), "t1")
    assert a.wrong == ["t1: canary left step 0 for Promoting after 30 s (stepSeconds 60)"]


def test_a_step_whose_clock_restarts_after_a_failover_is_wrong() -> None:
    a = audit()
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:00Z"), "t0")
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:40Z"), "t1")
    assert len(a.wrong) == 1 and "clock restarted" in a.wrong[0]


def test_a_rollback_of_the_good_canary_is_wrong() -> None:
    a = audit()
    a.observe(canary("Progressing", 0, "2026-12-02T10:00:00Z"), "t0")
    a.observe(canary("RollingBack", 0, "2026-12-02T10:00:10Z", "error rate 0.5"), "t1")
    a.observe(canary("RollingBack", 0, "2026-12-02T10:00:10Z", "error rate 0.5"), "t2")
    a.observe(canary("Failed", 0, "2026-12-02T10:00:10Z", "error rate 0.5"), "t3")
    assert a.wrong == ["t1: canary RollingBack: error rate 0.5", "t3: canary Failed: error rate 0.5"]
