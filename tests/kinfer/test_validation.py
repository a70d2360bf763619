"""The one validator: what the API server does at admission, checked offline (admission.py,
meta.py, wire.py). Each case here was first observed on the real API server (Kubernetes 1.36);
e2e/test_validation_parity.py keeps comparing them there."""

from __future__ import annotations

from typing import Any

import pytest

from kinfer.api import wire
from kinfer.api.admission import BLOCKING, RULES_SKIPPED, go_value
from kinfer.api.v1alpha1 import InvalidSpec, validate_spec
from kinfer.api.validation import check, problems

from .conftest import VALID, load


def isvc(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "ranker", **metadata},
        "spec": {"model": {"uri": "pvc://models/ranker/7"}, **spec},
    }


def fields(doc: dict[str, Any]) -> set[str]:
    return {p.field for p in check(doc) if p.field}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_documents_pass(path: Any) -> None:
    doc = load(path)
    assert problems(doc) == []
    validate_spec(doc["spec"])


def test_quoted_numbers_and_booleans_are_strings() -> None:
    assert problems(isvc({"resources": {"gpu": "1"}})) == [
        'spec.resources.gpu: Invalid value: "string": must be of type integer: "string"',
        f"Invalid value: null: {RULES_SKIPPED}",
    ]
    assert fields(isvc({"scaling": {"scaleToZero": {"enabled": "true"}}})) == {
        "spec.scaling.scaleToZero.enabled"
    }


def test_a_whole_float_is_an_integer_and_a_fraction_is_not() -> None:
    assert check(isvc({"resources": {"gpu": 1.0}})) == []
    assert fields(isvc({"resources": {"gpu": 1.5}})) == {"spec.resources.gpu"}


def test_nulls_are_dropped_and_defaults_applied() -> None:
    assert check(isvc({"resources": {"gpu": None}, "scheduling": {"tolerations": None}})) == []
    spec = validate_spec({"model": {"uri": "file:///m"}, "resources": {"cpu": None}})
    assert spec.resources.cpu == "1"
    assert problems(isvc({"model": None}))[0] == "spec.model: Required value"


def test_a_null_list_item_is_a_type_error() -> None:
    assert fields(isvc({"scheduling": {"tolerations": [None]}})) == {"spec.scheduling.tolerations[0]"}


def test_unknown_fields_are_refused_before_anything_else() -> None:
    assert problems(isvc({"resources": {"gpus": 1, "gpu": -1}, "replicas": 2})) == [
        'spec.resources.gpus: unknown field "spec.resources.gpus"',
        'spec.replicas: unknown field "spec.replicas"',
    ]


def test_an_object_where_a_list_belongs_has_only_unknown_fields() -> None:
    doc = isvc({"scheduling": {"tolerations": {"key": "a"}}})
    assert fields(doc) == {"spec.scheduling.tolerations.key"}


def test_range_errors_do_not_stop_rules_but_type_errors_do() -> None:
    # minimum is not a blocking error: the CEL rules still run and report too.
    ranged = problems(isvc({"scaling": {"minReplicas": -1, "maxReplicas": 2}}))
    assert ranged == [
        "spec.scaling.minReplicas: Invalid value: -1: should be greater than or equal to 0",
        "spec.scaling.minReplicas: Invalid value: minReplicas 0 needs scaleToZero.enabled",
    ]
    typed = check(isvc({"resources": {"gpu": "2"}, "scaling": {"minReplicas": 5, "maxReplicas": 2}}))
    assert [p.field for p in typed] == ["spec.resources.gpu", ""]
    assert typed[0].reason in BLOCKING


def test_a_fractional_bound_refuses_an_integer_below_it() -> None:
    drift = {"maxAbsDiff": 0.1, "samplesPerSecond": 0}
    doc = isvc({"rollout": {"canary": {"model": {"uri": "file:///b"}, "analysis": {"drift": drift}}}})
    assert problems(doc) == [
        "spec.rollout.canary.analysis.drift.samplesPerSecond: Invalid value: 0: "
        "should be greater than or equal to 0.01"
    ]


def test_bounds_print_as_the_api_server_prints_them() -> None:
    # An integer value shows the bound as an integer; a float value shows Go's %v of it.
    whole = {"maxAbsDiff": 2.5e6}  # kubectl sends a whole float as an integer
    doc = isvc({"rollout": {"canary": {"model": {"uri": "file:///b"}, "analysis": {"drift": whole}}}})
    assert problems(doc) == [
        "spec.rollout.canary.analysis.drift.maxAbsDiff: Invalid value: 2500000: "
        "should be less than or equal to 1000000"
    ]
    drift = {"maxAbsDiff": 2.5e6 + 0.5}
    doc = isvc({"rollout": {"canary": {"model": {"uri": "file:///b"}, "analysis": {"drift": drift}}}})
    assert problems(doc) == [
        "spec.rollout.canary.analysis.drift.maxAbsDiff: Invalid value: 2.5000005e+06: "
        "should be less than or equal to 1e+06"
    ]
    assert go_value(2**70) == "1.1805916207174113e+21"


