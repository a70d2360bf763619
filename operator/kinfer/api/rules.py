"""Cross-field rules written once, enforced twice.

Each rule carries its CEL expression (emitted into the CRD's ``x-kubernetes-validations``, so the
API server refuses a bad spec at admission) and a Python predicate (checked by the pydantic model,
so ``kinfer validate`` and the operator say the same thing without a cluster). The message is
shared text: a test checks the API server and ``kinfer validate`` print the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the API server, ``holds`` for Python, one message for both."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    # The field to blame, relative to the object the rule sits on (CEL fieldPath).
    field: str = ""

    def as_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # Cross-field rules of this object; the CRD generator reads the same tuple.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if not rule.holds(self):
                # ctx.field lets the caller append the blamed field to the error location.
                raise PydanticCustomError("rule", rule.message, {"field": rule.field})
        return self
