"""Check a whole InferenceService document the way `kubectl apply -f` and the API server do.

One validator: the generated CRD (schema, defaults and CEL rules, through their Python twins) and
Kubernetes' own metadata rules, applied in the API server's order. `kinfer validate`, the operator
and `validate_spec` all come here, so they refuse exactly what the API server refuses, naming the
same field with the same words (e2e/test_validation_parity.py compares them on the test bed).
"""

from __future__ import annotations

from typing import Any

from kinfer.api import admission, meta, wire
from kinfer.api import v1alpha1 as api
from kinfer.api.admission import INVALID, Problem, go_quote
from kinfer.api.crd import root_schema

NOT_FOUND = "NotFound"  # kubectl finds no such kind (apiVersion or kind is wrong)


def _type_problems(doc: dict[str, Any]) -> list[Problem]:
    """What kubectl itself refuses: no apiVersion or kind, or a kind the cluster does not serve."""
    version, kind = doc.get("apiVersion"), doc.get("kind")
    missing = [
        Problem(key, admission.REQUIRED, f"{key} not set")
        for key, value in (("apiVersion", version), ("kind", kind))
        if not value
    ]
    if missing:
        return missing
    if version == api.API_VERSION and kind == api.KIND:
        return []
    if version == api.API_VERSION and isinstance(kind, str) and kind.lower() == api.KIND.lower():
        # kubectl finds the kind whatever its case; the API server then refuses it.
        return [Problem("kind", INVALID, f"Invalid value: {go_quote(kind)}: must be {api.KIND}")]
    field = "kind" if version == api.API_VERSION else "apiVersion"
    return [Problem(field, NOT_FOUND, f'no matches for kind "{kind}" in version "{version}"')]


def check(doc: Any) -> list[Problem]:
    """Every problem with one parsed document (see wire.load_all); empty means the API server
    would store it."""
    try:
        # As kubectl sends it: a whole float is an integer on the wire (the API server would hand
        # 2.0 in an integer field to CEL as a float, which no kubectl user can send).
        doc = wire.as_sent(doc)
    except wire.LoadError as exc:
        return [Problem("", INVALID, str(exc))]
    if not isinstance(doc, dict):
        return [Problem("", INVALID, "an InferenceService must be a mapping")]
    found = _type_problems(doc)
    if found:
        return found
    metadata = doc.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return [Problem("metadata", meta.DECODE, "metadata must be a mapping")]
    decode = meta.decode_problem(metadata)
    if decode is not None:
        return [decode]
    schema = root_schema()
    content = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    body_schema = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k in ("spec",)}}
    unknown = meta.unknown_fields(metadata) + [
        Problem(p, admission.UNKNOWN, f'unknown field "{p}"')
        for p in admission.unknown_fields(body_schema, content, "")
    ]
    if unknown:
        return unknown
    defaulted, found = admission.admit(body_schema, content, "")
    found = meta.validate(metadata) + found
    if any(p.reason in admission.BLOCKING for p in found):
        return [*found, admission.RULES_NOT_CHECKED]
    name = meta.effective_name(metadata)
    name_schema = schema["properties"]["metadata"]["properties"]["name"]
    return (
        found
        + admission.run_rules(name_schema, name, "metadata.name")
        + admission.run_rules(body_schema, defaulted, "")
    )


def problems(doc: Any) -> list[str]:
    """Every problem with one parsed document, as 'field.path: reason'. Empty means valid."""
    return [str(p) for p in check(doc)]


def spec_problems(spec: Any) -> tuple[Any, list[Problem]]:
    """A spec alone, as the API server admits it: the defaulted spec and its problems."""
    schema = root_schema()["properties"]["spec"]
    unknown = admission.unknown_fields(schema, spec, "spec")
    if unknown:
        return spec, [Problem(p, admission.UNKNOWN, f'unknown field "{p}"') for p in unknown]
    if spec is None:
        return spec, [Problem("spec", admission.REQUIRED, "Required value")]
    defaulted, found = admission.admit(schema, spec, "spec")
    return defaulted, admission.with_rules(schema, defaulted, "spec", found)


def admitted_spec(spec: Any) -> Any:
    """The defaulted spec, or InvalidSpec naming every problem."""
    defaulted, found = spec_problems(spec)
    if found:
        raise api.InvalidSpec([str(p) for p in found])
    return defaulted
