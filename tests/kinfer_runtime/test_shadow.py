"""Canary drift check (`shadow.py`): the comparison, the sampler, the I/O shell on fakes, and two
real runtime processes on 127.0.0.1 — a stable one and a canary shadowing to it."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from kinfer_runtime import settings
from kinfer_runtime.batching import Batcher
from kinfer_runtime.metrics import DIFF_BUCKETS, RuntimeMetrics
from kinfer_runtime.model import load_model
from kinfer_runtime.protocol import codec
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.errors import InvalidInput, ModelFailed
from kinfer_runtime.protocol.v2_types import InferRequest, InferResponse, Tensor
from kinfer_runtime.shadow import (
    AnswerError,
    Shadow,
    ShadowFailure,
    TokenBucket,
    WarnLimiter,
    compare,
    decode_answer,
    encode_request,
    urllib_post,
)
from tests.kinfer_runtime.models import make_slow
from tests.kinfer_runtime.server_proc import Server, http_get, metric, start_server

# ---- compare (pure) ----


def test_compare_equal_outputs() -> None:
    y = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]], np.float32)
    got = compare({"y": y, "z": np.array([1, 2])}, {"y": y.copy(), "z": np.array([1, 2])})
    assert (got.max_abs_diff, got.rows, got.argmax_agree) == (0.0, 2, 2)


def test_compare_different_values_gives_the_largest_difference_over_all_outputs() -> None:
    y = np.zeros((2, 3), np.float32)
    got = compare({"y": y, "z": np.array([1.0])}, {"y": y + 0.25, "z": np.array([-2.0])})
    assert got.max_abs_diff == 3.0
    assert got.argmax_agree == 2  # all-equal rows: argmax 0 on both sides


@pytest.mark.parametrize(
    "stable",
    [
        {"y": np.zeros((3, 2), np.float32)},  # shape
        {"y": np.zeros((2, 3), np.float32), "extra": np.zeros(1)},  # an output the canary lacks
        {"other": np.zeros((2, 3), np.float32)},  # name
    ],
)
def test_compare_mismatch_is_an_infinite_difference(stable: dict[str, Any]) -> None:
    got = compare({"y": np.zeros((2, 3), np.float32)}, stable)
    assert got.max_abs_diff == math.inf
    assert got.rows == 2
    expected_agree = 2 if stable.get("y", np.empty(0)).shape == (2, 3) else 0
    assert got.argmax_agree == expected_agree


def test_compare_counts_argmax_agreement_per_row_of_the_first_output() -> None:
    canary = np.array([[1, 5, 2], [9, 0, 0], [0, 0, 7], [3, 4, 0]], np.float32)
    stable = np.array([[1, 6, 2], [0, 9, 0], [0, 0, 8], [5, 4, 0]], np.float32)
    got = compare({"y": canary, "second": np.zeros(4)}, {"y": stable, "second": np.zeros(4)})
    assert (got.rows, got.argmax_agree, got.max_abs_diff) == (4, 2, 9.0)
    one_d = compare({"y": np.array([0.1, 0.7, 0.2])}, {"y": np.array([0.1, 0.6, 0.3])})
    assert (one_d.rows, one_d.argmax_agree) == (1, 1)  # a 1-D output is one row
    assert one_d.max_abs_diff == pytest.approx(0.1)


def test_compare_nan_infinities_and_bytes() -> None:
    nan, inf = math.nan, math.inf
    assert compare({"y": np.array([nan, inf, 1.0])}, {"y": np.array([nan, inf, 1.0])}).max_abs_diff == 0
    assert compare({"y": np.array([nan, 1.0])}, {"y": np.array([0.0, 1.0])}).max_abs_diff == inf
    words = np.array([["a", "b"], ["c", "d"]], dtype=object)  # a model answers str, JSON gives bytes
    as_bytes = np.array([[b"a", b"b"], [b"c", b"x"]], dtype=object)
    got = compare({"s": words}, {"s": as_bytes})
    assert (got.max_abs_diff, got.rows, got.argmax_agree) == (inf, 2, 1)


# ---- sampling (pure, timestamps passed in) ----


def test_token_bucket_never_admits_more_than_burst_plus_rate_times_window() -> None:
    rate = 3.0
    bucket = TokenBucket(rate)
    times = [i / 1000 for i in range(10_000)]  # an offer every millisecond for 10 s
    admitted = [t for t in times if bucket.take(t)]
    assert 30 <= len(admitted) <= 1 + rate * 10
    for window in (0.1, 0.5, 1.0, 3.3):
        worst = max(sum(1 for u in admitted if t <= u < t + window) for t in admitted)
        assert worst <= 1 + rate * window
    assert TokenBucket(1.0).take(5.0)  # starts full
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0.0)


def test_token_bucket_refills_only_up_to_its_burst() -> None:
    bucket = TokenBucket(1.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.5)
    assert [bucket.take(1000.0), bucket.take(1000.0)] == [True, False]  # a long idle: still one


def test_warn_limiter_once_a_minute_per_kind() -> None:
    limiter = WarnLimiter(60.0)
    seen = [("http", 0), ("http", 30), ("timeout", 31), ("http", 59.9), ("http", 60.0), ("timeout", 60)]
    said = [limiter.allow(kind, t) for kind, t in seen]
    assert said == [True, False, True, False, True, False]


# ---- wire (pure) ----


def test_shadow_request_carries_the_same_inputs_and_asks_for_the_same_outputs() -> None:
    x = np.array([[0.1, -2.5], [3.0, 1e-7]], np.float32)
    s = np.array([b"caf\xc3\xa9", b""], dtype=object)
    body = encode_request([Tensor("x", "FP32", (2, 2), x), Tensor("s", "BYTES", (2,), s)], ["y"], "r1")
    back = codec.decode_infer_request(body, None, "m", "")
    assert back.id == "r1"
    np.testing.assert_array_equal(back.inputs[0].data, x)  # float32 survives JSON exactly
    assert back.inputs[1].data.tolist() == [b"caf\xc3\xa9", b""]
    assert back.outputs is not None
    assert [(o.name, o.binary) for o in back.outputs] == [("y", False)]


def test_decode_answer_reads_a_v2_response_and_rejects_anything_else() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, _ = codec.encode_infer_response(InferResponse("m", "1", [Tensor("y", "FP32", (2, 3), y)]))
    np.testing.assert_array_equal(decode_answer(body)["y"], y)
    for bad in (b"<html>", b"[]", b'{"outputs": [{"name": "y"}]}',
                b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1]}]}'):  # fmt: skip
        with pytest.raises(AnswerError):
            decode_answer(bad)


# ---- the I/O shell on fakes ----


def _answer(**outputs: np.ndarray) -> bytes:
    tensors = [Tensor(n, "FP32", a.shape, a) for n, a in outputs.items()]
    return codec.encode_infer_response(InferResponse("m", "1", tensors))[0]


def _sample(rows: int = 2) -> tuple[InferRequest, InferResponse]:
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    request = InferRequest("m", "", [Tensor("x", "FP32", x.shape, x)])
    return request, InferResponse("m", "1", [Tensor("y", "FP32", x.shape, x * 2)])


def _shadow(post: Callable[[str, bytes, float], bytes], metrics: RuntimeMetrics, **kw: Any) -> Shadow:
    clock = itertools.count(0.0, 2.0)  # 2 s a read: the bucket always has a token
    return Shadow("http://stable:8080/", "m", metrics, rate=1.0, timeout_s=1.0, post=post,
                  clock=lambda: next(clock), **kw)  # fmt: skip


def _value(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": metrics.model, **labels})
    assert value is not None, name
    return value


def test_shadow_compares_records_and_never_raises_into_the_request() -> None:
    metrics = RuntimeMetrics("m")
    seen: list[tuple[str, dict[str, Any]]] = []

    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        doc = json.loads(body)
        seen.append((url, doc))
        x = np.array(doc["inputs"][0]["data"], np.float32).reshape(doc["inputs"][0]["shape"])
        return _answer(y=x * 2)

    shadow = _shadow(post, metrics)
    request, response = _sample(rows=3)
    shadow.offer(request, response)
    shadow.close(wait=True)
    assert seen[0][0] == "http://stable:8080/v2/models/m/infer"
    assert seen[0][1]["outputs"] == [{"name": "y", "parameters": {"binary_data": False}}]
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 1
    assert _value(metrics, "kinfer_shadow_rows_total") == 3
    assert _value(metrics, "kinfer_shadow_argmax_agree_total") == 3
    assert _value(metrics, "kinfer_shadow_max_abs_diff_bucket", le="1e-06") == 1
    shadow.offer(request, response)  # after close (the server is stopping): silently nothing


class _RecordingPool(ThreadPoolExecutor):
    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted: list[futures.Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.submitted.append(future)
        return future


def test_shadow_bounds_requests_in_flight_and_counts_drops() -> None:
    metrics = RuntimeMetrics("m")
    release = threading.Event()
    started = threading.Semaphore(0)

    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        started.release()
        assert release.wait(10)
        return _answer(y=np.array([[0.0, 2, 4], [6, 8, 10]], np.float32))

    pool = _RecordingPool(8)  # more threads than the bound: the bound is the shadow's own
    shadow = _shadow(post, metrics, max_inflight=4, executor=pool)
    for _ in range(7):
        shadow.offer(*_sample())
    for _ in range(4):
        assert started.acquire(timeout=10)
    assert _value(metrics, "kinfer_shadow_errors_total", reason="dropped") == 3
    assert len(pool.submitted) == 4
    release.set()
    futures.wait(pool.submitted, timeout=10)
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 4
    shadow.offer(*_sample())  # the slots were given back
    assert len(pool.submitted) == 5
    shadow.close(wait=True)
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 5


def test_shadow_errors_are_counted_by_reason_and_warned_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = RuntimeMetrics("m")
    outcomes = iter(["http", "http", "timeout", "decode", "http"])

    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        what = next(outcomes)
        if what == "decode":
            return b"<html>busy</html>"
        raise ShadowFailure(what, "from the fake")

    shadow = _shadow(post, metrics, executor=ThreadPoolExecutor(1), max_inflight=5)  # none dropped
    with caplog.at_level(logging.WARNING, logger="kinfer_runtime.shadow"):
        for _ in range(5):
            shadow.offer(*_sample())
        shadow.close(wait=True)
    counts = {
        r: _value(metrics, "kinfer_shadow_errors_total", reason=r) for r in ("http", "timeout", "decode")
    }
    assert counts == {"http": 3, "timeout": 1, "decode": 1}
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 0
    # the fake clock moves 2 s a read, all within a minute: one warning per reason
    reasons = [getattr(r, "reason", None) for r in caplog.records]
    assert sorted(reasons) == ["decode", "http", "timeout"]


def test_data_plane_offers_successful_answers_only(tmp_path: Path) -> None:
    model = load_model(f"file://{make_slow(tmp_path / 'm')}")
    model.delay = 0  # type: ignore[attr-defined]
    plane = DataPlane("m", "1", model.signature)
    offered: list[tuple[InferRequest, InferResponse]] = []

    class Sink:
        def offer(self, request: InferRequest, response: InferResponse) -> None:
            offered.append((request, response))

    plane.shadow = Sink()
    ok = InferRequest("m", "1", [Tensor("x", "FP32", (1, 4), np.ones((1, 4), np.float32))])
    poisoned = InferRequest("m", "", [Tensor("x", "FP32", (1, 4), -np.ones((1, 4), np.float32))])

    async def main() -> None:
        batcher = Batcher(model.forward, max_batch_size=8, max_delay_s=0, max_queue_rows=8)
        batcher.start()
        plane.model_loaded(batcher)
        await plane.infer(ok)
        with pytest.raises(ModelFailed, match="poisoned"):
            await plane.infer(poisoned)
        with pytest.raises(InvalidInput):
            await plane.infer(InferRequest("m", "", [Tensor("x", "FP32", (4,), np.ones(4, np.float32))]))
        await batcher.stop()

    asyncio.run(main())
    assert [r for r, _ in offered] == [ok]
    np.testing.assert_array_equal(offered[0][1].outputs[0].data, 2 * np.ones((1, 4)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_urllib_post_maps_refused_and_silent_peers() -> None:
    with pytest.raises(ShadowFailure) as refused:
        urllib_post(f"http://127.0.0.1:{_free_port()}/v2/models/m/infer", b"{}", 2.0)
    assert refused.value.reason == "http"
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        with pytest.raises(ShadowFailure) as slow:
            urllib_post(f"http://127.0.0.1:{silent.getsockname()[1]}/v2/models/m/infer", b"{}", 0.2)
    assert slow.value.reason == "timeout"
    assert time.monotonic() - started < 5


def test_shadow_settings_flags_env_and_bounds() -> None:
    base = {"KINFER_MODEL_URI": "/m"}
    off = settings.parse([], base)
    assert (off.shadow_url, off.shadow_rate, off.shadow_timeout_ms) == ("", 1.0, 5000.0)
    env = {**base, "KINFER_SHADOW_URL": "http://ranker-stable.search.svc:8080",
           "KINFER_SHADOW_RATE": "0.5", "KINFER_SHADOW_TIMEOUT_MS": "800"}  # fmt: skip
    on = settings.parse(["--shadow-rate", "2"], env)
    assert (on.shadow_url, on.shadow_rate, on.shadow_timeout_ms) == (env["KINFER_SHADOW_URL"], 2.0, 800.0)
    for bad in (["--shadow-rate", "0"], ["--shadow-timeout-ms", "-1"], ["--shadow-url", "ranker:8080"]):
        with pytest.raises(SystemExit):
            settings.parse(bad, base)


# ---- two real runtimes: a stable and a canary shadowing to it ----

RATE = 5.0  # shadow requests per second in the canaries below
_RANK_SRC = '''
import numpy as np


class Model:
    """A stand-in ranker: the first four features, scaled, optionally in reverse order."""

    def __init__(self, signature, device):
        self.signature = signature
        self.device = device

    def forward(self, inputs):
        y = inputs["x"][:, :4] * {scale}
        return {{"y": np.ascontiguousarray(y[:, ::-1] if {reverse} else y)}}
'''


def _make_rank(directory: Path, scale: float, reverse: bool) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.py").write_text(_RANK_SRC.format(scale=scale, reverse=reverse))
    (directory / "signature.json").write_text(json.dumps({
        "format": "python", "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }))  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rank")
    return {"v1": _make_rank(root / "v1", 1.0, False), "v2": _make_rank(root / "v2", 2.0, True)}


def _serve(model_dir: Path, logs_dir: Path, *args: str) -> Server:
    return start_server(model_dir, logs_dir, "--model-name", "rank", *args)


@pytest.fixture(scope="module")
def stable(ranks: dict[str, Path], logs_dir: Path) -> Iterator[Server]:
    server = _serve(ranks["v1"], logs_dir)
    yield server
    assert server.stop() == 0, server.log_path.read_text()


def _canary(ranks: dict[str, Path], logs_dir: Path, shadow_url: str, *args: str) -> Server:
    return _serve(ranks["v1"], logs_dir, "--shadow-url", shadow_url, "--shadow-rate", str(RATE),
                  "--shadow-timeout-ms", "2000", *args)  # fmt: skip


def _post_rows(conn: http.client.HTTPConnection, x: np.ndarray, path: str = "/v2/models/rank/infer") -> int:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]})  # fmt: skip
    conn.request("POST", path, body=body)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _wait_metrics(server: Server, ready: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
    """Poll /metrics until `ready` holds (a deadline, no fixed sleep); say what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        text = http_get(server, "/metrics")[1].decode()
        if ready(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{text}\n{server.log_path.read_text()}")
        time.sleep(0.02)


def _rows(n: int, seed: int) -> np.ndarray:
    """Rows whose first four features are distinct (a clear argmax)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.concatenate([rng.permutation(4) + 1.0, rng.random(4)]) for _ in range(n)]).astype(
        np.float32
    )


def _connect(server: Server) -> http.client.HTTPConnection:
    host, port = server.http.split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def test_shadowing_is_off_by_default(stable: Server) -> None:
    conn = _connect(stable)
    assert _post_rows(conn, _rows(2, 0)) == 200
    conn.close()
    text = http_get(stable, "/metrics")[1].decode()
    assert 'kinfer_shadow_comparisons_total{model="rank"} 0.0' in text
    assert metric(text, "kinfer_shadow_errors_total") == 0
    assert not any(line.get("msg") == "shadowing on" for line in stable.log_lines())


def test_canary_of_the_same_model_shows_no_drift(
    stable: Server, ranks: dict[str, Path], logs_dir: Path
) -> None:
    before = metric(http_get(stable, "/metrics")[1].decode(), "kinfer_requests_total", code="200")
    canary = _canary(ranks, logs_dir, f"http://{stable.http}", "--model-version", "7")
    try:
        on = [line for line in canary.log_lines() if line.get("msg") == "shadowing on"]
        assert on and on[0]["shadow_rate"] == RATE
        assert on[0]["shadow_url"] == f"http://{stable.http}/v2/models/rank/infer"
        # gRPC, with a version the stable does not have: shadowed unversioned, by the full bucket
        with tgrpc.InferenceServerClient(canary.grpc) as client:
            inp = tgrpc.InferInput("x", [3, 8], "FP32")
            inp.set_data_from_numpy(_rows(3, 1))
            client.infer("rank", [inp], model_version="7")
        _wait_metrics(canary, lambda t: metric(t, "kinfer_shadow_comparisons_total") == 1, "gRPC comparison")
        time.sleep(1.2 / RATE)  # let the bucket refill: the first REST request below is sampled
        conn = _connect(canary)
        started = time.monotonic()
        codes = [_post_rows(conn, _rows(3, 10 + i), "/v2/models/rank/versions/7/infer") for i in range(30)]
        window = time.monotonic() - started
        conn.close()
        assert codes == [200] * 30

        def settled(text: str) -> bool:
            n = metric(text, "kinfer_shadow_comparisons_total")
            served = metric(http_get(stable, "/metrics")[1].decode(), "kinfer_requests_total", code="200")
            return n >= 2 and n == served - before and metric(text, "kinfer_shadow_max_abs_diff_count") == n

        text = _wait_metrics(canary, settled, "the REST comparisons")
        n = metric(text, "kinfer_shadow_comparisons_total")
        assert n <= 2 + RATE * window  # the gRPC one, then at most burst + rate * window
        assert metric(text, "kinfer_shadow_max_abs_diff_bucket", le="1e-06") == n
        assert metric(text, "kinfer_shadow_rows_total") == 3 * n
        assert metric(text, "kinfer_shadow_argmax_agree_total") == 3 * n
        assert metric(text, "kinfer_shadow_errors_total") == 0
        assert metric(text, "kinfer_requests_total", code="200") == 31
    finally:
        assert canary.stop() == 0, canary.log_path.read_text()


def test_canary_of_a_different_model_shows_drift(ranks: dict[str, Path], logs_dir: Path) -> None:
    other = _serve(ranks["v2"], logs_dir)  # the "stable" serves y reversed and doubled
    canary = _canary(ranks, logs_dir, f"http://{other.http}")
    try:
        conn = _connect(canary)
        assert _post_rows(conn, _rows(4, 2)) == 200
        conn.close()
        text = _wait_metrics(
            canary, lambda t: metric(t, "kinfer_shadow_max_abs_diff_count") == 1, "comparison"
        )
        assert metric(text, "kinfer_shadow_rows_total") == 4
        assert metric(text, "kinfer_shadow_argmax_agree_total") == 0  # reversed: never the same
        assert metric(text, "kinfer_shadow_max_abs_diff_bucket", le="1.0") == 0
        assert metric(text, "kinfer_shadow_max_abs_diff_bucket", le="100.0") == 1
    finally:
        assert canary.stop() == 0, canary.log_path.read_text()
        assert other.stop() == 0, other.log_path.read_text()


def test_stable_down_counts_http_errors_and_the_canary_answers_every_request(
    ranks: dict[str, Path], logs_dir: Path
) -> None:
    canary = _canary(ranks, logs_dir, f"http://127.0.0.1:{_free_port()}")
    try:
        conn = _connect(canary)
        codes = []
        for i in range(4):
            codes.append(_post_rows(conn, _rows(2, i)))
            time.sleep(1.2 / RATE)  # pace to the rate: every request is sampled
        codes += [_post_rows(conn, _rows(2, 9)) for _ in range(20)]  # and a burst, mostly not
        conn.close()
        assert codes == [200] * 24
        text = _wait_metrics(
            canary, lambda t: metric(t, "kinfer_shadow_errors_total", reason="http") >= 4, "http errors"
        )
        assert metric(text, "kinfer_shadow_comparisons_total") == 0
        assert metric(text, "kinfer_requests_total", code="200") == 24
        warned = [
            line for line in canary.log_lines() if line.get("msg", "").startswith("shadow request failed")
        ]
        assert len(warned) == 1, warned  # one per reason per minute
        assert warned[0]["reason"] == "http"
    finally:
        assert canary.stop() == 0, canary.log_path.read_text()


def test_diff_buckets_are_the_1_2_5_series() -> None:
    assert DIFF_BUCKETS[:4] == (1e-6, 2e-6, 5e-6, 1e-5)
    assert DIFF_BUCKETS[-3:] == (20.0, 50.0, 100.0)
    assert len(DIFF_BUCKETS) == 25
