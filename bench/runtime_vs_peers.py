"""kinfer-runtime vs NVIDIA Triton (pytriton) vs KServe ModelServer vs in-process torch.

One command, loopback only, bounded in time:

    .venv/bin/python bench/runtime_vs_peers.py            # full table (~6 min on 2 cores)
    .venv/bin/python bench/runtime_vs_peers.py --quick    # 1 model, HTTP, short cells

Every server gets the same TorchScript model and the same load client (tritonclient HTTP with
binary tensors, and gRPC; closed loop, fixed concurrency, fixed duration). Only one server runs at
a time. Peers run from their own venvs under ~/.cache/kinfer/bench-venvs/ (see bench/runtime.md);
a peer whose venv is missing or that fails to start is reported as missing, with the reason.
The last line is the summary: req/s at concurrency 32 with batching (MLP over HTTP) for the
Triton and KServe ratios, rows/s of the heavier model vs the in-process limit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("KINFER_BENCH_VENVS", Path.home() / ".cache/kinfer/bench-venvs"))
HOST = "127.0.0.1"  # loopback only, always
MAX_BATCH = 32
DELAY_MS = 0.0  # Triton's default: batch whatever is queued when the model is free

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"in": [64], "out": [10]},
    "cnn": {"in": [3, 64, 64], "out": [10]},
}


def build_models(directory: Path) -> None:
    import torch

    torch.manual_seed(0)
    nets = {
        "mlp": torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        ),
        "cnn": torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 10),
        ),
    }
    for name, net in nets.items():
        d = directory / name
        d.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(net.eval()).save(str(d / "model.pt"))
        shapes = MODELS[name]
        (d / "signature.json").write_text(json.dumps({
            "format": "torchscript", "max_batch_size": MAX_BATCH,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *shapes["in"]]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, *shapes["out"]]}],
        }))  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- peers

PYTRITON_SERVER = r"""
import sys, numpy as np, torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
path, name, http_port, grpc_port, metrics_port, delay_us, in_shape, out_shape = sys.argv[1:9]
torch.set_num_threads(int(__import__("os").environ.get("BENCH_TORCH_THREADS", "2")))
model = torch.jit.load(path).eval()

@batch
def infer(x):
    with torch.inference_mode():
        return {"y": model(torch.from_numpy(x)).numpy()}

config = TritonConfig(http_address="127.0.0.1", http_port=int(http_port),
                      grpc_address="127.0.0.1", grpc_port=int(grpc_port),
                      metrics_port=int(metrics_port), allow_metrics=False)
def dims(text):
    return tuple(int(d) for d in text.split(","))

with Triton(config=config) as triton:
    triton.bind(model_name=name, infer_func=infer,
                inputs=[Tensor(name="x", dtype=np.float32, shape=dims(in_shape))],
                outputs=[Tensor(name="y", dtype=np.float32, shape=dims(out_shape))],
                config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(
                    max_queue_delay_microseconds=int(delay_us))))
    triton.serve()
"""

KSERVE_SERVER = r"""
import os, sys, numpy as np, torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
path, name, http_port, grpc_port = sys.argv[1:5]
torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))

class TorchModel(Model):
    def __init__(self):
        super().__init__(name)
        self.net = torch.jit.load(path).eval()
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy()
        with torch.inference_mode():
            y = self.net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        # binary: REST answers with the binary extension, gRPC with raw_output_contents
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(model_name=name, infer_outputs=[out], response_id=payload.id or "0")

ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), workers=1,
            enable_docs_url=False).start([TorchModel()])
