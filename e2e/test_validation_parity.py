"""`kinfer validate` and the real API server refuse the same documents, naming the same field with
the same words (issue 16, "one validator").

Every file under tests/data/invalid and tests/data/valid, and every example, goes to both:
- `kinfer validate -o json -f FILE` (the CLI, in process);
- kubectl, as a user would send it: `kubectl create --dry-run=client -o json -f FILE` reads the
  YAML with kubectl's own parser (the YAML 1.1 scalars, JSON keys and numbers kinfer must match),
  then the object is created with dryRun=All and fieldValidation=Strict (what `kubectl apply`
  sends), and the API server's Status causes are read: field, reason, message.

Where the API server's words wrap ours, the comparison unwraps them, and only there:
- kube-openapi repeats the path inside its message ("spec.x in body should be ..."); kinfer's line
  already starts with the path, so "PATH in body " is removed before comparing;
- a number where an integer belongs gets a second, field-less cause ('Checked value must be of type
  integer (default format) in PATH') that repeats the type error on PATH; it is not compared;
- a rule on metadata.name at the root would have no field (the API server forbids that fieldPath),
  so those rules sit on the metadata.name schema node and the server names the field itself;
- unknown fields are refused before validation with one message listing them
  ('strict decoding error: unknown field "spec.foo", ...'); each listed field is a cause;
- kubectl refuses some documents before sending them (a field of metadata of the wrong type, a
  missing apiVersion or kind, a kind the cluster does not serve): kinfer's message must appear in
  kubectl's error, which names the field (ObjectMeta.metadata.labels) or the kind and version;
- a document in a namespace whose name is invalid cannot be created (kubectl answers "namespaces
  ... not found"): the API server's refusal of that Namespace is compared with kinfer's
  metadata.namespace problems, and the document is also sent to a valid namespace so that the rest
  of it is compared too.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kinfer.api import wire
from kinfer.cli import main as kinfer_cli
from kinfer_dev.testbed.kube import KubeError

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "kinfer.dev_inferenceservices.yaml"
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
VALID = sorted((ROOT / "tests" / "data" / "valid").glob("*.yaml")) + sorted(
    (ROOT / "examples").glob("*.yaml")
)
RESOURCE = "/apis/kinfer.dev/v1alpha1/namespaces/{ns}/inferenceservices?dryRun=All&fieldValidation=Strict"
SUBSTITUTE_NAMESPACE = "default"
NOT_COMPARED = re.compile(r'Invalid value: "": Checked value must be of type integer \(default format\) in ')


@dataclass(frozen=True)
class Refusal:
    field: str
    reason: str
    message: str

    def key(self) -> tuple[str, str]:
        return (self.field, self.message)


@dataclass
class Verdict:
    refusals: list[Refusal]
    kubectl_error: str = ""  # kubectl refused before sending: its error text


class Bed:
    """The test bed with the committed CRD installed, and namespaces made on demand."""

    def __init__(self, testbed: Any) -> None:
        self.testbed = testbed
        self.kube = testbed.kube()
        self.made: set[str] = set()

    def namespace_refusals(self, name: str) -> list[Refusal]:
        """Create the namespace (once); the API server's refusals if it cannot exist."""
        if name in self.made:
            return []
        try:
            self.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
            self.made.add(name)
        except KubeError as e:
            if e.status == 409:
                return []
            return [
                Refusal("metadata.namespace" if c.field == "metadata.name" else c.field, c.reason, c.message)
                for c in _causes(e)
            ]
        return []

    def create(self, obj: dict[str, Any]) -> list[Refusal]:
        namespace = (obj.get("metadata") or {}).get("namespace") or SUBSTITUTE_NAMESPACE
        try:
            self.kube.create(RESOURCE.format(ns=namespace), obj)
        except KubeError as e:
            return _causes(e)
        return []


