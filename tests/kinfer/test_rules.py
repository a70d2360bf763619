"""Cross-field rules: Python and the CRD's CEL say the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kinfer.api import v1alpha1 as api
from kinfer.api.crd import NAME_RULES
from kinfer.api.rules import ApiModel
from kinfer.api.validation import problems

from .conftest import INVALID, ROOT, expected_field, load


def _crd_messages(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_crd_messages(n) for n in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {v["message"] for v in node.get("x-kubernetes-validations", [])}
    return found.union(*(_crd_messages(v) for v in node.values()))


CRD_MESSAGES = _crd_messages(
    yaml.safe_load((ROOT / "crds" / "kinfer.dev_inferenceservices.yaml").read_text())
)
RULE_MESSAGES = [
    r.message
    for model in vars(api).values()
    if isinstance(model, type) and issubclass(model, ApiModel)
    for r in model.rules
] + [r.message for r in NAME_RULES]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_rule_messages_match_the_crd(path: Path) -> None:
    (problem,) = problems(load(path))
    field, _, message = problem.partition(": ")
    assert field == expected_field(path)
    for rule_message in RULE_MESSAGES:
        if (
            message.startswith(rule_message)
            or rule_message.removeprefix("metadata.name: ") in message
        ):
            # The API server prints the CRD's message: it must be the same words.
            assert rule_message in CRD_MESSAGES


def test_most_invalid_examples_exercise_a_cel_rule() -> None:
    hits = [
        path
        for path in INVALID
        if any(m.removeprefix("metadata.name: ") in problems(load(path))[0] for m in RULE_MESSAGES)
    ]
    assert len(hits) >= 8
