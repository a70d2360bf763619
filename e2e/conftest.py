"""Fixtures for tests against the real test bed (`kinfer dev up`).

One test bed per session: the running one is reused (e.g. after `kinfer dev up` by hand), else
one is started in $KINFER_TESTBED_STATE (default /tmp/kinfer-testbed) and stopped at the end.
Each test gets a fresh namespace. Waits poll with a deadline and, on failure, print what the
test waited for: events, `kubectl describe`, the launcher's log.

Tests use the fixtures (`testbed`, `kube`, `namespace`, `wait_for`) rather than importing this
module: tests/ has a conftest module too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from kinfer_dev.testbed import bed, install
from kinfer_dev.testbed.kube import Kube, KubeError
from kinfer_dev.testbed.procs import log_tail

CLI = [sys.executable, "-m", "kinfer_dev.testbed.cli"]
Obj = dict[str, Any]


class WaitFor(Protocol):
    def __call__(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        describe: str | Callable[[], str],
        interval: float = 0.25,
    ) -> Any: ...


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    describe: str | Callable[[], str],
    interval: float = 0.25,
) -> Any:
    """Poll `predicate` until it returns something truthy (which is returned) or `timeout`
    seconds pass; then fail with `describe` (a string, or a callable giving diagnostics)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (KubeError, OSError, KeyError, IndexError, ValueError) as e:
            last_error = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    text = describe() if callable(describe) else describe
    error = f"\nlast error: {last_error!r}" if last_error else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for: {text}{error}")


@dataclass
class RunningBed:
    state: Path
    owned: bool  # started by this session, so stopped by it

    @property
    def kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def prometheus_url(self) -> str:
        return bed.Bed(self.state).prometheus_url()

    @property
    def gateway_url(self) -> str:
        return bed.Bed(self.state).gateway_url()

    @property
    def gateway_grpc(self) -> str:
        return bed.Bed(self.state).gateway_grpc()

    def kube(self) -> Kube:
        return Kube(self.kubeconfig)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        argv = [str(install.paths().k8s / "kubectl"), *args]
        proc = subprocess.run(argv, input=input, env=env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def apply(self, manifest: Obj, namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def diagnostics(self, namespace: str | None, *objects: str) -> str:
        """Events, `kubectl describe` of `objects` ("pod/x", …) and the launcher's log tail."""
        out = []
        if namespace:
            ev = self.kubectl("get", "events", "-n", namespace, check=False)
            out.append(f"--- events in {namespace}:\n{ev.stdout}{ev.stderr}")
            for obj in objects:
                d = self.kubectl("describe", "-n", namespace, obj, check=False)
                out.append(f"--- describe {obj}:\n{d.stdout}{d.stderr}")
        launcher_log = self.state / "logs" / "launcher.log"
        out.append(f"--- launcher log:\n{log_tail(launcher_log, 30)}")
        return "\n".join(out)

    def up(self) -> None:
        run_cli("up", "--state", str(self.state), timeout=180)

    def down(self) -> None:
        run_cli("down", "--state", str(self.state), timeout=120)


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"kinfer dev {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testbed_down: stops the test bed; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that takes the test bed down must not run before the tests that need it.
    items.sort(key=lambda i: i.get_closest_marker("testbed_down") is not None)


@pytest.fixture(scope="session")
def testbed() -> Iterator[RunningBed]:
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (network namespaces)")
    if install.missing(helm=False):
        pytest.fail("test bed binaries missing; run `kinfer dev install` (or ci-install.sh)")
    active = bed.active_state()
    state = active if active is not None and bed.Bed(active).running() else bed.default_state_dir()
    tb = RunningBed(state, owned=not bed.Bed(state).running())
    if tb.owned:
        tb.up()
    yield tb
    if tb.owned and bed.Bed(state).running():
        tb.down()


@pytest.fixture
def kube(testbed: RunningBed) -> Kube:
    return testbed.kube()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> WaitFor:
    return wait_for


@pytest.fixture
def namespace(testbed: RunningBed, kube: Kube) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_for(
        lambda: kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        30,
        describe=f"default service account in {name}",
    )
    yield name
    with contextlib.suppress(KubeError, OSError):  # the bed may be down (the down test)
        kube.delete(f"/api/v1/namespaces/{name}")


# The operator under test, shared by the operator, autoscaling and rollout tests.
from operator_bed import setup  # noqa: E402, F401
