"""docs/argocd-health.lua, run in Lua 5.1 (Argo CD's gopher-lua speaks 5.1) through lupa, against
status objects that the operator's own code writes: reconcile() on the in-memory cluster for
Ready/Progressing/Degraded, and the rollout tick for status.canary."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lupa.lua51 import LuaRuntime

from kinfer import status as status_mod
from kinfer.metrics_source import MetricsUnavailable
from kinfer.reconcile import reconcile
from kinfer.rollout.tick import tick
from kinfer.settings import OperatorConfig

from .conftest import ROOT, load
from .fakes import FakeCluster

SCRIPT = (ROOT / "docs" / "argocd-health.lua").read_text()
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


class DownSource:
    """Prometheus unreachable: the rollout holds, it never decides on missing data."""

    def scalar(self, promql: str) -> float | None:
        raise MetricsUnavailable("connection refused")


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would compute them: `obj` global, the script's return."""
    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):  # Argo CD drops JSON nulls on the way to Lua
            return lua.table_from({k: to_lua(v) for k, v in value.items() if v is not None})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    hs = lua.execute(SCRIPT)
    assert hs["status"] in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
    return str(hs["status"]), str(hs["message"])


# --- building real status objects -----------------------------------------------------------------


def _cluster(example: str) -> FakeCluster:
    return FakeCluster(load(ROOT / "examples" / example))


def _pass(cluster: FakeCluster, at: timedelta = timedelta()) -> dict[str, Any]:
    meta = cluster.isvc["metadata"]
    reconcile(cluster, CONFIG, meta["namespace"], meta["name"], T0 + at)
    return copy.deepcopy(cluster.isvc)


def _all_ready(cluster: FakeCluster) -> None:
    for (kind, name), obj in cluster.objects.items():
        if kind == "Deployment":
            n = status_mod.spec_replicas(obj)
            gen = obj["metadata"].get("generation", 0)
            cluster.set_deployment_status(
                name, observedGeneration=gen, replicas=n, readyReplicas=n, updatedReplicas=n
            )


def serving(example: str = "minimal.yaml") -> FakeCluster:
    cluster = _cluster(example)
    _pass(cluster)
    _all_ready(cluster)
    _pass(cluster, timedelta(seconds=30))
    return cluster


def _rollout(cluster: FakeCluster, command: str | None, want: str) -> dict[str, Any]:
    """Tick the canary (as the operator's timer does) until status.canary.phase is `want`."""
    if command:
        cluster.isvc["metadata"].setdefault("annotations", {})["kinfer.dev/rollout"] = command
    now = T0 + timedelta(minutes=1)
    for _ in range(20):
        deployments = [o for (k, _), o in cluster.objects.items() if k == "Deployment"]
        result = tick(copy.deepcopy(cluster.isvc), DownSource(), deployments, now)
        cluster.patch_status("search", "ranker", result.status_patch)
        if (cluster.isvc["status"].get("canary") or {}).get("phase") == want:
            return copy.deepcopy(cluster.isvc)
        now += timedelta(seconds=30)
    raise AssertionError(f"canary never reached {want}: {cluster.isvc['status'].get('canary')}")


# --- Healthy ---------------------------------------------------------------------------------------


def test_serving_and_settled_is_healthy() -> None:
    isvc = _pass(serving())
    assert health(isvc) == ("Healthy", "1/1 replicas ready")


def test_scaling_up_under_load_stays_healthy() -> None:
    cluster = serving()
    cluster.isvc["status"]["desiredReplicas"] = 3  # the autoscaler's decision
    _pass(cluster, timedelta(minutes=1))  # renders 3 replicas; one pod serves already
    cluster.objects[("Deployment", "iris")]["status"].update(replicas=3, readyReplicas=1, updatedReplicas=3)
    isvc = _pass(cluster, timedelta(minutes=2))
    conds = {c["type"]: c["reason"] for c in isvc["status"]["conditions"]}
    assert conds["Progressing"] == "ScalingUp"
    assert health(isvc)[0] == "Healthy"


