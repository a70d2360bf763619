"""Tensor encodings of the v2 protocol: JSON data, the binary tensor extension, raw bytes.

REST bodies are a JSON header optionally followed by binary tensor data; gRPC reuses the raw
helpers for `raw_input_contents` / `raw_output_contents`. Every problem is an `InvalidInput`
whose message names the tensor and what was expected.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from kinfer_runtime.protocol.errors import InvalidInput
from kinfer_runtime.protocol.v2_types import (
    NUMPY_DTYPE,
    WIRE_ITEMSIZE,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
)

_U32 = struct.Struct("<I")


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def parse_shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"{what}: 'shape' must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def check_datatype(datatype: Any, what: str) -> str:
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPE:
        raise InvalidInput(
            f"{what}: unsupported datatype {datatype!r}; expected one of {sorted(NUMPY_DTYPE)}"
        )
    return datatype


# ---- raw bytes (binary extension, gRPC raw contents) ----


def from_raw(buf: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> Any:
    """Decode little-endian raw tensor bytes into an array of `shape`."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(buf, count, name).reshape(shape)
    size = WIRE_ITEMSIZE[datatype]
    if len(buf) != count * size:
        raise InvalidInput(
            f"input '{name}': expected {count * size} bytes of {datatype} data for shape "
            f"{list(shape)}, got {len(buf)}"
        )
    if datatype == "BF16":
        halves = np.frombuffer(buf, dtype="<u2")
        arr = (halves.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(buf, dtype=NUMPY_DTYPE[datatype])
    return arr.reshape(shape)


def _bytes_from_raw(buf: bytes | memoryview, count: int, name: str) -> Any:
    items: list[bytes] = []
    view = memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInput(f"input '{name}': truncated BYTES element length at offset {pos}")
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(
                f"input '{name}': BYTES element of {n} bytes runs past the data at offset {pos}"
            )
        items.append(bytes(view[pos : pos + n]))
        pos += n
        if len(items) > count:
            break
    if len(items) != count:
        raise InvalidInput(
            f"input '{name}': expected {count} BYTES elements for the shape, got "
            f"{'more' if len(items) > count else len(items)}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr


def to_raw(arr: Any, datatype: str) -> bytes:
    """Encode an array as little-endian raw tensor bytes."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in np.asarray(arr, dtype=object).ravel():
            b = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if datatype == "BF16":
        bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        # round to nearest even, as torch does when narrowing float32 to bfloat16
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    return np.ascontiguousarray(arr, dtype=NUMPY_DTYPE[datatype]).tobytes()


# ---- JSON data ----


# JSON element types each datatype accepts (bool is a subclass of int: checked by exact type)
_JSON_ELEMENT: dict[str, frozenset[type]] = {
    **{dt: frozenset({int}) for dt in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
                                       "UINT32", "UINT64")},
    **{dt: frozenset({int, float}) for dt in ("FP16", "FP32", "FP64", "BF16")},
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
}  # fmt: skip
_JSON_NAME = {type(None): "null", bool: "a boolean", str: "a string", int: "an integer",
              float: "a number", list: "an array", dict: "an object"}  # fmt: skip
_WANTS = {"BOOL": "booleans", "BYTES": "strings"}


def _wants(datatype: str) -> str:
    return _WANTS.get(datatype) or ("integers" if datatype[0] in "IU" else "numbers")


def check_json_elements(data: list[Any], datatype: str, name: str) -> None:
    """Refuse any element of the wrong JSON type (no coercion of null, strings or booleans),
    naming its position. Nested arrays are walked with an explicit stack (no recursion limit)."""
    allowed = _JSON_ELEMENT[datatype]
    stack: list[tuple[list[Any], tuple[int, ...]]] = [(data, ())]
    while stack:
        items, where = stack.pop()
        kinds = set(map(type, items))  # one pass in C; the common case ends here
        if kinds.issubset(allowed):
            continue
        for i, x in enumerate(items):
            if type(x) is list:
                stack.append((x, (*where, i)))
            elif type(x) not in allowed:
                pos = "".join(f"[{j}]" for j in (*where, i))
                raise InvalidInput(
                    f"input '{name}': data{pos} is {_JSON_NAME.get(type(x), type(x).__name__)}; "
                    f"{datatype} 'data' takes {_wants(datatype)} only"
                )


def from_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> Any:
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a JSON array, got {type(data).__name__}")
    count = element_count(shape)
    check_json_elements(data, datatype, name)
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            arr = np.empty(flat.size, dtype=object)
            arr[:] = [_json_bytes(x, name) for x in flat]
        else:
            arr = np.asarray(data, dtype=NUMPY_DTYPE[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a valid {datatype} array: {exc}") from None
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, 'data' has {arr.size}"
        )
    return arr.reshape(shape)


def _json_bytes(x: Any, name: str) -> bytes:
    if isinstance(x, str):
        return x.encode()
    raise InvalidInput(f"input '{name}': BYTES 'data' elements must be strings, got {x!r}")


def to_json_data(arr: Any, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes | bytearray) else str(x)
            for x in np.asarray(arr, dtype=object).ravel()
        ]
    # orjson serialises contiguous numpy arrays natively (OPT_SERIALIZE_NUMPY), flat as v2 wants.
    return np.ascontiguousarray(arr, dtype=NUMPY_DTYPE[datatype]).ravel()


# ---- REST bodies ----


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _params(value: Any, what: str) -> dict[str, Any]:
    return {} if value is None else _obj(value, f"{what} 'parameters'")


def decode_infer_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str
) -> InferRequest:
    """Parse a REST infer body: JSON, or JSON header plus binary tensor data."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} exceeds the body length {len(body)}"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in request body: {exc}") from None
    doc = _obj(doc, "request body")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request body: 'inputs' must be a non-empty list")
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidInput(f"request 'id' must be a string, got {rid!r}")

    inputs: list[Tensor] = []
    offset = 0
    seen: set[str] = set()
    for i, raw in enumerate(raw_inputs):
        item = _obj(raw, f"inputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise InvalidInput(f"input '{name}' appears more than once")
        seen.add(name)
        what = f"input '{name}'"
        datatype = check_datatype(item.get("datatype"), what)
        shape = parse_shape(item.get("shape"), what)
        params = _params(item.get("parameters"), what)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{what}: 'binary_data_size' must be a non-negative integer")
            if "data" in item:
                raise InvalidInput(f"{what}: has both 'data' and 'binary_data_size'")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{what}: binary_data_size {size} runs past the binary data "
                    f"({len(binary) - offset} bytes left)"
                )
            data = from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in item:
            data = from_json_data(item["data"], datatype, shape, name)
        else:
            raise InvalidInput(f"{what}: needs 'data' or parameters.binary_data_size")
        inputs.append(Tensor(name, datatype, shape, data, params))
    if offset != len(binary):
        raise InvalidInput(f"binary tensor data has {len(binary) - offset} bytes that no input claims")

    outputs: list[RequestedOutput] | None = None
    if doc.get("outputs") is not None:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise InvalidInput("request body: 'outputs' must be a list")
        outputs = []
        for i, raw in enumerate(raw_outputs):
            item = _obj(raw, f"outputs[{i}]")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"outputs[{i}]: 'name' must be a non-empty string")
            params = _params(item.get("parameters"), f"output '{name}'")
            binary_flag = params.get("binary_data")
            outputs.append(RequestedOutput(name, None if binary_flag is None else bool(binary_flag), params))
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=outputs,
        id=rid,
        parameters=_params(doc.get("parameters"), "request"),
    )


def encode_infer_response(resp: InferResponse) -> tuple[bytes, int | None]:
    """JSON body, or JSON header + binary tensors (returns the header length then)."""
    out_docs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, t in enumerate(resp.outputs):
        doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if i < len(resp.binary) and resp.binary[i]:
            blob = to_raw(t.data, t.datatype)
            doc["parameters"] = {**t.parameters, "binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if t.parameters:
                doc["parameters"] = t.parameters
            doc["data"] = to_json_data(t.data, t.datatype)
        out_docs.append(doc)
    top: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        top["id"] = resp.id
    if resp.parameters:
        top["parameters"] = resp.parameters
    top["outputs"] = out_docs
    header = orjson.dumps(top, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
