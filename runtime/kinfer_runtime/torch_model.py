"""Torch models (TorchScript and torch.export archives). The only module that imports torch.

The module is called with one positional argument per signature input, in signature order, and
returns a tensor, a tuple/list of tensors (signature output order) or a dict by output name.
BYTES inputs arrive as a flat `List[str]`; a BYTES output is returned as `List[str]`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinfer_runtime.model import ModelConfigError, Signature
from kinfer_runtime.protocol.errors import ModelFailed
from kinfer_runtime.protocol.v2_types import NUMPY_DTYPE, TensorSpec

TORCH_DTYPE: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TorchModel:
    def __init__(self, path: Path, signature: Signature, device: str = "auto") -> None:
        self.signature = signature
        self.device = pick_device(device)
        self._torch_device = torch.device(self.device)
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates TorchScript loudly; it is still a format we serve
                warnings.simplefilter("ignore", FutureWarning)
                module = self._load(path, signature.format)
        except Exception as exc:
            raise ModelConfigError(f"cannot load {signature.format} model {path}: {exc}") from exc
        if signature.format == "torchscript":
            module.eval()  # exported programs are already in inference form and refuse eval()
        self._module = module

    def _load(self, path: Path, fmt: str) -> Any:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=self._torch_device)  # type: ignore[no-untyped-call]
        return torch.export.load(str(path)).module().to(self._torch_device)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        sig = self.signature
        args = [self._to_torch(inputs[spec.name], spec) for spec in sig.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, dict):
            values = [result[spec.name] for spec in sig.outputs]
        elif isinstance(result, tuple | list) and len(sig.outputs) > 1:
            values = list(result)
        else:
            values = [result]
        if len(values) != len(sig.outputs):
            raise ModelFailed(
                f"model returned {len(values)} outputs, the signature declares {len(sig.outputs)}"
            )
        first = next(iter(inputs.values()))
        rows = len(first) if sig.batched else 0
        return {spec.name: self._to_numpy(v, spec, rows) for spec, v in zip(sig.outputs, values, strict=True)}

    def _to_torch(self, arr: Any, spec: TensorSpec) -> Any:
        if spec.datatype == "BYTES":
            return [x.decode("utf-8", "replace") for x in arr.ravel()]
        if spec.datatype == "BF16":
            return torch.from_numpy(np.array(arr, dtype=np.float32)).to(self._torch_device, torch.bfloat16)
        if not arr.flags.writeable:  # torch warns on read-only numpy memory (np.frombuffer)
            arr = arr.copy()
        return torch.from_numpy(arr).to(self._torch_device)

    @staticmethod
    def _to_numpy(value: Any, spec: TensorSpec, rows: int) -> Any:
        if spec.datatype == "BYTES":
            if not isinstance(value, list | tuple):
                raise ModelFailed(f"output '{spec.name}': BYTES outputs must be a list of str")
            arr = np.empty(len(value), dtype=object)
            arr[:] = [x.encode() if isinstance(x, str) else bytes(x) for x in value]
            return arr.reshape((rows, -1)) if rows else arr
        if not isinstance(value, torch.Tensor):
            raise ModelFailed(f"output '{spec.name}': expected a tensor, got {type(value).__name__}")
        t = value.detach()
        if t.dtype == torch.bfloat16 or spec.datatype == "BF16":
            t = t.float()  # numpy has no bfloat16; BF16 travels as float32 until encoding
        out = t.cpu().numpy()
        want = NUMPY_DTYPE[spec.datatype]
        return out if out.dtype == want else out.astype(want)
