"""Generate the InferenceService CRD from the pydantic models.

pydantic emits JSON Schema (draft 2020-12); a CRD wants a structural OpenAPI v3.0 subset. This
module inlines references, maps the few constructs that differ, and adds the rules as CEL
``x-kubernetes-validations``. The same schema is what `kinfer validate` checks (admission.py), so
the generator emits only the keywords admission.SUPPORTED lists.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from pydantic import BaseModel

from kinfer.api import v1alpha1 as api
from kinfer.api.admission import SUPPORTED
from kinfer.api.rules import ApiModel, Rule, bound
from kinfer.api.v1alpha1 import NAME_RULES

__all__ = ["NAME_RULES", "crd", "crd_yaml", "schema_of", "unsupported_keywords"]

PRINTER_COLUMNS = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {
        "name": "P95",
        "type": "number",
        "jsonPath": ".status.metrics.p95LatencyMs",
        "description": "95th-percentile latency in milliseconds",
    },
    {
        "name": "Queue",
        "type": "number",
        "jsonPath": ".status.metrics.queueDepth",
        "description": "Requests waiting or in flight per replica",
    },
    {"name": "Canary", "type": "string", "jsonPath": ".status.canary.summary"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title"}


def _rules_of(ref: str) -> tuple[Rule, ...]:
    model = getattr(api, ref.rsplit("/", 1)[-1], None)
    if isinstance(model, type) and issubclass(model, ApiModel):
        return model.rules
    return ()


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-Schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    rules: tuple[Rule, ...] = ()
    if "$ref" in node:
        ref = node.pop("$ref")
        rules = _rules_of(ref)
        target = defs[ref.rsplit("/", 1)[-1]]
        # Sibling keys (description, default) of the reference win over the target's.
        node = {**target, **node}
    if "anyOf" in node:
        # X | None: the field is simply optional in the CRD.
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in API model: {options}")
        inner = options[0]
        # The inner node brings its own rules (those of the model it refers to).
        node = {**_structural(inner, defs), **{k: v for k, v in node.items() if k != "default"}}
        if node.get("default") is None:
            node.pop("default", None)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(key), int | float):
            node["minimum" if key == "exclusiveMinimum" else "maximum"] = node[key]
            node[key] = True
    field_rules = _fractional_bounds(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out = {k: _structural(v, defs) for k, v in node.items() if k not in _DROP and k != "required"}
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split())
    if isinstance(out.get("default"), dict):
        # The whole default object: the API server checks CEL rules against it as written, before
        # nested defaults apply. Unset optional fields (null) are left out.
        out["default"] = _without_nulls(out["default"])
    if node.get("required"):
        out["required"] = node["required"]
    if out.get("additionalProperties") is True or "properties" in out:
        # Structural schemas allow neither; preserve-unknown-fields says "anything" instead.
        out.pop("additionalProperties", None)
    if rules or field_rules:
        out["x-kubernetes-validations"] = [
            *out.get("x-kubernetes-validations", []),
            *(r.as_crd() for r in (*field_rules, *rules)),
        ]
    return out


def _fractional_bounds(node: dict[str, Any]) -> list[Rule]:
    """Move bounds with a fraction from OpenAPI to CEL (in place).

    kube-openapi compares an integer value with the bound cut to an integer, so `minimum: 0.01`
    would admit 0; CEL compares exactly.
    """
    found = []
    for key, exclusive_key, inclusive, exclusive in (
        ("minimum", "exclusiveMinimum", ">=", ">"),
        ("maximum", "exclusiveMaximum", "<=", "<"),
    ):
        limit = node.get(key)
        if isinstance(limit, float) and not limit.is_integer():
            is_exclusive = node.pop(exclusive_key, False) is True
            del node[key]
            found.append(bound(exclusive if is_exclusive else inclusive, limit))
    return found


def unsupported_keywords(node: Any, path: str = "") -> list[str]:
    """Schema keywords admission.py does not implement, with where they are."""
    if not isinstance(node, dict):
        return []
    found = [f"{path}: {k}" for k in node if k not in SUPPORTED]
    for name, child in node.get("properties", {}).items():
        found += unsupported_keywords(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += unsupported_keywords(node[key], f"{path}.{key}")
    return found


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    if isinstance(model, type) and issubclass(model, ApiModel) and model.rules:
        schema["x-kubernetes-validations"] = [r.as_crd() for r in model.rules]
    return schema


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node


def _without_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_defaults(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_defaults(v) for k, v in node.items() if k != "default"}


def _ordered(node: Any) -> Any:
    """Put keys in a stable, readable order: type and description first, properties sorted."""
    if isinstance(node, list):
        return [_ordered(n) for n in node]
    if not isinstance(node, dict):
        return node
    first = [k for k in ("type", "description", "format") if k in node]
    rest = sorted(k for k in node if k not in first)
    out = {k: _ordered(node[k]) for k in first + rest}
    if "properties" in out:
        out["properties"] = {k: out["properties"][k] for k in sorted(out["properties"])}
    return out


@functools.cache
def _crd() -> dict[str, Any]:
    spec_schema = schema_of(api.InferenceServiceSpec)
    # The operator writes every status field it uses; defaults there would only invent values.
    status_schema = _without_defaults(schema_of(api.InferenceServiceStatus))
    root: dict[str, Any] = {
        "type": "object",
        "description": "InferenceService runs a model behind the Open Inference Protocol v2 with "
        "GPU scheduling, autoscaling on queue depth and latency, and canary or A/B rollouts.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kinfer.dev/v1alpha1"},
            "kind": {"type": "string", "description": "InferenceService"},
            # The API server checks the rest of metadata itself (meta.py says how).
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "x-kubernetes-validations": [r.as_crd() for r in NAME_RULES],
                    }
                },
            },
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kinfer"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["kinfer"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": _ordered(root)},
                }
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The CRD (a fresh copy: callers may change it)."""
    import copy

    return copy.deepcopy(_crd())


def root_schema() -> dict[str, Any]:
    """The openAPIV3Schema, shared and read-only (admission.py reads it on every check)."""
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def crd_yaml() -> str:
    header = "# Generated by `kinfer crd` from operator/kinfer/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