def test_a_promoted_canary_is_healthy() -> None:
    cluster = serving("gpu-canary.yaml")
    isvc = _rollout(cluster, "promote", "Succeeded")
    assert health(isvc)[0] == "Healthy"


# --- Progressing -----------------------------------------------------------------------------------


def test_no_status_yet_is_progressing_and_points_at_the_operator() -> None:
    status, message = health(load(ROOT / "examples" / "minimal.yaml"))
    assert status == "Progressing"
    assert "operator" in message


def test_starting_pods_are_progressing() -> None:
    isvc = _pass(_cluster("minimal.yaml"))
    status, message = health(isvc)
    assert status == "Progressing"
    assert "waiting for the model to load" in message


def test_a_generation_the_operator_has_not_seen_is_progressing() -> None:
    isvc = _pass(serving())
    isvc["metadata"]["generation"] = 2
    assert health(isvc) == ("Progressing", "the operator has not acted on generation 2 yet")


def test_a_spec_change_rolling_out_is_progressing() -> None:
    cluster = serving()
    # The new template's pod is starting; the old one still serves.
    cluster.objects[("Deployment", "iris")]["status"].update(replicas=2, readyReplicas=1, updatedReplicas=0)
    isvc = _pass(cluster, timedelta(minutes=1))
    assert health(isvc) == ("Progressing", "1/1 replicas ready, 0 on the current spec")


def test_a_running_canary_is_progressing() -> None:
    cluster = serving("gpu-canary.yaml")
    isvc = _rollout(cluster, None, "Pending")
    status, message = health(isvc)
    assert status == "Progressing"
    assert message.startswith("canary Pending")


def test_a_paused_canary_is_suspended() -> None:
    cluster = serving("gpu-canary.yaml")
    isvc = _rollout(cluster, "pause", "Paused")
    status, message = health(isvc)
    assert status == "Suspended"
    assert "kinfer.dev/rollout=resume" in message


# --- Degraded --------------------------------------------------------------------------------------


def test_image_pull_failure_is_degraded_with_the_pod_named() -> None:
    cluster = _cluster("minimal.yaml")
    cluster.pod_list = [
        {
            "metadata": {"name": "iris-7d9f-abcde"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "model-server",
                        "image": "ghcr.io/kinfer/kinfer-runtime:nope",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                    }
                ]
            },
        }
    ]
    status, message = health(_pass(cluster))
    assert status == "Degraded"
    assert message.startswith("ImagePullFailed: pod iris-7d9f-abcde")


def test_an_invalid_spec_is_degraded() -> None:
    cluster = _cluster("minimal.yaml")
    cluster.isvc["spec"]["scaling"] = {"minReplicas": 5, "maxReplicas": 2}
    status, message = health(_pass(cluster))
    assert status == "Degraded"
    assert message.startswith("invalid spec: ")
    assert "minReplicas" in message


def test_a_rolled_back_canary_is_degraded() -> None:
    cluster = serving("gpu-canary.yaml")
    isvc = _rollout(cluster, "abort", "RollingBack")
    assert health(isvc)[0] == "Degraded"


# --- Missing ---------------------------------------------------------------------------------------


def test_no_stable_deployment_is_missing() -> None:
    isvc = _pass(serving())
    current = status_mod.conditions(deployments=[], pods=[], desired=1)
    isvc["status"]["conditions"] = status_mod.merge(isvc["status"]["conditions"], current, 1, T0)
    assert health(isvc) == ("Missing", "the stable Deployment does not exist yet")


@pytest.mark.parametrize("phase", ["Pending", "Progressing", "Promoting"])
def test_every_unfinished_canary_phase_is_progressing(phase: str) -> None:
    isvc = _pass(serving())
    isvc["status"]["canary"] = {"phase": phase, "weight": 25, "summary": "2/4 25%"}
    assert health(isvc) == ("Progressing", f"canary {phase}: 2/4 25%")
