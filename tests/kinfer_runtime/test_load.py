"""Real server processes under load: batching seen in metrics, overload, deadlines, drain."""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from tests.kinfer_runtime.server_proc import Server, http_get, metric, start_server

pytestmark = pytest.mark.slow


def _conn(server: Server) -> http.client.HTTPConnection:
    host, port = server.http.split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def _infer_body(x: np.ndarray, **top: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], **top}).encode()  # fmt: skip


def _post(server: Server, body: bytes, conn: http.client.HTTPConnection | None = None
          ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:  # fmt: skip
    c = conn or _conn(server)
    c.request("POST", "/v2/models/slow/infer", body=body)
    resp = c.getresponse()
    doc = json.loads(resp.read())
    if conn is None:
        c.close()
    return resp.status, doc, resp


@pytest.fixture
def slow_server(model_root: Path, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    args, delay = getattr(request, "param", ((), "0.05"))
    server = start_server(model_root / "slow", logs_dir, *args, env={"KINFER_TEST_DELAY_S": delay})
    yield server
    if server.proc.poll() is None:
        server.stop()


@pytest.mark.parametrize("slow_server", [(("--max-delay-ms", "20"), "0.02")], indirect=True)
def test_concurrent_clients_batch_and_get_their_own_rows(slow_server: Server) -> None:
    rng = np.random.default_rng(0)

    def client(i: int) -> None:
        conn = _conn(slow_server)
        for j in range(4):
            rows = int(rng.integers(1, 4))
            x = np.full((rows, 4), i * 100 + j, np.float32)
            status, doc, _ = _post(slow_server, _infer_body(x), conn)
            assert status == 200, doc
            got = np.array(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
            np.testing.assert_array_equal(got, x * 2)
        conn.close()

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(client, range(12)))
    text = http_get(slow_server, "/metrics")[1].decode()
    batches = metric(text, "kinfer_batch_size_count")
    rows = metric(text, "kinfer_batch_size_sum")
    assert rows / batches > 1.5, text  # batches of more than one request formed
    assert metric(text, "kinfer_requests_total", code="200") == 48
    for name in ("kinfer_queue_depth", "kinfer_inflight_requests",
                 "kinfer_request_duration_seconds_bucket", "kinfer_batch_size_bucket"):  # fmt: skip
        assert name in text
    for phase in ("total", "queue", "compute"):
        assert metric(text, "kinfer_request_duration_seconds_count", phase=phase) >= 48
    assert metric(text, "kinfer_queue_depth") == 0
    assert metric(text, "kinfer_inflight_requests") == 0


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "slow_server", [(("--max-batch-size", "2", "--max-queue", "4", "--max-delay-ms", "0"), "0.1")],
    indirect=True,
)  # fmt: skip
def test_overload_answers_429_and_stays_ready(slow_server: Server) -> None:
    x = np.ones((1, 4), np.float32)

    def burst() -> list[tuple[int, dict[str, Any]]]:
        with ThreadPoolExecutor(24) as pool:
            return [r[:2] for r in pool.map(lambda _: _post(slow_server, _infer_body(x)), range(24))]

    results = burst()
    codes = [s for s, _ in results]
    assert 429 in codes and 200 in codes, codes
    assert set(codes) <= {200, 429}
    assert any("queue full" in d.get("error", "") for s, d in results if s == 429)
    assert http_get(slow_server, "/v2/health/live")[0] == 200
    assert http_get(slow_server, "/v2/health/ready")[0] == 200
    rss = _rss_kib(slow_server.proc.pid)
    for _ in range(2):
        burst()
    assert _rss_kib(slow_server.proc.pid) < rss + 30_000  # no growth with repeated overload

    # gRPC says RESOURCE_EXHAUSTED for the same condition
    client = tgrpc.InferenceServerClient(slow_server.grpc)

    def grpc_call(_: int) -> str:
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        try:
            client.infer("slow", [inp])
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(grpc_call, range(24)))
    assert "StatusCode.RESOURCE_EXHAUSTED" in statuses, statuses
    text = http_get(slow_server, "/metrics")[1].decode()
    assert metric(text, "kinfer_requests_total", code="429") > 0


