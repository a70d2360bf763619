"""Canary rollouts: a pure state machine (``machine``) fed by Prometheus analysis (``analysis``),
with an optional output-drift check (``drift``). See docs/rollout.md."""

from kinfer.rollout.analysis import TrackStats, Verdict, analyze, judge
from kinfer.rollout.machine import (
    CONTROL_ANNOTATION,
    Action,
    Controls,
    Event,
    Promote,
    RollBack,
    SetWeight,
    Transition,
    analysis_window,
    effective_model,
    parse_controls,
    rollout_condition,
    step,
)

__all__ = [
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
