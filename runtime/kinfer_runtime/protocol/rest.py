"""REST front end: a lean HTTP/1.1 server on asyncio + httptools (llhttp).

Thin on purpose: parse, route, call the data plane, encode. Keep-alive and pipelining are
supported (answers go out in request order). Health and metadata are answered inline; only
infer and generation create a task. Streamed answers (server-sent events) go out with chunked
transfer encoding; a client that disconnects mid-stream cancels its generation at once. During
drain every answer carries `Connection: close`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson

from kinfer_runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kinfer_runtime.metrics import RuntimeMetrics
from kinfer_runtime.protocol import codec
from kinfer_runtime.protocol import generate_types as gt
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.errors import (
    InferenceError,
    InvalidInput,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    http_status,
)
from kinfer_runtime.protocol.generative import Generation, GenerativePlane

log = logging.getLogger("kinfer_runtime.rest")

JSON = b"application/json"
SSE = b"text/event-stream"
OCTET = b"application/octet-stream"
_REASONS = {
    100: b"Continue", 200: b"OK", 400: b"Bad Request", 404: b"Not Found", 408: b"Request Timeout",
    405: b"Method Not Allowed", 413: b"Payload Too Large", 414: b"URI Too Long",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
_WANTED_HEADERS = frozenset(
    {
        b"inference-header-content-length",
        b"content-encoding",
        b"expect",
        b"x-request-id",
        b"content-length",
    }
)
# Bounds on a request's head (documented in docs/runtime.md). Past them the answer is 414 / 431
# and the connection closes: nothing of an oversized head is kept.
MAX_URL_BYTES = 8 << 10
MAX_HEADER_BYTES = 64 << 10  # all header names and values together
MAX_HEADER_FIELDS = 100
HEAD_TIMEOUT_S = 30.0  # from a request's first byte to the end of its head, else 408
_LINGER_S = 1.0  # after a refused head: drop what the client still sends, then close
_ids = itertools.count(1)
_PID = os.getpid()


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    header_length: int | None = None
    headers: bytes = b""  # extra header lines, each ending in CRLF
    stream: AsyncGenerator[bytes, None] | None = None  # chunks of a streamed answer (body unused)
    abort: Callable[[], None] | None = None  # the stream never started: release what it holds


def _json(status: int, doc: Any) -> Response:
    return Response(status, orjson.dumps(doc))


def _error(exc: BaseException) -> Response:
    message = exc.message if isinstance(exc, InferenceError) else f"internal error: {exc}"
    return _json(http_status(exc), {"error": message})


def _openai_error(exc: BaseException) -> Response:
    """OpenAI clients read `error.message`; `param` names the field when the message starts
    with it."""
    message = exc.message if isinstance(exc, InferenceError) else f"internal error: {exc}"
    status = http_status(exc)
    param = message.split(":", 1)[0] if ":" in message and " " not in message.split(":", 1)[0] else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})


def _sse(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


_GENERATE_ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


class RestApp:
    """Routes one parsed request. `metrics_only` serves just /metrics (a separate port)."""

    def __init__(
        self, plane: DataPlane | GenerativePlane, metrics: RuntimeMetrics, *, serve_metrics: bool = True,
        metrics_only: bool = False, max_body_bytes: int = 64 << 20,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.plane = plane
        self.metrics = metrics
        self.serve_metrics = serve_metrics or metrics_only
        self.metrics_only = metrics_only
        self.max_body_bytes = max_body_bytes
        self._answer_headers = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in plane.answer_headers()
        )
        self.head_timeout_s = head_timeout_s

    def route_sync(self, method: bytes, path: str) -> Response | None:
        """Everything but infer; None means: this is an infer request, run it async."""
        try:
            if path == "/metrics" and self.serve_metrics:
                _only(method, b"GET")
                return Response(200, self.metrics.render(), METRICS_CONTENT_TYPE.encode())
            if self.metrics_only:
                raise RouteNotFound(f"no route {path}; this port serves /metrics")
            plane = self.plane
            if path in _GENERATE_ROUTES:
                _only(method, b"POST")
                return None
            if path == "/v1/models":
                _only(method, b"GET")
                return _json(200, {"object": "list", "data": [{"id": plane.model_name, "object": "model",
                                                               "owned_by": "kinfer"}]})  # fmt: skip
            if path == "/v2/health/live":
                _only(method, b"GET")
                return _json(200, {"live": True})
            if path == "/v2/health/ready":
                _only(method, b"GET")
                ready = plane.ready()
                return _json(200 if ready else 503, {"ready": ready})
            if path in ("/v2", "/v2/"):
                _only(method, b"GET")
                return _json(200, plane.server_metadata())
            if path == "/v2/repository/index":
                _only(method, b"POST")
                state = "READY" if plane.ready() else "UNAVAILABLE"
                return _json(200, [{"name": plane.model_name, "version": plane.model_version,
                                    "state": state}])  # fmt: skip
            if not path.startswith("/v2/models/"):
                raise RouteNotFound(f"no route {path}")
            parts = path[len("/v2/models/") :].split("/")
            name, version, tail = parts[0], "", parts[1:]
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            if tail in (["infer"], ["generate"], ["generate_stream"]):
                _only(method, b"POST")
                plane.check_model(name, version)
                return None
            if not tail or tail == [""]:
                _only(method, b"GET")
                return _json(200, plane.model_metadata(name, version))
            if tail == ["ready"]:
                _only(method, b"GET")
                ready = plane.model_ready(name, version)
                return _json(200 if ready else 503, {"name": name, "ready": ready})
            if tail == ["config"]:
                _only(method, b"GET")
                return _json(200, plane.model_config(name, version))
            raise RouteNotFound(f"no route {path}")
        except InferenceError as exc:
            return _error(exc)

    async def serve(self, path: str, headers: dict[bytes, bytes], body: bytes) -> Response:
        """What `route_sync` left to run async: infer, or generation."""
        if path in _GENERATE_ROUTES or path.endswith(("/generate", "/generate_stream")):
            resp = await self.generate(path, headers, body)
            resp.headers = self._answer_headers  # who answered, streamed or not
            return resp
        return await self.infer(path, headers, body)

    async def infer(self, path: str, headers: dict[bytes, bytes], body: bytes) -> Response:
        resp = await self._infer(path, headers, body)
        resp.headers = self._answer_headers
        return resp

    async def _infer(self, path: str, headers: dict[bytes, bytes], body: bytes) -> Response:
        started = time.perf_counter()
        self.metrics.request_started()
        code = 500
        request_id = ""
        try:
            parts = path[len("/v2/models/") :].split("/")
            version = parts[2] if parts[1] == "versions" else ""
            body = _decompress(headers.get(b"content-encoding"), body, self.max_body_bytes)
            request = codec.decode_infer_request(body, _header_length(headers), parts[0], version)
            request_id = request.id
            if not isinstance(self.plane, DataPlane):
                raise InvalidInput(
                    f"model '{self.plane.model_name}' is generative: POST /v2/models/{{m}}/generate, "
                    "generate_stream, /v1/completions or /v1/chat/completions"
                )
            response = await self.plane.infer(request)
            payload, header_length = codec.encode_infer_response(response)
            code = 200
            if header_length is None:
                return Response(200, payload)
            return Response(200, payload, OCTET, header_length)
        except InferenceError as exc:
            code = http_status(exc)
            _log_error(code, exc.message, request_id, headers)
            return _error(exc)
        except Exception as exc:  # a bug of ours: answer 500, keep serving, leave a trace
            log.exception("infer failed", extra={"request_id": _rid(request_id, headers)})
            return _error(exc)
        finally:
            self.metrics.request_finished(code, time.perf_counter() - started)

    async def generate(self, path: str, headers: dict[bytes, bytes], body: bytes) -> Response:
        """Completions, chat completions, v2 generate and generate_stream. Every refusal
        happens before the first token; a streamed answer counts as finished when its last
        event is written (or its client goes away)."""
        started = time.perf_counter()
        self.metrics.request_started()
        api = _GENERATE_ROUTES.get(path, "generate")
        errors = _openai_error if api != "generate" else _error
        try:
            plane = self.plane
            if not isinstance(plane, GenerativePlane):
                raise InvalidInput(f"model '{plane.model_name}' is not generative: POST .../infer")
            body = _decompress(headers.get(b"content-encoding"), body, self.max_body_bytes)
            if api == "completions":
                req = gt.parse_completion(body)
            elif api == "chat":
                req = gt.parse_chat(body)
            else:
                parts = path[len("/v2/models/") :].split("/")
                version = parts[2] if parts[1] == "versions" else ""
                req = gt.parse_generate(body, parts[0], version, path.endswith("_stream"))
            gen = plane.start(req)
        except InferenceError as exc:
            code = http_status(exc)
            _log_error(code, exc.message, "", headers)
            self.metrics.request_finished(code, time.perf_counter() - started, timed=False)
            return errors(exc)
        rid = f"cmpl-{_PID}-{next(_ids)}"
        created = int(time.time())
        if req.stream:

            def abort() -> None:  # the client left before the stream began
                gen.cancel()
                self.metrics.request_finished(499, time.perf_counter() - started, timed=False)

            events = self._events(req, gen, rid, created, started)
            return Response(200, b"", SSE, stream=events, abort=abort)
        code = 499  # the client went away before the end
        try:
            text = "".join([piece async for piece in gen.text()])
            code = 200
        except InferenceError as exc:
            code = http_status(exc)
            return errors(exc)
        finally:
            gen.cancel()
            self.metrics.request_finished(code, time.perf_counter() - started, timed=False)
        used = gt.usage(gen.prompt_tokens, gen.completion_tokens)
        if api == "generate":
            ids = gen.token_ids if req.return_token_ids else None
            return _json(200, gt.generate_body(plane.model_name, plane.model_version, text,
                                               gen.finish_reason, used, ids))  # fmt: skip
        return _json(200, gt.openai_body(req, rid, created, text, gen.finish_reason, used))

    async def _events(self, req: gt.GenerateRequest, gen: Generation, rid: str, created: int,
                      started: float) -> AsyncGenerator[bytes, None]:  # fmt: skip
        code = 499  # the client went away before the end
        plane = self.plane
        first = True
        try:
            try:
                async for piece in gen.text():
                    if req.api == "generate":
                        yield _sse(gt.generate_body(plane.model_name, plane.model_version, piece, "", None))
                    else:
                        yield _sse(gt.openai_chunk(req, rid, created, piece, None, first))
                    first = False
            except InferenceError as exc:  # after the 200 went out: an error event ends it
                code = http_status(exc)
                yield _sse({"error": {"message": exc.message, "type": "server_error", "code": code}})
                return
            used = gt.usage(gen.prompt_tokens, gen.completion_tokens)
            if req.api == "generate":
                ids = gen.token_ids if req.return_token_ids else None
                yield _sse(
                    gt.generate_body(plane.model_name, plane.model_version, "", gen.finish_reason, used, ids)
                )
            else:
                last = gt.openai_chunk(req, rid, created, "", gen.finish_reason, first)
                if req.include_usage:
                    last["usage"] = used
                yield _sse(last)
                yield b"data: [DONE]\n\n"
            code = 200
        finally:
            gen.cancel()
            self.metrics.request_finished(code, time.perf_counter() - started, timed=False)


def _only(method: bytes, allowed: bytes) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method.decode(errors='replace')} not allowed here; "
                               f"use {allowed.decode()}")  # fmt: skip


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    raw = headers.get(b"inference-header-content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInput(f"Inference-Header-Content-Length {raw!r} is not a non-negative integer")
    return value


def _decompress(encoding: bytes | None, body: bytes, limit: int) -> bytes:
    if encoding is None or encoding in (b"identity", b""):
        return body
    wbits = {b"gzip": 31, b"deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        raise InvalidInput(f"Content-Encoding {encoding.decode(errors='replace')} not supported")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding.decode()}: {exc}") from None
    if d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    return out


def _rid(request_id: str, headers: dict[bytes, bytes]) -> str:
    if request_id:
        return request_id
    raw = headers.get(b"x-request-id")
    return raw.decode(errors="replace") if raw else f"{_PID}-{next(_ids)}"


def _log_error(code: int, message: str, request_id: str, headers: dict[bytes, bytes]) -> None:
    level = logging.WARNING if code >= 500 else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, message, extra={"request_id": _rid(request_id, headers), "code": code})


class _Refuse(Exception):
    """Raised from a parser callback to answer at once and close (`feed_data` then raises an
    HttpParserCallbackError whose context is this)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Request:
    method: bytes
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


