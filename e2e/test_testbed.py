"""The test bed itself: nodes, real scheduling, real processes, readiness, Prometheus, down."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kinfer_dev.testbed import bed, network
from kinfer_dev.testbed.kube import Kube, KubeError
from kinfer_dev.testbed.procs import Proc

pytestmark = pytest.mark.e2e

Obj = dict[str, Any]
GPU_NODES = {"gpu-l4-0", "gpu-a100-0"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# A test server: serves its working directory on :8080 once the gate file exists, writes
# "TERM" to its marker file on SIGTERM, then exits.
SERVER = """
import http.server, os, pathlib, signal, sys, time
gate, marker = pathlib.Path(os.environ["GATE"]), pathlib.Path(os.environ["MARKER"])
marker.write_text(f"pid {os.getpid()}\\n")
def term(*_):
    marker.write_text("TERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while not gate.exists():
    time.sleep(0.1)
http.server.ThreadingHTTPServer(("", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


# A client: GETs each URL in argv and prints its status and body; on the first failure prints
# how long it took and exits 1.
CLIENT = """
import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for url in sys.argv[1:]:
    t0 = time.monotonic()
    try:
        with opener.open(url, timeout=20) as r:
            print(url, r.status, r.read(200), flush=True)
    except OSError as e:
        print(f"{url} failed after {time.monotonic() - t0:.2f} s: {e!r}", flush=True)
        sys.exit(1)
"""


def pod_list(kube: Kube, ns: str, selector: str = "") -> list[Obj]:
    q = "?" + urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
    items: list[Obj] = kube.get(f"/api/v1/namespaces/{ns}/pods{q}")["items"]
    return items


def is_ready(pod: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def server_pod(name: str, tmp: Path, annotations: dict[str, str] | None = None) -> Obj:
    (tmp / "metrics").write_text("# TYPE e2e_up gauge\ne2e_up 1\n")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations or {}},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "server",
                    "image": "python:3.11",
                    "command": ["python", "-c", SERVER],
                    "workingDir": str(tmp),
                    "env": [
                        {"name": "GATE", "value": str(tmp / "gate")},
                        {"name": "MARKER", "value": str(tmp / "marker")},
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/metrics", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                }
            ],
        },
    }


def service(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": "http"}]},
    }


def client_pod(name: str, urls: list[str]) -> Obj:
    container = {"name": "c", "image": "python:3.11", "command": ["python", "-c", CLIENT, *urls]}
    spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [container]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def finished(kube: Kube, ns: str, name: str) -> Obj | None:
    pod: Obj = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


def pod_log(testbed: Any, ns: str, pod: str, container: str = "c") -> str:
    path = testbed.state / "pods" / f"{ns}_{pod}" / f"{container}.log"
    return str(path.read_text()) if path.exists() else f"(no log at {path})"


def endpoint_ips(kube: Kube, ns: str, svc: str, ready_only: bool = True) -> set[str]:
    q = urllib.parse.urlencode({"labelSelector": f"kubernetes.io/service-name={svc}"})
    slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?{q}")["items"]
    return {
        addr
        for s in slices
        for ep in s.get("endpoints") or []
        if not ready_only or ep.get("conditions", {}).get("ready")
        for addr in ep["addresses"]
    }


def describe(testbed: Any, namespace: str, *objects: str) -> Callable[[], str]:
    """Diagnostics for wait_for: events, `kubectl describe` of objects, the launcher's log."""
    return lambda: str(testbed.diagnostics(namespace, *objects))


def http_get(ip: str, path: str = "/metrics") -> str:
    with DIRECT.open(f"http://{ip}:8080{path}", timeout=2) as r:
        return str(r.read().decode())


def start_server(testbed: Any, kube: Kube, ns: str, tmp: Path, wait_for: Any, **kw: Any) -> Obj:
    """Create the server pod and wait until it runs with an IP (not yet Ready: gate closed)."""
    testbed.apply(server_pod("web", tmp, **kw), ns)

    def running() -> Obj | None:
        pod: Obj = kube.get(f"/api/v1/namespaces/{ns}/pods/web")
        started = (tmp / "marker").exists()
        return pod if pod["status"].get("podIP") and started else None

    pod: Obj = wait_for(running, 30, describe(testbed, ns, "pod/web"))
    return pod


def test_three_ready_nodes_with_gpus(testbed: Any) -> None:
    nodes = json.loads(testbed.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == GPU_NODES | {"cpu-0"}
    for name, node in by_name.items():
        assert is_ready(node), f"{name} not Ready"
    for name in GPU_NODES:
        assert by_name[name]["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        taints = by_name[name]["spec"]["taints"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints
    products = {by_name[n]["metadata"]["labels"]["nvidia.com/gpu.product"] for n in GPU_NODES}
    assert products == {"NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"}
    assert "nvidia.com/gpu" not in by_name["cpu-0"]["status"]["allocatable"]


def gpus_in_use(kube: Kube) -> int:
    total = 0
    for pod in kube.get("/api/v1/pods")["items"]:
        if pod["status"].get("phase") in ("Succeeded", "Failed") or not pod["spec"].get("nodeName"):
            continue
        for c in pod["spec"]["containers"]:
            total += int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    return total


def test_gpu_pods_land_on_gpu_nodes_and_the_ninth_stays_pending(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any
) -> None:
    # Other tests' GPU pods may still be terminating; give them a while, then count them.
    deadline = time.monotonic() + 30
    while gpus_in_use(kube) and time.monotonic() < deadline:
        time.sleep(0.5)
    others = gpus_in_use(kube)
    assert others <= 5, f"{others} of 8 GPUs held by other tests' pods"
    container = {
        "name": "main",
        "image": "busybox",
        "command": ["sleep", "3600"],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "gpu"}},
            "template": {
                "metadata": {"labels": {"app": "gpu"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [GPU_TOLERATION],
                    "containers": [container],
                },
            },
        },
    }
    testbed.apply(deploy, namespace)

    def placed(n: int) -> list[str] | None:
        names = [p["spec"].get("nodeName") for p in pod_list(kube, namespace, "app=gpu")]
        return names if len(names) == n and all(names) else None

    diag = describe(testbed, namespace, "deployment/gpu")
    assert set(wait_for(lambda: placed(3), 30, diag)) <= GPU_NODES

    # Fill all 8 GPUs (the 8th pod, when no other test holds one), then one more single-GPU pod
    # has nowhere to go.
    fill = 8 - others
    testbed.kubectl("scale", "-n", namespace, "deployment/gpu", f"--replicas={fill}")
    assert set(wait_for(lambda: placed(fill), 30, diag)) <= GPU_NODES
    ninth = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ninth"},
        "spec": {"tolerations": [GPU_TOLERATION], "containers": [container]},
    }
    testbed.apply(ninth, namespace)

    def failed_scheduling() -> str | None:
        q = urllib.parse.urlencode({"fieldSelector": "involvedObject.name=ninth"})
        for ev in kube.get(f"/api/v1/namespaces/{namespace}/events?{q}")["items"]:
            if ev["reason"] == "FailedScheduling" and "nvidia.com/gpu" in ev["message"]:
                return str(ev["message"])
        return None

    message = wait_for(failed_scheduling, 30, describe(testbed, namespace, "pod/ninth"))
    assert "Insufficient nvidia.com/gpu" in message
    pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/ninth")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_pod_ready_only_after_probe_answers_and_reachable_on_its_ip(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    testbed.apply(service("web"), namespace)
    pod = start_server(testbed, kube, namespace, tmp_path, wait_for)
    ip = pod["status"]["podIP"]
    diag = describe(testbed, namespace, "pod/web", "service/web")

    # The process runs but does not serve: the probe fails, so the pod stays unready.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not is_ready(kube.get(f"/api/v1/namespaces/{namespace}/pods/web")), diag()
        assert ip not in endpoint_ips(kube, namespace, "web")
        time.sleep(0.25)
    with pytest.raises(OSError):
        http_get(ip)

    (tmp_path / "gate").touch()
    wait_for(lambda: is_ready(kube.get(f"/api/v1/namespaces/{namespace}/pods/web")), 15, diag)
    wait_for(lambda: ip in endpoint_ips(kube, namespace, "web"), 15, diag)
    assert "e2e_up 1" in http_get(ip)  # from the host, into the pod's network namespace


