"""A real `kinfer-runtime` process on 127.0.0.1 with free ports, for the tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.info['http_port']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.info['grpc_port']}"

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@dataclass(frozen=True)
class Remote:
    """A v2 server the tests did not start (Triton on the test bed): addresses only."""

    http: str
    grpc: str


def start_server(
    model_dir: Path, tmp: Path, *args: str, env: dict[str, str] | None = None,
    wait_ready: bool = True, timeout: float = 90,
) -> Server:  # fmt: skip
    """Start a runtime on free ports (port 0) and wait (with a deadline) until it is ready."""
    log_path = tmp / f"server-{model_dir.name}-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable, "-m", "kinfer_runtime", "--model-uri", f"file://{model_dir}",
        "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
        "--drain-delay-s", "0.1", *args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(proc, log_path)
    want = "ready" if wait_ready else "listening"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log_lines():
            if line.get("msg") == "listening":
                server.info = line
            if line.get("msg") == want and server.info:
                return server
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not become {want}:\n{log_path.read_text()}")


def http_get(server: Server, path: str) -> tuple[int, bytes]:
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in a /metrics text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