def _causes(error: KubeError) -> list[Refusal]:
    body = json.loads(error.body)
    message = body.get("message", "")
    decode = re.search(
        r"(json: cannot unmarshal \S+ into Go struct field ObjectMeta\.)(\w+)( of type .*)", message
    )
    if decode:
        # The API server decodes metadata as kubectl does, naming the Go field without "metadata."
        head, field, tail = decode.groups()
        return [Refusal(f"metadata.{field}", "DecodeError", f"{head}metadata.{field}{tail}")]
    if "strict decoding error" in message:
        return [
            Refusal(f, "FieldValueUnknown", f'unknown field "{f}"')
            for f in re.findall(r'unknown field "([^"]+)"', message)
        ]
    causes = (body.get("details") or {}).get("causes") or []
    if not causes:
        return [Refusal("", body.get("reason", str(error.status)), message)]
    found = []
    for cause in causes:
        field = cause.get("field", "")
        text = cause.get("message", "")
        if NOT_COMPARED.match(text):
            continue
        if field == "<nil>":
            field = ""
        found.append(Refusal(field, cause.get("reason", ""), text.replace(f"{field} in body ", "")))
    return found


def api_server(bed: Bed, path: Path) -> list[Verdict]:
    """What the API server (through kubectl's reading of the file) says of each document."""
    proc = bed.testbed.kubectl(
        "create", "--dry-run=client", "--validate=false", "-o", "json", "-f", str(path), check=False
    )
    if proc.returncode != 0:
        # What the user sees: `kubectl apply` refuses it before sending (its checks are stricter
        # than the client dry run's, e.g. "apiVersion not set").
        user = bed.testbed.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
        assert user.returncode != 0, f"kubectl apply accepted what kubectl create could not read: {path}"
        return [Verdict([], kubectl_error=user.stderr.strip())]
    out = json.loads(proc.stdout)
    verdicts = []
    for obj in out["items"] if out.get("kind") == "List" else [out]:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        refusals = bed.namespace_refusals(namespace) if namespace else []
        if refusals:
            obj = {**obj, "metadata": {**meta, "namespace": SUBSTITUTE_NAMESPACE}}
        verdicts.append(Verdict(refusals + bed.create(obj)))
    return verdicts


def kinfer_validate(path: Path) -> list[list[Refusal]] | str:
    """`kinfer validate -o json -f FILE`: the problems of each document, or the CLI's error."""
    result = CliRunner().invoke(kinfer_cli, ["validate", "-o", "json", "-f", str(path)])
    if result.exit_code not in (0, 1) or not result.output.startswith("["):
        return result.output.strip()
    return [
        [Refusal(p["field"], p["reason"], p["message"]) for p in doc["problems"]]
        for doc in json.loads(result.output)
    ]


def compare(path: Path, bed: Bed) -> str:
    """'' when both agree on the file; else what differs."""
    ours = kinfer_validate(path)
    theirs = api_server(bed, path)
    if isinstance(ours, str):
        # kinfer refused the file as a whole (YAML that cannot become JSON): so must kubectl.
        error = theirs[0].kubectl_error if len(theirs) == 1 else ""
        core = ours.removeprefix("Error: ").split(": ", 1)[-1]
        return "" if error and core in error else f"kinfer: {ours!r}\nkubectl: {error!r}"
    if len(ours) != len(theirs) and not theirs[0].kubectl_error:
        return f"{len(ours)} documents for kinfer, {len(theirs)} for kubectl"
    if theirs[0].kubectl_error:
        error = theirs[0].kubectl_error
        flat = [p for doc in ours for p in doc]
        missing = [str(p) for p in flat if p.message not in error]
        if not flat or missing:
            return f"kubectl refused before sending:\n  {error}\nkinfer said: {flat}"
        return ""
    differences = []
    for index, (mine, verdict) in enumerate(zip(ours, theirs, strict=True)):
        refusals = verdict.refusals
        if any(r.field == "kind" for r in refusals):
            # A kind in the wrong case: kubectl finds the resource anyway and the API server
            # refuses the kind, then skips defaulting, so its CEL rules fail on fields the
            # defaults would have filled ("no such key"). Only the kind is compared.
            refusals = [r for r in refusals if r.field == "kind"]
        a, b = Counter(r.key() for r in mine), Counter(r.key() for r in refusals)
        if a != b:
            differences.append(
                f"document {index}:\n  only kinfer: {sorted((a - b).elements())}"
                f"\n  only the API server: {sorted((b - a).elements())}"
            )
    return "\n".join(differences)


