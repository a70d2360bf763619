"""The test bed's kube-proxy: relays on ClusterIP:port to a ready endpoint (see services.py)."""

from __future__ import annotations

import functools
import random
import threading
import time

from kinfer_dev.testbed import network, services
from kinfer_dev.testbed.kube import Kube, KubeError, Obj
from kinfer_dev.testbed.procs import log
from kinfer_dev.testbed.relay import Address, Relay

ENDPOINTS_TTL_S = 1.0  # how long a Service's EndpointSlices are reused by its relays


class ServiceProxy:
    """The test bed's kube-proxy: a relay in network.SERVICE_NS on each ClusterIP:port that a
    starting pod has seen, sending each connection to a ready endpoint of the Service at that
    address. A Service's EndpointSlices are read at most once per `ttl_s` (a burst of
    connections makes one request). Relays stay until the launcher stops: one whose Service is
    gone finds no endpoint and resets its connections."""

    def __init__(self, kube: Kube, ttl_s: float = ENDPOINTS_TTL_S) -> None:
        self.kube, self.ttl_s = kube, ttl_s
        self.lock = threading.Lock()
        self.relays: dict[Address, Relay] = {}
        self.targets: dict[Address, services.ServicePort] = {}
        self.cache_lock = threading.Lock()
        self.cache: dict[tuple[str, str], tuple[float, list[Obj]]] = {}
        self.rng = random.Random()

    def ensure(self, ports: list[services.ServicePort]) -> None:
        """Relays for these Service ports; an address taken over by another Service (a ClusterIP
        freed and given out again) now leads to the new one."""
        with self.lock:
            for sp in ports:
                key = (sp.cluster_ip, sp.port)
                self.targets[key] = sp
                if key not in self.relays:
                    upstream = functools.partial(self._upstream, key)
                    self.relays[key] = Relay(network.SERVICE_NS, key, upstream)

    def _upstream(self, key: Address) -> Address | None:
        sp = self.targets[key]
        try:
            slices = self._slices(sp.namespace, sp.service)
        except (KubeError, OSError) as e:
            log(f"endpoints of {sp.namespace}/{sp.service}: {e!r}")
            return None
        return services.choose_endpoint(slices, sp.name, self.rng)

    def _slices(self, namespace: str, service: str) -> list[Obj]:
        with self.cache_lock:
            now = time.monotonic()
            hit = self.cache.get((namespace, service))
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
            path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            selector = f"kubernetes.io/service-name={service}"
            items: list[Obj] = self.kube.get(path, labelSelector=selector)["items"]
            self.cache = {k: v for k, v in self.cache.items() if now - v[0] < self.ttl_s}
            self.cache[(namespace, service)] = (now, items)
            return items
