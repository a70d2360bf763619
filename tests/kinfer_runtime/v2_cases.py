"""The v2 bad-input cases as data, with plain senders that take a `host:port`: run against an
in-process kinfer-runtime by tests/kinfer_runtime/test_bad_input.py and against Triton on the test
bed by e2e/test_triton.py (which lists where Triton may answer otherwise)."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

INFER = "/v2/models/mlp/infer"


def _x(shape: list[int] | None = None, data: Any = None, **extra: Any) -> dict[str, Any]:
    shape = [1, 8] if shape is None else shape
    doc = {"name": "x", "datatype": "FP32", "shape": shape,
           "data": list(range(8)) if data is None else data}  # fmt: skip
    doc.update(extra)
    return doc


def _body(*inputs: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def _binary(json_doc: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(json_doc).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def _raw_x(size: int, claim: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8],
                        "parameters": {"binary_data_size": claim}}]}  # fmt: skip


F32 = struct.pack("<8f", *range(8))

# (id, method, path, body, headers, status, message fragment)
CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    ("malformed-json", "POST", INFER, b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not-an-object", "POST", INFER, b"[1, 2]", {}, 400, "request body must be a JSON object"),
    ("no-inputs", "POST", INFER, b"{}", {}, 400, "'inputs' must be a non-empty list"),
    ("unknown-input", "POST", INFER, _body({**_x(), "name": "z"}), {}, 400, "unknown input 'z'"),
    ("duplicate-input", "POST", INFER, _body(_x(), _x()), {}, 400, "input 'x' appears more"),
    ("wrong-datatype", "POST", INFER, _body(_x(datatype="INT32")), {}, 400,
     "input 'x': datatype INT32, expected FP32"),
    ("unknown-datatype", "POST", INFER, _body(_x(datatype="FLOAT")), {}, 400,
     "input 'x': unsupported datatype 'FLOAT'"),
    ("wrong-rank", "POST", INFER, _body(_x([8])), {}, 400,
     "input 'x': shape [8], expected [-1, 8]"),
    ("wrong-inner-dim", "POST", INFER, _body(_x([1, 7], list(range(7)))), {}, 400,
     "input 'x': shape [1, 7], expected [-1, 8]"),
    ("count-mismatch", "POST", INFER, _body(_x([1, 8], [1, 2, 3])), {}, 400,
     "input 'x': shape [1, 8] needs 8 elements, 'data' has 3"),
    ("not-numbers", "POST", INFER, _body(_x([1, 8], ["a"] * 8)), {}, 400,
     "input 'x': data[0] is a string; FP32 'data' takes numbers only"),
    ("null-in-data", "POST", INFER, _body(_x([1, 8], [0, 1, 2, None, 4, 5, 6, 7])), {}, 400,
     "input 'x': data[3] is null"),
    ("numeric-string", "POST", INFER, _body(_x([1, 8], [[0, 1, 2, 3, 4, 5, "6", 7]])), {}, 400,
     "input 'x': data[0][6] is a string"),
    ("boolean-in-data", "POST", INFER, _body(_x([1, 8], [True] + [0] * 7)), {}, 400,
     "input 'x': data[0] is a boolean"),
    ("negative-dim", "POST", INFER, _body(_x([-1, 8])), {}, 400,
     "input 'x': 'shape' must be a list of non-negative integers"),
    ("batch-too-big", "POST", INFER, _body(_x([33, 8], [0] * 264)), {}, 400,
     "input 'x': batch of 33 rows exceeds max_batch_size 32"),
    ("empty-batch", "POST", INFER, _body(_x([0, 8], [])), {}, 400,
     "input 'x': batch dimension must be at least 1"),
    ("no-data", "POST", INFER, _body({"name": "x", "datatype": "FP32", "shape": [1, 8]}), {}, 400,
     "input 'x': needs 'data' or parameters.binary_data_size"),
    ("binary-too-short", "POST", INFER, *_binary(_raw_x(32, 32), F32[:16]), 400,
     "input 'x': binary_data_size 32 runs past the binary data (16 bytes left)"),
    ("binary-wrong-size", "POST", INFER, *_binary(_raw_x(16, 16), F32[:16]), 400,
     "input 'x': expected 32 bytes of FP32 data for shape [1, 8], got 16"),
    ("binary-extra-bytes", "POST", INFER, *_binary(_raw_x(32, 32), F32 + b"xx"), 400,
     "2 bytes that no input claims"),
    ("header-length-past-body", "POST", INFER, b"{}", {"Inference-Header-Content-Length": "99"},
     400, "Inference-Header-Content-Length 99 exceeds the body length 2"),
    ("header-length-not-int", "POST", INFER, b"{}", {"Inference-Header-Content-Length": "x"},
     400, "Inference-Header-Content-Length b'x' is not a non-negative integer"),
    ("unknown-output", "POST", INFER, _body(_x(), outputs=[{"name": "nope"}]), {}, 400,
     "unknown output 'nope'"),
    ("output-twice", "POST", INFER, _body(_x(), outputs=[{"name": "y"}, {"name": "y"}]), {}, 400,
     "output 'y' is requested more than once"),
    ("fp32-overflow", "POST", INFER, _body(_x([1, 8], [0] * 7 + [1e300])), {}, 400,
     "input 'x': data element 7 is out of range for FP32"),
    ("bad-timeout", "POST", INFER, _body(_x(), parameters={"timeout": "soon"}), {}, 400,
     "parameter 'timeout'"),
    ("id-not-string", "POST", INFER, _body(_x(), id=5), {}, 400, "request 'id' must be a string"),
    ("unknown-model", "POST", "/v2/models/nope/infer", _body(_x()), {}, 404,
     "model 'nope' is not served here"),
    ("unknown-version", "GET", "/v2/models/mlp/versions/9", b"", {}, 404, "no version '9'"),
    ("unknown-route", "GET", "/v3/everything", b"", {}, 404, "no route /v3/everything"),
    ("get-on-infer", "GET", INFER, b"", {}, 405, "use POST"),
    ("bad-gzip", "POST", INFER, b"not gzip", {"Content-Encoding": "gzip"}, 400,
     "body is not valid gzip"),
]  # fmt: skip


def request(http_target: str, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP exchange with `http_target` (`host:port`): the status and the body."""
    host, port = http_target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# (id, change to a valid ModelInferRequest for mlp, status code, details fragment)
GRPC_CASES: list[tuple[str, Callable[[Any], Any], grpc.StatusCode, str]] = [
    ("grpc-wrong-shape", lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([1, 7]),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'x': expected 28 bytes"),
    ("grpc-unknown-model", lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND,
     "model 'nope'"),
    ("grpc-extra-raw-contents", lambda r: r.raw_input_contents.append(b""),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries for 1 inputs"),
    ("grpc-wrong-datatype", lambda r: setattr(r.inputs[0], "datatype", "INT32"),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'x': datatype INT32, expected FP32"),
]  # fmt: skip


def grpc_infer(grpc_target: str, mutate: Callable[[Any], Any]) -> tuple[grpc.StatusCode, str]:
    """A valid one-row ModelInfer for mlp, changed by `mutate`, sent to `grpc_target`: the status
    code and details (OK and "" when it was answered)."""
    req = pb.ModelInferRequest(model_name="mlp")
    inp = req.inputs.add()
    inp.name, inp.datatype = "x", "FP32"
    inp.shape.extend([1, 8])
    req.raw_input_contents.append(np.zeros(8, np.float32).tobytes())
    mutate(req)
    with grpc.insecure_channel(grpc_target) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""
