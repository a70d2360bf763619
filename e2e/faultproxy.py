"""A proxy in front of the real API server that fails a chosen fraction of calls.

The operator under test gets a kubeconfig whose server is this proxy (plain HTTP on loopback);
the proxy forwards every request over TLS to the API server and streams the answer back, so
watches work. Calls that match the rule (method and a path pattern) fail with the given status
(500 by default, or 429 with Retry-After) at the given rate. Watches are never failed mid-stream.

    with FaultProxy(admin_kubeconfig) as proxy:
        kubeconfig = proxy.kubeconfig(operator_kubeconfig, out)
        proxy.fail(rate=0.3)                            # 30 % of all calls
        proxy.fail(rate=1.0, methods={"PATCH"}, path=r"/deployments/")
        proxy.fail(rate=0)                              # healthy again
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import yaml

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Rule:
    rate: float = 0.0
    methods: frozenset[str] = frozenset()  # empty: every method
    path: re.Pattern[str] = re.compile("")
    status: int = 500

    def hits(self, method: str, path: str, draw: float) -> bool:
        return (
            draw < self.rate
            and (not self.methods or method in self.methods)
            and bool(self.path.search(path))
            and "watch=" not in path  # a watch that never starts is a different test
        )


@dataclass
class FaultProxy:
    admin_kubeconfig: Path
    seed: int = 0
    rule: Rule = field(default_factory=Rule)
    calls: int = 0
    failed: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        conf = yaml.safe_load(self.admin_kubeconfig.read_text())
        cluster = conf["clusters"][0]["cluster"]
        upstream = urlsplit(cluster["server"])
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 443)
        self.tls = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self.rng = random.Random(self.seed)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, name="faultproxy", daemon=True).start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, rate: float, methods: set[str] | None = None, path: str = "", status: int = 500) -> None:
        with self._lock:
            self.rule = Rule(rate, frozenset(methods or ()), re.compile(path), status)

    def counts(self) -> tuple[int, int]:
        """(calls forwarded or failed, calls failed) so far."""
        with self._lock:
            return self.calls, self.failed

    def since(self, mark: int) -> list[tuple[str, str]]:
        """The calls after the first `mark` (mark = len(proxy.seen) taken earlier)."""
        with self._lock:
            return self.seen[mark:]

    def decide(self, method: str, path: str) -> int | None:
        """The status to fail this call with, or None to forward it."""
        with self._lock:
            self.calls += 1
            self.seen.append((method, path))
            if self.rule.hits(method, path, self.rng.random()):
                self.failed += 1
                self.seen[-1] = (method + " FAILED", path)
                return self.rule.status
        return None

    def kubeconfig(self, operator_kubeconfig: Path, out: Path) -> Path:
        """The operator's kubeconfig (its token), with this proxy as the server."""
        conf: dict[str, Any] = yaml.safe_load(operator_kubeconfig.read_text())
        conf["clusters"][0]["cluster"] = {"server": self.url}
        out.write_text(yaml.safe_dump(conf))
        out.chmod(0o600)
        return out


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            status = proxy.decide(self.command, self.path)
            if status is not None:
                self._refuse(status)
                return
            upstream = http.client.HTTPSConnection(*proxy.upstream, context=proxy.tls, timeout=330)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := answer.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (OSError, http.client.HTTPException):  # either side went away mid-answer
                self.close_connection = True
            finally:
                upstream.close()

        def _refuse(self, status: int) -> None:
            reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(status, "")
            body = json.dumps(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": "injected by the e2e fault proxy",
                    "reason": reason,
                    "code": status,
                }
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    return Handler
