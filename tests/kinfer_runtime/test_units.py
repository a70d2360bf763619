"""Codec, settings, data plane and module boundaries — no server process, no HTTP."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from kinfer_runtime import settings
from kinfer_runtime.batching import Batcher
from kinfer_runtime.model import ModelConfigError, Signature, load_model, locate
from kinfer_runtime.protocol import codec
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.errors import InvalidInput, ModelNotFound, NotReady, status_of
from kinfer_runtime.protocol.v2_types import InferRequest, Tensor
from tests.kinfer_runtime.models import make_slow

RUNTIME = Path(__file__).parents[2] / "runtime" / "kinfer_runtime"


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", np.array([[1.5, -2.0]], np.float32)),
        ("FP16", np.array([[1.5, -2.0]], np.float16)),
        ("FP64", np.array([1e300], np.float64)),
        ("INT8", np.array([-128, 127], np.int8)),
        ("INT64", np.array([-(2**62)], np.int64)),
        ("UINT64", np.array([2**63], np.uint64)),
        ("BOOL", np.array([True, False])),
        ("BF16", np.array([1.0, -3.5, 0.15625], np.float32)),
        ("BYTES", np.array([b"", b"abc", "é".encode()], dtype=object)),
    ],
)
def test_raw_round_trip(datatype: str, values: np.ndarray) -> None:
    raw = codec.to_raw(values, datatype)
    back = codec.from_raw(raw, datatype, values.shape, "t")
    assert back.tolist() == values.tolist()


def test_bf16_wire_format_is_what_ml_dtypes_writes() -> None:
    x = np.array([0.1, 1e-3, -7.77], np.float32)
    assert codec.to_raw(x, "BF16") == x.astype(ml_dtypes.bfloat16).tobytes()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\x05\x00\x00\x00ab", "runs past the data"),
        (b"\x01\x00", "truncated BYTES element length"),
        (b"\x01\x00\x00\x00a" * 3, "expected 2 BYTES elements"),
    ],
)
def test_bad_bytes_tensors(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        codec.from_raw(raw, "BYTES", (2,), "s")


def test_error_status_table_is_the_one_place() -> None:
    assert status_of(InvalidInput("x")) == (400, "INVALID_ARGUMENT")
    assert status_of(ModelNotFound("x")) == (404, "NOT_FOUND")
    assert status_of(NotReady("x")) == (503, "UNAVAILABLE")
    assert status_of(ValueError("x")) == (500, "INTERNAL")


def test_settings_flags_beat_env_beat_defaults() -> None:
    env = {"KINFER_MODEL_URI": "/m", "KINFER_HTTP_PORT": "9000", "KINFER_MAX_DELAY_MS": "2.5",
           "KINFER_WARMUP": "0", "KINFER_GRPC_PORT": "9001"}  # fmt: skip
    s = settings.parse(["--grpc-port", "7000"], env)
    assert (s.model_uri, s.http_port, s.grpc_port, s.max_delay_ms) == ("/m", 9000, 7000, 2.5)
    assert s.warmup is False
    assert settings.parse(["--model-uri", "/x"], {}).http_port == 8000
    with pytest.raises(SystemExit):
        settings.parse([], {})  # the model URI is required


def test_help_lists_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kinfer_runtime", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flags = "model-uri model-name host http-port grpc-port metrics-port max-batch-size max-delay-ms"
    for flag in [f"--{f}" for f in (*flags.split(), "max-queue")]:
        assert flag in out


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports (statements, not text: triton_repo.py holds the
    Python-backend model that Triton runs as a string)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_torch_is_imported_in_one_module_only() -> None:
    importers = sorted(
        p.relative_to(RUNTIME).as_posix() for p in RUNTIME.rglob("*.py") if "torch" in _imports(p)
    )
    assert importers == ["torch_model.py"]


def test_signature_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"no signature\.json"):
        locate(str(tmp_path))
    with pytest.raises(ModelConfigError, match="first dimension must be -1"):
        Signature.from_dict({"max_batch_size": 4, "inputs": [{"name": "x", "datatype": "FP32",
                             "shape": [3]}], "outputs": [{"name": "y", "datatype": "FP32",
                             "shape": [-1]}]}, "sig")  # fmt: skip
    with pytest.raises(ModelConfigError, match="scheme 's3'"):
        locate("s3://bucket/model")


def test_data_plane_without_transport(tmp_path: Path) -> None:
    model = load_model(f"file://{make_slow(tmp_path / 'm')}")
    model.delay = 0  # type: ignore[attr-defined]
    plane = DataPlane("m", "1", model.signature)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = InferRequest("m", "", [Tensor("x", "FP32", (2, 4), x)], id="abc")

    async def main() -> None:
        with pytest.raises(NotReady):
            await plane.infer(request)
        batcher = Batcher(model.forward, max_batch_size=8, max_delay_s=0, max_queue_rows=8)
        batcher.start()
        plane.model_loaded(batcher)
        resp = await plane.infer(request)
        assert resp.id == "abc"
        np.testing.assert_array_equal(resp.outputs[0].data, x * 2)
        with pytest.raises(InvalidInput, match="input 'x': shape"):
            await plane.infer(InferRequest("m", "", [Tensor("x", "FP32", (2,), x[0, :2])]))
        with pytest.raises(ModelNotFound):
            await plane.infer(InferRequest("other", "", request.inputs))
        plane.draining = True
        assert not plane.ready() and plane.live()
        await batcher.stop()

    asyncio.run(main())
    assert plane.model_metadata("m")["inputs"][0] == {
        "name": "x",
        "datatype": "FP32",
        "shape": [-1, 4],
    }


def test_configured_max_batch_size_bounds_rows_per_request(tmp_path: Path) -> None:
    model = load_model(f"file://{make_slow(tmp_path / 'm')}")
    model.delay = 0  # type: ignore[attr-defined]
    plane = DataPlane("m", "1", model.signature)
    assert model.signature.max_batch_size > 4

    def request(rows: int) -> InferRequest:
        x = np.zeros((rows, 4), np.float32)
        return InferRequest("m", "", [Tensor("x", "FP32", (rows, 4), x)])

    async def main() -> None:
        batcher = Batcher(model.forward, max_batch_size=4, max_delay_s=0, max_queue_rows=64)
        batcher.start()
        plane.model_loaded(batcher)
        assert (await plane.infer(request(4))).outputs[0].data.shape[0] == 4
        with pytest.raises(InvalidInput, match="input 'x': batch of 5 rows exceeds max_batch_size 4"):
            await plane.infer(request(5))
        await batcher.stop()

    asyncio.run(main())
    assert plane.model_config("m")["max_batch_size"] == 4


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", [1.0, None, 3.0], "data[1] is null; FP32 'data' takes numbers only"),
        ("FP32", [[1.0, 2.0], [3.0, "4"]], "data[1][1] is a string"),
        ("FP32", [[1, 2], [True, 4]], "data[1][0] is a boolean"),
        ("INT32", [1, 2.5], "data[1] is a number; INT32 'data' takes integers only"),
        ("INT64", [[1], [False]], "data[1][0] is a boolean"),
        ("BOOL", [True, 1], "data[1] is an integer; BOOL 'data' takes booleans only"),
        ("BYTES", ["a", None], "data[1] is null; BYTES 'data' takes strings only"),
        ("FP16", [{"a": 1}], "data[0] is an object"),
    ],
)
def test_json_data_is_never_coerced(datatype: str, data: list[object], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"input 't': {fragment}")):
        codec.from_json_data(data, datatype, (2, 2) if isinstance(data[0], list) else (len(data),), "t")


def test_json_numbers_out_of_a_float_range_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"input 't': data element 1 is out of range for FP16"):
        codec.from_json_data([1.0, 70000.0], "FP16", (2,), "t")
    assert codec.from_json_data([1.0, 60000.0], "FP16", (2,), "t").tolist() == [1.0, 60000.0]


def test_json_data_of_the_right_types_decodes() -> None:
    assert codec.from_json_data([[1, 2.5], [3, 4]], "FP32", (2, 2), "t").dtype == np.float32
    assert codec.from_json_data([True, False], "BOOL", (2,), "t").tolist() == [True, False]
    deep: list[object] = [1]
    for _ in range(3000):  # nesting deeper than Python's recursion limit: still a clean error
        deep = [deep]
    with pytest.raises(InvalidInput):
        codec.from_json_data(deep, "FP32", (1,), "t")


def test_default_host_is_loopback() -> None:
    assert settings.parse(["--model-uri", "/x"], {}).host == "127.0.0.1"
    assert settings.parse(["--model-uri", "/x"], {"KINFER_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_a_head_that_trickles_in_is_cut_off(tmp_path: Path) -> None:
    """Slowloris: a head still incomplete after the head timeout is answered 408 and closed;
    the server goes on answering other connections."""
    from kinfer_runtime.metrics import RuntimeMetrics
    from kinfer_runtime.protocol.rest import RestApp, RestServer

    _, sig = locate(str(make_slow(tmp_path / "m")))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = RestServer(RestApp(DataPlane("m", "1", sig), RuntimeMetrics("m"), head_timeout_s=0.3))
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2 HTTP/1.1\r\nx-slow: a")
        t0 = loop.time()
        for _ in range(3):
            await asyncio.sleep(0.05)
            writer.write(b"a")  # still arriving, never finished
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"request head not complete 0.3 s after it began" in reply
        assert 0.25 < loop.time() - t0 < 2
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.5)  # longer than the head timeout: a finished head is not cut off
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        await server.drain(0.0, 1.0)

    asyncio.run(main())
