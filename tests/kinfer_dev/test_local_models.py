"""The python-format test models kinfer_dev.local writes load in the real runtime and behave."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kinfer_dev.local import make_failing_model, make_slow_model
from kinfer_runtime.model import example_inputs, load_model


def test_slow_model_sleeps_the_delay_written_into_it(tmp_path: Path) -> None:
    model = load_model(str(make_slow_model(tmp_path / "slow", delay_s=0.03, per_row_s=0.01)))
    assert "DELAY_S = 0.03" in (tmp_path / "slow" / "model.py").read_text()
    started = time.perf_counter()
    out = model.forward({"x": np.ones((3, 8), dtype=np.float32)})
    took = time.perf_counter() - started
    assert out["y"].shape == (3, 4)
    assert 0.06 <= took < 1.0, took  # 30 ms + 3 rows x 10 ms (a sleep: never shorter)


def test_failing_model_passes_warm_up_and_fails_real_requests(tmp_path: Path) -> None:
    model = load_model(str(make_failing_model(tmp_path / "broken")))
    warm = model.forward(example_inputs(model.signature, 2))
    assert warm["y"].shape == (2, 4)
    with pytest.raises(RuntimeError, match="broken"):
        model.forward({"x": np.ones((1, 8), dtype=np.float32)})
