"""How the operator copes with many InferenceServices, on the real test bed.

First --unrelated pods (default 5,000) in other namespaces, bound to kwok nodes of their own
that the launcher leaves alone (kwok marks them Running; no process runs): a cluster's other
workloads, which the operator must not pay for. Then --count InferenceServices at --rate per
second in one namespace; measured from the client side: how long each took from its create
request to the first status the operator wrote (a Progressing condition), how long until every
one was observed, the operator process's RSS, and its CPU seconds in an idle minute after (no
change anywhere: the cost of watching 1,000 idle services). Model-server pods are pinned to a
node label no node has, so they stay Pending: the operator does all its work (render, apply,
status from pods) while no model server runs.

    .venv/bin/python bench/operator_scale.py --count 200 --unrelated 0
    .venv/bin/python bench/operator_scale.py --count 1000

`--faults` is the fault run instead: two operator replicas with the Lease, steady load on one
InferenceService (clients on loopback send to its ready pods' addresses), and one after another
the API server restarted, etcd restarted, Prometheus stopped for two minutes, and the leading
operator killed (SIGKILL) during a canary step. It counts failed requests and wrong decisions
(kinfer_dev.faults.Audit) and ends with one line, `FAULTS: requests=… failed=…`.

    .venv/bin/python bench/operator_scale.py --faults

Prints figures, not a pass/fail: see bench/README.md for recorded runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

from kinfer.api import v1alpha1 as api
from kinfer_dev import local
from kinfer_dev.testbed import bed, nodes
from kinfer_dev.testbed.kube import Kube, KubeError

NAMESPACE = "bench-scale"
OTHER = "bench-other"  # namespaces bench-other-0 … of the unrelated pods
PODS_PER_NODE = 200  # a /24 podCIDR per node
PODS_PER_NAMESPACE = 500


def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process from /proc."""
    rss_kib = next(
        int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )  # fmt: skip
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return rss_kib / 1024, cpu


def _isvc(i: int, model: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": f"bench-{i:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": model},
            "scaling": {"mode": "fixed", "minReplicas": 1, "maxReplicas": 1},
            "scheduling": {"nodeSelector": {"kinfer.dev/bench": "no-such-node"}},
        },
    }


def _create(kube: Kube, path: str, body: dict[str, Any]) -> None:
    """Create, or keep what an earlier run left (the unrelated pods are reused)."""
    try:
        kube.create(path, body)
    except KubeError as exc:
        if exc.status != 409:
            raise


