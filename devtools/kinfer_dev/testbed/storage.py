"""The test bed's model stores: MinIO (S3-compatible, over TLS with the bed's CA, so it also
serves https:// models from a public-read bucket) and a distribution registry (OCI, plain HTTP on
loopback). Both built from Go modules (install.storage()), both on 127.0.0.1; the launcher relays
their ports into pods that download a model (launcher.py), so the same endpoint works on the host
and in a pod.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kinfer_dev.testbed import install

# Root credentials of the bed's MinIO (loopback only; printed by `kinfer dev env`).
ACCESS_KEY = "kinfer-testbed"
SECRET_KEY = "kinfer-testbed-secret"
REGION = "us-east-1"
PORTS = ("minio", "minio-console", "registry")


def installed() -> bool:
    p = install.paths()
    return p.minio.is_file() and p.registry.is_file()


def minio_argv(state: Path, ports: dict[str, int]) -> list[str]:
    certs = state / "minio" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    # The API server's serving cert: SANs 127.0.0.1 and localhost, signed by the bed's CA.
    shutil.copyfile(state / "pki" / "apiserver.crt", certs / "public.crt")
    shutil.copyfile(state / "pki" / "apiserver.key", certs / "private.key")
    return [
        str(install.paths().minio),
        "server",
        f"--address=127.0.0.1:{ports['minio']}",
        f"--console-address=127.0.0.1:{ports['minio-console']}",
        f"--certs-dir={certs}",
        "--quiet",
        str(state / "minio" / "data"),
    ]


def minio_env() -> dict[str, str]:
    return {
        "MINIO_ROOT_USER": ACCESS_KEY,
        "MINIO_ROOT_PASSWORD": SECRET_KEY,
        "MINIO_REGION": REGION,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }


def registry_argv(state: Path, ports: dict[str, int]) -> list[str]:
    config = state / "registry" / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {state / 'registry' / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{ports['registry']}'}}\n"
    )
    return [str(install.paths().registry), "serve", str(config)]


def env_lines(state: Path, ports: dict[str, int]) -> str:
    """What `kinfer dev env` prints for the stores (boto3 and kinfer read the AWS_* names)."""
    if "minio" not in ports:
        return ""
    endpoint = f"https://127.0.0.1:{ports['minio']}"
    return (
        f"export KINFER_S3_ENDPOINT={endpoint}\n"
        f"export AWS_ENDPOINT_URL={endpoint}\n"
        f"export AWS_ACCESS_KEY_ID={ACCESS_KEY}\n"
        f"export AWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
        f"export AWS_REGION={REGION}\n"
        f"export AWS_CA_BUNDLE={state / 'pki' / 'ca.crt'}\n"
        f"export KINFER_REGISTRY=127.0.0.1:{ports['registry']}\n"
    )
