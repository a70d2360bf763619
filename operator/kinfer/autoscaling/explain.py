"""Why the autoscaler chose a count, in words: for ``kinfer explain-scale``.

``explain`` formats a Decision with every term that led to it. ``explain_recorded`` replays a
recorded window file, so a surprising decision seen in a cluster can be reproduced offline:

    spec:   {minReplicas: 1, maxReplicas: 8, targets: {queueDepthPerReplica: 4}}   # Scaling
    window: {sampled_at: 1700000000, queue_depth: 12, ready_replicas: 2, p95_latency_ms: 180}
    state:  {replicas: 2, recommendations: [[1699999990, 2]]}                     # optional
    now:    1700000005                                                            # optional
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kinfer.api.v1alpha1 import Scaling
from kinfer.autoscaling.decision import Decision, ScalingState, decide
from kinfer.autoscaling.window import MetricsWindow


def explain(decision: Decision, window: MetricsWindow | None = None) -> str:
    """Several lines: the verdict, then one line per step of the chain."""
    verb = "scale" if decision.changed else "keep"
    lines = [f"{verb} {decision.previous} -> {decision.replicas}: {decision.reason}"]
    if not decision.metrics_available:
        lines.append("MetricsAvailable=False (the count is held until metrics return)")
    if window is not None:
        p95 = "none" if window.p95_latency_ms is None else f"{window.p95_latency_ms:.0f}ms"
        lines.append(
            f"window: queue {window.queue_depth:g} over {window.ready_replicas} ready, "
            f"in flight {window.inflight:g}, p95 {p95}, {window.request_rate:.2f} req/s"
        )
    width = max(len(t.name) for t in decision.terms) if decision.terms else 0
    for term in decision.terms:
        note = f"  ({term.note})" if term.note else ""
        lines.append(f"  {term.name:<{width}}  {_value(term.value)}{note}")
    return "\n".join(lines)


def load_recorded(path: Path) -> tuple[Scaling, MetricsWindow, ScalingState, float]:
    """spec, window, state and now from a JSON or YAML file (YAML is a superset of JSON)."""
    data: Any = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "spec" not in data or "window" not in data:
        raise ValueError(f"{path}: needs 'spec' and 'window' (and optionally 'state', 'now')")
    spec = Scaling.model_validate(data["spec"])
    window = MetricsWindow.from_dict(data["window"])
    state = ScalingState.from_dict(data.get("state") or {})
    now = float(data.get("now", window.sampled_at))
    return spec, window, state, now


def explain_recorded(path: str | Path) -> str:
    """Replay a recorded window through ``decide`` and explain the result."""
    spec, window, state, now = load_recorded(Path(path))
    decision = decide(spec, window, state, now)
    next_state = json.dumps(decision.next_state.to_dict(), sort_keys=True)
    return f"{explain(decision, window)}\nnext state: {next_state}"


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