@pytest.fixture(scope="module")
def bed(testbed: Any) -> Iterator[Bed]:
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    testbed.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.kinfer.dev"
    )
    state = Bed(testbed)
    yield state
    for name in state.made:
        testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_documents_are_refused_by_both_naming_the_same_fields(bed: Bed, path: Path) -> None:
    ours = kinfer_validate(path)
    assert ours and (isinstance(ours, str) or all(ours)), f"kinfer validate accepted {path.name}"
    verdicts = api_server(bed, path)
    assert all(v.refusals or v.kubectl_error for v in verdicts), f"the API server accepted {path.name}"
    if not isinstance(ours, str):
        assert all(any(p.field for p in doc) for doc in ours), f"no field named: {ours}"
    assert compare(path, bed) == ""


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_documents_are_accepted_by_both(bed: Bed, path: Path) -> None:
    assert kinfer_validate(path) == [[] for _ in api_server(bed, path)], path.name
    verdicts = api_server(bed, path)
    assert all(not v.refusals and not v.kubectl_error for v in verdicts), [v for v in verdicts]


def test_every_corpus_file_is_compared() -> None:
    # Guards against an empty glob making the parity tests vacuous.
    assert len(INVALID) >= 100 and len(VALID) >= 20, (len(INVALID), len(VALID))


GENERATED = int(os.environ.get("KINFER_PARITY_DOCUMENTS", "400"))
SEED = int(os.environ.get("KINFER_PARITY_SEED", "16"))


def test_generated_documents_are_judged_alike(bed: Bed) -> None:
    """Documents not in the repository: valid ones broken at random (seeded), sent as JSON to
    validation.check (what `kinfer validate` runs per document) and to the API server."""
    from kinfer.api.validation import check
    from parity_documents import bases, broken

    # Sent as kubectl sends them: it re-encodes JSON, so a whole float (2.0) goes as 2. A client
    # that posts 2.0 for an integer field meets CEL runtime errors ("invalid data, expected int,
    # got float64") that kinfer does not imitate; kubectl users cannot.
    docs = [
        wire.as_sent(d)
        for d in broken(SEED, GENERATED, bases([ROOT / "tests" / "data" / "valid", ROOT / "examples"]))
    ]
    mismatches, refused_ours, refused_theirs = [], 0, 0
    for index, doc in enumerate(docs):
        ours = [Refusal(p.field, p.reason, p.message) for p in check(doc)]
        theirs = bed.create(doc) if isinstance(doc.get("metadata"), dict) else []
        refused_ours += bool(ours)
        refused_theirs += bool(theirs)
        refusals = [r for r in theirs if r.field == "kind"] or theirs
        if Counter(r.key() for r in ours) != Counter(r.key() for r in refusals):
            mismatches.append(
                f"#{index} {json.dumps(doc)[:1500]}\n  kinfer: {sorted(r.key() for r in ours)}"
                f"\n  API server: {sorted(r.key() for r in refusals)}"
            )
    print(
        f"generated documents: {len(docs)}, refused by kinfer: {refused_ours}, "
        f"by the API server: {refused_theirs}, mismatches: {len(mismatches)}"
    )
    assert refused_ours > GENERATED // 2  # the generator does break documents
    assert mismatches == [], "\n".join(mismatches[:10])


# Plain scalars whose meaning differs between YAML 1.1 (kubectl) and 1.2 or PyYAML.
SCALARS = [
    "y",
    "Y",
    "n",
    "N",
    "yes",
    "No",
    "on",
    "OFF",
    "true",
    "False",
    "~",
    "null",
    "NULL",
    "",
    "1",
    "-1",
    "+1",
    "0",
    "-0",
    "00",
    "010",
    "08",
    "09",
    "0o17",
    "0x1F",
    "-0x10",
    "0b101",
    "-0b11",
    "1_000",
    "1e3",
    "1E3",
    "1e+3",
    "1e-3",
    "1.5e3",
    "1.",
    ".5",
    "-.5",
    "+.5e2",
    "1.0",
    "2.50",
    "1e400",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999",
    "12:30",
    "1:2:3",
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "1-2",
    "0.1.2",
    "1e",
    "e3",
    ".",
    "+",
    "1,000",
    "1Gi",
    "500m",
    "0x",
    "._5",
    "1__0",
]


