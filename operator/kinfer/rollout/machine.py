"""The canary rollout as a pure state machine: (spec, status, verdict, controls, now) -> Transition.

No I/O and no clock: the kopf timer reads the verdict (``analysis.analyze``) and the annotation,
passes ``now``, stores ``Transition.status`` in ``status.canary`` and emits ``Transition.events``.
Everything the machine needs to resume is in ``status.canary`` (phase, step, weight,
stepStartedAt), so an operator restart continues at the same step and weight.

Phases::

    Pending -> Progressing(step i, weight w) -> ... -> Promoting -> Succeeded -> (handed over)
       \\            |    ^                      |
        \\           v    | resume               v
         \\-------> Paused                    RollingBack -> Failed

Traffic follows from status alone: ``render`` sends ``weight`` percent to the canary, 0 % in
RollingBack and Failed, 100 % in Promoting and Succeeded until ``handedOver``. Promotion is a
blue/green handover in two halves: in Promoting the canary grows to the full replica count while
stable keeps its pods; in Succeeded the stable Deployment switches to the canary's model (the
effective model) on all replicas, and once those are ready the canary is scaled to zero
(``handedOver``). Removing spec.rollout.canary after that prunes an empty Deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, get_args

from kinfer.api import v1alpha1 as api
from kinfer.rollout.analysis import ERROR_RATE, Verdict

CONTROL_ANNOTATION = "kinfer.dev/rollout"
Command = Literal["pause", "resume", "promote", "abort"]
COMMANDS: tuple[str, ...] = get_args(Command)

# Canary pods must be ready this long after the rollout starts, or it rolls back (like Flagger's
# progressDeadlineSeconds). Model loading on a GPU takes minutes, not seconds.
READY_TIMEOUT_S = 600
# After a step's stepSeconds, a step without a verdict (too little traffic, stable breaching too)
# waits this long, then rolls back. Prometheus being unavailable never counts: it holds.
NO_VERDICT_TIMEOUT_S = 600
# Shortest analysis window: rate() and increase() need a few scrapes to say anything.
MIN_WINDOW_S = 30

Phase = Literal["Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "Failed"]

# Where each command applies; elsewhere it is a no-op. Succeeded is final: revert through Git.
ABORTABLE = frozenset({"Pending", "Progressing", "Paused", "Promoting"})
# Promote also overrides a rollback: an operator may overrule a flaky analysis.
PROMOTABLE = frozenset({"Pending", "Progressing", "Paused", "RollingBack", "Failed"})


@dataclass(frozen=True)
class Controls:
    """The manual control read from the ``kinfer.dev/rollout`` annotation.

    Level-triggered: the annotation is a standing order, applied on every tick while present.
    ``error`` names an unrecognised value (which is otherwise ignored)."""

    command: Command | None = None
    error: str = ""


def parse_controls(annotations: Mapping[str, str] | None) -> Controls:
    raw = (annotations or {}).get(CONTROL_ANNOTATION, "").strip().lower()
    if not raw:
        return Controls()
    for command in get_args(Command):
        if raw == command:
            return Controls(command)
    return Controls(error=f"{CONTROL_ANNOTATION}={raw!r} ignored: use one of {', '.join(COMMANDS)}")


@dataclass(frozen=True)
class SetWeight:
    """Send ``weight`` percent of traffic to the canary (render reads it from status)."""

    weight: int


@dataclass(frozen=True)
class RollBack:
    """Canary to zero replicas and 0 %, stable to 100 %, at once."""

    reason: str


@dataclass(frozen=True)
class Promote:
    """The canary's model is now the effective stable model."""

    model: api.Model


Action = SetWeight | RollBack | Promote


class Event(NamedTuple):
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Transition:
    """What one tick decided. ``status`` None means: no canary, clear ``status.canary``.

    Every action's effect follows from ``status`` through render; actions tell the handler to
    apply now rather than at the next reconcile, and say what happened in tests."""

    status: api.CanaryStatus | None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


# --- time ---------------------------------------------------------------------------------------


def format_time(t: datetime) -> str:
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# --- status helpers -----------------------------------------------------------------------------


def summary(phase: Phase, step: int, weight: int, steps: int) -> str:
    """The kubectl get column: ``2/4 25%`` while progressing, else the phase."""
    position = f"{step + 1}/{steps} {weight}%"
    if phase == "Progressing":
        return position
    if phase == "Paused":
        return f"Paused {position}"
    return phase


def _status(
    canary: api.Canary, phase: Phase, step: int, weight: int, started: str, message: str
) -> api.CanaryStatus:
    return api.CanaryStatus(
        phase=phase,
        step=step,
        weight=weight,
        step_started_at=started,
        message=message,
        summary=summary(phase, step, weight, len(canary.steps)),
    )


def _index(canary: api.Canary, step: int) -> int:
    # steps may have been edited mid-rollout; stay inside the list.
    return min(max(step, 0), len(canary.steps) - 1)


def _at(canary: api.Canary, i: int) -> str:
    return f"step {i + 1}/{len(canary.steps)}"


