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
        self.ca = str(storage.ca_bundle(state))

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


def last_start(setup: Setup, namespace: str, name: str, *pods: Obj) -> Obj:
    """status.lastStart once it is one of pods', with the initializer's figures; {} until then."""
    isvc = setup.get(namespace, f"inferenceservice/{name}")
    start: Obj = (isvc.get("status") or {}).get("lastStart") or {}
    names = {p["metadata"]["name"] for p in pods}
    return start if start.get("pod") in names and "downloadSeconds" in start else {}


def model_metrics(pod: Obj) -> dict[str, float]:
    """The runtime's kinfer_model_* samples (the storage initializer's report, read at start)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{pod['status']['podIP']}:8080/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("kinfer_model_"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


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
    seen = model_metrics(first)
    assert seen["kinfer_model_cache_hits_total"] == 0 and seen["kinfer_model_download_bytes_total"] > 0, seen
    assert seen["kinfer_model_load_seconds"] > 0
    # status.lastStart from the initializer's termination message (the launcher reports it as a
    # kubelet does): the bytes downloaded and how long it took.
    cold = wait_for(lambda: last_start(setup, namespace, "ranker", first), 30,
                    describe=lambda: setup.why(namespace, "inferenceservice/ranker"))  # fmt: skip
    assert cold["downloadBytes"] == seen["kinfer_model_download_bytes_total"] > 0, cold
    assert cold["downloadSeconds"] > 0 and cold["cacheHit"] is False, cold
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
    seen_both = [model_metrics(p) for p in both]
    hits = [m for m in seen_both if m["kinfer_model_cache_hits_total"] == 1]
    assert hits and all(m["kinfer_model_download_bytes_total"] == 0 for m in hits), seen_both
    # Both are new pods on the node that holds the entry: the newer one is lastStart.
    warm = wait_for(lambda: last_start(setup, namespace, "ranker", *both), 30,
                    describe=lambda: setup.why(namespace, "inferenceservice/ranker"))  # fmt: skip
    assert warm["cacheHit"] is True and warm["downloadBytes"] == 0, warm
    answers(setup, namespace, "ranker")
    events = setup.kubectl("get", "events", "-n", namespace, "--field-selector=reason=ModelStarted").stdout
    assert "ModelStarted" in events and "created to Ready" in events, events


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
             describe=lambda: setup.why(namespace, "inferenceservice/nosecret", "pods"))  # fmt: skip


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


NODE = "cpu-0"  # the fault tests pin their pods here, to read that node's cache


def node_cache(setup: Setup) -> Path:
    """NODE's model cache as the launcher makes it (the operator's default modelCacheDir)."""
    from kinfer_dev.testbed import volumes

    return volumes.host_path(Path(setup.testbed.state) / "nodes", NODE, "/var/cache/kinfer/models")


def pinned(name: str, model: Obj) -> Obj:
    doc = service(name, model)
    doc["spec"]["scheduling"] = {"nodeSelector": {"kubernetes.io/hostname": NODE}}
    return doc


def initializer(setup: Setup, namespace: str, name: str) -> Obj:
    """The storage initializer's status once it has failed twice and waits in back-off (so its
    process is gone and whatever it cleans up is cleaned up), else {}."""
    for pod in pods(setup, namespace, name):
        for c in pod["status"].get("initContainerStatuses", []):
            waiting = (c.get("state") or {}).get("waiting") or {}
            if c["name"] == "storage-initializer" and c["restartCount"] >= 2 and waiting:
                return pod
    return {}


def cached(cache: Path) -> tuple[set[str], set[str]]:
    """The names in the node cache's entries/ and staging/."""
    return {p.name for p in (cache / "entries").glob("*")}, {p.name for p in (cache / "staging").glob("*")}


def nothing_served_or_cached(setup: Setup, namespace: str, name: str, cache: Path,
                             before: tuple[set[str], set[str]], wait_for: Any) -> None:  # fmt: skip
    """The initializer failed (at least twice) and left nothing new in the node cache (earlier
    tests' entries, or a download killed mid-way, are `before`); the server never ran."""
    pod = wait_for(lambda: initializer(setup, namespace, name), 60,
                   describe=lambda: setup.why(namespace, f"inferenceservice/{name}", "pods"))  # fmt: skip
    entries, staging = cached(cache)
    assert staging <= before[1], f"left in the node cache's staging: {sorted(staging - before[1])}"
    assert entries == before[0], f"new in the node cache: {sorted(entries - before[0])}"
    server = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "server")
    assert "running" not in server["state"] and not server["ready"], server
    assert not is_ready(pod)


def test_a_registry_that_is_down_ends_in_a_condition_and_nothing_is_served_or_cached(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any
) -> None:
    import socket

    from kinfer_runtime.storage import push

    # A real artifact on the bed's registry, asked for where no registry listens (a closed port).
    uri = f"oci://{stores.registry}/models/down-{uuid.uuid4().hex[:6]}:1"
    push.push(setup.model, uri)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = uri.replace(stores.registry, f"127.0.0.1:{closed}")
    cache = node_cache(setup)
    before = cached(cache)
    setup.apply(namespace, pinned("offline", {"uri": down}))

    def unreachable() -> Obj:
        cond = setup.condition(namespace, "offline", "Ready")
        return cond if cond.get("reason") == "ModelDownloadFailed" else {}

    cond = wait_for(
        unreachable, 30, describe=lambda: setup.why(namespace, "inferenceservice/offline", "pods")
    )
    assert cond["status"] == "False"
    assert f"Unreachable: {down}: registry 127.0.0.1:{closed}:" in cond["message"], cond
    assert "refused" in cond["message"].lower(), cond
    degraded = setup.condition(namespace, "offline", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ModelDownloadFailed", degraded
    nothing_served_or_cached(setup, namespace, "offline", cache, before, wait_for)


def test_a_full_disk_ends_in_a_condition_and_nothing_half_downloaded_is_served_or_cached(
    setup: Setup, stores: Stores, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("mounting the node's small disk needs root (as the test bed does)")
    # The model (its files and 16 MiB of weights) is larger than NODE's disk: the node cache's
    # directory becomes an 8 MiB tmpfs, so the staging download gets a real ENOSPC.
    model = tmp_path / "big"
    shutil.copytree(setup.model, model)
    (model / "weights.bin").write_bytes(os.urandom(16 << 20))
    bucket = stores.bucket()
    stores.upload(bucket, "big/", model)
    setup.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stores.secret("s3-keys")))
    cache = node_cache(setup)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "kinfer-e2e-small-disk", str(cache)], check=True)
    try:
        uri = f"s3://{bucket}/big/"
        setup.apply(namespace, pinned("toobig", {"uri": uri, "secretName": "s3-keys"}))

        def no_space() -> Obj:
            cond = setup.condition(namespace, "toobig", "Ready")
            return cond if cond.get("reason") == "ModelDownloadFailed" else {}

        cond = wait_for(
            no_space, 30, describe=lambda: setup.why(namespace, "inferenceservice/toobig", "pods")
        )
        assert cond["status"] == "False"
        assert f"NoSpace: {uri}: no space left for " in cond["message"], cond
        assert "weights.bin" in cond["message"], cond
        nothing_served_or_cached(setup, namespace, "toobig", cache, (set(), set()), wait_for)
        used = shutil.disk_usage(cache).used
        assert used < 1 << 20, f"{used} bytes left on the node's disk"
    finally:
        setup.kubectl("delete", "inferenceservice", "toobig", "-n", namespace, "--wait=false", check=False)
        subprocess.run(["umount", "--lazy", str(cache)], check=False)
