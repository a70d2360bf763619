"""The Triton model repository made from a model directory (runtime.server: triton): the
config.pbtxt written from signature.json, the check of a user's config.pbtxt, the layout, and
the generated Python-backend model run against a stand-in for Triton's backend utilities."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kinfer_runtime import triton_repo
from kinfer_runtime.model import ModelConfigError, Signature
from kinfer_runtime.triton_repo import Batching, config_pbtxt, disagreements, lay_out, parse_pbtxt
from tests.kinfer_runtime import models

SIG = Signature.from_dict(
    {
        "format": "torchscript",
        "max_batch_size": 32,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 8]},
            {"name": "ids", "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [{"name": "y", "datatype": "FP16", "shape": [-1, -1, 4]}],
    },
    "signature.json",
)


def test_config_from_the_signature_and_the_batching_settings() -> None:
    text = config_pbtxt("ranker", SIG, Batching(max_batch_size=16, max_delay_ms=3, max_queue=100), gpus=2)
    assert text == (
        'name: "ranker"\n'
        'backend: "python"\n'
        "max_batch_size: 16\n"
        "input [\n"
        '  { name: "x" data_type: TYPE_FP32 dims: [ 8 ] },\n'
        '  { name: "ids" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } }\n'
        "]\n"
        "output [\n"
        '  { name: "y" data_type: TYPE_FP16 dims: [ -1, 4 ] }\n'
        "]\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 3000\n"
        "  default_queue_policy { max_queue_size: 100 }\n"
        "}\n"
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] } ]\n"
    )


def test_the_signature_bounds_the_batch_and_an_unbatched_model_gets_no_batcher() -> None:
    small = Signature.from_dict({**_doc(SIG), "max_batch_size": 4}, "s")
    assert "max_batch_size: 4\n" in config_pbtxt("m", small, Batching(max_batch_size=32), gpus=0)
    unbatched = Signature.from_dict(
        {"max_batch_size": 0, "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
         "outputs": [{"name": "y", "datatype": "FP32", "shape": [3]}]}, "s",
    )  # fmt: skip
    text = config_pbtxt("m", unbatched, Batching(), gpus=0)
    assert "max_batch_size: 0\n" in text and "dynamic_batching" not in text
    assert text.endswith("instance_group [ { count: 1 kind: KIND_CPU } ]\n")


def test_what_the_generated_model_cannot_serve_is_refused_with_the_reason() -> None:
    doc = _doc(SIG)
    doc["outputs"] = [{"name": "label", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(ModelConfigError, match=r"tensor 'label': datatype BYTES .* put a config.pbtxt"):
        config_pbtxt("m", Signature.from_dict(doc, "s"), Batching(), 0)
    with pytest.raises(ModelConfigError, match=r"format 'python'"):
        config_pbtxt("m", Signature.from_dict({**_doc(SIG), "format": "python"}, "s"), Batching(), 0)


def test_the_written_config_reads_back_and_agrees_with_its_signature() -> None:
    parsed = parse_pbtxt(config_pbtxt("m", SIG, Batching(), 1))
    assert parsed["name"] == ["m"] and parsed["max_batch_size"] == [32]
    assert parsed["input"][0] == {"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [8]}
    assert parsed["dynamic_batching"][0]["default_queue_policy"][0] == {"max_queue_size": [512]}
    assert disagreements(parsed, SIG) == []


def test_a_config_that_disagrees_names_every_difference() -> None:
    user = """
    # a hand-written config
    name: "m"  platform: "pytorch_libtorch"
    max_batch_size: 8
    input: [ { name: "x", data_type: TYPE_FP64, dims: [ 16 ] } ]
    input { name: "extra" data_type: TYPE_FP32 dims: [1] }
    output [ { name: "y" data_type: TYPE_FP16 dims: [ -1, 4 ] } ]
    """
    assert disagreements(parse_pbtxt(user), SIG) == [
        "input 'x': TYPE_FP64 in config.pbtxt, FP32 in signature.json",
        "input 'x': dims [16] in config.pbtxt, [8] in signature.json",
        "input 'ids' of signature.json is not in config.pbtxt",
        "input 'extra' of config.pbtxt is not in signature.json",
    ]
    unbatched = parse_pbtxt(user.replace("max_batch_size: 8", "max_batch_size: 0"))
    assert disagreements(unbatched, SIG)[0] == "max_batch_size 0 in config.pbtxt, 32 in signature.json"


def test_unreadable_text_is_a_config_error() -> None:
    with pytest.raises(ModelConfigError, match="missing '}'"):
        parse_pbtxt('input { name: "x"')


def test_a_kinfer_model_directory_becomes_a_python_backend_model(tmp_path: Path) -> None:
    model = _mlp(tmp_path / "mlp")
    assert lay_out(model, tmp_path / "repo", "ranker", Batching(max_batch_size=8), gpus=0) == ["ranker"]
    version = tmp_path / "repo" / "ranker" / "1"
    assert (version / "model.pt").resolve() == (model / "model.pt").resolve()
    assert json.loads((version / "signature.json").read_text()) == json.loads(
        (model / "signature.json").read_text()
    )
    assert "max_batch_size: 8" in (tmp_path / "repo" / "ranker" / "config.pbtxt").read_text()
    assert (version / "model.py").read_text() == triton_repo.MODEL_PY
    # a second run (a restarted init container) lays out the same again
    assert lay_out(model, tmp_path / "repo", "ranker", Batching(max_batch_size=8), gpus=0) == ["ranker"]


def test_a_triton_model_or_repository_is_served_as_is(tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "1").mkdir(parents=True)
    (own / "config.pbtxt").write_text('name: "resnet" backend: "onnxruntime"\n')
    assert lay_out(own, tmp_path / "r1", "svc", Batching(), 0) == ["resnet"]
    assert (tmp_path / "r1" / "resnet").resolve() == own.resolve()
    repo = tmp_path / "repository"
    for name in ("a", "b"):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text('backend: "python"\n')
    assert lay_out(repo, tmp_path / "r2", "svc", Batching(), 0) == ["a", "b"]
    assert (tmp_path / "r2" / "b" / "config.pbtxt").read_text() == 'backend: "python"\n'


def test_a_config_that_disagrees_with_the_signature_is_refused_before_triton_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mlp(tmp_path / "mlp")
    (model / "config.pbtxt").write_text(
        'backend: "python" max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 9 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    code = triton_repo.main([f"file://{model}", str(tmp_path / "repo"), "--name", "m"])
    assert code == 1 and not (tmp_path / "repo" / "m").exists()
    assert capsys.readouterr().err == (
        "triton-repo: config.pbtxt disagrees with signature.json: "
        "input 'x': dims [9] in config.pbtxt, [8] in signature.json\n"
    )
    assert triton_repo.main([str(tmp_path / "nothing"), str(tmp_path / "r"), "--name", "m"]) == 1
    assert "neither signature.json nor config.pbtxt" in capsys.readouterr().err


def test_gpus_are_those_requested_and_visible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _mlp(tmp_path / "mlp")
    assert triton_repo.main([str(model), str(tmp_path / "repo"), "--name", "m", "--gpus", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gpus"] == min(4, triton_repo.visible_gpus())


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray[Any, Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray[Any, Any]:
        return self.array


class _FakeModelException(Exception):
    pass


class _FakeResponse:
    def __init__(self, output_tensors: list[_FakeTensor] | None = None, error: Any = None) -> None:
        self.outputs, self.error = output_tensors or [], error


def _backend_utils() -> types.ModuleType:
    """What model.py uses of Triton's triton_python_backend_utils."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _FakeTensor  # type: ignore[attr-defined]
    pb.InferenceResponse = _FakeResponse  # type: ignore[attr-defined]
    pb.TritonModelException = _FakeModelException  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: _FakeTensor(name, request[name])  # type: ignore[attr-defined]
    return pb


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_generated_model_runs_a_dynamic_batch_in_one_forward_and_splits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    model = _mlp(tmp_path / "mlp")
    lay_out(model, tmp_path / "repo", "m", Batching(), 0)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _backend_utils())
    namespace: dict[str, Any] = {"__file__": str(tmp_path / "repo" / "m" / "1" / "model.py")}
    exec(compile(triton_repo.MODEL_PY, "model.py", "exec"), namespace)
    served = namespace["TritonPythonModel"]()
    served.initialize({"model_instance_kind": "CPU", "model_instance_device_id": "0"})
    rng = np.random.default_rng(0)
    requests = [{"x": rng.standard_normal((rows, 8)).astype(np.float32)} for rows in (1, 3, 2)]
    calls = []
    net = served.net
    served.net = lambda *a: calls.append(a[0].shape[0]) or net(*a)
    responses = served.execute(requests)
    assert calls == [6]  # one forward for the three requests
    reference = torch.jit.load(str(model / "model.pt"))
    for request, response in zip(requests, responses, strict=True):
        (out,) = response.outputs
        want = reference(torch.from_numpy(request["x"])).detach().numpy()
        assert out.name == "y" and np.allclose(out.array, want, atol=1e-6)
    # a forward that raises fails the batch through Triton (which counts it as a failure: an
    # error response would count as a success)
    served.net = lambda *a: (_ for _ in ()).throw(RuntimeError("bad weights"))
    with pytest.raises(_FakeModelException, match=r"^bad weights$"):
        served.execute(requests)


def _mlp(directory: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        return models.make_mlp(directory)


def _doc(sig: Signature) -> dict[str, Any]:
    return {
        "format": sig.format,
        "max_batch_size": sig.max_batch_size,
        "inputs": [s.metadata() for s in sig.inputs],
        "outputs": [s.metadata() for s in sig.outputs],
    }
