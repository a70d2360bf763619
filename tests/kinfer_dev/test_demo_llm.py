"""The demo's `--llm` step without a test bed: the manifest it applies, and the streamed answer
printed piece by piece from a fake server-sent-events answer (e2e/test_demo.py runs it for real)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kinfer.api import v1alpha1 as api
from kinfer_dev import demo


def test_the_llm_example_is_applied_in_the_demo_namespace_with_a_local_model(tmp_path: Path) -> None:
    doc = demo.llm_example(tmp_path / "chat-lm")
    assert doc["metadata"] == {"name": "chat", "namespace": demo.NAMESPACE}
    spec = api.validate_spec(doc["spec"])
    assert spec.model.format == "generative" and spec.model.uri == f"file://{tmp_path}/chat-lm"


PIECES = ["Hel", "lo", " there"]


class _SSE(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.seen = (
            self.headers["Host"],
            json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
        )  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, piece in enumerate(PIECES):
            delta = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
            self.wfile.write(
                f"data: {json.dumps({'choices': [{'delta': delta, 'finish_reason': None}]})}\n\n".encode()
            )
        last = {
            "choices": [{"delta": {"content": ""}, "finish_reason": "length"}],
            "usage": {"completion_tokens": 3},
        }
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sse_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_streamed_answer_is_echoed_piece_by_piece(sse_server: ThreadingHTTPServer) -> None:
    lines: list[str] = []
    url = f"http://127.0.0.1:{sse_server.server_address[1]}"
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    status, pieces, text = demo._stream_chat(url, "chat.kinfer-demo.kinfer.local", body, lines.append)
    assert (status, pieces, text) == (200, 3, repr("Hello there"))
    assert sse_server.seen == ("chat.kinfer-demo.kinfer.local", body)  # type: ignore[attr-defined]
    assert lines[0].startswith("200 text/event-stream")
    assert [line.split(" s  ", 1)[1] for line in lines[1:]] == [
        "'Hel'", "'lo'", "' there'", "finish_reason length, 3 tokens", "[DONE]"
    ]  # fmt: skip
