"""The python-format test models kinfer_dev.local writes load in the real runtime and behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinfer_dev.local import make_failing_model, make_slow_model
from kinfer_runtime.model import example_inputs, load_model


def test_slow_model_answers_after_its_delay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINFER_TEST_DELAY_S", "0")
    model = load_model(str(make_slow_model(tmp_path / "slow")))
    out = model.forward({"x": np.ones((3, 8), dtype=np.float32)})
    assert out["y"].shape == (3, 4)


def test_failing_model_passes_warm_up_and_fails_real_requests(tmp_path: Path) -> None:
    model = load_model(str(make_failing_model(tmp_path / "broken")))
    warm = model.forward(example_inputs(model.signature, 2))
    assert warm["y"].shape == (2, 4)
    with pytest.raises(RuntimeError, match="broken"):
        model.forward({"x": np.ones((1, 8), dtype=np.float32)})


def test_slow_model_takes_the_delay_it_was_written_with(tmp_path: Path) -> None:
    import time

    model = load_model(str(make_slow_model(tmp_path / "slower", delay_s=0.1)))
    started = time.monotonic()
    model.forward({"x": np.ones((1, 8), dtype=np.float32)})
    assert time.monotonic() - started >= 0.1
