"""The Helm chart, without a cluster: the real `helm` renders and lints it, the Kubernetes 1.32
schemas validate what it renders, and its RBAC is the generator's (kinfer.manifests).

helm is the test bed's build (`python -m kinfer_dev.testbed.install helm`); a missing binary fails
these tests with that command, it never skips them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kinfer import manifests
from kinfer.leader import LEASE_SECONDS
from kinfer.settings import OperatorConfig
from kinfer_dev.testbed.install import paths

from .conftest import ROOT, k8s_validate

CHART = ROOT / "charts" / "kinfer"
RELEASE = "kinfer"
NAMESPACE = "kinfer-system"
KUBE_VERSION = "1.32.0"
# Objects of CRDs that the Kubernetes schemas do not describe; everything else must validate.
NOT_BUILT_IN = {
    "monitoring.coreos.com/v1": {"ServiceMonitor"},
    "kopf.dev/v1": {"KopfPeering", "ClusterKopfPeering"},
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def helm_binary() -> Path:
    helm = paths().helm
    if not helm.is_file():
        pytest.fail(
            f"helm is not built: {helm} is missing. Build it with\n"
            "  .venv/bin/python -m kinfer_dev.testbed.install helm",
            pytrace=False,
        )
    return helm


@functools.cache
def _helm_home() -> str:
    # Keep helm away from the user's config, cache and plugins; created once per session.
    return tempfile.mkdtemp(prefix="kinfer-helm-")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    home = _helm_home()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": home,
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
    }
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=60)


def _values_file(values: dict[str, Any]) -> str:
    fd, path = tempfile.mkstemp(prefix="values-", suffix=".yaml", dir=_helm_home())
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    return path


def template_run(values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    if values:
        args += ["--values", _values_file(values)]
    return helm(*args)


@functools.cache
def _render(values_json: str) -> tuple[dict[str, Any], ...]:
    run = template_run(json.loads(values_json))
    assert run.returncode == 0, f"helm template failed:\n{run.stderr}"
    return tuple(d for d in yaml.safe_load_all(run.stdout) if d)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return list(_render(json.dumps(values or {}, sort_keys=True)))


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"want one {kind} {name or ''}, got {len(found)}"
    return found[0]


LEADER_ELECTION = "kinfer-operator-leader-election"


def generated(kind: str, watch: list[str] | None = None) -> list[dict[str, Any]]:
    """The generator's objects of a kind, besides the leader-election Role and RoleBinding."""
    objects = manifests.rbac(NAMESPACE, watch)
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"] != LEADER_ELECTION]


def watched(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"] != LEADER_ELECTION]


VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "standalone": {"replicas": 1, "leaderElection": {"enabled": False, "leaseName": "kinfer"}},
    "everything-on": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "image": {"digest": "sha256:" + "a" * 64},
        "config": {
            "gatewayApi": True,
            "serviceMonitor": True,
            "defaultTolerations": [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "tolerations": [{"key": "pool", "operator": "Exists"}],
        "nodeSelector": {"pool": "system"},
        "priorityClassName": "system-cluster-critical",
        "verbose": True,
    },
}


# --- the chart's files -----------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one_byte_for_byte() -> None:
    chart_crd = CHART / "crds" / "kinfer.dev_inferenceservices.yaml"
    assert chart_crd.read_bytes() == (ROOT / "crds" / chart_crd.name).read_bytes(), (
        "charts/kinfer/crds/ differs from crds/: cp crds/kinfer.dev_inferenceservices.yaml "
        "charts/kinfer/crds/"
    )


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"]["runtimeImage"].endswith(":" + project["version"])


def test_notes_tell_the_next_step() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "examples/minimal.yaml" in notes
    assert "kubectl get kisvc" in notes


# --- helm lint and helm template ------------------------------------------------------------------


def test_helm_lint_passes_strictly() -> None:
    for values in ({}, VARIANTS["watch-namespaces"]):
        args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        args += ["--kube-version", KUBE_VERSION]
        run = helm(*args, *(["--values", _values_file(values)] if values else []))
        assert run.returncode == 0, run.stdout + run.stderr


def test_plain_helm_template_and_lint_know_a_current_kubernetes() -> None:
    # The chart needs >= 1.29; a helm built without its Makefile's ldflags assumes 1.20 offline.
    for args in (["template", RELEASE, str(CHART)], ["lint", str(CHART)]):
        run = helm(*args)
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate_against_kubernetes_schemas(variant: str) -> None:
    objects = render(VARIANTS[variant])
    assert objects
    for obj in objects:
        if obj["kind"] in NOT_BUILT_IN.get(obj["apiVersion"], set()):
            continue
        k8s_validate(obj)


def test_defaults_render_the_expected_objects() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render())
    assert kinds == sorted(
        [
            ("ServiceAccount", "kinfer-operator"),
            ("ClusterRole", "kinfer-operator"),
            ("ClusterRoleBinding", "kinfer-operator"),
            ("Role", LEADER_ELECTION),
            ("RoleBinding", LEADER_ELECTION),
            ("ConfigMap", "kinfer-operator"),
            ("ConfigMap", "kinfer-operator-dashboard"),
            ("Deployment", "kinfer-operator"),
            ("Service", "kinfer-operator-metrics"),
            ("PodDisruptionBudget", "kinfer-operator"),
            ("Lease", "kinfer"),
        ]
    )
    for obj in render():
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


