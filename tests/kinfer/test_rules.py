"""Rules: each CEL rule in the CRD has its Python twin, and the twins say what Kubernetes says."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kinfer.api import formats
from kinfer.api import v1alpha1 as api
from kinfer.api.crd import NAME_RULES
from kinfer.api.rules import ApiModel, Rule, bound, twin
from kinfer.api.validation import check

from .conftest import INVALID, ROOT, load

COMMITTED = yaml.safe_load((ROOT / "crds" / "kinfer.dev_inferenceservices.yaml").read_text())


def _crd_rules(node: Any) -> list[dict[str, str]]:
    if isinstance(node, list):
        return [r for n in node for r in _crd_rules(n)]
    if not isinstance(node, dict):
        return []
    found = list(node.get("x-kubernetes-validations", []))
    return found + [r for k, v in node.items() if k != "x-kubernetes-validations" for r in _crd_rules(v)]


CRD_RULES = _crd_rules(COMMITTED)
MODEL_RULES: list[Rule] = [
    r
    for model in vars(api).values()
    if isinstance(model, type) and issubclass(model, ApiModel)
    for r in model.rules
] + list(NAME_RULES)
FORMAT_RULES = [v for v in vars(formats).values() if isinstance(v, Rule)] + list(api.MODEL_URI_RULES)


def test_every_crd_rule_has_a_python_twin_with_the_same_message() -> None:
    assert len(CRD_RULES) >= 25
    for crd_rule in CRD_RULES:
        rule = twin(crd_rule)
        assert rule.message == crd_rule["message"]
        assert crd_rule.get("fieldPath", "") == (f".{rule.field}" if rule.field else "")


def test_every_rule_reaches_the_crd() -> None:
    written = {(r["rule"], r["message"]) for r in CRD_RULES}
    for rule in [*MODEL_RULES, *FORMAT_RULES]:
        if rule is formats.LABEL_KEY_RULE:
            continue  # kept for fields that must not be empty; no such field yet
        assert (rule.cel, rule.message) in written, rule.cel


def test_fractional_bounds_become_cel_because_openapi_truncates_them() -> None:
    # kube-openapi compares an integer with int64(0.01) == 0, so minimum: 0.01 would admit 0.
    text = yaml.safe_dump(COMMITTED)
    assert "minimum: 0.01" not in text
    rule = bound(">=", 0.01)
    assert {"rule": "self >= 0.01", "message": "should be greater than or equal to 0.01"} in CRD_RULES
    assert not rule.holds(0) and not rule.holds(0.001) and rule.holds(0.01) and rule.holds(1)


def test_most_invalid_examples_exercise_a_cel_rule() -> None:
    messages = {r["message"] for r in CRD_RULES}
    hits = [p for p in INVALID if any(m in str(prob) for prob in check(load(p)) for m in messages)]
    assert len(hits) >= 30


LABEL_KEYS = {
    "a": True,
    "A-b_c.d": True,
    "nvidia.com/gpu.product": True,
    "example.com/MyName": True,
    "kubernetes.io/hostname": True,
    "1": True,
    "x" * 63: True,
    "x" * 64: False,
    ("a" * 63 + ".") * 3 + "a" * 61 + "/n": True,  # a 253-character prefix
    ("a" * 63 + ".") * 3 + "a" * 62 + "/n": False,  # 254
    "a/b/c": False,
    "/a": False,
    "a/": False,
    "-a": False,
    "a-": False,
    "Example.com/a": False,  # the prefix is a lower-case DNS subdomain
    "a b": False,
    "": False,
    "ä": False,
}


@pytest.mark.parametrize(("key", "valid"), LABEL_KEYS.items(), ids=lambda v: repr(v)[:20])
def test_label_keys_follow_kubernetes(key: str, valid: bool) -> None:
    assert formats.is_label_key(key) is valid


LABEL_VALUES = {
    "": True,
    "NVIDIA-L4": True,
    "NVIDIA-A100-SXM4-80GB": True,
    "a_b.c-d": True,
    "1": True,
    "x" * 63: True,
    "x" * 64: False,
    "NVIDIA-L4-": False,
    "-a": False,
    ".a": False,
    "a b": False,
    "a/b": False,
}


@pytest.mark.parametrize(("value", "valid"), LABEL_VALUES.items(), ids=lambda v: repr(v)[:20])
def test_label_values_follow_kubernetes(value: str, valid: bool) -> None:
    assert (len(value) <= formats.LABEL_VALUE_MAX and formats.is_label_value(value)) is valid


# (text, valid, negative) as resource.ParseQuantity decides; the e2e parity test sends the same
# strings to the API server as Pod requests.
QUANTITIES = [
    ("1", True, False),
    ("500m", True, False),
    ("500u", True, False),
    ("5n", True, False),
    ("1.5", True, False),
    ("1.", True, False),
    (".5", True, False),
    ("1e3", True, False),
    ("1E3", True, False),
    ("1e-3", True, False),
    ("1e+3", True, False),
    ("1E", True, False),  # exa
    ("1Pi", True, False),
    ("8Gi", True, False),
    ("1Ei", True, False),
    ("+1", True, False),
    ("0", True, False),
    ("000", True, False),
    ("+", True, False),  # zero to Kubernetes
    ("-", True, False),
    ("-0", True, False),
    ("-0.0", True, False),
    ("-1", True, True),
    ("-1e-3", True, True),
    ("", False, False),
    (".", True, False),  # no digits is zero
    ("m", True, False),
    ("+m", True, False),
    ("1e", False, False),
    ("1e+", False, False),
    ("1ki", False, False),
    ("1K", False, False),
    ("1 Gi", False, False),
    ("1Gi ", False, False),
    ("1.5.5", False, False),
    ("0x10", False, False),
    ("1e1.5", False, False),
    ("1Mi3", False, False),
]


@pytest.mark.parametrize(("text", "valid", "negative"), QUANTITIES, ids=lambda v: repr(v))
def test_quantities_follow_kubernetes(text: str, valid: bool, negative: bool) -> None:
    assert formats.parse_quantity(text) == (valid, negative)
    assert formats.QUANTITY_RULE.holds(text) is (valid and not negative)


def test_a_bare_integer_quantity_is_a_count() -> None:
    assert formats.QUANTITY_RULE.holds(2) and formats.QUANTITY_RULE.holds(0)
    assert not formats.QUANTITY_RULE.holds(-1)


def test_cel_regexes_are_anchored_and_escaped_for_cel() -> None:
    cel = formats.matches("self", formats.LABEL_VALUE)
    assert cel.startswith('self.matches("^(?:') and cel.endswith(')$")')
    assert formats.cel_string('a"b\\c') == '"a\\"b\\\\c"'