def test_yaml_reads_like_kubectl(testbed: Any) -> None:
    """wire.load_all gives the JSON kubectl sends, for values and for keys."""
    values = "\n".join(f"    v{i}: {s}" for i, s in enumerate(SCALARS))
    # A null key, or one beyond int64 (a uint64 to go-yaml), cannot become JSON: both refuse it.
    unusable = ("", "~", "null", "NULL", "9223372036854775808")
    # Keys that become the same string ("1", "+1" and "1."): go-yaml may keep several and Go's
    # random map order picks the one sent, so only keys that no other key collides with are used.
    as_key = {s: next(iter(wire.load_all(f"{s}: x")[0])) for s in SCALARS if s not in unusable}
    unique = [s for s in as_key if list(as_key.values()).count(as_key[s]) == 1]
    keys = "\n".join(f"    {s}: k{i}" for i, s in enumerate(unique))
    text = (
        "apiVersion: kinfer.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: yaml\n"
        f"spec:\n  values:\n{values}\n  keys:\n{keys}\n"
    )
    proc = testbed.kubectl(
        "create", "--dry-run=client", "--validate=false", "-o", "json", "-f", "-", input=text
    )
    sent = json.loads(proc.stdout)
    (ours,) = wire.load_all(text)
    # Beyond int64 kubectl sends a float64, printed without an exponent (9223372036854776000).
    assert ours["spec"]["keys"] == sent["spec"]["keys"]
    for key, value in ours["spec"]["values"].items():
        theirs = sent["spec"]["values"][key]
        assert (value, type(value)) == (theirs, type(theirs)) or float(value) == float(theirs), key
    for key in unusable[1:]:
        bad = f"a:\n  {key}: x\n"
        refused = testbed.kubectl(
            "create", "--dry-run=client", "-o", "json", "-f", "-", input=bad, check=False
        )
        assert refused.returncode != 0 and "unsupported map key" in refused.stderr
        with pytest.raises(wire.LoadError, match="unsupported map key"):
            wire.load_all(bad)


def _pod(namespace: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "busybox", **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "fmt-", "namespace": namespace},
        "spec": {"containers": [container], **spec},
    }


def _pod_accepted(bed: Bed, pod: dict[str, Any]) -> bool:
    try:
        bed.kube.create(f"/api/v1/namespaces/{SUBSTITUTE_NAMESPACE}/pods?dryRun=All", pod)
    except KubeError as e:
        assert e.status in (400, 422), e
        return False
    return True


FORMAT_STRINGS = [
    "a",
    "A",
    "1",
    "a-b",
    "a_b",
    "a.b",
    "-a",
    "a-",
    "_a",
    "a_",
    ".a",
    "a.",
    "a b",
    "a/b",
    "a/b/c",
    "/a",
    "a/",
    "example.com/a",
    "Example.com/a",
    "ex_ample.com/a",
    "-ex.com/a",
    "ex.com/-a",
    "x" * 63,
    "x" * 64,
    "p" * 253 + "/a",
    "p" * 254 + "/a",
    "a/" + "n" * 63,
    "a/" + "n" * 64,
    "ä",
    "a\tb",
    "",
    "nvidia.com/gpu",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-L4-",
    "1.5",
    "a..b",
]
QUANTITY_STRINGS = [
    "1",
    "0",
    "+1",
    "-1",
    "-0",
    "1.",
    ".5",
    ".",
    "+",
    "-",
    "+.",
    "000",
    "0.0",
    "-0.0",
    "1.5",
    "500m",
    "500u",
    "5n",
    "1k",
    "1K",
    "1M",
    "1G",
    "1T",
    "1P",
    "1E",
    "1Ki",
    "1Mi",
    "1Gi",
    "1Ti",
    "1Pi",
    "1Ei",
    "1ki",
    "1mi",
    "1e3",
    "1E3",
    "1e+3",
    "1e-3",
    "1e",
    "1e+",
    "1e1.5",
    "1Ee3",
    "2GB",
    "1 Gi",
    " 1",
    "1.5.5",
    "m",
    "+m",
    "0m",
    "0x10",
    "1Mi3",
    "1e3m",
    "12345678901234567890",
    "1e100",
    "1e-100",
    "0.000000001",
    "1n",
    "1.5Gi",
    "-1e-3",
    "+1e3",
    "1e03",
    "1__0",
]


