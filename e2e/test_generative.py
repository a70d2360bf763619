"""A generative InferenceService on the test bed: Ready on a fake GPU node, and an answer streamed
through its Service (the launcher's relay on the ClusterIP, as kube-proxy would carry it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from operator_bed import MODELS, ROOT, Setup, example

pytestmark = pytest.mark.e2e

# Runs inside the services namespace, where the Service's ClusterIP is local: a streamed
# completion through the relay, printed as the SSE lines it got.
_CLIENT = textwrap.dedent(
    """
    import http.client, json, sys
    conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=120)
    body = json.dumps({"model": sys.argv[3], "prompt": "hello world", "max_tokens": 8,
                       "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    print(resp.status, resp.getheader("content-type"))
    for line in resp:
        if line.strip():
            print(line.decode().strip())
    """
)


def _tiny_lm(directory: Path) -> Path:
    if not (directory / "signature.json").is_file():
        script = "import sys; from pathlib import Path; from kinfer_dev.tiny_lm import make_tiny_lm; "
        script += "make_tiny_lm(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", script, str(directory)], cwd=ROOT, check=True, timeout=600)
    return directory


def test_generative_service_is_ready_on_a_gpu_node_and_streams_through_its_service(
    setup: Setup, namespace: str, wait_for: Any
) -> None:
    doc = example("llm", _tiny_lm(MODELS / "tiny-lm"))
    doc["spec"]["resources"]["memory"] = "2Gi"
    doc["spec"]["scaling"]["maxReplicas"] = 1
    isvc = setup.apply(namespace, doc)
    setup.wait_ready(wait_for, namespace, isvc, timeout=300)
    pods = setup.get(namespace, f"pods -l kinfer.dev/isvc={isvc}")["items"]
    assert pods and all(p["spec"]["nodeName"].startswith("gpu-") for p in pods), [
        p["spec"].get("nodeName") for p in pods
    ]
    service = setup.get(namespace, f"service/{isvc}")
    ip = service["spec"]["clusterIP"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")

    def stream() -> list[str] | None:
        out = subprocess.run(
            ["ip", "netns", "exec", "kinfer-services", sys.executable, "-c", _CLIENT, ip, str(port), isvc],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        lines = out.stdout.splitlines()
        return lines if lines and lines[0].startswith("200") else None

    lines = wait_for(stream, 60, describe=lambda: setup.why(namespace, f"service/{isvc}"), interval=1)
    assert "text/event-stream" in lines[0]
    assert lines[-1] == "data: [DONE]", lines
    chunks = [json.loads(line[6:]) for line in lines[1:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert 1 <= chunks[-1]["usage"]["completion_tokens"] <= 8
    assert chunks[-1]["model"] == isvc
