"""gRPC front end: `inference.GRPCInferenceService` on grpc.aio.

The message classes and servicer base come from tritonclient's generated stubs (the same proto
clients use), so the wire format is the one `tritonclient.grpc` speaks. Outputs always travel in
`raw_output_contents`; inputs are accepted raw or as typed `contents`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from kinfer_runtime.metrics import RuntimeMetrics
from kinfer_runtime.protocol import codec
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.errors import (
    GRPC_TO_HTTP,
    InferenceError,
    InvalidInput,
    grpc_code_name,
)
from kinfer_runtime.protocol.v2_types import NUMPY_DTYPE, InferRequest, RequestedOutput, Tensor

log = logging.getLogger("kinfer_runtime.grpc")

# typed `contents` field for each datatype (FP16/BF16 have none: raw only, as in Triton)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
MAX_MESSAGE_BYTES = 256 << 20
MAX_METADATA_BYTES = 64 << 10  # the REST header bound (rest.MAX_HEADER_BYTES), for metadata


def _param(value: Any) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def decode_request(msg: Any) -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs")
    inputs = []
    seen = set()
    for i, inp in enumerate(msg.inputs):
        name = inp.name
        if not name:
            raise InvalidInput(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise InvalidInput(f"input '{name}' appears more than once")
        seen.add(name)
        what = f"input '{name}'"
        datatype = codec.check_datatype(inp.datatype, what)
        shape = codec.parse_shape(list(inp.shape), what)
        if raw:
            data = codec.from_raw(raw[i], datatype, shape, name)
        elif inp.HasField("contents"):
            data = _from_contents(inp.contents, datatype, shape, name)
        else:
            raise InvalidInput(f"{what}: no data in raw_input_contents or contents")
        inputs.append(Tensor(name, datatype, shape, data))
    if not inputs:
        raise InvalidInput("request has no inputs")
    outputs = [RequestedOutput(o.name) for o in msg.outputs] or None
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        inputs=inputs,
        outputs=outputs,
        id=msg.id,
        parameters={k: _param(v) for k, v in msg.parameters.items()},
    )


def _from_contents(contents: Any, datatype: str, shape: tuple[int, ...], name: str) -> Any:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} must be sent in raw_input_contents")
    values = list(getattr(contents, field))
    count = codec.element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, contents has {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    try:
        return np.asarray(values, dtype=NUMPY_DTYPE[datatype]).reshape(shape)
    except OverflowError as exc:
        raise InvalidInput(f"input '{name}': value out of range for {datatype}: {exc}") from None


def encode_response(resp: Any) -> Any:
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    for t in resp.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.shape)
        msg.raw_output_contents.append(codec.to_raw(t.data, t.datatype))
    return msg


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane, metrics: RuntimeMetrics) -> None:
        self.plane = plane
        self.metrics = metrics

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))
        except InferenceError as exc:
            await _abort(context, exc)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            meta = self.plane.model_metadata(request.name, request.version)
        except InferenceError as exc:
            await _abort(context, exc)
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tm(**t) for t in meta["inputs"]],
            outputs=[tm(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            cfg = self.plane.model_config(request.name, request.version)
        except InferenceError as exc:
            await _abort(context, exc)

        def io(cls: Any, t: dict[str, Any]) -> Any:
            return cls(name=t["name"], data_type=mc.DataType.Value(t["data_type"]), dims=t["dims"])

        return pb.ModelConfigResponse(
            config=mc.ModelConfig(
                name=cfg["name"],
                platform=cfg["platform"],
                max_batch_size=cfg["max_batch_size"],
                input=[io(mc.ModelInput, t) for t in cfg["input"]],
                output=[io(mc.ModelOutput, t) for t in cfg["output"]],
            )
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        self.metrics.request_started()
        code = "INTERNAL"
        try:
            remaining = context.time_remaining()
            now = asyncio.get_running_loop().time()
            deadline = None if remaining is None else now + remaining
            resp = await self.plane.infer(decode_request(request), deadline)
            msg = encode_response(resp)
            code = "OK"
            return msg
        except InferenceError as exc:
            code = grpc_code_name(exc)
            if log.isEnabledFor(logging.INFO):
                log.info(exc.message, extra={"request_id": request.id, "code": code})
            await _abort(context, exc)
        except Exception as exc:  # a bug of ours: INTERNAL with a trace, keep serving
            log.exception("infer failed", extra={"request_id": request.id})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        finally:
            self.metrics.request_finished(GRPC_TO_HTTP.get(code, 500), time.perf_counter() - started)


async def _abort(context: Any, exc: InferenceError) -> Any:
    await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)


async def start_grpc(
    plane: DataPlane, metrics: RuntimeMetrics, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # soft and hard limit equal: larger metadata is refused every time, not sometimes
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, metrics), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, bound
