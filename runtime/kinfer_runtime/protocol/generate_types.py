"""Wire types of text generation: OpenAI completions and chat completions, and the v2 generate
extension (Triton's `generate` / `generate_stream`). Parsing names the bad field; the answer
shapes are built here too, so the front ends only frame them (JSON or server-sent events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kinfer_runtime.protocol.errors import InvalidInput
from kinfer_runtime.scheduler import SamplingParams

MAX_STOPS = 4
ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    api: str  # completions | chat | generate
    model: str
    prompt: str  # for chat: empty, see messages
    messages: tuple[tuple[str, str], ...]
    max_tokens: int | None  # None: as many as the model's limit and context allow
    params: SamplingParams
    stream: bool
    include_usage: bool = True
    model_version: str = ""
    return_token_ids: bool = False  # v2 generate: answer token_ids too (the drift check asks)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("body: must be a JSON object")
    return doc


def _number(doc: dict[str, Any], key: str, default: float, low: float, high: float, where: str = "") -> float:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{where}{key}: must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _sampling(doc: dict[str, Any], max_tokens_keys: tuple[str, ...], default_max: int | None,
              where: str = "") -> tuple[int | None, SamplingParams]:  # fmt: skip
    max_tokens: int | None = default_max
    for key in max_tokens_keys:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidInput(f"{where}{key}: must be an integer >= 1, got {value!r}")
        max_tokens = value
    temperature = _number(doc, "temperature", 1.0, 0.0, 2.0, where)
    top_p = _number(doc, "top_p", 1.0, 0.0, 1.0, where)
    if top_p == 0:
        raise InvalidInput(f"{where}top_p: must be greater than 0")
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise InvalidInput(f"{where}seed: must be an integer from 0 to 2^63-1, got {seed!r}")
    stop = doc.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and len(stop) <= MAX_STOPS and all(isinstance(s, str) and s for s in stop):
        stops = tuple(stop)
    else:
        raise InvalidInput(f"{where}stop: must be a non-empty string or a list of up to {MAX_STOPS} of them")
    ignore_eos = doc.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise InvalidInput(f"{where}ignore_eos: must be true or false, got {ignore_eos!r}")
    n = doc.get("n", 1)
    if n != 1:
        raise InvalidInput(f"{where}n: only 1 is supported, got {n!r}")
    return max_tokens, SamplingParams(max_tokens or 1, temperature, top_p, seed, stops, ignore_eos)


def _stream_flags(doc: dict[str, Any]) -> tuple[bool, bool]:
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput(f"stream: must be true or false, got {stream!r}")
    options = doc.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidInput("stream_options: must be an object")
    include = options.get("include_usage", True)
    if not isinstance(include, bool):
        raise InvalidInput("stream_options.include_usage: must be true or false")
    return stream, include


def _model(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model: required, a non-empty string")
    return model


def parse_completion(body: bytes) -> GenerateRequest:
    doc = parse_json(body)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput("prompt: required, a non-empty string")
    max_tokens, params = _sampling(doc, ("max_tokens",), 16)
    stream, include = _stream_flags(doc)
    return GenerateRequest("completions", _model(doc), prompt, (), max_tokens, params, stream, include)


def parse_chat(body: bytes) -> GenerateRequest:
    doc = parse_json(body)
    raw = doc.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("messages: required, a non-empty list of {role, content}")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise InvalidInput(f"messages[{i}]: must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidInput(f"messages[{i}].role: must be one of {list(ROLES)}, got {role!r}")
        if isinstance(content, list):  # content parts: only text parts are understood
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):  # fmt: skip
                raise InvalidInput(f"messages[{i}].content: only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{i}].content: must be a string, got {type(content).__name__}")
        messages.append((role, content))
    max_tokens, params = _sampling(doc, ("max_tokens", "max_completion_tokens"), None)
    stream, include = _stream_flags(doc)
    return GenerateRequest("chat", _model(doc), "", tuple(messages), max_tokens, params, stream, include)


def parse_generate(body: bytes, model: str, version: str, stream: bool) -> GenerateRequest:
    """The v2 generate extension: `{"text_input": "...", "parameters": {...}}`; sampling
    fields may also sit at the top level, as Triton accepts."""
    return generate_request(parse_json(body), model, version, stream)


def generate_request(doc: dict[str, Any], model: str, version: str, stream: bool) -> GenerateRequest:
    """A v2 generate request from its fields (REST body, or gRPC inputs and parameters)."""
    text = doc.get("text_input")
    if not isinstance(text, str) or not text:
        raise InvalidInput("text_input: required, a non-empty string")
    params_doc = doc.get("parameters", {})
    if not isinstance(params_doc, dict):
        raise InvalidInput("parameters: must be an object")
    merged = {**{k: v for k, v in doc.items() if k not in ("text_input", "parameters")}, **params_doc}
    merged.pop("stream", None)
    token_ids = merged.pop("return_token_ids", False)
    if not isinstance(token_ids, bool):
        raise InvalidInput(f"return_token_ids: must be true or false, got {token_ids!r}")
    max_tokens, params = _sampling(merged, ("max_tokens",), 16)
    return GenerateRequest("generate", model, text, (), max_tokens, params, stream, True, version, token_ids)


# ---- answers ----


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def openai_body(req: GenerateRequest, rid: str, created: int, text: str, finish: str,
                used: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    if req.api == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        kind = "text_completion"
    choice["finish_reason"] = finish
    return {"id": rid, "object": kind, "created": created, "model": req.model, "choices": [choice],
            "usage": used}  # fmt: skip


def openai_chunk(req: GenerateRequest, rid: str, created: int, text: str, finish: str | None,
                 first: bool) -> dict[str, Any]:  # fmt: skip
    if req.api == "chat":
        delta: dict[str, Any] = {"content": text}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        kind = "text_completion"
    choice["finish_reason"] = finish
    return {"id": rid, "object": kind, "created": created, "model": req.model, "choices": [choice]}


def generate_body(
    model: str,
    version: str,
    text: str,
    finish: str,
    used: dict[str, int] | None,
    token_ids: list[int] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "text_output": text}
    if finish:
        doc["finish_reason"] = finish
    if used is not None:
        doc["usage"] = used
    if token_ids is not None:
        doc["token_ids"] = token_ids
    return doc
