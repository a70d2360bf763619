"""The fault run of bench/operator_scale.py (`--faults`): see that file's docstring.

One InferenceService (mode metrics, 1 to 2 replicas, a model that takes 100 ms per row) under a
closed-loop load of CLIENTS clients that is about twice what one replica answers, so the
autoscaler holds 2 for as long as the load runs. Then, one after another, each followed by a
drift (its Service deleted) whose repair is timed:

1. the API server restarted (SIGTERM, started again with the same arguments);
2. etcd restarted;
3. Prometheus stopped for --outage seconds (default 120), then started;
4. a good canary (steps [50, 100], stepSeconds 60) added, and the operator replica holding the Lease
   killed with SIGKILL 20 s into the step; the standby must take over, finish the step on the
   same clock and promote.

Counted: requests sent and those not answered 200 (per phase), scale-downs while the load held,
other wrong decisions (kinfer_dev.faults.Audit), and seconds from each fault's end to the drift
repaired. Everything runs on loopback and the test bed's pod addresses; each wait is bounded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kinfer.api import v1alpha1 as api
from kinfer_dev import local
from kinfer_dev.faults import Audit
from kinfer_dev.testbed import bed
from kinfer_dev.testbed.kube import Kube, KubeError

NAMESPACE = "bench-faults"
NAME = "steady"
MIN, MAX = 1, 2
CLIENTS = 8  # each waits for its answer: ~4 per replica at 2 replicas, 100 ms each
STEP_SECONDS = 60
KILL_INTO_STEP = 20  # seconds into the canary step the leader is killed
MODELS = Path("/tmp/kinfer-bench-models")
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{local.OPERATOR_NAMESPACE}/leases/kinfer"
ISVC = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NAMESPACE}/{api.PLURAL}/{NAME}"


def service(stable: Path, canary: Path | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": f"file://{stable}"},
        # One row per forward: the queue grows with concurrent clients.
        "runtime": {"batching": {"maxBatchSize": 1, "maxDelayMs": 0, "maxQueue": 64}},
        "resources": {"cpu": "100m", "memory": "512Mi"},
        "scaling": {
            "minReplicas": MIN,
            "maxReplicas": MAX,
            "targets": {"queueDepthPerReplica": 1, "p95LatencyMs": 60000},
            "scaleDownStabilizationSeconds": 30,
        },
    }
    if canary is not None:
        spec["rollout"] = {
            "canary": {
                "model": {"uri": f"file://{canary}"},
                "steps": [50, 100],
                "stepSeconds": STEP_SECONDS,
                "analysis": {"minRequests": 5, "maxErrorRate": 0.05, "maxP95LatencyMs": 5000},
            }
        }
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": NAME}, "spec": spec}


def _until(check: Callable[[], Any], timeout: float, interval: float = 0.5) -> float | None:
    """Seconds until `check()` was true (errors count as false), None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (KubeError, OSError, ValueError):
            pass
        time.sleep(interval)
    return None


class Load:
    """CLIENTS closed-loop clients over the service's ready pods (refreshed every second; the
    last list is kept while the API server does not answer), counting answers per phase."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.pods: list[str] = []
        self.phase = "warm-up"
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _refresh(self) -> None:
        while not self.stop.is_set():
            try:
                pods = self.kube.get(
                    f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"kinfer.dev/isvc={NAME}"
                )
                self.pods = sorted(
                    p["status"]["podIP"]
                    for p in pods["items"]
                    if p.get("status", {}).get("podIP")
                    and local.condition(p, "Ready").get("status") == "True"
                    and not p["metadata"].get("deletionTimestamp")
                )
            except (KubeError, OSError, ValueError):
                pass  # the API server is down: the pods still run, keep sending to them
            self.stop.wait(1)

    def _client(self, index: int) -> None:
        while not self.stop.is_set():
            pods = self.pods
            if not pods:
                self.stop.wait(0.2)
                continue
            ip = pods[index % len(pods)]
            index += 1
            code, _ = local.infer(ip, NAME, timeout=10)
            with self.lock:
                self.sent[self.phase] += 1
                self.codes[code] += 1
                if code != 200:
                    self.failed[self.phase] += 1

    def start(self) -> None:
        threading.Thread(target=self._refresh, daemon=True).start()
        for i in range(CLIENTS):
            threading.Thread(target=self._client, args=(i,), daemon=True).start()


class Watcher:
    """Polls the InferenceService's status every second into the Audit."""

    def __init__(self, kube: Kube, audit: Audit) -> None:
        self.kube, self.audit = kube, audit
        self.status: dict[str, Any] = {}
        self.stop = threading.Event()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.status = self.kube.get(ISVC).get("status") or {}
                self.audit.observe(self.status, datetime.now(UTC).strftime("%H:%M:%S"))
            except (KubeError, OSError, ValueError):
                pass
            self.stop.wait(1)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status.get("conditions") or [] if c.get("type") == kind), {})


