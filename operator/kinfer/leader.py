"""Leader election on a coordination.k8s.io Lease: one operator replica works, the others wait.

The holder renews the Lease every RETRY seconds; a standby takes it when the record has not
changed for LEASE seconds by its own clock (so clocks need not agree, as in client-go), or at once
when the holder released it on a clean exit. Every write carries the resourceVersion read, so two
candidates cannot both win. A holder that cannot renew for RENEW_DEADLINE seconds (less than
LEASE) stops working before anyone else may start.

`step()` is one round, with the clock passed in; `run()` loops it on a thread.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
RENEW_DEADLINE_SECONDS = 10.0
RETRY_SECONDS = 2.0
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Conflict(Exception):
    """The Lease changed (or was created) since it was read: someone else wrote first."""


class LeaseAPI(Protocol):
    """Read, create and replace one Lease; tests use an in-memory fake."""

    def get(self) -> dict[str, Any] | None: ...
    def create(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    def replace(self, lease: dict[str, Any]) -> dict[str, Any]: ...


def default_identity() -> str:
    """Unique per process: the pod's host name and a random suffix (a restarted pod is new)."""
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


def default_namespace() -> str:
    """The operator's own namespace in a pod, else kinfer-system."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "kinfer-system"
    except OSError:
        return os.environ.get("POD_NAMESPACE", "kinfer-system")


def micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Elector:
    api: LeaseAPI
    identity: str
    on_start: Callable[[], None] = lambda: None  # became the leader: catch up on everything
    lease_seconds: int = LEASE_SECONDS
    renew_deadline: float = RENEW_DEADLINE_SECONDS
    # False: the Lease is someone else's to create (the Helm chart renders it, so that `helm
    # uninstall` deletes it); while it is missing nobody leads, and a replica still stopping
    # after an uninstall does not create it again.
    create: bool = True
    leading: bool = False
    _observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions) last seen
    _observed_at: float = 0.0  # when, on our monotonic clock, it last changed
    _renewed_at: float = 0.0
    _caught_up: bool = False  # on_start() succeeded since this replica last won the Lease
    _stop: threading.Event = field(default_factory=threading.Event)

    def step(self, mono: float, wall: datetime) -> None:
        """One round: create, renew or take the Lease, or wait. Errors leave `leading` to the
        renew deadline."""
        was = self.leading
        try:
            self._round(mono, wall)
        except Conflict:
            pass  # another candidate wrote first; the next round reads its record
        except Exception as exc:
            status = getattr(exc, "status", None)
            log.warning("lease: %s", f"{type(exc).__name__} {status}" if status else repr(exc))
        if self.leading and mono - self._renewed_at > self.renew_deadline:
            log.warning("lease: not renewed for %.0f s: no longer the leader", mono - self._renewed_at)
            self.leading = False
        if self.leading and not was:
            log.info("lease: %s is the leader", self.identity)
            self._caught_up = False
        elif was and not self.leading:
            log.info("lease: %s stopped leading", self.identity)
        if self.leading and not self._caught_up:
            # Events that came while this replica waited asked for no pass: until one catch-up
            # succeeds (its LIST may fail like any call), try again every round.
            try:
                self.on_start()
                self._caught_up = True
            except Exception:  # the Lease stays ours
                log.exception("lease: catching up after winning the Lease failed; retrying")

    def _round(self, mono: float, wall: datetime) -> None:
        lease = self.api.get()
        now = micro_time(wall)
        if lease is None:
            if not self.create:
                if self.leading or self._observed != ("missing",):
                    log.warning("lease: missing and not ours to create: waiting for it")
                self.leading, self._observed = False, ("missing",)
                return
            self.api.create(self._record({}, now, acquired=True))
            self._won(mono)
            return
        spec = lease.get("spec") or {}
        seen = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if seen != self._observed:
            self._observed, self._observed_at = seen, mono
        holder = spec.get("holderIdentity") or ""
        if holder == self.identity:
            self.api.replace({**lease, "spec": self._record(spec, now, acquired=False)})
            self._won(mono)
            return
        self.leading = False
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if not holder or mono - self._observed_at > duration:
            self.api.replace({**lease, "spec": self._record(spec, now, acquired=True)})
            self._won(mono)

    def _record(self, spec: dict[str, Any], now: str, acquired: bool) -> dict[str, Any]:
        out = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds}
        out["renewTime"] = now
        if acquired:
            out["acquireTime"] = now
            # A change of holder; not the first one (a Lease the chart created has none yet).
            held = bool(spec.get("holderIdentity") or spec.get("acquireTime"))
            out["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if held else 0)
        return out

    def _won(self, mono: float) -> None:
        self.leading = True
        self._renewed_at = mono

    def release(self) -> None:
        """On a clean exit: give the Lease up so that a standby takes it at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self.api.get()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": None, "renewTime": micro_time(datetime.now(UTC))}
                self.api.replace({**lease, "spec": spec})
        except Exception as exc:  # the standby takes over after the lease duration instead
            log.warning("lease: release failed: %s", exc)

    def run(self, period: float = RETRY_SECONDS) -> None:
        while not self._stop.is_set():
            self.step(time.monotonic(), datetime.now(UTC))
            self._stop.wait(period)

    def start(self) -> None:
        threading.Thread(target=self.run, name="kinfer-lease", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.release()


class KubeLease:
    """The Lease as plain JSON through the kubernetes client (no typed models: MicroTime
    fields stay the strings the API server wrote)."""

    def __init__(self, client: Any, namespace: str, name: str) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        import kubernetes

        from kinfer.apply import send

        try:
            response = send(self.client, method, path, body=body, timeout=RENEW_DEADLINE_SECONDS / 2)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404 and method == "GET":
                return None
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise
        out: dict[str, Any] = json.loads(response.data)
        return out

    def get(self) -> dict[str, Any] | None:
        return self._call("GET", f"{self.path}/{self.name}")

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        return self._call("POST", self.path, body) or {}

    def replace(self, lease: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", f"{self.path}/{self.name}", lease) or {}
