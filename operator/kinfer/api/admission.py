"""What the API server does with a custom resource at admission, over the CRD's own schema.

`kinfer validate` and the operator check a document against the generated CRD, not against a
second description of it: unknown fields refused (strict field validation), nulls dropped, defaults
applied, then the OpenAPI checks of kube-openapi as apiextensions reports them, the list-type
checks, and the CEL rules, each through its Python twin in `rules.Rule`. The order, the blocking
of CEL by type, enum, length, count and required errors, and the wording follow the API server
(Kubernetes 1.36), so both refuse the same documents naming the same field with the same words.

Only the schema keywords the generator emits are understood; `SUPPORTED` lists them and a test
checks the CRD uses no other.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from kinfer.api.rules import twin
from kinfer.api.wire import INT64, go_float_text

Schema = dict[str, Any]

SUPPORTED = frozenset(
    {
        "type",
        "description",
        "default",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "maxProperties",
        "x-kubernetes-list-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
        "x-kubernetes-validations",
    }
)

INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
DUPLICATE = "FieldValueDuplicate"
UNKNOWN = "FieldValueUnknown"  # strict decoding: the request is refused before validation
# Errors after which the API server runs no CEL rule at all (apiextensions hasBlockingErr).
BLOCKING = frozenset({NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID})
RULES_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


@dataclass(frozen=True)
class Problem:
    """One refusal, as the API server would report it.

    field: the path the API server names ("" where it names none); reason: its cause reason;
    message: its words after the path, without the "PATH in body" echo kube-openapi adds.
    """

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def go_value(value: Any) -> str:
    """A bad value the way apimachinery's field errors print it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Beyond int64 the API server decodes a float.
        return str(value) if INT64[0] <= value <= INT64[1] else go_float_text(float(value))
    if isinstance(value, float):
        return go_float_text(value)
    if isinstance(value, str):
        return go_quote(value)
    return json.dumps(value)


def go_quote(text: str) -> str:
    """Go's %q (strconv.Quote) for the characters a manifest holds."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(char)])
        elif not char.isprintable():
            code = ord(char)
            out.append(
                f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def json_type(value: Any) -> str:
    """The JSON type name kube-openapi infers for a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        # The API server decodes a JSON integer beyond int64 as a float.
        return "integer" if INT64[0] <= value <= INT64[1] else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    return [schema["type"]] if "type" in schema else []


def _type_ok(expected: list[str], value: Any) -> bool:
    actual = json_type(value)
    if actual in expected:
        return True
    if actual == "integer" and "number" in expected:
        return True
    # kube-openapi takes a whole float as an integer (swag.IsFloat64AJSONInteger).
    return (
        actual == "number"
        and "integer" in expected
        and math.isfinite(value)
        and float(value).is_integer()
        and abs(value) <= 2**53 - 1
    )


# --- strict decoding -----------------------------------------------------------------------


def unknown_fields(schema: Schema | None, value: Any, path: str) -> list[str]:
    """Paths of fields the schema does not declare (what fieldValidation=Strict refuses).

    As apiextensions' pruning walks them: by the shape of the value, not the declared type, so
    an object where a list belongs has every key unknown.
    """
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return _unknown_below_preserved(schema, value, path)
    found: list[str] = []
    if isinstance(value, dict):
        props = (schema or {}).get("properties", {})
        extra = (schema or {}).get("additionalProperties")
        for key, child in value.items():
            if key in props:
                found += unknown_fields(props[key], child, _child(path, key))
            elif isinstance(extra, dict):
                found += unknown_fields(extra, child, _child(path, key))
            else:
                found.append(_child(path, key))
    elif isinstance(value, list):
        items = (schema or {}).get("items")
        for index, item in enumerate(value):
            found += unknown_fields(items, item, f"{path}[{index}]")
    return found


