"""`kinfer demo`: the whole product on this machine, in one command.

Brings the test bed up (building it on the first run), installs the CRD and the operator's
RBAC, starts the operator under its own ServiceAccount, applies an InferenceService that asks
for a GPU, waits for it to serve, and shows where to look. With `--canary` it then applies
examples/gpu-canary.yaml, sends it traffic and prints each step of its rollout as the operator
takes it, through promotion and the handover to stable. With `--llm` it applies
examples/llm.yaml with a tiny language model and prints an answer token by token as it streams
through the Gateway to the Service. Run it again and it reuses what runs;
`kinfer demo --down` removes what it started.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kinfer_dev import local, tiny_lm, traffic
from kinfer_dev.testbed import bed, gateway, install
from kinfer_dev.testbed.procs import log_tail, stop

NAMESPACE = "kinfer-demo"
NAME = "demo"
CANARY_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpu-canary.yaml"
LLM_EXAMPLE = CANARY_EXAMPLE.with_name("llm.yaml")
LLM_PROMPT = "hello kinfer, stream me an answer"
Echo = Callable[[str], None]


OPERATOR_CLIENT = "demo-operator"
"""The demo's operator, recorded as a client of the test bed (`kinfer dev down` stops it)."""


def _dir(state: Path) -> Path:
    return state / "demo"


def inference_service(model: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "resources": {"gpu": 1, "gpuProduct": "NVIDIA-L4", "cpu": "500m", "memory": "1Gi"},
            "scaling": {"minReplicas": 1, "maxReplicas": 4, "scaleDownStabilizationSeconds": 60},
        },
    }


def canary_example(stable: Path, canary: Path, step_seconds: int) -> dict[str, Any]:
    """examples/gpu-canary.yaml with what the test bed cannot run replaced: local model files for
    its pvc:// URIs (the launcher mounts no volumes into model pods) and shorter steps."""
    doc: dict[str, Any] = yaml.safe_load(CANARY_EXAMPLE.read_text())
    doc["spec"]["model"]["uri"] = f"file://{stable}"
    rollout = doc["spec"]["rollout"]["canary"]
    rollout["model"]["uri"] = f"file://{canary}"
    rollout["stepSeconds"] = step_seconds
    return doc


def _ensure_bed(state: Path, echo: Echo) -> Path:
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


def up(
    state: Path,
    canary: bool,
    echo: Echo,
    timeout: float = 240,
    step_seconds: int = 30,
    llm: bool = False,
) -> bool:
    kubeconfig = _ensure_bed(state, echo)
    work = _dir(state)
    echo("kinfer demo: installing the CRD and the operator's RBAC")
    local.install(kubeconfig)
    current = bed.Bed(state)
    running = current.client(OPERATOR_CLIENT)
    if running is not None:
        echo(f"kinfer demo: reusing its operator (pid {running.pid}), bound to this test bed")
    else:
        op_config = local.operator_kubeconfig(kubeconfig, work / "operator.kubeconfig")
        operator = local.OperatorProcess(
            op_config, work / "operator.log", ["--standalone"],
            env={"KINFER_PROMETHEUS_URL": current.prometheus_url(),
                 "KINFER_GATEWAY_NAMESPACE": gateway.NAMESPACE},
        ).start()  # fmt: skip
        current.record_client(operator.as_proc(OPERATOR_CLIENT))
        echo(f"kinfer demo: operator started (pid {operator.pid}, log {work / 'operator.log'})")
    echo("kinfer demo: writing a small TorchScript model")
    model = local.make_model(work / "models" / "mlp-v1", seed=0)
    _apply(kubeconfig, inference_service(model))
    echo(f"kinfer demo: applied InferenceService {NAMESPACE}/{NAME}; waiting for Ready")

    ok = _wait(lambda: _ready(kubeconfig, NAMESPACE, NAME), timeout)
    for args in (("get", "kisvc", "-n", NAMESPACE), ("get", "pods", "-n", NAMESPACE, "-o", "wide")):
        echo(f"\n$ kubectl {' '.join(args)}")
        echo(local.kubectl(kubeconfig, *args, check=False).stdout.rstrip())
    if not ok:
        echo(f"\nkinfer demo: not Ready after {timeout:.0f} s. Look at:")
        echo(local.kubectl(kubeconfig, "describe", "kisvc", NAME, "-n", NAMESPACE, check=False).stdout)
        echo(f"operator log: {work / 'operator.log'}")
        return False
    echo(_first_inference(current.gateway_url()))
    if canary and not walk_canary(kubeconfig, current.gateway_url(), work, echo, step_seconds):
        return False
    if llm and not stream_llm(kubeconfig, current.gateway_url(), work, echo, timeout):
        return False
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


