"""An in-memory stand-in for kinfer.apply.Cluster, for reconcile() unit tests.

It keeps objects by (kind, name), bumps resourceVersion only when an apply changes the object
(as the API server does for a no-op server-side apply), and records every write.
"""

from __future__ import annotations

import copy
from typing import Any

from kinfer.apply import Applied


class Conflict(Exception):
    """409: the object changed since it was read (as the API server answers)."""


class FakeCluster:
    def __init__(self, isvc: dict[str, Any]) -> None:
        self.isvc = copy.deepcopy(isvc)
        self.isvc["metadata"].setdefault("uid", "uid-1")
        self.isvc["metadata"].setdefault("generation", 1)
        self.isvc["metadata"].setdefault("namespace", "default")
        self.isvc["metadata"].setdefault("resourceVersion", "1")
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.pod_list: list[dict[str, Any]] = []
        self.writes: list[str] = []
        self.apply_calls = 0  # every apply sent, whether or not it changed the object
        self.served: set[str] = set()  # CRD-defined kinds the fake cluster serves
        self._version = 0

    def _bump(self) -> str:
        self._version += 1
        return str(self._version)

    def installed(self, api_version: str, kind: str) -> bool:
        return kind in self.served

    def get_isvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.isvc)

    def owned(self, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        return copy.deepcopy(self.objects)

    def apply(self, obj: dict[str, Any], before: dict[str, Any] | None) -> Applied:
        self.apply_calls += 1
        key = (obj["kind"], obj["metadata"]["name"])
        current = self.objects.get(key)
        stripped = (
            None
            if current is None
            else {
                **current,
                "metadata": {k: v for k, v in current["metadata"].items() if k != "resourceVersion"},
                "status": None,
            }
        )
        if stripped is not None and {**stripped, "status": None} == {**obj, "status": None}:
            return Applied(obj["kind"], obj["metadata"]["name"], "unchanged")
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = self._bump()
        stored["status"] = (current or {}).get("status")
        self.objects[key] = stored
        self.writes.append(f"apply {key[0]}/{key[1]}")
        return Applied(obj["kind"], obj["metadata"]["name"], "created" if current is None else "updated")

    def delete(self, obj: dict[str, Any]) -> None:
        self.objects.pop((obj["kind"], obj["metadata"]["name"]), None)
        self.writes.append(f"delete {obj['kind']}/{obj['metadata']['name']}")

    def deployments(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (kind, _), o in self.objects.items() if kind == "Deployment"]

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pod_list)

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        meta = self.isvc["metadata"]
        if resource_version is not None and resource_version != meta["resourceVersion"]:
            raise Conflict(
                f"status of {name}: resourceVersion {resource_version} is not {meta['resourceVersion']}"
            )
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.isvc["status"] = {**(self.isvc.get("status") or {}), **copy.deepcopy(status)}
        self.writes.append("status")

    def set_deployment_status(self, name: str, **status: int) -> None:
        self.objects[("Deployment", name)]["status"] = {"observedGeneration": 0, **status}
