"""Judging the operator's decisions during a fault run (bench/operator_scale.py --faults).

`Audit.observe()` is fed the InferenceService's status as a client polls it, with the time it was
read; it records every decision that is wrong for a service under steady demand with a good
canary: a scale-down while the demand holds, a desired count outside [min, max], a canary that
leaves a step before its stepSeconds, restarts a step's clock, goes back a step, or rolls back.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ROLLED_BACK = ("RollingBack", "Failed")


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@dataclass
class Audit:
    min_replicas: int
    max_replicas: int
    step_seconds: float
    # Set once the load has taken the service to its count: from then on it may not fall.
    demand: bool = False
    desired: int | None = None
    canary: dict[str, Any] | None = None
    scale_downs: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def observe(self, status: dict[str, Any], at: str) -> None:
        desired = status.get("desiredReplicas")
        if desired is not None:
            desired = int(desired)
            if not self.min_replicas <= desired <= self.max_replicas:
                self.wrong.append(
                    f"{at}: desiredReplicas {desired} outside [{self.min_replicas}, {self.max_replicas}]"
                )
            if self.demand and self.desired is not None and desired < self.desired:
                self.scale_downs.append(f"{at}: desiredReplicas {self.desired} -> {desired} under load")
            self.desired = desired
        canary = status.get("canary")
        if canary:
            self._canary(canary, at)

    def _canary(self, new: dict[str, Any], at: str) -> None:
        old, self.canary = self.canary, new
        phase = new.get("phase")
        if phase in ROLLED_BACK and (old is None or old.get("phase") != phase):
            self.wrong.append(f"{at}: canary {phase}: {new.get('message', '')}")
        if old is None or phase in ROLLED_BACK:
            return
        step, old_step = int(new.get("step") or 0), int(old.get("step") or 0)
        if step < old_step:
            self.wrong.append(f"{at}: canary went back from step {old_step} to {step}")
        if old.get("phase") != "Progressing" or phase == "Paused":
            return
        started, old_started = new.get("stepStartedAt"), old.get("stepStartedAt")
        if phase == "Progressing" and step == old_step:
            if started != old_started:
                self.wrong.append(f"{at}: step {step}'s clock restarted ({old_started} -> {started})")
            return
        if started and old_started:
            took = (_at(started) - _at(old_started)).total_seconds()
            if took < self.step_seconds:
                self.wrong.append(
                    f"{at}: canary left step {old_step} for {phase} after {took:.0f} s "
                    f"(stepSeconds {self.step_seconds:g})"
                )

    def count(self) -> int:
        """Wrong decisions of every kind, the scale-downs included."""
        return len(self.scale_downs) + len(self.wrong)
