"""The README's demo with `--canary`: examples/gpu-canary.yaml walks through every step on the
test bed, under load, to promotion and the handover to stable.

The demo starts an operator of its own (standalone), so the session's operator is stopped for
the run and started again afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from operator_bed import Setup

pytestmark = pytest.mark.e2e


def demo(setup: Setup, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kinfer", "demo", "--state", str(setup.testbed.state), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_demo_walks_the_gpu_canary_example_through_its_steps(setup: Setup, wait_for: Any) -> None:
    setup.operator.stop()
    try:
        out = demo(setup, "--canary", "--step-seconds", "30", timeout=900)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        walk = out.stdout[out.stdout.index("examples/gpu-canary.yaml") :]
        # Every step in order, each one passed by the analysis with its numbers.
        positions = [walk.index(s) for s in ("1/4 10%", "2/4 25%", "3/4 50%", "4/4 100%", "Promoting")]
        assert positions == sorted(positions), walk
        assert all(f"step {i}/4 passed: canary p95" in walk for i in range(1, 5)), walk
        assert "stable now serves" in walk and "canary is scaled to zero" in walk, walk
        assert "handed over to stable" in walk, walk
        setup.kubectl("wait", "--for=condition=RolloutSucceeded", "kisvc/ranker", "-n", "search",
                      "--timeout=10s")  # fmt: skip
    finally:
        down = demo(setup, "--down", timeout=300)
        setup.operator = setup.start_operator("operator-after-demo.log")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not setup.get("", "namespace search"), "the demo's namespaces are gone after --down"


def test_demo_llm_streams_an_answer_through_the_gateway(setup: Setup) -> None:
    setup.operator.stop()
    try:
        out = demo(setup, "--llm", timeout=900)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        walk = out.stdout[out.stdout.index("examples/llm.yaml") :]
        assert "200 text/event-stream" in walk, walk
        pieces = [line for line in walk.splitlines() if line.startswith("  ") and " s  '" in line]
        assert len(pieces) >= 2, walk  # more than one piece: streamed, not answered at once
        assert "[DONE]" in walk and "pieces streamed" in walk, walk
    finally:
        down = demo(setup, "--down", timeout=300)
        setup.operator = setup.start_operator("operator-after-demo.log")
    assert down.returncode == 0, down.stdout + down.stderr
