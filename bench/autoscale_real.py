"""The autoscaling simulator checked against the real system, on the same traffic.

A segment of the conversation trace (``../shared/traces/azure_llm_conv_2023.csv``) is replayed
twice:

- **real**: against an InferenceService on the test bed (``kinfer dev up``): real kinfer-runtime
  pods, the bed's real Prometheus (2 s scrapes), the operator process with its own autoscaler,
  every ``spec.scaling`` field at the API's default (the service is created at ``--initial``
  replicas as ``minReplicas`` and that field is removed when the replay starts). The model is a
  "slow" python model that sleeps ``--delay-ms`` + ``--per-row-ms`` x rows per forward (written
  into its model.py), so a replica's capacity is known and does not depend on the machine's
  load. Requests go from this process to the ready pods' IPs over the bed's bridge, open loop at
  the trace's arrival times (asyncio + aiohttp), each to the pod with the fewest outstanding
  requests. The pods are listed every second: pods that exist (starting ones included, not
  terminating ones) give the replica-seconds, ready ones the targets, and created→Ready of each
  pod the measured cold start.
- **simulated**: ``bench/autoscale_sim.py``'s ``simulate`` and ``kinfer_policy`` (imported) on the
  same arrivals with the same replica model, SLO, initial count, scrape interval (the bed's 2 s),
  the API's default ``Scaling`` and the cold start measured in the real run.

Attainment is the share of requests answered (HTTP 200) within ``--slo-ms`` of their arrival
time in the trace (not of when they were sent); failed and unanswered requests are late.
Replica-seconds are counted over the same span in both: from the first arrival to 30 s after the
last (the simulator's end). Goals (issue 13): replica-seconds within 15 %, attainment within 0.02.

The segment: the ``--minutes``-long window of whole minutes whose per-minute rate varies most
(largest max/min), or ``--start-minute``. Rate-scaled to what the pods serve: the trace replayed
as ``--copies`` copies shifted by ``--shift`` s (the simulator's ``load_trace``), by default as
many as give ``--mean-pods`` replicas' worth of load on average.

Run as root on a machine with the test bed's binaries, inside a private network namespace when
other test beds may run (loopback and pod addresses only):

    python bench/autoscale_real.py --quick     # a 3-minute segment (about 6 min in all)
    python bench/autoscale_real.py             # 10 minutes (about 13 min in all)
    python bench/autoscale_real.py --sim-only --cold-start 5   # the simulated half only
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import autoscale_sim as sim
from kinfer.api import v1alpha1 as api
from kinfer.autoscaling import coldstart

NAME = "replay"
NAMESPACE = "bench-autoscale-real"
WORK = Path("/tmp/kinfer-bench-autoscale-real")
SCRAPE_S = 2.0  # the test bed's Prometheus scrape interval (docs/testbed.md)
TICK_S = 10.0  # the operator's autoscale interval (OperatorConfig.autoscale_interval_seconds)
TAIL_S = 30.0  # the simulator counts replica-seconds until 30 s after the last arrival
TIMEOUT_S = 25.0  # a request not answered by then is unanswered (late); below TAIL_S
PORT = 8080
GOAL_RATIO, GOAL_DIFF = 0.15, 0.02


# --- the pure parts ----------------------------------------------------------------------------


def choose_segment(arrivals: np.ndarray, minutes: int) -> int:
    """The start minute of the ``minutes``-long window of whole minutes inside the trace whose
    per-minute arrival count varies most (the largest max/min); the earliest on a tie."""
    whole = int(arrivals[-1] // 60)  # the last, partial minute is left out
    if whole < minutes:
        raise ValueError(f"the trace has {whole} whole minutes, fewer than {minutes}")
    counts = np.bincount((arrivals // 60).astype(int), minlength=whole + 1)[:whole]
    ratios = [
        counts[s : s + minutes].max() / max(int(counts[s : s + minutes].min()), 1)
        for s in range(whole - minutes + 1)
    ]
    return int(np.argmax(ratios))


def cut(arrivals: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    """The arrivals in [start_s, start_s + seconds), as offsets from start_s."""
    lo, hi = np.searchsorted(arrivals, [start_s, start_s + seconds])
    return np.asarray(arrivals[lo:hi] - start_s)


def copies_for(rate: float, capacity: float, mean_pods: float) -> int:
    """How many copies of a trace of ``rate`` req/s load ``mean_pods`` replicas of ``capacity``."""
    return max(1, round(mean_pods * capacity / rate))


def integrate(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The integral over [start, end] of a step function given as (time, value) samples sorted by
    time: each value holds until the next sample; the first also before it."""
    if not samples or end <= start:
        return 0.0
    total = 0.0
    for i, (t, value) in enumerate(samples):
        lo = start if i == 0 else max(t, start)
        hi = min(samples[i + 1][0], end) if i + 1 < len(samples) else end
        if hi > lo:
            total += value * (hi - lo)
    return total


