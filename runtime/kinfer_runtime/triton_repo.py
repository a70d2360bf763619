"""A Triton model repository from a model directory (pods of `runtime.server: triton`).

`kinfer-runtime triton-repo MODEL_DIR REPO --name NAME [--max-batch-size N] [--max-delay-ms D]
[--max-queue Q] [--gpus G]` runs as an init container and lays out REPO for `tritonserver
--model-repository=REPO`:

- a kinfer model directory (`signature.json`, no `config.pbtxt`): `REPO/NAME/config.pbtxt` written
  from the signature and the batching flags, `REPO/NAME/1/` holding the Python backend's
  `model.py` (below: it runs the TorchScript or torch-export file with torch), the signature and a
  link to the model file;
- a Triton model directory (`config.pbtxt` in it): linked as `REPO/<its config name or NAME>`,
  served as is; when a `signature.json` sits beside it the two must agree (inputs, outputs,
  datatypes, dims, max_batch_size) or nothing is laid out;
- a Triton repository (sub-directories holding `config.pbtxt`): each linked, served as is.

Pure functions (`config_pbtxt`, `parse_pbtxt`, `disagreements`) do the work; `main` is the I/O.
A refusal exits 1 with one line naming what is wrong (the pod's termination message).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinfer_runtime.model import SIGNATURE_FILE, ModelConfigError, Signature, resolve_path
from kinfer_runtime.protocol.v2_types import TensorSpec

CONFIG = "config.pbtxt"
VERSION = "1"
# v2 datatype -> Triton's config data_type. BYTES is TYPE_STRING in Triton's config.
_V2_TYPES = (
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BF16", "BYTES"),
)
DATA_TYPE = {dt: f"TYPE_{'STRING' if dt == 'BYTES' else dt}" for dt in _V2_TYPES}
# What the generated model.py can hand to torch (numpy has no bfloat16; BYTES are not tensors).
GENERATED_TYPES = set(DATA_TYPE) - {"BF16", "BYTES"}


@dataclass(frozen=True)
class Batching:
    """spec.runtime.batching as the operator passes it."""

    max_batch_size: int = 32
    max_delay_ms: int = 5
    max_queue: int = 512


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dims = list(spec.shape[1:] if batched else spec.shape)
    # Triton wants at least one dimension; a tensor of the batch dimension only is [1] reshaped.
    shape = ", ".join(map(str, dims or [1]))
    reshape = "" if dims else " reshape: { shape: [ ] }"
    return f'  {{ name: "{spec.name}" data_type: {DATA_TYPE[spec.datatype]} dims: [ {shape} ]{reshape} }}'


def config_pbtxt(name: str, sig: Signature, batching: Batching, gpus: int) -> str:
    """Triton's config for the generated Python-backend model. Raises ModelConfigError for what
    it cannot serve."""
    if sig.format not in ("torchscript", "torch-export"):
        raise ModelConfigError(
            f"signature format {sig.format!r}: Triton pods serve torchscript and torch-export models; "
            "for others put a config.pbtxt (and your backend's model) in the model directory"
        )
    for spec in (*sig.inputs, *sig.outputs):
        if spec.datatype not in GENERATED_TYPES:
            raise ModelConfigError(
                f"tensor {spec.name!r}: datatype {spec.datatype} is not served by the generated Triton "
                "model; put a config.pbtxt in the model directory"
            )
    batched = sig.batched
    rows = min(sig.max_batch_size, batching.max_batch_size) if batched else 0
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {rows}",
        "input [",
        ",\n".join(_tensor(s, batched) for s in sig.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(s, batched) for s in sig.outputs),
        "]",
    ]
    if rows > 1:
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {batching.max_delay_ms * 1000}",
            # Past max_queue_size Triton refuses at once (HTTP 503 / UNAVAILABLE).
            f"  default_queue_policy {{ max_queue_size: {batching.max_queue} }}",
            "}",
        ]
    if gpus > 0:
        ids = ", ".join(str(i) for i in range(gpus))
        lines.append(f"instance_group [ {{ count: 1 kind: KIND_GPU gpus: [ {ids} ] }} ]")
    else:
        lines.append("instance_group [ { count: 1 kind: KIND_CPU } ]")
    return "\n".join(lines) + "\n"


# --- reading a user's config.pbtxt (protobuf text format, the parts Triton configs use) ------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"\']+')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ModelConfigError(f"{CONFIG}: cannot read {text[pos : pos + 20]!r}")
        tok, pos = m.group(0), m.end()
        if not tok.isspace() and not tok.startswith("#"):
            out.append(tok)
    return out


def _scalar(tok: str) -> Any:
    if tok[:1] in "\"'":
        return tok[1:-1]
    try:
        return int(tok)
    except ValueError:
        try:
            return float(tok)
        except ValueError:
            return tok  # an enum name or true/false


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Text format -> {field: [values]} (every field a list: protobuf fields may repeat; a
    message is a dict of the same kind)."""
    toks = _tokens(text)
    pos = 0

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            pos += 1
            if pos < len(toks) and toks[pos] == ":":
                pos += 1
            fields.setdefault(key, []).extend(values())
            if pos < len(toks) and toks[pos] in ",;":
                pos += 1
        if end is not None:
            if pos >= len(toks):
                raise ModelConfigError(f"{CONFIG}: missing {end!r}")
            pos += 1
        return fields

    def values() -> list[Any]:
        nonlocal pos
        if pos >= len(toks):
            raise ModelConfigError(f"{CONFIG}: a field without a value at the end")
        tok = toks[pos]
        pos += 1
        if tok in "{<":
            return [message("}" if tok == "{" else ">")]
        if tok == "[":
            items: list[Any] = []
            while pos < len(toks) and toks[pos] != "]":
                if toks[pos] == ",":
                    pos += 1
                    continue
                items.extend(values())
            pos += 1
            return items
        return [_scalar(tok)]

    return message(None)


