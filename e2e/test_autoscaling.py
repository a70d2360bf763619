"""The autoscaler end to end: real runtime pods, real Prometheus, a bounded load from loopback.

A load ramp takes an InferenceService from 1 to at least 3 replicas; when it stops, the count
comes back after the (shortened) scale-down window. Pausing Prometheus mid-test (SIGSTOP: it
still accepts connections but never answers, like a hung server) must hold the count and set
MetricsAvailable=False; resuming it recovers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kinfer_dev.local import infer, make_slow_model
from kinfer_dev.testbed import bed
from operator_bed import MODELS, Setup

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 120  # upper bound of the ramp; it stops as soon as the scale-up is seen
CLIENTS = 12


def _service(model: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "scaler"},
        "spec": {
            "model": {"uri": f"file://{model}"},
            # One row per forward: the queue grows with concurrent clients.
            "runtime": {"batching": {"maxBatchSize": 1, "maxDelayMs": 0, "maxQueue": 64}},
            "resources": {"cpu": "100m", "memory": "512Mi"},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targets": {"queueDepthPerReplica": 1, "p95LatencyMs": 60000},
                "scaleDownStabilizationSeconds": 20,
            },
        },
    }


def _endpoints(setup: Setup, namespace: str) -> list[str]:
    slices = setup.get(namespace, "endpointslices -l kubernetes.io/service-name=scaler")
    return [
        address
        for s in slices.get("items", [])
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
        for address in e["addresses"]
    ]


@contextmanager
def load(setup: Setup, namespace: str, seconds: float) -> Iterator[dict[str, int]]:
    """CLIENTS threads posting infer requests round-robin over ready endpoints, bounded in time."""
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0}
    targets: list[str] = []

    def refresh() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            found = _endpoints(setup, namespace)
            if found:
                targets[:] = found
            stop.wait(2)

    def client(index: int) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            if not targets:
                time.sleep(0.2)
                continue
            ip = targets[index % len(targets)]
            index += 1
            code, _ = infer(ip, "scaler")
            if code == 200:
                counts["ok"] += 1
            else:
                counts["failed"] += 1
                time.sleep(0.1)

    threads = [threading.Thread(target=refresh, daemon=True)]
    threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        yield counts
    finally:
        stop.set()
        for t in threads:
            t.join(15)


def _prometheus_pid(setup: Setup) -> int:
    state = Path(os.environ.get("KINFER_TESTBED_STATE", bed.default_state_dir()))
    (proc,) = [p for p in bed.Bed(state).procs() if p.name == "prometheus"]
    return proc.pid


def _replicas(setup: Setup, namespace: str) -> int:
    return int(setup.get(namespace, "deployment/scaler")["spec"]["replicas"])


def test_load_scales_up_then_down_and_prometheus_outage_holds(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    model = make_slow_model(MODELS / "slow")
    setup.apply(namespace, _service(model))
    setup.wait_ready(wait_for, namespace, "scaler", timeout=90)

    with load(setup, namespace, LOAD_SECONDS) as counts:
        wait_for(
            lambda: _replicas(setup, namespace) >= 3,
            LOAD_SECONDS,
            describe=lambda: f"scale-up to >= 3 under load ({counts})\n" + setup.why(namespace),
            interval=1,
        )
        # status.metrics shows what Prometheus reads (the request rate needs two scrapes).
        status = wait_for(
            lambda: (
                (st := setup.get(namespace, "kisvc/scaler")["status"])
                .get("metrics", {})
                .get("requestsPerSecond", 0)
                > 0
                and st
            ),
            30,
            describe=lambda: "status.metrics with a request rate\n" + setup.why(namespace),
            interval=1,
        )
        assert status["metrics"]["queueDepth"] >= 0 and "sampledAt" in status["metrics"], status
        # The reason names the load signal that drove the scale-up: the queue until the
        # per-replica throughput is learned, the arrival rate after.
        reason = status["lastScaleReason"]
        assert re.search(r"(queue depth|arrival rate) wants \d+", reason), status
        assert counts["ok"] > 0
        peak = _replicas(setup, namespace)

    # Load gone, Prometheus hung: the autoscaler must hold, not scale down on missing data.
    pid = _prometheus_pid(setup)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: setup.condition(namespace, "scaler", "MetricsAvailable").get("status") == "False",
            60,
            describe=lambda: "MetricsAvailable=False\n" + setup.why(namespace),
            interval=1,
        )
        held_since = time.monotonic()
        while time.monotonic() - held_since < 30:  # longer than the 20 s scale-down window
            assert _replicas(setup, namespace) >= min(peak, 3), "scaled down without metrics"
            time.sleep(1)
    finally:
        os.kill(pid, signal.SIGCONT)

    wait_for(
        lambda: setup.condition(namespace, "scaler", "MetricsAvailable").get("status") == "True",
        60,
        describe=lambda: "MetricsAvailable=True after Prometheus resumed\n" + setup.why(namespace),
        interval=1,
    )
    wait_for(
        lambda: _replicas(setup, namespace) == 1,
        120,
        describe=lambda: "scale-down to 1 after the window\n" + setup.why(namespace),
        interval=1,
    )
    events = json.loads(setup.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events}
    assert {"Scaled", "MetricsUnavailable", "MetricsAvailable"} <= reasons, reasons
