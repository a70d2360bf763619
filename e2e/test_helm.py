"""Install like users do: `helm install` of charts/kinfer on the test bed, the operator running
in-cluster as the chart's pods, under the ServiceAccount token the API server issued for each pod.

The launcher runs the chart's operator pods as processes with their volumes mounted (the
projected token, the CA, the config ConfigMap, the /tmp emptyDir), a read-only root filesystem,
no kubeconfig, and the API server and Prometheus reached through KUBERNETES_SERVICE_HOST/PORT
(launcher.py). So the chart's RBAC is what the operator really has: a forgotten permission fails
these tests.

For the module the session's operator is stopped and what `kinfer_dev.local.install` made besides
the CRDs is removed (the chart creates the same names); both come back at the end. The tests
run in order: install, serve, upgrade, uninstall.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinfer_dev.local import OPERATOR_NAMESPACE, install, operator_kubeconfig, uninstall
from kinfer_dev.testbed.install import paths
from operator_bed import ROOT, Setup, example

pytestmark = pytest.mark.e2e

RELEASE = "kinfer"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:kinfer-operator"
HOME = "helm-e2e"  # where the example InferenceService goes
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def helm(setup: Setup, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(setup.testbed.kubeconfig)}
    proc = subprocess.run(
        [str(paths().helm), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def operator_pods(setup: Setup) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = setup.get(OPERATOR_NAMESPACE, f"pods -l {SELECTOR}").get("items", [])
    return items


def ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def pid(pod: dict[str, Any]) -> int:
    (status,) = pod["status"]["containerStatuses"]
    return int(status["containerID"].removeprefix("kinfer://"))


def pod_log(setup: Setup, pod: str) -> str:
    path = setup.testbed.state / "pods" / f"{OPERATOR_NAMESPACE}_{pod}" / "operator.log"
    return path.read_text(errors="replace") if path.exists() else ""


def read_as_pod_sees_it(pid: int, path: str) -> str:
    """A file as the process sees it: in its own mount namespace (its volumes bound there)."""
    out = subprocess.run(["nsenter", f"--target={pid}", "--mount", "cat", path],
                         capture_output=True, text=True, timeout=10)  # fmt: skip
    assert out.returncode == 0, f"{path} in pid {pid}: {out.stderr}"
    return out.stdout


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def why(setup: Setup) -> str:
    pods = [p["metadata"]["name"] for p in operator_pods(setup)]
    logs = "".join(f"\n--- {p}:\n{pod_log(setup, p)[-3000:]}" for p in pods)
    return setup.testbed.diagnostics(OPERATOR_NAMESPACE, "deployment/kinfer-operator") + logs


def wait_two_ready(setup: Setup, wait_for: Any, not_in: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = operator_pods(setup)
        fresh = [p for p in pods if ready(p) and p["metadata"]["name"] not in not_in]
        old_left = [p for p in pods if p["metadata"]["name"] in not_in]
        return fresh if len(fresh) == 2 and not old_left else None

    pods: list[dict[str, Any]] = wait_for(check, 120, describe=lambda: "2 operator pods Ready\n" + why(setup))
    return pods


@pytest.fixture(scope="module")
def release(setup: Setup) -> Iterator[None]:
    kubeconfig = setup.testbed.kubeconfig
    setup.operator.stop()
    uninstall(kubeconfig)
    try:
        # The README's command; the test bed's Prometheus instead of the in-cluster default.
        helm(setup, "install", RELEASE, "charts/kinfer", "-n", OPERATOR_NAMESPACE, "--create-namespace",
             "--set", f"config.prometheusUrl={setup.testbed.prometheus_url}")  # fmt: skip
        setup.kubectl("create", "namespace", HOME)
        yield
    finally:
        helm(setup, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)
        install(kubeconfig)
        operator_kubeconfig(kubeconfig, setup.kubeconfig)  # a token of the new ServiceAccount
        setup.operator = setup.start_operator("operator-after-helm.log")
        setup.kubectl("delete", "namespace", HOME, "--wait=false", check=False)


def test_operator_pods_run_in_cluster_with_their_own_token(
    setup: Setup, release: None, wait_for: Any
) -> None:
    pods = wait_two_ready(setup, wait_for)
    for pod in pods:
        name = pod["metadata"]["name"]
        env = dict(
            line.split("=", 1)
            for line in Path(f"/proc/{pid(pod)}/environ").read_text().split("\0")
            if "=" in line
        )
        assert "KUBECONFIG" not in env and env["HOME"] == "/", env
        assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1", env
        # The process's own view of the filesystem: the token of this pod, bound to it.
        claims = jwt_claims(read_as_pod_sees_it(pid(pod), TOKEN))
        assert claims["sub"] == ACCOUNT, claims
        assert claims["kubernetes.io"]["pod"]["name"] == name, claims
        assert "prometheusUrl" in read_as_pod_sees_it(pid(pod), "/etc/kinfer/config.yaml")
        assert not Path(TOKEN).is_file()  # nothing of it on the host
    # The replicas talk to the API server with those tokens: one of them holds the Lease.
    names = {p["metadata"]["name"] for p in pods}
    lease = wait_for(
        lambda: (
            (setup.get(OPERATOR_NAMESPACE, "lease kinfer").get("spec") or {}).get("holderIdentity") in names
            and setup.get(OPERATOR_NAMESPACE, "lease kinfer")
        ),
        60,
        describe=lambda: f"a pod of {names} holds lease/kinfer\n" + why(setup),
    )
    assert lease["spec"]["leaseDurationSeconds"] == 15, lease


def test_the_installed_operator_serves_the_minimal_example(
    setup: Setup, release: None, wait_for: Any
) -> None:
    name = setup.apply(HOME, example("minimal", setup.model))
    wait_for(
        lambda: setup.condition(HOME, name, "Ready").get("status") == "True",
        90,
        describe=lambda: f"kisvc/{name} Ready\n" + why(setup),
    )
    # Prometheus reached from inside the pod, through the configured URL.
    wait_for(
        lambda: setup.condition(HOME, name, "MetricsAvailable").get("status") == "True",
        60,
        describe=lambda: "MetricsAvailable=True\n" + why(setup),
    )
    logs = "".join(pod_log(setup, p["metadata"]["name"]) for p in operator_pods(setup))
    assert f"reconciled {HOME}/{name}" in logs


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "deployments.apps", True),
        ("patch", "inferenceservices.kinfer.dev/status", True),
        ("update", "leases.coordination.k8s.io", False),  # only in the release's namespace
        ("get", "secrets", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
        ("delete", "namespaces", False),
        ("*", "*", False),
    ],
)
def test_chart_service_account_can_do_what_the_operator_needs_only(
    setup: Setup, release: None, verb: str, resource: str, allowed: bool
) -> None:
    answer = setup.can_i(ACCOUNT, verb, resource, HOME)
    assert answer == ("yes" if allowed else "no"), f"{verb} {resource}: {answer}"


def test_helm_upgrade_with_changed_values_rolls_the_operator(
    setup: Setup, release: None, wait_for: Any
) -> None:
    before = {p["metadata"]["name"] for p in wait_two_ready(setup, wait_for)}
    helm(setup, "upgrade", RELEASE, "charts/kinfer", "-n", OPERATOR_NAMESPACE, "--reuse-values",
         "--set", "config.autoscaleIntervalSeconds=5")  # fmt: skip
    after = wait_two_ready(setup, wait_for, not_in=frozenset(before))
    for pod in after:
        config = read_as_pod_sees_it(pid(pod), "/etc/kinfer/config.yaml")
        assert "autoscaleIntervalSeconds: 5" in config, config
    # The new pods operate: a deleted Deployment comes back.
    setup.kubectl("delete", "deployment", "iris", "-n", HOME)
    wait_for(
        lambda: setup.get(HOME, "deployment iris"),
        60,
        describe=lambda: "deployment/iris recreated by the upgraded operator\n" + why(setup),
    )


def test_helm_uninstall_leaves_no_operator_objects(setup: Setup, release: None, wait_for: Any) -> None:
    pids = [pid(p) for p in operator_pods(setup) if ready(p)]
    held = setup.get(OPERATOR_NAMESPACE, "lease kinfer")
    assert (held.get("spec") or {}).get("holderIdentity"), f"no replica held lease/kinfer: {held}"
    helm(setup, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait")
    kinds = (
        "deployments,replicasets,pods,serviceaccounts,configmaps,services,poddisruptionbudgets,"
        "roles,rolebindings,leases"
    )
    wait_for(
        lambda: not setup.get(OPERATOR_NAMESPACE, f"{kinds} -l {SELECTOR}").get("items", [None]),
        60,
        describe=lambda: "no namespaced objects of the release\n" + why(setup),
    )
    cluster_wide = setup.get("", f"clusterroles,clusterrolebindings -l {SELECTOR}")
    assert cluster_wide.get("items") == [], cluster_wide
    assert setup.get("", "crd inferenceservices.kinfer.dev"), "the CRD stays, as Helm does with crds/"
    for p in pids:
        assert not Path(f"/proc/{p}").exists(), f"operator process {p} still runs"
    # Labelled or not: no replica that was still stopping wrote the Lease again.
    assert setup.get(OPERATOR_NAMESPACE, "lease kinfer") == {}, "lease/kinfer left behind"
    volumes = list((setup.testbed.state / "pods").glob(f"{OPERATOR_NAMESPACE}_*/volumes"))
    assert volumes == [], "the launcher removes the pods' tokens with them"


def test_invalid_values_are_refused_at_install_with_the_field_named(setup: Setup) -> None:
    out = helm(setup, "install", "kinfer-bad", "charts/kinfer", "-n", OPERATOR_NAMESPACE,
               "--set", "replicas=-1", "--set", "colour=blue", check=False)  # fmt: skip
    assert out.returncode != 0
    assert "/replicas" in out.stderr and "colour" in out.stderr, out.stderr
    assert helm(setup, "status", "kinfer-bad", "-n", OPERATOR_NAMESPACE, check=False).returncode != 0