def _one(fields: dict[str, list[Any]], key: str, default: Any) -> Any:
    got = fields.get(key) or [default]
    return got[0]


def disagreements(config: dict[str, list[Any]], sig: Signature) -> list[str]:
    """What a parsed config.pbtxt says differently from signature.json (empty: they agree)."""
    problems = []
    mbs = int(_one(config, "max_batch_size", 0))
    if (mbs > 0) != sig.batched:
        problems.append(f"max_batch_size {mbs} in {CONFIG}, {sig.max_batch_size} in {SIGNATURE_FILE}")
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        declared = {str(_one(t, "name", "")): t for t in config.get(kind, [])}
        for spec in specs:
            tensor = declared.pop(spec.name, None)
            if tensor is None:
                problems.append(f"{kind} {spec.name!r} of {SIGNATURE_FILE} is not in {CONFIG}")
                continue
            data_type = str(_one(tensor, "data_type", ""))
            if data_type != DATA_TYPE[spec.datatype]:
                problems.append(
                    f"{kind} {spec.name!r}: {data_type} in {CONFIG}, {spec.datatype} in {SIGNATURE_FILE}"
                )
            dims = [int(d) for d in tensor.get("dims", [])]
            want = list(spec.shape[1:] if sig.batched and mbs > 0 else spec.shape)
            if dims != want and not (dims == [1] and not want):
                problems.append(f"{kind} {spec.name!r}: dims {dims} in {CONFIG}, {want} in {SIGNATURE_FILE}")
        problems += [f"{kind} {n!r} of {CONFIG} is not in {SIGNATURE_FILE}" for n in declared]
    return problems


# --- laying out the repository ----------------------------------------------------------------

# The Python backend's model: runs the TorchScript or torch-export file beside it with torch,
# one forward per dynamic batch (the rows of every request of the batch, split back by offset);
# a forward that raises fails every request of the batch.
# Text, not a module of this package: it runs inside Triton's backend stub, not here.
MODEL_PY = r'''"""Written by kinfer-runtime triton-repo: serves the torch model named by signature.json."""
import json
import os
import warnings

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated")


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "signature.json")) as f:
            sig = json.load(f)
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = "cuda:%s" % args["model_instance_device_id"] if gpu else "cpu"
        path = os.path.join(here, os.path.basename(sig.get("file", "model.pt")))
        if sig.get("format", "torchscript") == "torch-export":
            self.net = torch.export.load(path).module().to(self.device)
        else:
            self.net = torch.jit.load(path, map_location=self.device).eval()
        self.inputs = [t["name"] for t in sig["inputs"]]
        self.outputs = [t["name"] for t in sig["outputs"]]
        self.batched = int(sig.get("max_batch_size", 0)) > 0

    def _forward(self, arrays):
        with torch.inference_mode():
            got = self.net(*[torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays])
        if isinstance(got, dict):
            got = [got[n] for n in self.outputs]
        elif not isinstance(got, (list, tuple)):
            got = [got]
        return [t.detach().cpu().numpy() for t in got]

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        shapes = {tuple(a.shape[1:] for a in request) for request in arrays}
        if self.batched and len(requests) > 1 and len(shapes) == 1:
            groups = [list(range(len(requests)))]
        else:
            groups = [[i] for i in range(len(requests))]
        responses = [None] * len(requests)
        for group in groups:
            try:
                if len(group) == 1:
                    outs = [self._forward(arrays[group[0]])]
                else:
                    columns = [np.concatenate([arrays[i][k] for i in group]) for k in range(len(self.inputs))]
                    joined = self._forward(columns)
                    outs, start = [], 0
                    for i in group:
                        rows = len(arrays[i][0])
                        outs.append([o[start:start + rows] for o in joined])
                        start += rows
                for i, out in zip(group, outs):
                    tensors = [pb_utils.Tensor(n, o) for n, o in zip(self.outputs, out)]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as exc:
                # Raised, not an error response: Triton counts only this as a failure
                # (nv_inference_request_failure{reason="BACKEND"}: canary analysis reads it);
                # every request of this execute call gets the error.
                raise pb_utils.TritonModelException(str(exc)) from exc
        return responses
'''


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _served_name(model_dir: Path, default: str) -> str:
    config = parse_pbtxt((model_dir / CONFIG).read_text())
    return str(_one(config, "name", default)) or default


