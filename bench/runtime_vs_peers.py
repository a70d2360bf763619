"""kinfer-runtime vs NVIDIA Triton vs PyTriton vs KServe, with compiled load clients.

One command, loopback only, bounded in time (see bench/runtime.md for the peers' setup):

    .venv/bin/python bench/runtime_vs_peers.py                 # the table in bench/runtime.md
    .venv/bin/python bench/runtime_vs_peers.py --servers kinfer --concurrency 8,32 --repeat 1

Every server serves the same TorchScript MLP (64 -> 256 -> 10) with the same number of torch
threads; one server runs at a time. Load: vegeta (HTTP, binary tensor extension) and ghz (gRPC,
raw_input_contents), closed loop with C workers for a fixed time, built from the Go module proxy
by `bash bench/install.sh`. Per cell: req/s, rows/s, p50/p99, server CPU-seconds per 1,000
requests (every process of the server's session) and the load client's CPU-seconds; each cell is
the median of --repeat runs. Before the load, one request per server and protocol is checked
against torch in this process. The last line compares the servers (see SUMMARY in main()).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KINFER_CACHE", Path.home() / ".cache/kinfer"))
VENVS = Path(os.environ.get("KINFER_BENCH_VENVS", CACHE / "bench-venvs"))
VEGETA = CACHE / "bin/vegeta-v12.13.0/vegeta"
GHZ = CACHE / "bin/ghz-v0.93.0/ghz"
HOST = "127.0.0.1"  # loopback only, always
MAX_BATCH = 32
IN, OUT = 64, 10
MODEL = "mlp"


def build_model(directory: Path) -> Path:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(IN, 256), torch.nn.ReLU(), torch.nn.Linear(256, OUT))
    d = directory / MODEL
    d.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript: what every peer loads
        torch.jit.script(net.eval()).save(str(d / "model.pt"))
    (d / "signature.json").write_text(json.dumps({
        "format": "torchscript", "max_batch_size": MAX_BATCH,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, IN]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, OUT]}],
    }))  # fmt: skip
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- peers

# Triton's Python backend running the TorchScript file, batching as its docs show: one
# execute() gets every request of a dynamic batch, runs one forward, splits the rows back.
TRITON_MODEL_PY = r"""
import os
import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
        self.net = torch.jit.load(os.path.join(os.path.dirname(__file__), "model.pt")).eval()

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        with torch.inference_mode():
            y = self.net(torch.from_numpy(np.concatenate(xs))).numpy()
        out, start = [], 0
        for x in xs:
            rows = y[start:start + len(x)]
            start += len(x)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", rows)]))
        return out
"""

TRITON_CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: {MAX_BATCH}
dynamic_batching {{ }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {IN} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {OUT} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

PYTRITON_SERVER = r"""
import os, sys, numpy as np, torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
path, name, http_port, grpc_port, metrics_port = sys.argv[1:6]
torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))
net = torch.jit.load(path).eval()

@batch
def infer(x):
    with torch.inference_mode():
        return {"y": net(torch.from_numpy(x)).numpy()}

config = TritonConfig(http_address="127.0.0.1", http_port=int(http_port),
                      grpc_address="127.0.0.1", grpc_port=int(grpc_port),
                      metrics_port=int(metrics_port), allow_metrics=False)
with Triton(config=config) as triton:
    triton.bind(model_name=name, infer_func=infer,
                inputs=[Tensor(name="x", dtype=np.float32, shape=(64,))],
                outputs=[Tensor(name="y", dtype=np.float32, shape=(10,))],
                config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()))
    triton.serve()
"""

# KServe's custom-model pattern with an async predict, as its docs recommend.
KSERVE_SERVER = r"""
import os, sys, numpy as np, torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
path, name, http_port, grpc_port = sys.argv[1:5]
torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))

class TorchModel(Model):
    def __init__(self):
        super().__init__(name)
        self.net = torch.jit.load(path).eval()
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        with torch.inference_mode():
            y = self.net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=True)  # REST: binary extension; gRPC: raw
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
    note: str = ""


def triton_home() -> Path:
    """The tritonserver shipped inside the nvidia-pytriton wheel."""
    return VENVS / "triton/lib/python3.11/site-packages/pytriton/tritonserver"


