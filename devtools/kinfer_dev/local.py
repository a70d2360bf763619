"""Running kinfer on a local cluster (the test bed) the way a cluster runs it.

CRDs and least-privilege RBAC are installed with kubectl, and the operator process authenticates
with a token of its ServiceAccount, so it has exactly the permissions config/rbac grants (never
the admin kubeconfig). Used by `kinfer demo` and the e2e tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kinfer.api.crd import crd_yaml
from kinfer.manifests import SERVICE_ACCOUNT, rbac
from kinfer.render import to_yaml
from kinfer_dev.testbed import install as testbed_install
from kinfer_dev.testbed import versions
from kinfer_dev.testbed.procs import Proc, start_time

OPERATOR_NAMESPACE = "kinfer-system"
# Gateway API CRDs come from their Go module (the proxy serves them; no release download).
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"


def kubectl_binary() -> str:
    built = testbed_install.paths().k8s / "kubectl"
    return str(built) if built.is_file() else shutil.which("kubectl") or "kubectl"


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.run(
        [kubectl_binary(), *args], input=input, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def install(kubeconfig: Path) -> None:
    """The CRD, the operator's namespace, ServiceAccount and RBAC (its Lease's Role included)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    manifests = crd_yaml() + to_yaml([namespace])
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input=manifests)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/inferenceservices.kinfer.dev")  # fmt: skip
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input=to_yaml(rbac(OPERATOR_NAMESPACE)))


def uninstall(kubeconfig: Path) -> None:
    """Remove what install() made besides the CRDs and the namespace (the operator's
    ServiceAccount and RBAC), and the Lease an operator run against it created, e.g. to install
    the Helm chart in its place (which owns a Lease of that name)."""
    objects = rbac(OPERATOR_NAMESPACE)
    kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait", "-f", "-", input=to_yaml(objects))
    kubectl(kubeconfig, "delete", "lease", "kinfer", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def gateway_api_crds() -> list[Path]:
    """The standard-channel Gateway API CRD files, from the Go module cache."""
    source = testbed_install.module_dir(GATEWAY_API_MODULE, versions.GATEWAY_API)
    return sorted((source / "config" / "crd" / "standard").glob("gateway.networking.k8s.io_*.yaml"))


def install_gateway_api(kubeconfig: Path) -> None:
    for crd in gateway_api_crds():
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(crd))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/httproutes.gateway.networking.k8s.io")  # fmt: skip


def operator_kubeconfig(admin_kubeconfig: Path, out: Path, hours: int = 12) -> Path:
    """A kubeconfig with the admin's server and CA and a token of the operator's ServiceAccount."""
    token = kubectl(
        admin_kubeconfig, "create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE,
        "--duration", f"{hours}h",
    ).stdout.strip()  # fmt: skip
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


_MODEL_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
    import torch
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(sys.argv[2]))
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.jit.script(net.eval()).save(str(out / "model.pt"))
    (out / "signature.json").write_text(json.dumps({
        "format": "torchscript", "max_batch_size": 32,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }))
    """
)


def make_model(directory: Path, seed: int = 0) -> Path:
    """A small TorchScript MLP (8 → 16 → 4) with its signature.json, as kinfer-runtime loads it.
    Different seeds give different weights (a canary that answers differently)."""
    if not (directory / "signature.json").is_file():
        subprocess.run(
            [sys.executable, "-c", _MODEL_SCRIPT, str(directory), str(seed)],
            check=True,
            timeout=600,
        )
    return directory


_FAILING_MODEL = textwrap.dedent(
    """
    import numpy as np


    class Model:
        \"\"\"Answers the warm-up (zeros) and fails every real request: a canary gone wrong.\"\"\"

        def __init__(self, signature, device):
            self.signature, self.device = signature, device

        def forward(self, inputs):
            x = inputs["x"]
            if np.any(x != 0):
                raise RuntimeError("this model version is broken")
            return {"y": np.zeros((x.shape[0], 4), dtype=np.float32)}
    """
)


def make_failing_model(directory: Path) -> Path:
    """A python-format model with the MLP's signature that fails on any non-zero input."""
    return _python_model(directory, _FAILING_MODEL)


_SLOW_MODEL = textwrap.dedent(
    """
    import time

    import numpy as np

    DELAY_S = {delay_s!r}
    PER_ROW_S = {per_row_s!r}


    class Model:
        \"\"\"Sleeps DELAY_S + PER_ROW_S x rows per forward (written in by make_slow_model):
        a replica of known capacity whatever the machine's load, since it sleeps, not computes.\"\"\"

        def __init__(self, signature, device):
            self.signature, self.device = signature, device

        def forward(self, inputs):
            x = inputs["x"]
            time.sleep(DELAY_S + PER_ROW_S * x.shape[0])
            return {{"y": np.zeros((x.shape[0], 4), dtype=np.float32)}}
    """
)


def _python_model(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(source)
    (directory / "signature.json").write_text(
        json.dumps({
            "format": "python", "entrypoint": "Model", "max_batch_size": 32,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        })
    )  # fmt: skip
    return directory


def make_slow_model(directory: Path, delay_s: float = 0.02, per_row_s: float = 0.0) -> Path:
    """A python-format model with the MLP's signature whose forward sleeps ``delay_s`` +
    ``per_row_s`` x rows (the values are written into model.py): a few concurrent clients build a
    real queue without burning CPU, and a replica's capacity does not depend on the machine."""
    return _python_model(directory, _SLOW_MODEL.format(delay_s=float(delay_s), per_row_s=float(per_row_s)))


# One row of the test MLP's input, as an Open Inference Protocol v2 JSON body.
MLP_REQUEST = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def infer(ip: str, model: str, body: dict[str, Any] = MLP_REQUEST, timeout: float = 10) -> tuple[int, str]:
    """POST one v2 infer request to a pod IP (a test bed network namespace, never via a proxy).

    Returns (HTTP status, body); status 0 when no answer came (refused, reset, timed out)."""
    request = urllib.request.Request(
        f"http://{ip}:8080/v2/models/{model}/infer", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError:
        return 0, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    """One `kinfer operator` process, with its own log file and metrics port."""

    kubeconfig: Path
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "kinfer",
            "operator",
            "--metrics-port",
            str(self.metrics_port),
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, *self.args], env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def as_proc(self, name: str) -> Proc:
        """This process as the test bed records processes (safe against a recycled PID)."""
        started = start_time(self.pid)
        if started is None:
            raise RuntimeError(f"the operator exited at once; see {self.log}")
        return Proc(name, self.pid, started)

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return "(no operator log yet)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == kind), {})


def ready_pod_tracks(kubeconfig: Path, namespace: str, name: str) -> dict[str, str] | None:
    """An InferenceService's ready model-server pods as a Service's endpoints list them: pod IP
    → track (stable or canary). None when the pods could not be listed."""
    out = kubectl(kubeconfig, "get", "pods", "-n", namespace, "-l", f"kinfer.dev/isvc={name}", "-o", "json",
                  check=False)  # fmt: skip
    if out.returncode != 0:
        return None
    return {
        p["status"]["podIP"]: p["metadata"]["labels"].get("kinfer.dev/track", "?")
        for p in json.loads(out.stdout)["items"]
        if p.get("status", {}).get("podIP")
        and condition(p, "Ready").get("status") == "True"
        and not p["metadata"].get("deletionTimestamp")
    }
