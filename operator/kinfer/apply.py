"""The operator's Kubernetes I/O: server-side apply, listing what it owns, pruning, status.

Everything else in the operator is pure; this module is the edge. It uses the kubernetes
DynamicClient so one code path serves every kind render() produces.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ForbiddenError, NotFoundError, ResourceNotFoundError

from kinfer.api import v1alpha1 as api

FIELD_MANAGER = "kinfer"
ISVC_LABEL = "kinfer.dev/isvc"

# Every kind render() can produce, in the order objects are pruned (dependents first).
OWNED_KINDS: tuple[tuple[str, str], ...] = (
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
)

DISCOVERY_TTL_SECONDS = 60.0
# On every applied object: a digest of what kinfer rendered for it (see up_to_date).
DIGEST_ANNOTATION = "kinfer.dev/applied-digest"

log = logging.getLogger(__name__)


class NamespaceTerminating(Exception):
    """The namespace is being deleted: nothing new may be created in it, nor is needed."""


@dataclass(frozen=True)
class Applied:
    """What one server-side apply did."""

    kind: str
    name: str
    action: str  # created | updated | unchanged


def load_client_config() -> kubernetes.client.ApiClient:
    """In a pod: the ServiceAccount token; elsewhere: KUBECONFIG or ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def send(
    client: kubernetes.client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> Any:
    """One API request with plain JSON in and out, for what the typed models get wrong or make
    slow (watch streams, Lease MicroTimes). Returns the urllib3 response unread (a watch streams
    it; `json.loads(response.data)` otherwise); raises ApiException on a non-2xx answer."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    method, url, headers, data, post = client.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(method, url, headers, data, post, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        raise kubernetes.client.ApiException(http_resp=response.response)
    return response.response


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """The rendered object with the digest of its own content as an annotation."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    out = copy.deepcopy(obj)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations[DIGEST_ANNOTATION] = hashlib.sha256(text.encode()).hexdigest()[:20]
    return out


def up_to_date(want: dict[str, Any], have: dict[str, Any] | None) -> bool:
    """Whether applying `want` (stamped) could change nothing kinfer manages in `have`.

    Two checks: the digest on the live object is the one rendered now (so a field kinfer stopped
    rendering is removed by a new apply), and every rendered field has its rendered value in the
    live object (so drift — an edited label, a scaled Deployment — is put back). Fields the API
    server defaults, or other managers own, are extra and do not matter."""
    if have is None:
        return False
    digest = want["metadata"]["annotations"][DIGEST_ANNOTATION]
    if (have["metadata"].get("annotations") or {}).get(DIGEST_ANNOTATION) != digest:
        return False
    return contains(have, want)


def contains(have: Any, want: Any) -> bool:
    """`want` is a sub-document of `have`: maps by key, lists element by element. An empty value
    rendered matches one the API server leaves out."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return not want and have is None
        return all(contains(have[k], v) if k in have else v in ({}, [], None) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return not want and have is None
        return len(have) == len(want) and all(contains(h, w) for h, w in zip(have, want, strict=True))
    return bool(have == want)


class ClusterAPI(Protocol):
    """What reconcile() needs from the cluster; tests use an in-memory fake."""

    def installed(self, api_version: str, kind: str) -> bool: ...
    def get_isvc(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def owned(self, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]: ...
    def apply(self, obj: dict[str, Any], before: dict[str, Any] | None) -> Applied: ...
    def delete(self, obj: dict[str, Any]) -> None: ...
    def deployments(self, namespace: str, name: str) -> list[dict[str, Any]]: ...
    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]: ...
    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None: ...


class Cluster:
    """The API calls the reconciler makes, and nothing else."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.dyn = DynamicClient(client)  # type: ignore[no-untyped-call]
        # kind -> (served?, when checked): a CRD installed later is noticed within a minute.
        self._served: dict[str, tuple[bool, float]] = {}
        self._resources: dict[tuple[str, str], Any] = {}
        # The DynamicClient's discovery cache is not thread-safe (kopf runs handlers in threads):
        # look kinds up under a lock, once, and keep what was found.
        self._discovery = threading.Lock()

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        found = self._resources.get(key)
        if found is None:
            with self._discovery:
                found = self._resources.get(key) or self.dyn.resources.get(api_version=api_version, kind=kind)
                self._resources[key] = found
        return found

    def installed(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. HTTPRoute needs Gateway API's CRDs)."""
        known = self._served.get(kind)
        if known is not None and time.monotonic() - known[1] < DISCOVERY_TTL_SECONDS:
            return known[0]
        try:
            self._resource(api_version, kind)
            served = True
        except ResourceNotFoundError:
            served = False
        self._served[kind] = (served, time.monotonic())
        return served

    def get_isvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self._resource(api.API_VERSION, api.KIND).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(obj.to_dict())

    def isvc_keys(self, namespaces: list[str]) -> list[tuple[str, str]]:
        """(namespace, name) of every InferenceService in these namespaces (empty: all)."""
        resource = self._resource(api.API_VERSION, api.KIND)
        found: list[tuple[str, str]] = []
        targets: list[str | None] = [*namespaces] or [None]
        for namespace in targets:
            for item in resource.get(namespace=namespace).items:
                found.append((item.metadata.namespace, item.metadata.name))
        return found

    def owned(self, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Objects labelled as this InferenceService's, by (kind, name)."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for api_version, kind in OWNED_KINDS:
            if not self.installed(api_version, kind):
                continue  # CRD not installed: nothing of this kind can exist
            items = self._resource(api_version, kind).get(
                namespace=namespace, label_selector=f"{ISVC_LABEL}={name}"
            )
            for item in items.items:
                obj = dict(item.to_dict())
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", api_version)
                found[key(obj)] = obj
        return found

    def apply(self, obj: dict[str, Any], before: dict[str, Any] | None) -> Applied:
        """Server-side apply as field manager kinfer. An unchanged object is not written."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        try:
            after = resource.server_side_apply(
                body=obj,
                namespace=obj["metadata"]["namespace"],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ForbiddenError as exc:
            if "NamespaceTerminating" in str(exc.body):
                raise NamespaceTerminating(obj["metadata"]["namespace"]) from exc
            raise
        if before is None:
            action = "created"
        elif before["metadata"]["resourceVersion"] != after.metadata.resourceVersion:
            action = "updated"
        else:
            action = "unchanged"
        return Applied(obj["kind"], obj["metadata"]["name"], action)

    def delete(self, obj: dict[str, Any]) -> None:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        with contextlib.suppress(NotFoundError):
            resource.delete(name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"])

    def _labelled(self, api_version: str, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        items = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=f"{ISVC_LABEL}={name}"
        )
        return [dict(p.to_dict()) for p in items.items]

    def deployments(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self._labelled("apps/v1", "Deployment", namespace, name)

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self._labelled("v1", "Pod", namespace, name)

    def http_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The InferenceService's HTTPRoute with its status (None without Gateway API)."""
        if not self.installed("gateway.networking.k8s.io/v1", "HTTPRoute"):
            return None
        routes = self._labelled("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, name)
        return next((r for r in routes if r["metadata"]["name"] == name), None)

    def post_event(self, isvc: dict[str, Any], type: str, reason: str, message: str) -> None:
        """A core/v1 Event about an InferenceService, for threads outside kopf's handlers (kopf
        posts only from the handlers' own context). Best effort: a failure is logged."""
        meta = isvc["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            send(self.client, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body, timeout=10)
        except Exception as exc:
            log.warning("event %s on %s/%s not posted: %s", reason, meta["namespace"], meta["name"], exc)

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        """Merge-patch status. With resource_version the write is refused (409 Conflict) when the
        object changed since it was read, so a status computed from a stale read (conditions
        another writer added since) never overwrites the newer one; the pass is then retried."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self._resource(api.API_VERSION, api.KIND).status.patch(
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
