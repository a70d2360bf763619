"""Process lifecycle: listen, load, warm up, turn ready, serve; on SIGTERM drain and return.

Live answers 200 from the first moment; ready turns true only after the warm-up batch, and
false again the instant SIGTERM arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kinfer_runtime.batching import Batcher
from kinfer_runtime.engine import Engine
from kinfer_runtime.metrics import RuntimeMetrics
from kinfer_runtime.model import (
    GenerativeSignature,
    Model,
    ModelConfigError,
    example_inputs,
    generative_signature,
    load_model,
    locate,
)
from kinfer_runtime.protocol.dataplane import DataPlane
from kinfer_runtime.protocol.generative import GenerativePlane
from kinfer_runtime.protocol.grpc import start_grpc
from kinfer_runtime.protocol.rest import RestApp, RestServer
from kinfer_runtime.scheduler import Scheduler
from kinfer_runtime.settings import Settings
from kinfer_runtime.shadow import GreedyShadow, Shadow

log = logging.getLogger("kinfer_runtime")


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0 after a clean drain)."""
    loop = asyncio.get_running_loop()
    try:
        gen_sig = generative_signature(settings.model_uri)
        if gen_sig is None:
            model_file, sig = locate(settings.model_uri)
            directory = model_file.parent
    except ModelConfigError as exc:
        log.error(str(exc))
        return 2
    if gen_sig is not None:
        directory = gen_sig.directory
    name = settings.model_name or Path(directory).name
    metrics = RuntimeMetrics(name)
    _fetch_report(Path(directory), metrics)
    plane: DataPlane | GenerativePlane
    if gen_sig is not None:
        plane = GenerativePlane(name, settings.model_version, gen_sig, track=settings.track)
    else:
        plane = DataPlane(name, settings.model_version, sig, track=settings.track)
    if settings.request_timeout_ms > 0 and isinstance(plane, DataPlane):
        plane.default_timeout_s = settings.request_timeout_ms / 1000
    shadow = None
    greedy_shadow = None
    if settings.shadow_url and isinstance(plane, GenerativePlane):
        greedy_shadow = GreedyShadow(
            settings.shadow_url, name, metrics, rate=settings.shadow_rate,
            timeout_s=settings.shadow_timeout_ms / 1000, greedy=plane.greedy,
        )  # fmt: skip
        plane.shadow = greedy_shadow
        log.info("shadowing on (greedy answers compared token by token)",
                 extra={"shadow_url": greedy_shadow.url, "shadow_rate": settings.shadow_rate})  # fmt: skip
    if settings.shadow_url and isinstance(plane, DataPlane):
        shadow = Shadow(settings.shadow_url, name, metrics, rate=settings.shadow_rate,
                        timeout_s=settings.shadow_timeout_ms / 1000)  # fmt: skip
        plane.shadow = shadow
        log.info(
            "shadowing on",
            extra={"shadow_url": shadow.url, "shadow_rate": settings.shadow_rate,
                   "shadow_timeout_ms": settings.shadow_timeout_ms, "max_inflight": shadow.max_inflight},
        )  # fmt: skip

    same_port = settings.metrics_port < 0 or settings.metrics_port == settings.http_port
    rest = RestServer(RestApp(plane, metrics, serve_metrics=same_port))
    http_port = await rest.start(settings.host, settings.http_port)
    metrics_server = None
    metrics_port = http_port
    if not same_port:
        metrics_server = RestServer(RestApp(plane, metrics, metrics_only=True))
        metrics_port = await metrics_server.start(settings.host, settings.metrics_port)
    grpc_server = None
    grpc_port = -1
    if settings.grpc_port >= 0:
        grpc_server, grpc_port = await start_grpc(
            plane, metrics, _grpc_host(settings.host), settings.grpc_port
        )
    log.info(
        "listening",
        extra={"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
               "host": settings.host, "model": name},
    )  # fmt: skip

    stop = asyncio.Event()
    for sig_no in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig_no, stop.set)

    # one worker thread runs load, warm-up and every forward (torch state stays on one thread)
    executor = ThreadPoolExecutor(1, thread_name_prefix="kinfer-forward")
    batcher: Batcher | None = None
    engine: Engine | None = None
    load: asyncio.Future[Any]
    if gen_sig is not None:
        load = loop.run_in_executor(executor, _load_generative, settings, gen_sig, name)
    else:
        load = loop.run_in_executor(executor, _load_and_warm, settings, name, metrics)
    stop_wait: asyncio.Future[Any] = loop.create_task(stop.wait())
    await asyncio.wait([load, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    code = 0
    if load.done():
        try:
            model = load.result()
        except Exception as exc:  # any load or warm-up failure: say why, exit non-zero
            log.error("model failed to load: %s", exc, exc_info=not isinstance(exc, ModelConfigError))
            code = 1
            stop.set()
        else:
            if isinstance(plane, GenerativePlane):
                engine = _start_engine(model, plane, settings, executor, metrics)
            else:
                batcher = _start_batcher(model, plane, settings, executor, metrics)
    await stop.wait()

    # drain: unready now, keep accepting while endpoints update, then finish and close
    plane.draining = True
    log.info("draining", extra={"delay_s": settings.drain_delay_s})
    if code == 0:
        await asyncio.sleep(settings.drain_delay_s)
    waits = [rest.drain(settings.drain_linger_s, settings.drain_timeout_s)]
    if grpc_server is not None:
        waits.append(grpc_server.stop(settings.drain_timeout_s))
    await asyncio.gather(*waits)
    if batcher is not None:
        await batcher.stop()
    if greedy_shadow is not None:
        await greedy_shadow.close()
    if engine is not None:
        await engine.stop()
    if shadow is not None:
        shadow.close()
    if metrics_server is not None:
        await metrics_server.drain(0.0, 1.0)
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped", extra={"exit_code": code})
    return code


def _start_batcher(model: Model, plane: DataPlane, settings: Settings, executor: ThreadPoolExecutor,
                   metrics: RuntimeMetrics) -> Batcher:  # fmt: skip
    sig = model.signature
    mbs = settings.max_batch_size or sig.max_batch_size or 1
    if sig.max_batch_size:
        mbs = min(mbs, sig.max_batch_size)
    batcher = Batcher(
        model.forward,
        max_batch_size=mbs,
        max_delay_s=settings.max_delay_ms / 1000,
        max_queue_rows=settings.max_queue,
        concatenate=sig.batched,
        executor=executor,
        observer=metrics,
        # inline forwards only on CPU: CUDA state (current device, streams) is per thread
        inline_below_s=settings.inline_forward_ms / 1000 if model.device == "cpu" else 0.0,
    )
    batcher.start()
    plane.model_loaded(batcher)
    log.info("ready", extra={"device": model.device, "max_batch_size": mbs})
    return batcher


def _start_engine(model: Any, plane: GenerativePlane, settings: Settings, executor: ThreadPoolExecutor,
                  metrics: RuntimeMetrics) -> Engine:  # fmt: skip
    sig = plane.signature
    budget = settings.max_tokens_in_flight or settings.max_sequences * sig.context_length
    scheduler = Scheduler(
        context_length=sig.context_length, max_new_tokens=sig.max_new_tokens,
        max_sequences=settings.max_sequences, max_tokens_in_flight=budget,
        max_waiting=settings.max_queue, eos_token_id=model.eos_token_id, detokenize=model.decode,
    )  # fmt: skip
    engine = Engine(model, scheduler, executor, metrics)
    engine.start()
    plane.model_loaded(model, engine)
    log.info("ready", extra={"device": model.device, "max_sequences": settings.max_sequences,
                             "max_tokens_in_flight": budget})  # fmt: skip
    return engine


def _load_generative(settings: Settings, sig: GenerativeSignature, name: str) -> Any:
    from kinfer_runtime import torch_model  # torch and transformers: only for torch models

    model = torch_model.CausalLM(sig, settings.device)
    if settings.warmup:
        model.warm_up()
    log.info("model loaded", extra={"model": name, "format": "generative", "device": model.device})
    return model


def _fetch_report(directory: Path, metrics: RuntimeMetrics) -> None:
    """What the storage initializer did (kinfer-runtime fetch writes it beside the model)."""
    for candidate in (directory, directory.parent):
        report = candidate / ".kinfer-fetch.json"
        if report.is_file():
            try:
                doc = json.loads(report.read_text())
            except (OSError, ValueError):
                return
            metrics.model_fetched(doc)
            log.info(
                "model fetched",
                extra={k: doc.get(k) for k in ("uri", "cache_hit", "bytes", "download_seconds")},
            )
            return


def _load_and_warm(settings: Settings, name: str, metrics: RuntimeMetrics | None = None) -> Model:
    t0 = time.monotonic()
    model = load_model(settings.model_uri, settings.device)
    loaded = time.monotonic()
    if metrics is not None:
        metrics.load_seconds.set(loaded - t0)
    sig = model.signature
    if settings.warmup:
        sizes = {1, settings.max_batch_size or sig.max_batch_size or 1} if sig.batched else {1}
        for rows in sorted(sizes):
            model.forward(example_inputs(sig, min(rows, sig.max_batch_size) if sig.batched else 1))
    if metrics is not None:
        metrics.warmup_seconds.set(time.monotonic() - loaded)
    timings = {"load_s": round(loaded - t0, 3), "warmup_s": round(time.monotonic() - loaded, 3)}
    log.info("model loaded", extra={"model": name, "format": sig.format, "device": model.device, **timings})
    return model
