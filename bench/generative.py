"""Generative serving: kinfer-runtime's continuous batching vs one-at-a-time transformers generate.

One command, loopback only, bounded in count:

    .venv/bin/python bench/generative.py             # 16 streams x 4 requests, 64 new tokens each
    .venv/bin/python bench/generative.py --quick     # 16 streams x 1 request, 32 new tokens

Same model (a GPT-2-style config with random weights, built here with save_pretrained; no
download), same prompts, same greedy decoding, same box, one after another:

1. baseline: what a plain model server does, one request at a time with `model.generate` (the
   16 x R requests in a row, in this process, on the same thread count as the runtime);
2. kinfer single stream: one streaming client against kinfer-runtime, one request at a time;
3. kinfer 16 streams: 16 concurrent streaming clients (OpenAI /v1/completions, SSE).

Tokens/s counts generated tokens (the usage of each answer) over the wall time of the run.
Time to first token (TTFT) is measured by the client: request sent -> first SSE chunk with text.
The last line is the summary: the tokens/s ratio (goal >= 4) and p99 TTFT at 16 streams over the
single-stream p99 (goal <= 2).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, always
sys.path[:0] = [str(ROOT), str(ROOT / "runtime")]

PROMPTS = [
    "the quick brown fox jumps over",
    "a model server streams tokens",
    "kubernetes schedules pods onto nodes with",
    "hello world, hello kinfer",
]


def build(directory: Path, context: int, new_tokens: int) -> Path:
    from tests.kinfer_runtime import models

    # ~7 M parameters: small enough for 2 CPU cores, big enough that a step is real work
    return models.make_tiny_lm(
        directory / "bench-lm", context_length=context, max_new_tokens=new_tokens,
        n_embd=256, n_layer=6, n_head=8, initializer_range=0.02,
    )  # fmt: skip


def load_baseline(model_dir: Path) -> tuple[Any, Any]:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    with torch.inference_mode():
        model.generate(torch.tensor([tok.encode("warm up")]), max_new_tokens=4, do_sample=False)
    return tok, model


def baseline(loaded: tuple[Any, Any], prompts: list[str], new_tokens: int) -> dict[str, float]:
    """One request at a time with transformers' generate (greedy), like a plain model server."""
    import torch

    tok, model = loaded
    eos = model.config.eos_token_id
    with torch.inference_mode():
        tokens = 0
        latencies = []
        started = time.perf_counter()
        for prompt in prompts:
            t0 = time.perf_counter()
            ids = torch.tensor([tok.encode(prompt)])
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                                 pad_token_id=eos)  # fmt: skip
            tokens += out.shape[1] - ids.shape[1]
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_request_s": statistics.median(latencies)}  # fmt: skip


def start_runtime(model_dir: Path, logs: Path, threads: int) -> tuple[subprocess.Popen[bytes], int]:
    log = logs / "runtime.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT / 'runtime'}"}
    cmd = [sys.executable, "-m", "kinfer_runtime", "--model-uri", str(model_dir), "--host", HOST,
           "--http-port", "0", "--grpc-port", "-1", "--max-sequences", "32",
           "--drain-delay-s", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600  # a loaded machine imports torch slowly
    port = 0
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            if doc.get("msg") == "listening":
                port = doc["http_port"]
            if doc.get("msg") == "ready" and port:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"runtime did not become ready:\n{log.read_text()}")


def stream_once(port: int, prompt: str, new_tokens: int) -> tuple[float, int]:
    """One streamed completion: (TTFT seconds, completion tokens)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    body = json.dumps({"model": "bench-lm", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True})  # fmt: skip
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {resp.read()!r}")
    ttft = None
    used = 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        doc = json.loads(line[6:])
        if ttft is None and doc["choices"]:  # the first chunk (random weights make odd bytes)
            ttft = time.perf_counter() - t0
        if doc.get("usage"):
            used = doc["usage"]["completion_tokens"]
    conn.close()
    return (ttft if ttft is not None else time.perf_counter() - t0), used


def clients(port: int, streams: int, per_stream: int, new_tokens: int) -> dict[str, float]:
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for r in range(per_stream):
                ttft, used = stream_once(port, PROMPTS[(i + r) % len(PROMPTS)], new_tokens)
                with lock:
                    ttfts.append(ttft)
                    tokens[0] += used
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    ttfts.sort()
    return {"tokens": tokens[0], "wall_s": wall, "tokens_per_s": tokens[0] / wall,
            "p50_ttft_ms": 1000 * statistics.median(ttfts),
            "p99_ttft_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]}  # fmt: skip


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per stream")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides (default 1)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of the three runs, interleaved; medians"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.new_tokens = 1, 32
    threads = args.threads
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build(Path(tmp), context=256, new_tokens=max(args.new_tokens, 64))
        n = args.streams * args.requests
        k = min(n, 16)  # requests of the one-at-a-time runs (their rate does not depend on it)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(k)]
        loaded = load_baseline(model_dir)
        proc, port = start_runtime(model_dir, Path(tmp), threads)
        rounds: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
        try:
            stream_once(port, "warm up", 8)
            for _ in range(args.repeat):  # interleaved, so a load change on the box hits all three
                rounds.append((
                    baseline(loaded, prompts, args.new_tokens),
                    clients(port, 1, k, args.new_tokens),
                    clients(port, args.streams, args.requests, args.new_tokens),
                ))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(30)
    base, single, many = (median_run([r[i] for r in rounds]) for i in range(3))
    print(f"model: GPT-2 config n_embd=256 n_layer=6 (random weights), {args.new_tokens} new tokens, "
          f"greedy, torch threads {threads}, medians of {args.repeat} interleaved rounds")  # fmt: skip
    print(f"{'run':<44}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}{'p50 TTFT ms':>13}{'p99 TTFT ms':>13}")
    rows: list[tuple[str, dict[str, Any]]] = [
        (f"transformers generate, 1 at a time ({k} req)", base),
        (f"kinfer, 1 stream ({k} req)", single),
        (f"kinfer, {args.streams} streams ({n} req)", many),
    ]
    for name, r in rows:
        p50 = f"{r['p50_ttft_ms']:.1f}" if "p50_ttft_ms" in r else "-"
        p99 = f"{r['p99_ttft_ms']:.1f}" if "p99_ttft_ms" in r else "-"
        print(f"{name:<44}{r['tokens']:>8}{r['wall_s']:>9.2f}{r['tokens_per_s']:>10.1f}{p50:>13}{p99:>13}")
    ratio = many["tokens_per_s"] / base["tokens_per_s"]
    ttft_ratio = many["p99_ttft_ms"] / single["p99_ttft_ms"]
    print(f"tokens_per_s_ratio={ratio:.2f} (goal >= 4) p99_ttft_ratio={ttft_ratio:.2f} (goal <= 2) "
          f"single_stream_vs_generate={single['tokens_per_s'] / base['tokens_per_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