# --- RBAC: the generator's, exactly ----------------------------------------------------------------


def test_cluster_role_rules_are_the_generators() -> None:
    objects = render()
    (want,) = generated("ClusterRole")
    assert one(objects, "ClusterRole")["rules"] == want["rules"]
    assert one(objects, "ServiceAccount")["metadata"]["name"] == manifests.SERVICE_ACCOUNT
    binding = one(objects, "ClusterRoleBinding")
    (want_binding,) = generated("ClusterRoleBinding")
    assert binding["subjects"] == want_binding["subjects"]
    assert binding["roleRef"] == want_binding["roleRef"]
    secrets = [r for r in want["rules"] if "secrets" in r["resources"] or "*" in r["resources"]]
    assert secrets == []


def test_watch_namespaces_switch_to_roles_and_leave_no_cluster_wide_writes() -> None:
    watch = ["team-a", "team-b"]
    objects = render({"watchNamespaces": watch})
    roles = watched(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == watch
    want_roles = generated("Role", watch)
    for role in roles:
        assert role["rules"] == want_roles[0]["rules"]
    bindings = watched(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == watch
    for binding in bindings:
        assert binding["subjects"] == generated("RoleBinding", watch)[0]["subjects"]
    (cluster_role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == generated("ClusterRole", watch)[0]["rules"]
    assert cluster_role["rules"] == [manifests.CRD_READ_RULE, manifests.NAMESPACE_READ_RULE]
    for rule in cluster_role["rules"]:
        assert not WRITE_VERBS & set(rule["verbs"])
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={n}" for n in watch]


# --- the operator Deployment -----------------------------------------------------------------------


def _operator(values: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = one(render(values), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_operator_runs_with_the_restricted_security_context() -> None:
    pod, container = _operator()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    # Only the operator pod mounts the token; the ServiceAccount does not hand it out by default.
    assert pod["automountServiceAccountToken"] is True
    assert one(render(), "ServiceAccount")["automountServiceAccountToken"] is False
    # A read-only root needs a writable /tmp (the DynamicClient's discovery cache).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_chart_lease_role_is_the_generators() -> None:
    objects = render()
    role = one(objects, "Role", LEADER_ELECTION)
    (want,) = [
        o
        for o in manifests.rbac(NAMESPACE)
        if o["metadata"]["name"] == LEADER_ELECTION and o["kind"] == "Role"
    ]
    assert role["rules"] == want["rules"] == [manifests.LEASE_RULE]
    assert role["metadata"]["namespace"] == NAMESPACE
    binding = one(objects, "RoleBinding", LEADER_ELECTION)
    assert binding["roleRef"]["name"] == LEADER_ELECTION
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kinfer-operator", "namespace": NAMESPACE}
    ]


def test_the_chart_owns_the_lease_so_that_uninstall_deletes_it() -> None:
    lease = one(render(), "Lease")
    args = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--lease-name={lease['metadata']['name']}" in args
    assert lease["metadata"]["namespace"] == NAMESPACE
    # No holder: the operator takes it; the duration it renews with, so upgrades change nothing.
    assert lease["spec"] == {"leaseDurationSeconds": LEASE_SECONDS}
    renamed = one(render({"leaderElection": {"enabled": True, "leaseName": "kinfer-b"}}), "Lease")
    assert renamed["metadata"]["name"] == "kinfer-b"
    assert not [o for o in render(VARIANTS["standalone"]) if o["kind"] == "Lease"]


def test_operator_has_leader_election_probes_metrics_and_its_config() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = one(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod, container = _operator()
    args = container["args"]
    assert container["command"] == ["kinfer"]  # the Dockerfile's ENTRYPOINT
    assert args[0] == "operator"
    assert "--lease-name=kinfer" in args and "--standalone" not in args
    assert f"--lease-namespace={NAMESPACE}" in args
    assert "--no-lease-create" in args  # the chart's Lease: Helm creates and deletes it
    assert "--metrics-address=0.0.0.0" in args
    # The Lease's holder is the pod's name: it shows which pod is active.
    assert "--identity=$(POD_NAME)" in args
    (pod_id,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    liveness = next(a for a in args if a.startswith("--liveness="))
    port = values["livenessPort"]
    assert liveness == f"--liveness=http://0.0.0.0:{port}/healthz"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"metrics": values["metrics"]["port"], "healthz": port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # --config points at the mounted ConfigMap, whose content the operator accepts.
    config_arg = next(a for a in args if a.startswith("--config="))
    path = Path(config_arg.removeprefix("--config="))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = one(render(), "ConfigMap", volume["configMap"]["name"])
    config = OperatorConfig.model_validate(yaml.safe_load(configmap["data"][path.name]))
    assert config.prometheus_url == values["config"]["prometheusUrl"]


def test_config_values_are_the_operator_config_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["config"]["properties"])
    assert keys == {f.alias for f in OperatorConfig.model_fields.values()}


def test_a_config_change_rolls_the_operator() -> None:
    def checksum(values: dict[str, Any]) -> str:
        pod = one(render(values), "Deployment")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config": {"gatewayApi": True}})


def test_without_leader_election_one_standalone_replica() -> None:
    objects = render(VARIANTS["standalone"])
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and not any(a.startswith("--lease") for a in args)
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_optional_service_monitor_scrapes_the_metrics_service() -> None:
    assert not [o for o in render() if o["kind"] == "ServiceMonitor"]
    objects = render(VARIANTS["everything-on"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service["spec"]["ports"][0]["name"]]
    image = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/kinfer/kinfer-operator@sha256:" + "a" * 64


def test_dashboard_shows_the_four_signals_per_inference_service() -> None:
    configmap = one(render(), "ConfigMap", "kinfer-operator-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kinfer.json"])
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    joined = {title: " ".join(e) for title, e in exprs.items()}
    assert "kinfer_queue_depth" in joined["Queue depth"]
    assert "kinfer_request_duration_seconds_bucket{" in joined["p95 latency"]
    assert 'phase="total"' in joined["p95 latency"]
    assert "kinfer_operator_desired_replicas" in joined["Replicas: desired and actual"]
    assert "kinfer_operator_canary_weight_percent" in joined["Canary weight"]
    for targets in exprs.values():
        for expr in targets:
            assert expr.count("(") == expr.count(")"), expr
            if "kinfer_dev_isvc" in expr:
                assert "by (namespace, kinfer_dev_isvc" in expr, expr  # one line per service
    runtime_metrics = (ROOT / "runtime" / "kinfer_runtime" / "metrics.py").read_text()
    for name in ("kinfer_queue_depth", "kinfer_request_duration_seconds", "kinfer_requests_total"):
        assert f'"{name}"' in runtime_metrics


# --- values the schema refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"replicas": 0}, "replicas"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"image": {"repository": "x", "tagg": "1"}}, "tagg"),
        ({"config": {"prometheusURL": "http://p:9090"}}, "prometheusURL"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"resources": {"request": {"cpu": "1"}}}, "request"),
    ],
    ids=[
        "negative-replicas",
        "zero-replicas",
        "unknown-key",
        "unknown-nested",
        "config-key",
        "bad-namespace",
        "resources-typo",
    ],
)
def test_invalid_values_are_refused_with_the_field_named(values: dict[str, Any], field: str) -> None:
    run = template_run(values)
    assert run.returncode != 0
    assert "values don't meet the specifications of the schema" in run.stderr
    assert field in run.stderr, run.stderr


def test_helm_lint_refuses_invalid_values_too() -> None:
    for values, field in (({"replicas": -1}, "replicas"), ({"unknownKey": 1}, "unknownKey")):
        run = helm("lint", str(CHART), "--values", _values_file(values))
        assert run.returncode != 0
        assert field in run.stdout + run.stderr


def test_more_than_one_replica_without_leader_election_is_refused() -> None:
    run = template_run({"replicas": 2, "leaderElection": {"enabled": False, "leaseName": "kinfer"}})
    assert run.returncode != 0
    assert "replicas: 2 needs leaderElection.enabled: true" in run.stderr
