"""Property tests of the one validator: generated valid documents are accepted (and render),
generated mistakes are refused naming the field they were made in. The e2e parity test sends
documents generated the same way to the real API server."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kinfer.api import formats
from kinfer.api.v1alpha1 import validate_spec
from kinfer.api.validation import check
from kinfer.render import render
from kinfer.settings import OperatorConfig

from .test_properties import specs

DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
DNS_SUBDOMAIN = st.lists(DNS_LABEL, min_size=1, max_size=4).map(".".join)
LABEL_NAME = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,30}[A-Za-z0-9])?", fullmatch=True)
LABEL_KEY = st.one_of(LABEL_NAME, st.tuples(DNS_SUBDOMAIN, LABEL_NAME).map("/".join))
LABEL_VALUE = st.one_of(st.just(""), LABEL_NAME)
QUANTITY = st.one_of(
    st.integers(0, 10**6),
    st.builds(
        lambda n, f, s: f"{n}{f}{s}",
        st.integers(0, 9999),
        st.sampled_from(["", ".5", ".25", "."]),
        st.sampled_from(["", "m", "u", "n", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "Pi", "e3", "E-2"]),
    ),
)


@st.composite
def tolerations(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        entry: dict[str, Any] = {"operator": "Exists"}
        if draw(st.booleans()):
            entry["key"] = draw(LABEL_KEY)
    else:
        entry = {"key": draw(LABEL_KEY), "operator": "Equal", "value": draw(LABEL_VALUE)}
    effect = draw(st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]))
    entry["effect"] = effect
    if effect == "NoExecute" and draw(st.booleans()):
        entry["tolerationSeconds"] = draw(st.integers(0, 10**6))
    return entry


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(specs())
    spec = doc["spec"]
    spec["resources"]["cpu"] = draw(QUANTITY)
    spec["resources"]["memory"] = draw(QUANTITY)
    spec["scheduling"] = {
        "nodeSelector": draw(st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=4)),
        "tolerations": draw(st.lists(tolerations(), max_size=3)),
        "priorityClassName": draw(st.one_of(st.just(""), DNS_SUBDOMAIN)),
    }
    doc["metadata"]["labels"] = draw(st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=3))
    return doc


@settings(max_examples=200, deadline=None)
@given(doc=documents())
def test_generated_valid_documents_are_accepted_and_render(doc: dict[str, Any]) -> None:
    assert [str(p) for p in check(doc)] == []
    validate_spec(doc["spec"])
    render(doc, OperatorConfig())


# (path inside spec, a wrong value, the field the API server names)
MISTAKES: list[tuple[tuple[str, ...], Any, str]] = [
    (("resources", "gpu"), "1", "spec.resources.gpu"),
    (("resources", "gpu"), 17, "spec.resources.gpu"),
    (("resources", "gpu"), 0.5, "spec.resources.gpu"),
    (("resources", "cpu"), "1 core", "spec.resources.cpu"),
    (("resources", "cpu"), 0.5, "spec.resources.cpu"),
    (("resources", "memory"), "-1Gi", "spec.resources.memory"),
    (("scaling", "maxReplicas"), "10", "spec.scaling.maxReplicas"),
    (("scaling", "maxReplicas"), 1001, "spec.scaling.maxReplicas"),
    (("scaling", "mode"), "Metrics", "spec.scaling.mode"),
    (("scaling", "scaleToZero", "enabled"), "true", "spec.scaling.scaleToZero.enabled"),
    (("scaling", "targets", "queueDepthPerReplica"), 0, "spec.scaling.targets.queueDepthPerReplica"),
    (("runtime", "batching", "maxDelayMs"), 1001, "spec.runtime.batching.maxDelayMs"),
    (("runtime", "server"), "onnx", "spec.runtime.server"),
    (("model", "uri"), "s3://Bucket/m", "spec.model.uri"),
    (("model", "uri"), "oci://registry.local/m", "spec.model.uri"),
    (("model", "uri"), "http://models.local/m.pt", "spec.model.uri"),
    (("model", "sha256"), "F" * 64, "spec.model.sha256"),
    (("model", "uri"), "pvc://Upper/m", "spec.model.uri"),
    (("model", "format"), 1, "spec.model.format"),
    (("scheduling", "priorityClassName"), "High", "spec.scheduling.priorityClassName"),
    (("scheduling", "nodeSelector"), {"a b": "x"}, "spec.scheduling.nodeSelector"),
    (("scheduling", "nodeSelector"), {"zone": "x-"}, "spec.scheduling.nodeSelector[zone]"),
    (("scheduling", "nodeSelector"), {"zone": 1}, "spec.scheduling.nodeSelector.zone"),
    (("scheduling", "tolerations"), [{"operator": "Equal"}], "spec.scheduling.tolerations[0].operator"),
    (
        ("scheduling", "tolerations"),
        [{"key": "a", "operator": "Exists", "value": "v"}],
        "spec.scheduling.tolerations[0].value",
    ),
    (
        ("scheduling", "tolerations"),
        [{"key": "a", "tolerationSeconds": 1}],
        "spec.scheduling.tolerations[0].effect",
    ),
    (("scheduling", "affinity"), [], "spec.scheduling.affinity"),
    (("resources", "gpus"), 1, "spec.resources.gpus"),
]


def _put(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for step in path[:-1]:
        node = node.setdefault(step, {})
    node[path[-1]] = value


@settings(max_examples=300, deadline=None)
@given(doc=documents(), mistake=st.sampled_from(MISTAKES))
def test_a_mistake_is_refused_naming_its_field(
    doc: dict[str, Any], mistake: tuple[tuple[str, ...], Any, str]
) -> None:
    path, value, field = mistake
    broken = copy.deepcopy(doc)
    _put(broken["spec"], path, value)
    named = {p.field for p in check(broken) if p.field}
    # The mistake's own field is named; another rule may fail too (e.g. steps and a new bound).
    assert field in named, (field, named)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abAB09-_./ ", max_size=80))
def test_label_key_rule_is_kubernetes_label_key_check(text: str) -> None:
    # The rule's twin agrees with apimachinery's IsLabelKey, which meta.py ports word for word.
    from kinfer.api import meta

    assert (formats.is_label_key(text) and len(text) <= formats.LABEL_KEY_MAX) == (meta.label_key(text) == [])
    assert (formats.is_label_value(text) and len(text) <= 63) == (meta.label_value(text) == [])