def test_steps_are_a_set() -> None:
    doc = isvc({"rollout": {"canary": {"model": {"uri": "file:///b"}, "steps": [25, 25, 100]}}})
    assert problems(doc) == ["spec.rollout.canary.steps[1]: Duplicate value: 25"]


@pytest.mark.parametrize(
    ("toleration", "field"),
    [
        ({"key": "a", "operator": "Exists", "value": "x"}, "value"),
        ({"operator": "Equal", "value": "x"}, "operator"),
        ({"key": "a", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}, "effect"),
        ({"key": "a b", "operator": "Exists"}, "key"),
        ({"key": "a", "value": "-x-"}, "value"),
    ],
)
def test_tolerations_follow_pod_rules(toleration: dict[str, Any], field: str) -> None:
    doc = isvc({"scheduling": {"tolerations": [{"key": "ok", "operator": "Exists"}, toleration]}})
    assert fields(doc) == {f"spec.scheduling.tolerations[1].{field}"}


def test_node_selector_keys_and_values() -> None:
    assert check(isvc({"scheduling": {"nodeSelector": {"topology.kubernetes.io/zone": "a"}}})) == []
    assert fields(isvc({"scheduling": {"nodeSelector": {"a/b/c": "v"}}})) == {"spec.scheduling.nodeSelector"}
    # A rule on a map entry names it NAME[KEY], as the CEL validator does.
    assert fields(isvc({"scheduling": {"nodeSelector": {"zone": "-a"}}})) == {
        "spec.scheduling.nodeSelector[zone]"
    }


def test_quantities_and_claims_that_used_to_be_refused() -> None:
    for cpu in ("1e3", "500u", 2):
        assert check(isvc({"resources": {"cpu": cpu, "memory": "1Pi"}})) == [], cpu
    assert check(isvc({"model": {"uri": "pvc://models.team-a/ranker/7"}})) == []


def test_metadata_is_checked_with_apimachinery_words() -> None:
    found = problems(isvc({}, namespace="team_a", labels={"app": "v1-"}))
    assert found[0].startswith('metadata.namespace: Invalid value: "team_a": a lowercase RFC 1123 label')
    assert found[1].startswith('metadata.labels: Invalid value: "v1-": a valid label must be')
    assert problems(isvc({}, labels={"tier": 1})) == [
        "metadata.labels: json: cannot unmarshal number into Go struct field "
        "ObjectMeta.metadata.labels of type string"
    ]
    assert problems(isvc({}, label={"a": "b"})) == ['metadata.label: unknown field "metadata.label"']


def test_names_need_both_the_api_servers_rule_and_the_crds() -> None:
    assert fields(isvc({}, name="a.b")) == {"metadata.name"}  # a subdomain, not a DNS-1035 label
    assert len(check(isvc({}, name="Bad_Name"))) == 2
    generated = isvc({})
    generated["metadata"] = {"generateName": "ranker-"}
    assert check(generated) == []


def test_wrong_document_types() -> None:
    assert problems({"kind": "InferenceService"}) == ["apiVersion: apiVersion not set"]
    bad = isvc({})
    bad["apiVersion"] = "kinfer.dev/v1"
    assert problems(bad) == ['apiVersion: no matches for kind "InferenceService" in version "kinfer.dev/v1"']
    assert problems([1]) == ["an InferenceService must be a mapping"]


def test_validate_spec_raises_naming_the_field() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.resources\.gpu: Invalid value: -1"):
        validate_spec({"model": {"uri": "file:///m"}, "resources": {"gpu": -1}})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("y", True),
        ("n", False),
        ("on", True),
        ("1e3", 1000),
        ("1.0", 1),
        ("08", 8),
        ("0o10", 8),
        ("0b11", 3),
        ("12:30", "12:30"),
        ("2024-01-01", "2024-01-01"),
        ("1_000", 1000),
        ("1e400", "1e400"),
        ("'yes'", "yes"),
    ],
)
def test_yaml_scalars_read_as_kubectl_reads_them(text: str, value: Any) -> None:
    (doc,) = wire.load_all(f"a: {text}\n")
    assert doc["a"] == value and type(doc["a"]) is type(value)


def test_yaml_keys_become_json_strings() -> None:
    (doc,) = wire.load_all("a: {1: x, true: b, 1.5: z}\n")
    assert doc == {"a": {"1": "x", "true": "b", "1.5": "z"}}
    with pytest.raises(wire.LoadError, match=r"\+Inf"):
        wire.load_all("a: .inf\n")
