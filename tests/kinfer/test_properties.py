"""Property tests: any valid InferenceService renders deterministically to valid objects."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kinfer.api.validation import problems
from kinfer.render import render, to_yaml
from kinfer.settings import OperatorConfig

from .conftest import k8s_validate

NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)
URIS = st.one_of(
    st.from_regex(r"file:///models/[a-z0-9]{1,12}/model\.pt", fullmatch=True),
    st.from_regex(r"pvc://[a-z][a-z0-9-]{0,10}[a-z0-9]/[a-z0-9]{1,10}/[0-9]{1,3}", fullmatch=True),
)
QUANTITIES = st.sampled_from(["500m", "1", "2", "4", "1Gi", "8Gi", "16Gi", "512Mi"])


@st.composite
def steps(draw: st.DrawFn) -> list[int]:
    inner = draw(st.lists(st.integers(1, 99), unique=True, max_size=6))
    return [*sorted(inner), 100]


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    gpu = draw(st.integers(0, 8))
    mode = draw(st.sampled_from(["metrics", "hpa", "fixed"]))
    scale_to_zero = mode == "metrics" and draw(st.booleans())
    min_replicas = draw(st.integers(0 if scale_to_zero else 1, 20))
    max_batch = draw(st.integers(1, 256))
    spec: dict[str, Any] = {
        "model": {
            "uri": draw(URIS),
            "format": draw(st.sampled_from(["torchscript", "torch-export"])),
        },
        "runtime": {
            "server": draw(st.sampled_from(["kinfer", "triton"])),
            "batching": {
                "maxBatchSize": max_batch,
                "maxDelayMs": draw(st.integers(0, 1000)),
                "maxQueue": draw(st.integers(max_batch, 4096)),
            },
        },
        "resources": {
            "gpu": gpu,
            "gpuProduct": draw(st.sampled_from(["", "NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"])) if gpu else "",
            "cpu": draw(QUANTITIES),
            "memory": draw(QUANTITIES),
        },
        "scaling": {
            "mode": mode,
            "minReplicas": min_replicas,
            "maxReplicas": draw(st.integers(max(min_replicas, 1), 40)),
            "scaleToZero": {"enabled": scale_to_zero},
        },
    }
    if draw(st.booleans()):
        canary: dict[str, Any] = {"model": {"uri": draw(URIS)}, "steps": draw(steps())}
        spec["rollout"] = {"canary": canary}
        if draw(st.booleans()):
            spec["rollout"]["abTest"] = {"header": "x-model-variant", "value": draw(NAMES)}
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": draw(NAMES), "namespace": draw(NAMES)},
        "spec": spec,
    }


@settings(max_examples=250, deadline=None)
@given(isvc=specs(), gateway_api=st.booleans())
def test_valid_specs_render_to_valid_deterministic_objects(isvc: dict[str, Any], gateway_api: bool) -> None:
    assert problems(isvc) == []
    config = OperatorConfig(gateway_api=gateway_api)
    objects = render(isvc, config)
    assert to_yaml(objects) == to_yaml(render(isvc, config))
    name = isvc["metadata"]["name"]
    gpu = isvc["spec"]["resources"]["gpu"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["kinfer.dev/isvc"] == name
        assert labels["app.kubernetes.io/managed-by"] == "kinfer"
        assert obj["metadata"]["namespace"] == isvc["metadata"]["namespace"]
        if obj["kind"] != "HTTPRoute":
            k8s_validate(obj)
        if obj["kind"] == "Deployment":
            limits = obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert limits.get("nvidia.com/gpu", 0) == gpu
            replicas = obj["spec"].get("replicas")
            assert (
                replicas is None
                or replicas <= isvc["spec"]["scaling"]["maxReplicas"]
                or (obj["metadata"]["name"].endswith("-canary"))
            )