@pytest.mark.parametrize("slow_server", [(("--max-batch-size", "1"), "0.3")], indirect=True)
def test_deadline_in_queue_is_504_and_the_model_never_runs_it(slow_server: Server) -> None:
    x = np.ones((1, 4), np.float32)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(_post, slow_server, _infer_body(x))
        time.sleep(0.1)  # the first request holds the model for 300 ms
        started = time.monotonic()
        status, doc, _ = _post(slow_server, _infer_body(x, parameters={"timeout": 50_000}))
        assert status == 504, doc
        assert "deadline exceeded" in doc["error"] and "queued" in doc["error"]
        assert time.monotonic() - started < 0.25  # answered at the deadline, not after the batch
        assert busy.result()[0] == 200
        # gRPC: a client deadline becomes DEADLINE_EXCEEDED too
        busy = pool.submit(_post, slow_server, _infer_body(x))
        time.sleep(0.1)
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            tgrpc.InferenceServerClient(slow_server.grpc).infer("slow", [inp], client_timeout=0.05)
        assert info.value.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)
        assert busy.result()[0] == 200
    text = http_get(slow_server, "/metrics")[1].decode()
    assert metric(text, "kinfer_batch_size_count") == 2  # only the two busy requests ran


@pytest.mark.parametrize("slow_server", [(("--max-delay-ms", "30"), "0.02")], indirect=True)
def test_a_failing_batch_answers_every_caller(slow_server: Server) -> None:
    xs = [np.full((1, 4), i, np.float32) for i in range(6)]
    xs[3][0, 0] = -1  # poisons the batch it lands in
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda x: _post(slow_server, _infer_body(x))[:2], xs))
    failed = [d for s, d in results if s == 500]
    assert failed and all("poisoned row" in d["error"] for d in failed)
    assert all(s in (200, 500) for s, _ in results)
    status, _, _ = _post(slow_server, _infer_body(xs[0]))
    assert status == 200


@pytest.mark.parametrize(
    "slow_server", [(("--drain-delay-s", "0.5", "--drain-linger-s", "0.5"), "0.02")], indirect=True
)
def test_sigterm_drains_under_load_and_exits_zero(slow_server: Server) -> None:
    stop_at = time.monotonic() + 20  # bounded: no client loops past this
    sigterm_sent = threading.Event()
    results: list[tuple[str, Any]] = []
    lock = threading.Lock()
    x = np.ones((1, 4), np.float32)
    connections = [_conn(slow_server) for _ in range(8)]
    for c in connections:
        c.connect()  # every connection exists before SIGTERM

    def client(conn: http.client.HTTPConnection) -> None:
        while time.monotonic() < stop_at:
            try:
                status, _, resp = _post(slow_server, _infer_body(x), conn)
            except Exception as exc:  # counted: a request on an accepted connection failed
                with lock:
                    results.append(("error", repr(exc)))
                return
            with lock:
                results.append(("after" if sigterm_sent.is_set() else "before", status))
            if resp.getheader("connection", "").lower() == "close":
                return  # the server is draining and said so

    threads = [threading.Thread(target=client, args=(c,)) for c in connections]
    for t in threads:
        t.start()
    time.sleep(0.5)
    slow_server.proc.send_signal(signal.SIGTERM)
    sigterm_sent.set()
    time.sleep(0.1)
    assert http_get(slow_server, "/v2/health/ready")[0] == 503  # unready at once, still answering
    for t in threads:
        t.join(30)
    assert slow_server.proc.wait(30) == 0
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors
    assert all(status == 200 for _, status in results)
    assert sum(1 for when, _ in results if when == "after") >= 8  # served through the drain
    assert any(line.get("msg") == "stopped" for line in slow_server.log_lines())
