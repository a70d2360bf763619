"""Rules written once, enforced twice.

Each rule carries its CEL expression (emitted into the CRD's ``x-kubernetes-validations``, so the
API server refuses a bad spec at admission) and a Python twin, ``holds``, that `kinfer validate`
and the operator run where the API server would run the CEL: on the same value (the wire form,
camelCase keys, after defaulting) and only when no blocking error came first (see admission.py).
The message is the same text for both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kinfer.api.wire import go_float_text

_TWINS: dict[tuple[str, str], Rule] = {}


@dataclass(frozen=True)
class Rule:
    """A CEL rule for the API server, ``holds`` for Python, one message for both."""

    cel: str
    message: str
    # The value the CEL sees as `self`: a dict with camelCase keys, a list, a string, a number.
    holds: Callable[[Any], bool]
    # The field to blame, relative to the object the rule sits on (CEL fieldPath).
    field: str = ""

    def __post_init__(self) -> None:
        known = _TWINS.setdefault((self.cel, self.message), self)
        if known is not self and known.field != self.field:
            raise ValueError(f"two rules share CEL and message but blame different fields: {self.cel}")

    def as_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


def twin(crd_rule: dict[str, Any]) -> Rule:
    """The Python twin of a rule as written in the CRD."""
    key = (crd_rule["rule"], crd_rule["message"])
    if key not in _TWINS:
        # Bounds are made by the CRD generator from the models; make this one the same way.
        made = re.fullmatch(r"self (>=|>|<=|<) (\S+)", key[0])
        if made:
            bound(made[1], float(made[2]))
    try:
        return _TWINS[key]
    except KeyError:
        raise KeyError(f"CRD rule without a Python twin: {crd_rule['rule']}") from None


def validations(*rules: Rule) -> dict[str, Any]:
    """A field's json_schema_extra carrying its rules into the CRD."""
    return {"x-kubernetes-validations": [r.as_crd() for r in rules]}


_WORDS = {
    ">=": "greater than or equal to",
    ">": "greater than",
    "<=": "less than or equal to",
    "<": "less than",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


@functools.cache
def bound(op: str, limit: float) -> Rule:
    """A fractional bound of a number, as CEL.

    The API server compares an integer value with int64(bound): `minimum: 0.01` admits 0. CEL
    compares numbers exactly, so the CRD generator turns such bounds into this rule; it says what
    the OpenAPI bound would have said.
    """
    text = go_float_text(limit)
    check = _OPS[op]
    return Rule(
        cel=f"self {op} {text}",
        message=f"should be {_WORDS[op]} {text}",
        holds=lambda value: check(float(value), limit),
    )


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, strict types.

    Documents are checked by admission.py against the generated CRD before they are parsed here,
    so these models only ever see what the API server would have stored.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        use_attribute_docstrings=True,
    )

    # Cross-field rules of this object; the CRD generator reads the same tuple.
    rules: ClassVar[tuple[Rule, ...]] = ()
