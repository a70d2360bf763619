"""The transport-free data plane: health, metadata, and infer against one model.

Knows nothing of HTTP or gRPC. Front ends decode a request into `v2_types`, call this, and
encode what comes back; every failure is a typed error from `errors`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from kinfer_runtime.batching import Batcher
from kinfer_runtime.model import Signature
from kinfer_runtime.protocol.errors import InvalidInput, ModelNotFound, NotReady
from kinfer_runtime.protocol.v2_types import InferRequest, InferResponse, Tensor

SERVER_NAME = "kinfer"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "parameters"]
PLATFORM = {"torchscript": "pytorch_libtorch", "torch-export": "pytorch_export", "python": "python"}


class AnswerSink(Protocol):
    """Sees each successful infer after its answer is built (`shadow.Shadow`); must not wait."""

    def offer(self, request: InferRequest, response: InferResponse) -> None: ...


def answer_headers(model_version: str, track: str) -> list[tuple[str, str]]:
    """Sent with every inference answer (HTTP headers, gRPC metadata): who answered."""
    headers = [("kinfer-model-version", model_version)]
    return [("kinfer-track", track), *headers] if track else headers


def check_model(served: str, served_version: str, name: str, version: str, field: str = "model") -> None:
    """ModelNotFound unless `name` (and `version`, when given) is what this server serves;
    `field` names where the request carried the name."""
    if name != served:
        raise ModelNotFound(f"{field} '{name}' is not served here (serving '{served}')")
    if version not in ("", served_version):
        raise ModelNotFound(f"model '{name}' has no version '{version}' (serving '{served_version}')")


class DataPlane:
    def __init__(self, model_name: str, model_version: str, signature: Signature, track: str = "") -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.track = track  # stable or canary (KINFER_TRACK, set by the operator); "" alone
        self.signature = signature
        self._inputs = {s.name: s for s in signature.inputs}
        self._outputs = {s.name: s for s in signature.outputs}
        self.batcher: Batcher | None = None
        self._loaded = False
        self.draining = False
        # Triton's request parameter `timeout` is in microseconds; this is the default when
        # a request has none (None = no deadline).
        self.default_timeout_s: float | None = None
        self.shadow: AnswerSink | None = None  # canary drift check (--shadow-url)

    def answer_headers(self) -> list[tuple[str, str]]:
        return answer_headers(self.model_version, self.track)

    # ---- lifecycle ----

    def model_loaded(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self._loaded = True

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._loaded and not self.draining

    # ---- metadata ----

    def max_batch_size(self) -> int:
        """Most rows per request: --max-batch-size (capped by the signature's) once loaded."""
        if self.batcher is not None and self.signature.batched:
            return self.batcher.max_batch_size
        return self.signature.max_batch_size

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def check_model(self, name: str, version: str = "") -> None:
        check_model(self.model_name, self.model_version, name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        self.check_model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": PLATFORM.get(self.signature.format, self.signature.format),
            **self.signature.metadata(),
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """A Triton-style config, enough for clients that ask for it."""
        self.check_model(name, version)
        batched = self.signature.batched

        def spec(s: Any) -> dict[str, Any]:
            dims = list(s.shape[1:] if batched else s.shape)
            return {
                "name": s.name,
                "data_type": f"TYPE_{'STRING' if s.datatype == 'BYTES' else s.datatype}",
                "dims": dims,
            }

        return {
            "name": self.model_name,
            "platform": PLATFORM.get(self.signature.format, self.signature.format),
            "max_batch_size": self.max_batch_size(),
            "input": [spec(s) for s in self.signature.inputs],
            "output": [spec(s) for s in self.signature.outputs],
            "dynamic_batching": {} if batched else None,
        }

    # ---- infer ----

    def deadline(self, request: InferRequest, transport_deadline: float | None) -> float | None:
        """Loop-time deadline from the `timeout` parameter (µs), the transport, the default."""
        now = asyncio.get_running_loop().time()
        candidates = [] if transport_deadline is None else [transport_deadline]
        timeout = request.parameters.get("timeout")
        if timeout is not None:
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
                raise InvalidInput("parameter 'timeout' must be a non-negative number of µs")
            if timeout > 0:
                candidates.append(now + timeout / 1e6)
        if self.default_timeout_s:
            candidates.append(now + self.default_timeout_s)
        return min(candidates) if candidates else None

    def validate(self, request: InferRequest) -> int:
        """Check inputs against the signature; return the number of rows (1 if unbatched)."""
        sig = self.signature
        limit = self.max_batch_size()
        rows = -1
        seen = set()
        for t in request.inputs:
            spec = self._inputs.get(t.name)
            if spec is None:
                raise InvalidInput(
                    f"unknown input '{t.name}'; model '{self.model_name}' takes {sorted(self._inputs)}"
                )
            seen.add(t.name)
            if t.datatype != spec.datatype:
                raise InvalidInput(f"input '{t.name}': datatype {t.datatype}, expected {spec.datatype}")
            if len(t.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, t.shape, strict=True)
            ):
                raise InvalidInput(
                    f"input '{t.name}': shape {list(t.shape)}, expected {list(spec.shape)} (-1 = any size)"
                )
            if sig.batched:
                n = t.shape[0]
                if n < 1:
                    raise InvalidInput(f"input '{t.name}': batch dimension must be at least 1")
                if n > limit:
                    raise InvalidInput(f"input '{t.name}': batch of {n} rows exceeds max_batch_size {limit}")
                if rows not in (-1, n):
                    raise InvalidInput(f"input '{t.name}': batch dimension {n}, other inputs have {rows}")
                rows = n
        missing = [name for name in self._inputs if name not in seen]
        if missing:
            raise InvalidInput(f"missing input '{missing[0]}'; model needs {list(self._inputs)}")
        asked: set[str] = set()
        for out in request.outputs or ():
            if out.name not in self._outputs:
                raise InvalidInput(f"unknown output '{out.name}'; model has {sorted(self._outputs)}")
            if out.name in asked:
                raise InvalidInput(f"output '{out.name}' is requested more than once")
            asked.add(out.name)
        return rows if sig.batched else 1

    async def infer(self, request: InferRequest, transport_deadline: float | None = None) -> InferResponse:
        self.check_model(request.model_name, request.model_version)
        if not self._loaded or self.batcher is None:
            raise NotReady(f"model '{self.model_name}' is not loaded yet")
        rows = self.validate(request)
        deadline = self.deadline(request, transport_deadline)
        arrays = {t.name: t.data for t in request.inputs}
        result = await self.batcher.submit(arrays, rows, deadline)

        default_binary = bool(request.parameters.get("binary_data_output", False))
        if request.outputs:
            wanted = [(o.name, default_binary if o.binary is None else o.binary) for o in request.outputs]
        else:
            wanted = [(s.name, default_binary) for s in self.signature.outputs]
        outputs = []
        for name, _ in wanted:
            arr = result[name]
            outputs.append(Tensor(name, self._outputs[name].datatype, tuple(arr.shape), arr))
        response = InferResponse(
            model_name=self.model_name,
            model_version=self.model_version,
            outputs=outputs,
            binary=[b for _, b in wanted],
            id=request.id,
        )
        if self.shadow is not None:
            self.shadow.offer(request, response)
        return response
