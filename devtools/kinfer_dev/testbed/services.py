"""Services as a test bed pod sees them: its hosts file and where each connection goes.

There is no kube-proxy and no cluster DNS. When a pod starts, the launcher lists the Services of
the pod's namespace; each one with a ClusterIP gets a line in the pod's hosts file, and each of
its TCP ports a relay (relay.py) on ClusterIP:port in the test bed's service namespace, where
the pods route the service range (network.py). Every connection to a relay goes to one ready
endpoint of the Service, chosen at that moment from its EndpointSlices. This module is the pure
part; the launcher does the I/O.

Services created after the pod started are not seen by it (no name, no relay); a kubelet's
Service environment variables have the same limit. Endpoints, by contrast, are looked up for
every connection, so they follow the pods behind a Service.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Endpoint = tuple[str, int]  # (pod IP, port)


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    service: str
    cluster_ip: str
    port: int  # where the pod connects: cluster_ip:port
    name: str  # the Service port's name ("" when unnamed), matched to EndpointSlice port names


def with_cluster_ip(services: list[Obj]) -> list[Obj]:
    """The Services a connection can go to: not headless (clusterIP None), not ExternalName."""
    return [
        s
        for s in services
        if s["spec"].get("type") != "ExternalName" and s["spec"].get("clusterIP") not in (None, "", "None")
    ]


def tcp_ports(services: list[Obj]) -> list[ServicePort]:
    return [
        ServicePort(
            s["metadata"]["namespace"],
            s["metadata"]["name"],
            s["spec"]["clusterIP"],
            int(p["port"]),
            p.get("name") or "",
        )
        for s in with_cluster_ip(services)
        for p in s["spec"].get("ports") or []
        if p.get("protocol", "TCP") == "TCP"
    ]


def hosts_file(pod: Obj, services: list[Obj], uts_hostname: str = "") -> str:
    """/etc/hosts for `pod`: localhost, the pod's own name, and each Service's names.

    `uts_hostname` is what the pod's processes get from gethostname(): the machine's, as they
    share its UTS namespace. It names the pod IP too, so that resolving one's own hostname
    gives the pod IP, as in Kubernetes.
    """
    meta = pod["metadata"]
    ns = meta["namespace"]
    hostname = pod["spec"].get("hostname") or meta["name"]
    own = [hostname] + ([uts_hostname] if uts_hostname not in ("", "localhost", hostname) else [])
    lines = [
        "# Kubernetes-managed hosts file (kinfer test bed launcher).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod['status']['podIP']}\t{' '.join(own)}",
    ]
    for s in with_cluster_ip(services):
        name = s["metadata"]["name"]
        names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        lines.append(f"{s['spec']['clusterIP']}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def ready_endpoints(slices: list[Obj], port_name: str) -> list[Endpoint]:
    """Ready (IPv4, TCP) endpoints of a Service's EndpointSlices for the port named `port_name`.

    An endpoint whose `ready` is unset counts as ready, as the EndpointSlice API says; an
    endpoint listed in two slices (while they are rewritten) counts once.
    """
    found: set[Endpoint] = set()
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        ports = [
            p["port"]
            for p in s.get("ports") or []
            if (p.get("name") or "") == port_name and p.get("protocol", "TCP") == "TCP" and p.get("port")
        ]
        if not ports:
            continue
        for ep in s.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready") is False or not ep.get("addresses"):
                continue
            found.add((ep["addresses"][0], int(ports[0])))  # addresses are fungible: the first
    return sorted(found)


def choose_endpoint(slices: list[Obj], port_name: str, rng: random.Random) -> Endpoint | None:
    """A random ready endpoint for one connection, or None when there is none."""
    endpoints = ready_endpoints(slices, port_name)
    return rng.choice(endpoints) if endpoints else None
