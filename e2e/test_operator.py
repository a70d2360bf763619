"""The operator on the real test bed: reconcile, status, drift, GC, restarts, HA, RBAC.

The operator runs as a process authenticated with its ServiceAccount's token, so the RBAC in
config/rbac/ is exactly what it has. Model-server pods are real kinfer-runtime processes started
by the test bed's launcher.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinfer.manifests import SERVICE_ACCOUNT
from kinfer_dev.local import OPERATOR_NAMESPACE, OperatorProcess
from operator_bed import ROOT, Setup, example, resource_versions

pytestmark = pytest.mark.e2e

INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
OWNED = "deployments,services,poddisruptionbudgets,networkpolicies"
NAMESPACED_HOME = "kinfer-team-a-system"


def _first_line_fields(path: Path) -> list[str]:
    return [f.strip() for f in path.read_text().splitlines()[0].removeprefix("# expect: ").split(",")]


@pytest.mark.parametrize("name", ["minimal", "gpu-hpa", "gpu-canary", "ab-header"])
def test_example_becomes_ready_with_owned_objects(
    setup: Setup, namespace: str, wait_for: Any, name: str
) -> None:
    doc = example(name, setup.model)
    isvc = setup.apply(namespace, doc)
    setup.wait_ready(wait_for, namespace, isvc)
    # kubectl wait works on the same condition.
    setup.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"kisvc/{isvc}", "--timeout=5s")
    uid = setup.get(namespace, f"inferenceservice/{isvc}")["metadata"]["uid"]
    owned = setup.get(namespace, OWNED)["items"]
    kinds = {o["kind"] for o in owned}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for obj in owned:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid, obj["metadata"]["name"]
    gpus = doc["spec"].get("resources", {}).get("gpu", 0)
    for deployment in (o for o in owned if o["kind"] == "Deployment"):
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) == gpus
    if gpus:
        pods = setup.get(namespace, f"pods -l kinfer.dev/isvc={isvc}")["items"]
        # Pods still pending (GPUs held by an earlier test's terminating pods) have no node yet.
        nodes = {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")}
        assert nodes and all(n.startswith("gpu-") for n in nodes), nodes
    printed = setup.kubectl("get", "kisvc", "-n", namespace, isvc).stdout
    assert "True" in printed.splitlines()[1], printed


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_is_refused_by_the_api_server(setup: Setup, namespace: str, path: Path) -> None:
    result = setup.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    # e2e/test_validation_parity.py compares the API server's field and words with kinfer's;
    # here: refused, naming the field. `kubectl apply` itself names three differently: a document
    # in another namespace ("the namespace from the provided object ..."), an unknown version, and
    # a missing name ("resource name may not be empty").
    kubectl_words = {"metadata.namespace": "namespace", "apiVersion": "version", "metadata.name": "name"}
    for field in _first_line_fields(path):
        assert kubectl_words.get(field, field) in result.stderr, result.stderr


def test_spec_change_rolls_out_and_observed_generation_follows(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc)
    patch = {"spec": {"runtime": {"batching": {"maxBatchSize": 8}}, "scaling": {"maxReplicas": 3}}}
    setup.kubectl("patch", "-n", namespace, f"kisvc/{isvc}", "--type=merge", "-p", json.dumps(patch))

    def rolled_out() -> bool:
        deployment = setup.get(namespace, f"deployment/{isvc}")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        obj = setup.get(namespace, f"kisvc/{isvc}")
        observed = obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        return "--max-batch-size=8" in args and observed

    wait_for(rolled_out, 30, describe=lambda: "new args and observedGeneration\n" + setup.why(namespace))
    setup.wait_ready(wait_for, namespace, isvc)


def test_drift_is_repaired_and_foreign_labels_survive(setup: Setup, namespace: str, wait_for: Any) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc)
    setup.kubectl("label", "-n", namespace, f"deployment/{isvc}", "team=search")
    setup.kubectl("delete", "-n", namespace, f"service/{isvc}")
    setup.kubectl(
        "label",
        "-n",
        namespace,
        f"deployment/{isvc}",
        "app.kubernetes.io/part-of=something-else",
        "--overwrite",
    )

    def repaired() -> bool:
        labels = setup.get(namespace, f"deployment/{isvc}")["metadata"]["labels"]
        service = setup.get(namespace, f"service/{isvc}")
        return bool(service) and labels["app.kubernetes.io/part-of"] == "kinfer"

    wait_for(repaired, 30, describe=lambda: "Service back and label restored\n" + setup.why(namespace))
    labels = setup.get(namespace, f"deployment/{isvc}")["metadata"]["labels"]
    assert labels["team"] == "search", "a label kinfer does not manage was removed"
    events = setup.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Created", "Updated"} <= reasons, reasons


def test_scaled_deployment_in_fixed_mode_is_put_back(setup: Setup, namespace: str, wait_for: Any) -> None:
    doc = example("minimal", setup.model)
    doc["spec"]["scaling"] = {"mode": "fixed", "minReplicas": 1, "maxReplicas": 2}
    isvc = setup.apply(namespace, doc)
    setup.wait_ready(wait_for, namespace, isvc)
    setup.kubectl("scale", "-n", namespace, f"deployment/{isvc}", "--replicas=3")
    wait_for(
        lambda: setup.get(namespace, f"deployment/{isvc}")["spec"]["replicas"] == 1,
        30,
        describe=lambda: "replicas back to 1\n" + setup.why(namespace),
    )


def test_deleting_the_service_object_garbage_collects_owned_objects(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    wait_for(lambda: setup.get(namespace, f"deployment/{isvc}"), 30, describe="deployment")
    setup.kubectl("delete", "-n", namespace, f"kisvc/{isvc}", "--wait=false")
    wait_for(
        lambda: not setup.get(namespace, OWNED)["items"],
        60,
        describe=lambda: (
            "owned objects collected\n" + setup.why(namespace, f"inferenceservice/{isvc}", OWNED)
        ),
    )


def test_too_many_gpus_per_pod_is_degraded_with_the_scheduler_reason(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    doc = example("minimal", setup.model)
    doc["spec"]["resources"] = {"gpu": 5}
    isvc = setup.apply(namespace, doc)

    def degraded() -> dict[str, Any]:
        cond = setup.condition(namespace, isvc, "Degraded")
        return cond if cond.get("status") == "True" else {}

    cond = wait_for(degraded, 60, describe=lambda: "Degraded\n" + setup.why(namespace))
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]
    ready = setup.condition(namespace, isvc, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")


def test_restart_with_nothing_changed_writes_nothing(setup: Setup, namespace: str, wait_for: Any) -> None:
    isvc = setup.apply(namespace, example("minimal", setup.model))
    setup.wait_ready(wait_for, namespace, isvc)
    # Let status settle before the snapshot: the pass triggered by Ready itself, and the
    # autoscaler's MetricsAvailable, which turns True once Prometheus has scraped the new pod.
    wait_for(
        lambda: (
            setup.condition(namespace, isvc, "Progressing").get("status") == "False"
            and setup.condition(namespace, isvc, "MetricsAvailable").get("status") == "True"
        ),
        60,
        describe="Progressing=False and MetricsAvailable=True",
    )

    def snapshot() -> dict[str, str]:
        objects = setup.get(namespace, OWNED)["items"]
        objects.append(setup.get(namespace, f"kisvc/{isvc}"))
        return resource_versions(objects)

    before = snapshot()
    setup.restart_operator("operator-a2.log")

    def passes_done() -> bool:
        try:
            text = setup.operator.metrics()
        except OSError:
            return False
        done = [
            line
            for line in text.splitlines()
            if line.startswith('kinfer_operator_reconcile_total{result="ok"}')
        ]
        return bool(done) and float(done[0].split()[-1]) >= 1

    wait_for(passes_done, 60, describe=lambda: "the new operator's first pass\n" + setup.operator.tail())
    assert snapshot() == before


def _holder(setup: Setup) -> str:
    lease = setup.get(OPERATOR_NAMESPACE, "lease kinfer")
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _passes(operator: OperatorProcess) -> float:
    """Reconcile passes this operator has run (any result), from its /metrics."""
    lines = operator.metrics().splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("kinfer_operator_reconcile_total{"))


def test_standby_takes_over_when_the_leader_is_killed(setup: Setup, namespace: str, wait_for: Any) -> None:
    standby = setup.start_operator("operator-b.log", "--identity", "standby")
    try:
        leader = wait_for(lambda: _holder(setup), 30, describe="a holder of lease/kinfer")
        assert leader != "standby"
        wait_for(lambda: standby.metrics(), 30, describe=lambda: "standby up\n" + standby.tail())
        # While it waits the standby runs no pass (and no timer): one writer.
        first = setup.apply(namespace, example("minimal", setup.model))
        wait_for(lambda: setup.get(namespace, f"deployment/{first}"), 30, describe="leader's Deployment")
        assert _passes(standby) == 0, standby.tail()

        setup.operator.stop(signal.SIGKILL)
        killed = time.monotonic()
        doc = example("minimal", setup.model)
        doc["metadata"]["name"] = "iris-after-failover"
        second = setup.apply(namespace, doc)
        wait_for(
            lambda: setup.get(namespace, f"deployment/{second}"),
            30,
            describe=lambda: "standby created the Deployment\n" + standby.tail(),
            interval=0.5,
        )
        took = time.monotonic() - killed
        assert _holder(setup) == "standby"
        # The Lease lasts 15 s after the last renewal the standby saw, then a pass.
        assert took < 25, f"takeover took {took:.1f} s"
        # The new leader caught up on the first one too: drift repaired.
        setup.kubectl("delete", "-n", namespace, f"service/{first}")
        wait_for(
            lambda: setup.get(namespace, f"service/{first}"), 10, describe="service recreated by the standby"
        )
    finally:
        standby.stop()
        # Leave a leader for the tests that follow (the standby gave the Lease up on SIGTERM).
        setup.operator = setup.start_operator("operator-a3.log")


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("create", "deployments.apps", True),
        ("patch", "inferenceservices.kinfer.dev/status", True),
        ("patch", "inferenceservices.kinfer.dev", True),  # kopf's finalizer, for the timers
        ("update", "inferenceservices.kinfer.dev", False),
        ("delete", "nodes", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
        ("delete", "pods", False),
        ("*", "*", False),
    ],
)
def test_operator_service_account_has_least_privilege(
    setup: Setup, verb: str, resource: str, allowed: bool
) -> None:
    answer = setup.can_i(f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}", verb, resource)
    assert answer == ("yes" if allowed else "no"), f"{verb} {resource}: {answer}"


@pytest.fixture(scope="module")
def namespaced_operator_account(setup: Setup) -> Iterator[str]:
    """The RBAC of an operator limited to team-a (`--watch-namespace team-a`), under its own
    name so it sits beside the cluster-wide one; returns the ServiceAccount's user name."""
    for ns in ("team-a", "team-b", NAMESPACED_HOME):
        setup.kubectl("create", "namespace", ns, check=False)
    manifests = subprocess.run(
        [sys.executable, "-m", "kinfer", "manifests", "--only", "rbac", "--namespace", NAMESPACED_HOME,
         "--name", "kinfer-team-a", "--watch-namespace", "team-a"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    setup.kubectl("apply", "--server-side", "-f", "-", input=manifests)
    yield f"system:serviceaccount:{NAMESPACED_HOME}:kinfer-team-a"
    setup.kubectl("delete", "-f", "-", input=manifests, check=False)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [
        ("create", "deployments.apps", "team-a", True),
        ("watch", "inferenceservices.kinfer.dev", "team-a", True),
        ("create", "deployments.apps", "team-b", False),
        ("delete", "services", "team-b", False),
        ("list", "inferenceservices.kinfer.dev", "team-b", False),
        ("get", "secrets", "team-a", False),
        ("update", "leases.coordination.k8s.io", NAMESPACED_HOME, True),
        ("update", "leases.coordination.k8s.io", "team-a", False),
    ],
)
def test_namespaced_operator_touches_only_its_namespaces(
    setup: Setup, namespaced_operator_account: str, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    answer = setup.can_i(namespaced_operator_account, verb, resource, namespace)
    assert answer == ("yes" if allowed else "no"), f"{verb} {resource} in {namespace}: {answer}"