def start(kind: str, model_dir: Path, work: Path, threads: int) -> Running:
    http_port, grpc_port = free_port(), free_port()
    http, grpc = f"{HOST}:{http_port}", f"{HOST}:{grpc_port}"
    env = {**os.environ, "BENCH_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    # the peers' Python (backend stub, pytriton, kserve) embeds libpython 3.11: load the one
    # that matches this interpreter's stdlib, not the system's
    libpython = Path(os.path.realpath(sys.base_prefix)) / "lib"
    if kind == "kinfer":
        cmd = [sys.executable, "-m", "kinfer_runtime", "--model-uri", str(model_dir),
               "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--max-batch-size", str(MAX_BATCH), "--max-delay-ms", "0", "--max-queue", "4096",
               "--drain-delay-s", "0", "--log-level", "warning"]  # fmt: skip
    elif kind == "triton":
        home = triton_home()
        if not (home / "bin/tritonserver").exists():
            return Running(kind, None, http, grpc, f"no tritonserver under {home} (bench/install.sh)")
        # as pytriton does: the Python backend with the stub built for this Python version
        backends = work / "triton-backends"
        shutil.copytree(home / "backends", backends, dirs_exist_ok=True)
        shutil.copy(home / "python_backend_stubs/3.11/triton_python_backend_stub", backends / "python")
        repo = work / "triton-repo"
        (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
        (repo / MODEL / "config.pbtxt").write_text(TRITON_CONFIG)
        (repo / MODEL / "1/model.py").write_text(TRITON_MODEL_PY)
        (repo / MODEL / "1/model.pt").write_bytes((model_dir / "model.pt").read_bytes())
        # the stub's embedded Python takes its site-packages from the venv first on PATH: the
        # peer's (numpy 1.x, which the stub is built against; torch through its .pth file)
        env["PATH"] = f"{VENVS / 'triton/bin'}:{env['PATH']}"
        env.pop("PYTHONPATH", None)
        env["LD_LIBRARY_PATH"] = f"{libpython}:{home.parent.parent / 'nvidia_pytriton.libs'}"
        cmd = [str(home / "bin/tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={backends}", f"--http-address={HOST}",
               f"--http-port={http_port}", f"--grpc-address={HOST}", f"--grpc-port={grpc_port}",
               "--allow-metrics=false", "--log-verbose=0", "--exit-timeout-secs=2"]  # fmt: skip
    elif kind in ("pytriton", "kserve"):
        venv = VENVS / ("triton" if kind == "pytriton" else "kserve")
        if not (venv / "bin/python").exists():
            return Running(kind, None, http, grpc, f"no venv at {venv} (bench/install.sh)")
        env["LD_LIBRARY_PATH"] = f"{libpython}:{env.get('LD_LIBRARY_PATH', '')}"
        script, extra = (PYTRITON_SERVER, [str(free_port())]) if kind == "pytriton" else (KSERVE_SERVER, [])
        cmd = [str(venv / "bin/python"), "-c", script, str(model_dir / "model.pt"), MODEL,
               str(http_port), str(grpc_port), *extra]  # fmt: skip
    else:
        raise ValueError(kind)
    log = work / f"{kind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    run = Running(kind, proc, http, grpc)
    if not wait_ready(http, proc, timeout=180):
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        stop(run)
        run.proc, run.note = None, "failed to start: " + " | ".join(tail)[-300:]
    return run


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    import http.client

    host, port = url.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", f"/v2/models/{MODEL}/ready")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def stop(run: Running) -> None:
    if run.proc is None or run.proc.poll() is not None:
        return
    try:
        os.killpg(run.proc.pid, signal.SIGTERM)
        run.proc.wait(20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(5)


def session_cpu_s(sid: int) -> float:
    """utime + stime of every live process in session `sid` (the server and its helpers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


# ---------------------------------------------------------------- requests and load


def inputs(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, IN)).astype(np.float32)


def http_body(rows: int) -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, IN],
                    "parameters": {"binary_data_size": rows * IN * 4}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return header + inputs(rows).tobytes(), len(header)


def grpc_request(rows: int) -> Any:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=MODEL)
    inp = req.inputs.add()
    inp.name, inp.datatype = "x", "FP32"
    inp.shape.extend([rows, IN])
    req.outputs.add().name = "y"
    req.raw_input_contents.append(inputs(rows).tobytes())
    return req


def protoset(path: Path) -> Path:
    """The v2 gRPC service as a FileDescriptorSet, from tritonclient's compiled stubs."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2 as pb

    fds = descriptor_pb2.FileDescriptorSet()
    done: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in done:
            return
        for dep in fd.dependencies:
            add(dep)
        done.add(fd.name)
        fd.CopyToProto(fds.file.add())

    add(pb.DESCRIPTOR)
    path.write_bytes(fds.SerializeToString())
    return path


def check(run: Running, model_dir: Path, rows: int) -> float:
    """One request per protocol, compared with torch here: the largest absolute difference."""
    import torch
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(model_dir / "model.pt")).eval()
    x = inputs(rows)
    want = net(torch.from_numpy(x)).detach().numpy()
    worst = 0.0
    for mod, url in ((thttp, run.http), (tgrpc, run.grpc)):
        client: Any = mod.InferenceServerClient(url)
        inp = mod.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(MODEL, [inp]).as_numpy("y")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@dataclass
class Cell:
    req_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_per_1k: float
    client_cpu_s: float


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load_http(run: Running, work: Path, c: int, rows: int, duration: float) -> tuple[Any, float]:
    body, header_len = http_body(rows)
    target = work / f"vegeta-{rows}.json"
    target.write_text(json.dumps({
        "method": "POST", "url": f"http://{run.http}/v2/models/{MODEL}/infer",
        "body": base64.b64encode(body).decode(),
        "header": {"Inference-Header-Content-Length": [str(header_len)],
                   "Content-Type": ["application/octet-stream"]},
    }) + "\n")  # fmt: skip
    results = work / "vegeta.bin"
    cpu0 = children_cpu()
    subprocess.run([str(VEGETA), "attack", "-format=json", f"-targets={target}", "-rate=0",
                    f"-workers={c}", f"-max-workers={c}", f"-duration={duration}s", "-timeout=30s",
                    "-keepalive=true", f"-output={results}"], check=True)  # fmt: skip
    client = children_cpu() - cpu0
    out = subprocess.run([str(VEGETA), "report", "-type=json", str(results)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    rep = json.loads(out)
    ok = round(rep["requests"] * rep["success"])
    return {
        "ok": ok,
        "errors": rep["requests"] - ok,
        "secs": rep["duration"] / 1e9,
        "p50": rep["latencies"]["50th"] / 1e6,
        "p99": rep["latencies"]["99th"] / 1e6,
    }, client


def load_grpc(run: Running, work: Path, c: int, rows: int, duration: float) -> tuple[Any, float]:
    data = work / f"grpc-{rows}.bin"
    data.write_bytes(grpc_request(rows).SerializeToString())
    cpu0 = children_cpu()
    out = subprocess.run([str(GHZ), "--insecure", f"--protoset={work / 'v2.protoset'}",
                          "--call=inference.GRPCInferenceService.ModelInfer", f"--binary-file={data}",
                          f"--concurrency={c}", f"--connections={min(c, 32)}", f"--duration={duration}s",
                          "--timeout=30s", "--duration-stop=wait", "--format=json", run.grpc],
                         check=False, capture_output=True, text=True)  # fmt: skip
    client = children_cpu() - cpu0
    rep = json.loads(out.stdout)
    dist = {d["percentage"]: d["latency"] / 1e6 for d in rep.get("latencyDistribution") or []}
    codes = rep.get("statusCodeDistribution") or {}
    errors = sum(n for code, n in codes.items() if code != "OK")
    ok = codes.get("OK", 0)
    return {
        "ok": ok,
        "errors": errors,
        "secs": rep["total"] / 1e9,
        "p50": dist.get(50, 0.0),
        "p99": dist.get(99, 0.0),
    }, client


def measure(run: Running, work: Path, proto: str, c: int, rows: int, duration: float) -> Cell:
    assert run.proc is not None
    cpu0 = session_cpu_s(run.proc.pid)
    fn = load_http if proto == "http" else load_grpc
    rep, client = fn(run, work, c, rows, duration)
    server = session_cpu_s(run.proc.pid) - cpu0
    ok = max(rep["ok"], 1)
    return Cell(rep["ok"] / rep["secs"], rep["p50"], rep["p99"], rep["errors"], server / ok * 1000, client)


def median(cells: list[Cell]) -> Cell:
    def med(name: str) -> float:
        return float(statistics.median(getattr(x, name) for x in cells))

    return Cell(med("req_s"), med("p50_ms"), med("p99_ms"), sum(x.errors for x in cells),
                med("server_cpu_per_1k"), med("client_cpu_s"))  # fmt: skip


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--servers", default="kinfer,triton,pytriton,kserve")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--rows", default="1,8", help="rows per request")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the table shows medians")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every server")
    a = ap.parse_args()
    for tool in (VEGETA, GHZ):
        if not tool.exists():
            sys.exit(f"{tool} is missing: run `bash bench/install.sh`")
    servers, protocols = a.servers.split(","), a.protocols.split(",")
    concs, row_sizes = [int(c) for c in a.concurrency.split(",")], [int(r) for r in a.rows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kinfer-bench-"))
    model_dir = build_model(work)
    protoset(work / "v2.protoset")
    results: dict[tuple[str, str, int, int], Cell] = {}
    for kind in servers:
        run = start(kind, model_dir, work, a.threads)
        if run.proc is None:
            print(f"# {kind}: missing ({run.note})", flush=True)
            continue
        try:
            print(f"# {kind}: ready; max |answer - torch| = {check(run, model_dir, 8):.2e}", flush=True)
            for proto in protocols:
                measure(run, work, proto, 8, 1, 1.0)  # warm connections and caches
                for rows, c in ((r, c) for r in row_sizes for c in concs):
                    if run.proc.poll() is not None:
                        print(f"# {kind}: exited with code {run.proc.returncode}; "
                              f"{work / (kind + '.log')} says why", flush=True)  # fmt: skip
                        break
                    cells = [measure(run, work, proto, c, rows, a.duration) for _ in range(a.repeat)]
                    cell = results[(kind, proto, rows, c)] = median(cells)
                    print(
                        f"# {kind:8} {proto:4} rows={rows} c={c:<3} {cell.req_s:8.0f} req/s "
                        f"p50 {cell.p50_ms:6.2f} p99 {cell.p99_ms:7.2f} ms "
                        f"cpu/1k {cell.server_cpu_per_1k:5.2f} s errors {cell.errors} "
                        f"(runs {' '.join(f'{x.req_s:.0f}' for x in cells)})",
                        flush=True,
                    )
        finally:
            stop(run)

    print()
    print(
        "| server | proto | rows/req | conc | req/s | rows/s | p50 ms | p99 ms "
        "| server CPU-s / 1k req | client CPU-s | errors |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (kind, proto, rows, c), x in results.items():
        print(f"| {kind} | {proto} | {rows} | {c} | {x.req_s:.0f} | {x.req_s * rows:.0f} | "
              f"{x.p50_ms:.2f} | {x.p99_ms:.2f} | {x.server_cpu_per_1k:.2f} | {x.client_cpu_s:.2f} | "
              f"{x.errors} |")  # fmt: skip

    # SUMMARY: 1-row requests; ratios of req/s; p99 at c=1 over HTTP; CPU per 1k at HTTP c=32.
    def get(kind: str, proto: str, c: int) -> Cell | None:
        return results.get((kind, proto, 1, c))

    def ratio(peer: str, proto: str, c: int) -> str:
        k, p = get("kinfer", proto, c), get(peer, proto, c)
        return f"{k.req_s / p.req_s:.2f}" if k and p and p.req_s else "n/a"

    def field(kind: str, proto: str, c: int, name: str) -> str:
        x = get(kind, proto, c)
        return f"{getattr(x, name):.2f}" if x else "n/a"

    print()
    print(
        f"kinfer/triton_http_c8={ratio('triton', 'http', 8)} "
        f"kinfer/triton_http_c32={ratio('triton', 'http', 32)} "
        f"kinfer/triton_grpc_c8={ratio('triton', 'grpc', 8)} "
        f"kinfer/triton_grpc_c32={ratio('triton', 'grpc', 32)} "
        f"kinfer/kserve_http_c32={ratio('kserve', 'http', 32)} "
        f"p99_c1_ms kinfer={field('kinfer', 'http', 1, 'p99_ms')} "
        f"triton={field('triton', 'http', 1, 'p99_ms')} "
        f"cpu_per_1k kinfer={field('kinfer', 'http', 32, 'server_cpu_per_1k')} "
        f"triton={field('triton', 'http', 32, 'server_cpu_per_1k')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
