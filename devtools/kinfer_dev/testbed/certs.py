"""Certificates and kubeconfigs for the test bed, made with the `openssl` CLI.

One CA signs the API server's serving cert and the admin client cert (O=system:masters); a
separate RSA pair signs service-account tokens. Go wants SANs (CN is ignored) and SHA-256.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

SERVER_SANS = (
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _sign(pki: Path, name: str, subject: str, ext: list[str]) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=pki,
    )
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=pki,
    )


def make_pki(pki: Path) -> None:
    """Create ca, apiserver (serving), admin (client), front-proxy (client) and sa key pairs.
    Idempotent: an existing CA is kept so a restarted test bed keeps its kubeconfig valid."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "sa.pub").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-sha256",
        "-subj",
        "/CN=kinfer-testbed-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )
    usage = "keyUsage=critical,digitalSignature,keyEncipherment"
    _sign(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        [f"subjectAltName={SERVER_SANS}", usage, "extendedKeyUsage=serverAuth"],
    )
    _sign(pki, "admin", "/O=system:masters/CN=kinfer-admin", [usage, "extendedKeyUsage=clientAuth"])
    _sign(pki, "front-proxy", "/CN=front-proxy-client", [usage, "extendedKeyUsage=clientAuth"])
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, pki: Path, server: str) -> None:
    """A self-contained admin kubeconfig (certs embedded), readable by kubectl and the Python
    client alike."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kinfer-testbed",
                "cluster": {"server": server, "certificate-authority-data": _b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": _b64(pki / "admin.crt"),
                    "client-key-data": _b64(pki / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": "kinfer-testbed", "context": {"cluster": "kinfer-testbed", "user": "admin"}}],
        "current-context": "kinfer-testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
