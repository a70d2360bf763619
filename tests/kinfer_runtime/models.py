"""Tiny models written into a temp dir for the runtime tests; no weights are downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kinfer_dev.tiny_lm import LM_CORPUS as LM_CORPUS
from kinfer_dev.tiny_lm import make_tiny_lm as make_tiny_lm

MLP_IN, MLP_OUT = 8, 4
DTYPES = ["FP32", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL", "BYTES"]


def _write_signature(directory: Path, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "signature.json").write_text(json.dumps(doc, indent=2))
    return directory


def make_mlp(directory: Path, max_batch_size: int = 32) -> Path:
    """TorchScript 8 -> 16 -> 4 MLP with fixed weights."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(MLP_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, MLP_OUT)
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.script(net).save(str(directory / "model.pt"))
    return _write_signature(
        directory,
        {
            "format": "torchscript",
            "max_batch_size": max_batch_size,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, MLP_IN]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, MLP_OUT]}],
        },
    )


def make_mlp_export(directory: Path) -> Path:
    """The same MLP as a torch.export archive."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(MLP_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, MLP_OUT)
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    ep = torch.export.export(net, (torch.zeros(2, MLP_IN),), dynamic_shapes=({0: batch},))
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(directory / "model.pt2"))
    return _write_signature(
        directory,
        {
            "format": "torch-export",
            "max_batch_size": 32,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, MLP_IN]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, MLP_OUT]}],
        },
    )


_DTYPES_SRC = """
import torch
from typing import List, Tuple


class AllTypes(torch.nn.Module):
    def forward(self, f32: torch.Tensor, f16: torch.Tensor, bf16: torch.Tensor,
                i8: torch.Tensor, i16: torch.Tensor, i32: torch.Tensor, i64: torch.Tensor,
                u8: torch.Tensor, b: torch.Tensor, s: List[str]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
        return (f32 * 2, f16 * 2, bf16 * 2, i8 + 1, i16 + 1, i32 + 1, i64 + 1, u8 + 1,
                torch.logical_not(b), [x.upper() for x in s])
"""


def make_dtypes(directory: Path) -> Path:
    """TorchScript model with one input and output per datatype: x*2, x+1, not x, upper."""
    import importlib.util
    import sys

    import torch

    directory.mkdir(parents=True, exist_ok=True)
    src = directory / "alltypes_src.py"
    src.write_text(_DTYPES_SRC)
    spec = importlib.util.spec_from_file_location("kinfer_test_alltypes", src)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kinfer_test_alltypes"] = module
    spec.loader.exec_module(module)
    torch.jit.script(module.AllTypes()).save(str(directory / "model.pt"))
    return _write_signature(
        directory,
        {
            "format": "torchscript",
            "max_batch_size": 16,
            "inputs": [
                {"name": f"in_{dt}", "datatype": dt, "shape": [-1, 2 if dt == "BYTES" else 3]}
                for dt in DTYPES
            ],
            "outputs": [
                {"name": f"out_{dt}", "datatype": dt, "shape": [-1, 2 if dt == "BYTES" else 3]}
                for dt in DTYPES
            ],
        },
    )


_SLOW_SRC = '''
import os
import time

import numpy as np


class Model:
    """y = x * 2 after sleeping; a row whose first value is -1 makes the whole batch fail."""

    def __init__(self, signature, device):
        self.signature = signature
        self.device = device
        self.delay = float(os.environ.get("KINFER_TEST_DELAY_S", "0.05"))

    def forward(self, inputs):
        x = inputs["x"]
        if self.delay:
            time.sleep(self.delay)
        if (x[:, 0] == -1).any():
            raise RuntimeError("poisoned row")
        return {"y": x * 2}
'''


def make_slow(directory: Path, max_batch_size: int = 8) -> Path:
    """A python-format model that sleeps per batch (KINFER_TEST_DELAY_S) and can fail."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(_SLOW_SRC)
    return _write_signature(
        directory,
        {
            "format": "python",
            "entrypoint": "Model",
            "max_batch_size": max_batch_size,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        },
    )
