"""The transport-free data plane of a generative model: health, metadata and generation.

Knows nothing of HTTP or gRPC. `start()` tokenizes, checks the limits and queues the sequence
on the engine — every refusal (bad field, unknown model, overload) is raised there, before any
token. What comes back is iterated for text deltas; leaving the iteration early cancels it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol

from kinfer_runtime.engine import Engine, Stream
from kinfer_runtime.model import GenerativeSignature
from kinfer_runtime.protocol.dataplane import SERVER_NAME, SERVER_VERSION, answer_headers, check_model
from kinfer_runtime.protocol.errors import InvalidInput, NotReady
from kinfer_runtime.protocol.generate_types import GenerateRequest
from kinfer_runtime.scheduler import SamplingParams

EXTENSIONS = ["generate", "openai"]


class TextCodec(Protocol):
    """The tokenizer side of a model (`torch_model.CausalLM` implements it)."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def chat_prompt(self, messages: tuple[tuple[str, str], ...]) -> str: ...


class Generation:
    """One accepted request: its prompt size and the stream of its text."""

    def __init__(self, stream: Stream, prompt_tokens: int) -> None:
        self.stream = stream
        self.prompt_tokens = prompt_tokens
        self.finish_reason = ""

    @property
    def completion_tokens(self) -> int:
        return len(self.stream.seq.generated)

    @property
    def token_ids(self) -> list[int]:
        return list(self.stream.seq.generated)

    async def text(self) -> AsyncIterator[str]:
        """Text pieces as they are decoded; `finish_reason` is set when this ends. Leaving
        early (the client went away) cancels the sequence."""
        try:
            async for delta in self.stream:
                if delta.finish_reason:
                    self.finish_reason = delta.finish_reason
                if delta.text:
                    yield delta.text
        finally:
            self.stream.cancel()

    def cancel(self) -> None:
        self.stream.cancel()


class PromptSink(Protocol):
    """Sees each accepted prompt (`shadow.GreedyShadow`, the drift check); must not wait."""

    def offer(self, prompt: str, max_tokens: int) -> None: ...


class GenerativePlane:
    def __init__(
        self, model_name: str, model_version: str, signature: GenerativeSignature, track: str = ""
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.track = track  # stable or canary (KINFER_TRACK, set by the operator); "" alone
        self.signature = signature
        self.codec: TextCodec | None = None
        self.engine: Engine | None = None
        self.draining = False
        self.shadow: PromptSink | None = None  # canary drift check (--shadow-url)

    def answer_headers(self) -> list[tuple[str, str]]:
        return answer_headers(self.model_version, self.track)

    def model_loaded(self, codec: TextCodec, engine: Engine) -> None:
        self.codec = codec
        self.engine = engine

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.engine is not None and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def check_model(self, name: str, version: str = "", field: str = "model") -> None:
        check_model(self.model_name, self.model_version, name, version, field + ":")

    def model_ready(self, name: str, version: str = "") -> bool:
        self.check_model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        sig = self.signature
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": "transformers",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
            "parameters": {"context_length": sig.context_length, "max_new_tokens": sig.max_new_tokens},
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return {"name": self.model_name, "platform": "transformers", "max_batch_size": 0,
                "input": [{"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]}],
                "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [1]}],
                "model_transaction_policy": {"decoupled": True}}  # fmt: skip

    def start(self, req: GenerateRequest) -> Generation:
        """Validate, tokenize and queue; raises before any token is produced."""
        self.check_model(req.model, req.model_version, "model" if req.api != "generate" else "model_name")
        if self.engine is None or self.codec is None:
            raise NotReady(f"model '{self.model_name}' is not loaded yet")
        if self.draining:
            raise NotReady("the server is shutting down")
        prompt = self.codec.chat_prompt(req.messages) if req.api == "chat" else req.prompt
        ids = self.codec.encode(prompt)
        field = "messages" if req.api == "chat" else ("text_input" if req.api == "generate" else "prompt")
        sig = self.signature
        if not ids:
            raise InvalidInput(f"{field}: encodes to no tokens")
        if len(ids) >= sig.context_length:
            raise InvalidInput(
                f"{field}: {len(ids)} tokens, the model's context is {sig.context_length} tokens "
                "(the prompt must leave room for at least one new token)"
            )
        if req.max_tokens is not None and req.max_tokens > sig.max_new_tokens:
            raise InvalidInput(
                f"max_tokens: {req.max_tokens} exceeds this model's limit {sig.max_new_tokens}"
            )
        room = sig.context_length - len(ids)
        max_tokens = min(req.max_tokens or sig.max_new_tokens, sig.max_new_tokens, room)
        params = dataclasses.replace(req.params, max_tokens=max_tokens)
        generation = Generation(self.engine.submit(ids, params), len(ids))
        if self.shadow is not None:
            self.shadow.offer(prompt, max_tokens)
        return generation

    async def greedy(self, prompt: str, max_tokens: int) -> list[int]:
        """This pod's greedy answer to `prompt`, as token ids (the drift check's own side).
        Raises like `start` when refused (overload); `max_tokens` must fit the context."""
        if self.engine is None or self.codec is None:
            raise NotReady(f"model '{self.model_name}' is not loaded yet")
        stream = self.engine.submit(self.codec.encode(prompt), SamplingParams(max_tokens, temperature=0.0))
        try:
            async for _ in stream:
                pass
        finally:
            stream.cancel()
        return list(stream.seq.generated)