def _holder(kube: Kube) -> str:
    return str((kube.get(LEASE).get("spec") or {}).get("holderIdentity") or "")


def _service_back(kube: Kube) -> Callable[[], bool]:
    return lambda: bool(kube.get(f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}"))


def _delete_service(kube: Kube) -> bool:
    """Delete the service's Service (a drift), retried until the API server takes it."""
    path = f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}"

    def delete() -> bool:
        try:
            kube.delete(path)
        except KubeError as exc:
            if exc.status != 404:
                raise
        return True

    return _until(delete, 60) is not None


def _drift_repair(kube: Kube, timeout: float = 120) -> float | None:
    """Seconds from a deleted Service until the operator put it back."""
    if not _delete_service(kube):
        return None
    return _until(_service_back(kube), timeout, interval=0.2)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_faults(outage: float) -> None:
    print(f"start {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_uptime()}", flush=True)
    state = bed.default_state_dir()
    if not bed.Bed(state).running():
        bed.up(state, echo=lambda _: None)
    testbed = bed.Bed(state)
    kubeconfig = testbed.kubeconfig
    local.install(kubeconfig)
    kube = Kube(kubeconfig)
    local.kubectl(
        kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=300
    )
    local.kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    stable = local.make_slow_model(MODELS / "stable", delay_s=0.1)
    canary = local.make_slow_model(MODELS / "canary", delay_s=0.1)
    work = Path(tempfile.mkdtemp(prefix="kinfer-faults-"))
    token = local.operator_kubeconfig(kubeconfig, work / "operator.kubeconfig")
    env = {"KINFER_PROMETHEUS_URL": testbed.prometheus_url(), "KINFER_AUTOSCALE_INTERVAL_SECONDS": "5"}

    def operator(identity: str) -> local.OperatorProcess:
        log = work / f"operator-{identity}-{int(time.time())}.log"
        return local.OperatorProcess(token, log, ["--identity", identity], env=env).start()

    operators = {"faults-a": operator("faults-a")}
    if _until(lambda: _holder(kube) == "faults-a", 60) is None:
        raise SystemExit(f"faults-a never held the Lease; log {operators['faults-a'].log}")
    operators["faults-b"] = operator("faults-b")

    audit = Audit(MIN, MAX, STEP_SECONDS)
    watcher = Watcher(kube, audit)
    watcher.start()
    load = Load(kube)
    local.kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", "-", input=_json(service(stable)))
    load.start()
    warm = _until(lambda: watcher.status.get("readyReplicas") == MAX and audit.desired == MAX, 300)
    if warm is None:
        raise SystemExit(f"not at {MAX} ready replicas under load after 300 s: {watcher.status}")
    audit.demand = True
    print(f"under load at {MAX} replicas after {warm:.0f} s", flush=True)
    repairs: dict[str, float | None] = {}
    notes: list[str] = []

    def phase(name: str) -> None:
        load.phase = name
        print(f"{datetime.now(UTC):%H:%M:%S} {name}", flush=True)

    try:
        phase("steady")
        time.sleep(20)

        for component in ("kube-apiserver", "etcd"):
            phase(f"{component} restart")
            took = bed.restart_component(state, component)
            if component == "etcd":  # the API server answers again once it sees etcd
                _until(lambda: bool(kube.get("/api/v1/namespaces/default")), 90)
            repairs[component] = _drift_repair(kube)
            notes.append(f"{component} back in {took:.0f} s, drift repaired in {_s(repairs[component])}")
            phase(f"after {component}")
            time.sleep(20)

        phase("prometheus stopped")
        bed.stop_component(state, "prometheus")
        stopped = time.monotonic()
        time.sleep(outage)
        bed.start_component(state, "prometheus")
        print(f"prometheus stopped for {time.monotonic() - stopped:.0f} s", flush=True)
        repairs["prometheus"] = _drift_repair(kube)
        metrics = _until(lambda: watcher.condition("MetricsAvailable").get("status") == "True", 120)
        notes.append(
            f"prometheus: drift repaired in {_s(repairs['prometheus'])}, MetricsAvailable in {_s(metrics)}"
        )
        phase("after prometheus")
        time.sleep(20)

        phase("canary")
        local.kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", "-", input=_json(service(stable, canary)))
        stepping = _until(lambda: (watcher.status.get("canary") or {}).get("phase") == "Progressing", 300)
        if stepping is None:
            notes.append(f"canary never Progressing: {watcher.status.get('canary')}")
        else:
            time.sleep(KILL_INTO_STEP)
            leader = _holder(kube)
            phase(f"leader {leader} killed")
            operators[leader].stop(signal.SIGKILL)
            killed = time.monotonic()
            _delete_service(kube)  # at once: the drift waits for the new leader
            other = next(i for i in operators if i != leader)
            took_lease = _until(lambda: _holder(kube) == other, 60, interval=0.2)
            back = _until(_service_back(kube), 120, interval=0.2)
            repairs["leader"] = None if back is None else time.monotonic() - killed
            notes.append(
                f"leader killed {KILL_INTO_STEP} s into the step: {other} held the Lease after "
                f"{_s(took_lease)}, drift repaired {_s(repairs['leader'])} after the kill"
            )
            operators[leader] = operator(leader)  # its Deployment would start it again: a standby
            _until(lambda: (watcher.status.get("canary") or {}).get("handedOver") is True, 420)
            canary_state = watcher.status.get("canary") or {}
            notes.append(
                f"canary {canary_state.get('phase')}, handedOver={canary_state.get('handedOver')}, "
                f"{time.monotonic() - killed:.0f} s after the kill"
            )
    except Exception as exc:  # the figures so far are still worth printing
        notes.append(f"run stopped in phase {load.phase!r}: {exc!r}")
    phase("after canary")
    time.sleep(20)
    load.stop.set()
    watcher.stop.set()
    time.sleep(2)

    for line in notes:
        print(line)
    for name in load.sent:
        print(f"requests {name}: {load.sent[name]} sent, {load.failed[name]} not answered 200")
    print(f"answers by status: {dict(load.codes)}")
    for line in audit.scale_downs + audit.wrong:
        print(f"wrong: {line}")
    for identity, proc in operators.items():
        print(f"operator {identity} log: {proc.log}")
    measured = [r for r in repairs.values() if r is not None]
    unrepaired = [k for k, r in repairs.items() if r is None]
    repair_max = f"{max(measured):.1f}" if measured else "none"
    print(f"end {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_uptime()}")
    print(
        f"FAULTS: requests={sum(load.sent.values())} failed={sum(load.failed.values())} "
        f"premature_scale_downs={len(audit.scale_downs)} wrong_decisions={len(audit.wrong)} "
        f"repair_s_max={repair_max}" + (f" unrepaired={','.join(unrepaired)}" if unrepaired else ""),
        flush=True,
    )
    local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--wait=true", timeout=300, check=False)
    for proc in operators.values():
        proc.stop()


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc)


if __name__ == "__main__":
    raise SystemExit("run it as: bench/operator_scale.py --faults")
