"""Drift check of generative models (`shadow.GreedyShadow`): greedy answers of the two tracks
compared token by token — the comparison, the I/O shell on fakes, and real runtime processes on
127.0.0.1 (a stable tiny LM, and canaries of the same and of a different one shadowing to it)."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinfer_runtime.metrics import RuntimeMetrics
from kinfer_runtime.protocol.errors import Overloaded
from kinfer_runtime.shadow import (
    GREEDY_MAX_TOKENS,
    AnswerError,
    GreedyShadow,
    ShadowFailure,
    decode_token_ids,
    encode_generate,
    first_difference,
)
from tests.kinfer_runtime import models
from tests.kinfer_runtime.server_proc import Server, http_get, metric, start_server


@pytest.mark.parametrize(
    ("canary", "stable", "want"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([], [], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([7, 2], [1, 2], 0),
        ([1, 2], [1, 2, 3], 2),  # the canary stopped (end of text) where stable went on
        ([1, 2, 3], [1], 1),
    ],
)
def test_first_difference(canary: list[int], stable: list[int], want: int | None) -> None:
    assert first_difference(canary, stable) == want


def test_generate_body_asks_for_a_greedy_answer_with_its_token_ids() -> None:
    doc = json.loads(encode_generate("Once upon", 8))
    assert doc == {
        "text_input": "Once upon",
        "parameters": {"max_tokens": 8, "temperature": 0, "return_token_ids": True},
    }
    assert decode_token_ids(b'{"text_output": "x", "token_ids": [3, 1, 4]}') == [3, 1, 4]
    for bad in (b"{}", b"not json", b'{"token_ids": [1, "2"]}', b'{"token_ids": [true]}'):
        with pytest.raises(AnswerError):
            decode_token_ids(bad)


def _value(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": metrics.model, **labels})
    assert value is not None, name
    return value


def _greedy_shadow(
    metrics: RuntimeMetrics, canary: list[int], stable: bytes | Exception, **kw: Any
) -> tuple[GreedyShadow, list[tuple[str, dict[str, Any]]]]:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def greedy(prompt: str, max_tokens: int) -> list[int]:
        asked.append(("canary", {"prompt": prompt, "max_tokens": max_tokens}))
        return canary

    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        asked.append((url, json.loads(body)))
        if isinstance(stable, Exception):
            raise stable
        return stable

    clock = itertools.count(0.0, 2.0)  # 2 s a read: the bucket always has a token
    shadow = GreedyShadow("http://llm-stable:8080/", "chat-lm", metrics, rate=1.0, timeout_s=1.0,
                          greedy=greedy, post=post, clock=lambda: next(clock), **kw)  # fmt: skip
    return shadow, asked


async def _offer(shadow: GreedyShadow, *prompts: tuple[str, int]) -> None:
    for prompt, max_tokens in prompts:
        shadow.offer(prompt, max_tokens)
    await asyncio.gather(*shadow._tasks)


def test_identical_greedy_answers_agree() -> None:
    metrics = RuntimeMetrics("chat-lm")
    shadow, asked = _greedy_shadow(metrics, [5, 6, 7], b'{"token_ids": [5, 6, 7]}')
    asyncio.run(_offer(shadow, ("hello", 500)))
    url, body = next(a for a in asked if a[0] != "canary")
    assert url == "http://llm-stable:8080/v2/models/chat-lm/generate"
    assert body["parameters"]["max_tokens"] == GREEDY_MAX_TOKENS  # capped: a comparison is cheap
    assert ("canary", {"prompt": "hello", "max_tokens": GREEDY_MAX_TOKENS}) in asked
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 1
    assert _value(metrics, "kinfer_shadow_rows_total") == 1
    assert _value(metrics, "kinfer_shadow_argmax_agree_total") == 1
    assert _value(metrics, "kinfer_shadow_max_abs_diff_bucket", le="1e-06") == 1
    assert _value(metrics, "kinfer_shadow_first_difference_token_count") == 0


def test_a_differing_answer_records_where_it_first_differs(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RuntimeMetrics("chat-lm")
    shadow, _ = _greedy_shadow(metrics, [5, 6, 7, 8], b'{"token_ids": [5, 6, 9, 9]}')
    asyncio.run(_offer(shadow, ("hello", 4), ("again", 4)))
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 2
    assert _value(metrics, "kinfer_shadow_argmax_agree_total") == 0
    assert _value(metrics, "kinfer_shadow_max_abs_diff_bucket", le="100.0") == 0  # +Inf only
    assert _value(metrics, "kinfer_shadow_first_difference_token_sum") == 4  # 2 and 2
    assert _value(metrics, "kinfer_shadow_first_difference_token_bucket", le="1.0") == 0
    assert _value(metrics, "kinfer_shadow_first_difference_token_bucket", le="2.0") == 2
    warnings = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert warnings == ["greedy answer differs from stable's at token 2: canary [7, 8] vs stable [9, 9]; "
                        "at most one such warning a minute"]  # fmt: skip


@pytest.mark.parametrize(
    ("stable", "reason"),
    [
        (ShadowFailure("http", "HTTP 503"), "http"),
        (ShadowFailure("timeout", "no answer"), "timeout"),
        (b'{"text_output": "no ids"}', "decode"),
    ],
)
def test_failures_are_counted_by_reason_not_compared(stable: bytes | Exception, reason: str) -> None:
    metrics = RuntimeMetrics("chat-lm")
    shadow, _ = _greedy_shadow(metrics, [1], stable)
    asyncio.run(_offer(shadow, ("hello", 4)))
    assert _value(metrics, "kinfer_shadow_errors_total", reason=reason) == 1
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 0


def test_a_refused_local_answer_and_too_many_in_flight_are_drops() -> None:
    metrics = RuntimeMetrics("chat-lm")

    async def refused(prompt: str, max_tokens: int) -> list[int]:
        raise Overloaded("1 sequences already wait")

    clock = itertools.count(0.0, 2.0)
    shadow = GreedyShadow("http://s", "chat-lm", metrics, rate=1.0, timeout_s=1.0, greedy=refused,
                          post=lambda u, b, t: b'{"token_ids": []}', clock=lambda: next(clock),
                          max_inflight=1)  # fmt: skip
    asyncio.run(_offer(shadow, ("a", 4), ("b", 4)))  # the second finds the first in flight
    assert _value(metrics, "kinfer_shadow_errors_total", reason="dropped") == 2
    assert not shadow._tasks


def test_sampling_follows_the_token_bucket() -> None:
    metrics = RuntimeMetrics("chat-lm")
    shadow, _ = _greedy_shadow(metrics, [1], b'{"token_ids": [1]}')
    shadow._clock = lambda: 0.0  # all offers at the same instant: burst 1

    asyncio.run(_offer(shadow, *[("p", 4)] * 5))
    assert _value(metrics, "kinfer_shadow_comparisons_total") == 1


# ---- real runtime processes ----

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    # Same name, different weights: what a new version of a model looks like.
    return {
        "v1": models.make_tiny_lm(root / "v1" / "tiny-lm"),
        "v2": models.make_tiny_lm(root / "v2" / "tiny-lm", initializer_range=0.5, n_layer=3),
    }


@pytest.fixture(scope="module")
def stable_lm(lms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(lms["v1"], tmp_path_factory.mktemp("stable"), timeout=300)
    yield server
    assert server.stop() == 0, server.log_path.read_text()


def _complete(server: Server, prompt: str) -> None:
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        # The user's own request samples (temperature 1): the comparison is greedy all the same.
        body = {"model": "tiny-lm", "prompt": prompt, "max_tokens": 12, "temperature": 1.0, "seed": 3}
        conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()


def _shadow_counts(canary: Server, prompts: list[str], timeout: float = 60) -> tuple[str, float]:
    for prompt in prompts:
        _complete(canary, prompt)
        time.sleep(1.05)  # one sample a second (--shadow-rate 1)
    deadline = time.monotonic() + timeout
    while True:
        text = http_get(canary, "/metrics")[1].decode()
        done = metric(text, "kinfer_shadow_comparisons_total", model="tiny-lm")
        errors = sum(metric(text, "kinfer_shadow_errors_total", model="tiny-lm", reason=r)
                     for r in ("http", "timeout", "dropped", "decode"))  # fmt: skip
        if done + errors >= len(prompts):
            assert errors == 0, text
            return text, done
        assert time.monotonic() < deadline, f"no comparisons:\n{text}\n{canary.log_path.read_text()}"
        time.sleep(0.2)


PROMPTS = ["the quick brown fox", "once upon a time", "hello world"]


def test_a_canary_of_the_same_model_answers_every_prompt_as_stable(
    lms: dict[str, Path], stable_lm: Server, tmp_path: Path
) -> None:
    canary = start_server(lms["v1"], tmp_path, "--shadow-url", f"http://{stable_lm.http}", timeout=300)
    try:
        text, done = _shadow_counts(canary, PROMPTS)
        assert done == len(PROMPTS)
        assert metric(text, "kinfer_shadow_argmax_agree_total", model="tiny-lm") == len(PROMPTS)
        assert metric(text, "kinfer_shadow_first_difference_token_count", model="tiny-lm") == 0
    finally:
        assert canary.stop() == 0, canary.log_path.read_text()


def test_a_canary_of_different_weights_differs_and_says_where(
    lms: dict[str, Path], stable_lm: Server, tmp_path: Path
) -> None:
    canary = start_server(lms["v2"], tmp_path, "--shadow-url", f"http://{stable_lm.http}", timeout=300)
    try:
        text, done = _shadow_counts(canary, PROMPTS)
        assert done == len(PROMPTS)
        assert metric(text, "kinfer_shadow_argmax_agree_total", model="tiny-lm") < len(PROMPTS)
        assert metric(text, "kinfer_shadow_first_difference_token_count", model="tiny-lm") >= 1
        assert any(line.get("msg", "").startswith("greedy answer differs from stable's at token")
                   for line in canary.log_lines())  # fmt: skip
    finally:
        assert canary.stop() == 0, canary.log_path.read_text()
