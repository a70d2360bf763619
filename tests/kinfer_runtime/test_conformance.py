"""Unmodified tritonclient (HTTP JSON, HTTP binary, gRPC) against a real server process.

e2e/test_triton.py runs the tests not marked `in_process` against Triton on the test bed
(conftest.py: KINFER_V2_TARGET), serving the same `mlp` model directory. The marked ones need
kinfer-runtime itself: its own server processes or models the generated Triton repository does
not carry (BF16 and BYTES tensors; docs/runtime.md lists the differences)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.kinfer_runtime.models import DTYPES, MLP_IN
from tests.kinfer_runtime.server_proc import Server, start_server

MODES = ["http-json", "http-binary", "grpc"]


def _client(server: Server, mode: str) -> Any:
    if mode == "grpc":
        return tgrpc.InferenceServerClient(server.grpc)
    return thttp.InferenceServerClient(server.http)


def _infer(server: Server, mode: str, model: str, arrays: dict[str, np.ndarray],
           datatypes: dict[str, str], outputs: list[str], **kw: Any) -> Any:  # fmt: skip
    mod: Any = tgrpc if mode == "grpc" else thttp
    inputs = []
    for name, arr in arrays.items():
        inp = mod.InferInput(name, list(arr.shape), datatypes[name])
        if mode == "grpc":
            inp.set_data_from_numpy(arr)
        else:
            # tritonclient sends BF16 only in binary over HTTP
            binary = mode == "http-binary" or datatypes[name] == "BF16"
            inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    if mode == "grpc":
        outs = [tgrpc.InferRequestedOutput(o) for o in outputs]
    else:
        outs = [thttp.InferRequestedOutput(o, binary_data=mode == "http-binary") for o in outputs]
    return _client(server, mode).infer(model, inputs, outputs=outs, **kw)


def _torch_reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(model_dir / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(x.copy())).numpy()


@pytest.mark.parametrize("mode", MODES)
def test_health_and_metadata(mlp_server: Server, mode: str, server_name: str) -> None:
    c = _client(mlp_server, mode)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("mlp")
    assert c.is_model_ready("mlp", "1")
    meta = c.get_model_metadata("mlp", as_json=True) if mode == "grpc" else c.get_model_metadata("mlp")
    assert meta["name"] == "mlp"
    assert meta["inputs"][0]["name"] == "x"
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, MLP_IN]
    server_meta = c.get_server_metadata(as_json=True) if mode == "grpc" else c.get_server_metadata()
    assert server_meta["name"] == server_name
    assert "binary_tensor_data" in server_meta["extensions"]
    config = c.get_model_config("mlp", as_json=True) if mode == "grpc" else c.get_model_config("mlp")
    cfg = config.get("config", config)
    assert int(cfg["max_batch_size"]) == 32


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [1, 5, 32])
def test_mlp_matches_torch(mlp_server: Server, model_root: Path, mode: str, rows: int) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, MLP_IN)).astype(np.float32)
    result = _infer(mlp_server, mode, "mlp", {"x": x}, {"x": "FP32"}, ["y"], request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("y"), _torch_reference(model_root / "mlp", x))
    assert result.get_response()["id"] == "r-7" if mode != "grpc" else True


def _dtype_inputs(rows: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    rng = np.random.default_rng(rows)
    arrays: dict[str, np.ndarray] = {}
    for dt in DTYPES:
        shape = (rows, 2 if dt == "BYTES" else 3)
        if dt == "BYTES":
            words = [f"w{i}-é".encode() for i in range(rows * 2)]
            arr = np.array(words, dtype=object).reshape(shape)
        elif dt == "BOOL":
            arr = rng.integers(0, 2, shape).astype(bool)
        elif dt == "BF16":
            arr = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
        elif dt.startswith("FP"):
            arr = rng.standard_normal(shape).astype(dt.replace("FP", "float"))
        else:
            np_dt = np.dtype(dt.lower())
            info = np.iinfo(np_dt)
            arr = rng.integers(max(info.min, -100), min(info.max - 1, 100), shape).astype(np_dt)
        arrays[f"in_{dt}"] = arr
    return arrays, {f"in_{dt}": dt for dt in DTYPES}


@pytest.mark.in_process
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [1, 4])
def test_every_datatype(dtypes_server: Server, mode: str, rows: int) -> None:
    arrays, datatypes = _dtype_inputs(rows)
    result = _infer(dtypes_server, mode, "dtypes", arrays, datatypes, [f"out_{d}" for d in DTYPES])
    for dt in DTYPES:
        got, x = result.as_numpy(f"out_{dt}"), arrays[f"in_{dt}"]
        assert got.shape == x.shape, dt
        if dt == "BYTES":
            want = np.vectorize(lambda b: b.upper(), otypes=[object])(x)  # ASCII upper, as TorchScript
            # JSON carries strings; tritonclient hands those back as str, binary as bytes
            as_bytes = [[v.encode() if isinstance(v, str) else v for v in row] for row in got.tolist()]
            assert as_bytes == want.tolist()
        elif dt == "BOOL":
            np.testing.assert_array_equal(got, ~x)
        elif dt == "BF16":
            np.testing.assert_array_equal(got.astype(np.float32), x.astype(np.float32) * 2)
        elif dt.startswith("FP"):
            np.testing.assert_array_equal(got, x * 2)
            assert got.dtype == x.dtype
        else:
            np.testing.assert_array_equal(got, x + 1)
            assert got.dtype == x.dtype


def test_http_outputs_default_to_binary(mlp_server: Server) -> None:
    x = np.ones((2, MLP_IN), np.float32)
    inp = thttp.InferInput("x", [2, MLP_IN], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    result = thttp.InferenceServerClient(mlp_server.http).infer("mlp", [inp])  # no outputs named
    assert result.get_output("y")["parameters"]["binary_data_size"] == 2 * 4 * 4
    assert result.as_numpy("y").shape == (2, 4)


# How each server words a request for a version it does not serve.
UNKNOWN_VERSION = {"kinfer": "no version '2'", "triton": "'mlp' version 2 is not found"}


def test_versioned_paths(mlp_server: Server, server_name: str) -> None:
    x = np.ones((1, MLP_IN), np.float32)
    for mode in ("http-json", "grpc"):
        ok = _infer(mlp_server, mode, "mlp", {"x": x}, {"x": "FP32"}, ["y"], model_version="1")
        assert ok.as_numpy("y").shape == (1, 4)
        with pytest.raises(InferenceServerException, match=UNKNOWN_VERSION[server_name]):
            _infer(mlp_server, mode, "mlp", {"x": x}, {"x": "FP32"}, ["y"], model_version="2")


def test_grpc_typed_contents(mlp_server: Server, model_root: Path) -> None:
    x = np.arange(2 * MLP_IN, dtype=np.float32).reshape(2, MLP_IN)
    req = pb.ModelInferRequest(model_name="mlp")
    inp = req.inputs.add()
    inp.name, inp.datatype = "x", "FP32"
    inp.shape.extend([2, MLP_IN])
    inp.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(mlp_server.grpc) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(y, _torch_reference(model_root / "mlp", x))


@pytest.mark.in_process
def test_torch_export_archive(model_root: Path, logs_dir: Path) -> None:
    server = start_server(model_root / "mlpx", logs_dir, "--grpc-port", "-1")
    try:
        x = np.random.default_rng(3).standard_normal((3, MLP_IN)).astype(np.float32)
        y = _infer(server, "http-binary", "mlpx", {"x": x}, {"x": "FP32"}, ["y"]).as_numpy("y")
        np.testing.assert_allclose(y, _torch_reference(model_root / "mlp", x), rtol=1e-6)
        assert thttp.InferenceServerClient(server.http).get_model_metadata("mlpx")["platform"] == (
            "pytorch_export"
        )
    finally:
        assert server.stop() == 0


@pytest.mark.in_process
def test_every_inference_answer_names_its_track_and_model_version(model_root: Path, logs_dir: Path) -> None:
    import http.client
    import json

    server = start_server(
        model_root / "mlp", logs_dir, "--model-version", "7", env={"KINFER_TRACK": "canary"}
    )
    try:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, MLP_IN],
                                       "data": [0.0] * MLP_IN}]})  # fmt: skip
        host, port = server.http.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        # An answer and a refused request (the shape does not match the data) alike.
        for payload, code in ((body, 200), (body.replace(f"[1, {MLP_IN}]", "[1, 3]"), 400)):
            conn.request("POST", "/v2/models/mlp/infer", payload, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert (resp.status, resp.getheader("kinfer-track")) == (code, "canary")
            assert resp.getheader("kinfer-model-version") == "7"
        conn.request("GET", "/v2/health/ready")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("kinfer-track") is None  # inference answers only
        conn.close()
        req = pb.ModelInferRequest(model_name="mlp")
        inp = req.inputs.add()
        inp.name, inp.datatype = "x", "FP32"
        inp.shape.extend([1, MLP_IN])
        inp.contents.fp32_contents.extend([0.0] * MLP_IN)
        with grpc.insecure_channel(server.grpc) as channel:
            _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(req, timeout=10)
        assert dict(call.initial_metadata())["kinfer-track"] == "canary"
        assert dict(call.initial_metadata())["kinfer-model-version"] == "7"
    finally:
        assert server.stop() == 0
