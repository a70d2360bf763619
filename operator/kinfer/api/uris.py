"""Model URIs: where spec.model.uri may point, as CEL rules with Python twins (rules.Rule).

One rule says which schemes exist; one rule per scheme says its shape, so a mistake is named in
that scheme's words. The expressions use only constructs on which Go's RE2 and Python's re agree.

    pvc://CLAIM[/PATH]                      a PersistentVolumeClaim, mounted read-only
    file:///PATH                            a path in the image or on the node (development)
    s3://BUCKET/KEY-OR-PREFIX               any S3-compatible store; endpoint and keys from a Secret
    oci://REGISTRY/REPOSITORY:TAG|@sha256:D a model directory stored as an OCI artifact
    https://HOST[:PORT]/PATH                a file or archive, optionally checked against sha256
"""

from __future__ import annotations

import re

from kinfer.api import formats
from kinfer.api.rules import Rule

SCHEMES = ("pvc://", "file://", "s3://", "oci://", "https://")
# Schemes the storage initializer downloads (the others are mounted or read in place).
FETCHED = ("s3://", "oci://", "https://")

MAX = 4096

PVC = rf"pvc://{formats.DNS_SUBDOMAIN}(/[^/]+)*/?"
FILE = r"file:///.+"
# S3 bucket names: 3-63 characters, lower-case letters, digits, '.' and '-', alphanumeric ends.
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3 = rf"s3://{BUCKET}(/[^/]+)+/?"
# A host name or IPv4 address with an optional port (registries and web servers).
HOST = r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?"
# The distribution reference grammar: lower-case path components joined by '/'.
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = rf"{_COMPONENT}(/{_COMPONENT})*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST = r"sha256:[a-f0-9]{64}"
OCI = rf"oci://{HOST}/{REPOSITORY}(:{TAG}|@{DIGEST}|:{TAG}@{DIGEST})"
HTTPS = rf"https://{HOST}(/[^\s#]*)?"
SHA256 = r"([a-f0-9]{64})?"


def _shape(scheme: str, pattern: str, message: str) -> Rule:
    compiled = re.compile(pattern)
    return Rule(
        cel=f"!self.startsWith('{scheme}') || {formats.matches('self', pattern)}",
        message=message,
        holds=lambda uri: not uri.startswith(scheme) or compiled.fullmatch(uri) is not None,
    )


def _claim_length(uri: str) -> int:
    return len(uri.removeprefix("pvc://").split("/", 1)[0])


RULES = (
    Rule(
        cel=" || ".join(f"self.startsWith('{s}')" for s in SCHEMES),
        message="must start with pvc://, file:///, s3://, oci:// or https://",
        holds=lambda uri: uri.startswith(SCHEMES),
    ),
    _shape("pvc://", PVC, "must be pvc://CLAIM/PATH with CLAIM a PersistentVolumeClaim name"),
    _shape("file://", FILE, "must be file:///PATH (an absolute path)"),
    _shape(
        "s3://",
        S3,
        "must be s3://BUCKET/PATH with BUCKET an S3 bucket name (3-63 lower-case letters, digits, "
        "'.' and '-') and PATH a key or a prefix ending in /",
    ),
    _shape(
        "oci://",
        OCI,
        "must be oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST "
        "(REPOSITORY in lower case)",
    ),
    _shape("https://", HTTPS, "must be https://HOST[:PORT]/PATH, without spaces or a #fragment"),
    Rule(
        cel="!self.startsWith('pvc://') || "
        "(self.indexOf('/', 6) == -1 ? size(self) : self.indexOf('/', 6)) - 6 <= 253",
        message="the claim name in pvc://CLAIM/PATH must be at most 253 characters",
        holds=lambda uri: not uri.startswith("pvc://") or _claim_length(uri) <= 253,
    ),
)

_SHA256 = re.compile(SHA256)
SHA256_RULE = Rule(
    cel=formats.matches("self", SHA256),
    message="must be empty or 64 lower-case hexadecimal digits (a SHA-256 digest)",
    holds=lambda s: _SHA256.fullmatch(s) is not None,
)

MODEL_RULES = (
    Rule(
        cel="self.sha256 == '' || self.uri.startsWith('https://')",
        message="sha256 applies to https:// models only (an oci:// URI carries its digest)",
        holds=lambda m: m["sha256"] == "" or m["uri"].startswith("https://"),
        field="sha256",
    ),
    Rule(
        cel="self.secretName == '' || " + " || ".join(f"self.uri.startsWith('{s}')" for s in FETCHED),
        message="secretName applies to s3://, oci:// and https:// models",
        holds=lambda m: m["secretName"] == "" or m["uri"].startswith(FETCHED),
        field="secretName",
    ),
)


def fetched(uri: str) -> bool:
    """Whether the storage initializer downloads this model into the pod."""
    return uri.startswith(FETCHED)