# --- the machine --------------------------------------------------------------------------------


def step(
    spec: api.Rollout,
    status: api.CanaryStatus | None,
    verdict: Verdict | None,
    controls: Controls,
    now: datetime,
    *,
    canary_ready: bool = True,
    stable_promoted: bool = False,
) -> Transition:
    """One tick. ``verdict`` is the analysis of the window ``analysis_window`` asked for (None
    when none was read); ``canary_ready``: every desired canary replica is ready;
    ``stable_promoted``: every stable replica runs the canary's model and is ready."""
    canary = spec.canary
    if canary is None:
        if status is None:
            return Transition(None)
        message = "spec.rollout.canary removed; stable serves all traffic"
        return Transition(None, [SetWeight(0)], [Event("CanaryRemoved", message)])
    if status is None:
        return _start(canary, now)
    moved = _control(canary, status, controls, now)
    if moved is not None:
        return moved
    if status.phase == "Pending":
        return _pending(canary, status, now, canary_ready)
    if status.phase == "Progressing":
        return _progressing(canary, status, verdict, now)
    if status.phase == "Promoting":
        return _promoting(canary, status, canary_ready)
    if status.phase == "RollingBack":
        failed = _status(canary, "Failed", status.step, 0, status.step_started_at, status.message)
        return Transition(failed, [], [Event("CanaryFailed", status.message, "Warning")])
    if status.phase == "Succeeded" and not status.handed_over and stable_promoted:
        return _hand_over(canary, status)
    return Transition(status)  # Paused, Succeeded, Failed hold


def analysis_window(status: api.CanaryStatus | None, now: datetime) -> int | None:
    """Seconds of history the verdict for this tick should cover: the current step so far.

    None when no verdict is wanted (not progressing, or the step is younger than MIN_WINDOW_S).
    Reading it every tick lets a bad error rate roll back mid-step; latency waits for the end."""
    if status is None or status.phase != "Progressing":
        return None
    started = parse_time(status.step_started_at)
    if started is None:
        return None
    elapsed = int((_utc(now) - started).total_seconds())
    return elapsed if elapsed >= MIN_WINDOW_S else None


def _start(canary: api.Canary, now: datetime) -> Transition:
    weight = canary.steps[0]
    message = f"canary {canary.model.uri} starting at {weight}%; waiting for its pods to be ready"
    pending = _status(canary, "Pending", 0, weight, format_time(now), message)
    return Transition(pending, [SetWeight(weight)], [Event("CanaryPending", message)])


def _control(
    canary: api.Canary, status: api.CanaryStatus, controls: Controls, now: datetime
) -> Transition | None:
    command, phase = controls.command, status.phase
    if command == "abort" and phase in ABORTABLE:
        return _roll_back(canary, status, f"aborted by annotation {CONTROL_ANNOTATION}=abort")
    if command == "promote" and phase in PROMOTABLE:
        return _promote(canary, status, f"promoted by annotation {CONTROL_ANNOTATION}=promote")
    if command == "pause" and phase in ("Pending", "Progressing"):
        i = _index(canary, status.step)
        message = f"paused at {_at(canary, i)} ({status.weight}%) by annotation"
        paused = _status(canary, "Paused", i, status.weight, status.step_started_at, message)
        return Transition(paused, [], [Event("CanaryPaused", message)])
    if command in (None, "resume") and phase == "Paused":
        # The step starts over: its analysis window should not straddle the pause.
        i = _index(canary, status.step)
        message = f"resumed; {_at(canary, i)} restarts at {status.weight}%"
        resumed = _status(canary, "Progressing", i, status.weight, format_time(now), message)
        return Transition(resumed, [], [Event("CanaryResumed", message)])
    return None


def _pending(canary: api.Canary, status: api.CanaryStatus, now: datetime, canary_ready: bool) -> Transition:
    i = _index(canary, status.step)
    if canary_ready:
        weight = canary.steps[i]
        message = f"{_at(canary, i)}: {weight}% of traffic to the canary"
        started = _status(canary, "Progressing", i, weight, format_time(now), message)
        return Transition(started, [SetWeight(weight)], [Event("CanaryStep", message)])
    since = parse_time(status.step_started_at)
    if since is not None and _utc(now) - since > timedelta(seconds=READY_TIMEOUT_S):
        return _roll_back(canary, status, f"canary pods not ready after {READY_TIMEOUT_S} s")
    return Transition(status)