def attainment(latencies: np.ndarray, slo_s: float) -> float:
    """Share of requests answered within the SLO (failed or unanswered: latency inf)."""
    return float(np.mean(latencies <= slo_s)) if len(latencies) else 0.0


def goals_line(real_rs: float, sim_rs: float, real_att: float, sim_att: float) -> str:
    ratio, diff = real_rs / sim_rs, real_att - sim_att
    rs_ok, att_ok = abs(ratio - 1) <= GOAL_RATIO, abs(diff) <= GOAL_DIFF
    return (
        f"goals: replica-seconds within {GOAL_RATIO:.0%} (ratio {ratio:.3f}): "
        f"{'met' if rs_ok else 'UNMET'}; attainment within {GOAL_DIFF} (diff {diff:+.4f}): "
        f"{'met' if att_ok else 'UNMET'}"
    )


def summary_line(real_rs: float, sim_rs: float, real_att: float, sim_att: float) -> str:
    return (
        f"REAL: real_replica_s={real_rs:.0f} sim_replica_s={sim_rs:.0f} ratio={real_rs / sim_rs:.3f} "
        f"real_attainment={real_att:.4f} sim_attainment={sim_att:.4f} diff={real_att - sim_att:+.4f}"
    )


# --- the simulated half ------------------------------------------------------------------------


def sim_setup(model: sim.Model, slo_s: float, cold_start_s: float) -> sim.Setup:
    spec = api.Scaling()  # the API's defaults, as the real service runs
    return sim.Setup(
        model=model,
        slo_s=slo_s,
        cold_start_s=cold_start_s,
        scrape_s=SCRAPE_S,
        rate_window_s=60.0,
        queue_target=spec.targets.queue_depth_per_replica,
        p95_target_ms=spec.targets.p95_latency_ms,
        max_replicas=spec.max_replicas,
    )


def initial_replicas(arrivals: np.ndarray, model: sim.Model) -> int:
    """What the simulator starts every policy at: the first 10 s's need, a cold start ahead
    (a nominal 10 s here: the bed's is measured only during the run)."""
    return int(sim.lookahead_schedule(arrivals, sim_setup(model, 0.5, 10.0), 1.0, TICK_S)[0])


def run_sim(
    arrivals: np.ndarray, setup: sim.Setup, initial: int
) -> tuple[sim.Result, list[tuple[float, float]]]:
    """The simulator's kinfer row at the API's defaults, and its (time, replicas set) per tick."""
    policy = sim.kinfer_policy(api.Scaling(), setup, initial)
    ticks: list[tuple[float, float]] = [(0.0, initial)]

    def recorded(obs: sim.Obs) -> int:
        want = policy(obs)
        ticks.append((obs.now, max(0, min(want, setup.max_replicas))))
        return want

    return sim.simulate("sim", arrivals, setup, recorded, TICK_S, initial), ticks


# --- the real half -----------------------------------------------------------------------------


@dataclass
class Real:
    latencies: np.ndarray  # per arrival: answered - arrival time, s; inf if failed or unanswered
    failed: int  # an error status or a broken connection
    unanswered: int  # no answer within TIMEOUT_S
    send_lag: np.ndarray  # per arrival: sent - arrival time, s (this process's own delay)
    samples: list[tuple[float, float]]  # (time, pods that exist) once a second
    ready_samples: list[tuple[float, float]]
    cold_starts: dict[str, float]  # pod uid -> created→Ready seconds
    status_cold_start: float | None  # the operator's status.coldStart.seconds
    scale_events: int
    end: float

    @property
    def replica_seconds(self) -> float:
        return integrate(self.samples, 0.0, self.end)


