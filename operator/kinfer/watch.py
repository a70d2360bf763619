"""Watches of the objects InferenceServices own, filtered by the API server.

kopf's label filters are applied in the operator, after every Pod, Deployment and Service of the
cluster has been sent to it and parsed. These watches ask the API server for objects with the
`kinfer.dev/isvc` label only (`labelSelector`), so unrelated pods never reach the operator. Each
event asks for a pass of the InferenceService the label names.

One thread per (kind, namespace): list once for a resourceVersion, then watch from it; after a
410 Gone (history expired) list again and ask for a pass of every owner listed, since events in
between were lost.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.watch.watch import iter_resp_lines

from kinfer.apply import ISVC_LABEL, send

log = logging.getLogger(__name__)

# (API group/version, plural, Kind) of what a pass reads or writes; pods for status.
OWNED = (
    ("apps/v1", "deployments", "Deployment"),
    ("v1", "services", "Service"),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy"),
    ("v1", "pods", "Pod"),
)
SELECTOR = f"app.kubernetes.io/managed-by=kinfer,{ISVC_LABEL}"  # ours, and the owner named
WATCH_SECONDS = 270
RETRY_SECONDS = 2.0

Notify = Callable[[str, str, str], None]  # (namespace, isvc name, trigger)


def path(api_version: str, plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def owner(obj: dict[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(ISVC_LABEL)
    return (meta["namespace"], name) if name and meta.get("namespace") else None


@dataclass
class OwnedWatch:
    """Follows one kind in one namespace (None: all) and reports owners whose objects changed."""

    client: kubernetes.client.ApiClient
    api_version: str
    plural: str
    kind: str
    namespace: str | None
    notify: Notify
    stop: threading.Event

    def _get(self, params: list[tuple[str, str]], timeout: float) -> Any:
        where = path(self.api_version, self.plural, self.namespace)
        return send(self.client, "GET", where, [("labelSelector", SELECTOR), *params], timeout=timeout)

    def list(self, report: bool) -> str:
        listed = json.loads(self._get([], 60).data)
        if report:
            for item in listed.get("items") or []:
                self._notify(item)
        return str(listed["metadata"]["resourceVersion"])

    def _notify(self, obj: dict[str, Any]) -> None:
        found = owner(obj)
        if found:
            self.notify(found[0], found[1], f"{self.kind} {obj['metadata'].get('name')}")

    def watch(self, version: str) -> str | None:
        """Events from `version` on; the last version seen, or None when a list is needed."""
        params = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        response = self._get(params, WATCH_SECONDS + 30)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    return version
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # 410 Gone: the version is too old
                    return None
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") != "BOOKMARK":
                    self._notify(obj)
        finally:
            response.release_conn()
        return version

    def run(self) -> None:
        version: str | None = None
        first = True
        while not self.stop.is_set():
            try:
                if version is None:
                    version = self.list(report=not first)
                    first = False
                version = self.watch(version)
            except kubernetes.client.ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                log.warning("watch of %s failed (%s %s); retrying", self.plural, exc.status, exc.reason)
                self.stop.wait(RETRY_SECONDS)
            except Exception as exc:  # a dropped connection, a timeout: watch again
                log.info("watch of %s ended (%s); resuming", self.plural, type(exc).__name__)
                self.stop.wait(RETRY_SECONDS)


def start(namespaces: Iterable[str | None], notify: Notify, stop: threading.Event) -> list[threading.Thread]:
    """A watching thread per owned kind and namespace (None: cluster-wide), each with its own
    connection pool so that long-polling watches never wait for a pass's connections."""
    threads = []
    for namespace in namespaces:
        for api_version, plural, kind in OWNED:
            watch = OwnedWatch(
                kubernetes.client.ApiClient(), api_version, plural, kind, namespace, notify, stop
            )
            thread = threading.Thread(
                target=watch.run, name=f"watch-{plural}-{namespace or 'all'}", daemon=True
            )
            thread.start()
            threads.append(thread)
    return threads
