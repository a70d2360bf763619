"""Pod networking: one network namespace per pod, joined by veth to a bridge on the host.

No address of the pod range is ever local on the host. The bridge holds only a link-local
address (HOST_ADDR); the host reaches pod IPs through a plain route over the bridge, and each
pod has a host route back to HOST_ADDR and no default route, so nothing a pod sends can leave
this machine. Names of what was created are recorded under the state dir so `down` removes
exactly those.

Services (services.py): one more namespace, SERVICE_NS, joined to the bridge like a pod, has the
whole service range local (an AnyIP route on its `lo`); the launcher's Service relays listen
there on ClusterIP:port, and every pod routes the service range to it. (Not inside each pod's
own namespace: a relay there on ClusterIP:8080 would take port 8080 from the pod's own server
listening on 0.0.0.0:8080, the usual case for a pod behind a Service.) A pod's names come from
/etc/netns/<netns>/hosts, which `ip netns exec` bind-mounts over /etc/hosts for the processes
it starts; the file goes with the pod's namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from pathlib import Path

from kinfer_dev.testbed.nodes import POD_RANGE

BRIDGE = "kinfer0"
HOST_ADDR = "169.254.88.1"  # the host's side of the bridge; link-local, never routed
POD_PREFIX = POD_RANGE.split("/")[1]  # pods see the whole range as one L2 segment
SERVICE_RANGE = "10.96.0.0/16"  # the API server's --service-cluster-ip-range
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` mounts each file of NETNS_ETC/NS over /etc
SERVICE_NS, SERVICE_VETH = "kinfer-services", "kfvservices"  # where the Service relays listen
SERVICE_ADDR = "10.88.255.254"  # SERVICE_NS on the bridge: in the pod range, in no node's podCIDR


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def bridge_up() -> None:
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("link", "set", BRIDGE, "up")
    _ip("addr", "replace", f"{HOST_ADDR}/32", "dev", BRIDGE)
    _ip("route", "replace", POD_RANGE, "dev", BRIDGE, "src", HOST_ADDR)
    # There is no kube-proxy on the host: a ClusterIP leads nowhere from here (pods reach theirs
    # through SERVICE_NS). Fail such connections on the spot rather than let them follow the
    # default route off the machine.
    _ip("route", "replace", "unreachable", SERVICE_RANGE)


def bridge_down() -> None:
    service_ns_down()
    _ip("route", "del", "unreachable", SERVICE_RANGE, check=False)
    _ip("link", "del", BRIDGE, check=False)  # also drops its route and address


def names(pod_uid: str) -> tuple[str, str]:
    """(netns, host veth) for a pod; short enough for IFNAMSIZ."""
    h = hashlib.sha256(pod_uid.encode()).hexdigest()[:10]
    return f"kinfer-{h}", f"kfv{h}"


def pod_netns_up(pod_uid: str, pod_ip: str, registry: Path) -> str:
    ns, veth = names(pod_uid)
    registry.mkdir(parents=True, exist_ok=True)
    (registry / ns).write_text(veth)  # record first: a half-made namespace is still cleaned up
    pod_netns_down(ns, veth, registry=None)  # a leftover from a crashed launcher
    # Pod IPs come back soon after a pod goes: forget the old pod's MAC, or the host would send
    # to it until the entry goes stale and fails (about 10 s).
    _ip("neigh", "flush", "to", pod_ip, "dev", BRIDGE, check=False)
    _ip("netns", "add", ns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", veth, "master", BRIDGE, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "addr", "add", f"{pod_ip}/{POD_PREFIX}", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "route", "add", HOST_ADDR, "dev", "eth0")
    _ip("-n", ns, "route", "add", SERVICE_RANGE, "via", SERVICE_ADDR, "dev", "eth0")
    return ns


def service_ns_up() -> None:
    """(Re)make SERVICE_NS: on the bridge at SERVICE_ADDR, every address of the service range
    local, a route back to the host, no default route."""
    service_ns_down()
    _ip("netns", "add", SERVICE_NS)
    _ip("link", "add", SERVICE_VETH, "type", "veth", "peer", "name", "eth0", "netns", SERVICE_NS)
    _ip("link", "set", SERVICE_VETH, "master", BRIDGE, "up")
    _ip("-n", SERVICE_NS, "link", "set", "lo", "up")
    _ip("-n", SERVICE_NS, "route", "add", "local", SERVICE_RANGE, "dev", "lo")
    _ip("-n", SERVICE_NS, "addr", "add", f"{SERVICE_ADDR}/{POD_PREFIX}", "dev", "eth0")
    _ip("-n", SERVICE_NS, "link", "set", "eth0", "up")
    _ip("-n", SERVICE_NS, "route", "add", HOST_ADDR, "dev", "eth0")


def service_ns_down() -> None:
    _ip("link", "del", SERVICE_VETH, check=False)
    _ip("netns", "del", SERVICE_NS, check=False)


def write_hosts(ns: str, text: str) -> None:
    """The /etc/hosts that processes started with `ip netns exec ns` see."""
    (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
    (NETNS_ETC / ns / "hosts").write_text(text)


def pod_netns_down(ns: str, veth: str, registry: Path | None) -> None:
    _ip("link", "del", veth, check=False)  # deleting one end removes the pair at once
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    if registry is not None:
        (registry / ns).unlink(missing_ok=True)


def cleanup_all(registry: Path) -> None:
    """Remove every namespace recorded under `registry` (used by `down`)."""
    if registry.is_dir():
        for f in registry.iterdir():
            pod_netns_down(f.name, f.read_text().strip(), registry)
    with contextlib.suppress(OSError):  # only when empty: it may hold others' namespaces' files
        NETNS_ETC.rmdir()
