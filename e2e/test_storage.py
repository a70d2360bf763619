"""Models from the test bed's real stores: MinIO (s3://, and https:// from a public-read bucket)
and a distribution registry (oci://), downloaded by the storage initializer through the node
cache. Skipped when the stores are not built (`kinfer dev install minio registry`)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kinfer_dev.local import MLP_REQUEST, infer
from kinfer_dev.testbed import bed, storage
from operator_bed import ROOT, Setup

pytestmark = pytest.mark.e2e

Obj = dict[str, Any]


class Stores:
    def __init__(self, state: Path) -> None:
        ports = bed.Bed(state).load()["ports"]
        self.endpoint = f"https://127.0.0.1:{ports['minio']}"
        self.registry = f"127.0.0.1:{ports['registry']}"
        self.ca = str(state / "pki" / "ca.crt")

    def s3(self, access_key: str = storage.ACCESS_KEY, secret_key: str = storage.SECRET_KEY) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=storage.REGION, verify=self.ca,
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key)  # fmt: skip

    def bucket(self, public: bool = False) -> str:
        name = f"e2e-{uuid.uuid4().hex[:10]}"
        client = self.s3()
        client.create_bucket(Bucket=name)
        if public:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
                               "Resource": [f"arn:aws:s3:::{name}/*"]}],
            }  # fmt: skip
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        return name

    def upload(self, bucket: str, prefix: str, model: Path) -> None:
        client = self.s3()
        for path in sorted(model.iterdir()):
            client.upload_file(str(path), bucket, f"{prefix}{path.name}")

    def secret(self, name: str, secret_key: str = storage.SECRET_KEY) -> Obj:
        data = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": storage.REGION,
            "AWS_ACCESS_KEY_ID": storage.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_CA_BUNDLE": self.ca,
            "SSL_CERT_FILE": self.ca,
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }


@pytest.fixture(scope="module")
def stores(testbed: Any) -> Stores:
    if "minio" not in bed.Bed(testbed.state).load()["ports"]:
        pytest.skip("model stores not built: kinfer dev install minio registry")
    return Stores(testbed.state)


def service(name: str, model: Obj, replicas: int = 1) -> Obj:
    doc: Obj = yaml.safe_load((ROOT / "examples" / "s3.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["model"] = model
    doc["spec"]["scaling"] = {"mode": "fixed", "minReplicas": replicas, "maxReplicas": max(replicas, 1)}
    return doc


def pods(setup: Setup, namespace: str, name: str) -> list[Obj]:
    items: list[Obj] = setup.get(namespace, f"pods -l kinfer.dev/isvc={name}").get("items", [])
    return items


def is_ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def answers(setup: Setup, namespace: str, name: str) -> None:
    ready = [
        p for p in pods(setup, namespace, name) if is_ready(p) and not p["metadata"].get("deletionTimestamp")
    ]
    assert ready
    for pod in ready:
        status, body = infer(pod["status"]["podIP"], name, MLP_REQUEST)
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["shape"] == [1, 4]


def fetch_report(pod: Obj) -> Obj:
    (init,) = pod["status"]["initContainerStatuses"]
    report: Obj = json.loads(init["state"]["terminated"].get("message") or "{}")
    return report


def test_s3_model_becomes_ready_answers_and_the_second_replica_hits_the_cache(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any
) -> None:
    bucket = stores.bucket()
    stores.upload(bucket, "mlp/7/", setup.model)
    setup.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stores.secret("s3-keys")))
    doc = service("ranker", {"uri": f"s3://{bucket}/mlp/7/", "secretName": "s3-keys"})
    setup.apply(namespace, doc)
    setup.wait_ready(wait_for, namespace, "ranker", timeout=120)
    answers(setup, namespace, "ranker")
    (first,) = pods(setup, namespace, "ranker")
    assert fetch_report(first)["cache_hit"] is False and fetch_report(first)["bytes"] > 0
    # A second replica on the same node (the bed's pods share the node's hostPath cache only
    # when they land on one node: pin both to the first pod's node).
    node = first["spec"]["nodeName"]
    doc["spec"]["scaling"] = {"mode": "fixed", "minReplicas": 2, "maxReplicas": 2}
    doc["spec"]["scheduling"] = {"nodeSelector": {"kubernetes.io/hostname": node}}
    setup.apply(namespace, doc)

    def two_ready_on_node() -> list[Obj]:
        ready = [
            p for p in pods(setup, namespace, "ranker")
            if p["spec"].get("nodeName") == node and p["spec"].get("nodeSelector") and is_ready(p)
        ]  # fmt: skip
        return ready if len(ready) == 2 else []

    both = wait_for(two_ready_on_node, 120, describe=lambda: setup.why(namespace, "deployment/ranker"))
    reports = [fetch_report(p) for p in both]
    assert any(r["cache_hit"] for r in reports), reports
    answers(setup, namespace, "ranker")


def test_a_wrong_secret_ends_in_a_condition_naming_the_uri_and_the_cause(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any
) -> None:
    bucket = stores.bucket()
    stores.upload(bucket, "mlp/", setup.model)
    bad = stores.secret("s3-keys", secret_key="not-the-secret")
    setup.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad))
    uri = f"s3://{bucket}/mlp/"
    setup.apply(namespace, service("ranker", {"uri": uri, "secretName": "s3-keys"}))

    def failed() -> Obj:
        cond = setup.condition(namespace, "ranker", "Ready")
        return cond if cond.get("reason") == "ModelDownloadFailed" else {}

    cond = wait_for(failed, 30, describe=lambda: setup.why(namespace, "inferenceservice/ranker"))
    assert cond["status"] == "False"
    assert f"Forbidden: {uri}: HTTP 403 (check the credentials)" in cond["message"], cond


def test_a_missing_object_and_a_missing_secret_name_their_cause(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any
) -> None:
    bucket = stores.bucket()
    setup.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stores.secret("s3-keys")))
    setup.apply(namespace, service("missing", {"uri": f"s3://{bucket}/none/", "secretName": "s3-keys"}))
    setup.apply(namespace, service("nosecret", {"uri": f"s3://{bucket}/none/", "secretName": "absent"}))

    def reason(name: str, words: str) -> bool:
        cond = setup.condition(namespace, name, "Ready")
        return cond.get("reason") == "ModelDownloadFailed" and words in cond.get("message", "")

    wait_for(lambda: reason("missing", f"NotFound: s3://{bucket}/none/"), 30,
             describe=lambda: setup.why(namespace, "inferenceservice/missing"))  # fmt: skip
    wait_for(lambda: reason("nosecret", 'secret "absent" not found'), 30,
             describe=lambda: setup.why(namespace, "inferenceservice/nosecret"))  # fmt: skip


def test_https_model_with_sha256_becomes_ready_and_a_wrong_digest_fails(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    import hashlib
    import tarfile

    archive = tmp_path / "mlp.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(setup.model, arcname="mlp")
    bucket = stores.bucket(public=True)
    stores.s3().upload_file(str(archive), bucket, "mlp.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    uri = f"{stores.endpoint}/{bucket}/mlp.tar.gz"
    ca = stores.secret("ca")  # only SSL_CERT_FILE matters to https://
    setup.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(ca))
    setup.apply(namespace, service("web", {"uri": uri, "sha256": digest, "secretName": "ca"}))
    setup.apply(namespace, service("tampered", {"uri": uri, "sha256": "0" * 64, "secretName": "ca"}))
    setup.wait_ready(wait_for, namespace, "web", timeout=120)
    answers(setup, namespace, "web")

    def mismatch() -> bool:
        cond = setup.condition(namespace, "tampered", "Ready")
        return cond.get("reason") == "ModelDownloadFailed" and "ChecksumMismatch" in cond.get("message", "")

    wait_for(mismatch, 30, describe=lambda: setup.why(namespace, "inferenceservice/tampered"))


def test_oci_model_becomes_ready_and_answers(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any
) -> None:
    from kinfer_runtime.storage import push

    uri = f"oci://{stores.registry}/models/mlp-{uuid.uuid4().hex[:6]}:1"
    digest = push.push(setup.model, uri)
    setup.apply(namespace, service("registry", {"uri": uri}))
    setup.wait_ready(wait_for, namespace, "registry", timeout=120)
    answers(setup, namespace, "registry")
    by_digest = uri.rsplit(":", 1)[0] + "@" + digest
    setup.apply(namespace, service("pinned", {"uri": by_digest}))
    setup.wait_ready(wait_for, namespace, "pinned", timeout=120)
