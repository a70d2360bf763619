"""Shared helpers for the operator's fast tests (no cluster, no torch)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from kinfer.api import wire

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
VALID = sorted((ROOT / "tests" / "data" / "valid").glob("*.yaml"))
K8S_VERSION = "1.32.0"


def load(path: Path) -> dict[str, Any]:
    """The one document of a corpus file, read as kubectl reads it."""
    (doc,) = wire.load_all(path.read_text())
    assert isinstance(doc, dict)
    return doc


def expected_fields(path: Path) -> set[str]:
    """The fields an invalid example must be blamed on, from its '# expect: FIELD[, FIELD]' first
    line (the API server's field-less note that rules were not checked is not a field)."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect: FIELD' line"
    return {f.strip() for f in first.removeprefix("# expect: ").split(",")}


def expected_field(path: Path) -> str:
    (field,) = expected_fields(path)
    return field


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Validator:
    # kubernetes_validate.validate re-reads its large definitions file on every call; the property
    # test validates thousands of objects, so build each validator once from the same files.
    folder = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", K8S_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def k8s_validate(obj: dict[str, Any]) -> None:
    """Validate against the Kubernetes 1.32 OpenAPI schema shipped by kubernetes-validate (strict:
    unknown fields fail too)."""
    _validator(obj["kind"], obj["apiVersion"]).validate(obj)


@pytest.fixture(params=EXAMPLES, ids=lambda p: p.stem)
def example(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path
