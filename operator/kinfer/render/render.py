"""Render an InferenceService into the Kubernetes objects that run it. Pure: no I/O, no clock.

``render(isvc, config)`` takes the resource as the API server returns it (metadata, spec, and
status when there is one) and returns plain dicts in a fixed order. Decisions (names, labels,
replica split, pod settings) are made here in Python; the jinja2 templates only lay them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2
import yaml

from kinfer.api import uris
from kinfer.api import v1alpha1 as api
from kinfer.rollout.machine import effective_model
from kinfer.settings import OperatorConfig

HTTP_PORT = 8080
GRPC_PORT = 8081
# Triton serves /metrics on a port of its own (kinfer-runtime on the HTTP port).
TRITON_METRICS_PORT = 8082
MODEL_MOUNT = "/mnt/models"
# Triton pods: the init container lays out the model repository here (kinfer-runtime triton-repo).
TRITON_REPO = "/mnt/triton"
TRITON_INIT = "triton-repository"
CACHE_MOUNT = "/var/cache/kinfer"
INITIALIZER = "storage-initializer"
DRAIN_SECONDS = 5
# preStop drain, then the runtime finishes accepted requests: a batch at most a few seconds.
GRACE_SECONDS = 45
# Startup probe failures allowed (every 2 s) while a generative model loads: 20 minutes.
STARTUP_FAILURES_GENERATIVE = 600
# The Pods metrics the HPA scales on (mode hpa), as prometheus-adapter names them from each
# server's series (docs/autoscaling.md has both rule sets).
HPA_METRICS = {
    "kinfer": {"queue": "kinfer_queue_depth", "p95": "kinfer_request_p95_seconds"},
    "triton": {"queue": "nv_inference_pending_request_count", "p95": "triton_request_p95_seconds"},
}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("kinfer.render", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # YAML, not HTML; values are quoted by tojson
)
_env.policies["json.dumps_kwargs"] = {"sort_keys": True}


@dataclass(frozen=True)
class Track:
    """One Deployment of the model server: stable, or the canary being rolled out."""

    name: str
    deployment: str
    model: api.Model
    replicas: int | None
    labels: dict[str, str]
    selector: dict[str, str]
    pod_annotations: dict[str, str]
    args: list[str]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, str]] = field(default_factory=list)
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    # Never below the wanted count while pods are replaced: one extra pod at a time.
    rolling_update: dict[str, int | str] = field(default_factory=lambda: {"maxSurge": 1, "maxUnavailable": 0})


def owner_labels(name: str) -> dict[str, str]:
    """Labels every rendered object carries; `kinfer.dev/isvc` finds them again."""
    return {
        "app.kubernetes.io/name": "kinfer-model",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "kinfer",
        "app.kubernetes.io/managed-by": "kinfer",
        "kinfer.dev/isvc": name,
    }


def split_replicas(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for a canary weight in percent.

    The canary gets its share rounded up, so any weight above 0 runs at least one canary pod and
    any weight below 100 keeps at least one stable pod.
    """
    if weight <= 0:
        return total, 0
    if weight >= 100:
        return 0, max(total, 1)
    canary = max(1, math.ceil(total * weight / 100))
    stable = max(1, total - canary)
    return stable, canary


def total_replicas(scaling: api.Scaling, status: dict[str, Any]) -> int:
    """The replica count this render writes (mode metrics and fixed)."""
    if scaling.mode == "fixed":
        return scaling.min_replicas
    # A new service starts warm (at least one replica): the first request waits for no cold start.
    wanted = int(status["desiredReplicas"]) if "desiredReplicas" in status else max(scaling.min_replicas, 1)
    return min(max(wanted, scaling.min_replicas), scaling.max_replicas)


def canary_weight(canary: api.Canary, status: dict[str, Any]) -> int:
    """Current canary weight: from status.canary once the rollout runs, else the first step."""
    state = status.get("canary") or {}
    phase = state.get("phase")
    if phase in ("RollingBack", "Failed"):
        return 0
    if phase == "Promoting":
        return 100
    if phase == "Succeeded":
        return 0 if state.get("handedOver") else 100  # all back to stable, now on the new model
    if "weight" in state:
        return int(state["weight"])
    return canary.steps[0]


def route_weight(canary: api.Canary, status: dict[str, Any]) -> int:
    """Weight the HTTPRoute sends to the canary: none until its pods are up (phase Pending), so
    no request meets a backend without endpoints."""
    if (status.get("canary") or {}).get("phase", "Pending") == "Pending":
        return 0
    return canary_weight(canary, status)


def route_hostname(name: str, namespace: str, config: OperatorConfig) -> str:
    """The host name the routes match: one per InferenceService, so routes never overlap."""
    return f"{name}.{namespace}.{config.gateway.domain}"