def _terminating(kubeconfig: Path, namespace: str) -> bool:
    out = local.kubectl(kubeconfig, "get", "namespace", namespace, "-o", "json", check=False)
    return out.returncode == 0 and json.loads(out.stdout).get("status", {}).get("phase") == "Terminating"


def _apply(kubeconfig: Path, isvc: dict[str, Any]) -> None:
    name = isvc["metadata"]["namespace"]
    # A namespace left from an earlier run is still going away (the operator removes the
    # InferenceServices' finalizers): applying into it would only find the old objects.
    if _terminating(kubeconfig, name) and not _wait(lambda: not _terminating(kubeconfig, name), 120):
        raise RuntimeError(f"namespace {name} is still terminating after 120 s")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    local.kubectl(kubeconfig, "apply", "-f", "-", input=f"{json.dumps(namespace)}\n---\n{json.dumps(isvc)}")


class Traffic:
    """Bounded load on one InferenceService through the test bed's Gateway (Traefik), as a client
    outside the cluster sends it; answers are counted by the canary weight in status at the time
    and by the track that answered (the `kinfer-track` header)."""

    def __init__(self, gateway_url: str, namespace: str, name: str, clients: int = 4) -> None:
        self.clients = [traffic.HttpClient(gateway_url, name, namespace, timeout=5) for _ in range(clients)]
        self.answered: Counter[str] = Counter()
        self.by_weight: dict[int, Counter[str]] = {}
        self.weight: int | None = None  # set by the caller while a step is steady
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _client(self, client: traffic.HttpClient) -> None:
        while not self.stop.is_set():
            weight = self.weight
            code, track, _ = client.infer()
            self.answered[f"{track or '-'} {code if code != '0' else 'no answer'}"] += 1
            if weight is not None and track is not None:
                self.by_weight.setdefault(weight, Counter())[track] += 1
            self.stop.wait(0.03)  # about 30 requests/s per client at most

    def share(self, weight: int) -> str:
        seen = self.by_weight.get(weight, Counter())
        total = sum(seen.values())
        return f"{100 * seen['canary'] / total:.1f}% of {total}" if total else "no requests"

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in self.clients]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for c in self.clients:
            c.close()


def walk_canary(kubeconfig: Path, gateway_url: str, work: Path, echo: Echo, step_seconds: int) -> bool:
    """Apply examples/gpu-canary.yaml and print its rollout, step by step, as it happens."""
    stable = local.make_model(work / "models" / "ranker-7", seed=0)
    canary = local.make_model(work / "models" / "ranker-8", seed=1)
    isvc = canary_example(stable, canary, step_seconds)
    namespace, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    steps = isvc["spec"]["rollout"]["canary"]["steps"]
    echo(
        f"\nkinfer demo: applying examples/gpu-canary.yaml ({namespace}/{name}, canary steps {steps}), "
        f"with local model files for its pvc:// URIs and stepSeconds {step_seconds} instead of 120"
    )
    _apply(kubeconfig, isvc)
    # Every step waits for its analysis window (30 s at least) and the operator's 10 s timer.
    deadline = time.monotonic() + 180 + len(steps) * (max(step_seconds, 30) + 30)
    start, last, outcome = time.monotonic(), None, ""
    shown: set[int] = set()
    with Traffic(gateway_url, namespace, name) as load:
        while time.monotonic() < deadline and not outcome:
            out = local.kubectl(kubeconfig, "get", "kisvc", name, "-n", namespace, "-o", "json", check=False)
            state = (
                (json.loads(out.stdout).get("status") or {}).get("canary") or {}
                if out.returncode == 0
                else {}
            )
            steady = state.get("phase") == "Progressing" and state.get("appliedBy") == "HTTPRoute"
            load.weight = int(state["weight"]) if steady else None
            for weight in sorted(set(load.by_weight) - shown):
                if weight != load.weight:  # a step that is over: its share is final
                    shown.add(weight)
                    echo(f"         weight {weight:3d}%: canary answered {load.share(weight)} requests")
            seen = (state.get("summary"), state.get("handedOver"), state.get("message"))
            if state and seen != last:
                last = seen
                elapsed = time.monotonic() - start
                echo(f"  {elapsed:4.0f} s  {state.get('summary', ''):<10} {state.get('message', '')}")
            if state.get("phase") == "Failed" or state.get("handedOver"):
                outcome = state["phase"]
            time.sleep(2)
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(load.answered.items()))
    for weight in sorted(set(load.by_weight) - shown):
        echo(f"         weight {weight:3d}%: canary answered {load.share(weight)} requests")
    echo(f"  requests through the gateway (track, HTTP status): {answered}")
    for args in (("get", "kisvc", "-n", namespace), ("get", "deployments", "-n", namespace)):
        echo(f"\n$ kubectl {' '.join(args)}")
        echo(local.kubectl(kubeconfig, *args, check=False).stdout.rstrip())
    if outcome != "Succeeded":
        echo(f"\nkinfer demo: the rollout did not succeed ({outcome or 'timed out'}); see")
        echo(f"  kubectl describe kisvc {name} -n {namespace}")
        return False
    echo(f"\nkinfer demo: {namespace}/{name} promoted its canary and handed over to stable. Try:")
    echo(f"  kubectl wait --for=condition=RolloutSucceeded kisvc/{name} -n {namespace}")
    echo(f"  kubectl get events -n {namespace} --sort-by=.lastTimestamp")
    return True


