"""How the operator copes with many InferenceServices, on the real test bed.

Creates --count InferenceServices at --rate per second in one namespace, then measures, from the
client side, how long each took from its create request to the first status the operator wrote
(a Progressing condition), how long until every one was observed, and the operator process's RSS
and CPU seconds. Pods are pinned to a node label no node has, so they stay Pending: the operator
does all its work (render, apply, status from pods) while no model server runs, which keeps the
machine free for the operator being measured.

    .venv/bin/python bench/operator_scale.py --count 200
    .venv/bin/python bench/operator_scale.py --count 1000 --rate 50

Prints figures, not a pass/fail: see bench/README.md for recorded runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes

from kinfer.api import v1alpha1 as api
from kinfer_dev import local
from kinfer_dev.testbed import bed

NAMESPACE = "bench-scale"


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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(count: int, rate: float, timeout: float) -> None:
    state = bed.default_state_dir()
    if not bed.Bed(state).running():
        bed.up(state, echo=lambda _: None)
    kubeconfig = bed.Bed(state).kubeconfig
    local.install(kubeconfig)
    local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                  timeout=600)  # fmt: skip
    local.kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    work = Path(tempfile.mkdtemp(prefix="kinfer-bench-"))
    operator = local.OperatorProcess(
        local.operator_kubeconfig(kubeconfig, work / "operator.kubeconfig"), work / "operator.log",
        ["--standalone"], env={"KINFER_PROMETHEUS_URL": bed.Bed(state).prometheus_url()},
    ).start()  # fmt: skip
    assert operator.proc is not None
    time.sleep(3)
    rss0, cpu0 = _proc_stats(operator.proc.pid)

    kubernetes.config.load_kube_config(str(kubeconfig))  # type: ignore[no-untyped-call]
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
    # A quiet period: resync timers only, no changes. CPU here is the idle cost of `count` services.
    time.sleep(30)
    rss2, cpu2 = _proc_stats(operator.proc.pid)
    # Delete while the operator runs: it removes its finalizer from each InferenceService.
    local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--wait=true", timeout=900)
    operator.stop()

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
    print(
        f"operator RSS:              {rss0:.0f} MiB before, {peak_rss:.0f} MiB peak, {rss2:.0f} MiB after"
    )
    print(
        f"operator CPU:              {cpu1 - cpu0:.1f} s creating, {cpu2 - cpu1:.1f} s in the 30 s after"
    )
    print(f"operator log:              {operator.log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="InferenceServices to create (default 200)")
    parser.add_argument("--rate", type=float, default=20, help="creates per second (default 20)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all (default 600)")
    args = parser.parse_args()
    run(args.count, args.rate, args.timeout)


if __name__ == "__main__":
    main()
