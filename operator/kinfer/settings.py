"""Operator configuration: a YAML file and KINFER_* environment variables, validated once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kinfer.api.v1alpha1 import Toleration


class GatewayRef(BaseModel):
    """The Gateway that HTTPRoutes for canary and A/B traffic attach to."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = "kinfer"
    namespace: str = ""


class OperatorConfig(BaseModel):
    """What the operator needs to know about the cluster it runs in."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    runtime_image: str = "ghcr.io/kinfer/kinfer-runtime:0.1.0"
    """Image for runtime.server kinfer when the spec leaves runtime.image empty."""

    triton_image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    """Image for runtime.server triton when the spec leaves runtime.image empty."""

    gateway_api: bool | None = None
    """Render HTTPRoutes for canary weights and A/B headers. None: when the cluster serves the
    HTTPRoute kind (Gateway API installed); True/False: always/never."""

    gateway: GatewayRef = GatewayRef()

    service_monitor: bool = False
    """Render a prometheus-operator ServiceMonitor per InferenceService."""

    prometheus_url: str = "http://127.0.0.1:9090"

    default_tolerations: list[Toleration] = Field(default_factory=list)
    """Added to every model-server pod, e.g. for a dedicated inference node pool."""

    autoscale_interval_seconds: float = 10.0

    model_cache_dir: str = "/var/cache/kinfer/models"
    """Node directory (hostPath) of the model cache that s3://, oci:// and https:// downloads go
    through; it must be writable by UID 65532. Empty: no node cache."""

    model_cache_max_bytes: int = 50 * 2**30
    """Bound of the node cache in bytes; least recently used models are evicted first."""


ENV_PREFIX = "KINFER_"
_ENV_FIELDS = {
    "RUNTIME_IMAGE": "runtime_image",
    "TRITON_IMAGE": "triton_image",
    "GATEWAY_API": "gateway_api",
    "SERVICE_MONITOR": "service_monitor",
    "PROMETHEUS_URL": "prometheus_url",
    "AUTOSCALE_INTERVAL_SECONDS": "autoscale_interval_seconds",
    "MODEL_CACHE_DIR": "model_cache_dir",
    "MODEL_CACHE_MAX_BYTES": "model_cache_max_bytes",
}


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> OperatorConfig:
    """File values first, then KINFER_* variables on top (env wins, as in a Pod spec override)."""
    values: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: operator config must be a mapping")
        values.update(loaded)
    environ = os.environ if env is None else env
    for suffix, field in _ENV_FIELDS.items():
        if ENV_PREFIX + suffix in environ:
            values[to_camel(field)] = environ[ENV_PREFIX + suffix]
    return OperatorConfig.model_validate(values)
