"""The kinfer CLI, run as users run it: a subprocess of the installed entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kinfer.cli import main

from .conftest import INVALID, ROOT, expected_field, expected_fields

COMMANDS = [[], ["crd"], ["render"], ["validate"]]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def kinfer(*args: str, stdin: str | None = None) -> Run:
    """The CLI in-process (fast); test_entry_point runs the installed command once for real."""
    result = CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def test_entry_point_runs_as_a_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kinfer", "validate", "-f", "examples/minimal.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "valid\n"), result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kinfer")
def test_help(command: list[str]) -> None:
    result = kinfer(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout


def test_crd_prints_the_committed_file() -> None:
    result = kinfer("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "kinfer.dev_inferenceservices.yaml").read_text()


def test_render_gpu_canary() -> None:
    result = kinfer("render", "-f", "examples/gpu-canary.yaml")
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    deployment = objects[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["kind"] == "Deployment"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_render_reads_stdin_and_refuses_invalid_input() -> None:
    good = kinfer("render", "-f", "-", stdin=(ROOT / "examples" / "minimal.yaml").read_text())
    assert good.returncode == 0 and "kind: Deployment" in good.stdout
    bad = kinfer("render", "-f", str(INVALID[0]))
    assert bad.returncode == 1
    assert expected_field(INVALID[0]) in bad.stderr


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_validate_rejects_each_invalid_spec_naming_the_field(path: Path) -> None:
    result = kinfer("validate", "-f", str(path.relative_to(ROOT)))
    assert result.returncode == 1, result.stdout
    # FILE[0] (NAME): FIELD: MESSAGE, or the field-less note that rules were not checked.
    problems = [line.split(": ", 1)[1] for line in result.stdout.splitlines()]
    named = {p.split(": ", 1)[0] for p in problems if not p.startswith("Invalid value: null: ")}
    # Each example holds one mistake; the API server may name its field more than once.
    assert named == expected_fields(path), result.stdout


def test_there_are_enough_invalid_examples() -> None:
    assert len(INVALID) >= 12


def test_validate_accepts_every_example() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        result = kinfer("validate", "-f", str(path))
        assert (result.returncode, result.stdout) == (0, "valid\n"), result.stdout


def test_validate_reports_yaml_errors_clearly() -> None:
    result = kinfer("validate", "-f", "-", stdin="spec: [unclosed\n")
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


@pytest.mark.parametrize(("only", "committed"), [("rbac", "config/rbac/operator.yaml")])
def test_committed_manifests_match_the_generator(only: str, committed: str) -> None:
    result = kinfer("manifests", "--only", only)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / committed).read_text(), (
        f"run: kinfer manifests --only {only} > {committed}"
    )


def test_namespaced_rbac_never_grants_secrets_or_cluster_wide_writes() -> None:
    result = kinfer("manifests", "--only", "rbac", "--watch-namespace", "team-a")
    objects = list(yaml.safe_load_all(result.stdout))
    (cluster_role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cluster_role["rules"])
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "team-a"]
    (lease,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "kinfer-system"]
    assert lease["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                               "verbs": ["get", "create", "update"]}]  # fmt: skip
    for rules in (cluster_role["rules"], role["rules"]):
        assert not any("secrets" in r["resources"] or "*" in r["verbs"] for r in rules)


def test_explain_scale_replays_a_recorded_window() -> None:
    result = kinfer("explain-scale", "-f", "examples/recorded/burst.yaml")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("scale 2 -> 8: panic"), first
    assert re.search(r"by_queue_depth +8  \(queue 30 / target 4\)", result.stdout), result.stdout


def test_explain_scale_needs_a_name_or_a_file() -> None:
    result = kinfer("explain-scale")
    assert result.returncode == 2 and "NAME" in result.stderr


def test_explain_scale_shows_the_rate_terms() -> None:
    result = kinfer("explain-scale", "-f", "examples/recorded/rate.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "scale 4 -> 7: scale up: backlog (queue depth) wants 7"
    for term in ("cold_start_seconds  45", "throughput", "arrival_rate", "headroom", "by_rate", "by_backlog"):
        assert f"  {term}" in result.stdout, result.stdout
    assert "backlog_now         7" in result.stdout
