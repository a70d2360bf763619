"""The one error a download ends with: a cause a person can act on, and the URI it concerns."""

from __future__ import annotations

# Causes, as the InferenceService condition names them (operator status.py reads them back).
FORBIDDEN = "Forbidden"  # 401/403: wrong or missing credentials
NOT_FOUND = "NotFound"  # no such bucket, object, repository, tag or file
CHECKSUM = "ChecksumMismatch"  # the bytes are not what the digest says
NO_SPACE = "NoSpace"  # the model volume or the cache is full
UNREACHABLE = "Unreachable"  # connection refused, DNS, TLS, timeouts, 5xx after retries
INVALID = "InvalidModel"  # a bad archive, an empty prefix, an unsupported layer


class FetchError(RuntimeError):
    """Why `uri` could not be fetched. `transient` errors are retried inside the process first."""

    def __init__(self, cause: str, uri: str, detail: str, transient: bool = False) -> None:
        super().__init__(f"{cause}: {uri}: {detail}")
        self.cause, self.uri, self.detail, self.transient = cause, uri, detail, transient


def from_http_status(status: int, uri: str, detail: str) -> FetchError:
    """The cause for an HTTP status from a store, a registry or a web server."""
    if status in (401, 403):
        return FetchError(FORBIDDEN, uri, f"HTTP {status} (check the credentials): {detail}")
    if status == 404:
        return FetchError(NOT_FOUND, uri, f"HTTP 404: {detail}")
    if status == 416:
        return FetchError(INVALID, uri, f"HTTP 416 (the object changed while it was read): {detail}")
    transient = status >= 500 or status in (408, 429)
    return FetchError(UNREACHABLE, uri, f"HTTP {status}: {detail}", transient=transient)
