"""Prometheus metrics. The names are read by the operator's PromQL; do not rename them.

- kinfer_queue_depth{model}                    gauge: rows waiting + rows in the running forward
- kinfer_inflight_requests{model}              gauge: infer requests accepted, not yet answered
- kinfer_request_duration_seconds{model,phase} histogram; phase = total | queue | compute
- kinfer_batch_size{model}                     histogram of rows per forward
- kinfer_forward_seconds_total{model}          counter: seconds spent in forwards (busy time)
- kinfer_batch_rows_squared_total{model}       counter: sum of rows² over forwards. With the
                                               batch-size histogram's count and sum, the forward
                                               seconds and the compute-phase duration sum (rows x
                                               their forward's seconds), the operator fits the
                                               batch-latency line t = a + b x rows by least squares
- kinfer_requests_total{model,code}            counter; code = HTTP status (gRPC mapped to it)

Generative models (`engine.py`; zero for tensor models):
- kinfer_time_to_first_token_seconds{model}    histogram: arrival to the first generated token
- kinfer_time_per_output_token_seconds{model}  histogram: gap between consecutive tokens of a sequence
- kinfer_generated_tokens_total{model}         counter: tokens generated
- kinfer_prompt_tokens_total{model}            counter: prompt tokens prefilled
- kinfer_sequences{model,state}                gauge; state = running | waiting
- kinfer_tokens_in_flight{model}               gauge: tokens reserved by running sequences
  (prompt + max tokens each); kinfer_queue_depth is the waiting sequences, and generation
  requests are counted in kinfer_requests_total but not timed in kinfer_request_duration_seconds
  (a stream lasts as long as its answer: TTFT and time per output token are the latency)
Model start (once per process; the download part from the storage initializer's report):
- kinfer_model_load_seconds{model}             gauge: reading the model into memory
- kinfer_model_warmup_seconds{model}           gauge: the warm-up forwards
- kinfer_model_download_seconds{model}         gauge: the init container's download (0: cache hit)
- kinfer_model_download_bytes_total{model}     counter: bytes the init container downloaded
- kinfer_model_cache_hits_total{model}         counter: 1 when the node cache served the model

Canary drift check (`shadow.py`; zero unless --shadow-url is set):
- kinfer_shadow_comparisons_total{model}       counter: canary answers compared with the stable's
- kinfer_shadow_rows_total{model}              counter: rows compared (the first output's rows)
- kinfer_shadow_argmax_agree_total{model}      counter: of those, rows whose argmax agrees
- kinfer_shadow_max_abs_diff{model}            histogram: per comparison, max |canary - stable|
- kinfer_shadow_errors_total{model,reason}     counter; reason = http | timeout | dropped | decode
- kinfer_shadow_first_difference_token{model}  histogram, generative models: for each greedy
  answer that differs from stable's, the position (from 0) of the first differing token. For a
  generative model a comparison is one prompt: one row, agreeing when the two greedy answers are
  the same token for token, and its max abs diff is 0 when they are, else +Inf
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# 1-2-5 series from 1e-6 to 100; a shape or name mismatch observes +Inf (the +Inf bucket only)
DIFF_BUCKETS = (*(float(f"{m}e{e}") for e in range(-6, 2) for m in (1, 2, 5)), 100.0)
SHADOW_ERROR_REASONS = ("http", "timeout", "dropped", "decode")
POSITION_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RuntimeMetrics:
    """The runtime's metrics in their own registry (tests run several servers in one process)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model = model
        r = self.registry
        self._depth = Gauge(
            "kinfer_queue_depth",
            "Rows waiting in the batch queue plus rows in the running forward.",
            ["model"],
            registry=r,
        ).labels(model)
        self._inflight = Gauge(
            "kinfer_inflight_requests",
            "Infer requests accepted and not yet answered.",
            ["model"],
            registry=r,
        ).labels(model)
        duration = Histogram(
            "kinfer_request_duration_seconds",
            "Infer request latency; phase=total (arrival to answer), queue (waiting for a "
            "batch), compute (the batch's forward).",
            ["model", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._total = duration.labels(model, "total")
        self._queue = duration.labels(model, "queue")
        self._compute = duration.labels(model, "compute")
        self._batch = Histogram(
            "kinfer_batch_size",
            "Rows per model forward.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(model)
        self._forward_seconds = Counter(
            "kinfer_forward_seconds",
            "Seconds spent in model forwards (the replica's busy time).",
            ["model"],
            registry=r,
        ).labels(model)
        self._rows_squared = Counter(
            "kinfer_batch_rows_squared",
            "Sum of squared rows per forward (for the autoscaler's fit of the batch-latency curve).",
            ["model"],
            registry=r,
        ).labels(model)
        self._requests = Counter(
            "kinfer_requests_total",
            "Infer requests answered, by HTTP status code.",
            ["model", "code"],
            registry=r,
        )
        self._by_code: dict[int, Counter] = {}
        self._ttft = Histogram(
            "kinfer_time_to_first_token_seconds",
            "Generative: seconds from a sequence's arrival to its first generated token.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        ).labels(model)
        self._tpot = Histogram(
            "kinfer_time_per_output_token_seconds",
            "Generative: seconds between consecutive generated tokens of one sequence.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        ).labels(model)
        self._generated = Counter(
            "kinfer_generated_tokens", "Generative: tokens generated.", ["model"], registry=r
        ).labels(model)
        self._prompt_tokens = Counter(
            "kinfer_prompt_tokens", "Generative: prompt tokens prefilled.", ["model"], registry=r
        ).labels(model)
        seqs = Gauge(
            "kinfer_sequences",
            "Generative: sequences by state (running = in the decoding batch, waiting = queued).",
            ["model", "state"],
            registry=r,
        )
        self._running = seqs.labels(model, "running")
        self._waiting = seqs.labels(model, "waiting")
        self._tokens_in_flight = Gauge(
            "kinfer_tokens_in_flight",
            "Generative: tokens reserved by the running sequences (prompt + max tokens each).",
            ["model"],
            registry=r,
        ).labels(model)
        # children created up front: a pod that never shadows exports zeros, not nothing
        self._shadow_comparisons = Counter(
            "kinfer_shadow_comparisons",
            "Canary answers compared with the stable track's answer to the same inputs.",
            ["model"],
            registry=r,
        ).labels(model)
        self._shadow_rows = Counter(
            "kinfer_shadow_rows",
            "Rows compared (rows of the first output).",
            ["model"],
            registry=r,
        ).labels(model)
        self._shadow_agree = Counter(
            "kinfer_shadow_argmax_agree",
            "Compared rows whose argmax of the first output agrees with the stable track.",
            ["model"],
            registry=r,
        ).labels(model)
        self._shadow_diff = Histogram(
            "kinfer_shadow_max_abs_diff",
            "Per comparison, the max absolute difference over all outputs (+Inf: shape or name mismatch).",
            ["model"],
            buckets=DIFF_BUCKETS,
            registry=r,
        ).labels(model)
        errors = Counter(
            "kinfer_shadow_errors",
            "Shadow samples without a comparison; reason = http (non-2xx, connection), timeout, "
            "dropped (too many in flight), decode (answer not parseable).",
            ["model", "reason"],
            registry=r,
        )
        self._shadow_errors = {reason: errors.labels(model, reason) for reason in SHADOW_ERROR_REASONS}
        self._shadow_first_difference = Histogram(
            "kinfer_shadow_first_difference_token",
            "Generative: position (from 0) of the first token where a greedy answer differs from stable's.",
            ["model"],
            buckets=POSITION_BUCKETS,
            registry=r,
        ).labels(model)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, ["model"], registry=r).labels(model)

        self.load_seconds = gauge("kinfer_model_load_seconds", "Seconds spent reading the model into memory.")
        self.warmup_seconds = gauge("kinfer_model_warmup_seconds", "Seconds spent in warm-up forwards.")
        self.download_seconds = gauge(
            "kinfer_model_download_seconds",
            "Seconds the storage initializer spent downloading (0: cache hit).",
        )
        fetched = "Bytes the storage initializer downloaded."
        self.download_bytes = Counter("kinfer_model_download_bytes", fetched, ["model"], registry=r).labels(
            model
        )
        hits = "1 when the node's model cache served the model."
        self.cache_hits = Counter("kinfer_model_cache_hits", hits, ["model"], registry=r).labels(model)

    def model_fetched(self, report: dict[str, object]) -> None:
        """The storage initializer's .kinfer-fetch.json."""
        self.download_seconds.set(float(report.get("download_seconds", 0.0)))  # type: ignore[arg-type]
        self.download_bytes.inc(int(report.get("bytes", 0)))  # type: ignore[call-overload]
        if report.get("cache_hit"):
            self.cache_hits.inc()

    # BatchObserver
    def queue_depth(self, rows: int) -> None:
        self._depth.set(rows)

    def batch(self, rows: int, queue_s: Sequence[float], compute_s: float) -> None:
        self._batch.observe(rows)
        self._forward_seconds.inc(compute_s)
        self._rows_squared.inc(rows * rows)
        for q in queue_s:
            self._queue.observe(q)
            self._compute.observe(compute_s)

    # TokenObserver (engine)
    def sequences(self, running: int, waiting: int, tokens_in_flight: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._tokens_in_flight.set(tokens_in_flight)
        self._depth.set(waiting)

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        self._ttft.observe(seconds)
        self._prompt_tokens.inc(prompt_tokens)
        self._generated.inc()

    def output_token(self, seconds: float) -> None:
        self._tpot.observe(seconds)
        self._generated.inc()

    # front ends
    def request_started(self) -> None:
        self._inflight.inc()

    def request_finished(self, code: int, seconds: float, timed: bool = True) -> None:
        self._inflight.dec()
        if timed:
            self._total.observe(seconds)
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(self.model, str(code))
        counter.inc()

    # shadow (called from its worker threads; prometheus-client is thread-safe)
    def shadow_compared(self, max_abs_diff: float, rows: int, argmax_agree: int) -> None:
        self._shadow_diff.observe(max_abs_diff)
        self._shadow_rows.inc(rows)
        self._shadow_agree.inc(argmax_agree)
        self._shadow_comparisons.inc()

    def shadow_compared_tokens(self, first_difference: int | None) -> None:
        """One greedy answer compared: one row, agreeing when identical (first_difference None)."""
        same = first_difference is None
        self._shadow_diff.observe(0.0 if same else math.inf)
        if first_difference is not None:
            self._shadow_first_difference.observe(first_difference)
        self._shadow_rows.inc()
        self._shadow_agree.inc(1 if same else 0)
        self._shadow_comparisons.inc()

    def shadow_error(self, reason: str) -> None:
        self._shadow_errors[reason].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