class HttpConnection(asyncio.Protocol):
    """One client connection; requests are answered strictly in order."""

    def __init__(self, server: RestServer) -> None:
        self._server = server
        self._app = server.app
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: collections.deque[_Request] = collections.deque()
        self._running = False
        self._in_message = False
        self._closed = False
        self._url: list[bytes] = []
        self._url_size = 0
        self._in_head = False
        self._head_size = 0  # bytes received while the head was incomplete
        self._header_size = 0  # header names and values so far
        self._header_fields = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._streaming: asyncio.Task[None] | None = None

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._streaming is not None:
            self._streaming.cancel()  # the generation behind the stream stops at the next step
        self._stop_head_timer()
        self._server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        # A chunk that arrives while a head is incomplete is all head (or the head ends in it);
        # counting it before parsing bounds what httptools accumulates of one header line.
        counted = self._in_head
        if counted:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__  # httptools wraps what a callback raised
            if isinstance(refused, _Refuse):
                self._fail(refused.status, refused.message)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")
            return
        if not self._in_head:
            return
        if counted and self._head_size > MAX_URL_BYTES + MAX_HEADER_BYTES:
            self._fail(431, f"request head exceeds {MAX_URL_BYTES + MAX_HEADER_BYTES} bytes")
        elif self._head_timer is None:
            # a head that trickles in (slowloris) is cut off; a whole head in one read never
            # gets here, so the common request pays nothing for this
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._app.head_timeout_s, self._head_too_slow)

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_size = 0
        self._header_size = 0
        self._url = []
        self._url_size = 0
        self._header_fields = 0
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > MAX_URL_BYTES:
            raise _Refuse(414, f"URL exceeds {MAX_URL_BYTES} bytes")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        self._header_size += len(name) + len(value)
        if self._header_fields > MAX_HEADER_FIELDS:
            raise _Refuse(431, f"more than {MAX_HEADER_FIELDS} header fields")
        if self._header_size > MAX_HEADER_BYTES:
            raise _Refuse(431, f"header fields exceed {MAX_HEADER_BYTES} bytes")
        name = name.lower()
        if name in _WANTED_HEADERS:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        length = self._headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self._app.max_body_bytes:
            # said up front: refuse before a byte of the body is read
            raise _Refuse(413, f"body of {int(length)} bytes exceeds {self._app.max_body_bytes} bytes")
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._fail(408, f"request head not complete {self._app.head_timeout_s:g} s after it began")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._app.max_body_bytes:
            self._too_large = True
            self._body = []
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        url = b"".join(self._url).decode("latin-1")
        path = url.split("?", 1)[0]
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        req = _Request(self._parser.get_method(), path, self._headers, body, self._parser.should_keep_alive())
        if self._too_large:
            req.path = ""  # answered as 413 by _serve_next
        self._pending.append(req)
        if not self._running:
            self._serve_next()
        elif len(self._pending) > 64 and self._transport:
            self._transport.pause_reading()  # a client pipelining without reading answers

    # ---- serving ----

    def _serve_next(self) -> None:
        while self._pending and not self._closed:
            req = self._pending.popleft()
            if not req.path:
                resp = _error(PayloadTooLarge(f"body exceeds {self._app.max_body_bytes} bytes"))
            else:
                maybe = self._app.route_sync(req.method, req.path)
                if maybe is None:
                    self._running = True
                    task = asyncio.get_running_loop().create_task(self._serve_async(req))
                    self._server.tasks.add(task)
                    task.add_done_callback(self._server.tasks.discard)
                    return
                resp = maybe
            if not self._write(resp, req.keep_alive):
                return
        if self._transport and not self._closed:
            self._transport.resume_reading()

    async def _serve_async(self, req: _Request) -> None:
        resp = await self._app.serve(req.path, req.headers, req.body)
        if resp.stream is not None:
            ok = await self._write_stream(resp, req.keep_alive)
        else:
            ok = self._write(resp, req.keep_alive)
        self._running = False
        if ok:
            self._serve_next()

    async def _write_stream(self, resp: Response, keep_alive: bool) -> bool:
        """Send a streamed answer with chunked encoding; False when the connection closed."""
        assert resp.stream is not None
        transport = self._transport
        if transport is None or self._closed:
            if resp.abort is not None:
                resp.abort()  # an unstarted generator's cleanup would never run
            return False
        keep = keep_alive and not self._server.closing
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n%s%s\r\n"
            % (resp.status, _REASONS.get(resp.status, b"Status"), resp.content_type, resp.headers,
               b"" if keep else b"connection: close\r\n")
        )  # fmt: skip
        self._streaming = asyncio.current_task()
        try:
            async for piece in resp.stream:
                if self._closed:
                    break
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        except asyncio.CancelledError:
            return False  # the client went away; the generator's cleanup has run
        finally:
            self._streaming = None
            await resp.stream.aclose()
        if self._closed:
            return False
        transport.write(b"0\r\n\r\n")
        if not keep:
            self.close()
            return False
        return True

    def _write(self, resp: Response, keep_alive: bool) -> bool:
        """Send one answer; False when the connection is closed after it."""
        transport = self._transport
        if transport is None or self._closed:
            return False
        keep = keep_alive and not self._server.closing
        head = [
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            % (resp.status, _REASONS.get(resp.status, b"Status"), resp.content_type, len(resp.body))
        ]
        if resp.header_length is not None:
            head.append(b"inference-header-content-length: %d\r\n" % resp.header_length)
        if resp.headers:
            head.append(resp.headers)
        if not keep:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if len(resp.body) < 65536:
            head.append(resp.body)
            transport.write(b"".join(head))
        else:
            transport.writelines([b"".join(head), resp.body])
        if not keep:
            self.close()
            return False
        return True

    def _fail(self, status: int, message: str) -> None:
        """Answer, stop serving this connection, and close it.

        What the client still sends is read and dropped for a moment (the parser is not fed):
        closing a socket with unread data resets it, and the client would lose the answer.
        """
        self._pending.clear()
        transport = self._transport
        if transport is None or self._closed:
            return
        self._closed = True
        body = orjson.dumps({"error": message})
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    @property
    def idle(self) -> bool:
        return not (self._running or self._pending or self._in_message)

    def close(self) -> None:
        if self._transport and not self._closed:
            self._closed = True
            self._transport.close()

    def close_if_idle(self) -> None:
        if self.idle:
            self.close()


class RestServer:
    def __init__(self, app: RestApp) -> None:
        self.app = app
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True, backlog=2048
        )
        return int(self._server.sockets[0].getsockname()[1])

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._all_closed.set()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, linger_s: float, timeout_s: float) -> None:
        """Stop listening, answer what is in flight with `Connection: close`, then close.

        An idle keep-alive connection gets `linger_s` to send one last request (a client may
        have one on the wire already) before it is closed.
        """
        self.closing = True
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        for conn in list(self.connections):
            loop.call_later(linger_s, conn.close_if_idle)
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except TimeoutError:
                log.warning("drain timed out; closing %d connections", len(self.connections))
        for conn in list(self.connections):
            conn.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
