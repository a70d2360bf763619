"""Check a whole InferenceService document and report every problem with its field path."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kinfer.api import v1alpha1 as api
from kinfer.api.crd import NAME_RULES


def _path(loc: tuple[int | str, ...], field: str = "") -> str:
    parts = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        else:
            parts.append(item)
    if field:
        parts.append(field)
    return ".".join(parts)


def _describe(error: Any) -> str:
    """pydantic's message, with the bad value where it helps and it is short."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] not in {"rule", "missing", "extra_forbidden"} and isinstance(
        value, int | float | str | bool
    ):
        msg += f" (got {value!r})"
    return msg


def problems(doc: Any) -> list[str]:
    """Every problem with one parsed YAML document, as 'field.path: reason'. Empty means valid."""
    if not isinstance(doc, dict):
        return ["document: an InferenceService must be a mapping"]
    found: list[str] = []
    if doc.get("apiVersion") != api.API_VERSION:
        found.append(f"apiVersion: must be {api.API_VERSION} (got {doc.get('apiVersion')!r})")
    if doc.get("kind") != api.KIND:
        found.append(f"kind: must be {api.KIND} (got {doc.get('kind')!r})")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        found.append("metadata.name: required")
    else:
        found += [f"{r.message} (got {name!r})" for r in NAME_RULES if not r.holds(name)]
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*found, "spec: required, and must be a mapping"]
    try:
        api.validate_spec(spec)
    except ValidationError as exc:
        for error in exc.errors():
            field = (error.get("ctx") or {}).get("field", "")
            found.append(f"{_path(error['loc'], field)}: {_describe(error)}")
    return found
