"""Pod volumes for the launcher, the part of a kubelet's volume manager the test bed needs.

Only pods that mount a ServiceAccount token get volumes (see launcher.py): those are the pods
that act on the cluster, like the operator installed by the Helm chart, and the point of running
them here is that they see what a kubelet would give them: the token the API server issued for
this pod, the cluster CA, their ConfigMaps, an emptyDir. Supported: emptyDir, configMap,
downwardAPI, and projected volumes of serviceAccountToken, configMap and downwardAPI sources
(what the ServiceAccount admission plugin injects). Anything else is refused with the volume
named, as a FailedMount.
"""

from __future__ import annotations

import base64
from pathlib import Path

from kinfer_dev.testbed.kube import Kube, KubeError, Obj

DEFAULT_TOKEN_SECONDS = 3600


class VolumeError(RuntimeError):
    """The volume cannot be made (yet): the message names it and says why."""


def volumes_by_name(pod: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in pod["spec"].get("volumes", [])}


def mounts_token(pod: Obj) -> bool:
    """Whether any container mounts a projected ServiceAccount token."""
    vols = volumes_by_name(pod)
    for c in pod["spec"]["containers"]:
        for m in c.get("volumeMounts", []):
            sources = vols.get(m["name"], {}).get("projected", {}).get("sources", [])
            if any("serviceAccountToken" in s for s in sources):
                return True
    return False


def _field(pod: Obj, path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
    }
    if path in simple:
        return str(simple[path])
    raise VolumeError(f"downwardAPI fieldPath {path!r} is not supported by the test bed")


def _write(root: Path, rel: str, data: bytes) -> None:
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise VolumeError(f"path {rel!r} leaves the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(0o600)  # tokens among them; the processes run as root (docs/testbed.md)


def _configmap(kube: Kube, namespace: str, src: Obj, root: Path) -> None:
    try:
        cm = kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{src['name']}")
    except KubeError as e:
        if e.status == 404 and src.get("optional"):
            return
        raise VolumeError(f'configmap "{src["name"]}": {e}') from e
    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    data |= {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}
    items = src.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            raise VolumeError(f'configmap "{src["name"]}" has no key {item["key"]!r}')
        _write(root, item["path"], data[item["key"]])


def _downward(pod: Obj, src: Obj, root: Path) -> None:
    for item in src.get("items", []):
        if "fieldRef" not in item:
            raise VolumeError("downwardAPI resourceFieldRef is not supported by the test bed")
        _write(root, item["path"], _field(pod, item["fieldRef"]["fieldPath"]).encode())


def _token(kube: Kube, pod: Obj, src: Obj, root: Path) -> None:
    """A TokenRequest bound to this pod: the token dies with the pod, as a kubelet's does."""
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    spec: Obj = {
        "expirationSeconds": int(src.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)),
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
    }
    if src.get("audience"):
        spec["audiences"] = [src["audience"]]
    path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
    try:
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        answer = kube.create(path, request)
    except KubeError as e:
        raise VolumeError(f'token for serviceaccount "{sa}": {e}') from e
    _write(root, src["path"], answer["status"]["token"].encode())


def needs_volumes(pod: Obj) -> bool:
    """Pods run with their volumes: those holding a token, and those with init containers
    (a model download: the init container fills an emptyDir the server then reads)."""
    return mounts_token(pod) or bool(pod["spec"].get("initContainers"))


def host_path(nodes_root: Path, node: str, path: str) -> Path:
    """A hostPath on a fake node: each node has a directory of its own, which outlives pods
    (a node-local cache is shared by the pods of one node only)."""
    return nodes_root / node / "hostpath" / path.lstrip("/")


def materialize(kube: Kube, pod: Obj, root: Path, nodes_root: Path | None = None) -> dict[str, Path]:
    """Write every volume of the pod under root/<name> (hostPath volumes under nodes_root);
    return name → directory."""
    namespace = pod["metadata"]["namespace"]
    made: dict[str, Path] = {}
    for name, vol in volumes_by_name(pod).items():
        if "hostPath" in vol and nodes_root is not None:
            made[name] = host_path(nodes_root, pod["spec"]["nodeName"], vol["hostPath"]["path"])
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                made[name].mkdir(parents=True, exist_ok=True)
            elif not made[name].exists():
                raise VolumeError(f"volume {name!r}: hostPath {vol['hostPath']['path']} does not exist")
            continue
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            pass
        elif "configMap" in vol:
            _configmap(kube, namespace, vol["configMap"], d)
        elif "downwardAPI" in vol:
            _downward(pod, vol["downwardAPI"], d)
        elif "projected" in vol:
            for src in vol["projected"].get("sources", []):
                if "serviceAccountToken" in src:
                    _token(kube, pod, src["serviceAccountToken"], d)
                elif "configMap" in src:
                    _configmap(kube, namespace, src["configMap"], d)
                elif "downwardAPI" in src:
                    _downward(pod, src["downwardAPI"], d)
                else:
                    raise VolumeError(f"volume {name!r}: projected source {sorted(src)} is not supported")
        else:
            kind = next((k for k in vol if k != "name"), "?")
            raise VolumeError(f"volume {name!r}: type {kind} is not supported by the test bed")
        made[name] = d
    return made


def secret_env(kube: Kube, namespace: str, container: Obj) -> dict[str, str]:
    """The container's envFrom secretRef and env secretKeyRef values. VolumeError names a
    Secret or key that is missing (the kubelet's CreateContainerConfigError)."""
    cache: dict[str, dict[str, str]] = {}

    def data(name: str, optional: bool) -> dict[str, str]:
        if name not in cache:
            try:
                secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
            except KubeError as e:
                if e.status == 404 and optional:
                    return {}
                raise VolumeError(
                    f'secret "{name}" not found' if e.status == 404 else f'secret "{name}": {e}'
                ) from e
            raw = secret.get("data") or {}
            cache[name] = {k: base64.b64decode(v).decode() for k, v in raw.items()}
        return cache[name]

    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "secretRef" in src:
            ref = src["secretRef"]
            prefix = src.get("prefix", "")
            env |= {prefix + k: v for k, v in data(ref["name"], bool(ref.get("optional"))).items()}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            values = data(ref["name"], bool(ref.get("optional")))
            if ref["key"] in values:
                env[e["name"]] = values[ref["key"]]
            elif not ref.get("optional"):
                raise VolumeError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
    return env


def binds(container: Obj, made: dict[str, Path]) -> list[tuple[Path, str, bool]]:
    """(host directory, mountPath, read-only) for each of the container's volumeMounts."""
    out = []
    for m in container.get("volumeMounts", []):
        if m.get("subPath") or m.get("subPathExpr"):
            raise VolumeError(f"volumeMount {m['name']!r}: subPath is not supported by the test bed")
        out.append((made[m["name"]], str(m["mountPath"]), bool(m.get("readOnly", False))))
    return out


def bind_args(mounts: list[tuple[Path, str, bool]]) -> list[str]:
    """The sandbox's --bind arguments for binds()."""
    return [f"--bind={src}:{dst}{':ro' if ro else ''}" for src, dst, ro in mounts]
