"""reconcile() against an in-memory cluster: what it writes, prunes, and reports."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from kinfer.apply import contains
from kinfer.reconcile import failure_status, reconcile
from kinfer.settings import OperatorConfig

from .conftest import ROOT, load
from .fakes import Conflict, FakeCluster

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def _conditions(cluster: FakeCluster) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in cluster.isvc["status"]["conditions"]}


def test_first_pass_creates_everything_and_second_writes_nothing() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    first = reconcile(cluster, CONFIG, "default", "iris", T0)
    assert [a.action for a in first.applied] == ["created"] * 4
    assert {e[1] for e in first.events} == {"Created"}
    for obj in cluster.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    cluster.writes.clear()
    sent = cluster.apply_calls
    second = reconcile(cluster, CONFIG, "default", "iris", T0 + timedelta(seconds=5))
    assert cluster.writes == []
    assert cluster.apply_calls == sent  # up to date: not even a no-op apply is sent
    assert {a.action for a in second.applied} == {"unchanged"}
    assert second.events == []


def test_drift_is_put_back() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    reconcile(cluster, CONFIG, "default", "iris", T0)
    del cluster.objects[("Service", "iris")]
    cluster.objects[("Deployment", "iris")]["spec"]["replicas"] = 7
    outcome = reconcile(cluster, CONFIG, "default", "iris", T0)
    actions = {(a.kind, a.action) for a in outcome.applied}
    assert ("Service", "created") in actions and ("Deployment", "updated") in actions
    assert cluster.objects[("Deployment", "iris")]["spec"]["replicas"] == 1


def test_objects_no_longer_rendered_are_pruned_but_look_alikes_are_not() -> None:
    isvc = load(ROOT / "examples" / "gpu-hpa.yaml")
    cluster = FakeCluster(isvc)
    reconcile(cluster, CONFIG, "vision", "resnet", T0)
    assert ("HorizontalPodAutoscaler", "resnet") in cluster.objects
    stranger = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "resnet-debug",
            "namespace": "vision",
            "labels": {"kinfer.dev/isvc": "resnet"},
        },
    }
    cluster.objects[("Service", "resnet-debug")] = stranger
    cluster.isvc["spec"]["scaling"]["mode"] = "metrics"
    outcome = reconcile(cluster, CONFIG, "vision", "resnet", T0)
    assert outcome.deleted == [("HorizontalPodAutoscaler", "resnet")]
    assert ("Service", "resnet-debug") in cluster.objects


def test_status_follows_the_deployment() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    reconcile(cluster, CONFIG, "default", "iris", T0)
    assert _conditions(cluster)["Ready"] == ("False", "Starting")
    cluster.set_deployment_status("iris", replicas=1, readyReplicas=1, updatedReplicas=1)
    reconcile(cluster, CONFIG, "default", "iris", T0 + timedelta(seconds=30))
    status = cluster.isvc["status"]
    assert _conditions(cluster)["Ready"] == ("True", "Serving")
    assert _conditions(cluster)["Progressing"] == ("False", "Stable")
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (1, 1, 1)
    assert status["url"] == "http://iris.default.svc:8080"
    assert status["effectiveModelUri"] == "file:///models/iris/model.pt"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-11-27T12:00:30Z"


def test_unschedulable_gpu_pod_degrades_with_the_scheduler_message() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "gpu-hpa.yaml"))
    message = "0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint"
    cluster.pod_list = [
        {
            "metadata": {"name": "resnet-abc"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ],
            },
        }
    ]
    outcome = reconcile(cluster, CONFIG, "vision", "resnet", T0)
    conds = _conditions(cluster)
    assert conds["Degraded"] == ("True", "Unschedulable")
    assert conds["Ready"] == ("False", "Unschedulable")
    assert ("Warning", "Unschedulable", f"pod resnet-abc: {message}") in outcome.events
    # Still degraded on the next pass: no second warning.
    assert not [e for e in reconcile(cluster, CONFIG, "vision", "resnet", T0).events if e[0] == "Warning"]


def test_invalid_spec_touches_nothing_and_says_why() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    isvc["spec"]["scaling"] = {"minReplicas": 5, "maxReplicas": 2}
    cluster = FakeCluster(isvc)
    outcome = reconcile(cluster, CONFIG, "default", "iris", T0)
    assert outcome.result == "invalid" and cluster.objects == {}
    status, reason = _conditions(cluster)["Ready"]
    assert (status, reason) == ("False", "InvalidSpec")
    assert outcome.events[0][1] == "InvalidSpec"
    assert "spec.scaling.minReplicas" in outcome.events[0][2]


def test_httproute_follows_whether_the_cluster_serves_gateway_api() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "gpu-canary.yaml"))
    reconcile(cluster, CONFIG, "search", "ranker", T0)
    assert ("HTTPRoute", "ranker") not in cluster.objects
    cluster.served |= {"HTTPRoute", "GRPCRoute"}
    reconcile(cluster, CONFIG, "search", "ranker", T0)
    assert {("HTTPRoute", "ranker"), ("GRPCRoute", "ranker")} <= set(cluster.objects)
    forced_off = CONFIG.model_copy(update={"gateway_api": False})
    outcome = reconcile(cluster, forced_off, "search", "ranker", T0)
    assert {("HTTPRoute", "ranker"), ("GRPCRoute", "ranker")} <= set(outcome.deleted)


def test_an_object_kinfer_no_longer_renders_a_field_of_is_applied_again() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    reconcile(cluster, CONFIG, "default", "iris", T0)
    # The live object has every field rendered now, plus one an older kinfer rendered: the
    # digest differs, so the apply is sent (and server-side apply removes the field).
    service = cluster.objects[("Service", "iris")]
    service["metadata"]["labels"]["kinfer.dev/old"] = "x"
    service["metadata"]["annotations"]["kinfer.dev/applied-digest"] = "older"
    outcome = reconcile(cluster, CONFIG, "default", "iris", T0)
    assert ("Service", "updated") in {(a.kind, a.action) for a in outcome.applied}


def test_status_is_written_against_the_version_read() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    stale = cluster.get_isvc("default", "iris")
    reconcile(cluster, CONFIG, "default", "iris", T0)  # another write moves the version
    cluster.get_isvc = lambda namespace, name: copy.deepcopy(stale)  # type: ignore[method-assign]
    cluster.objects[("Deployment", "iris")]["status"] = {"replicas": 1, "readyReplicas": 1}
    with pytest.raises(Conflict):
        reconcile(cluster, CONFIG, "default", "iris", T0 + timedelta(seconds=1))


def test_a_pass_that_keeps_failing_is_degraded_reconcile_failed_and_other_conditions_stay() -> None:
    cluster = FakeCluster(load(ROOT / "examples" / "minimal.yaml"))
    reconcile(cluster, CONFIG, "default", "iris", T0)
    cluster.isvc["status"]["conditions"].append({"type": "ScalingActive", "status": "True", "reason": "X"})
    patch = failure_status(cluster.isvc, "3 passes failed: 500", T0)
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert (by_type["Degraded"]["status"], by_type["Degraded"]["reason"]) == ("True", "ReconcileFailed")
    assert by_type["ScalingActive"]["reason"] == "X"
    assert by_type["Ready"] == next(c for c in cluster.isvc["status"]["conditions"] if c["type"] == "Ready")


def test_contains_ignores_server_defaults_but_not_changed_or_missing_values() -> None:
    want = {"spec": {"ports": [{"port": 8080}], "selector": {"a": "b"}, "nodeSelector": {}}}
    defaulted = {
        "spec": {"ports": [{"port": 8080, "protocol": "TCP"}], "selector": {"a": "b"}, "type": "ClusterIP"}
    }
    assert contains(defaulted, want)  # extra fields, and an empty map the server leaves out
    assert not contains({"spec": {"ports": [{"port": 8081}], "selector": {"a": "b"}}}, want)
    assert not contains({"spec": {"ports": [{"port": 8080}, {"port": 9090}], "selector": {"a": "b"}}}, want)
    assert not contains({"spec": {"ports": [{"port": 8080}]}}, want)  # the selector is gone