def test_deleting_pod_sends_sigterm_and_removes_endpoint(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    testbed.apply(service("web"), namespace)
    pod = start_server(testbed, kube, namespace, tmp_path, wait_for)
    ip = pod["status"]["podIP"]
    pid = int((tmp_path / "marker").read_text().split()[1])
    (tmp_path / "gate").touch()
    diag = describe(testbed, namespace, "pod/web", "service/web")
    wait_for(lambda: ip in endpoint_ips(kube, namespace, "web"), 20, diag)
    netns = network.names(pod["metadata"]["uid"])[0]

    kube.delete(f"/api/v1/namespaces/{namespace}/pods/web")
    wait_for(lambda: (tmp_path / "marker").read_text() == "TERM\n", 15, diag)

    def pod_gone() -> bool:
        try:
            kube.get(f"/api/v1/namespaces/{namespace}/pods/web")
            return False
        except KubeError as e:
            return e.status == 404

    wait_for(pod_gone, 15, diag)
    wait_for(lambda: ip not in endpoint_ips(kube, namespace, "web", ready_only=False), 15, diag)
    assert not Path(f"/proc/{pid}").exists()
    ns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns not in ns_list


def test_pod_reaches_a_service_by_name_on_its_cluster_ip(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    testbed.apply(service("web"), namespace)  # port 80 → the pod's port "http" (8080)
    pod = start_server(testbed, kube, namespace, tmp_path, wait_for)
    (tmp_path / "gate").touch()
    diag = describe(testbed, namespace, "pod/web", "service/web")
    wait_for(lambda: pod["status"]["podIP"] in endpoint_ips(kube, namespace, "web"), 20, diag)

    # Created after the Service, so it sees it: by its full name and its short one.
    urls = [f"http://web.{namespace}.svc:80/metrics", "http://web:80/metrics"]
    testbed.apply(client_pod("client", urls), namespace)
    client_diag = describe(testbed, namespace, "pod/client", "service/web")

    def with_log() -> str:
        return f"{client_diag()}\n--- client log:\n{pod_log(testbed, namespace, 'client')}"

    done = wait_for(lambda: finished(kube, namespace, "client"), 30, with_log)
    assert done["status"]["phase"] == "Succeeded", with_log()
    log = pod_log(testbed, namespace, "client")
    assert all(f"{url} 200 b'# TYPE e2e_up" in log for url in urls), log

    # The pod's hosts file lives only as long as the pod.
    etc = network.NETNS_ETC / network.names(done["metadata"]["uid"])[0]
    assert f"web web.{namespace} web.{namespace}.svc" in (etc / "hosts").read_text()
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/client")
    wait_for(lambda: not etc.exists(), 15, with_log)


def test_service_without_a_ready_endpoint_refuses_at_once(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    testbed.apply(service("web"), namespace)
    pod = start_server(testbed, kube, namespace, tmp_path, wait_for)  # gate shut: never ready
    diag = describe(testbed, namespace, "pod/web", "service/web")
    ip = pod["status"]["podIP"]
    wait_for(lambda: ip in endpoint_ips(kube, namespace, "web", ready_only=False), 20, diag)
    assert ip not in endpoint_ips(kube, namespace, "web")

    testbed.apply(client_pod("client", ["http://web/metrics"]), namespace)

    def with_log() -> str:
        return f"{diag()}\n--- client log:\n{pod_log(testbed, namespace, 'client')}"

    done = wait_for(lambda: finished(kube, namespace, "client"), 30, with_log)
    assert done["status"]["phase"] == "Failed", with_log()
    log = pod_log(testbed, namespace, "client")
    took = re.search(r"failed after ([0-9.]+) s", log)
    assert took is not None and float(took.group(1)) < 3, log


def test_prometheus_scrapes_annotated_pod(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    start_server(testbed, kube, namespace, tmp_path, wait_for, annotations=annotations)
    (tmp_path / "gate").touch()
    query = urllib.parse.urlencode({"query": f'up{{namespace="{namespace}",pod="web"}}'})
    url = f"{testbed.prometheus_url}/api/v1/query?{query}"

    def up() -> bool:
        with DIRECT.open(url, timeout=2) as r:
            result = json.load(r)["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"

    def targets() -> str:
        with DIRECT.open(f"{testbed.prometheus_url}/api/v1/targets", timeout=2) as r:
            return str(r.read().decode())[:3000]

    wait_for(up, 30, lambda: f"up == 1 in Prometheus; targets: {targets()}", interval=1)


def test_crashing_container_restarts_with_backoff_and_unknown_commands_are_refused(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any
) -> None:
    def pod(name: str, command: list[str]) -> Obj:
        container = {"name": "c", "image": "x", "command": command}
        spec = {"containers": [container]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    testbed.apply(pod("crash", ["python", "-c", "raise SystemExit(3)"]), namespace)
    testbed.apply(pod("refused", ["bash", "-c", "echo hi"]), namespace)

    def status(name: str) -> Obj:
        st: Obj = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"]
        first: Obj = st.get("containerStatuses", [{}])[0]
        return first

    def crash_looping() -> bool:
        st = status("crash")
        return bool(st.get("restartCount", 0) >= 2 and st["lastState"]["terminated"]["exitCode"] == 3)

    wait_for(crash_looping, 30, describe(testbed, namespace, "pod/crash"))
    wait_for(
        lambda: status("refused")["state"]["waiting"]["reason"] == "CreateContainerError",
        30,
        describe(testbed, namespace, "pod/refused"),
    )


@pytest.mark.testbed_down
def test_down_leaves_no_process_running(
    testbed: Any, kube: Kube, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    if not testbed.owned:
        pytest.skip("the running test bed was not started by this session: not stopping it")
    start_server(testbed, kube, namespace, tmp_path, wait_for)  # a pod process to stop too
    state = testbed.state
    procs = bed.Bed(state).procs()
    pod_procs = [Proc.from_dict(json.loads(f.read_text())) for f in (state / "procs").glob("*")]
    assert {p.name for p in procs} == set(bed.ORDER)
    assert pod_procs and all(p.alive() for p in [*procs, *pod_procs])

    testbed.down()

    assert [p for p in [*procs, *pod_procs] if p.alive()] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert network.BRIDGE not in links
    assert "kinfer-" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert not list(network.NETNS_ETC.glob("kinfer-*"))  # the pods' hosts files
