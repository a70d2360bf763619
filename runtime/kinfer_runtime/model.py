"""The model contract, its signature file, and loading from a URI.

A model maps input arrays to output arrays, batch dimension first. Torch lives behind this in
`torch_model` (imported only when a torch model is loaded); `python` models are plain classes,
which keeps tests and the data plane free of torch.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import numpy as np

from kinfer_runtime.protocol.v2_types import NUMPY_DTYPE, TensorSpec

SIGNATURE_FILE = "signature.json"
FORMATS = ("torchscript", "torch-export", "python")
DEFAULT_FILE = {"torchscript": "model.pt", "torch-export": "model.pt2", "python": "model.py"}


class ModelConfigError(ValueError):
    """The model or its signature file cannot be used; the process exits with this message."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What `signature.json` beside the model says. Shapes include the batch dimension (-1)
    first when `max_batch_size` > 0."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    format: str
    file: str
    entrypoint: str = ""

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Signature:
        if not isinstance(doc, dict):
            raise ModelConfigError(f"{where}: must be a JSON object")
        fmt = doc.get("format", "torchscript")
        if fmt not in FORMATS:
            raise ModelConfigError(f"{where}: 'format' must be one of {FORMATS}, got {fmt!r}")
        mbs = doc.get("max_batch_size", 0)
        if not isinstance(mbs, int) or mbs < 0:
            raise ModelConfigError(f"{where}: 'max_batch_size' must be an integer >= 0")
        inputs = _specs(doc.get("inputs"), f"{where}: inputs", mbs > 0)
        outputs = _specs(doc.get("outputs"), f"{where}: outputs", mbs > 0)
        return cls(
            inputs,
            outputs,
            mbs,
            fmt,
            str(doc.get("file", DEFAULT_FILE[fmt])),
            str(doc.get("entrypoint", "")),
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
        }


def _specs(value: Any, where: str, batched: bool) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ModelConfigError(f"{where}: must be a non-empty list")
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ModelConfigError(f"{where}[{i}]: needs a 'name'")
        dt = item.get("datatype")
        if dt not in NUMPY_DTYPE:
            raise ModelConfigError(f"{where}[{i}]: unknown datatype {dt!r}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ModelConfigError(f"{where}[{i}]: 'shape' must be a list of integers >= -1")
        if batched and (not shape or shape[0] != -1):
            raise ModelConfigError(f"{where}[{i}]: with max_batch_size > 0 the first dimension must be -1")
        specs.append(TensorSpec(item["name"], dt, tuple(shape)))
    return tuple(specs)


class Model(Protocol):
    signature: Signature
    device: str

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Input arrays by name -> output arrays by name (numpy, batch dimension first)."""
        ...


def resolve_path(uri: str) -> Path:
    """`file:///abs/path` or a plain path (a mounted PVC) -> local path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ModelConfigError(
        f"model URI {uri!r}: scheme {parsed.scheme!r} is not served by the runtime; the operator "
        "mounts pvc:// models and passes a path"
    )


def _read_signature(path: Path) -> tuple[Path, Any]:
    directory = path if path.is_dir() else path.parent
    sig_path = directory / SIGNATURE_FILE
    try:
        return sig_path, json.loads(sig_path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"no {SIGNATURE_FILE} beside the model in {directory}") from None
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{sig_path}: not valid JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class GenerativeSignature:
    """`signature.json` of a causal language model: `{"kind": "generative", "context_length":
    N, "max_new_tokens": M}` beside a transformers directory (config.json, *.safetensors,
    tokenizer files). `dtype`: auto (float32 on CPU, the config's dtype on GPU), float32,
    float16 or bfloat16."""

    directory: Path
    context_length: int
    max_new_tokens: int
    dtype: str = "auto"
    format: str = "generative"

    @classmethod
    def from_dict(cls, directory: Path, doc: dict[str, Any], where: str) -> GenerativeSignature:
        values = {}
        for key in ("context_length", "max_new_tokens"):
            value = doc.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelConfigError(f"{where}: '{key}' must be an integer >= 1, got {value!r}")
            values[key] = value
        if values["max_new_tokens"] >= values["context_length"]:
            raise ModelConfigError(f"{where}: 'max_new_tokens' must be less than 'context_length'")
        dtype = doc.get("dtype", "auto")
        if dtype not in DTYPES:
            raise ModelConfigError(f"{where}: 'dtype' must be one of {DTYPES}, got {dtype!r}")
        if not (directory / "config.json").exists():
            raise ModelConfigError(f"{directory}: a generative model needs config.json (save_pretrained)")
        return cls(directory, values["context_length"], values["max_new_tokens"], dtype)


DTYPES = ("auto", "float32", "float16", "bfloat16")


def generative_signature(uri: str) -> GenerativeSignature | None:
    """The signature of a generative model directory, or None for a tensor model."""
    path = resolve_path(uri)
    sig_path, doc = _read_signature(path)
    if not isinstance(doc, dict) or doc.get("kind", "tensor") != "generative":
        return None
    return GenerativeSignature.from_dict(path if path.is_dir() else path.parent, doc, str(sig_path))


def locate(uri: str) -> tuple[Path, Signature]:
    """The model file and its signature. The URI names the model directory or the file in it."""
    path = resolve_path(uri)
    directory = path if path.is_dir() else path.parent
    sig_path, doc = _read_signature(path)
    if isinstance(doc, dict) and doc.get("kind", "tensor") not in ("tensor", "generative"):
        raise ModelConfigError(f"{sig_path}: 'kind' must be tensor or generative, got {doc['kind']!r}")
    sig = Signature.from_dict(doc, str(sig_path))
    model_file = path if path.is_file() else directory / sig.file
    if not model_file.exists():
        raise ModelConfigError(f"model file {model_file} does not exist")
    return model_file, sig


def load_model(uri: str, device: str = "auto") -> Model:
    model_file, sig = locate(uri)
    if sig.format == "python":
        return _load_python(model_file, sig, device)
    from kinfer_runtime import torch_model  # torch is heavy: import it only for torch models

    return torch_model.TorchModel(model_file, sig, device)


def _load_python(model_file: Path, sig: Signature, device: str) -> Model:
    class_name = sig.entrypoint or "Model"
    mod_name = f"kinfer_user_model_{abs(hash(str(model_file)))}"
    spec = importlib.util.spec_from_file_location(mod_name, model_file)
    if spec is None or spec.loader is None:
        raise ModelConfigError(f"cannot import {model_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelConfigError(f"{model_file} has no class {class_name!r}")
    model: Model = cls(sig, "cpu" if device == "auto" else device)
    return model


def example_inputs(sig: Signature, rows: int) -> dict[str, Any]:
    """Zeros of the right dtype and shape (-1 dims become `rows` / 1), for warm-up."""
    out: dict[str, Any] = {}
    for spec in sig.inputs:
        dims = [rows if (i == 0 and sig.batched) else max(d, 1) for i, d in enumerate(spec.shape)]
        if spec.datatype == "BYTES":
            arr = np.empty(dims, dtype=object)
            arr.fill(b"")
        else:
            arr = np.zeros(dims, dtype=NUMPY_DTYPE[spec.datatype])
        out[spec.name] = arr
    return out
