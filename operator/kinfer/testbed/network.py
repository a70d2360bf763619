"""Pod networking: one network namespace per pod, joined by veth to a bridge on the host.

No address of the pod range is ever local on the host. The bridge holds only a link-local
address (HOST_ADDR); the host reaches pod IPs through a plain route over the bridge, and each
pod has a host route back to HOST_ADDR and no default route, so nothing a pod sends can leave
this machine. Names of what was created are recorded under the state dir so `down` removes
exactly those.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from kinfer.testbed.nodes import POD_RANGE

BRIDGE = "kinfer0"
HOST_ADDR = "169.254.88.1"  # the host's side of the bridge; link-local, never routed
POD_PREFIX = POD_RANGE.split("/")[1]  # pods see the whole range as one L2 segment
SERVICE_RANGE = "10.96.0.0/16"  # the API server's --service-cluster-ip-range


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
    # There is no kube-proxy: a ClusterIP leads nowhere. Fail such connections on the spot
    # rather than let them follow the default route off the machine.
    _ip("route", "replace", "unreachable", SERVICE_RANGE)


def bridge_down() -> None:
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
    _ip("netns", "add", ns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", veth, "master", BRIDGE, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "addr", "add", f"{pod_ip}/{POD_PREFIX}", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "route", "add", HOST_ADDR, "dev", "eth0")
    return ns


def pod_netns_down(ns: str, veth: str, registry: Path | None) -> None:
    _ip("link", "del", veth, check=False)  # deleting one end removes the pair at once
    _ip("netns", "del", ns, check=False)
    if registry is not None:
        (registry / ns).unlink(missing_ok=True)


def cleanup_all(registry: Path) -> None:
    """Remove every namespace recorded under `registry` (used by `down`)."""
    if not registry.is_dir():
        return
    for f in registry.iterdir():
        pod_netns_down(f.name, f.read_text().strip(), registry)
