"""The one question the operator asks Prometheus, as a small interface.

The autoscaler and the canary analysis both read instant scalars through ``MetricsSource``; the
real implementation (``kinfer.autoscaling.prometheus``) uses prometheus-api-client, tests use an
in-memory fake. Series labels, set by the Prometheus scrape config from pod labels:
``namespace``, ``pod``, ``kinfer_dev_isvc``, ``kinfer_dev_track`` (stable|canary).
"""

from __future__ import annotations

from typing import Protocol


class MetricsUnavailable(Exception):
    """Prometheus could not answer (down, timed out, bad response). Never means "zero"."""


class MetricsSource(Protocol):
    def scalar(self, promql: str) -> float | None:
        """Value of an instant query that yields one sample; None when it yields no sample.

        Raises MetricsUnavailable when Prometheus cannot be asked.
        """
        ...