def _unknown_below_preserved(schema: Schema, value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, child in value.items():
            if key in props:
                found += unknown_fields(props[key], child, _child(path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                found += unknown_fields(schema["additionalProperties"], child, _child(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if "items" in schema:
                found += _unknown_below_preserved(schema["items"], item, f"{path}[{index}]")
    return found


# --- nulls and defaults ----------------------------------------------------------------------


def defaulted(schema: Schema, value: Any) -> Any:
    """The value after the API server's decoding: nulls of non-nullable fields dropped (or
    replaced by their default), missing fields with a default filled in, recursively."""
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            for key in [k for k, v in value.items() if v is None and k in props]:
                del value[key]
            for key, child in props.items():
                if key not in value and "default" in child:
                    value[key] = copy.deepcopy(child["default"])
            for key, child in value.items():
                if key in props:
                    _default_in_place(props[key], child)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key in [k for k, v in value.items() if v is None]:
                del value[key]
            for child in value.values():
                _default_in_place(schema["additionalProperties"], child)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(schema["items"], item)


# --- OpenAPI checks --------------------------------------------------------------------------


def _numeric(schema: Schema, value: Any, path: str) -> list[Problem]:
    if not _is_number(value):
        return []
    found = []
    as_int = isinstance(value, int) and INT64[0] <= value <= INT64[1]
    shown = go_value(value)
    for key, exclusive_key, below in (
        ("minimum", "exclusiveMinimum", True),
        ("maximum", "exclusiveMaximum", False),
    ):
        if key not in schema:
            continue
        bound = schema[key]
        exclusive = bool(schema.get(exclusive_key))
        # kube-openapi: an integer value is compared with int64(bound), which truncates.
        limit = int(bound) if as_int else float(bound)
        number = value if as_int else float(value)
        if below:
            bad = number <= limit if exclusive else number < limit
            words = "greater than" if exclusive else "greater than or equal to"
        else:
            bad = number >= limit if exclusive else number > limit
            words = "less than" if exclusive else "less than or equal to"
        if bad:
            text = str(int(bound)) if as_int else go_float_text(float(bound))
            found.append(Problem(path, INVALID, f"Invalid value: {shown}: should be {words} {text}"))
    return found


def validate(schema: Schema, value: Any, path: str) -> list[Problem]:
    """kube-openapi's checks of one (defaulted) value, as apiextensions turns them into errors."""
    found: list[Problem] = []
    expected = _types(schema)
    if expected and not _type_ok(expected, value):
        actual = json_type(value)
        found.append(
            Problem(
                path,
                TYPE_INVALID,
                f'Invalid value: "{actual}": must be of type {",".join(expected)}: "{actual}"',
            )
        )
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(go_quote(v) if isinstance(v, str) else json.dumps(v) for v in schema["enum"])
        found.append(
            Problem(path, NOT_SUPPORTED, f"Unsupported value: {go_value(value)}: supported values: {allowed}")
        )
    found += _numeric(schema, value, path)
    if isinstance(value, str):
        length = len(value)  # kube-openapi counts characters (runes)
        if "maxLength" in schema and length > schema["maxLength"]:
            limit = schema["maxLength"]
            found.append(
                Problem(
                    path, TOO_LONG, f"Too long: may not be more than {limit} byte{'s' if limit != 1 else ''}"
                )
            )
        if "minLength" in schema and length < schema["minLength"]:
            found.append(
                Problem(
                    path,
                    INVALID,
                    f"Invalid value: {go_value(value)}: should be at least {schema['minLength']} chars long",
                )
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            limit = schema["maxItems"]
            found.append(
                Problem(
                    path,
                    TOO_MANY,
                    f"Too many: {len(value)}: must have at most {limit} item{'s' if limit != 1 else ''}",
                )
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            found.append(
                Problem(
                    path,
                    INVALID,
                    f"Invalid value: {len(value)}: should have at least {schema['minItems']} items",
                )
            )
        if "items" in schema:
            for index, item in enumerate(value):
                found += validate(schema["items"], item, f"{path}[{index}]")
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            limit = schema["maxProperties"]
            found.append(
                Problem(
                    path,
                    TOO_MANY,
                    f"Too many: {len(value)}: must have at most {limit} item{'s' if limit != 1 else ''}",
                )
            )
        for key in schema.get("required", []):
            if key not in value:
                found.append(Problem(_child(path, key), REQUIRED, "Required value"))
        props = schema.get("properties")
        if props is not None:
            for key, child in value.items():
                if key in props:
                    found += validate(props[key], child, _child(path, key))
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, child in value.items():
                found += validate(schema["additionalProperties"], child, _child(path, key))
    return found


def list_sets(schema: Schema, value: Any, path: str) -> list[Problem]:
    """x-kubernetes-list-type: set: every repeat is a Duplicate at its index."""
    found: list[Problem] = []
    if isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if any(item == s and type(item) is type(s) for s in seen):
                    found.append(Problem(f"{path}[{index}]", DUPLICATE, f"Duplicate value: {go_value(item)}"))
                else:
                    seen.append(item)
        if "items" in schema:
            for index, item in enumerate(value):
                found += list_sets(schema["items"], item, f"{path}[{index}]")
    elif isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            for key, child in value.items():
                if key in props:
                    found += list_sets(props[key], child, _child(path, key))
    return found


# --- CEL rules -------------------------------------------------------------------------------


def run_rules(schema: Schema, value: Any, path: str) -> list[Problem]:
    """Every x-kubernetes-validations rule, through its Python twin, where its value is present.

    Rules on a scalar print its value; rules on an object, list or map do not. Map entries are
    named NAME[KEY] here, as the CEL validator names them.
    """
    found: list[Problem] = []
    for crd_rule in schema.get("x-kubernetes-validations", []):
        rule = twin(crd_rule)
        if rule.holds(value):
            continue
        field = path + (crd_rule.get("fieldPath") or "")
        if isinstance(value, dict | list):
            found.append(Problem(field, INVALID, f"Invalid value: {rule.message}"))
        else:
            found.append(Problem(field, INVALID, f"Invalid value: {go_value(value)}: {rule.message}"))
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            for key, child in value.items():
                if key in props:
                    found += run_rules(props[key], child, _child(path, key))
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, child in value.items():
                found += run_rules(schema["additionalProperties"], child, f"{path}[{key}]")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += run_rules(schema["items"], item, f"{path}[{index}]")
    return found


def admit(schema: Schema, value: Any, path: str) -> tuple[Any, list[Problem]]:
    """Decode, default and validate one value the way the API server does, rules included.

    Returns the defaulted value and the problems; unknown fields alone end it, as a strict
    decoding error refuses the request before anything is validated.
    """
    unknown = unknown_fields(schema, value, path)
    if unknown:
        return value, [Problem(p, UNKNOWN, f'unknown field "{p}"') for p in unknown]
    value = defaulted(schema, value)
    found = validate(schema, value, path) + list_sets(schema, value, path)
    return value, found


RULES_NOT_CHECKED = Problem("", INVALID, f"Invalid value: null: {RULES_SKIPPED}")


def with_rules(schema: Schema, value: Any, path: str, found: list[Problem]) -> list[Problem]:
    """Add the CEL rules' problems, or the API server's note that they were not checked."""
    if any(p.reason in BLOCKING for p in found):
        return [*found, RULES_NOT_CHECKED]
    return found + run_rules(schema, value, path)
