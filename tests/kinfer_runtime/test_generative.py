"""Generative models on a tiny random GPT-2 the tests build: the decoder against transformers'
own generate, and a real runtime process served to the unmodified OpenAI client."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinfer_runtime.model import ModelConfigError, generative_signature
from kinfer_runtime.scheduler import SamplingParams
from tests.kinfer_runtime import models
from tests.kinfer_runtime.server_proc import Server, http_get, metric, start_server

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-lm")


@pytest.fixture(scope="module")
def lm(lm_dir: Path) -> Any:
    from kinfer_runtime.torch_model import CausalLM

    sig = generative_signature(str(lm_dir))
    assert sig is not None
    return CausalLM(sig, "cpu")


def reference(lm_dir: Path, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy generate on the same weights, one prompt, no padding."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir), local_files_only=True).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    new = out[0, len(prompt) :].tolist()
    eos = model.config.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def test_signature_limits_are_checked(tmp_path: Path, lm_dir: Path) -> None:
    sig = generative_signature(str(lm_dir))
    assert sig is not None and (sig.context_length, sig.max_new_tokens) == (64, 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "signature.json").write_text(
        json.dumps({"kind": "generative", "context_length": 8, "max_new_tokens": 8})
    )
    with pytest.raises(ModelConfigError, match="'max_new_tokens' must be less than 'context_length'"):
        generative_signature(str(bad))


def test_greedy_batched_decoding_equals_transformers_generate(lm: Any, lm_dir: Path) -> None:
    """Four prompts of different lengths join a running batch at different steps; one leaves
    early. Every greedy continuation equals transformers' generate on that prompt alone."""
    texts = ["the quick brown fox", "hello", "kubernetes schedules pods onto", "a model server streams"]
    prompts = [lm.encode(t) for t in texts]
    n = 12
    greedy = SamplingParams(max_tokens=n, temperature=0.0)
    out: dict[int, list[int]] = {i: [] for i in range(4)}
    joins = {0: [0], 3: [1, 2], 5: [3]}  # step -> sequences admitted then
    running: list[int] = []
    for step in range(40):
        admit = [(i, prompts[i], greedy) for i in joins.get(step, [])]
        evict = [i for i in running if len(out[i]) >= (4 if i == 1 else n) or lm.eos_token_id in out[i]]
        running = [i for i in running if i not in evict]
        tokens = lm.step(evict, admit, list(running))
        for i, t in tokens.items():
            out[i].append(t)
        running += [a[0] for a in admit]
        if not running and step > 5:
            break
    for i, prompt in enumerate(prompts):
        want = reference(lm_dir, prompt, n)
        got = out[i][: len(want)] if i != 1 else out[i][:4]
        assert got == (want if i != 1 else want[:4]), texts[i]
    assert lm.step(list(lm.rows), [], []) == {} and lm.rows == []


def test_seeded_sampling_repeats_and_top_p_near_zero_is_greedy(lm: Any) -> None:
    prompt = lm.encode("hello world")
    sampled = SamplingParams(max_tokens=8, temperature=1.0, seed=7)

    def run(params: SamplingParams) -> list[int]:
        got = [lm.step([], [(100, prompt, params)], [])[100]]
        for _ in range(7):
            got.append(lm.step([], [], [100])[100])
        lm.step([100], [], [])
        return got

    assert run(sampled) == run(sampled)
    greedy = run(SamplingParams(max_tokens=8, temperature=0.0))
    assert run(SamplingParams(max_tokens=8, temperature=1.0, top_p=1e-9, seed=1)) == greedy


# ---- a real runtime process ----


