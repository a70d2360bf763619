"""Rendering: golden files, Kubernetes schema validity, and the pod settings users rely on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kinfer.api.v1alpha1 import Toleration
from kinfer.render import render, to_yaml
from kinfer.render.render import split_replicas
from kinfer.settings import OperatorConfig

from .conftest import ROOT, k8s_validate, load

GOLDEN = ROOT / "tests" / "golden"
# Examples render with Gateway API and ServiceMonitor on, so the golden files show every object.
FULL = OperatorConfig(gateway_api=True, service_monitor=True)
BUILTIN_KINDS = {
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_golden(example: Path) -> None:
    out = to_yaml(render(load(example), FULL))
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("KINFER_UPDATE_GOLDEN"):
        golden.write_text(out)
    assert golden.read_text() == out, f"{golden} is stale: KINFER_UPDATE_GOLDEN=1 pytest tests/kinfer"


def test_examples_validate_against_kubernetes_schemas(example: Path) -> None:
    objects = render(load(example), FULL)
    builtin = [o for o in objects if o["kind"] in BUILTIN_KINDS]
    assert {o["kind"] for o in objects} - BUILTIN_KINDS <= {"HTTPRoute", "GRPCRoute", "ServiceMonitor"}
    for obj in builtin:
        k8s_validate(obj)


def test_the_schema_check_can_fail() -> None:
    deployment = render(load(ROOT / "examples" / "minimal.yaml"), FULL)[0]
    _container(deployment)["imagePullPolicyy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolicyy"):
        k8s_validate(deployment)


def test_gpu_canary_pods_are_gpu_scheduled_and_restricted() -> None:
    objects = render(load(ROOT / "examples" / "gpu-canary.yaml"), OperatorConfig())
    deployments = _by_kind(objects, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["ranker", "ranker-canary"]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
    canary = _container(deployments[1])
    assert "--model-uri=file:///mnt/models/ranker/8" in canary["args"]
    # No Gateway API: weight is carried by the replica split behind the one Service.
    assert not _by_kind(objects, "HTTPRoute")
    assert [s["metadata"]["name"] for s in _by_kind(objects, "Service")] == ["ranker"]


def test_cpu_model_has_no_gpu_settings() -> None:
    objects = render(load(ROOT / "examples" / "minimal.yaml"), OperatorConfig())
    pod = objects[0]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in _container(objects[0])["resources"]["limits"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert [o["kind"] for o in objects] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ]


def test_hpa_mode_leaves_replicas_to_the_hpa() -> None:
    objects = render(load(ROOT / "examples" / "gpu-hpa.yaml"), OperatorConfig())
    assert "replicas" not in objects[0]["spec"]
    (hpa,) = _by_kind(objects, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    targets = [m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]]
    assert targets == ["8", "200m"]


def test_ab_header_routes_by_header() -> None:
    objects = render(load(ROOT / "examples" / "ab-header.yaml"), FULL)
    for kind, port in (("HTTPRoute", 8080), ("GRPCRoute", 8081)):
        (route,) = _by_kind(objects, kind)
        first, default = route["spec"]["rules"]
        assert first["matches"][0]["headers"] == [{"type": "Exact", "name": "x-model-variant", "value": "b"}]
        assert first["backendRefs"] == [{"name": "recommender-canary", "port": port}]
        assert default == {"backendRefs": [{"name": "recommender-stable", "port": port}]}
    assert {s["metadata"]["name"] for s in _by_kind(objects, "Service")} == {
        "recommender",
        "recommender-stable",
        "recommender-canary",
    }


def test_every_service_gets_an_http_and_a_grpc_route_on_its_own_host() -> None:
    config = OperatorConfig(
        gateway_api=True, gateway={"name": "edge", "namespace": "gw", "domain": "ml.example"}
    )
    objects = render(load(ROOT / "examples" / "minimal.yaml"), config)
    routes = _by_kind(objects, "HTTPRoute") + _by_kind(objects, "GRPCRoute")
    assert [r["kind"] for r in routes] == ["HTTPRoute", "GRPCRoute"]
    for route, port in zip(routes, (8080, 8081), strict=True):
        spec = route["spec"]
        parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "gw"}
        assert spec["parentRefs"] == [parent]
        assert spec["hostnames"] == ["iris.default.ml.example"]
        # No canary: the one Service, no weights.
        assert spec["rules"] == [{"backendRefs": [{"name": "iris", "port": port}]}]
    assert [s["metadata"]["name"] for s in _by_kind(objects, "Service")] == ["iris"]


def test_canary_weight_follows_status() -> None:
    isvc = load(ROOT / "examples" / "gpu-canary.yaml")
    isvc["status"] = {
        "desiredReplicas": 4,
        "canary": {"phase": "Progressing", "step": 2, "weight": 50},
    }
    objects = render(isvc, FULL)
    for kind in ("HTTPRoute", "GRPCRoute"):
        (route,) = _by_kind(objects, kind)
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [50, 50]
    replicas = [d["spec"]["replicas"] for d in _by_kind(objects, "Deployment")]
    assert replicas == [2, 2]
    isvc["status"]["canary"]["phase"] = "Failed"
    replicas = [d["spec"]["replicas"] for d in _by_kind(render(isvc, FULL), "Deployment")]
    assert replicas == [4, 0]


def _weights_and_replicas(isvc: dict[str, Any]) -> tuple[list[int], list[int]]:
    objects = render(isvc, FULL)
    (route,) = _by_kind(objects, "HTTPRoute")
    weights = [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]
    return weights, [d["spec"]["replicas"] for d in _by_kind(objects, "Deployment")]


def test_no_route_traffic_to_a_pending_canary_and_a_promotion_hands_over() -> None:
    isvc = load(ROOT / "examples" / "gpu-canary.yaml")
    isvc["status"] = {"desiredReplicas": 4, "canary": {"phase": "Pending", "step": 0, "weight": 10}}
    assert _weights_and_replicas(isvc) == ([100, 0], [3, 1])
    isvc["status"]["canary"] = {"phase": "Promoting", "step": 3, "weight": 100}
    assert _weights_and_replicas(isvc) == ([0, 100], [4, 4])
    isvc["status"]["canary"]["phase"] = "Succeeded"
    # Second half: stable rolls to the canary's model on all replicas, the canary keeps serving.
    assert _weights_and_replicas(isvc) == ([0, 100], [4, 4])
    assert _stable_model_uri(isvc) == "pvc://models/ranker/8"
    # ... replaced all at once: Promoting's GPUs suffice, no surge pod waits for a fifth GPU.
    stable = _by_kind(render(isvc, FULL), "Deployment")[0]
    assert stable["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": "100%"}
    isvc["status"]["canary"]["handedOver"] = True
    assert _weights_and_replicas(isvc) == ([100, 0], [4, 0])
    stable = _by_kind(render(isvc, FULL), "Deployment")[0]
    assert stable["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    promoted = _by_kind(render(isvc, FULL), "Deployment")[0]
    # The manifest catches up (Git): the same stable Deployment, nothing restarts, and the
    # empty canary Deployment is no longer rendered (reconcile prunes it).
    isvc["spec"]["model"] = isvc["spec"]["rollout"].pop("canary")["model"]
    isvc["status"].pop("canary")
    deployments = _by_kind(render(isvc, FULL), "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["ranker"]
    assert deployments[0]["spec"]["template"] == promoted["spec"]["template"]


def _stable_model_uri(isvc: dict[str, Any]) -> str:
    stable = _by_kind(render(isvc, FULL), "Deployment")[0]
    return str(stable["spec"]["template"]["metadata"]["annotations"]["kinfer.dev/model-uri"])


def test_a_status_of_an_earlier_canary_model_does_not_promote_the_new_one() -> None:
    isvc = load(ROOT / "examples" / "gpu-canary.yaml")
    isvc["status"] = {
        "canary": {"phase": "Succeeded", "step": 3, "weight": 100, "revision": "pvc://models/ranker/6"}
    }
    assert _stable_model_uri(isvc) == "pvc://models/ranker/7"


def test_the_drift_check_makes_canary_pods_shadow_to_the_stable_service() -> None:
    isvc = load(ROOT / "examples" / "gpu-canary.yaml")
    stable, canary = _by_kind(render(isvc, FULL), "Deployment")
    names = lambda d: [e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]]  # noqa: E731
    assert "KINFER_SHADOW_URL" not in names(canary)  # off by default
    isvc["spec"]["rollout"]["canary"]["analysis"]["drift"] = {"maxAbsDiff": 0.01, "samplesPerSecond": 2.5}
    stable, canary = _by_kind(render(isvc, FULL), "Deployment")
    env = {e["name"]: e.get("value") for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KINFER_SHADOW_URL"] == "http://ranker-stable:8080"
    assert env["KINFER_SHADOW_RATE"] == "2.5"
    assert "KINFER_SHADOW_URL" not in names(stable)


def test_owner_reference_when_the_resource_has_a_uid() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    isvc["metadata"]["uid"] = "0b3c6a8e-1111-2222-3333-444455556666"
    for obj in render(isvc, OperatorConfig()):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "InferenceService" and owner["controller"] is True
        assert owner["uid"] == isvc["metadata"]["uid"]


def test_tolerations_from_config_and_spec_are_merged_once() -> None:
    isvc = load(ROOT / "examples" / "gpu-hpa.yaml")
    extra = {"key": "pool", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
    isvc["spec"]["scheduling"] = {"tolerations": [extra]}
    config = OperatorConfig(default_tolerations=[Toleration.model_validate(extra)])
    pod = render(isvc, config)[0]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        extra,
    ]


def test_fixed_mode_runs_min_replicas_and_status_is_clamped() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    isvc["spec"]["scaling"] = {"mode": "fixed", "minReplicas": 3, "maxReplicas": 5}
    isvc["status"] = {"desiredReplicas": 9}
    assert render(isvc, OperatorConfig())[0]["spec"]["replicas"] == 3
    isvc["spec"]["scaling"]["mode"] = "metrics"
    assert render(isvc, OperatorConfig())[0]["spec"]["replicas"] == 5


@pytest.mark.parametrize(
    ("total", "weight", "want"),
    [
        (4, 0, (4, 0)),
        (4, 10, (3, 1)),
        (4, 50, (2, 2)),
        (4, 100, (0, 4)),
        (1, 10, (1, 1)),
        (0, 100, (0, 1)),
    ],
)
def test_split_replicas(total: int, weight: int, want: tuple[int, int]) -> None:
    assert split_replicas(total, weight) == want


def _pod_spec(isvc: dict[str, Any], config: OperatorConfig | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = render(isvc, config or OperatorConfig())[0]["spec"]["template"]["spec"]
    return spec


def test_a_fetched_model_is_downloaded_by_an_init_container_through_the_node_cache() -> None:
    pod = _pod_spec(load(ROOT / "examples" / "s3.yaml"))
    (init,) = pod["initContainers"]
    assert init["name"] == "storage-initializer" and init["command"] == ["kinfer-runtime"]
    assert init["args"] == ["fetch", "s3://team-models/ranker/7/", "/mnt/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert {"name": "KINFER_CACHE_DIR", "value": "/var/cache/kinfer"} in init["env"]
    assert "nvidia.com/gpu" not in init["resources"]["requests"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"] == {"name": "model", "emptyDir": {}}
    assert volumes["model-cache"]["hostPath"]["path"] == "/var/cache/kinfer/models"
    server = pod["containers"][0]
    assert "--model-uri=file:///mnt/models" in server["args"]
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in server["volumeMounts"]


def test_cache_false_and_a_cacheless_operator_mount_no_cache() -> None:
    isvc = load(ROOT / "examples" / "s3.yaml")
    isvc["spec"]["model"]["cache"] = False
    for pod in (
        _pod_spec(isvc),
        _pod_spec(load(ROOT / "examples" / "s3.yaml"), OperatorConfig(model_cache_dir="")),
    ):
        assert "model-cache" not in {v["name"] for v in pod["volumes"]}
        assert not any(e["name"] == "KINFER_CACHE_DIR" for e in pod["initContainers"][0]["env"])


def test_https_sha256_reaches_the_initializer_and_local_models_need_none() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    assert "initContainers" not in _pod_spec(isvc)
    isvc["spec"]["model"] = {"uri": "https://models.example.com/ranker.tar.gz", "sha256": "a" * 64}
    (init,) = _pod_spec(isvc)["initContainers"]
    assert {"name": "KINFER_MODEL_SHA256", "value": "a" * 64} in init["env"] and "envFrom" not in init


def test_generative_model_gets_continuous_batching_flags_and_a_ready_startup_probe() -> None:
    deployment = render(load(ROOT / "examples" / "llm.yaml"), OperatorConfig())[0]
    container = _container(deployment)
    assert "--max-sequences=32" in container["args"]
    assert "--max-tokens-in-flight=16384" in container["args"]
    assert "--max-queue=64" in container["args"]
    assert not any(a.startswith(("--max-batch-size", "--max-delay-ms")) for a in container["args"])
    # the pod counts as started only once the model is loaded (minutes for a language model)
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1200
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_generative_needs_the_kinfer_runtime() -> None:
    isvc = load(ROOT / "examples" / "llm.yaml")
    isvc["spec"]["runtime"]["server"] = "triton"
    with pytest.raises(ValueError, match=r"generative needs runtime\.server kinfer"):
        render(isvc, OperatorConfig())


def test_triton_pods_lay_out_a_repository_first_and_probe_tritons_own_endpoints() -> None:
    isvc = load(ROOT / "examples" / "minimal.yaml")
    isvc["spec"]["runtime"] = {
        "server": "triton",
        "batching": {"maxBatchSize": 8, "maxDelayMs": 3, "maxQueue": 64},
    }
    isvc["spec"]["resources"] = {"gpu": 2}
    objects = render(isvc, FULL)
    pod = _pod_spec(isvc, FULL)
    (init,) = pod["initContainers"]  # a local model: no download, only the repository
    assert init["name"] == "triton-repository" and init["image"] == OperatorConfig().runtime_image
    assert init["args"] == [
        "triton-repo", "file:///models/iris/model.pt", "/mnt/triton", "--name=iris",
        "--max-batch-size=8", "--max-delay-ms=3", "--max-queue=64", "--gpus=2",
    ]  # fmt: skip
    assert {"name": "triton-repo", "mountPath": "/mnt/triton"} in init["volumeMounts"]
    server = pod["containers"][0]
    assert server["image"] == OperatorConfig().triton_image and server["command"] == ["tritonserver"]
    assert "--model-repository=/mnt/triton" in server["args"]
    assert "--metrics-config=summary_latencies=true" in server["args"]
    assert {"name": "triton-repo", "mountPath": "/mnt/triton", "readOnly": True} in server["volumeMounts"]
    assert (
        server["readinessProbe"]["httpGet"]["path"]
        == server["startupProbe"]["httpGet"]["path"]
        == "/v2/health/ready"
    )
    assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in server["ports"]
    template = _by_kind(objects, "Deployment")[0]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    (monitor,) = _by_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (policy,) = _by_kind(objects, "NetworkPolicy")
    assert {"port": 8082, "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


def test_kinfer_pods_keep_metrics_on_the_http_port() -> None:
    objects = render(load(ROOT / "examples" / "minimal.yaml"), FULL)
    server = _container(_by_kind(objects, "Deployment")[0])
    assert [p["name"] for p in server["ports"]] == ["http", "grpc"]
    assert _by_kind(objects, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] == "http"


def test_a_triton_hpa_scales_on_tritons_series_as_the_adapter_names_them() -> None:
    isvc = load(ROOT / "examples" / "gpu-hpa.yaml")
    kinfer_names = [
        m["pods"]["metric"]["name"]
        for m in _by_kind(render(isvc, FULL), "HorizontalPodAutoscaler")[0]["spec"]["metrics"]
    ]
    assert kinfer_names == ["kinfer_queue_depth", "kinfer_request_p95_seconds"]
    isvc["spec"]["runtime"] = {"server": "triton"}
    (hpa,) = _by_kind(render(isvc, FULL), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["nv_inference_pending_request_count", "triton_request_p95_seconds"]