@dataclass
class Targets:
    """Ready pod IPs and the requests outstanding at each: a least-outstanding balancer."""

    ready: list[str] = field(default_factory=list)
    outstanding: dict[str, int] = field(default_factory=dict)
    turn: int = 0

    def update(self, ips: list[str]) -> None:
        self.ready = sorted(ips)
        for ip in ips:
            self.outstanding.setdefault(ip, 0)

    def pick(self) -> str | None:
        if not self.ready:
            return None
        self.turn += 1
        order = self.ready[self.turn % len(self.ready) :] + self.ready[: self.turn % len(self.ready)]
        return min(order, key=lambda ip: self.outstanding[ip])


def _pods(kube: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"kinfer.dev/isvc={NAME}"
    )["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    return ready and bool(pod["status"].get("podIP")) and not pod["metadata"].get("deletionTimestamp")


def _exists(pod: dict[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


async def replay(kube: Any, namespace: str, arrivals: np.ndarray, end: float) -> Real:
    import aiohttp

    loop = asyncio.get_running_loop()
    n = len(arrivals)
    done = np.full(n, np.inf)
    lag = np.full(n, np.nan)
    codes = np.zeros(n, dtype=int)  # 200, another status, 0 broken, -1 unanswered
    targets = Targets()
    samples: list[tuple[float, float]] = []
    ready_samples: list[tuple[float, float]] = []
    cold: dict[str, float] = {}
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    ).encode()
    headers = {"Content-Type": "application/json"}

    def observe(pods: list[dict[str, Any]], at: float) -> None:
        samples.append((at, sum(map(_exists, pods))))
        ips = [p["status"]["podIP"] for p in pods if _ready(p)]
        ready_samples.append((at, len(ips)))
        targets.update(ips)
        for pod in pods:
            m = coldstart.measured(pod)
            if m is not None:
                cold.setdefault(pod["metadata"]["uid"], m[1])

    observe(await asyncio.to_thread(_pods, kube, namespace), 0.0)
    t0 = loop.time()

    async def sampler() -> None:
        tick = 1
        while tick <= end:
            await asyncio.sleep(max(0.0, t0 + tick - loop.time()))
            try:
                pods = await asyncio.to_thread(_pods, kube, namespace)
            except Exception as err:  # keep the last view; say so
                print(f"  pod list failed at {loop.time() - t0:.0f} s: {err}", flush=True)
            else:
                observe(pods, loop.time() - t0)
            tick += 1

    async def send(client: aiohttp.ClientSession, i: int) -> None:
        due = t0 + float(arrivals[i])
        ip = targets.pick()
        while ip is None and loop.time() < due + TIMEOUT_S:  # no ready pod: wait for one
            await asyncio.sleep(0.2)
            ip = targets.pick()
        lag[i] = loop.time() - due
        if ip is None:
            codes[i] = -1
            return
        targets.outstanding[ip] += 1
        try:
            left = max(0.1, due + TIMEOUT_S - loop.time())
            url = f"http://{ip}:{PORT}/v2/models/{NAME}/infer"
            timeout = aiohttp.ClientTimeout(total=left)
            async with client.post(url, data=body, headers=headers, timeout=timeout) as r:
                await r.read()
                codes[i] = r.status
            if r.status == 200:
                done[i] = loop.time() - t0
        except TimeoutError:
            codes[i] = -1
        except aiohttp.ClientError:
            codes[i] = 0
        finally:
            targets.outstanding[ip] -= 1

    watcher = asyncio.create_task(sampler())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        tasks = []
        for i, at in enumerate(arrivals):
            await asyncio.sleep(max(0.0, t0 + float(at) - loop.time()))
            tasks.append(asyncio.create_task(send(client, i)))
        await asyncio.gather(*tasks)
    await watcher
    return Real(
        latencies=done - arrivals,
        failed=int(np.sum((codes != 200) & (codes != -1))),
        unanswered=int(np.sum(codes == -1)),
        send_lag=lag,
        samples=samples,
        ready_samples=ready_samples,
        cold_starts=cold,
        status_cold_start=None,
        scale_events=0,
        end=end,
    )


def _isvc(model: Path, max_batch: int, initial: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": f"file://{model}"},
            # maxDelayMs 0: a forward takes what is queued, as the simulator's replicas do.
            "runtime": {"batching": {"maxBatchSize": max_batch, "maxDelayMs": 0}},
            "resources": {"cpu": "100m", "memory": "512Mi"},
            "scaling": {"minReplicas": initial},  # removed when the replay starts
        },
    }


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception:
            got = None
        if got:
            return got
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_real(args: argparse.Namespace, arrivals: np.ndarray, initial: int) -> Real:
    from kinfer_dev import local
    from kinfer_dev.testbed import bed, gateway
    from kinfer_dev.testbed.kube import Kube

    state = bed.default_state_dir()
    owned = not bed.Bed(state).running()
    if owned:
        print("starting the test bed", flush=True)
        bed.up(state, echo=lambda _: None)
    current = bed.Bed(state)
    kubeconfig = current.kubeconfig
    operator = None
    try:
        local.install(kubeconfig)
        WORK.mkdir(parents=True, exist_ok=True)
        operator = local.OperatorProcess(
            local.operator_kubeconfig(kubeconfig, WORK / "operator.kubeconfig"),
            WORK / "operator.log",
            env={
                "KINFER_PROMETHEUS_URL": current.prometheus_url(),
                "KINFER_GATEWAY_NAMESPACE": gateway.NAMESPACE,
            },
        ).start()
        kube = Kube(kubeconfig)
        local.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                      timeout=300)  # fmt: skip
        kube.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        _wait(
            "the default service account",
            lambda: kube.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"),
            60,
        )
        model = local.make_slow_model(
            WORK / f"slow-{args.delay_ms:g}ms-{args.per_row_ms:g}ms",
            args.delay_ms / 1000,
            args.per_row_ms / 1000,
        )
        path = f"/apis/{api.API_VERSION}/namespaces/{NAMESPACE}/{api.PLURAL}"
        kube.create(path, _isvc(model, args.max_batch, initial))
        _wait(
            f"{initial} ready pods",
            lambda: sum(map(_ready, _pods(kube, NAMESPACE))) >= initial,
            240,
        )
        kube.request("PATCH", f"{path}/{NAME}", {"spec": {"scaling": {"minReplicas": None}}},
                     "application/merge-patch+json")  # fmt: skip
        print(f"{initial} pods ready; minReplicas removed (default 1); replaying", flush=True)
        end = float(arrivals[-1]) + TAIL_S
        real = asyncio.run(replay(kube, NAMESPACE, arrivals, end))
        isvc = kube.get(f"{path}/{NAME}")
        real.status_cold_start = ((isvc.get("status") or {}).get("coldStart") or {}).get("seconds")
        events = kube.get(f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
        real.scale_events = sum(e.get("count") or 1 for e in events if e.get("reason") == "Scaled")
        return real
    finally:
        if operator is not None:
            operator.stop()
        if owned:
            bed.down(state, echo=lambda _: None)


# --- the run -----------------------------------------------------------------------------------


def per_minute(samples: list[tuple[float, float]], end: float) -> list[float]:
    edges = [*np.arange(0.0, end, 60.0), end]
    return [integrate(samples, a, b) / (b - a) for a, b in itertools.pairwise(edges) if b > a]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", type=Path, default=sim.DEFAULT_TRACE)
    p.add_argument("--minutes", type=int, default=10, help="length of the segment")
    p.add_argument("--quick", action="store_true", help="a 3-minute segment (a smoke run)")
    p.add_argument("--start-minute", type=int, help="segment start (default: the most varied)")
    p.add_argument("--copies", type=int, help="rate scale (default: from --mean-pods)")
    p.add_argument("--mean-pods", type=float, default=3.0, help="replicas' worth of mean load")
    p.add_argument("--shift", type=float, default=7.3, help="seconds between copies")
    p.add_argument("--delay-ms", type=float, default=100.0, help="the model's sleep per forward")
    p.add_argument("--per-row-ms", type=float, default=0.0, help="and per row")
    p.add_argument("--max-batch", type=int, default=1, help="runtime.batching.maxBatchSize")
    p.add_argument("--slo-ms", type=float, default=500.0)
    p.add_argument("--sim-only", action="store_true", help="no test bed: the simulated half")
    p.add_argument("--cold-start", type=float, default=5.0, help="with --sim-only, seconds")
    args = p.parse_args(argv)
    minutes = 3 if args.quick else args.minutes

    started = time.monotonic()
    raw = sim.load_trace(args.trace, 1, 0.0)
    start = args.start_minute if args.start_minute is not None else choose_segment(raw, minutes)
    model = sim.Model(args.delay_ms, args.per_row_ms, args.max_batch)
    raw_rate = len(cut(raw, start * 60.0, minutes * 60.0)) / (minutes * 60.0)
    copies = args.copies or copies_for(raw_rate, model.capacity, args.mean_pods)
    arrivals = cut(sim.load_trace(args.trace, copies, args.shift), start * 60.0, minutes * 60.0)
    initial = initial_replicas(arrivals, model)
    load = os.getloadavg()
    print(
        f"segment: minutes {start}-{start + minutes} of {args.trace.name} x{copies} "
        f"(shift {args.shift:g} s): {len(arrivals)} requests, "
        f"{len(arrivals) / (minutes * 60):.1f} req/s mean\n"
        f"replica: {args.delay_ms:g} ms + {args.per_row_ms:g} ms/row per forward, maxBatchSize "
        f"{args.max_batch}: {model.capacity:.1f} req/s; SLO {args.slo_ms:g} ms; scaling: the API's "
        f"defaults; initial {initial} replicas\n"
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    slo_s = args.slo_ms / 1000
    if args.sim_only:
        cold_s = args.cold_start
        real = None
    else:
        real = run_real(args, arrivals, initial)
        measured = list(real.cold_starts.values())
        cold_s = float(np.mean(measured)) if measured else args.cold_start
        print(
            f"cold start measured on the bed: {cold_s:.1f} s mean over {len(measured)} pods "
            f"(min {min(measured, default=0):.1f}, max {max(measured, default=0):.1f}); "
            f"status.coldStart {real.status_cold_start} s"
        )
    result, ticks = run_sim(arrivals, sim_setup(model, slo_s, cold_s), initial)
    sim_att = attainment(result.latencies, slo_s)
    print(
        f"sim:  replica_s={result.replica_seconds:.0f} attainment={sim_att:.4f} "
        f"p99_ms={result.p99_ms:.0f} peak={result.peak} events={result.scale_events} "
        f"(cold start {cold_s:.1f} s)"
    )
    if real is None:
        print(f"({time.monotonic() - started:.0f} s)")
        return
    real_att = attainment(real.latencies, slo_s)
    lag = real.send_lag[np.isfinite(real.send_lag)]
    p99 = float(np.percentile(real.latencies, 99, method="higher") * 1000)
    print(
        f"real: replica_s={real.replica_seconds:.0f} attainment={real_att:.4f} p99_ms={p99:.0f} "
        f"peak={max(v for _, v in real.samples):.0f} events={real.scale_events} "
        f"failed={real.failed} unanswered={real.unanswered} of {len(arrivals)}; "
        f"send lag p99 {np.percentile(lag, 99) * 1000:.0f} ms, max {lag.max() * 1000:.0f} ms"
    )
    real_min = per_minute(real.samples, real.end)
    sim_min = per_minute(ticks, real.end)
    print("replicas per minute (mean), real / sim:")
    print("  " + "  ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(real_min, sim_min, strict=True)))
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(goals_line(real.replica_seconds, result.replica_seconds, real_att, sim_att))
    print(summary_line(real.replica_seconds, result.replica_seconds, real_att, sim_att))
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
