"""Fixtures: tiny models in a temp dir and real `kinfer-runtime` processes on 127.0.0.1.

With KINFER_V2_TARGET set (`HTTP_HOST:PORT,GRPC_HOST:PORT,SERVER_NAME`), `mlp_server` is that
server instead and `model_root` is KINFER_V2_MODEL_ROOT: e2e/test_triton.py runs the conformance
and bad-input tests not marked `in_process` against Triton through its Service this way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kinfer_runtime import models
from tests.kinfer_runtime.server_proc import Remote, Server, start_server

TARGET = os.environ.get("KINFER_V2_TARGET", "")
TARGET_HTTP, TARGET_GRPC, TARGET_NAME = TARGET.split(",") if TARGET else ("", "", "kinfer")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TARGET:
        return Path(os.environ["KINFER_V2_MODEL_ROOT"])
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
def mlp_server(model_root: Path, logs_dir: Path) -> Iterator[Server | Remote]:
    if TARGET:
        yield Remote(TARGET_HTTP, TARGET_GRPC)
        return
    yield from _session_server(model_root, logs_dir, "mlp", "--max-delay-ms", "2")


@pytest.fixture(scope="session")
def server_name() -> str:
    """What the server calls itself in its metadata: kinfer, or the KINFER_V2_TARGET's."""
    return TARGET_NAME


@pytest.fixture(scope="session")
def dtypes_server(model_root: Path, logs_dir: Path) -> Iterator[Server]:
    yield from _session_server(model_root, logs_dir, "dtypes")