def test_formats_agree_with_pod_validation(bed: Bed) -> None:
    """The label key and value rules (node selectors, tolerations) and the quantity rule (requests)
    decide as Kubernetes' own Pod validation does, string by string."""
    from kinfer.api import formats

    disagree = []
    for text in FORMAT_STRINGS:
        as_key = _pod_accepted(bed, _pod(SUBSTITUTE_NAMESPACE, nodeSelector={text: "v"}))
        if as_key != (len(text) <= formats.LABEL_KEY_MAX and formats.is_label_key(text)):
            disagree.append(f"label key {text!r}: Kubernetes {'accepts' if as_key else 'refuses'}")
        as_value = _pod_accepted(bed, _pod(SUBSTITUTE_NAMESPACE, nodeSelector={"k": text}))
        if as_value != (len(text) <= formats.LABEL_VALUE_MAX and formats.is_label_value(text)):
            disagree.append(f"label value {text!r}: Kubernetes {'accepts' if as_value else 'refuses'}")
        toleration = {"key": text, "operator": "Exists"}
        as_toleration = _pod_accepted(bed, _pod(SUBSTITUTE_NAMESPACE, tolerations=[toleration]))
        if as_toleration != (text == "" or formats.is_label_key(text)):
            disagree.append(
                f"toleration key {text!r}: Kubernetes {'accepts' if as_toleration else 'refuses'}"
            )
    for text in QUANTITY_STRINGS:
        container = {"resources": {"requests": {"cpu": text}}}
        accepted = _pod_accepted(bed, _pod(SUBSTITUTE_NAMESPACE, container=container))
        # A Pod's quantity is trimmed of spaces before it is parsed; the CRD's isQuantity is not.
        if accepted != formats.QUANTITY_RULE.holds(text.strip()):
            disagree.append(f"quantity {text!r}: Kubernetes {'accepts' if accepted else 'refuses'}")
    assert disagree == [], "\n".join(disagree)


def test_quantities_are_judged_alike(bed: Bed) -> None:
    """Every quantity string as resources.cpu and as resources.memory: kinfer's port of the
    parser against the CRD's CEL isQuantity on the API server."""
    from kinfer.api.validation import check

    mismatches = []
    for text in [*QUANTITY_STRINGS, *(int(n) for n in ("0", "2", "-2"))]:
        for field in ("cpu", "memory"):
            doc = {
                "apiVersion": "kinfer.dev/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": "quantity"},
                "spec": {"model": {"uri": "file:///m"}, "resources": {field: text}},
            }
            ours = Counter((p.field, p.message) for p in check(doc))
            theirs = Counter(r.key() for r in bed.create(doc))
            if ours != theirs:
                mismatches.append(f"{field}={text!r}: kinfer {sorted(ours)}, API server {sorted(theirs)}")
    assert mismatches == [], "\n".join(mismatches)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_documents_render_objects_the_api_server_accepts(bed: Bed, path: Path) -> None:
    """What kinfer accepts, the operator can apply: each rendered Deployment, Service, PDB, HPA
    and NetworkPolicy passes the API server's own validation (Pod rules for tolerations, node
    selectors, quantities, claim and PriorityClass names)."""
    from kinfer.render import render, to_yaml
    from kinfer.settings import OperatorConfig

    for doc in wire.load_all(path.read_text()):
        namespace = (doc.get("metadata") or {}).get("namespace") or SUBSTITUTE_NAMESPACE
        assert bed.namespace_refusals(namespace) == []
        doc["metadata"]["namespace"] = namespace
        objects = render(doc, OperatorConfig())
        proc = bed.testbed.kubectl(
            "create", "--dry-run=server", "-f", "-", input=to_yaml(objects), check=False
        )
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
