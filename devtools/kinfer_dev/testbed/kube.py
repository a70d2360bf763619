"""A minimal Kubernetes REST client on the standard library, for the test bed's own needs.

Plain dicts in and out, exactly the API's JSON, and a watch that is a generator of events. The
test bed talks to its API server with the admin kubeconfig written by certs.py.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


class KubeError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        conf = yaml.safe_load(kubeconfig.read_text())
        ctx_name = conf["current-context"]
        ctx = next(c["context"] for c in conf["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in conf["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in conf["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        self.ssl = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        # ssl wants files for the client pair; they live only as long as this load.
        with tempfile.TemporaryDirectory() as d:
            crt, key = Path(d) / "c.crt", Path(d) / "c.key"
            crt.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            self.ssl.load_cert_chain(str(crt), str(key))
        # No proxies, whatever the environment says: the API server is on loopback.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.ssl)
        )

    def _open(self, method: str, path: str, body: Obj | None, ctype: str, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            return self.opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise KubeError(e.code, e.read().decode(errors="replace")) from None

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        ctype: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        with self._open(method, path, body, ctype, timeout) as r:
            out: Obj = json.loads(r.read() or b"{}")
            return out

    def get(self, path: str, **params: str) -> Obj:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self.request("GET", path + q)

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch_status(self, path: str, patch: Obj) -> Obj:
        """Strategic merge: conditions merge by type."""
        return self.request("PATCH", path + "/status", patch, "application/strategic-merge-patch+json")

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_s: int = 30) -> Iterator[Obj]:
        """Events ({type, object}) until the server closes the watch after `timeout_s`."""
        q = urllib.parse.urlencode(
            {
                "watch": "1",
                "resourceVersion": resource_version,
                "timeoutSeconds": str(timeout_s),
                "allowWatchBookmarks": "true",
            }
        )
        with self._open("GET", f"{path}?{q}", None, "", timeout_s + 10) as r:
            for line in r:
                if line.strip():
                    yield json.loads(line)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"
