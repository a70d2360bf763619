"""Canary and A/B rollouts end to end: real runtime pods, real Prometheus analysis, real restarts.

Traffic is split by replica ratio behind the one Service (no Gateway controller runs on the test
bed); a load client spreads requests over the Service's ready endpoints, as kube-proxy would, and
records which track answered, so the observed canary share is checked at each step.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kinfer_dev.local import infer, make_failing_model, make_model, ready_pod_tracks
from operator_bed import MODELS, ROOT, Setup, example

pytestmark = pytest.mark.e2e

REPLICAS = 4


def _service(
    name: str,
    stable: Path,
    canary: Path,
    steps: list[int],
    step_seconds: int,
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    analysis: dict[str, Any] = {"minRequests": 5, "maxErrorRate": 0.05, "maxP95LatencyMs": 2000}
    if drift is not None:
        analysis["drift"] = drift
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{stable}"},
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "scaling": {"mode": "fixed", "minReplicas": REPLICAS, "maxReplicas": REPLICAS},
            "rollout": {
                "canary": {
                    "model": {"uri": f"file://{canary}"},
                    "steps": steps,
                    "stepSeconds": step_seconds,
                    "analysis": analysis,
                }
            },
        },
    }


class Traffic:
    """Requests over the Service's ready endpoints, each tagged with the track that answered and
    the canary weight in status at that moment (only while all replicas are ready)."""

    def __init__(self, setup: Setup, namespace: str, name: str) -> None:
        self.setup, self.namespace, self.name = setup, namespace, name
        self.stop = threading.Event()
        self.track_of: dict[str, str] = {}
        self.weight: int | None = None
        self.steady = False
        self.by_weight: dict[int, Counter[str]] = {}
        self.codes: Counter[int] = Counter()

    def _refresh(self) -> None:
        while not self.stop.is_set():
            kubeconfig = self.setup.testbed.kubeconfig
            ready = ready_pod_tracks(kubeconfig, self.namespace, self.name) or {}
            canary = (self.setup.get(self.namespace, f"kisvc/{self.name}").get("status") or {}).get(
                "canary"
            ) or {}
            self.track_of = ready
            self.steady = len(ready) == REPLICAS and canary.get("phase") == "Progressing"
            self.weight = canary.get("weight") if self.steady else None
            self.stop.wait(1)

    def _client(self, index: int, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline:
            ips = sorted(self.track_of)
            if not ips:
                time.sleep(0.2)
                continue
            ip = ips[index % len(ips)]
            index += 1
            weight, track = self.weight, self.track_of.get(ip)
            code, _ = infer(ip, self.name)
            self.codes[code] += 1
            if weight is not None and track is not None and code:
                self.by_weight.setdefault(weight, Counter())[track] += 1
            time.sleep(0.02)

    @contextmanager
    def running(self, seconds: float, clients: int = 4) -> Iterator[Traffic]:
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self._refresh, daemon=True)]
        threads += [
            threading.Thread(target=self._client, args=(i, deadline), daemon=True) for i in range(clients)
        ]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            for t in threads:
                t.join(15)


def _canary(setup: Setup, namespace: str, name: str) -> dict[str, Any]:
    return (setup.get(namespace, f"kisvc/{name}").get("status") or {}).get("canary") or {}


def _events(setup: Setup, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        setup.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    )["items"]
    return items


# The drift check on, with the canary's answers compared with stable's on live inputs.
DRIFT = {"maxAbsDiff": 0.001, "minSamples": 5, "samplesPerSecond": 2}


def _stable_template_uri(setup: Setup, namespace: str) -> str:
    template = setup.get(namespace, "deployment/ranker")["spec"]["template"]["metadata"]
    return str(template["annotations"]["kinfer.dev/model-uri"])


def test_good_canary_is_promoted_and_traffic_follows_each_step(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    # The same weights under another path: a new version that answers exactly as the old one.
    stable, canary = make_model(MODELS / "mlp"), make_model(MODELS / "mlp-same", seed=0)
    doc = _service("ranker", stable, canary, [25, 50, 100], 20, drift=DRIFT)
    setup.apply(namespace, doc)
    traffic = Traffic(setup, namespace, "ranker")
    with traffic.running(360):
        wait_for(
            lambda: _canary(setup, namespace, "ranker").get("handedOver") is True,
            360,
            describe=lambda: (
                f"canary Succeeded and handed over (traffic {traffic.codes})\n" + setup.why(namespace)
            ),
            interval=1,
        )
    setup.kubectl(
        "wait", "-n", namespace, "--for=condition=RolloutSucceeded", "kisvc/ranker", "--timeout=10s"
    )
    for weight in (25, 50):
        seen = traffic.by_weight.get(weight, Counter())
        total = sum(seen.values())
        assert total >= 20, f"too few requests at weight {weight}: {seen}"
        share = 100 * seen["canary"] / total
        assert abs(share - weight) <= 10, f"weight {weight}: canary answered {share:.0f}% of {total}"
    events = _events(setup, namespace)
    reasons = [e["reason"] for e in events]
    assert reasons.count("CanaryStep") >= 2 and "CanarySucceeded" in reasons, reasons
    # Each step's verdict carries the drift numbers: real comparisons, all within the bound.
    steps = [e["message"] for e in events if e["reason"] == "CanaryStep" and "passed" in e["message"]]
    assert steps and all("drift: max abs diff within 0.001" in m for m in steps), steps
    # Handed over: stable runs the promoted model on every replica, the canary none.
    deployments = {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in setup.get(namespace, "deployments")["items"]
    }
    assert deployments == {"ranker": REPLICAS, "ranker-canary": 0}
    assert _stable_template_uri(setup, namespace) == f"file://{canary}"
    isvc = setup.get(namespace, "kisvc/ranker")
    assert isvc["status"]["effectiveModelUri"] == f"file://{canary}"
    # Git catches up: the promoted model in spec.model, the canary gone. Nothing restarts.
    generation = setup.get(namespace, "deployment/ranker")["metadata"]["generation"]
    doc["spec"]["model"] = doc["spec"]["rollout"].pop("canary")["model"]
    setup.apply(namespace, doc)  # kubectl apply: what left the manifest leaves the object
    wait_for(
        lambda: not setup.get(namespace, "deployment/ranker-canary"),
        30,
        describe=lambda: "the empty canary Deployment pruned\n" + setup.why(namespace),
    )
    stable_now = setup.get(namespace, "deployment/ranker")
    assert stable_now["metadata"]["generation"] == generation, "the stable Deployment changed"
    assert setup.condition(namespace, "ranker", "Ready")["status"] == "True"


def _rolled_back(setup: Setup, namespace: str, wait_for: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """Apply a canary bound to fail, under load; the CanaryRollingBack event once it Failed."""
    setup.apply(namespace, doc)
    traffic = Traffic(setup, namespace, "ranker")
    with traffic.running(240):
        wait_for(
            lambda: _canary(setup, namespace, "ranker").get("phase") == "Failed",
            240,
            describe=lambda: f"canary Failed (traffic {traffic.codes})\n" + setup.why(namespace),
            interval=1,
        )
    (rollback,) = [e for e in _events(setup, namespace) if e["reason"] == "CanaryRollingBack"]
    assert rollback["type"] == "Warning"
    return rollback


def test_canary_that_answers_differently_is_rolled_back_on_output_drift(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    # Other weights: as fast and as healthy as stable, but it gives other answers.
    stable, other = make_model(MODELS / "mlp"), make_model(MODELS / "mlp-v2", seed=1)
    rollback = _rolled_back(
        setup, namespace, wait_for, _service("ranker", stable, other, [50, 100], 20, DRIFT)
    )
    message = rollback["message"]
    assert "output drift" in message and "differ from stable by more than 0.001" in message, message
    assert "error rate" not in message.split(";")[0]


def test_failing_canary_is_rolled_back_with_the_metric_named(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    stable, broken = make_model(MODELS / "mlp"), make_failing_model(MODELS / "broken")
    rollback = _rolled_back(setup, namespace, wait_for, _service("ranker", stable, broken, [50, 100], 20))
    assert "error rate" in rollback["message"], rollback["message"]
    cond = setup.condition(namespace, "ranker", "RolloutSucceeded")
    assert (cond["status"], cond["reason"]) == ("False", "RolledBack")
    wait_for(
        lambda: (
            setup.get(namespace, "deployment/ranker-canary")["spec"]["replicas"] == 0
            and setup.get(namespace, "deployment/ranker")["spec"]["replicas"] == REPLICAS
        ),
        30,
        describe=lambda: "all replicas back on stable\n" + setup.why(namespace),
    )


def test_rollout_resumes_at_its_step_after_the_operator_is_killed(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    stable, canary = make_model(MODELS / "mlp"), make_model(MODELS / "mlp-v2", seed=1)
    setup.apply(namespace, _service("ranker", stable, canary, [25, 50, 100], 30))
    traffic = Traffic(setup, namespace, "ranker")
    with traffic.running(360):
        reached = wait_for(
            lambda: (c := _canary(setup, namespace, "ranker")).get("step", 0) >= 1 and c,
            240,
            describe=lambda: "the rollout at its second step\n" + setup.why(namespace),
            interval=1,
        )
        setup.operator.stop(signal.SIGKILL)
        time.sleep(5)  # nothing may move while no operator runs
        assert _canary(setup, namespace, "ranker")["step"] == reached["step"]
        setup.operator = setup.start_operator("operator-after-kill.log")
        steps_seen: list[int] = []

        def finished() -> bool:
            state = _canary(setup, namespace, "ranker")
            steps_seen.append(int(state.get("step", 0)))
            return state.get("phase") == "Succeeded"

        wait_for(
            finished, 300, describe=lambda: "Succeeded after the restart\n" + setup.why(namespace), interval=1
        )
    assert min(steps_seen) >= reached["step"], f"went back from step {reached['step']}: {steps_seen}"


def test_ab_test_renders_httproute_header_match(setup: Setup, namespace: str, wait_for: Any) -> None:
    doc = example("ab-header", setup.model)
    name = setup.apply(namespace, doc)
    route = wait_for(
        lambda: setup.get(namespace, f"httproute/{name}"),
        60,
        describe=lambda: "the HTTPRoute\n" + setup.why(namespace),
    )
    first, default = route["spec"]["rules"]
    assert first["matches"][0]["headers"] == [{"type": "Exact", "name": "x-model-variant", "value": "b"}]
    assert first["backendRefs"][0]["name"] == f"{name}-canary"
    assert default["backendRefs"][0]["name"] == f"{name}-stable"
    assert route["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"


def _tiny_lm(directory: Path) -> Path:
    """kinfer_dev.tiny_lm's model, made in a process of its own (torch stays out of this one)."""
    if not (directory / "signature.json").is_file():
        script = "import sys; from pathlib import Path; from kinfer_dev.tiny_lm import make_tiny_lm; "
        script += "make_tiny_lm(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", script, str(directory)], cwd=ROOT, check=True, timeout=600)
    return directory


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _complete(ip: str, model: str) -> int:
    """One short completion straight to a pod (sampled, temperature 1): its HTTP status, 0 for none."""
    body = {"model": model, "prompt": "hello kinfer", "max_tokens": 4, "temperature": 1.0}
    request = urllib.request.Request(
        f"http://{ip}:8080/v1/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with _DIRECT.open(request, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def test_generative_canary_is_judged_on_ttft_and_greedy_answers_then_promoted(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    # The same weights under another path: greedy answers equal to stable's, token for token.
    stable = _tiny_lm(MODELS / "tiny-lm-stable" / "chat")
    canary = _tiny_lm(MODELS / "tiny-lm-same" / "chat")
    drift = {"minArgmaxAgreement": 1.0, "minSamples": 3, "samplesPerSecond": 2}
    doc = _service("chat", stable, canary, [50, 100], 20, drift=drift)
    doc["spec"]["model"]["format"] = doc["spec"]["rollout"]["canary"]["model"]["format"] = "generative"
    doc["spec"]["resources"] = {"cpu": "500m", "memory": "1Gi"}
    doc["spec"]["scaling"] = {"mode": "fixed", "minReplicas": 1, "maxReplicas": 1}
    setup.apply(namespace, doc)
    stop = threading.Event()
    codes: Counter[int] = Counter()
    ips: list[str] = []

    def refresh() -> None:
        while not stop.is_set():
            ips[:] = sorted(ready_pod_tracks(setup.testbed.kubeconfig, namespace, "chat") or {})
            stop.wait(1)

    def client(index: int) -> None:
        while not stop.is_set():
            now = list(ips)
            if now:
                codes[_complete(now[index % len(now)], "chat")] += 1
                index += 1
            stop.wait(0.1)

    threads = [threading.Thread(target=refresh, daemon=True)]
    threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: _canary(setup, namespace, "chat").get("phase") in ("Succeeded", "Failed"),
            420,
            describe=lambda: f"the generative canary decided (traffic {codes})\n" + setup.why(namespace),
            interval=2,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(35)
    state = _canary(setup, namespace, "chat")
    assert state["phase"] == "Succeeded", state
    events = _events(setup, namespace)
    steps = [e["message"] for e in events if e["reason"] == "CanaryStep" and "passed" in e["message"]]
    # Step 1 at 50 %: the time to first token of both tracks from the runtime's histogram, and
    # greedy answers compared with stable's token by token, all identical.
    assert steps and "canary p95 TTFT" in steps[0], steps
    assert "(stable n/a)" not in steps[0].split(",")[0], steps
    assert "prompts answered greedily by both tracks, 100.0% identical" in steps[0], steps
