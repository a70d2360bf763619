"""What each import package may import, read from the sources (no import needed): the operator
(kinfer) and the runtime (kinfer_runtime) never import each other, neither imports the
development tools (kinfer_dev), and the product distribution does not contain them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = {
    "kinfer": ROOT / "operator" / "kinfer",
    "kinfer_runtime": ROOT / "runtime" / "kinfer_runtime",
    "kinfer_dev": ROOT / "devtools" / "kinfer_dev",
}
FORBIDDEN = {
    "kinfer": {"kinfer_runtime", "kinfer_dev"},
    "kinfer_runtime": {"kinfer", "kinfer_dev"},
    "kinfer_dev": {"kinfer_runtime"},  # it runs the runtime as a process, never in its own
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_import_only_what_they_may(package: str) -> None:
    sources = sorted(PACKAGES[package].rglob("*.py"))
    assert sources, f"no sources under {PACKAGES[package]}"
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources
        for name in imported_packages(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)


def test_the_product_distribution_leaves_the_dev_tools_out() -> None:
    product = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert product["tool"]["setuptools"]["packages"]["find"]["where"] == ["operator", "runtime"]
    dev = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())
    assert dev["project"]["name"] == "kinfer-dev"
    assert set(dev["project"]["entry-points"]["kinfer.commands"]) == {"dev", "demo"}
