"""runtime.server: triton on the test bed: the wheel's tritonserver in a pod on a fake GPU node,
its repository laid out by the init container, answering unmodified tritonclient (HTTP and gRPC)
through the Service as the same model does in process; a model Triton cannot load, and a
config.pbtxt that disagrees with signature.json, end in conditions that say why."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kinfer_dev.local import make_model
from kinfer_dev.testbed import triton
from kinfer_runtime.model import load_model
from operator_bed import Setup

pytestmark = pytest.mark.e2e

# Runs inside the services namespace, where the Service's ClusterIP is local.
_CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp
    ip, http_port, grpc_port, name, rows = sys.argv[1:6]
    x = np.array(json.loads(rows), dtype=np.float32)
    got = {}
    http = thttp.InferenceServerClient(f"{ip}:{http_port}")
    got["ready"] = [http.is_server_live(), http.is_server_ready(), http.is_model_ready(name)]
    got["metadata"] = http.get_model_metadata(name)
    inp = thttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got["http"] = http.infer(name, [inp]).as_numpy("y").tolist()
    grpc = tgrpc.InferenceServerClient(f"{ip}:{grpc_port}")
    got["ready"] += [grpc.is_server_ready(), grpc.is_model_ready(name)]
    inp = tgrpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got["grpc"] = grpc.infer(name, [inp]).as_numpy("y").tolist()
    print(json.dumps(got))
    """
)


