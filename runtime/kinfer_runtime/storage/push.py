"""`kinfer-runtime push DIR URI` and `kinfer-runtime ls URI` (behind `kinfer model push|ls`):
put a model directory where the storage initializer reads it, and list what is there.

s3://BUCKET/PREFIX/: one object per file, each uploaded in one PUT with its SHA-256 checksum
(x-amz-checksum-sha256), so fetch can check every object's digest. oci://REGISTRY/REPO:TAG: one
layer per file (oras' push: title annotation = file name) and an empty config; the manifest's
digest is printed, for a pinned oci://…@sha256: URI. Credentials as for fetch (AWS_*, or
KINFER_STORAGE_USERNAME/PASSWORD).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kinfer_runtime.storage import errors, oci, sources
from kinfer_runtime.storage.errors import FetchError

SIGNATURE = "signature.json"
SINGLE_PUT_MAX = 4 << 30  # S3 takes up to 5 GiB in one PUT


def _files(model: Path) -> list[Path]:
    if not (model / SIGNATURE).is_file():
        raise SystemExit(f"{model}: no {SIGNATURE} (kinfer-runtime loads a model by its signature)")
    return sorted(p for p in model.iterdir() if not p.name.startswith("."))


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _bucket(s3: sources.S3Source) -> None:
    """Create the bucket when it does not exist yet (as `mc cp` does; the keys may lack the
    right to, and then the store says so)."""
    try:
        s3.client.head_bucket(Bucket=s3.bucket)
        return
    except Exception as exc:
        if sources.s3_error(s3.uri, exc).cause != errors.NOT_FOUND:
            raise sources.s3_error(s3.uri, exc) from exc
    region = s3.client.meta.region_name
    where: dict[str, Any] = {}
    if region not in (None, "us-east-1"):  # us-east-1 takes no LocationConstraint
        where["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.client.create_bucket(Bucket=s3.bucket, **where)
    except Exception as exc:
        raise sources.s3_error(s3.uri, exc) from exc
    print(f"created bucket {s3.bucket}", file=sys.stderr)


def push(model: Path, uri: str) -> str:
    """Upload the model directory; return the OCI manifest digest, or the S3 prefix."""
    files = _files(model)
    if uri.startswith("oci://"):
        ref = oci.Reference.parse(uri)
        client = oci.client(ref)
        target = f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}"
        with _cwd(model):  # oras names layers by their path relative to the working directory
            kind = {"org.opencontainers.artifact.type": oci.ARTIFACT_TYPE}
            answer = client.push(target, files=[p.name for p in files], quiet=True, manifest_annotations=kind)
        return str(answer.headers.get("Docker-Content-Digest", ""))
    if uri.startswith("s3://"):
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        s3 = sources.S3Source(uri, workers=8)
        prefix = s3.key if s3.key.endswith("/") or not s3.key else s3.key + "/"
        config = TransferConfig(multipart_threshold=SINGLE_PUT_MAX, max_concurrency=8)
        _bucket(s3)
        for path in files:
            try:
                s3.client.upload_file(str(path), s3.bucket, prefix + path.name,
                                      ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)  # fmt: skip
            except S3UploadFailedError as exc:  # the store's answer is its cause
                raise sources.s3_error(uri, exc.__cause__ or exc) from exc
        return f"s3://{s3.bucket}/{prefix}"
    raise SystemExit(f"{uri}: push takes s3:// or oci:// URIs")


def ls(uri: str) -> list[str]:
    """One line per object (size and path) or per OCI tag and layer."""
    if uri.startswith("oci://"):
        _, ref, doc, digest = oci.manifest(uri)
        lines = [f"{ref.registry}/{ref.repository}@{digest}"]
        for layer in doc["layers"]:
            title = (layer.get("annotations") or {}).get(oci.TITLE, layer["digest"])
            lines.append(f"{int(layer.get('size', 0)):>14}  {title}  {layer['digest']}")
        return lines
    if uri.startswith("s3://"):
        s3 = sources.S3Source(uri if uri.endswith("/") else uri + "/", workers=1)
        return [f"{o.size:>14}  {o.path}  {o.sha256 or o.version}" for o in s3.objects()]
    raise SystemExit(f"{uri}: ls takes s3:// or oci:// URIs")


def main(command: str, argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"kinfer-runtime {command}")
    if command == "push":
        ap.add_argument("dir", type=Path)
    ap.add_argument("uri")
    args = ap.parse_args(argv)
    try:
        if command == "push":
            print(push(args.dir, args.uri))
        else:
            print("\n".join(ls(args.uri)))
    except FetchError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0
