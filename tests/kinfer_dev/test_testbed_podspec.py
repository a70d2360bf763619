"""What the launcher runs for a container's command: the allow-list and tritonserver's wrapper."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kinfer_dev.testbed import podspec, triton


def test_python_is_the_launchers_interpreter_and_unknown_commands_are_refused() -> None:
    assert podspec.resolve(["python3", "-V"]) == [sys.executable, "-V"]
    with pytest.raises(ValueError, match="not on the launcher's allow-list"):
        podspec.resolve(["/bin/rm", "-rf", "/"])


def test_tritonserver_runs_the_wheels_binary_through_its_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KINFER_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"tritonserver is not installed .*scripts/bootstrap"):
        podspec.resolve(["tritonserver", "--model-repository=/mnt/triton"])
    triton.wrapper().parent.mkdir(parents=True)
    triton.wrapper().write_text("#!/bin/sh\n")
    (triton.venv()).mkdir(parents=True)
    (triton.venv() / ".complete").touch()
    assert podspec.resolve(["/opt/tritonserver/bin/tritonserver", "--http-port=8080"]) == [
        str(tmp_path / "triton" / "bin" / "tritonserver"),
        "--http-port=8080",
    ]
