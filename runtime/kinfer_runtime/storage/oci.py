"""OCI registries through the oras client (oras-py): a model directory as an OCI artifact.

An artifact has one layer per file (annotation org.opencontainers.image.title = its path in the
model directory), or a directory layer (oras' tar+gzip, as `oras push DIR` makes it) that is
unpacked. Every blob is checked against its digest as it streams in; the manifest against the
digest in the URI when one is given. The cache key is the manifest's digest.

Registries on localhost, 127.x or listed in KINFER_INSECURE_REGISTRIES (host:port, comma
separated) are spoken to over plain HTTP, as container runtimes do; others over HTTPS.
Credentials: KINFER_STORAGE_USERNAME and KINFER_STORAGE_PASSWORD.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinfer_runtime.storage import errors
from kinfer_runtime.storage.errors import FetchError
from kinfer_runtime.storage.transfer import Progress, no_space

TITLE = "org.opencontainers.image.title"
DIR_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
FILE_MEDIA_TYPE = "application/vnd.kinfer.model.file.v1"
ARTIFACT_TYPE = "application/vnd.kinfer.model.v1"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str
    digest: str

    @classmethod
    def parse(cls, uri: str) -> Reference:
        rest = uri.removeprefix("oci://")
        registry, _, path = rest.partition("/")
        path, _, digest = path.partition("@")
        repository, _, tag = path.partition(":")
        return cls(registry, repository, tag, digest)

    @property
    def reference(self) -> str:
        return self.digest or self.tag

    @property
    def insecure(self) -> bool:
        host = self.registry.split(":")[0]
        listed = {r.strip() for r in os.environ.get("KINFER_INSECURE_REGISTRIES", "").split(",") if r.strip()}
        return host == "localhost" or host.startswith("127.") or self.registry in listed


def client(ref: Reference) -> Any:
    import oras.client

    c = oras.client.OrasClient(hostname=ref.registry, insecure=ref.insecure)
    user = os.environ.get("KINFER_STORAGE_USERNAME", "")
    if user:
        c.login(username=user, password=os.environ.get("KINFER_STORAGE_PASSWORD", ""),
                hostname=ref.registry, insecure=ref.insecure)  # fmt: skip
    return c


def _request(c: Any, uri: str, url: str, headers: dict[str, str], stream: bool = False) -> Any:
    import requests

    try:
        answer = c.do_request(url, "GET", headers=headers, stream=stream)
    except requests.RequestException as exc:
        raise FetchError(errors.UNREACHABLE, uri, f"registry: {exc}", transient=True) from exc
    if answer.status_code >= 400:
        raise errors.from_http_status(answer.status_code, uri, answer.text[:200].strip() or answer.reason)
    return answer


def _reachable(ref: Reference, uri: str) -> None:
    """Fail in seconds when nothing listens (the oras client retries for minutes)."""
    host, _, port = ref.registry.partition(":")
    try:
        socket.create_connection((host, int(port or (80 if ref.insecure else 443))), timeout=5).close()
    except OSError as exc:
        raise FetchError(errors.UNREACHABLE, uri, f"registry {ref.registry}: {exc}", transient=True) from exc


def manifest(uri: str) -> tuple[Any, Reference, dict[str, Any], str]:
    """(client, reference, manifest, manifest digest)."""
    ref = Reference.parse(uri)
    _reachable(ref, uri)
    c = client(ref)
    scheme = "http" if ref.insecure else "https"
    url = f"{scheme}://{ref.registry}/v2/{ref.repository}/manifests/{ref.reference}"
    answer = _request(c, uri, url, {"Accept": MANIFEST_TYPES})
    digest = "sha256:" + hashlib.sha256(answer.content).hexdigest()
    if ref.digest and digest != ref.digest:
        raise FetchError(errors.CHECKSUM, uri, f"manifest digest is {digest}")
    doc: dict[str, Any] = answer.json()
    if not doc.get("layers"):
        raise FetchError(errors.INVALID, uri, "the artifact has no layers")
    return c, ref, doc, digest


def _safe_path(root: Path, rel: str, uri: str) -> Path:
    target = (root / rel).resolve()
    if target == root.resolve() or root.resolve() not in target.parents:
        raise FetchError(errors.INVALID, uri, f"layer title {rel!r} leaves the model directory")
    return target


def _blob(c: Any, uri: str, ref: Reference, layer: dict[str, Any], target: Path, progress: Progress) -> None:
    scheme = "http" if ref.insecure else "https"
    url = f"{scheme}://{ref.registry}/v2/{ref.repository}/blobs/{layer['digest']}"
    answer = _request(c, uri, url, {}, stream=True)
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("wb") as f:
            for chunk in answer.iter_content(chunk_size=1 << 20):
                f.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
    except OSError as exc:
        if exc.errno == 28:
            raise no_space(uri, target, exc) from exc
        raise
    got = "sha256:" + digest.hexdigest()
    if got != layer["digest"]:
        raise FetchError(errors.CHECKSUM, uri, f"layer {layer['digest']} arrived as {got}")


def fetch_layers(uri: str, layers: list[dict[str, Any]], c: Any, ref: Reference, into: Path, workers: int,
                 progress: Progress) -> None:  # fmt: skip
    """Every layer into `into`, in parallel, each checked against its digest; directory layers
    unpacked."""
    jobs = []
    for layer in layers:
        title = (layer.get("annotations") or {}).get(TITLE)
        if not title:
            raise FetchError(errors.INVALID, uri, f"layer {layer['digest']} has no {TITLE} annotation")
        target = _safe_path(into, title, uri)
        packed = layer.get("mediaType") == DIR_MEDIA_TYPE
        jobs.append((layer, target, target.with_name(target.name + ".layer.tar.gz") if packed else target))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_blob, c, uri, ref, layer, dest, progress) for layer, _, dest in jobs]
        for fut in futures:
            fut.result()
    for _, target, dest in jobs:
        if dest != target:
            with tarfile.open(dest) as tar:
                tar.extractall(target.parent, filter="data")
            dest.unlink()