@pytest.fixture(scope="module")
def lm_server(lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # importing transformers takes a while on a busy machine: a longer start deadline
    server = start_server(lm_dir, tmp_path_factory.mktemp("lmlogs"), "--max-sequences", "4",
                          "--max-queue", "4", timeout=300)  # fmt: skip
    yield server
    assert server.stop() == 0, server.log_path.read_text()


def post(server: Server, path: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, data, {"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("content-type", "")
        return resp.status, json.loads(raw) if "json" in ctype else raw.decode()
    finally:
        conn.close()


def test_openai_client_streams_completions_and_chat(lm_server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://{lm_server.http}/v1", api_key="unused", max_retries=0)
    chunks = list(client.completions.create(model="tiny-lm", prompt="the quick brown fox", max_tokens=10,
                                            temperature=0, stream=True))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert 1 <= chunks[-1].usage.completion_tokens <= 10
    whole = client.completions.create(
        model="tiny-lm", prompt="the quick brown fox", max_tokens=10, temperature=0
    )
    assert whole.choices[0].text == text and whole.usage is not None
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens

    stream = client.chat.completions.create(
        model="tiny-lm", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True, seed=3
    )
    got = list(stream)
    assert got[0].choices[0].delta.role == "assistant"
    assert got[-1].usage is not None and got[-1].usage.completion_tokens <= 6
    assert got[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_generation_answers_say_who_answered(lm_server: Server, stream: bool) -> None:
    host, port = lm_server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        body = {"model": "tiny-lm", "prompt": "hi", "max_tokens": 2, "stream": stream}
        conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("kinfer-model-version") == "1"
    finally:
        conn.close()


def test_v2_generate_and_generate_stream(lm_server: Server) -> None:
    body = {"text_input": "hello world", "parameters": {"max_tokens": 8, "temperature": 0}}
    status, doc = post(lm_server, "/v2/models/tiny-lm/generate", body)
    assert status == 200 and doc["model_name"] == "tiny-lm" and doc["finish_reason"] in ("length", "stop")
    assert "token_ids" not in doc
    with_ids = {**body, "parameters": {**body["parameters"], "return_token_ids": True}}
    status, ids_doc = post(lm_server, "/v2/models/tiny-lm/generate", with_ids)
    assert status == 200 and ids_doc["text_output"] == doc["text_output"]
    assert len(ids_doc["token_ids"]) == doc["usage"]["completion_tokens"]
    status, raw = post(lm_server, "/v2/models/tiny-lm/generate_stream", body)
    assert status == 200
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == doc["text_output"]
    assert events[-1]["usage"]["completion_tokens"] == doc["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/completions", {"model": "tiny-lm", "prompt": "fox " * 80}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny-lm", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": "tiny-lm", "prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
        ("/v1/completions", {"model": "gpt-9", "prompt": "hi"}, 404, "model"),
        ("/v1/chat/completions", {"model": "tiny-lm", "messages": [{"role": "user"}]}, 400,
         "messages[0].content"),
        ("/v1/chat/completions", {"model": "tiny-lm", "messages": "hi"}, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny-lm", "messages": [{"role": "bot", "content": "x"}]}, 400,
         "messages[0].role"),
        ("/v1/completions", b"{not json", 400, "body"),
        ("/v1/completions", {"model": "tiny-lm", "prompt": "hi", "temperature": 9}, 400, "temperature"),
        ("/v2/models/tiny-lm/generate", {"parameters": {}}, 400, "text_input"),
        ("/v2/models/other/generate", {"text_input": "hi"}, 404, "other"),
        ("/v2/models/tiny-lm/generate", {"text_input": "hi", "parameters": {"return_token_ids": 1}}, 400,
         "return_token_ids"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_4xx_naming_the_field(lm_server: Server, path: str, body: Any, status: int,
                                               field: str) -> None:  # fmt: skip
    got, doc = post(lm_server, path, body)
    assert got == status, doc
    message = doc["error"]["message"] if isinstance(doc["error"], dict) else doc["error"]
    assert field in message


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Sequences of 1,000 tokens: long enough to hold every slot while the test looks."""
    root = tmp_path_factory.mktemp("lm-long")
    models.make_tiny_lm(root / "long", context_length=1100, max_new_tokens=1000)
    server = start_server(root / "long", root, "--max-sequences", "4", "--max-queue", "4", timeout=300)
    yield server
    assert server.stop() == 0, server.log_path.read_text()


def _open_stream(server: Server, max_tokens: int) -> socket.socket:
    host, port = server.http.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps({"model": "long", "prompt": "hello", "max_tokens": max_tokens, "stream": True,
                       "temperature": 0.5, "ignore_eos": True})  # fmt: skip
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
    return sock


def _gauge(server: Server, name: str, **labels: str) -> float:
    return metric(http_get(server, "/metrics")[1].decode(), name, **labels)


def _wait(server: Server, name: str, want: float, timeout: float, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while (got := _gauge(server, name, **labels)) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    return got


def test_disconnected_streams_free_their_slots_and_overload_is_429(long_server: Server) -> None:
    before = _gauge(long_server, "kinfer_generated_tokens_total")
    socks = [_open_stream(long_server, 1000) for _ in range(4)]  # fill every slot
    for s in socks:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    # admitted at the next step: until then they wait, and a fifth would be refused
    assert _wait(long_server, "kinfer_sequences", 4, 10, state="running") == 4
    waiting = [_open_stream(long_server, 1000) for _ in range(4)]  # fill the waiting queue
    assert _wait(long_server, "kinfer_sequences", 4, 10, state="waiting") == 4
    status, doc = post(long_server, "/v1/completions", {"model": "long", "prompt": "hi"})
    assert status == 429, doc
    assert "retry later" in doc["error"]["message"]
    for s in waiting:  # waiting clients leave: they never take a slot
        s.close()
    assert _wait(long_server, "kinfer_sequences", 0, 10, state="waiting") == 0
    for s in socks:  # running clients leave mid-stream
        s.close()
    assert _wait(long_server, "kinfer_sequences", 0, 10, state="running") == 0
    generated = _gauge(long_server, "kinfer_generated_tokens_total") - before
    assert _gauge(long_server, "kinfer_tokens_in_flight") == 0
    # freed long before the end: 4 x 1,000 tokens had they run on (ignore_eos: no early end)
    assert generated < 2000, generated
    status, doc = post(long_server, "/v1/completions", {"model": "long", "prompt": "hi", "max_tokens": 2})
    assert status == 200, doc


def test_a_thousand_cancelled_streams_leak_nothing(long_server: Server) -> None:
    fds = len(os.listdir(f"/proc/{long_server.proc.pid}/fd"))
    for _ in range(125):  # 8 at a time: 4 running, 4 waiting, all cancelled by their client
        socks = [_open_stream(long_server, 1000) for _ in range(4)]
        assert _wait(long_server, "kinfer_sequences", 4, 10, state="running") == 4  # admitted
        socks += [_open_stream(long_server, 1000) for _ in range(4)]
        for s in socks:
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        for s in socks:
            s.close()
        assert _wait(long_server, "kinfer_inflight_requests", 0, 10) == 0
    gauges = [("kinfer_sequences", {"state": "running"}), ("kinfer_sequences", {"state": "waiting"}),
              ("kinfer_tokens_in_flight", {}), ("kinfer_inflight_requests", {})]  # fmt: skip
    for gauge, labels in gauges:
        assert _wait(long_server, gauge, 0, 10, **labels) == 0, gauge
    assert len(os.listdir(f"/proc/{long_server.proc.pid}/fd")) <= fds + 2
    assert metric(http_get(long_server, "/metrics")[1].decode(), "kinfer_requests_total", code="499") >= 1000


def test_token_metrics(lm_server: Server) -> None:
    post(
        lm_server,
        "/v1/completions",
        {"model": "tiny-lm", "prompt": "hello", "max_tokens": 5, "temperature": 0},
    )
    text = http_get(lm_server, "/metrics")[1].decode()
    assert metric(text, "kinfer_time_to_first_token_seconds_count") >= 1
    assert metric(text, "kinfer_time_per_output_token_seconds_count") >= 1
    assert metric(text, "kinfer_generated_tokens_total") >= 5
    assert metric(text, "kinfer_requests_total", code="200") >= 1


def test_tritonclient_grpc_stream_infer_streams_the_same_greedy_text(lm_server: Server) -> None:
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    body = {"text_input": "hello world", "parameters": {"max_tokens": 6, "temperature": 0}}
    _, want = post(lm_server, "/v2/models/tiny-lm/generate", body)
    client = grpcclient.InferenceServerClient(lm_server.grpc)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text_input = grpcclient.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([b"hello world"], dtype=object))
    client.async_stream_infer("tiny-lm", [text_input], parameters={"max_tokens": 6, "temperature": 0})
    pieces = []
    while True:
        result, error = results.get(timeout=60)
        assert error is None, error
        params = result.get_response().parameters
        pieces.append(result.as_numpy("text_output")[0].decode())
        if "triton_final_response" in params and params["triton_final_response"].bool_param:
            break
    bad = grpcclient.InferInput("text_input", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"hi"], dtype=object))
    client.async_stream_infer("tiny-lm", [bad], parameters={"max_tokens": 0})
    _, error = results.get(timeout=60)
    client.stop_stream()
    client.close()
    assert "".join(pieces) == want["text_output"]
    assert params["completion_tokens"].int64_param == want["usage"]["completion_tokens"]
    assert error is not None and "max_tokens" in str(error)