def _progressing(
    canary: api.Canary, status: api.CanaryStatus, verdict: Verdict | None, now: datetime
) -> Transition:
    i = _index(canary, status.step)
    started = parse_time(status.step_started_at)
    if started is None:
        # A damaged timestamp restarts the step rather than guessing how far it had come.
        fixed = _status(canary, "Progressing", i, status.weight, format_time(now), status.message)
        return Transition(fixed)
    elapsed = (_utc(now) - started).total_seconds()
    due = elapsed >= canary.step_seconds
    if verdict is not None and verdict.failed and (due or verdict.failed_metric == ERROR_RATE):
        return _roll_back(canary, status, f"{_at(canary, i)} failed: {verdict.message}")
    if not due or verdict is None:
        return Transition(status)
    if verdict.passed:
        return _advance(canary, i, verdict, now)
    where = f"{_at(canary, i)} at {status.weight}%"
    if verdict.inconclusive == "MetricsUnavailable":
        return _hold(status, f"holding {where}", verdict, "AnalysisUnavailable", "Warning")
    if elapsed >= canary.step_seconds + NO_VERDICT_TIMEOUT_S:
        return _roll_back(
            canary,
            status,
            f"no verdict {NO_VERDICT_TIMEOUT_S} s after {where} ended: {verdict.message}",
        )
    return _hold(status, f"waiting at {where}", verdict, "AnalysisWaiting")


def _hold(
    status: api.CanaryStatus,
    why: str,
    verdict: Verdict,
    reason: str,
    kind: Literal["Normal", "Warning"] = "Normal",
) -> Transition:
    # Message only: the step, weight and clock stay as they are. One event when a hold begins,
    # not one per tick; the numbers keep updating in status.message.
    message = f"{why}: {verdict.message}"
    held = status.model_copy(update={"message": message})
    if status.message.startswith(why + ":"):
        return Transition(held)
    return Transition(held, [], [Event(reason, message, kind)])


def _advance(canary: api.Canary, i: int, verdict: Verdict, now: datetime) -> Transition:
    passed = f"{_at(canary, i)} passed: {verdict.message}"
    if i + 1 >= len(canary.steps):
        return _promote(canary, None, passed, index=i)
    weight = canary.steps[i + 1]
    message = f"{passed}. {_at(canary, i + 1)}: {weight}% of traffic to the canary"
    nxt = _status(canary, "Progressing", i + 1, weight, format_time(now), message)
    return Transition(nxt, [SetWeight(weight)], [Event("CanaryStep", message)])


def _promote(
    canary: api.Canary, status: api.CanaryStatus | None, why: str, *, index: int | None = None
) -> Transition:
    i = index if index is not None else _index(canary, status.step if status else 0)
    started = status.step_started_at if status else ""
    promoting = _status(canary, "Promoting", i, 100, started, why)
    event = Event("CanaryPromoting", f"{why}; {canary.model.uri} gets 100% of traffic")
    return Transition(promoting, [SetWeight(100)], [event])


def _promoting(canary: api.Canary, status: api.CanaryStatus, canary_ready: bool) -> Transition:
    if not canary_ready:
        return Transition(status)
    uri = canary.model.uri
    message = (
        f"promoted {uri}: it serves all traffic. Set spec.model.uri to {uri} and remove "
        "spec.rollout.canary in your manifest"
    )
    done = _status(canary, "Succeeded", status.step, 100, status.step_started_at, message)
    return Transition(done, [Promote(canary.model)], [Event("CanarySucceeded", message)])


def _hand_over(canary: api.Canary, status: api.CanaryStatus) -> Transition:
    uri = canary.model.uri
    message = (
        f"stable now serves {uri} on all replicas; the canary is scaled to zero. Set "
        f"spec.model.uri to {uri} and remove spec.rollout.canary in your manifest"
    )
    done = status.model_copy(update={"handed_over": True, "message": message})
    return Transition(done, [SetWeight(0)], [Event("CanaryHandedOver", message)])


def _roll_back(canary: api.Canary, status: api.CanaryStatus, reason: str) -> Transition:
    back = _status(canary, "RollingBack", status.step, 0, status.step_started_at, reason)
    return Transition(back, [RollBack(reason)], [Event("CanaryRollingBack", reason, "Warning")])


# --- what others read from the status -----------------------------------------------------------


def effective_model(spec: api.InferenceServiceSpec, status: api.CanaryStatus | None) -> api.Model:
    """The model the stable Deployment runs: the canary's once the rollout Succeeded (stable
    keeps its own model through Promoting, while it still serves), else spec.model."""
    canary = spec.rollout.canary
    if canary is None or status is None or status.phase != "Succeeded":
        return spec.model
    # A status left by an earlier canary model says nothing about this one (tick resets it).
    return canary.model if status.revision in ("", canary.model.uri) else spec.model


def rollout_condition(status: api.CanaryStatus | None) -> api.Condition | None:
    """The RolloutSucceeded condition (``kubectl wait --for=condition=RolloutSucceeded``).

    None when no canary runs; lastTransitionTime and observedGeneration are the caller's."""
    if status is None:
        return None
    if status.phase == "Succeeded":
        return api.Condition(
            type="RolloutSucceeded", status="True", reason="Promoted", message=status.message
        )
    if status.phase in ("RollingBack", "Failed"):
        return api.Condition(
            type="RolloutSucceeded", status="False", reason="RolledBack", message=status.message
        )
    return api.Condition(
        type="RolloutSucceeded", status="Unknown", reason=status.phase, message=status.summary
    )
