"""Malformed requests get the right 4xx and a message naming what is wrong; fuzz finds no 5xx.

e2e/test_triton.py runs the tests not marked `in_process` against Triton too (conftest.py,
KINFER_V2_TARGET), all but the two that send v2_cases.py, whose statuses that e2e test compares
itself. Messages are kinfer's own words: against another server only the statuses are checked."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.kinfer_runtime.server_proc import Server
from tests.kinfer_runtime.v2_cases import CASES, GRPC_CASES, INFER, grpc_infer, request


def _request(server: Server, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    return request(server.http, method, path, body, headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_malformed_request(mlp_server: Server, method: str, path: str, body: bytes,
                           headers: dict[str, str], status: int, fragment: str
                           ) -> None:  # fmt: skip
    got, payload = _request(mlp_server, method, path, body, headers)
    assert got == status, payload
    assert fragment in json.loads(payload)["error"]


@pytest.mark.in_process  # the dtypes model: BF16 and BYTES, which the Triton repository cannot carry
def test_missing_and_out_of_range_inputs_on_a_multi_input_model(dtypes_server: Server) -> None:
    status, payload = _request(dtypes_server, "POST", "/v2/models/dtypes/infer", json.dumps(
        {"inputs": [{"name": "in_INT8", "datatype": "INT8", "shape": [1, 3], "data": [1, 2, 300]}]}
    ).encode())  # fmt: skip
    assert status == 400
    assert "input 'in_INT8': 'data' is not a valid INT8 array" in json.loads(payload)["error"]
    status, payload = _request(dtypes_server, "POST", "/v2/models/dtypes/infer", json.dumps(
        {"inputs": [{"name": "in_INT8", "datatype": "INT8", "shape": [1, 3], "data": [1, 2, 3]}]}
    ).encode())  # fmt: skip
    assert status == 400
    assert "missing input 'in_FP32'" in json.loads(payload)["error"]


def test_malformed_http_is_answered_and_closed(mlp_server: Server) -> None:
    import socket

    host, port = mlp_server.http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"), [case[1:] for case in GRPC_CASES], ids=[case[0] for case in GRPC_CASES]
)
def test_grpc_errors(mlp_server: Server, mutate: Any, code: grpc.StatusCode, fragment: str) -> None:
    got, details = grpc_infer(mlp_server.grpc, mutate)
    assert got == code, details
    assert fragment in details


# ---- fuzz: structured mutations of an infer request, and raw garbage ----

_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)  # fmt: skip
_input = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y", ""]) | _json,
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "BF16", "FP16", "BOOL", "X"]) | _json,
        "shape": st.lists(st.integers(-2, 40), max_size=3) | _json,
        "data": st.lists(st.floats(width=32) | st.integers(-300, 300), max_size=40) | _json,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64)}) | _json,
    },
)
_request_doc = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=3) | _json},
    optional={"id": _json, "outputs": _json, "parameters": _json},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_request_doc, tail=st.binary(max_size=64), header=st.booleans())
def test_fuzz_rest_infer_never_5xx(mlp_server: Server, doc: Any, tail: bytes, header: bool) -> None:
    head = json.dumps(doc, allow_nan=True).encode()
    hdrs = {"Inference-Header-Content-Length": str(len(head))} if header else {}
    status, payload = _request(mlp_server, "POST", INFER, head + (tail if header else b""), hdrs)
    assert status < 500, payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), path=st.sampled_from([INFER, "/v2/models/mlp", "/v2"]))
def test_fuzz_raw_bodies_never_5xx(mlp_server: Server, body: bytes, path: str) -> None:
    status, _ = _request(mlp_server, "POST", path, body)
    assert status < 500
    assert _request(mlp_server, "GET", "/v2/health/live")[0] == 200


# ---- oversized heads and bodies: refused at once, nothing buffered, the server stays ready ----


def _raw_exchange(server: Server, head: bytes, chunks: int = 0, chunk: bytes = b"") -> bytes:
    """Send `head`, then `chunks` copies of `chunk` (stopping if the server has answered), and
    read the answer."""
    import socket

    host, port = server.http.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        try:
            for _ in range(chunks):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            reply += part
    return reply


def _status_and_error(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        error = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        error = f"not a JSON error: {body[:200]!r}"
    return int(head.split()[1]), error


@pytest.mark.parametrize(
    ("head", "chunks", "chunk", "status", "fragment"),
    [
        (b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 0, b"", 414, "URL exceeds 8192 bytes"),
        (b"GET /v2?", 6000, b"a" * 8192, 414, "URL exceeds 8192 bytes"),  # 48 MiB URL
        (b"GET /v2 HTTP/1.1\r\nx-big: " + b"b" * 70000 + b"\r\n\r\n", 0, b"", 431,
         "header fields exceed 65536 bytes"),
        (b"GET /v2 HTTP/1.1\r\nx-big: ", 6000, b"b" * 8192, 431, "exceeds"),  # 48 MiB header
        (b"GET /v2 HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n",
         0, b"", 431, "more than 100 header fields"),
        (b"POST " + INFER.encode() + b" HTTP/1.1\r\ncontent-length: 999999999\r\n\r\n", 100,
         b"x" * 8192, 413, "body of 999999999 bytes exceeds 67108864 bytes"),
    ],
    ids=["url", "url-48MiB", "header", "header-48MiB", "header-count", "content-length"],
)  # fmt: skip
def test_oversized_heads_are_refused_at_once(mlp_server: Server, server_name: str, head: bytes,
                                             chunks: int, chunk: bytes, status: int, fragment: str
                                             ) -> None:  # fmt: skip
    import time

    t0 = time.monotonic()
    got, error = _status_and_error(_raw_exchange(mlp_server, head, chunks, chunk))
    assert got == status, error
    assert fragment in error or server_name != "kinfer", error
    assert time.monotonic() - t0 < 5
    assert _request(mlp_server, "GET", "/v2/health/ready")[0] == 200


def test_heads_within_the_limits_are_served(mlp_server: Server) -> None:
    url = "/v2/health/ready?" + "a" * 8000
    headers = {f"x-h{i}": "v" * 600 for i in range(95)}  # 95 fields, about 57 KiB
    assert _request(mlp_server, "GET", url, headers=headers)[0] == 200


def test_a_huge_header_does_not_stall_other_clients(mlp_server: Server) -> None:
    """While one client streams a never-ending header, another is answered promptly."""
    import socket
    import threading
    import time

    host, port = mlp_server.http.split(":")
    stop = threading.Event()

    def flood() -> None:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /v2 HTTP/1.1\r\nx-big: ")
            try:
                while not stop.is_set():
                    s.sendall(b"b" * 65536)
            except OSError:
                pass  # refused and closed: what we want

    t = threading.Thread(target=flood)
    t.start()
    try:
        worst = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            assert _request(mlp_server, "GET", "/v2/health/live")[0] == 200
            worst = max(worst, time.monotonic() - t0)
    finally:
        stop.set()
        t.join(10)
    assert worst < 0.5


def test_grpc_metadata_past_the_bound_is_refused(mlp_server: Server) -> None:
    req = pb.ModelInferRequest(model_name="mlp")
    inp = req.inputs.add()
    inp.name, inp.datatype = "x", "FP32"
    inp.shape.extend([1, 8])
    req.raw_input_contents.append(np.zeros(8, np.float32).tobytes())
    with grpc.insecure_channel(mlp_server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=10, metadata=[("x-big", "b" * 70000)])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        small = stub.ModelInfer(req, timeout=10, metadata=[("x-small", "b" * 1000)])
        assert small.outputs[0].name == "y"
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
