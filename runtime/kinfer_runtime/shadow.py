"""Canary drift check: send a bounded sample of requests to the stable track and compare answers.

With `--shadow-url` set (the operator sets it on canary pods only), each successful infer is
offered here after its answer is built. A token bucket (`--shadow-rate` per second, burst 1)
admits a sample; at most `MAX_INFLIGHT` samples run at once, beyond that a sample is dropped and
counted. A sample travels as a v2 JSON infer request to `{shadow_url}/v2/models/{model}/infer`
(unversioned: the stable track serves the same name) on a worker thread, and the stable answer
is compared with the canary's own. The user's answer is never delayed or changed: `offer` takes
a token and hands the sample to a thread, nothing more.

Generative models (`GreedyShadow`): a sampled request's prompt is answered greedily
(temperature 0, at most `GREEDY_MAX_TOKENS` tokens) by both tracks — by this pod's own engine
and by `{shadow_url}/v2/models/{model}/generate` with `return_token_ids` — off the request
path, whatever the user's own sampling was, and the two answers are compared token id by token
id (`first_difference`). The comparison goes to the same counters (one row per prompt, agreeing
when identical) plus the position of the first differing token.

Pure parts: `TokenBucket` and `WarnLimiter` (timestamps passed in), `compare`,
`first_difference`, `encode_request`, `encode_generate`, `decode_answer`, `decode_token_ids`.
I/O: a `Post` callable (`urllib_post`; the tests pass fakes) and `Shadow` / `GreedyShadow`,
which tie them to the metrics.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from kinfer_runtime.metrics import RuntimeMetrics
from kinfer_runtime.protocol import codec
from kinfer_runtime.protocol.errors import InferenceError, InvalidInput
from kinfer_runtime.protocol.v2_types import InferRequest, InferResponse, Tensor

log = logging.getLogger("kinfer_runtime.shadow")

MAX_INFLIGHT = 4
# Tokens of a greedy comparison (fewer when the user's request asked for fewer): enough to see
# a model answer differently, cheap enough to run beside the user's traffic.
GREEDY_MAX_TOKENS = 32
WARN_EVERY_S = 60.0

Arrays = Mapping[str, Any]  # output name -> numpy array


# ---- sampling ----


class TokenBucket:
    """Admits at most `burst + rate * t` samples in any t seconds; starts full."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class WarnLimiter:
    """Yes to the first warning of a kind, then at most one per `every_s` for that kind."""

    def __init__(self, every_s: float = WARN_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def allow(self, kind: str, now: float) -> bool:
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            return False
        self._last[kind] = now
        return True


# ---- comparison ----


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: float  # over all outputs; inf when an output's name or shape differs
    rows: int  # rows of the first output (its first dimension; a 1-D output is one row)
    argmax_agree: int  # of those, rows whose argmax is the same on both tracks


def compare(canary: Arrays, stable: Arrays) -> Comparison:
    """The canary's outputs against the stable's, matched by name; the canary's first output
    gives the rows and the per-row argmax."""
    if not canary:
        return Comparison(0.0 if not stable else math.inf, 0, 0)
    diff = math.inf
    if set(canary) == set(stable):
        diff = max(_max_abs_diff(np.asarray(a), np.asarray(stable[name])) for name, a in canary.items())
    first = np.asarray(next(iter(canary.values())))
    rows = first.shape[0] if first.ndim >= 2 else 1
    other = stable.get(next(iter(canary)))
    agree = 0
    if other is not None and np.shape(other) == first.shape:
        agree = _argmax_agree(first, np.asarray(other), rows)
    return Comparison(diff, rows, agree)


def _comparable(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """BYTES outputs hold str or bytes depending on where they came from: make them bytes."""
    if a.dtype != object:
        return a
    out = np.empty(a.size, dtype=object)
    out[:] = [x.encode() if isinstance(x, str) else bytes(x) for x in a.ravel()]
    return out.reshape(a.shape)


def _max_abs_diff(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    if a.dtype == object or b.dtype == object:
        return 0.0 if bool(np.all(_comparable(a) == _comparable(b))) else math.inf
    x, y = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - y)
    d[(x == y) | (np.isnan(x) & np.isnan(y))] = 0.0  # equal infinities, NaN on both sides
    return float(np.nan_to_num(d, nan=math.inf).max())  # NaN on one side only


def _argmax_agree(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], rows: int) -> int:
    if a.size == 0:
        return rows
    x, y = _comparable(a).reshape(rows, -1), _comparable(b).reshape(rows, -1)
    if x.dtype == object or y.dtype == object:  # BYTES: a row agrees when it is equal
        return int(np.count_nonzero(np.all(x == y, axis=1)))
    return int(np.count_nonzero(x.argmax(axis=1) == y.argmax(axis=1)))


def first_difference(canary: Sequence[int], stable: Sequence[int]) -> int | None:
    """Position (from 0) of the first token where two greedy answers differ; an answer that
    stops early differs where it stopped. None when they are the same."""
    for i, (a, b) in enumerate(zip(canary, stable, strict=False)):
        if a != b:
            return i
    return None if len(canary) == len(stable) else min(len(canary), len(stable))


# ---- wire ----


class AnswerError(ValueError):
    """The stable track's answer is not a v2 JSON infer response."""


def encode_request(inputs: Sequence[Tensor], output_names: Sequence[str], request_id: str = "") -> bytes:
    """A v2 JSON infer body with the same inputs, asking for the same outputs as JSON."""
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "data": codec.to_json_data(t.data, t.datatype),
            }
            for t in inputs
        ],
        "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in output_names],
    }
    if request_id:
        doc["id"] = request_id
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_answer(body: bytes) -> dict[str, Any]:
    """Output arrays by name from a v2 JSON infer response."""
    try:
        doc = orjson.loads(body)
        outputs: dict[str, Any] = {}
        for item in doc["outputs"]:
            name = item["name"]
            what = f"output {name!r}"
            datatype = codec.check_datatype(item["datatype"], what)
            shape = codec.parse_shape(item["shape"], what)
            outputs[str(name)] = codec.from_json_data(item["data"], datatype, shape, str(name))
    except InvalidInput as exc:
        raise AnswerError(exc.message) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AnswerError(f"not a v2 JSON infer response: {type(exc).__name__}: {exc}") from None
    return outputs