def llm_example(model: Path) -> dict[str, Any]:
    """examples/llm.yaml in the demo's namespace, serving a local tiny model, sized for the bed."""
    doc: dict[str, Any] = yaml.safe_load(LLM_EXAMPLE.read_text())
    doc["metadata"]["namespace"] = NAMESPACE
    doc["spec"]["model"]["uri"] = f"file://{model}"
    doc["spec"]["resources"]["memory"] = "2Gi"
    doc["spec"]["scaling"]["maxReplicas"] = 1
    return doc


def _ready(kubeconfig: Path, namespace: str, name: str) -> bool:
    out = local.kubectl(kubeconfig, "get", "kisvc", name, "-n", namespace, "-o", "json", check=False)
    return out.returncode == 0 and local.condition(json.loads(out.stdout), "Ready").get("status") == "True"


def stream_llm(kubeconfig: Path, gateway_url: str, work: Path, echo: Echo, timeout: float) -> bool:
    """Apply examples/llm.yaml and print a streamed answer, each piece as it arrives."""
    echo("\nkinfer demo: writing a tiny language model (random weights: its answer is gibberish)")
    isvc = llm_example(tiny_lm.make_tiny_lm(work / "models" / "chat-lm"))
    name = isvc["metadata"]["name"]
    _apply(kubeconfig, isvc)
    echo(f"kinfer demo: applied examples/llm.yaml as {NAMESPACE}/{name} (generative); waiting for Ready")
    if not _wait(lambda: _ready(kubeconfig, NAMESPACE, name), timeout):
        echo(f"\nkinfer demo: {name} not Ready after {timeout:.0f} s. Look at:")
        echo(local.kubectl(kubeconfig, "describe", "kisvc", name, "-n", NAMESPACE, check=False).stdout)
        return False
    host = traffic.host(name, NAMESPACE)
    body = {"model": name, "messages": [{"role": "user", "content": LLM_PROMPT}],
            "max_tokens": 24, "temperature": 0, "stream": True}  # fmt: skip
    url = f"{gateway_url}/v1/chat/completions"
    echo(f"\n$ curl -N -H 'Host: {host}' {url} -d '{json.dumps(body)}'")
    deadline = time.monotonic() + 30  # the gateway sees the new route within seconds
    while True:
        status, pieces, said = _stream_chat(gateway_url, host, body, echo)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    if status != 200:
        echo(f"kinfer demo: POST {url} (Host: {host}) answered {status}: {said}")
        return False
    echo(f"kinfer demo: {pieces} pieces streamed; the whole answer, as a client joins them: {said}")
    if pieces == 0:
        _stream_evidence(kubeconfig, work.parent, name, echo)
        return False
    return True


