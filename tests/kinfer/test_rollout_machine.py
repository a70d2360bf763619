"""Scenarios of the canary state machine on a synthetic clock.

One helper, ``advance(state, to=t0 + 2 * MIN, verdict=PASS)``, runs one tick of the machine as the
kopf timer would: it asks ``analysis_window`` whether a verdict is wanted and hands the verdict
over only then, exactly like the real wiring.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kinfer.api import v1alpha1 as api
from kinfer.render.render import canary_weight
from kinfer.rollout import machine
from kinfer.rollout.analysis import ERROR_RATE, P95_LATENCY, Verdict, unavailable
from kinfer.rollout.machine import (
    CONTROL_ANNOTATION,
    NO_VERDICT_TIMEOUT_S,
    READY_TIMEOUT_S,
    Controls,
    Promote,
    RollBack,
    SetWeight,
    Transition,
    parse_controls,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)

CANARY_MODEL = api.Model(uri="pvc://models/ranker/8")
SPEC = api.Rollout(
    canary=api.Canary(
        model=CANARY_MODEL,
        steps=[10, 25, 50, 100],
        step_seconds=120,
        analysis=api.Analysis(max_p95_latency_ms=180, max_error_rate=0.005, min_requests=200),
    )
)

PASS = Verdict("passed", "canary p95 120 ms, errors 0.10%, 340 requests")
SLOW = Verdict("failed", "p95 latency 420 ms > 180 ms", failed_metric=P95_LATENCY)
ERRORS = Verdict("failed", "error rate 12.00% > 0.50%", failed_metric=ERROR_RATE)
FEW = Verdict("inconclusive", "not enough canary traffic: 37 of 200 requests", inconclusive="NotEnoughData")
DOWN = unavailable("connection refused")

State = Transition | api.CanaryStatus | None


def advance(
    state: State,
    *,
    to: datetime,
    verdict: Verdict | None = None,
    control: str | None = None,
    ready: bool = True,
    spec: api.Rollout = SPEC,
) -> Transition:
    status = state.status if isinstance(state, Transition) else state
    wanted = machine.analysis_window(status, to) is not None
    controls = parse_controls({CONTROL_ANNOTATION: control} if control else {})
    return machine.step(spec, status, verdict if wanted else None, controls, to, canary_ready=ready)


def started(at: datetime = T0) -> Transition:
    """A rollout whose canary pods became ready at ``at``: step 1/4 at 10 %."""
    return advance(advance(None, to=at - 30 * SEC), to=at)


def phase(t: Transition) -> tuple[str, int, int]:
    assert t.status is not None
    return t.status.phase, t.status.step, t.status.weight


def reasons(t: Transition) -> list[str]:
    return [e.reason for e in t.events]


# --- happy path ---------------------------------------------------------------------------------


def test_happy_path_walks_every_step_to_100_percent_and_succeeds() -> None:
    t = advance(None, to=T0)
    assert phase(t) == ("Pending", 0, 10)
    assert reasons(t) == ["CanaryPending"]
    assert t.actions == [SetWeight(10)]

    t = advance(t, to=T0 + 30 * SEC)
    assert phase(t) == ("Progressing", 0, 10)
    assert t.status is not None and t.status.summary == "1/4 10%"
    step_start = T0 + 30 * SEC

    seen = []
    now = step_start
    while t.status is not None and t.status.phase == "Progressing":
        now += 15 * SEC  # the timer's interval
        t = advance(t, to=now, verdict=PASS)
        if t.events:
            seen.append((now - step_start, phase(t), reasons(t)))
            step_start = now
    assert seen == [
        (2 * MIN, ("Progressing", 1, 25), ["CanaryStep"]),
        (2 * MIN, ("Progressing", 2, 50), ["CanaryStep"]),
        (2 * MIN, ("Progressing", 3, 100), ["CanaryStep"]),
        (2 * MIN, ("Promoting", 3, 100), ["CanaryPromoting"]),
    ]
    assert t.actions == [SetWeight(100)]

    t = advance(t, to=now + 15 * SEC, ready=False)  # canary still scaling up to all replicas
    assert phase(t) == ("Promoting", 3, 100)
    t = advance(t, to=now + 30 * SEC)
    assert phase(t) == ("Succeeded", 3, 100)
    assert t.actions == [Promote(CANARY_MODEL)]
    assert t.status is not None and t.status.summary == "Succeeded"
    assert "Set spec.model.uri to pvc://models/ranker/8" in t.status.message

    # Terminal: later ticks (the same manifest re-applied, more verdicts) change nothing.
    again = advance(t, to=now + 10 * MIN, verdict=SLOW)
    assert again.status == t.status and not again.events and not again.actions


def test_after_promotion_stable_takes_over_once_its_pods_run_the_canary_model() -> None:
    t = advance(advance(started(), to=T0 + MIN, control="promote"), to=T0 + 2 * MIN)
    assert phase(t) == ("Succeeded", 0, 100)
    assert t.status is not None and not t.status.handed_over
    held = machine.step(SPEC, t.status, None, Controls(), T0 + 3 * MIN, stable_promoted=False)
    assert held.status == t.status and not held.events  # stable pods still rolling
    over = machine.step(SPEC, t.status, None, Controls(), T0 + 4 * MIN, stable_promoted=True)
    assert over.status is not None and over.status.handed_over
    assert over.actions == [SetWeight(0)] and reasons(over) == ["CanaryHandedOver"]
    assert "Set spec.model.uri to pvc://models/ranker/8" in over.status.message
    cond = machine.rollout_condition(over.status)
    assert cond is not None and cond.status == "True"
    # Once handed over, nothing more happens until the manifest catches up.
    later = machine.step(SPEC, over.status, None, Controls(), T0 + 9 * MIN, stable_promoted=True)
    assert later.status == over.status and not later.events and not later.actions


def test_step_events_carry_the_verdict_numbers() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)
    assert t.events[0].message.startswith("step 1/4 passed: canary p95 120 ms")
    assert t.events[0].message.endswith("step 2/4: 25% of traffic to the canary")


def test_a_passing_verdict_before_the_step_ends_does_not_advance() -> None:
    t = advance(started(), to=T0 + 119 * SEC, verdict=PASS)
    assert phase(t) == ("Progressing", 0, 10) and not t.events


# --- failing analysis ---------------------------------------------------------------------------


def test_failing_latency_at_step_2_rolls_back_then_fails() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)
    assert phase(t) == ("Progressing", 1, 25)
    t = advance(t, to=T0 + 4 * MIN, verdict=SLOW)
    assert phase(t) == ("RollingBack", 1, 0)
    assert t.actions == [RollBack("step 2/4 failed: p95 latency 420 ms > 180 ms")]
    assert t.events[0].type == "Warning" and "420 ms > 180 ms" in t.events[0].message
    t = advance(t, to=T0 + 4 * MIN + 15 * SEC)
    assert phase(t) == ("Failed", 1, 0)
    assert reasons(t) == ["CanaryFailed"]
    assert t.status is not None and t.status.summary == "Failed"
    assert t.status.message == "step 2/4 failed: p95 latency 420 ms > 180 ms"


def test_slow_latency_mid_step_waits_for_the_step_end() -> None:
    # Cold canary pods can be slow for their first seconds; latency is judged on the full step.
    t = advance(started(), to=T0 + 45 * SEC, verdict=SLOW)
    assert phase(t) == ("Progressing", 0, 10)


def test_errors_mid_step_roll_back_at_once() -> None:
    t = advance(started(), to=T0 + 45 * SEC, verdict=ERRORS)
    assert phase(t) == ("RollingBack", 0, 0)
    assert "error rate 12.00%" in t.events[0].message


def test_no_verdict_is_asked_in_the_first_seconds_of_a_step() -> None:
    assert machine.analysis_window(started().status, T0 + 10 * SEC) is None
    assert machine.analysis_window(started().status, T0 + 90 * SEC) == 90


# --- too little traffic -------------------------------------------------------------------------


def test_not_enough_requests_waits_past_the_step_end() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=FEW)
    assert phase(t) == ("Progressing", 0, 10) and reasons(t) == ["AnalysisWaiting"]
    assert t.status is not None and t.status.message.startswith("waiting at step 1/4 at 10%")
    t = advance(t, to=T0 + 3 * MIN, verdict=FEW)
    assert phase(t) == ("Progressing", 0, 10) and not t.events  # one event per hold, not per tick
    t = advance(t, to=T0 + 7 * MIN, verdict=PASS)  # traffic arrived: the same step passes
    assert phase(t) == ("Progressing", 1, 25)


def test_not_enough_requests_fails_after_the_timeout() -> None:
    deadline = T0 + 2 * MIN + NO_VERDICT_TIMEOUT_S * SEC
    t = advance(started(), to=deadline - SEC, verdict=FEW)
    assert phase(t) == ("Progressing", 0, 10)
    t = advance(t, to=deadline, verdict=FEW)
    assert phase(t) == ("RollingBack", 0, 0)
    assert t.status is not None
    assert t.status.message.startswith(f"no verdict {NO_VERDICT_TIMEOUT_S} s after step 1/4")
    assert "37 of 200 requests" in t.status.message


def test_canary_pods_never_ready_roll_back_after_the_ready_timeout() -> None:
    t = advance(None, to=T0)
    t = advance(t, to=T0 + READY_TIMEOUT_S * SEC, ready=False)
    assert phase(t) == ("Pending", 0, 10)
    t = advance(t, to=T0 + (READY_TIMEOUT_S + 1) * SEC, ready=False)
    assert phase(t) == ("RollingBack", 0, 0)


# --- Prometheus unavailable ---------------------------------------------------------------------


def test_prometheus_unavailable_never_rolls_back() -> None:
    t = started()
    events = []
    for minutes in range(2, 6 * 60, 7):  # six hours of outage
        t = advance(t, to=T0 + minutes * MIN, verdict=DOWN)
        assert phase(t) == ("Progressing", 0, 10)
        assert not t.actions
        events += t.events
    assert [(e.reason, e.type) for e in events] == [("AnalysisUnavailable", "Warning")]
    assert t.status is not None
    assert t.status.message.startswith("holding step 1/4 at 10%: Prometheus unavailable")
    t = advance(t, to=T0 + 6 * 60 * MIN, verdict=PASS)  # back: the step is judged and passes
    assert phase(t) == ("Progressing", 1, 25)


def test_no_verdict_at_all_holds() -> None:
    t = advance(started(), to=T0 + 60 * MIN, verdict=None)
    assert phase(t) == ("Progressing", 0, 10) and not t.events


# --- manual controls ----------------------------------------------------------------------------


def test_pause_holds_and_resume_restarts_the_step() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)  # step 2 from T0 + 2 min
    t = advance(t, to=T0 + 3 * MIN, verdict=PASS, control="pause")
    assert phase(t) == ("Paused", 1, 25) and reasons(t) == ["CanaryPaused"]
    assert t.status is not None and t.status.summary == "Paused 2/4 25%"
    t = advance(t, to=T0 + 90 * MIN, verdict=SLOW, control="pause")
    assert phase(t) == ("Paused", 1, 25) and not t.events

    t = advance(t, to=T0 + 91 * MIN, control="resume")
    assert phase(t) == ("Progressing", 1, 25) and reasons(t) == ["CanaryResumed"]
    t = advance(t, to=T0 + 92 * MIN, verdict=PASS, control="resume")
    assert phase(t) == ("Progressing", 1, 25)  # the step's clock restarted at resume
    t = advance(t, to=T0 + 93 * MIN, verdict=PASS)  # the annotation removed: same as resume
    assert phase(t) == ("Progressing", 2, 50)


def test_abort_rolls_back_at_once() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)
    t = advance(t, to=T0 + 2 * MIN + 15 * SEC, verdict=PASS, control="abort")
    assert phase(t) == ("RollingBack", 1, 0)
    assert t.actions == [RollBack(f"aborted by annotation {CONTROL_ANNOTATION}=abort")]
    t = advance(t, to=T0 + 3 * MIN, control="abort")
    assert phase(t) == ("Failed", 1, 0)
    t = advance(t, to=T0 + 4 * MIN, control="abort")
    assert phase(t) == ("Failed", 1, 0) and not t.events


def test_promote_now_skips_the_remaining_steps() -> None:
    t = advance(started(), to=T0 + 30 * SEC, control="promote")
    assert phase(t) == ("Promoting", 0, 100)
    assert t.actions == [SetWeight(100)]
    t = advance(t, to=T0 + 45 * SEC, control="promote")
    assert phase(t) == ("Succeeded", 0, 100)


def test_promote_overrules_a_failed_canary() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=SLOW)
    t = advance(t, to=T0 + 3 * MIN)
    assert phase(t) == ("Failed", 0, 0)
    t = advance(t, to=T0 + 4 * MIN, control="promote")
    assert phase(t) == ("Promoting", 0, 100)


def test_controls_do_nothing_where_they_do_not_apply() -> None:
    done = advance(advance(started(), to=T0 + MIN, control="promote"), to=T0 + 2 * MIN)
    assert phase(done) == ("Succeeded", 0, 100)
    for control in ("pause", "abort", "resume", "promote"):
        t = advance(done, to=T0 + 3 * MIN, control=control)
        assert t.status == done.status and not t.events


def test_unknown_control_values_are_reported_and_ignored() -> None:
    assert parse_controls({CONTROL_ANNOTATION: " Pause "}) == Controls("pause")
    bad = parse_controls({CONTROL_ANNOTATION: "rollback"})
    assert bad.command is None and "'rollback' ignored" in bad.error
    assert parse_controls(None) == Controls()


# --- restart ------------------------------------------------------------------------------------


def restart(t: Transition) -> api.CanaryStatus:
    """What a new operator process reads back: status.canary as JSON from the API server."""
    assert t.status is not None
    wire = json.loads(json.dumps(t.status.model_dump(by_alias=True)))
    return api.CanaryStatus.model_validate(wire)


def test_restart_mid_step_resumes_at_the_same_step_and_weight() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)  # step 2/4 began at T0 + 2 min
    t = advance(t, to=T0 + 3 * MIN, verdict=PASS)
    # The operator dies here and starts again a minute later.
    resumed = restart(t)
    assert resumed == t.status
    t2 = advance(resumed, to=T0 + 3 * MIN + 50 * SEC, verdict=PASS)
    assert phase(t2) == ("Progressing", 1, 25) and not t2.events  # the step is 110 s old
    t2 = advance(t2, to=T0 + 4 * MIN, verdict=PASS)
    assert phase(t2) == ("Progressing", 2, 50)  # and ends on its original schedule


@pytest.mark.parametrize("control", [None, "pause"])
def test_restart_in_every_phase_keeps_the_phase(control: str | None) -> None:
    t = advance(None, to=T0)
    for i in range(12):
        before = t
        now = T0 + (i + 1) * MIN
        t = advance(restart(t), to=now, verdict=PASS, control=control)
        direct = advance(before, to=now, verdict=PASS, control=control)
        assert t == direct


def test_a_damaged_step_timestamp_restarts_the_step() -> None:
    status = restart(started()).model_copy(update={"step_started_at": "yesterday"})
    t = advance(status, to=T0 + 5 * MIN, verdict=PASS)
    assert phase(t) == ("Progressing", 0, 10)
    assert t.status is not None and t.status.step_started_at == "2025-03-01T12:05:00Z"


def test_steps_shortened_mid_rollout_stay_in_range() -> None:
    t = advance(started(), to=T0 + 2 * MIN, verdict=PASS)
    t = advance(t, to=T0 + 4 * MIN, verdict=PASS)  # step 3/4
    assert SPEC.canary is not None
    shorter = api.Rollout(canary=SPEC.canary.model_copy(update={"steps": [50, 100]}))
    t = advance(t, to=T0 + 6 * MIN, verdict=PASS, spec=shorter)
    assert phase(t) == ("Promoting", 1, 100)


# --- spec changes, render and conditions ---------------------------------------------------------


def test_removing_the_canary_clears_the_status() -> None:
    t = advance(started(), to=T0 + MIN, spec=api.Rollout())
    assert t.status is None and t.actions == [SetWeight(0)]
    assert advance(None, to=T0, spec=api.Rollout()) == Transition(None)


def test_render_reads_the_weight_the_machine_decided() -> None:
    assert SPEC.canary is not None
    t, now, seen = advance(None, to=T0), T0, set()
    while t.status is not None and t.status.phase != "Failed":
        seen.add(t.status.phase)
        status = {"canary": t.status.model_dump(by_alias=True)}
        assert canary_weight(SPEC.canary, status) == t.status.weight
        now += 2 * MIN
        t = advance(t, to=now, verdict=PASS if t.status.step < 2 else SLOW)
    assert seen == {"Pending", "Progressing", "RollingBack"}
    for control in ("pause", "promote", "promote"):
        t = advance(t, to=now + MIN, control=control)
        assert t.status is not None
        status = {"canary": t.status.model_dump(by_alias=True)}
        assert canary_weight(SPEC.canary, status) == t.status.weight
    assert phase(t) == ("Succeeded", 2, 100)


def test_effective_model_and_condition_follow_the_phase() -> None:
    spec = api.InferenceServiceSpec(model=api.Model(uri="pvc://models/ranker/7"), rollout=SPEC)
    t = started()
    assert machine.effective_model(spec, t.status) == spec.model
    cond = machine.rollout_condition(t.status)
    assert cond is not None and (cond.status, cond.reason) == ("Unknown", "Progressing")
    t = advance(advance(t, to=T0 + MIN, control="promote"), to=T0 + 2 * MIN)
    assert machine.effective_model(spec, t.status) == CANARY_MODEL
    cond = machine.rollout_condition(t.status)
    assert cond is not None and (cond.type, cond.status) == ("RolloutSucceeded", "True")
    failed = advance(advance(started(), to=T0 + MIN, control="abort"), to=T0 + 2 * MIN)
    cond = machine.rollout_condition(failed.status)
    assert cond is not None and (cond.status, cond.reason) == ("False", "RolledBack")
    assert machine.rollout_condition(None) is None


def test_public_surface() -> None:
    import kinfer.rollout

    assert kinfer.rollout.__all__ == [
        "CONTROL_ANNOTATION",
        "Action",
        "Controls",
        "Event",
        "Promote",
        "RollBack",
        "SetWeight",
        "TrackStats",
        "Transition",
        "Verdict",
        "analysis_window",
        "analyze",
        "effective_model",
        "judge",
        "parse_controls",
        "rollout_condition",
        "step",
    ]
