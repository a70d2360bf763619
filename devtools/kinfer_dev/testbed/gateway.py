"""The test bed's Gateway API data plane: Traefik v3 with its Kubernetes Gateway provider.

Traefik runs on the host, like the control plane, authenticated with a token of its own
ServiceAccount (RBAC as its docs give it). It watches the Gateway API objects, resolves each
backend Service to pod IPs through EndpointSlices and proxies to them over the bridge, the way
an in-cluster gateway would. One GatewayClass and one Gateway with two listeners: `http`
(HTTPRoutes, plain HTTP/1.1) and `grpc` (GRPCRoutes, h2c), each on a loopback port of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kinfer_dev.testbed import install, versions
from kinfer_dev.testbed.kube import Kube, KubeError

NAMESPACE = "kinfer-gateway"
SERVICE_ACCOUNT = "traefik"
CLASS = "traefik"
GATEWAY = "kinfer"
CONTROLLER = "traefik.io/gateway-controller"
GROUP = "gateway.networking.k8s.io"


def crd_files() -> list[Path]:
    """The standard-channel Gateway API CRDs, from the module cache (fetched at install)."""
    source = install.module_dir("sigs.k8s.io/gateway-api", versions.GATEWAY_API)
    return sorted((source / "config" / "crd" / "standard").glob(f"{GROUP}_*.yaml"))


def _rbac() -> list[dict[str, Any]]:
    read = ["get", "list", "watch"]
    kinds = ["backendtlspolicies", "gatewayclasses", "gateways", "grpcroutes", "httproutes",
             "referencegrants", "listenersets", "tcproutes", "tlsroutes"]  # fmt: skip
    rules = [
        {"apiGroups": [""], "resources": ["namespaces", "nodes", "services", "secrets", "configmaps"],
         "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": [GROUP], "resources": kinds, "verbs": read},
        {"apiGroups": [GROUP], "resources": [f"{k}/status" for k in kinds], "verbs": ["update"]},
    ]  # fmt: skip
    meta = {"name": "kinfer-traefik-gateway"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": meta["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]},
    ]  # fmt: skip


def gateway_objects(http_port: int, grpc_port: int) -> list[dict[str, Any]]:
    """The GatewayClass and the Gateway; a listener's port is the Traefik entry point's port."""

    def listener(name: str, port: int, kind: str) -> dict[str, Any]:
        kinds = [{"group": GROUP, "kind": kind}]
        allowed = {"namespaces": {"from": "All"}, "kinds": kinds}
        return {"name": name, "port": port, "protocol": "HTTP", "allowedRoutes": allowed}

    listeners = [listener("http", http_port, "HTTPRoute"), listener("grpc", grpc_port, "GRPCRoute")]
    return [
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
            "spec": {"gatewayClassName": CLASS, "listeners": listeners},
        },
    ]


def _path(obj: dict[str, Any]) -> str:
    api, kind = obj["apiVersion"], obj["kind"]
    plural = {"ClusterRoleBinding": "clusterrolebindings", "ClusterRole": "clusterroles",
              "ServiceAccount": "serviceaccounts", "Namespace": "namespaces",
              "CustomResourceDefinition": "customresourcedefinitions",
              "GatewayClass": "gatewayclasses", "Gateway": "gateways"}[kind]  # fmt: skip
    base = "/api/v1" if api == "v1" else f"/apis/{api}"
    ns = obj["metadata"].get("namespace")
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


def create_all(kube: Kube, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        try:
            kube.create(_path(obj), obj)
        except KubeError as e:
            if e.status != 409:  # already there
                raise


def prepare(kube: Kube) -> str:
    """Install the CRDs, Traefik's ServiceAccount and RBAC; a token of that ServiceAccount."""
    crds = [yaml.safe_load(f.read_text()) for f in crd_files()]
    create_all(kube, crds)
    create_all(kube, _rbac())
    path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token"
    review = kube.create(path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": 7 * 24 * 3600}})  # fmt: skip
    return str(review["status"]["token"])


def established(kube: Kube) -> bool:
    names = [f"{k}.{GROUP}" for k in ("gatewayclasses", "gateways", "httproutes", "grpcroutes")]
    for name in names:
        crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = (crd.get("status") or {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return False
    return True


def write_config(state: Path, ports: dict[str, int], token: str) -> Path:
    """Traefik's static configuration. A file, mode 0600, because it holds the token (Traefik
    takes its static configuration from one source: flags, a file or the environment)."""
    config = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO"},
        "ping": {},
        "entryPoints": {
            "traefik": {"address": f"127.0.0.1:{ports['gateway-admin']}"},
            "web": {"address": f"127.0.0.1:{ports['gateway-http']}"},
            "grpc": {"address": f"127.0.0.1:{ports['gateway-grpc']}"},
        },
        "providers": {
            "kubernetesGateway": {
                "endpoint": f"https://127.0.0.1:{ports['kube-apiserver']}",
                "token": token,
                "certAuthFilePath": str(state / "pki" / "ca.crt"),
                "statusAddress": {"ip": "127.0.0.1"},
            }
        },
    }
    path = state / "traefik.yml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


def argv(state: Path, ports: dict[str, int]) -> list[str]:
    return [str(install.paths().traefik), f"--configfile={state / 'traefik.yml'}"]


def programmed(kube: Kube) -> bool:
    gw = kube.get(f"/apis/{GROUP}/v1/namespaces/{NAMESPACE}/gateways/{GATEWAY}")
    conds = (gw.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conds)
