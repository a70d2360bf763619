"""e2e helpers for tests that run the operator, on top of kinfer_dev.local (shared with `kinfer demo`).

`setup` is a session fixture: one operator process for the whole run (the HA and restart tests
replace it), authenticated with its ServiceAccount's token. Test modules import it by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kinfer_dev.local import OperatorProcess, install, install_gateway_api, make_model, operator_kubeconfig
from kinfer_dev.testbed.gateway import NAMESPACE as GATEWAY_NAMESPACE

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path("/tmp/kinfer-e2e-models")


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
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in objects}


@dataclass
class Setup:
    testbed: Any
    kubeconfig: Path
    model: Path
    operator: OperatorProcess
    logs: Path

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.testbed.kubectl(*args, **kw)

    def get(self, namespace: str, what: str) -> dict[str, Any]:
        out = self.kubectl("get", "-n", namespace, *what.split(), "-o", "json", check=False)
        if out.returncode != 0:
            return {}
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any]:
        isvc = self.get(namespace, f"inferenceservice/{name}")
        conds = (isvc.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), {})

    def can_i(self, who: str, verb: str, resource: str, namespace: str = "") -> str:
        """`kubectl auth can-i` as `who`: "yes" or "no" (with kubectl's output when neither).
        A resource ending in /status (or another subresource) is asked as --subresource."""
        resource, _, sub = resource.partition("/")
        args = [verb, resource, *([f"--subresource={sub}"] if sub else [])]
        args += [*(["-n", namespace] if namespace else []), f"--as={who}"]
        out = self.kubectl("auth", "can-i", *args, check=False)
        return out.stdout.strip() if out.stdout.strip() in ("yes", "no") else out.stdout + out.stderr

    def why(self, namespace: str, *objects: str) -> str:
        return self.testbed.diagnostics(namespace, *objects) + f"\n--- operator log:\n{self.operator.tail()}"

    def restart_operator(self, log_name: str, *args: str) -> OperatorProcess:
        self.operator.stop()
        self.operator = self.start_operator(log_name, *args)
        return self.operator

    def start_operator(self, log_name: str, *args: str, kubeconfig: Path | None = None) -> OperatorProcess:
        """An operator process; `kubeconfig` (default: its ServiceAccount's) e.g. through a proxy."""
        env = {
            "KINFER_PROMETHEUS_URL": self.testbed.prometheus_url,
            "KINFER_AUTOSCALE_INTERVAL_SECONDS": "3",
            "KINFER_GATEWAY_NAMESPACE": GATEWAY_NAMESPACE,  # the test bed's Gateway (Traefik)
        }
        config = kubeconfig or self.kubeconfig
        return OperatorProcess(config, self.logs / log_name, list(args), env=env).start()

    def apply(self, namespace: str, doc: dict[str, Any]) -> str:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
        return str(doc["metadata"]["name"])

    def wait_ready(self, wait_for: Any, namespace: str, name: str, timeout: float = 60) -> None:
        wait_for(
            lambda: self.condition(namespace, name, "Ready").get("status") == "True",
            timeout,
            describe=lambda: (
                f"kisvc/{name} Ready\n"
                + self.why(namespace, f"inferenceservice/{name}", f"deployment/{name}")
            ),
            interval=0.5,
        )


@pytest.fixture(scope="session")
def setup(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    logs = tmp_path_factory.mktemp("operator")
    install(testbed.kubeconfig)
    # The test bed installed the Gateway API CRDs and runs Traefik; applying them again is a no-op.
    install_gateway_api(testbed.kubeconfig)
    kubeconfig = operator_kubeconfig(testbed.kubeconfig, logs / "operator.kubeconfig")
    model = make_model(MODELS / "mlp")
    bed = Setup(testbed, kubeconfig, model, None, logs)  # type: ignore[arg-type]
    # Priority 100: the standby started by the HA test has a lower one.
    bed.operator = bed.start_operator("operator-a.log")
    yield bed
    bed.operator.stop()
