"""The commands kinfer-dev adds to `kinfer` (entry points in devtools/pyproject.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kinfer_dev import demo as demo_mod
from kinfer_dev.testbed import bed
from kinfer_dev.testbed.cli import dev

__all__ = ["demo", "dev"]


@click.command()
@click.option("--down", "tear_down", is_flag=True, help="Remove the demo and stop its operator.")
@click.option(
    "--canary",
    is_flag=True,
    help="Then apply examples/gpu-canary.yaml under load and print each step of its rollout.",
)
@click.option(
    "--llm",
    is_flag=True,
    help="Then apply examples/llm.yaml (a tiny language model) and print an answer as it streams.",
)
@click.option(
    "--step-seconds",
    type=click.IntRange(10, 600),
    default=30,
    show_default=True,
    help="stepSeconds for the canary walk (the example says 120).",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=None,
    help="Test bed state directory (default $KINFER_TESTBED_STATE or /tmp/kinfer-testbed).",
)
@click.option(
    "--timeout",
    type=float,
    default=240,
    show_default=True,
    help="Seconds to wait for the InferenceService to become Ready.",
)
def demo(
    tear_down: bool, canary: bool, llm: bool, step_seconds: int, state: Path | None, timeout: float
) -> None:
    """Run kinfer end to end on this machine: test bed, operator, a GPU InferenceService."""
    where = state or bed.default_state_dir()
    if tear_down:
        demo_mod.down(where, click.echo)
        return
    if not demo_mod.up(where, canary, click.echo, timeout=timeout, step_seconds=step_seconds, llm=llm):
        sys.exit(1)
