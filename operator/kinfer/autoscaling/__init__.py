"""Autoscaling for mode ``metrics``: collect (``prometheus``), decide (``decision``), explain.

Scaling the Deployments is the handler's job; this package does no Kubernetes I/O.
"""

from kinfer.autoscaling.decision import Decision, ScalingState, Term, decide
from kinfer.autoscaling.window import MetricsWindow

__all__ = ["Decision", "MetricsWindow", "ScalingState", "Term", "decide"]
