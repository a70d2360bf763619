"""Fixtures: tiny models in a temp dir and real `kinfer-runtime` processes on 127.0.0.1."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kinfer_runtime import models
from tests.kinfer_runtime.server_proc import Server, start_server


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        models.make_mlp(root / "mlp")
        models.make_dtypes(root / "dtypes")
        models.make_mlp_export(root / "mlpx")
    models.make_slow(root / "slow")
    return root


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def _session_server(model_root: Path, logs_dir: Path, name: str, *args: str) -> Iterator[Server]:
    server = start_server(model_root / name, logs_dir, *args)
    yield server
    assert server.stop() == 0, server.log_path.read_text()


@pytest.fixture(scope="session")
def mlp_server(model_root: Path, logs_dir: Path) -> Iterator[Server]:
    yield from _session_server(model_root, logs_dir, "mlp", "--max-delay-ms", "2")


@pytest.fixture(scope="session")
def dtypes_server(model_root: Path, logs_dir: Path) -> Iterator[Server]:
    yield from _session_server(model_root, logs_dir, "dtypes")
