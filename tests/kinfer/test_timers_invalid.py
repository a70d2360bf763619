"""Timers on an InferenceService whose spec the API server would refuse (an older CRD let it
in): they skip it, the InvalidSpec condition is recorded once, and nothing raises (issue 16,
item 3)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from kinfer import handlers
from kinfer.settings import OperatorConfig

from .fakes import FakeCluster
from .test_rollout_tick import DownSource

INVALID = {
    "apiVersion": "kinfer.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "ranker", "namespace": "default", "uid": "uid-1", "generation": 3},
    "spec": {
        "model": {"uri": "pvc://models/ranker/7"},
        "resources": {"gpu": "1"},  # a quoted number: a string to the CRD
        "rollout": {"canary": {"model": {"uri": "pvc://models/ranker/8"}}},
    },
}


@pytest.fixture
def memo() -> SimpleNamespace:
    runtime = handlers.Runtime(cluster=FakeCluster(INVALID), config=OperatorConfig(), source=DownSource())  # type: ignore[arg-type]
    return SimpleNamespace(runtime=runtime)


def _tick_both(memo: SimpleNamespace, body: dict[str, Any]) -> None:
    spec, status = body["spec"], body.get("status") or {}
    handlers.rollout_timer(namespace="default", name="ranker", spec=spec, status=status, body=body, memo=memo)
    handlers.autoscale_timer(namespace="default", name="ranker", spec=spec, body=body, memo=memo)


def test_timers_skip_an_invalid_spec_and_record_invalid_spec_once(
    memo: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(
        handlers.kopf, "event", lambda _o, type, reason, message: events.append((reason, message))
    )
    cluster: FakeCluster = memo.runtime.cluster
    _tick_both(memo, copy.deepcopy(INVALID))
    ready = next(c for c in cluster.isvc["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.resources.gpu: Invalid value" in ready["message"]
    assert [r for r, _ in events] == ["InvalidSpec"]
    writes = list(cluster.writes)
    # Later ticks see the condition in the watched body: no pass, no write, no event, no raise.
    for _ in range(3):
        _tick_both(memo, copy.deepcopy(cluster.isvc))
    assert cluster.writes == writes and len(events) == 1


def test_a_valid_spec_is_not_skipped(memo: SimpleNamespace) -> None:
    valid = copy.deepcopy(INVALID)
    valid["spec"]["resources"]["gpu"] = 1
    assert handlers.skip_invalid(memo, "default", "ranker", valid) is False