def lay_out(model_dir: Path, repo: Path, name: str, batching: Batching, gpus: int) -> list[str]:
    """Write REPO; the model names it will serve. Raises ModelConfigError."""
    repo.mkdir(parents=True, exist_ok=True)
    if (model_dir / CONFIG).is_file():
        sig_path = model_dir / SIGNATURE_FILE
        if sig_path.is_file():
            sig = Signature.from_dict(json.loads(sig_path.read_text()), str(sig_path))
            problems = disagreements(parse_pbtxt((model_dir / CONFIG).read_text()), sig)
            if problems:
                raise ModelConfigError(f"{CONFIG} disagrees with {SIGNATURE_FILE}: " + "; ".join(problems))
        served = _served_name(model_dir, name)
        _link(model_dir.resolve(), repo / served)
        return [served]
    models = sorted(d for d in model_dir.iterdir() if (d / CONFIG).is_file()) if model_dir.is_dir() else []
    if models and not (model_dir / SIGNATURE_FILE).exists():
        for d in models:
            _link(d.resolve(), repo / d.name)
        return [d.name for d in models]
    sig_path = model_dir / SIGNATURE_FILE
    try:
        doc = json.loads(sig_path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(
            f"{model_dir}: neither {SIGNATURE_FILE} nor {CONFIG} (nor models holding one)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{sig_path}: not valid JSON: {exc}") from None
    sig = Signature.from_dict(doc, str(sig_path))
    text = config_pbtxt(name, sig, batching, gpus)
    model_file = model_dir / sig.file
    if not model_file.exists():
        raise ModelConfigError(f"model file {model_file} does not exist")
    version = repo / name / VERSION
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / CONFIG).write_text(text)
    (version / "model.py").write_text(MODEL_PY)
    (version / SIGNATURE_FILE).write_text(json.dumps(doc))
    _link(model_file.resolve(), version / Path(sig.file).name)
    return [name]


def visible_gpus() -> int:
    """GPUs this container sees: /dev/nvidiaN devices (the device plugin mounts only the pod's)."""
    return sum(1 for d in Path("/dev").glob("nvidia*") if d.name[6:].isdigit())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kinfer-runtime triton-repo", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", help="file:///path or a path: the model directory")
    ap.add_argument("repo", type=Path)
    ap.add_argument("--name", required=True, help="model name served (the InferenceService's)")
    ap.add_argument("--max-batch-size", type=int, default=Batching.max_batch_size)
    ap.add_argument("--max-delay-ms", type=int, default=Batching.max_delay_ms)
    ap.add_argument("--max-queue", type=int, default=Batching.max_queue)
    ap.add_argument(
        "--gpus", type=int, default=0, help="GPUs requested; instances use those visible (at most)"
    )
    args = ap.parse_args(argv)
    gpus = min(args.gpus, visible_gpus())
    batching = Batching(args.max_batch_size, args.max_delay_ms, args.max_queue)
    try:
        served = lay_out(resolve_path(args.model_dir), args.repo, args.name, batching, gpus)
    except (ModelConfigError, OSError) as exc:
        print(f"triton-repo: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        json.dumps({"msg": "triton repository ready", "repo": str(args.repo), "models": served, "gpus": gpus})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