def encode_generate(prompt: str, max_tokens: int) -> bytes:
    """A v2 generate body asking for a greedy answer and its token ids."""
    parameters = {"max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    return orjson.dumps({"text_input": prompt, "parameters": parameters})


def decode_token_ids(body: bytes) -> list[int]:
    """The token ids of a v2 generate answer asked with `return_token_ids`."""
    try:
        ids = orjson.loads(body)["token_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AnswerError(f"not a v2 generate answer with token_ids: {type(exc).__name__}: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise AnswerError(f"token_ids: a list of integers expected, got {ids!r:.100}")
    return ids


class ShadowFailure(Exception):
    """A shadow call that got no answer; `reason` is the metrics label (http or timeout)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# (url, JSON body, timeout in seconds) -> the body of a 2xx answer; else raises ShadowFailure
Post = Callable[[str, bytes, float], bytes]

# Cluster traffic only: never a proxy from HTTP_PROXY and friends.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urllib_post(url: str, body: bytes, timeout_s: float) -> bytes:
    """POST with the standard library. The timeout bounds connect and each read."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ShadowFailure("http", f"HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        reason = "timeout" if isinstance(exc.reason, TimeoutError) else "http"
        raise ShadowFailure(reason, f"{url}: {exc.reason}") from None
    except TimeoutError:
        raise ShadowFailure("timeout", f"{url}: no answer within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ShadowFailure("http", f"{url}: {type(exc).__name__}: {exc}") from None


# ---- the I/O shell ----


class _Reporter:
    """Shadow errors to the metrics, with rate-limited warnings."""

    url: str
    metrics: RuntimeMetrics
    _clock: Callable[[], float]
    _warn: WarnLimiter
    _warn_lock: threading.Lock

    def _failed(self, reason: str, detail: str) -> None:
        self.metrics.shadow_error(reason)
        if self._may_warn(reason):
            log.warning(
                f"shadow request failed ({reason}): {detail}; at most one such warning a minute",
                extra={"reason": reason, "shadow_url": self.url},
            )

    def _may_warn(self, kind: str) -> bool:
        with self._warn_lock:
            return self._warn.allow(kind, self._clock())


class Shadow(_Reporter):
    """Samples answered requests, shadows them on worker threads, records the comparison."""

    def __init__(
        self, base_url: str, model_name: str, metrics: RuntimeMetrics, *, rate: float,
        timeout_s: float, post: Post = urllib_post, max_inflight: int = MAX_INFLIGHT,
        clock: Callable[[], float] = time.monotonic, executor: Executor | None = None,
    ) -> None:  # fmt: skip
        self.url = f"{base_url.rstrip('/')}/v2/models/{quote(model_name, safe='')}/infer"
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self._post = post
        self._clock = clock
        self._bucket = TokenBucket(rate)
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._executor = executor or ThreadPoolExecutor(max_inflight, thread_name_prefix="kinfer-shadow")
        self._warn = WarnLimiter()
        self._warn_lock = threading.Lock()

    def offer(self, request: InferRequest, response: InferResponse) -> None:
        """Maybe shadow this answered request. Never waits, never raises for a shadow reason."""
        if not self._bucket.take(self._clock()):
            return
        if not self._slots.acquire(blocking=False):
            self._failed("dropped", f"{self.max_inflight} shadow requests already in flight")
            return
        canary = {t.name: t.data for t in response.outputs}
        try:
            self._executor.submit(self._run, request.inputs, canary, request.id)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._slots.release()

    def close(self, wait: bool = False) -> None:
        """Take no more samples; `wait` finishes those taken, else queued ones are dropped."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self, inputs: Sequence[Tensor], canary: Arrays, request_id: str) -> None:
        try:
            body = encode_request(inputs, list(canary), request_id)
            result = compare(canary, decode_answer(self._post(self.url, body, self.timeout_s)))
        except ShadowFailure as exc:
            self._failed(exc.reason, exc.detail)
        except AnswerError as exc:
            self._failed("decode", f"{self.url}: {exc}")
        except Exception:  # a bug of ours: the user's answer is long gone; leave a trace
            if self._may_warn("bug"):
                log.exception("shadow comparison failed", extra={"shadow_url": self.url})
        else:
            self.metrics.shadow_compared(result.max_abs_diff, result.rows, result.argmax_agree)
        finally:
            self._slots.release()


# (prompt, max tokens) -> this pod's greedy answer, as token ids
Greedy = Callable[[str, int], Awaitable[list[int]]]


class GreedyShadow(_Reporter):
    """Generative models: samples prompts, answers each greedily on both tracks (asyncio tasks;
    stable's call on a thread) and records where the two answers differ."""

    def __init__(
        self, base_url: str, model_name: str, metrics: RuntimeMetrics, *, rate: float,
        timeout_s: float, greedy: Greedy, post: Post = urllib_post,
        max_inflight: int = MAX_INFLIGHT, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.url = f"{base_url.rstrip('/')}/v2/models/{quote(model_name, safe='')}/generate"
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self._greedy = greedy
        self._post = post
        self._clock = clock
        self._bucket = TokenBucket(rate)
        self._tasks: set[asyncio.Task[None]] = set()
        self._warn = WarnLimiter()
        self._warn_lock = threading.Lock()

    def offer(self, prompt: str, max_tokens: int) -> None:
        """Maybe compare this prompt (on the event loop). Never waits, never raises."""
        if not self._bucket.take(self._clock()):
            return
        if len(self._tasks) >= self.max_inflight:
            self._failed("dropped", f"{self.max_inflight} shadow requests already in flight")
            return
        task = asyncio.get_running_loop().create_task(self._run(prompt, min(max_tokens, GREEDY_MAX_TOKENS)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the comparisons under way."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, prompt: str, max_tokens: int) -> None:
        body = encode_generate(prompt, max_tokens)
        stable = asyncio.create_task(asyncio.to_thread(self._post, self.url, body, self.timeout_s))
        try:
            canary = await self._greedy(prompt, max_tokens)
            stable_ids = decode_token_ids(await stable)
        except ShadowFailure as exc:
            self._failed(exc.reason, exc.detail)
        except AnswerError as exc:
            self._failed("decode", f"{self.url}: {exc}")
        except InferenceError as exc:  # this pod refused its own greedy answer (overloaded)
            self._failed("dropped", f"local greedy answer refused: {exc.message}")
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: the user's answer is not affected; leave a trace
            if self._may_warn("bug"):
                log.exception("greedy shadow comparison failed", extra={"shadow_url": self.url})
        else:
            position = first_difference(canary, stable_ids)
            self.metrics.shadow_compared_tokens(position)
            if position is not None and self._may_warn("differs"):
                log.warning(
                    f"greedy answer differs from stable's at token {position}: canary "
                    f"{canary[position : position + 4]} vs stable {stable_ids[position : position + 4]}; "
                    "at most one such warning a minute",
                    extra={"first_difference": position, "shadow_url": self.url},
                )
        finally:
            if not stable.done():
                stable.cancel()  # the thread already posting finishes on its own; unread
            elif not stable.cancelled():
                stable.exception()  # read, so a failure left unawaited is not reported as lost
