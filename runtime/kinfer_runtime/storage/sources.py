"""Where the bytes come from: S3-compatible stores and HTTPS servers, read by byte range.

A source lists the objects that make up the model (`Remote`: a path inside the model directory, a
size, a version tag) and reads any byte range of one; transfer.py does the parallel reading. OCI
registries are in oci.py (layers are read whole, one per file, through the oras client).

S3 goes through botocore: it signs (SigV4), and its credential chain is what "the pod's own
identity" means on a cloud (web-identity tokens, container and instance metadata, the AWS_*
environment a Secret provides). Endpoint and region come from AWS_ENDPOINT_URL and AWS_REGION,
which botocore reads itself.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kinfer_runtime.storage import errors
from kinfer_runtime.storage.errors import FetchError

CHUNK = 256 << 10  # bytes read from a response at a time (as s3transfer reads)


@dataclass(frozen=True)
class Remote:
    """One object of the model."""

    path: str  # relative path inside the model directory
    size: int
    version: str  # ETag (S3, HTTPS) or digest (OCI): changes when the content changes
    sha256: str = ""  # expected digest, when the source states one
    key: str = ""  # the source's own name for it (S3 key)


class Source(Protocol):
    uri: str
    ranged: bool  # whether read() may be asked for parts

    def objects(self) -> list[Remote]: ...

    def read(self, obj: Remote, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of obj."""
        ...


# --- S3 ---------------------------------------------------------------------------------------


def s3_error(uri: str, exc: BaseException) -> FetchError:
    import botocore.exceptions as bex

    if isinstance(exc, bex.NoCredentialsError):
        return FetchError(errors.FORBIDDEN, uri, "no credentials: set spec.model.secretName to a Secret "
                          "with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")  # fmt: skip
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        text = f"{code} {err.get('Message', '')}".strip()
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            status = 403
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            status = 404
        return errors.from_http_status(status, uri, text or str(exc))
    if isinstance(exc, bex.BotoCoreError):  # connection refused, DNS, timeouts, bad endpoint
        return FetchError(errors.UNREACHABLE, uri, str(exc), transient=True)
    raise exc


class S3Source:
    ranged = True

    def __init__(self, uri: str, workers: int) -> None:
        import boto3
        from botocore.config import Config

        self.uri = uri
        rest = uri.removeprefix("s3://")
        self.bucket, _, self.key = rest.partition("/")
        config = Config(
            max_pool_connections=max(10, workers),
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": os.environ.get("KINFER_S3_ADDRESSING", "path")},  # MinIO's
        )
        session = boto3.session.Session()
        self.client: Any = session.client("s3", config=config)

    def objects(self) -> list[Remote]:
        try:
            if not self.key.endswith("/"):
                try:
                    head = self.client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
                    return [self._remote(os.path.basename(self.key), self.key, head["ContentLength"], head)]
                except Exception as exc:
                    if s3_error(self.uri, exc).cause != errors.NOT_FOUND:
                        raise
            prefix = self.key if self.key.endswith("/") else self.key + "/"
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    rel = item["Key"][len(prefix) :]
                    if rel and not rel.endswith("/"):
                        # A listing carries no checksums; a HEAD per file does (few files).
                        head = self.client.head_object(
                            Bucket=self.bucket, Key=item["Key"], ChecksumMode="ENABLED"
                        )
                        found.append(self._remote(rel, item["Key"], item["Size"], head))
        except FetchError:
            raise
        except Exception as exc:
            raise s3_error(self.uri, exc) from exc
        if not found:
            raise FetchError(errors.NOT_FOUND, self.uri, "no object with this key and none under this prefix")
        return found

    @staticmethod
    def _remote(rel: str, key: str, size: int, meta: dict[str, Any]) -> Remote:
        checksum = str(meta.get("ChecksumSHA256") or "")
        # A composite checksum of a multipart upload ("...-N") is not the object's digest.
        sha = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else ""
        return Remote(path=rel, size=int(size), version=str(meta.get("ETag", "")), sha256=sha, key=key)

    def read(self, obj: Remote, start: int, end: int) -> Iterator[bytes]:
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=obj.key, Range=f"bytes={start}-{end - 1}", IfMatch=obj.version
            )
            body = answer["Body"]
            while chunk := body.read(CHUNK):
                yield chunk
        except Exception as exc:
            raise s3_error(self.uri, exc) from exc


# --- HTTPS ------------------------------------------------------------------------------------


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("KINFER_STORAGE_TOKEN", "")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("KINFER_STORAGE_USERNAME", "")
    if user:
        pair = f"{user}:{os.environ.get('KINFER_STORAGE_PASSWORD', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


class HttpsSource:
    """One file over HTTPS (TLS verified against the system CAs, or SSL_CERT_FILE)."""

    def __init__(self, uri: str, sha256: str = "") -> None:
        self.uri, self.sha256 = uri, sha256
        self.url = urllib.parse.urlsplit(uri)
        self.ranged = False
        self.context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)

    def _request(self, method: str, headers: dict[str, str]) -> tuple[http.client.HTTPSConnection, Any]:
        conn = http.client.HTTPSConnection(self.url.netloc, timeout=60, context=self.context)
        target = self.url.path or "/"
        if self.url.query:
            target += "?" + self.url.query
        try:
            conn.request(method, target, headers={**_auth_headers(), **headers})
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise FetchError(
                errors.UNREACHABLE, self.uri, str(exc) or type(exc).__name__, transient=True
            ) from exc

    def objects(self) -> list[Remote]:
        conn, answer = self._request("HEAD", {})
        conn.close()
        if answer.status >= 400:
            raise errors.from_http_status(answer.status, self.uri, answer.reason)
        length = answer.getheader("Content-Length")
        if length is None:
            raise FetchError(errors.INVALID, self.uri, "the server sends no Content-Length")
        self.ranged = answer.getheader("Accept-Ranges", "") == "bytes"
        etag = answer.getheader("ETag", "")
        version = etag if etag and not etag.startswith("W/") else ""
        name = os.path.basename(urllib.parse.unquote(self.url.path)) or "model"
        return [Remote(path=name, size=int(length), version=version, sha256=self.sha256)]

    def read(self, obj: Remote, start: int, end: int) -> Iterator[bytes]:
        whole = start == 0 and end == obj.size
        headers = {} if whole and not self.ranged else {"Range": f"bytes={start}-{end - 1}"}
        if obj.version and not whole:
            headers["If-Range"] = obj.version
        conn, answer = self._request("GET", headers)
        try:
            if answer.status >= 400:
                raise errors.from_http_status(answer.status, self.uri, answer.reason)
            if "Range" in headers and answer.status != 206:
                raise FetchError(
                    errors.INVALID, self.uri, "the file changed while it was read", transient=True
                )
            while chunk := answer.read(CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(
                errors.UNREACHABLE, self.uri, str(exc) or type(exc).__name__, transient=True
            ) from exc
        finally:
            conn.close()


def describe(objects: list[Remote]) -> str:
    """What identifies the content of these objects (a cache key's input)."""
    return json.dumps(sorted((o.path, o.size, o.version, o.sha256) for o in objects))
