"""Requests through the test bed's Gateway, the way a client outside the cluster sends them.

Each InferenceService's routes match the host NAME.NAMESPACE.DOMAIN (HTTP `Host`, gRPC
`:authority`); every answer names the track that served it (`kinfer-track`). `Counts` tallies
who answered and how, for the canary share and for failed requests.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DOMAIN = "kinfer.local"  # the operator's default gateway.domain
MLP_BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
).encode()


def host(name: str, namespace: str, domain: str = DOMAIN) -> str:
    return f"{name}.{namespace}.{domain}"


@dataclass
class Counts:
    """Answers by track (successes) and by status (HTTP code, or the gRPC status name)."""

    tracks: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, code: str, track: str | None, error: str = "") -> None:
        with self.lock:
            self.codes[code] += 1
            if track is not None:
                self.tracks[track] += 1
            if error and len(self.errors) < 20:
                self.errors.append(error)

    @property
    def total(self) -> int:
        return sum(self.tracks.values())

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code not in ("200", "OK"))

    def share(self, track: str = "canary") -> float:
        return 100.0 * self.tracks[track] / self.total if self.total else float("nan")


class HttpClient:
    """One keep-alive connection to the gateway's HTTP listener (reopened after a failure)."""

    def __init__(self, url: str, name: str, namespace: str, timeout: float = 10) -> None:
        hostport = url.removeprefix("http://").rstrip("/")
        self.address, _, port = hostport.rpartition(":")
        self.port = int(port)
        self.name, self.host, self.timeout = name, host(name, namespace), timeout
        self.conn: http.client.HTTPConnection | None = None

    def infer(self, headers: dict[str, str] | None = None) -> tuple[str, str | None, str]:
        """(status, track that answered or None, error text)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        try:
            self.conn.request(
                "POST", f"/v2/models/{self.name}/infer", MLP_BODY,
                {"Host": self.host, "Content-Type": "application/json", **(headers or {})},
            )  # fmt: skip
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return "0", None, f"{type(e).__name__}: {e}"
        if resp.getheader("connection", "").lower() == "close":
            self.close()
        code = str(resp.status)
        if resp.status != 200:
            return code, None, body[:200].decode(errors="replace")
        return code, resp.getheader("kinfer-track", "?"), ""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class GrpcClient:
    """A gRPC channel (h2c) to the gateway's gRPC listener, `:authority` set to the route's host."""

    def __init__(self, target: str, name: str, namespace: str, timeout: float = 10) -> None:
        import grpc  # type: ignore[import-untyped]
        from tritonclient.grpc import service_pb2 as pb  # type: ignore[import-untyped]
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        self.grpc, self.timeout = grpc, timeout
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", host(name, namespace))]
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 8])
        tensor.contents.fp32_contents.extend([0.5] * 8)
        self.request = pb.ModelInferRequest(model_name=name, inputs=[tensor])

    def infer(self, headers: dict[str, str] | None = None) -> tuple[str, str | None, str]:
        metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        try:
            _, call = self.stub.ModelInfer.with_call(self.request, timeout=self.timeout, metadata=metadata)
        except self.grpc.RpcError as e:
            return e.code().name, None, str(e.details())
        answered = dict(call.initial_metadata())
        return "OK", str(answered.get("kinfer-track", "?")), ""

    def close(self) -> None:
        self.channel.close()


def run(clients: list[Any], count: int, seconds: float, headers: dict[str, str] | None = None,
        pause: float = 0.0) -> Counts:  # fmt: skip
    """Send `count` requests in all (or stop after `seconds`), one thread per client."""
    counts = Counts()
    deadline = time.monotonic() + seconds
    left = [count]
    lock = threading.Lock()

    def loop(client: Any) -> None:
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            code, track, error = client.infer(headers)
            counts.add(code, track, error)
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return counts


class Steady:
    """Background load at a steady pace until stopped: every answer is counted (no request
    lost means `counts.failed == 0`)."""

    def __init__(self, clients: list[Any], pause: float = 0.02) -> None:
        self.clients, self.pause = clients, pause
        self.counts = Counts()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in clients]

    def _loop(self, client: Any) -> None:
        while not self.stop.is_set():
            code, track, error = client.infer()
            self.counts.add(code, track, error)
            self.stop.wait(self.pause)

    def __enter__(self) -> Steady:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        for c in self.clients:
            c.close()
