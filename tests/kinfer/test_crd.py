"""The CRD is generated from the pydantic models, committed, and structurally sound."""

from __future__ import annotations

from typing import Any

from kinfer.api import v1alpha1 as api
from kinfer.api.crd import NAME_RULES, crd, crd_yaml, unsupported_keywords
from kinfer.api.rules import ApiModel

from .conftest import ROOT, k8s_validate

COMMITTED = ROOT / "crds" / "kinfer.dev_inferenceservices.yaml"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == crd_yaml(), "run: kinfer crd > crds/kinfer.dev_inferenceservices.yaml"


def test_crd_validates_against_the_kubernetes_schema() -> None:
    k8s_validate(crd())


def test_names_and_printer_columns() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["kisvc"]
    assert spec["names"]["categories"] == ["kinfer"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "Desired", "P95", "Queue", "Canary", "Age"]


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = _schema()
    missing = [
        path
        for root in ("spec", "status")
        for path, node in _walk(schema["properties"][root], root)
        # Scalar list items (canary steps) are described by their list.
        if not node.get("description") and not (path.endswith("[]") and node.get("type") != "object")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema(), ""):
        # int-or-string (quantities) is the one node a structural schema leaves without a type.
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title"} & node.keys(), path
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
        assert node.get("default") is not None or "default" not in node, path


def test_every_model_rule_is_in_the_crd_with_its_message() -> None:
    models = [m for m in vars(api).values() if isinstance(m, type) and issubclass(m, ApiModel)]
    rules = [r for m in models for r in m.rules] + list(NAME_RULES)
    assert len(rules) >= 15
    rendered = [v for _, node in _walk(_schema(), "") for v in node.get("x-kubernetes-validations", [])]
    rendered += [v for node in _walk_all(_schema()) for v in node.get("x-kubernetes-validations", [])]
    for rule in rules:
        assert rule.as_crd() in rendered, rule.cel


def _walk_all(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    found = [node]
    for value in node.values():
        if isinstance(value, dict):
            found += _walk_all(value)
            found += [n for v in value.values() if isinstance(v, dict) for n in _walk_all(v)]
    return found


def test_the_crd_uses_only_keywords_kinfer_validate_implements() -> None:
    # admission.py evaluates this very schema; a keyword it does not know would be ignored.
    assert unsupported_keywords(_schema()["properties"]["spec"]) == []
    assert unsupported_keywords(_schema()["properties"]["metadata"]) == []


def test_no_pattern_and_no_fractional_openapi_bound() -> None:
    # Patterns became CEL rules with plain words; fractional bounds became CEL (kube-openapi
    # compares an integer with int64(bound)).
    for path, node in _walk(_schema(), ""):
        assert "pattern" not in node, path
        for key in ("minimum", "maximum"):
            bound = node.get(key)
            assert not (isinstance(bound, float) and not bound.is_integer()), path


def test_the_schema_is_what_the_api_server_will_see_for_cel_cost() -> None:
    # The API server refuses rules whose estimated cost is unbounded: every string with a rule
    # has a maxLength, every list or map with a rule (or with items that have one) a bound.
    for path, node in _walk(_schema()["properties"]["spec"], "spec"):
        if node.get("x-kubernetes-validations") and node.get("type") == "string":
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_object_defaults_are_complete_so_cel_rules_can_evaluate_them() -> None:
    # The API server evaluates CEL rules against a default as written: every field must be there.
    spec = _schema()["properties"]["spec"]
    scaling = spec["properties"]["scaling"]["default"]
    assert scaling["minReplicas"] == 1 and scaling["maxReplicas"] == 8
    assert scaling["scaleToZero"] == {"enabled": False, "idleSeconds": 600}
    assert spec["properties"]["runtime"]["default"]["batching"]["maxQueue"] == 512
    assert spec["properties"]["rollout"]["default"] == {}
