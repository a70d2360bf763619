"""metadata as kubectl and the API server check it (the CRD's schema says nothing about it but
the name's own rules).

Three stages, each ending the check when it fails, as they do for `kubectl apply -f`:
kubectl decodes metadata into Go's ObjectMeta (a wrong type is the first error it meets), the API
server refuses fields ObjectMeta lacks (strict field validation), then validates the values with
apimachinery's rules, whose words these are (k8s.io/apimachinery 0.36).
"""

from __future__ import annotations

import re
from typing import Any

from kinfer.api.admission import INVALID, REQUIRED, TOO_LONG, UNKNOWN, Problem, go_quote

DECODE = "DecodeError"  # kubectl refuses the document before sending it

# ObjectMeta's JSON fields and the Go type of each (for decoding errors).
_STRINGS = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion")
_KNOWN = frozenset(
    {
        *_STRINGS,
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_JSON_KIND = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
LABEL_KEY_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = rf"({LABEL_KEY_NAME})?"
ANNOTATIONS_MAX_BYTES = 256 * 1024
# names.SimpleNameGenerator: generateName is cut to 58 characters and given 5 random ones.
GENERATED_SUFFIX = "xxxxx"
GENERATE_NAME_MAX = 58


def _regex_error(message: str, pattern: str, *examples: str) -> str:
    if not examples:
        return f"{message} (regex used for validation is '{pattern}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{pattern}')"


_SUBDOMAIN_WORDS = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character"
)
_LABEL_WORDS = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character"
)
_KEY_WORDS = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_VALUE_WORDS = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def dns_subdomain(value: str, unit: str = "characters") -> list[str]:
    """IsDNS1123Subdomain (unit "bytes" in the label-key variant of apimachinery)."""
    errs = []
    if len(value.encode()) > 253:
        errs.append(f"must be no more than 253 {unit}")
    if not re.fullmatch(DNS_SUBDOMAIN, value):
        errs.append(_regex_error(_SUBDOMAIN_WORDS, DNS_SUBDOMAIN, "example.com"))
    return errs


def dns_label(value: str) -> list[str]:
    """IsDNS1123Label."""
    errs = []
    if len(value.encode()) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(DNS_LABEL, value):
        if re.fullmatch(DNS_SUBDOMAIN, value):
            errs.append("must not contain dots")
        else:
            errs.append(_regex_error(_LABEL_WORDS, DNS_LABEL, "my-name", "123-abc"))
    return errs


def label_key(value: str) -> list[str]:
    """IsLabelKey (labels, annotations and finalizers)."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += [f"prefix part {m}" for m in dns_subdomain(prefix, "bytes")]
    else:
        return [
            "a valid label key "
            + _regex_error(_KEY_WORDS, LABEL_KEY_NAME, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name.encode()) > 63:
        errs.append("name part must be no more than 63 bytes")
    if not re.fullmatch(LABEL_KEY_NAME, name):
        errs.append("name part " + _regex_error(_KEY_WORDS, LABEL_KEY_NAME, "MyName", "my.name", "123-abc"))
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value.encode()) > 63:
        errs.append("must be no more than 63 bytes")
    if not re.fullmatch(LABEL_VALUE, value):
        errs.append(_regex_error(_VALUE_WORDS, LABEL_VALUE, "MyValue", "my_value", "12345"))
    return errs


def _invalid(field: str, value: str, detail: str) -> Problem:
    return Problem(field, INVALID, f"Invalid value: {go_quote(value)}: {detail}")


def _decode_error(key: str, value: Any, go_type: str) -> Problem:
    kind = _JSON_KIND[type(value)]
    return Problem(
        f"metadata.{key}",
        DECODE,
        f"json: cannot unmarshal {kind} into Go struct field ObjectMeta.metadata.{key} of type {go_type}",
    )


def decode_problem(meta: dict[str, Any]) -> Problem | None:
    """The first field kubectl cannot decode into ObjectMeta (in key order, as JSON sends them)."""
    for key in sorted(meta):
        value = meta[key]
        if value is None:
            continue
        if key in _STRINGS and not isinstance(value, str):
            return _decode_error(key, value, "string")
        if key in ("labels", "annotations"):
            if not isinstance(value, dict):
                return _decode_error(key, value, "map[string]string")
            for item in value.values():
                if item is not None and not isinstance(item, str):
                    return _decode_error(key, item, "string")
        if key == "finalizers":
            if not isinstance(value, list):
                return _decode_error(key, value, "[]string")
            for item in value:
                if item is not None and not isinstance(item, str):
                    return _decode_error(key, item, "string")
    return None


def unknown_fields(meta: dict[str, Any]) -> list[Problem]:
    return [
        Problem(f"metadata.{key}", UNKNOWN, f'unknown field "metadata.{key}"')
        for key in sorted(meta)
        if key not in _KNOWN
    ]


def effective_name(meta: dict[str, Any]) -> str:
    """The name the API server validates: metadata.name, or one made from generateName."""
    name = meta.get("name") or ""
    if not name and meta.get("generateName"):
        return str(meta["generateName"])[:GENERATE_NAME_MAX] + GENERATED_SUFFIX
    return str(name)


def _mask_trailing_dash(name: str) -> str:
    return name[:-2] + "a" if len(name) > 1 and name.endswith("-") else name


def validate(meta: dict[str, Any]) -> list[Problem]:
    """ValidateObjectMetaAccessor for a namespaced custom resource (name a DNS subdomain)."""
    found: list[Problem] = []
    generate = meta.get("generateName") or ""
    if generate:
        found += [
            _invalid("metadata.generateName", generate, m)
            for m in dns_subdomain(_mask_trailing_dash(generate))
        ]
    name = effective_name(meta)
    if not name:
        found.append(Problem("metadata.name", REQUIRED, "Required value: name or generateName is required"))
    else:
        found += [_invalid("metadata.name", name, m) for m in dns_subdomain(name)]
    namespace = meta.get("namespace") or ""
    if namespace:
        # kubectl sends the object to that namespace; one with an invalid name cannot exist, and
        # creating it is refused with these words.
        found += [_invalid("metadata.namespace", namespace, m) for m in dns_label(namespace)]
    for key, value in (meta.get("labels") or {}).items():
        found += [_invalid("metadata.labels", key, m) for m in label_key(key)]
        found += [_invalid("metadata.labels", value or "", m) for m in label_value(value or "")]
    annotations = meta.get("annotations") or {}
    for key in annotations:
        found += [_invalid("metadata.annotations", key, m) for m in label_key(key.lower())]
    size = sum(len(k.encode()) + len((v or "").encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        found.append(
            Problem(
                "metadata.annotations",
                TOO_LONG,
                f"Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes",
            )
        )
    for finalizer in meta.get("finalizers") or []:
        found += [_invalid("metadata.finalizers", finalizer or "", m) for m in label_key(finalizer or "")]
    return found