def _stream_evidence(kubeconfig: Path, state: Path, name: str, echo: Echo) -> None:
    """After a 200 stream that carried no text: what the pods, their events, the runtime's log
    and the gateway's log said, so one failed run is enough to tell where the stream ended."""
    echo("\nkinfer demo: the stream ended before any text. What the test bed saw:")
    for args in (("get", "pods", "-n", NAMESPACE, "-l", f"kinfer.dev/isvc={name}", "-o", "wide"),
                 ("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp")):  # fmt: skip
        echo(f"$ kubectl {' '.join(args)}")
        echo(_last_lines(local.kubectl(kubeconfig, *args, check=False).stdout, 20))
    logs = [*sorted((state / "pods").glob(f"{NAMESPACE}_{name}-*/*.log")), state / "logs" / "gateway.log"]
    for log in logs:
        echo(f"--- the last lines of {log}")
        echo(log_tail(log, 25).rstrip())


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _stream_chat(gateway_url: str, host: str, body: dict[str, Any], echo: Echo) -> tuple[int, int, str]:
    """POST a streamed chat completion and echo each server-sent event's text with the seconds
    since the request. (status, pieces, the answer or the error)."""
    address, _, port = gateway_url.removeprefix("http://").rstrip("/").rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=60)
    started = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Host": host, "Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, 0, resp.read().decode(errors="replace")[:300]
        track = resp.getheader("kinfer-track", "-")
        echo(f"{resp.status} {resp.getheader('content-type')} (kinfer-track: {track})")
        pieces, text = 0, ""
        first_lines: list[str] = []
        for raw in resp:
            line = raw.decode().strip()
            if len(first_lines) < 6:
                first_lines.append(line)
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                echo(f"  {time.monotonic() - started:6.3f} s  [DONE]")
                break
            chunk = json.loads(line[6:])
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content", "")
            if piece:
                pieces, text = pieces + 1, text + piece
                echo(f"  {time.monotonic() - started:6.3f} s  {piece!r}")
            if choice.get("finish_reason"):
                used = chunk.get("usage") or {}
                echo(f"  {time.monotonic() - started:6.3f} s  finish_reason {choice['finish_reason']}, "
                     f"{used.get('completion_tokens', '?')} tokens")  # fmt: skip
        if pieces == 0:  # say what did come, so a stream without text can be diagnosed
            echo(f"  the stream carried no text in {time.monotonic() - started:.1f} s; "
                 f"its first lines were: {first_lines!r}")  # fmt: skip
        return 200, pieces, repr(text)
    except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
        return 0, 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def _first_inference(gateway_url: str) -> str:
    """One Open Inference Protocol v2 request through the Gateway, shown as a user would send it."""
    host = traffic.host(NAME, NAMESPACE)
    url = f"{gateway_url}/v2/models/{NAME}/infer"
    client = traffic.HttpClient(gateway_url, NAME, NAMESPACE)
    deadline = time.monotonic() + 30  # the gateway sees the new route within seconds
    code, track, error = client.infer()
    while code != "200" and time.monotonic() < deadline:
        time.sleep(1)
        code, track, error = client.infer()
    client.close()
    if code != "200":
        return f"kinfer demo: POST {url} (Host: {host}) answered {code}: {error}"
    body = traffic.MLP_BODY.decode()
    return f"\n$ curl -H 'Host: {host}' -X POST {url} -d '{body}'\n200 (kinfer-track: {track})"


def down(state: Path, echo: Echo) -> None:
    current = bed.Bed(state)
    if current.running():
        canary_namespace = yaml.safe_load(CANARY_EXAMPLE.read_text())["metadata"]["namespace"]
        # Wait, with the operator still running: it removes the InferenceServices' finalizers.
        local.kubectl(current.kubeconfig, "delete", "namespace", NAMESPACE, canary_namespace,
                      "--ignore-not-found", "--timeout=120s", check=False)  # fmt: skip
        echo(f"kinfer demo: deleted namespaces {NAMESPACE} and {canary_namespace}")
    operator = current.client(OPERATOR_CLIENT)
    if operator is not None:
        stop([operator], grace=20)
        echo(f"kinfer demo: stopped the operator (pid {operator.pid})")
    (current.clients_dir / f"{OPERATOR_CLIENT}.json").unlink(missing_ok=True)
    echo("kinfer demo: done (the test bed keeps running; `kinfer dev down` stops it)")
