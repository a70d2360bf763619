"""The pod launcher: the test bed's stand-in for a kubelet's container runtime.

kwok schedules nothing and runs nothing; it marks a scheduled pod Running (not Ready) with an
IP from its node's podCIDR. For each such pod on a test bed node the launcher:
- makes a network namespace holding the pod IP (network.py) and starts every container's
  command + args there as a local process with the pod's env (`ip netns exec`);
- runs the readiness probe for real against the process and patches the pod's Ready and
  ContainersReady conditions and containerStatuses, so EndpointSlices follow real readiness;
- on deletion runs the preStop hook, sends SIGTERM, waits the grace period, sends SIGKILL,
  removes the namespace and then deletes the pod object (as a kubelet does).

Restart policy (kubelet-like, shorter delays for tests): a container that exits is restarted
when restartPolicy is Always, or OnFailure and it failed; restartCount grows and the restart
waits a back-off of 1 s, doubling per crash up to 30 s (reset after 60 s of running); meanwhile
the container shows `waiting: CrashLoopBackOff`. A failing liveness probe kills the container
(same back-off); a startup probe holds readiness and liveness until it passes, and restarts the
container when it fails. With Never (or OnFailure and exit 0) it stays terminated; once all containers
are, the pod phase becomes Succeeded (all exit 0) or Failed.

Only allow-listed commands run: python (run with the launcher's own interpreter, so the
project's virtualenv), kinfer, kinfer-runtime, sleep, tritonserver (the nvidia-pytriton wheel's
binary with its Python backend, installed by scripts/bootstrap: triton.py), plus names in
$KINFER_LAUNCHER_ALLOW. A
container without a command runs its image's base name when that is allowed (image
`…/kinfer-runtime:tag` runs `kinfer-runtime`).

Pods that mount a ServiceAccount token act on the cluster (the operator installed by the Helm
chart) and run as a kubelet would run them: their volumes are made (volumes.py: the token comes
from a TokenRequest bound to the pod) and bind-mounted into a mount namespace of the container's
own (sandbox.py), a read-only root filesystem is honoured, HOME is /, and the API server
(KUBERNETES_SERVICE_HOST/PORT) and Prometheus are reachable on 127.0.0.1 inside the pod through
relays (relay.py). No kubeconfig reaches them: the token is all they have. Other pods (the model
servers) see the host's filesystem, so `file://` models under /tmp work.

Every pod in a network namespace reaches the Services of its own namespace (listed when it
starts and every 3 s after, as cluster DNS would see a new one), by name and ClusterIP
(services.py): the names are in its /etc/hosts, and the service range is routed to the test
bed's service namespace (network.py), where a relay per Service port sends each connection to a
ready endpoint read from the EndpointSlices (at most once a second per Service).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from kinfer_dev.testbed import network, nodes
from kinfer_dev.testbed.kube import Kube, KubeError, Obj
from kinfer_dev.testbed.pods import PodRunner, delete_now
from kinfer_dev.testbed.procs import log
from kinfer_dev.testbed.service_proxy import ServiceProxy


class Launcher:
    def __init__(self, kube: Kube, state: Path, relay_ports: list[int] | None = None) -> None:
        self.kube, self.state = kube, state
        api_port = int(kube.server.rsplit(":", 1)[1])
        self.host_ports = [api_port, *(relay_ports or [])]
        self.proxy = ServiceProxy(kube)
        self.runners: dict[str, PodRunner] = {}
        self.node_names = {n["metadata"]["name"] for n in nodes.fake_nodes()}
        self.stopping = threading.Event()
        self.launched: set[str] = set()

    def handle(self, kind: str, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
        if spec.get("nodeName") not in self.node_names:
            return
        uid = meta["uid"]
        runner = self.runners.get(uid)
        if runner is not None and runner.thread is not None and not runner.thread.is_alive():
            del self.runners[uid]
            runner = None
        if kind == "DELETED":
            if runner is not None:
                runner.stop(float(meta.get("deletionGracePeriodSeconds") or 0), finalize=False)
            return
        if meta.get("deletionTimestamp"):
            if runner is not None:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                runner.stop(grace, finalize=True)
            else:  # never ran (or ran and finished): nothing to stop
                threading.Thread(target=delete_now, args=(self.kube, pod), daemon=True).start()
            return
        if runner is None and uid not in self.launched:
            if status.get("phase") == "Running" and status.get("podIP"):
                runner = PodRunner(self.kube, pod, self.state, self.host_ports, self.proxy)
                self.runners[uid] = runner
                self.launched.add(uid)  # a pod is launched once, like a kubelet's pod worker
                runner.start()
        elif runner is not None:
            runner.pod["metadata"] = meta  # labels/annotations may change; spec may not

    def sync(self) -> str:
        """List pods, drop runners of pods that are gone, return the resourceVersion."""
        listing = self.kube.get("/api/v1/pods")
        present = set()
        for pod in listing["items"]:
            present.add(pod["metadata"]["uid"])
            self.handle("ADDED", pod)
        for uid, runner in list(self.runners.items()):
            if uid not in present:
                runner.stop(0, finalize=False)
        return str(listing["metadata"]["resourceVersion"])

    def run(self) -> None:
        network.bridge_up()
        network.service_ns_up()
        rv = self.sync()
        (self.state / "launcher.ready").write_text(str(os.getpid()))
        log(f"launcher ready, managing nodes {sorted(self.node_names)}")
        while not self.stopping.is_set():
            try:
                for ev in self.kube.watch("/api/v1/pods", rv, timeout_s=30):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        raise KubeError(int(obj.get("code", 500)), str(obj.get("message")))
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self.handle(ev["type"], obj)
                    if self.stopping.is_set():
                        break
            except (KubeError, OSError, ValueError) as e:
                log(f"watch ended ({e!r}); relisting")
                if self.stopping.wait(1):
                    break
                try:
                    rv = self.sync()
                except (KubeError, OSError) as e2:
                    log(f"relist failed: {e2!r}")

    def shutdown(self, grace_s: float) -> None:
        for r in list(self.runners.values()):
            r.stop(min(grace_s, r._grace()), finalize=False)
        for r in list(self.runners.values()):
            if r.thread is not None:
                r.thread.join(timeout=grace_s + 10)


def main() -> None:
    ap = argparse.ArgumentParser(description="Run real processes for the test bed's pods.")
    ap.add_argument("--kubeconfig", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument(
        "--shutdown-grace",
        type=float,
        default=3.0,
        help="seconds each pod gets to stop when the launcher stops",
    )
    ap.add_argument(
        "--relay-port",
        type=int,
        action="append",
        default=[],
        help="a host loopback port (besides the API server's) that pods holding a token reach",
    )
    args = ap.parse_args()
    launcher = Launcher(Kube(args.kubeconfig), args.state, args.relay_port)
    watcher = threading.Thread(target=launcher.run, name="watch", daemon=True)

    def on_term(signum: int, _frame: object) -> None:
        launcher.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    watcher.start()
    while not launcher.stopping.wait(0.5):
        if not watcher.is_alive():
            log("watch thread died")
            launcher.stopping.set()
    launcher.shutdown(args.shutdown_grace)
    log("launcher stopped")


if __name__ == "__main__":
    main()
