"""`kinfer demo`: the whole product on this machine, in one command.

Brings the test bed up (building it on the first run), installs the CRD and the operator's
RBAC, starts the operator under its own ServiceAccount, applies an InferenceService that asks
for a GPU, waits for it to serve, and shows where to look. Run it again and it reuses what runs;
`kinfer demo --down` removes what it started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kinfer import local

NAMESPACE = "kinfer-demo"
NAME = "demo"
Echo = Callable[[str], None]


def _dir(state: Path) -> Path:
    return state / "demo"


def inference_service(model: Path, canary_model: Path | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": f"file://{model}"},
        "resources": {"gpu": 1, "gpuProduct": "NVIDIA-L4", "cpu": "500m", "memory": "1Gi"},
        "scaling": {"minReplicas": 1, "maxReplicas": 4, "scaleDownStabilizationSeconds": 60},
    }
    if canary_model is not None:
        spec["rollout"] = {
            "canary": {
                "model": {"uri": f"file://{canary_model}"},
                "steps": [25, 50, 100],
                "stepSeconds": 30,
                "analysis": {"minRequests": 0, "maxP95LatencyMs": 500, "maxErrorRate": 0.05},
            }
        }
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }


def _operator_alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return cmdline.exists() and b"operator" in cmdline.read_bytes()


def _ensure_bed(state: Path, echo: Echo) -> Path:
    from kinfer.testbed import bed, install

    if install.missing():
        echo("kinfer demo: building the test bed from Go modules (first run only; see docs/testbed.md)")
        install.install_all()
    current = bed.Bed(state)
    if not current.running():
        echo(f"kinfer demo: starting the test bed in {state}")
        bed.up(state, echo=echo)
    return current.kubeconfig


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def up(state: Path, canary: bool, echo: Echo, timeout: float = 240) -> bool:
    kubeconfig = _ensure_bed(state, echo)
    work = _dir(state)
    echo("kinfer demo: installing the CRD, kopf peering and the operator's RBAC")
    local.install(kubeconfig)
    pidfile = work / "operator.pid"
    if not _operator_alive(pidfile):
        from kinfer.testbed import bed

        op_config = local.operator_kubeconfig(kubeconfig, work / "operator.kubeconfig")
        operator = local.OperatorProcess(
            op_config, work / "operator.log", ["--standalone"],
            env={"KINFER_PROMETHEUS_URL": bed.Bed(state).prometheus_url()},
        ).start()  # fmt: skip
        assert operator.proc is not None
        pidfile.write_text(str(operator.proc.pid))
        echo(f"kinfer demo: operator started (pid {operator.proc.pid}, log {work / 'operator.log'})")
    echo("kinfer demo: writing a small TorchScript model")
    model = local.make_model(work / "models" / "mlp-v1", seed=0)
    canary_model = local.make_model(work / "models" / "mlp-v2", seed=1) if canary else None
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    doc = [namespace, inference_service(model, canary_model)]
    local.kubectl(kubeconfig, "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in doc))
    echo(f"kinfer demo: applied InferenceService {NAMESPACE}/{NAME}; waiting for Ready")

    def ready() -> bool:
        out = local.kubectl(kubeconfig, "get", "kisvc", NAME, "-n", NAMESPACE, "-o", "json", check=False)
        return (
            out.returncode == 0 and local.condition(json.loads(out.stdout), "Ready").get("status") == "True"
        )

    ok = _wait(ready, timeout)
    for args in (("get", "kisvc", "-n", NAMESPACE), ("get", "pods", "-n", NAMESPACE, "-o", "wide")):
        echo(f"\n$ kubectl {' '.join(args)}")
        echo(local.kubectl(kubeconfig, *args, check=False).stdout.rstrip())
    if not ok:
        echo(f"\nkinfer demo: not Ready after {timeout:.0f} s. Look at:")
        echo(local.kubectl(kubeconfig, "describe", "kisvc", NAME, "-n", NAMESPACE, check=False).stdout)
        echo(f"operator log: {work / 'operator.log'}")
        return False
    echo(_first_inference(kubeconfig))
    echo(
        f"""
kinfer demo: {NAMESPACE}/{NAME} is Ready on a fake GPU node; its pod is a real kinfer-runtime
process in a network namespace of its own. Next:
  eval "$(kinfer dev env)"                      # KUBECONFIG, KINFER_PROMETHEUS_URL, kubectl
  kubectl describe kisvc {NAME} -n {NAMESPACE}  # conditions and events
  kubectl get events -n {NAMESPACE} --sort-by=.lastTimestamp
  kinfer explain-scale {NAME} -n {NAMESPACE}    # what the autoscaler decides, and why
  less {work / "operator.log"}
  kinfer demo --down                            # remove the demo; `kinfer dev down` stops the bed"""
    )
    return True


def _first_inference(kubeconfig: Path) -> str:
    """One Open Inference Protocol v2 request to a ready pod, shown as a user would send it."""
    pods = json.loads(
        local.kubectl(kubeconfig, "get", "pods", "-n", NAMESPACE, "-l", f"kinfer.dev/isvc={NAME}",
                      "-o", "json").stdout
    )["items"]  # fmt: skip
    ips = [p["status"]["podIP"] for p in pods if p.get("status", {}).get("podIP")]
    if not ips:
        return "kinfer demo: no pod IP to send a request to"
    url = f"http://{ips[0]}:8080/v2/models/{NAME}/infer"
    code, answer = local.infer(ips[0], NAME)
    if code != 200:
        return f"kinfer demo: POST {url} answered {code or 'nothing'}: {answer}"
    return f"\n$ curl -X POST {url} -d '{json.dumps(local.MLP_REQUEST)}'\n{answer}"


def down(state: Path, echo: Echo) -> None:
    from kinfer.testbed import bed

    work = _dir(state)
    current = bed.Bed(state)
    if current.running():
        local.kubectl(current.kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found",
                      "--wait=false", check=False)  # fmt: skip
        echo(f"kinfer demo: deleted namespace {NAMESPACE}")
    pidfile = work / "operator.pid"
    if _operator_alive(pidfile):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        echo(f"kinfer demo: stopped the operator (pid {pid})")
    pidfile.unlink(missing_ok=True)
    echo("kinfer demo: done (the test bed keeps running; `kinfer dev down` stops it)")
