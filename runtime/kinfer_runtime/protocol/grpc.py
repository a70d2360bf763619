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
from kinfer_runtime.protocol import generate_types as gt
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.errors import (
    GRPC_TO_HTTP,
    InferenceError,
    InvalidInput,
    grpc_code_name,
)
from kinfer_runtime.protocol.generative import GenerativePlane
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
    def __init__(self, plane: DataPlane | GenerativePlane, metrics: RuntimeMetrics) -> None:
        self.plane = plane
        self.metrics = metrics
        self.answer_metadata = tuple(plane.answer_headers())

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
            await context.send_initial_metadata(self.answer_metadata)
            remaining = context.time_remaining()
            now = asyncio.get_running_loop().time()
            deadline = None if remaining is None else now + remaining
            if not isinstance(self.plane, DataPlane):
                raise InvalidInput(f"model '{self.plane.model_name}' is generative: use the REST generate "
                                   "or /v1 endpoints")  # fmt: skip
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

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        """Generative models over Triton's decoupled streaming: each request (input
        `text_input`, BYTES; sampling in parameters) answers one response per text piece with
        output `text_output`, then an empty one with parameter `triton_final_response`."""
        async for msg in request_iterator:
            started = time.perf_counter()
            self.metrics.request_started()
            code = 499
            try:
                async for response in self._generate(msg):
                    yield response
                code = 200
            except InferenceError as exc:
                code = GRPC_TO_HTTP.get(grpc_code_name(exc), 500)
                yield pb.ModelStreamInferResponse(error_message=exc.message)
            finally:
                self.metrics.request_finished(code, time.perf_counter() - started, timed=False)

    async def _generate(self, msg: Any) -> Any:
        plane = self.plane
        if not isinstance(plane, GenerativePlane):
            raise InvalidInput(f"model '{plane.model_name}' is not generative: use ModelInfer")
        request = decode_request(msg)
        fields: dict[str, Any] = dict(request.parameters)
        for t in request.inputs:
            if t.name == "text_input" and t.data.size == 1:
                value = t.data.ravel()[0]
                fields["text_input"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        gen = plane.start(gt.generate_request(fields, request.model_name, request.model_version, True))

        def answer(text: str, final: bool) -> Any:
            out = pb.ModelInferResponse(model_name=plane.model_name, model_version=plane.model_version,
                                        id=request.id)  # fmt: skip
            tensor = out.outputs.add()
            tensor.name, tensor.datatype = "text_output", "BYTES"
            tensor.shape.append(1)
            data = np.empty(1, dtype=object)
            data[0] = text.encode()
            out.raw_output_contents.append(codec.to_raw(data, "BYTES"))
            if final:
                out.parameters["triton_final_response"].bool_param = True
                out.parameters["finish_reason"].string_param = gen.finish_reason
                out.parameters["completion_tokens"].int64_param = gen.completion_tokens
            return pb.ModelStreamInferResponse(infer_response=out)

        async for piece in gen.text():
            yield answer(piece, False)
        yield answer("", True)


async def _abort(context: Any, exc: InferenceError) -> Any:
    await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)


async def start_grpc(
    plane: DataPlane | GenerativePlane, metrics: RuntimeMetrics, host: str, port: int
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
