"""Running the kinfer operator on the test bed the way a cluster would: CRDs and least-privilege
RBAC installed with kubectl, and the operator process authenticated by a ServiceAccount token
bound to exactly that RBAC (never the admin kubeconfig).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "kinfer-system"
SERVICE_ACCOUNT = "kinfer-operator"

_MODEL_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.jit.script(net.eval()).save(str(out / "model.pt"))
    (out / "signature.json").write_text(json.dumps({
        "format": "torchscript", "max_batch_size": 32,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }))
    """
)


def make_model(directory: Path) -> Path:
    """A small TorchScript MLP with its signature file, as the runtime loads it."""
    if not (directory / "signature.json").is_file():
        subprocess.run(
            [sys.executable, "-c", _MODEL_SCRIPT, str(directory)], check=True, timeout=300
        )
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sa_kubeconfig(admin_kubeconfig: Path, token: str, out: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount: the admin's server and CA, the SA's token."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "testbed", "cluster": cluster}],
                "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": "testbed", "user": SERVICE_ACCOUNT}}
                ],
                "current-context": "operator",
            }
        )
    )
    return out


@dataclass
class OperatorProcess:
    """One `kinfer operator` process with its own log file and metrics port."""

    kubeconfig: Path
    log: Path
    args: list[str] = field(default_factory=list)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kinfer",
                    "operator",
                    "--metrics-port",
                    str(self.metrics_port),
                    *self.args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return "(no operator log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text


def kinfer_cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kinfer", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return proc.stdout


def example(name: str, model_dir: Path) -> dict[str, Any]:
    """An example InferenceService with its model URIs pointed at a local test model."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    doc["metadata"].pop("namespace", None)
    doc["spec"]["model"]["uri"] = f"file://{model_dir}"
    canary = (doc["spec"].get("rollout") or {}).get("canary")
    if canary:
        canary["model"]["uri"] = f"file://{model_dir}"
    return doc


def resource_versions(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in objects
    }


def token_for(kubectl: Any) -> str:
    out = kubectl("create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration", "4h")
    return str(out.stdout.strip())


def wait_port(port: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def jwt_subject(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])