def _unrelated(kube: Kube, count: int) -> float:
    """`count` Running pods on kwok nodes of their own, in namespaces of their own. Seconds taken."""
    started = time.monotonic()
    node_count = -(-count // PODS_PER_NODE)
    for n in range(node_count):
        node = nodes._node(f"bench-kwok-{n}", f"10.90.{n}.0/24", {"kinfer.dev/bench": "unrelated"}, gpus=0)
        node["status"]["capacity"]["pods"] = node["status"]["allocatable"]["pods"] = str(PODS_PER_NODE + 10)
        _create(kube, "/api/v1/nodes", node)
    for ns in range(-(-count // PODS_PER_NAMESPACE)):
        _create(kube, "/api/v1/namespaces", {"metadata": {"name": f"{OTHER}-{ns}"}})

    def create(i: int) -> None:
        pod = {
            "metadata": {
                "name": f"app-{i:05d}",
                "labels": {"app": "unrelated", "app.kubernetes.io/name": "x"},
            },
            "spec": {
                "nodeName": f"bench-kwok-{i % node_count}",
                "containers": [{"name": "app", "image": "registry.invalid/unrelated:1"}],
            },
        }
        _create(kube, f"/api/v1/namespaces/{OTHER}-{i // PODS_PER_NAMESPACE}/pods", pod)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return time.monotonic() - started


def _remove_unrelated(kube: Kube) -> None:
    """Force-delete the pods (no kubelet finishes them), then their namespaces and nodes."""
    for ns in kube.get("/api/v1/namespaces")["items"]:
        name = ns["metadata"]["name"]
        if name.startswith(OTHER + "-"):
            kube.delete(f"/api/v1/namespaces/{name}/pods", {"gracePeriodSeconds": 0})
            kube.delete(f"/api/v1/namespaces/{name}")
    for node in kube.get("/api/v1/nodes", labelSelector="kinfer.dev/bench=unrelated")["items"]:
        kube.delete(f"/api/v1/nodes/{node['metadata']['name']}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(count: int, rate: float, timeout: float, unrelated: int, idle: float) -> None:
    state = bed.default_state_dir()
    if not bed.Bed(state).running():
        bed.up(state, echo=lambda _: None)
    kubeconfig = bed.Bed(state).kubeconfig
    local.install(kubeconfig)
    kubernetes.config.load_kube_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    kube = Kube(kubeconfig)
    local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                  timeout=600)  # fmt: skip
    local.kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    took = _unrelated(kube, unrelated) if unrelated else 0.0
    if unrelated:

        def running() -> int:
            pods = kube.get(
                "/api/v1/pods", labelSelector="app=unrelated", fieldSelector="status.phase=Running"
            )
            return len(pods["items"])

        deadline = time.monotonic() + 600
        while running() < unrelated and time.monotonic() < deadline:
            time.sleep(5)
        print(
            f"unrelated pods:            {running()}/{unrelated} Running on kwok nodes "
            f"(created in {took:.0f} s)"
        )
    work = Path(tempfile.mkdtemp(prefix="kinfer-bench-"))
    operator = local.OperatorProcess(
        local.operator_kubeconfig(kubeconfig, work / "operator.kubeconfig"), work / "operator.log",
        ["--standalone"], env={"KINFER_PROMETHEUS_URL": bed.Bed(state).prometheus_url()},
    ).start()  # fmt: skip
    assert operator.proc is not None
    time.sleep(3)
    rss0, cpu0 = _proc_stats(operator.proc.pid)

    objects = kubernetes.client.CustomObjectsApi()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch_status() -> None:
        while not done.is_set():
            listed = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL)
            now = time.monotonic()
            for item in listed["items"]:
                name = item["metadata"]["name"]
                conds = (item.get("status") or {}).get("conditions") or []
                if name not in seen and any(c["type"] == "Progressing" for c in conds):
                    seen[name] = now
            done.wait(0.25)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    started = time.monotonic()
    for i in range(count):
        body = _isvc(i, "file:///models/bench")
        sent[body["metadata"]["name"]] = time.monotonic()
        objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, body)
        delay = started + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    created = time.monotonic()
    deadline = created + timeout
    peak_rss = rss0
    while len(seen) < count and time.monotonic() < deadline:
        peak_rss = max(peak_rss, _proc_stats(operator.proc.pid)[0])
        time.sleep(0.5)
    all_seen = time.monotonic()
    done.set()
    watcher.join(5)
    _, cpu1 = _proc_stats(operator.proc.pid)
    # Let the last passes (status of freshly Pending pods) finish, then a quiet period: nothing
    # changes anywhere. CPU here is the idle cost of `count` services among `unrelated` pods.
    time.sleep(30)
    _, cpu_settled = _proc_stats(operator.proc.pid)
    time.sleep(idle)
    rss2, cpu2 = _proc_stats(operator.proc.pid)
    latencies = [seen[n] - sent[n] for n in seen]
    print(f"InferenceServices created: {count} at {rate:g}/s (took {created - started:.1f} s)")
    print(f"observed by the operator:  {len(seen)}/{count}")
    if latencies:
        print(f"time to all observed:      {all_seen - started:.1f} s after the first create")
        print(
            "create -> Progressing:     "
            f"p50 {statistics.median(latencies):.2f} s, p99 {_pct(latencies, 0.99):.2f} s, "
            f"max {max(latencies):.2f} s (status polled every 0.25 s)"
        )
    print(f"operator RSS:              {rss0:.0f} MiB before, {peak_rss:.0f} MiB peak, {rss2:.0f} MiB after")
    print(
        f"operator CPU:              {cpu1 - cpu0:.1f} s creating, "
        f"{cpu_settled - cpu1:.1f} s in the 30 s after"
    )
    per_minute = (cpu2 - cpu_settled) * 60 / idle
    print(
        f"operator CPU idle:         {per_minute:.2f} CPU-s per idle minute "
        f"({per_minute / 60 * 100:.2f} % of a core; measured over {idle:.0f} s)"
    )
    print(f"operator log:              {operator.log}")
    # Delete while the operator runs: it removes its finalizer from each InferenceService.
    local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--wait=true", timeout=900)
    operator.stop()
    _remove_unrelated(kube)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="InferenceServices to create (default 200)")
    parser.add_argument("--rate", type=float, default=20, help="creates per second (default 20)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all (default 600)")
    parser.add_argument("--unrelated", type=int, default=5000, help="unrelated pods first (default 5000)")
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle measurement (default 60)")
    parser.add_argument("--faults", action="store_true", help="the fault run instead (see above)")
    parser.add_argument("--outage", type=float, default=120, help="--faults: seconds Prometheus is stopped")
    args = parser.parse_args()
    if args.faults:
        from operator_faults import run_faults

        run_faults(args.outage)
    else:
        run(args.count, args.rate, args.timeout, args.unrelated, args.idle)


if __name__ == "__main__":
    main()