def route_rules(name: str, spec: api.InferenceServiceSpec, status: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules of both routes: the one Service; or the header match to the canary (A/B); or
    the two tracks weighed by the canary weight."""
    canary = spec.rollout.canary
    if canary is None:
        return [{"header": None, "backends": [{"service": name, "weight": None}]}]
    stable, canary_service = f"{name}-stable", f"{name}-canary"
    ab = spec.rollout.ab_test
    if ab is not None:
        return [
            {"header": {"name": ab.header, "value": ab.value},
             "backends": [{"service": canary_service, "weight": None}]},
            {"header": None, "backends": [{"service": stable, "weight": None}]},
        ]  # fmt: skip
    weight = route_weight(canary, status)
    backends = [{"service": stable, "weight": 100 - weight}, {"service": canary_service, "weight": weight}]
    return [{"header": None, "backends": backends}]


@dataclass(frozen=True)
class ModelLocation:
    """The URI the server loads, the volumes that make it reachable, and what fetches it."""

    uri: str
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]


def _model_location(model: api.Model, image: str, config: OperatorConfig) -> ModelLocation:
    if model.uri.startswith("pvc://"):
        claim, _, path = model.uri.removeprefix("pvc://").partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return ModelLocation(f"file://{MODEL_MOUNT}/{path}".rstrip("/"), [volume], [mount], [])
    if not uris.fetched(model.uri):
        return ModelLocation(model.uri, [], [], [])
    volumes: list[dict[str, Any]] = [{"name": "model", "emptyDir": {}}]
    init_mounts: list[dict[str, Any]] = [{"name": "model", "mountPath": MODEL_MOUNT}]
    env = [{"name": "KINFER_MODEL_SHA256", "value": model.sha256}] if model.sha256 else []
    if model.cache and config.model_cache_dir:
        volumes.append(
            {"name": "model-cache", "hostPath": {"path": config.model_cache_dir, "type": "DirectoryOrCreate"}}
        )
        init_mounts.append({"name": "model-cache", "mountPath": CACHE_MOUNT})
        env += [
            {"name": "KINFER_CACHE_DIR", "value": CACHE_MOUNT},
            {"name": "KINFER_CACHE_MAX_BYTES", "value": str(config.model_cache_max_bytes)},
        ]
    init: dict[str, Any] = {
        "name": INITIALIZER,
        "image": image,
        "command": ["kinfer-runtime"],
        "args": ["fetch", model.uri, MODEL_MOUNT],
        "env": env,
        "volumeMounts": init_mounts,
    }
    if model.secret_name:
        init["envFrom"] = [{"secretRef": {"name": model.secret_name}}]
    mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
    return ModelLocation(f"file://{MODEL_MOUNT}", volumes, [mount], [init])


def _triton_args() -> list[str]:
    return [
        f"--model-repository={TRITON_REPO}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={TRITON_METRICS_PORT}",
        "--allow-metrics=true",
        # p95 for the autoscaler and the analysis: nv_inference_request_summary_us quantiles.
        # (This Triton's histogram_latencies covers decoupled first responses only; its
        # nv_inference_request_duration_us is a counter.)
        "--metrics-config=summary_latencies=true",
        # /v2/health/ready only once every model of the repository is loaded; a model that
        # cannot load stops the server, with Triton's reason as the container's last words.
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={GRACE_SECONDS - DRAIN_SECONDS - 5}",
        "--log-verbose=0",
        # No info lines: Triton's wide status tables would fill the 2 KiB termination message
        # that carries a failed load's reason to the CrashLoop condition.
        "--log-info=false",
    ]


def _triton_init(
    name: str, spec: api.InferenceServiceSpec, where: ModelLocation, image: str
) -> dict[str, Any]:
    """The init container writing the model repository (config.pbtxt from signature.json)."""
    batching = spec.runtime.batching
    return {
        "name": TRITON_INIT,
        "image": image,
        "command": ["kinfer-runtime"],
        "args": [
            "triton-repo",
            where.uri,
            TRITON_REPO,
            f"--name={name}",
            f"--max-batch-size={batching.max_batch_size}",
            f"--max-delay-ms={batching.max_delay_ms}",
            f"--max-queue={batching.max_queue}",
            f"--gpus={spec.resources.gpu}",
        ],
        "env": [],
        "volumeMounts": [*where.mounts, {"name": "triton-repo", "mountPath": TRITON_REPO}],
    }


def _server_args(name: str, spec: api.InferenceServiceSpec, model_uri: str) -> list[str]:
    if spec.runtime.server == "triton":
        return _triton_args()
    batching = spec.runtime.batching
    common = [
        f"--model-uri={model_uri}",
        f"--model-name={name}",
        "--host=0.0.0.0",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={HTTP_PORT}",
    ]
    if spec.model.format == "generative":
        generation = spec.runtime.generation
        return [
            *common,
            f"--max-sequences={generation.max_sequences}",
            f"--max-tokens-in-flight={generation.max_tokens_in_flight}",
            f"--max-queue={batching.max_queue}",
        ]
    return [
        *common,
        f"--max-batch-size={batching.max_batch_size}",
        f"--max-delay-ms={batching.max_delay_ms}",
        f"--max-queue={batching.max_queue}",
    ]


def _pod(spec: api.InferenceServiceSpec, config: OperatorConfig) -> dict[str, Any]:
    """Pod settings shared by both tracks."""
    res = spec.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    node_selector = dict(spec.scheduling.node_selector)
    tolerations: list[dict[str, Any]] = []
    if res.gpu:
        requests[GPU_RESOURCE] = res.gpu
        limits[GPU_RESOURCE] = res.gpu
        tolerations.append(GPU_TOLERATION)
        if res.gpu_product:
            node_selector[GPU_PRODUCT_LABEL] = res.gpu_product
    for tol in [*config.default_tolerations, *spec.scheduling.tolerations]:
        dumped = tol.model_dump(by_alias=True, exclude_none=True)
        entry = {k: v for k, v in dumped.items() if v != ""}
        if entry not in tolerations:
            tolerations.append(entry)
    if spec.runtime.server == "triton":
        image, command = spec.runtime.image or config.triton_image, ["tritonserver"]
    else:
        image, command = spec.runtime.image or config.runtime_image, ["kinfer-runtime"]
    return {
        "image": image,
        "command": command,
        "resources": {"requests": requests, "limits": limits},
        "node_selector": node_selector,
        "tolerations": tolerations,
        "affinity": spec.scheduling.affinity,
        "priority_class_name": spec.scheduling.priority_class_name,
    }


def _track(
    name: str,
    track: str,
    spec: api.InferenceServiceSpec,
    model: api.Model,
    replicas: int | None,
    config: OperatorConfig,
) -> Track:
    deployment = name if track == "stable" else f"{name}-{track}"
    selector = {"kinfer.dev/isvc": name, "kinfer.dev/track": track}
    # The initializer is kinfer-runtime: the service's own image when it runs kinfer.
    kinfer_image = spec.runtime.server == "kinfer" and spec.runtime.image
    where = _model_location(model, kinfer_image or config.runtime_image, config)
    scratch = {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    volumes, mounts, init = (
        [scratch, *where.volumes],
        [{"name": "tmp", "mountPath": "/tmp"}, *where.mounts],
        where.init_containers,
    )
    metrics_port = HTTP_PORT
    if spec.runtime.server == "triton":
        volumes.append({"name": "triton-repo", "emptyDir": {"sizeLimit": "64Mi"}})
        mounts.append({"name": "triton-repo", "mountPath": TRITON_REPO, "readOnly": True})
        init = [*init, _triton_init(name, spec, where, config.runtime_image)]
        metrics_port = TRITON_METRICS_PORT
    return Track(
        name=track,
        deployment=deployment,
        model=model,
        replicas=replicas,
        labels={**owner_labels(name), "kinfer.dev/track": track},
        selector=selector,
        pod_annotations={
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics_port),
            "prometheus.io/path": "/metrics",
            "kinfer.dev/model-uri": model.uri,
        },
        args=_server_args(name, spec, where.uri),
        volumes=volumes,
        volume_mounts=mounts,
        init_containers=init,
    )


def tracks(
    name: str, spec: api.InferenceServiceSpec, status: dict[str, Any], config: OperatorConfig
) -> list[Track]:
    """The Deployments to run: stable always, canary while spec.rollout.canary is present."""
    canary = spec.rollout.canary
    if spec.scaling.mode == "hpa":
        stable_replicas: int | None = None  # the HPA owns it
        total = max(spec.scaling.min_replicas, 1)
    else:
        total = total_replicas(spec.scaling, status)
        stable_replicas = total
    result = []
    canary_replicas = 0
    state = status.get("canary") or {}
    stable_update: dict[str, int | str] | None = None
    stable_model = effective_model(spec, api.CanaryStatus.model_validate(state) if state else None)
    if canary is not None:
        if spec.rollout.ab_test is not None:
            # Header routing: the canary takes whatever matches; keep it at the floor.
            canary_replicas = max(spec.scaling.min_replicas, 1)
        elif state.get("phase") == "Promoting":
            # Hand over like blue/green: the canary grows to the full count while stable keeps
            # serving its own model on its own pods.
            canary_replicas = total
        elif state.get("phase") == "Succeeded" and not state.get("handedOver"):
            # Second half: stable rolls to the canary's model (effective_model) on the full
            # count; the canary keeps its pods until those are ready (handedOver: weight 0, so
            # the split below gives it none). It carries everything meanwhile, so stable may be
            # replaced all at once: a surge pod would need one GPU more than Promoting held.
            canary_replicas = total
            stable_update = {"maxSurge": 0, "maxUnavailable": "100%"}
        else:
            stable_split, canary_replicas = split_replicas(total, canary_weight(canary, status))
            if stable_replicas is not None:
                stable_replicas = stable_split
    stable = _track(name, "stable", spec, stable_model, stable_replicas, config)
    result.append(replace(stable, rolling_update=stable_update) if stable_update else stable)
    if canary is not None:
        canary_track = _track(name, "canary", spec, canary.model, canary_replicas, config)
        if canary.analysis.drift is not None:
            # The canary's runtime shadows a sample of its requests to stable (drift check).
            rate = canary.analysis.drift.samples_per_second
            canary_track = replace(canary_track, env=[
                {"name": "KINFER_SHADOW_URL", "value": f"http://{name}-stable:{HTTP_PORT}"},
                {"name": "KINFER_SHADOW_RATE", "value": f"{rate:g}"},
            ])  # fmt: skip
        result.append(canary_track)
    return result


def _owner(isvc: dict[str, Any]) -> dict[str, Any] | None:
    meta = isvc.get("metadata") or {}
    if not meta.get("uid"):
        return None
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _load(template: str, **values: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_env.get_template(template).render(**values))
    return loaded


def render(isvc: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """Every object an InferenceService needs, in apply order. Raises pydantic.ValidationError."""
    meta = isvc.get("metadata") or {}
    name: str = meta["name"]
    status: dict[str, Any] = isvc.get("status") or {}
    labels = owner_labels(name)
    isvc_selector = {"kinfer.dev/isvc": name}
    spec = api.validate_spec(isvc.get("spec") or {})
    common = {
        "name": name,
        "ns": meta.get("namespace") or "default",
        "owner": _owner(isvc),
        "labels": labels,
        "isvc_selector": isvc_selector,
        "ports": {
            "http": HTTP_PORT,
            "grpc": GRPC_PORT,
            "metrics": TRITON_METRICS_PORT if spec.runtime.server == "triton" else None,
        },
    }
    pod = _pod(spec, config)
    deployments = tracks(name, spec, status, config)
    objects = [
        _load(
            "deployment.yaml.j2",
            **common,
            track=t,
            pod=pod,
            # a language model loads for minutes, Triton loads every model before it turns ready:
            # the pod counts as started once it is ready
            startup_path=(
                "/v2/health/ready"
                if t.model.format == "generative" or spec.runtime.server == "triton"
                else "/v2/health/live"
            ),
            startup_failures=STARTUP_FAILURES_GENERATIVE if t.model.format == "generative" else 150,
            grace_seconds=GRACE_SECONDS,
            drain_seconds=DRAIN_SECONDS,
        )
        for t in deployments
    ]
    services = [{"name": name, "labels": labels, "selector": isvc_selector}]
    canary = spec.rollout.canary
    routed = bool(config.gateway_api)
    if routed and canary is not None:
        # Route backends: one Service per track, so the routes can weigh them.
        services += [
            {"name": f"{name}-{t.name}", "labels": t.labels, "selector": t.selector} for t in deployments
        ]
    objects += [_load("service.yaml.j2", **common, service=s) for s in services]
    objects.append(_load("pdb.yaml.j2", **common))
    if spec.scaling.mode == "hpa":
        objects.append(
            _load(
                "hpa.yaml.j2",
                **common,
                scaling=spec.scaling,
                queue_target=_quantity(spec.scaling.targets.queue_depth_per_replica),
                latency_target=f"{spec.scaling.targets.p95_latency_ms}m",
                hpa_metrics=HPA_METRICS[spec.runtime.server],
            )
        )
    if routed:
        parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": config.gateway.name}
        if config.gateway.namespace:
            parent["namespace"] = config.gateway.namespace
        route = {
            **common,
            "parent": parent,
            "hostname": route_hostname(name, meta.get("namespace") or "default", config),
            "rules": route_rules(name, spec, status),
        }
        objects.append(_load("route.yaml.j2", **route, kind="HTTPRoute", port=HTTP_PORT))
        objects.append(_load("route.yaml.j2", **route, kind="GRPCRoute", port=GRPC_PORT))
    objects.append(_load("networkpolicy.yaml.j2", **common))
    if config.service_monitor:
        objects.append(_load("servicemonitor.yaml.j2", **common))
    return objects


def _quantity(value: float) -> str:
    """A Kubernetes quantity for a per-replica target: whole numbers plain, else milli-units."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A YAML stream, byte-identical for identical input."""
    return "".join(
        "---\n" + yaml.safe_dump(obj, sort_keys=False, width=120, default_flow_style=False) for obj in objects
    )
