"""Runtime settings from flags, then `KINFER_*` environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Settings:
    model_uri: str
    model_name: str = ""  # default: the model directory's name
    model_version: str = "1"
    host: str = "127.0.0.1"  # loopback; the operator's pods pass --host=0.0.0.0
    http_port: int = 8000
    grpc_port: int = 8001  # -1 disables gRPC
    metrics_port: int = -1  # -1: served on the HTTP port at /metrics
    max_batch_size: int = 0  # 0: the signature's max_batch_size
    max_delay_ms: float = 5.0
    max_queue: int = 512
    request_timeout_ms: float = 0.0  # 0: no default deadline
    drain_delay_s: float = 3.0
    drain_timeout_s: float = 25.0
    drain_linger_s: float = 0.5
    device: str = "auto"
    warmup: bool = True
    log_level: str = "info"
    event_loop: str = "uvloop"
    shadow_url: str = ""  # empty: no shadowing (canary drift check off)
    shadow_rate: float = 1.0  # shadow requests per second, at most
    shadow_timeout_ms: float = 5000.0


_HELP = {
    "model_uri": "model directory or file: file:///models/m or /mnt/models/m (signature.json beside it)",
    "model_name": "name served under /v2/models/{name} (default: the model directory's name)",
    "model_version": "version reported and accepted in .../versions/{v}",
    "host": "address to listen on (HTTP, gRPC and metrics); 0.0.0.0 = every interface",
    "http_port": "HTTP port (0 = any free port, printed in the 'listening' log line)",
    "grpc_port": "gRPC port (0 = any free port, -1 = no gRPC)",
    "metrics_port": "port for /metrics (-1 = the HTTP port)",
    "max_batch_size": "rows per forward and most rows one request may send (0 = the signature's "
    "max_batch_size; capped by it)",
    "max_delay_ms": "longest wait for a batch to fill before it runs",
    "max_queue": "rows allowed to wait; beyond it answer 429 / RESOURCE_EXHAUSTED",
    "request_timeout_ms": "default per-request deadline (0 = none); 504 / DEADLINE_EXCEEDED",
    "drain_delay_s": "after SIGTERM: keep accepting this long (readiness is already false)",
    "drain_timeout_s": "after that: longest wait for accepted requests to finish",
    "drain_linger_s": "idle keep-alive connections get this long to send a last request",
    "device": "auto (cuda when available), cpu, cuda, cuda:N",
    "warmup": "run a warm-up batch before turning ready (KINFER_WARMUP=0 disables)",
    "log_level": "debug, info, warning, error",
    "event_loop": "uvloop or asyncio",
    "shadow_url": "canary drift check: the stable track's HTTP v2 base URL, e.g. "
    "http://ranker-stable.search.svc:8080; a sample of successful requests is sent there too and "
    "the answers compared in kinfer_shadow_* metrics (empty = off)",
    "shadow_rate": "most shadow requests per second (> 0; token bucket, burst 1)",
    "shadow_timeout_ms": "timeout of one shadow request (> 0)",
}


_CONVERTERS: dict[str, type[int] | type[float] | type[str]] = {
    "int": int,
    "float": float,
    "str": str,
}


def env_name(field: str) -> str:
    return "KINFER_" + field.upper()


def _bool(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off", "")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinfer-runtime",
        description="Serve one model over the Open Inference Protocol v2 (REST and gRPC) with "
        "dynamic batching. Every flag also reads KINFER_<FLAG> (e.g. KINFER_HTTP_PORT).",
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = env.get(env_name(f.name))
        help_text = f"{_HELP[f.name]} [env {env_name(f.name)}]"
        if f.type == "bool" or isinstance(f.default, bool):
            value = _bool(default) if default is not None else f.default
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=value,
                help=help_text,
            )  # fmt: skip
            continue
        conv = _CONVERTERS[str(f.type)]
        required = f.name == "model_uri" and default is None
        parser.add_argument(
            flag, dest=f.name, type=conv, required=required,
            default=conv(default) if default is not None else f.default,
            help=help_text + ("" if required else " (default: %(default)s)"),
        )  # fmt: skip
    return parser


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    parser = build_parser(os.environ if env is None else env)
    ns = parser.parse_args(argv)
    settings = Settings(**vars(ns))
    if settings.max_delay_ms < 0 or settings.max_queue < 1 or settings.max_batch_size < 0:
        parser.error("--max-delay-ms >= 0, --max-queue >= 1 and --max-batch-size >= 0 required")
    if settings.shadow_rate <= 0 or settings.shadow_timeout_ms <= 0:
        parser.error(
            f"--shadow-rate must be > 0 (got {settings.shadow_rate}) and --shadow-timeout-ms > 0 "
            f"(got {settings.shadow_timeout_ms})"
        )
    if settings.shadow_url and not settings.shadow_url.startswith(("http://", "https://")):
        parser.error(f"--shadow-url must start with http:// or https:// (got {settings.shadow_url!r})")
    return settings