"""


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes] | None
    http: str
    grpc: str
    log: Path
    note: str = ""


def wait_ready(url: str, proc: subprocess.Popen[bytes], model: str, timeout: float) -> bool:
    import http.client

    host, port = url.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", f"/v2/models/{model}/ready")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def start(kind: str, model: str, model_dir: Path, logs: Path, threads: int) -> Running:
    http_port, grpc_port = free_port(), free_port()
    http, grpc = f"{HOST}:{http_port}", f"{HOST}:{grpc_port}"
    log = logs / f"{kind}-{model}.log"
    env = {**os.environ, "BENCH_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    shapes = MODELS[model]
    if kind.startswith("kinfer"):
        batch = kind == "kinfer"
        cmd = [sys.executable, "-m", "kinfer_runtime", "--model-uri", str(model_dir / model),
               "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--max-batch-size", str(MAX_BATCH if batch else 1),
               "--max-delay-ms", str(DELAY_MS if batch else 0), "--max-queue", "4096",
               "--drain-delay-s", "0", "--log-level", "warning"]  # fmt: skip
    elif kind == "triton":
        py = VENVS / "triton/bin/python"
        if not py.exists():
            return Running(kind, None, http, grpc, log, f"no venv at {py.parent.parent}")
        # the Python backend stub embeds libpython: make it load the same one as this venv
        libdir = Path(os.path.realpath(py)).parent.parent / "lib"
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
        cmd = [str(py), "-c", PYTRITON_SERVER, str(model_dir / model / "model.pt"), model,
               str(http_port), str(grpc_port), str(free_port()), str(int(DELAY_MS * 1000)),
               ",".join(map(str, shapes["in"])), ",".join(map(str, shapes["out"]))]  # fmt: skip
    elif kind == "kserve":
        py = VENVS / "kserve/bin/python"
        if not py.exists():
            return Running(kind, None, http, grpc, log, f"no venv at {py.parent.parent}")
        cmd = [str(py), "-c", KSERVE_SERVER, str(model_dir / model / "model.pt"), model,
               str(http_port), str(grpc_port)]  # fmt: skip
    else:
        raise ValueError(kind)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    run = Running(kind, proc, http, grpc, log)
    if not wait_ready(http, proc, model, timeout=120):
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        stop(run)
        run.proc, run.note = None, "failed to start: " + " | ".join(tail)[-300:]
    return run


def stop(run: Running) -> None:
    if run.proc is None or run.proc.poll() is not None:
        return
    try:
        os.killpg(run.proc.pid, signal.SIGTERM)
        run.proc.wait(20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(5)


# ---------------------------------------------------------------- load client


def _worker(args: tuple[str, str, str, list[int], int, float, Any]) -> tuple[int, list[float], int]:
    protocol, url, model, in_shape, threads, duration, barrier = args
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    x = np.random.default_rng(0).standard_normal((1, *in_shape)).astype(np.float32)
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def loop(i: int) -> None:
        mod: Any = thttp if protocol == "http" else tgrpc
        client = mod.InferenceServerClient(url)
        inp = mod.InferInput("x", list(x.shape), "FP32")
        if protocol == "http":
            inp.set_data_from_numpy(x, binary_data=True)
            outs = [thttp.InferRequestedOutput("y", binary_data=True)]
        else:
            inp.set_data_from_numpy(x)
            outs = [tgrpc.InferRequestedOutput("y")]
        end = time.monotonic() + duration
        while (t0 := time.monotonic()) < end:
            try:
                client.infer(model, [inp], outputs=outs).as_numpy("y")
                lat[i].append(time.monotonic() - t0)
            except Exception:
                errors[i] += 1
                if errors[i] > 1000:
                    return

    barrier.wait()
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [v for part in lat for v in part]
    return len(flat), flat, sum(errors)


@dataclass
class Cell:
    req_s: float = 0.0
    rows_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    runs: list[float] = field(default_factory=list)


def load(protocol: str, url: str, model: str, concurrency: int, duration: float) -> Cell:
    procs = min(concurrency, 4)  # several client processes: one Python client can't fill 32
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs)
        with ctx.Pool(procs) as pool:
            parts = pool.map(_worker, [(protocol, url, model, MODELS[model]["in"], n, duration,
                                         barrier) for n in per])  # fmt: skip
    lat = sorted(v for _, p, _ in parts for v in p)
    n = len(lat)
    if not n:
        return Cell(errors=sum(e for *_, e in parts))
    return Cell(n / duration, n / duration, lat[n // 2] * 1e3, lat[min(n - 1, int(n * 0.99))] * 1e3,
                sum(e for *_, e in parts))  # fmt: skip


def limit(model_dir: Path, model: str, batch: int, duration: float, threads: int) -> float:
    """In-process torch forward rows/s at a batch size (no server, no client)."""
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(model_dir / model / "model.pt")).eval()
    x = torch.randn(batch, *MODELS[model]["in"])
    with torch.inference_mode():
        for _ in range(10):
            net(x)
        n, end = 0, time.monotonic() + duration
        while time.monotonic() < end:
            net(x)
            n += 1
    return n * batch / duration


# ---------------------------------------------------------------- main


def median_cell(cells: list[Cell]) -> Cell:
    def med(f: Callable[[Cell], float]) -> float:
        return statistics.median(f(c) for c in cells)

    return Cell(med(lambda c: c.req_s), med(lambda c: c.rows_s), med(lambda c: c.p50_ms),
                med(lambda c: c.p99_ms), sum(c.errors for c in cells),
                [c.req_s for c in cells])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--servers", default="kinfer,kinfer-nobatch,triton,kserve")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per cell")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the table shows medians")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every server")
    ap.add_argument("--quick", action="store_true", help="mlp, http, c=1,32, 2 s cells")
    a = ap.parse_args()
    if a.quick:
        a.models, a.protocols, a.concurrency, a.duration = "mlp,cnn", "http", "1,32", 2.0
    servers, models = a.servers.split(","), a.models.split(",")
    protocols, concs = a.protocols.split(","), [int(c) for c in a.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kinfer-bench-"))
    build_models(tmp / "models")
    results: dict[tuple[str, str, str, int], Cell] = {}
    notes: dict[str, str] = {}
    for model in models:
        for kind in servers:
            run = start(kind, model, tmp / "models", tmp, a.threads)
            if run.proc is None:
                notes[kind] = run.note
                print(f"# {kind}: missing ({run.note})", flush=True)
                continue
            try:
                for protocol in protocols:
                    url = run.http if protocol == "http" else run.grpc
                    load(protocol, url, model, 4, 1.0)  # warm connections and caches
                    for c in concs:
                        cells = [load(protocol, url, model, c, a.duration) for _ in range(a.repeat)]
                        cell = results[(model, kind, protocol, c)] = median_cell(cells)
                        print(f"# {model:4} {kind:15} {protocol:5} c={c:<3} {cell.req_s:9.1f} req/s"
                              f" p50 {cell.p50_ms:7.2f} ms p99 {cell.p99_ms:7.2f} ms"
                              f" errors {cell.errors}", flush=True)  # fmt: skip
            finally:
                stop(run)
    limits = {(m, b): limit(tmp / "models", m, b, a.duration / 2, a.threads)
              for m in models for b in (1, 8, 32)}  # fmt: skip

    print()
    print("| model | server | proto | conc | req/s | rows/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (model, kind, protocol, c), cell in results.items():
        print(f"| {model} | {kind} | {protocol} | {c} | {cell.req_s:.0f} | {cell.rows_s:.0f} | "
              f"{cell.p50_ms:.2f} | {cell.p99_ms:.2f} | {cell.errors} |")  # fmt: skip
    print()
    print("| model | in-process torch rows/s at batch 1 / 8 / 32 |")
    print("| --- | --- |")
    for m in models:
        print(f"| {m} | {' / '.join(f'{limits[(m, b)]:.0f}' for b in (1, 8, 32))} |")
    for kind, note in notes.items():
        print(f"\n{kind} missing: {note}")

    def ratio(num: tuple[str, str, str, int], den: tuple[str, str, str, int] | float) -> str:
        a_ = results.get(num)
        b_ = results.get(den) if isinstance(den, tuple) else None
        d = b_.req_s if b_ else (den if isinstance(den, float) else 0.0)
        return f"{a_.req_s / d:.2f}" if a_ and d else "n/a"

    top = max(concs)
    heavy = "cnn" if "cnn" in models else models[-1]
    light = "mlp" if "mlp" in models else models[0]
    proto = protocols[0]
    print()
    print(
        f"kinfer/triton={ratio((light, 'kinfer', proto, top), (light, 'triton', proto, top))} "
        f"kinfer/kserve={ratio((light, 'kinfer', proto, top), (light, 'kserve', proto, top))} "
        f"kinfer/limit={ratio((heavy, 'kinfer', proto, top), limits.get((heavy, 32), 0.0))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