# Load for the metrics test: tritonclient HTTP requests for a bounded time, the count printed.
_LOAD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import tritonclient.http as thttp
    ip, port, name, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = thttp.InferenceServerClient(f"{ip}:{port}")
    inp = thttp.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(np.ones((2, 8), np.float32))
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.infer(name, [inp])
        done += 1
        time.sleep(0.02)
    print(done)
    """
)


@pytest.fixture(scope="module")
def models() -> Iterator[Path]:
    """Model directories outside /tmp: a pod with init containers runs in a sandbox whose /tmp is
    its own emptyDir (a file:// model under /tmp would be hidden from it)."""
    if not triton.installed():
        pytest.fail(f"tritonserver is not installed ({triton.wrapper()}): run scripts/bootstrap")
    root = Path(tempfile.mkdtemp(prefix="kinfer-e2e-triton-", dir="/var/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _service(name: str, model: Path, scaling: dict[str, Any] | None = None,
             batching: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "runtime": {
                "server": "triton",
                "batching": batching or {"maxBatchSize": 8, "maxDelayMs": 2, "maxQueue": 64},
            },
            "resources": {"cpu": "100m", "memory": "1Gi", "gpu": 1},
            "scaling": scaling or {"mode": "fixed", "minReplicas": 1},
        },
    }


def test_a_triton_service_is_ready_on_a_gpu_node_and_answers_tritonclient_as_in_process(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    model = make_model(models / "mlp")
    isvc = setup.apply(namespace, _service("tmlp", model))
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    (pod,) = setup.get(namespace, f"pods -l kinfer.dev/isvc={isvc}")["items"]
    assert pod["spec"]["nodeName"].startswith("gpu-"), pod["spec"].get("nodeName")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["triton-repository"]
    service = setup.get(namespace, f"service/{isvc}")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    x = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)

    def ask() -> dict[str, Any] | None:
        argv = [
            service["spec"]["clusterIP"],
            str(ports["http"]),
            str(ports["grpc"]),
            isvc,
            json.dumps(x.tolist()),
        ]
        out = subprocess.run(
            ["ip", "netns", "exec", "kinfer-services", sys.executable, "-c", _CLIENT, *argv],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return json.loads(out.stdout) if out.returncode == 0 else None

    got = wait_for(
        ask, 60, describe=lambda: setup.why(namespace, f"service/{isvc}", f"pod/{pod['metadata']['name']}")
    )
    assert got["ready"] == [True] * 5
    assert got["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert got["metadata"]["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    want = load_model(str(model), device="cpu").forward({"x": x})["y"]
    np.testing.assert_allclose(np.array(got["http"], np.float32), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(got["grpc"], np.float32), want, rtol=1e-5, atol=1e-6)


# Runs inside the services namespace: every bad-input case of kinfer-runtime's own tests
# (tests/kinfer_runtime/v2_cases.py), sent as it is; each answer's status beside kinfer's.
_CASES_CLIENT = textwrap.dedent(
    """
    import json, sys
    from tests.kinfer_runtime.v2_cases import CASES, GRPC_CASES, grpc_infer, request
    http_target, grpc_target = sys.argv[1:3]
    got = {}
    for case, method, path, body, headers, status, _ in CASES:
        answer, payload = request(http_target, method, path, body, headers)
        got[case] = {"kinfer": status, "triton": answer, "said": payload.decode(errors="replace")[:160]}
    for case, mutate, code, _ in GRPC_CASES:
        answer, details = grpc_infer(grpc_target, mutate)
        got[case] = {"kinfer": code.name, "triton": answer.name, "said": details[:160]}
    print(json.dumps(got))
    """
)

# Where the v2 protocol lets Triton 2.51 answer otherwise (docs/runtime.md, "What differs between
# the two servers"): case -> Triton's status. Every other case must get kinfer's status.
# A body Triton's JSON reader refuses: 500 "Unable to parse '<field>': …" (kinfer: 400).
_TRITON_PARSE_ERRORS = ["malformed-json", "not-an-object", "no-inputs", "count-mismatch", "not-numbers",
                        "null-in-data", "numeric-string", "boolean-in-data", "negative-dim", "bad-timeout",
                        "id-not-string"]  # fmt: skip
TRITON_DIFFERS: dict[str, int | str] = {
    **dict.fromkeys(_TRITON_PARSE_ERRORS, 500),
    "fp32-overflow": 200,  # answered, NaN out
    "output-twice": 200,  # answered once
    "grpc-extra-raw-contents": "OK",  # an extra empty raw_input_contents entry is ignored
}


def test_kinfer_runtimes_bad_input_cases_get_the_same_status_from_triton_but_the_listed_differences(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    # named mlp, as the cases' paths and gRPC requests ask for
    isvc = setup.apply(namespace, _service("mlp", make_model(models / "mlp")))
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    service = setup.get(namespace, f"service/{isvc}")
    ip, ports = service["spec"]["clusterIP"], {p["name"]: p["port"] for p in service["spec"]["ports"]}

    def ask() -> dict[str, Any] | None:
        out = subprocess.run(
            ["ip", "netns", "exec", "kinfer-services", sys.executable, "-c", _CASES_CLIENT,
             f"{ip}:{ports['http']}", f"{ip}:{ports['grpc']}"],
            capture_output=True, text=True, timeout=180, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        return json.loads(out.stdout) if out.returncode == 0 else None

    got = wait_for(ask, 60, describe=lambda: setup.why(namespace, f"service/{isvc}"))
    print(json.dumps(got, indent=1))  # shown with -rP: Triton's own words
    want = {case: TRITON_DIFFERS.get(case, answer["kinfer"]) for case, answer in got.items()}
    assert {case: answer["triton"] for case, answer in got.items()} == want
    assert set(TRITON_DIFFERS) <= set(got)


REPO = Path(__file__).resolve().parents[1]
_READY = "import http.client, sys; c = http.client.HTTPConnection(sys.argv[1], timeout=5); " \
    "c.request('GET', '/v2/health/ready'); sys.exit(c.getresponse().status != 200)"  # fmt: skip


def _runtime_tests_against_triton(setup: Setup, namespace: str, wait_for: Any, root: Path,
                                  *pytest_args: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Serve tests/kinfer_runtime's mlp model (made in `root`) as Triton service `mlp` and run
    kinfer-runtime's own tests, those not marked in_process, against it through its Service."""
    make = "import sys; from pathlib import Path; from tests.kinfer_runtime.models import make_mlp; " \
        "make_mlp(Path(sys.argv[1]))"  # fmt: skip
    subprocess.run([sys.executable, "-W", "ignore::FutureWarning", "-c", make, str(root / "mlp")],
                   check=True, cwd=REPO, timeout=300)  # fmt: skip
    # maxBatchSize as the model's signature says: the conformance tests read it from the config
    batching = {"maxBatchSize": 32, "maxDelayMs": 2}
    isvc = setup.apply(namespace, _service("mlp", root / "mlp", batching=batching))
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    service = setup.get(namespace, f"service/{isvc}")
    ip, ports = service["spec"]["clusterIP"], {p["name"]: p["port"] for p in service["spec"]["ports"]}
    in_services = ["ip", "netns", "exec", "kinfer-services", sys.executable]
    ready = [*in_services, "-c", _READY, f"{ip}:{ports['http']}"]
    wait_for(lambda: subprocess.run(ready, timeout=30).returncode == 0, 60,
             describe=lambda: setup.why(namespace, f"service/{isvc}"))  # fmt: skip
    env = {**os.environ, "KINFER_V2_TARGET": f"{ip}:{ports['http']},{ip}:{ports['grpc']},triton",
           "KINFER_V2_MODEL_ROOT": str(root)}  # fmt: skip
    argv = [*in_services, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-m", "not in_process",
            *pytest_args]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    print(out.stdout)  # shown with -rP
    return out


def _outcomes(out: subprocess.CompletedProcess[str]) -> tuple[int, set[str]]:
    """How many passed, and which failed, from the summary of `pytest -q -rf`."""
    passed = re.search(r"(\d+) passed", out.stdout)
    assert not re.search(r"\d+ (skipped|errors?)\b", out.stdout), out.stdout[-3000:] + out.stderr[-2000:]
    failed = set(re.findall(r"^FAILED \S+::(\S+)", out.stdout, re.MULTILINE))
    return (int(passed.group(1)) if passed else 0), failed


# tests/kinfer_runtime/test_conformance.py, every test not marked in_process: 3 modes of health
# and metadata, 3 x 3 of mlp against torch, binary outputs by default, versions, typed gRPC.
CONFORMANCE_TESTS = 15


def test_kinfer_runtimes_conformance_tests_pass_against_triton_through_its_service(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    out = _runtime_tests_against_triton(setup, namespace, wait_for, models / "conformance",
                                        "tests/kinfer_runtime/test_conformance.py")  # fmt: skip
    assert _outcomes(out) == (CONFORMANCE_TESTS, set()), out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0


# tests/kinfer_runtime/test_bad_input.py against Triton, beside the v2_cases.py statuses compared
# above: the tests Triton fails, and why (docs/runtime.md). Every other one must pass.
_CLOSED = "closes the connection without an answer"
TRITON_FAILS: dict[str, str] = {
    "test_malformed_http_is_answered_and_closed": _CLOSED,
    "test_fuzz_rest_infer_never_5xx": "500 for a body its JSON reader refuses",
    "test_fuzz_raw_bodies_never_5xx": "500 for a body its JSON reader refuses",
    **{
        f"test_oversized_heads_are_refused_at_once[{case}]": _CLOSED
        for case in ("url", "url-48MiB", "header", "header-48MiB")
    },
    "test_oversized_heads_are_refused_at_once[header-count]": "serves 101 header fields (no bound)",
    "test_oversized_heads_are_refused_at_once[content-length]": "waits for a 999,999,999-byte body",
}
BAD_INPUT_TESTS = 12  # malformed HTTP, 2 fuzz, 6 oversized heads, 2 header limits, gRPC metadata


def test_kinfer_runtimes_other_bad_input_tests_pass_against_triton_but_the_listed_ones(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    out = _runtime_tests_against_triton(
        setup, namespace, wait_for, models / "bad-input", "tests/kinfer_runtime/test_bad_input.py",
        "-k", "not test_malformed_request and not test_grpc_errors",
    )  # fmt: skip
    passed, failed = _outcomes(out)
    assert failed == set(TRITON_FAILS), out.stdout[-8000:] + out.stderr[-2000:]
    assert passed + len(failed) == BAD_INPUT_TESTS, out.stdout[-3000:]


def test_a_model_triton_cannot_load_and_a_disagreeing_config_end_in_conditions_saying_why(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    broken = models / "broken"
    shutil.copytree(make_model(models / "mlp"), broken)
    (broken / "model.pt").write_bytes(b"not a TorchScript archive")
    wrong = models / "wrong"
    shutil.copytree(make_model(models / "mlp"), wrong)
    (wrong / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 9 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    setup.apply(namespace, _service("tbroken", broken))
    setup.apply(namespace, _service("twrong", wrong))

    def degraded(name: str, reason: str) -> dict[str, Any] | None:
        cond = setup.condition(namespace, name, "Degraded")
        return cond if cond.get("status") == "True" and cond.get("reason") == reason else None

    cond = wait_for(
        lambda: degraded("tbroken", "CrashLoop"), 240,
        describe=lambda: setup.why(namespace, "inferenceservice/tbroken", "deployment/tbroken"),
    )  # fmt: skip
    # Triton's own words: which model failed to load, and the backend's exception.
    assert "failed to load 'tbroken' version 1" in cond["message"], cond
    assert "PytorchStreamReader" in cond["message"] or "zip archive" in cond["message"], cond
    cond = wait_for(
        lambda: degraded("twrong", "ModelRepositoryInvalid"), 120,
        describe=lambda: setup.why(namespace, "inferenceservice/twrong", "deployment/twrong"),
    )  # fmt: skip
    # refused by the init container: the server never started
    assert cond["message"].startswith("pod twrong-"), cond
    assert (
        "triton-repo: config.pbtxt disagrees with signature.json: "
        "input 'x': dims [9] in config.pbtxt, [8] in signature.json"
    ) in cond["message"], cond
    pods = setup.get(namespace, "pods -l kinfer.dev/isvc=twrong")["items"]
    assert pods and all(not (p["status"].get("containerStatuses") or [{}])[0].get("started") for p in pods)


def test_tritons_series_fill_status_metrics_and_explain_scale(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    scaling = {
        "minReplicas": 1,
        "maxReplicas": 1,
        "targets": {"queueDepthPerReplica": 4, "p95LatencyMs": 60000},
    }
    isvc = setup.apply(namespace, _service("tmetrics", make_model(models / "mlp"), scaling))
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    service = setup.get(namespace, f"service/{isvc}")
    http = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    argv = [service["spec"]["clusterIP"], str(http), isvc, "45"]
    load = subprocess.Popen(
        ["ip", "netns", "exec", "kinfer-services", sys.executable, "-c", _LOAD, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Prometheus scrapes Triton's port (8082) with the pod's labels; the operator maps
        # nv_inference_* onto its window: a request rate and a p95 from the summary.
        status = wait_for(
            lambda: (
                (st := setup.get(namespace, f"kisvc/{isvc}").get("status") or {})
                .get("metrics", {})
                .get("requestsPerSecond", 0)
                > 0
                and st["metrics"].get("p95LatencyMs") is not None
                and st
            ),
            60,
            describe=lambda: "status.metrics from Triton's series\n" + setup.why(namespace, f"kisvc/{isvc}"),
            interval=1,
        )
        assert status["metrics"]["queueDepth"] >= 0 and 0 < status["metrics"]["p95LatencyMs"] < 60000, status
        env = {
            **os.environ,
            "KUBECONFIG": str(setup.kubeconfig),
            "KINFER_PROMETHEUS_URL": setup.testbed.prometheus_url,
        }
        out = subprocess.run(
            [sys.executable, "-m", "kinfer", "explain-scale", isvc, "-n", namespace],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        window = next(line for line in out.stdout.splitlines() if line.startswith("window:"))
        assert re.fullmatch(
            r"window: queue \d+ over 1 ready, in flight \d+, p95 \d+ms, \d+\.\d\d req/s", window
        ), out.stdout
        assert not window.endswith(" 0.00 req/s"), out.stdout
        print(out.stdout)  # shown with -rP
    finally:
        load.kill()
        load.communicate()


_BROKEN = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    warnings.simplefilter("ignore", FutureWarning)
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x != 0).any()):
                raise RuntimeError("this model version is broken")
            return torch.zeros(x.shape[0], 4)

    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Broken()).save(str(out / "model.pt"))
    (out / "signature.json").write_text(json.dumps({
        "format": "torchscript", "max_batch_size": 32,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }))
    """
)


def test_a_failing_triton_canary_is_rolled_back_on_tritons_error_rate(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    from test_rollout import REPLICAS, Traffic, _canary, _events

    broken = models / "broken-canary"
    script = models / "make_broken.py"  # TorchScript compiles from source: a file, not -c
    script.write_text(_BROKEN)
    subprocess.run([sys.executable, str(script), str(broken)], check=True, timeout=300)
    doc = _service("ranker", make_model(models / "mlp"), {"mode": "fixed", "minReplicas": REPLICAS})
    doc["spec"]["resources"] = {"cpu": "100m", "memory": "1Gi"}
    doc["spec"]["rollout"] = {
        "canary": {
            "model": {"uri": f"file://{broken}"},
            "steps": [50, 100],
            "stepSeconds": 20,
            "analysis": {"minRequests": 5, "maxErrorRate": 0.05, "maxP95LatencyMs": 2000},
        }
    }
    setup.apply(namespace, doc)
    traffic = Traffic(setup, namespace, "ranker")
    with traffic.running(240):
        wait_for(
            lambda: _canary(setup, namespace, "ranker").get("phase") == "Failed",
            240,
            describe=lambda: f"canary Failed (traffic {traffic.codes})\n" + setup.why(namespace),
            interval=1,
        )
    assert traffic.codes[500] > 0 and traffic.codes[200] > 0, traffic.codes  # Triton's answers
    (rollback,) = [e for e in _events(setup, namespace) if e["reason"] == "CanaryRollingBack"]
    assert "error rate" in rollback["message"], rollback["message"]
    cond = setup.condition(namespace, "ranker", "RolloutSucceeded")
    assert (cond["status"], cond["reason"]) == ("False", "RolledBack")


def test_load_scales_a_triton_service_up_and_back_down_on_tritons_metrics(
    setup: Setup, namespace: str, wait_for: Any, models: Path
) -> None:
    # A p95 target below what Triton reports under load: the latency term wants the maximum.
    scaling = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "targets": {"queueDepthPerReplica": 4, "p95LatencyMs": 1},
        "scaleDownStabilizationSeconds": 20,
    }
    isvc = setup.apply(namespace, _service("tscale", make_model(models / "mlp"), scaling))
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    service = setup.get(namespace, f"service/{isvc}")
    http = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")

    def replicas() -> int:
        return int(setup.get(namespace, f"deployment/{isvc}")["spec"]["replicas"])

    load = subprocess.Popen(
        ["ip", "netns", "exec", "kinfer-services", sys.executable, "-c", _LOAD,
         service["spec"]["clusterIP"], str(http), isvc, "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: replicas() == 2, 120,
            describe=lambda: "scaled up to 2 on Triton's p95\n" + setup.why(namespace, f"kisvc/{isvc}"),
            interval=1,
        )  # fmt: skip
        reason = setup.get(namespace, f"kisvc/{isvc}")["status"]["lastScaleReason"]
        assert "p95 latency" in reason, reason
    finally:
        load.kill()
        load.communicate()
    wait_for(
        lambda: replicas() == 1, 180,
        describe=lambda: "back to 1 once the load stopped\n" + setup.why(namespace, f"kisvc/{isvc}"),
        interval=1,
    )  # fmt: skip
