"""Autoscaling policies on the same replayed trace: kinfer, Kubernetes HPA, Knative KPA, a fixed
peak pool and an oracle that knows the future.

A discrete-event simulation of one InferenceService:

- arrivals: one request per TIMESTAMP row of a CSV trace (offsets from the first row), replayed as
  ``--copies`` copies shifted by a few seconds each so the peak needs several replicas; or a
  synthetic trace with a sharp burst and a quiet hour-quarter;
- replicas: each runs one batch at a time, up to ``--max-batch`` rows, taking ``base + per_row *
  rows`` ms (the runtime's batch-latency curve: fit yours and pass it); requests wait in one queue
  served by whichever ready replica is free (a least-outstanding-requests balancer);
- a new replica is ready ``--cold-start`` s after it is created and costs from creation; a removed
  replica finishes its batch first;
- metrics as Prometheus has them: gauges scraped every ``--scrape`` s, rates and the p95 over the
  last ``--rate-window`` s of scrapes, the p95 from the runtime's histogram buckets.
  Knative's KPA reads concurrency every second from its queue-proxies, as it does for real.

Policies: kinfer (``kinfer.autoscaling.decision.decide`` itself, ticking every 10 s), the HPA
algorithm (15 s sync, tolerance 0.1, 300 s down stabilization, default rate policies) on the same
two Pods metrics the rendered HPA uses, Knative's KPA (60 s stable window, 6 s panic window, panic
at 200 %, 2 s tick), a fixed pool sized for the peak, and the oracle: replicas from future arrivals,
started a cold start early, with the least headroom that meets the SLO (a lower bound on
replica-seconds in practice). All share the queue-depth target.

    python bench/autoscale_sim.py [--trace FILE] [--slo-ms 500]
"""

from __future__ import annotations

import argparse
import csv
import heapq
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kinfer.api.v1alpha1 import Scaling, Targets  # noqa: E402
from kinfer.autoscaling.decision import ScalingState, decide  # noqa: E402
from kinfer.autoscaling.window import MetricsWindow  # noqa: E402

DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_conv_2023.csv"
# The runtime's histogram buckets (kinfer_runtime.metrics.LATENCY_BUCKETS), in seconds.
BUCKETS = np.array([
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
])  # fmt: skip


@dataclass(frozen=True)
class Model:
    base_ms: float = 50.0
    per_row_ms: float = 25.0
    max_batch: int = 8

    def batch_s(self, rows: int) -> float:
        return (self.base_ms + self.per_row_ms * rows) / 1000

    @property
    def capacity(self) -> float:
        """Requests per second one replica serves at full batches."""
        return self.max_batch / self.batch_s(self.max_batch)


@dataclass(frozen=True)
class Setup:
    model: Model
    slo_s: float
    cold_start_s: float
    scrape_s: float
    rate_window_s: float
    queue_target: float
    p95_target_ms: int
    max_replicas: int


# --- observations ------------------------------------------------------------------------------


@dataclass
class Obs:
    """What a policy may look at when it ticks."""

    now: float
    current: int  # replicas set now (ready or starting)
    ready: int
    # Prometheus' view: the last scrape's gauges, rates over the rate window of scrapes.
    prom_at: float
    prom_queue: float
    prom_ready: int
    prom_p95_ms: float | None
    prom_rate: float
    prom_latency_ready: int  # fewest ready pods over the rate window (min_over_time)
    # Knative's view: per-second concurrency samples (time, total concurrency).
    kpa_samples: deque[tuple[float, float]]


Policy = Callable[[Obs], int]


def p95_from_buckets(counts: np.ndarray) -> float | None:
    """histogram_quantile(0.95, ...) over cumulative-free bucket counts, linear in a bucket."""
    total = counts.sum()
    if total == 0:
        return None
    rank = 0.95 * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, rank))
    if i >= len(BUCKETS):  # in +Inf: Prometheus answers the highest finite bound
        return float(BUCKETS[-1])
    lo = 0.0 if i == 0 else float(BUCKETS[i - 1])
    below = 0.0 if i == 0 else float(cum[i - 1])
    return lo + (float(BUCKETS[i]) - lo) * (rank - below) / float(counts[i])


# --- the simulation ----------------------------------------------------------------------------

READY, DONE, SCRAPE, TICK, SAMPLE = range(5)


@dataclass
class Result:
    name: str
    replica_seconds: float
    attainment: float
    p99_ms: float
    scale_events: int
    peak: int
    latencies: np.ndarray = field(repr=False)


def simulate(
    name: str,
    arrivals: np.ndarray,
    setup: Setup,
    policy: Policy,
    tick_s: float,
    initial: int,
) -> Result:
    model = setup.model
    n = len(arrivals)
    done = np.full(n, np.nan)
    end = float(arrivals[-1]) + 30.0
    head = tail = 0  # the queue is arrivals[head:tail] (FIFO, contiguous)
    pods_ready_at: dict[int, float] = {}  # live pods → when ready
    busy: dict[int, int] = {}  # pod → rows in its forward
    free: list[int] = []  # ready, idle pods
    removing: set[int] = set()
    next_pod = 0
    events: list[tuple[float, int, int]] = []
    created_at: dict[int, float] = {}
    replica_seconds = 0.0
    target = initial
    scale_events = 0
    peak = initial

    def start_pod(now: float, ready_now: bool) -> None:
        nonlocal next_pod
        pod = next_pod
        next_pod += 1
        created_at[pod] = now
        at = now if ready_now else now + setup.cold_start_s
        pods_ready_at[pod] = at
        if ready_now:
            free.append(pod)
        else:
            heapq.heappush(events, (at, READY, pod))

    def stop_pod(pod: int, now: float) -> None:
        nonlocal replica_seconds
        replica_seconds += now - created_at.pop(pod)
        del pods_ready_at[pod]
        removing.discard(pod)

    def dispatch(now: float) -> None:
        nonlocal head
        while free and head < tail:
            pod = free.pop()
            rows = min(tail - head, model.max_batch)
            t_done = now + model.batch_s(rows)
            done[head : head + rows] = t_done
            head += rows
            busy[pod] = rows
            heapq.heappush(events, (t_done, DONE, pod))

    def set_target(now: float, want: int) -> None:
        nonlocal target, scale_events, peak
        want = max(0, min(want, setup.max_replicas))
        if want == target:
            return
        scale_events += 1
        target = want
        peak = max(peak, want)
        live = [p for p in pods_ready_at if p not in removing]
        if want > len(live):
            for _ in range(want - len(live)):
                start_pod(now, ready_now=False)
            return
        # Remove starting pods first (as a ReplicaSet does), then idle ones, then busy ones.
        excess = len(live) - want
        starting = [p for p in live if pods_ready_at[p] > now]
        idle = [p for p in free if p not in removing]
        running = [p for p in busy if p not in removing]
        for pod in (starting + idle + running)[:excess]:
            if pod in busy:
                removing.add(pod)  # drains its batch, then stops
            else:
                if pod in free:
                    free.remove(pod)
                stop_pod(pod, now)

    for _ in range(initial):
        start_pod(0.0, ready_now=True)

    # Prometheus state: per scrape, (time, queue gauge, ready pods, bucket counts, requests).
    scrapes: deque[tuple[float, float, int, np.ndarray, int]] = deque()
    kpa_samples: deque[tuple[float, float]] = deque()
    heapq.heappush(events, (setup.scrape_s, SCRAPE, -1))
    heapq.heappush(events, (tick_s, TICK, -1))
    heapq.heappush(events, (1.0, SAMPLE, -1))

    def depth() -> float:
        return float(tail - head + sum(busy.values()))

    i = 0
    while True:
        t_event = events[0][0] if events else math.inf
        if i < n and arrivals[i] <= t_event:
            now = float(arrivals[i])
            i += 1
            tail = i
            if free:
                dispatch(now)
            continue
        if t_event > end:
            break
        now, kind, pod = heapq.heappop(events)
        if kind == DONE:
            busy.pop(pod)
            if pod in removing:
                stop_pod(pod, now)
            elif pod in pods_ready_at:
                free.append(pod)
                dispatch(now)
        elif kind == READY:
            if pod in pods_ready_at and pod not in removing and pod not in busy:
                free.append(pod)
                dispatch(now)
        elif kind == SCRAPE:
            lat = _latencies_done_between(done, arrivals, scrapes, now)
            counts = np.histogram(lat, bins=np.append(np.insert(BUCKETS, 0, 0.0), np.inf))[0]
            ready = sum(1 for p, at in pods_ready_at.items() if at <= now and p not in removing)
            scrapes.append((now, depth(), ready, counts, len(lat)))
            while scrapes and scrapes[0][0] < now - setup.rate_window_s - 1e-9:
                scrapes.popleft()
            heapq.heappush(events, (now + setup.scrape_s, SCRAPE, -1))
        elif kind == SAMPLE:
            kpa_samples.append((now, depth()))
            while kpa_samples and kpa_samples[0][0] <= now - 60.0:
                kpa_samples.popleft()
            heapq.heappush(events, (now + 1.0, SAMPLE, -1))
        elif kind == TICK:
            obs = _observe(now, target, pods_ready_at, removing, scrapes, kpa_samples, setup)
            set_target(now, policy(obs))
            heapq.heappush(events, (now + tick_s, TICK, -1))

    for pod in list(pods_ready_at):
        stop_pod(pod, end)
    latencies = done - arrivals
    latencies[np.isnan(latencies)] = np.inf  # never served
    return Result(
        name=name,
        replica_seconds=replica_seconds,
        attainment=float(np.mean(latencies <= setup.slo_s)),
        p99_ms=float(np.percentile(latencies, 99) * 1000),
        scale_events=scale_events,
        peak=peak,
        latencies=latencies,
    )


def _latencies_done_between(
    done: np.ndarray,
    arrivals: np.ndarray,
    scrapes: deque[tuple[float, float, int, np.ndarray, int]],
    now: float,
) -> np.ndarray:
    # Requests answered since the previous scrape; they are dispatched in arrival order, so they
    # lie in a short index range near the front of the answered ones.
    since = scrapes[-1][0] if scrapes else 0.0
    mask = (done > since) & (done <= now)
    return (done[mask] - arrivals[mask]) if mask.any() else np.empty(0)


def _observe(
    now: float,
    target: int,
    pods_ready_at: dict[int, float],
    removing: set[int],
    scrapes: deque[tuple[float, float, int, np.ndarray, int]],
    kpa_samples: deque[tuple[float, float]],
    setup: Setup,
) -> Obs:
    ready = sum(1 for p, at in pods_ready_at.items() if at <= now and p not in removing)
    if scrapes:
        at, queue, prom_ready, _, _ = scrapes[-1]
        window = [s for s in scrapes if s[0] > at - setup.rate_window_s]
        counts = np.sum([s[3] for s in window], axis=0)
        span = max(at - window[0][0] + setup.scrape_s, setup.scrape_s)
        rate = sum(s[4] for s in window) / span
        p95 = p95_from_buckets(counts)
    else:  # nothing scraped yet: no series
        at, queue, prom_ready, p95, rate, window = now, 0.0, 0, None, 0.0, []
    return Obs(
        now=now,
        current=target,
        ready=ready,
        prom_at=at,
        prom_queue=queue,
        prom_ready=prom_ready,
        prom_p95_ms=None if p95 is None else p95 * 1000,
        prom_rate=rate,
        prom_latency_ready=min((s[2] for s in window), default=0),
        kpa_samples=kpa_samples,
    )


# --- policies ----------------------------------------------------------------------------------


def kinfer_policy(spec: Scaling, initial: int) -> Policy:
    state = ScalingState(replicas=initial)

    def tick(obs: Obs) -> int:
        nonlocal state
        window = MetricsWindow(
            sampled_at=obs.now,
            queue_depth=obs.prom_queue,
            inflight=obs.prom_queue,
            p95_latency_ms=obs.prom_p95_ms,
            request_rate=obs.prom_rate,
            ready_replicas=obs.prom_ready,
            latency_replicas=obs.prom_latency_ready,
        )
        state = ScalingState(**{**state.__dict__, "replicas": obs.current})
        decision = decide(spec, window, state, obs.now)
        state = decision.next_state
        return decision.replicas

    return tick


def hpa_policy(setup: Setup, min_replicas: int) -> Policy:
    """pkg/controller/podautoscaler: replica calculator + default behavior."""
    tolerance = 0.1
    recs: deque[tuple[float, int]] = deque()
    events: deque[tuple[float, int]] = deque()  # (time, replicas added) for the up policy

    def proposal(ready: int, current: int, usage_ratio: float) -> int:
        # Pods still starting have no metrics: counted as 0 on a scale-up (they will take load),
        # as the target on a scale-down; HPA then refuses to change direction.
        if ready == 0:
            return current
        if abs(usage_ratio - 1.0) <= tolerance:
            return current
        missing = max(current - ready, 0)
        if usage_ratio > 1.0 and missing:
            usage_ratio = usage_ratio * ready / (ready + missing)
            if usage_ratio <= 1.0 + tolerance:
                return current
            return math.ceil(usage_ratio * (ready + missing))
        return math.ceil(usage_ratio * ready)

    def tick(obs: Obs) -> int:
        ready, current = obs.prom_ready, obs.current
        proposals = []
        if ready:
            proposals.append(proposal(ready, current, obs.prom_queue / ready / setup.queue_target))
            if obs.prom_p95_ms is not None:
                proposals.append(proposal(ready, current, obs.prom_p95_ms / setup.p95_target_ms))
        desired = max(proposals) if proposals else current
        desired = max(min_replicas, min(desired, setup.max_replicas))
        # Stabilization: up window 0 s, down window 300 s (highest recommendation).
        if not recs:  # the controller seeds a new HPA's history with the current count
            recs.append((obs.now, current))
        recs.append((obs.now, desired))
        while recs and recs[0][0] < obs.now - 300:
            recs.popleft()
        if desired < current:
            desired = min(current, max(r for _, r in recs))
        # Rate policies: up max(100 %, 4 pods) per 15 s; down 100 % per 15 s.
        while events and events[0][0] <= obs.now - 15:
            events.popleft()
        if desired > current:
            base = current - sum(a for _, a in events)
            desired = min(desired, max(2 * base, base + 4))
            if desired > current:
                events.append((obs.now, desired - current))
        return max(desired, min_replicas)

    return tick


def kpa_policy(setup: Setup, min_replicas: int) -> Policy:
    """knative/serving pkg/autoscaler/scaling/autoscaler.go, with its defaults."""
    stable_s, panic_s, panic_threshold = 60.0, 6.0, 2.0
    max_up_rate, max_down_rate = 1000.0, 2.0
    panic_since: float | None = None
    max_panic = 0

    def tick(obs: Obs) -> int:
        nonlocal panic_since, max_panic
        samples = obs.kpa_samples
        if not samples:
            return obs.current
        stable = [c for t, c in samples if t > obs.now - stable_s]
        panic = [c for t, c in samples if t > obs.now - panic_s] or stable
        ready = max(1, obs.ready)
        up_limit = math.ceil(max_up_rate * ready)
        down_limit = math.floor(ready / max_down_rate)
        dspc = math.ceil(sum(stable) / len(stable) / setup.queue_target)
        dppc = math.ceil(sum(panic) / len(panic) / setup.queue_target)
        dspc = min(max(dspc, down_limit), up_limit)
        dppc = min(max(dppc, down_limit), up_limit)
        over = dppc / ready >= panic_threshold
        if over:
            panic_since = obs.now
        elif panic_since is not None and obs.now >= panic_since + stable_s:
            panic_since = None
            max_panic = 0
        if panic_since is not None:
            desired = max(dppc, max_panic)
            max_panic = desired
        else:
            desired = dspc
        return max(min_replicas, min(desired, setup.max_replicas))

    return tick


def fixed_policy(replicas: int) -> Policy:
    return lambda obs: replicas


def oracle_schedule(arrivals: np.ndarray, setup: Setup, headroom: float, step: float) -> np.ndarray:
    """Replicas wanted per step: enough for the next step's arrivals at full batches, times the
    headroom, raised a cold start early (so pods are ready when the load comes)."""
    end = float(arrivals[-1]) + 30.0
    edges = np.arange(0.0, end + step, step)
    rate = np.histogram(arrivals, bins=edges)[0] / step
    need = np.ceil(rate * headroom / setup.model.capacity).astype(int)
    need = np.maximum(need, 1)
    # What must be ready at step k is needed from step k - lead on, so pods exist in time.
    lead = math.ceil(setup.cold_start_s / step)
    ahead = need.copy()
    for k in range(1, lead + 1):
        ahead[:-k] = np.maximum(ahead[:-k], need[k:])
    return np.asarray(ahead, dtype=int)


def oracle_policy(schedule: np.ndarray, step: float) -> Policy:
    """Start pods a cold start before they are needed; stop them the moment they are not."""

    def tick(obs: Obs) -> int:
        return int(schedule[min(int(obs.now // step), len(schedule) - 1)])

    return tick


# --- traces ------------------------------------------------------------------------------------


def load_trace(path: Path, copies: int, shift_s: float) -> np.ndarray:
    with path.open(newline="") as f:
        stamps = [_parse_time(row["TIMESTAMP"]) for row in csv.DictReader(f)]
    base = np.array(sorted(stamps))
    base -= base[0]
    span = float(base[-1]) + 1e-3
    # Shift each copy around the trace (wrapping), so the start and end keep the trace's rate.
    spread = [(base + k * shift_s) % span for k in range(copies)]
    return np.sort(np.concatenate(spread))


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        # "2023-11-16 18:15:46.6805900": more fraction digits than fromisoformat takes.
        whole, _, frac = value.partition(".")
        return datetime.fromisoformat(whole).timestamp() + float(f"0.{frac or 0}")


def synthetic_trace(seed: int, base_rate: float) -> np.ndarray:
    """40 min: steady, a sharp 4x burst for 3 min, steady, a quiet quarter hour, a ramp back."""
    rng = np.random.default_rng(seed)
    phases = [  # (seconds, rate at start, rate at end)
        (600, base_rate, base_rate),
        (180, 4 * base_rate, 4 * base_rate),
        (420, base_rate, base_rate),
        (900, 0.05 * base_rate, 0.05 * base_rate),
        (300, 0.05 * base_rate, 2 * base_rate),
    ]
    out, t0 = [], 0.0
    for seconds, r0, r1 in phases:
        # Thinning of a Poisson process at the phase's highest rate.
        top = max(r0, r1)
        count = rng.poisson(top * seconds)
        t = np.sort(rng.uniform(0, seconds, count))
        keep = rng.uniform(0, top, count) <= r0 + (r1 - r0) * t / seconds
        out.append(t0 + t[keep])
        t0 += seconds
    return np.concatenate(out)


# --- the run -----------------------------------------------------------------------------------


def kinfer_spec(setup: Setup, down_s: int) -> Scaling:
    return Scaling(
        min_replicas=1,
        max_replicas=setup.max_replicas,
        targets=Targets(queue_depth_per_replica=setup.queue_target, p95_latency_ms=setup.p95_target_ms),
        scale_down_stabilization_seconds=down_s,
    )


def run_all(name: str, arrivals: np.ndarray, setup: Setup, down_s: int) -> list[Result]:
    step = 10.0
    # The oracle: the least headroom whose schedule meets the SLO for 99 % of requests.
    lo, hi = 0.8, 3.0
    best: Result | None = None
    for _ in range(7):
        mid = (lo + hi) / 2
        schedule = oracle_schedule(arrivals, setup, mid, step)
        result = simulate("oracle", arrivals, setup, oracle_policy(schedule, step), step, int(schedule[0]))
        if result.attainment >= 0.99:
            best, hi = result, mid
        else:
            lo = mid
    if best is None:
        schedule = oracle_schedule(arrivals, setup, hi, step)
        best = simulate("oracle", arrivals, setup, oracle_policy(schedule, step), step, int(schedule[0]))
    initial = int(oracle_schedule(arrivals, setup, hi, step)[0])
    results = [
        simulate(
            "kinfer",
            arrivals,
            setup,
            kinfer_policy(kinfer_spec(setup, down_s), initial),
            10.0,
            initial,
        ),
        simulate(
            "kinfer-300",
            arrivals,
            setup,
            kinfer_policy(kinfer_spec(setup, 300), initial),
            10.0,
            initial,
        ),
        simulate("hpa", arrivals, setup, hpa_policy(setup, 1), 15.0, initial),
        simulate("kpa", arrivals, setup, kpa_policy(setup, 1), 2.0, initial),
        simulate("fixed-peak", arrivals, setup, fixed_policy(best.peak), 10.0, best.peak),
        best,
    ]
    print(f"\n{name}: {len(arrivals)} requests over {arrivals[-1] / 60:.1f} min, oracle headroom {hi:.2f}")
    print(
        f"{'policy':<11} {'replica-s':>10} {'vs oracle':>9} {'SLO att.':>9} {'p99 ms':>8} "
        f"{'events':>7} {'peak':>5}"
    )
    for r in results:
        print(
            f"{r.name:<11} {r.replica_seconds:>10.0f} "
            f"{r.replica_seconds / best.replica_seconds:>9.2f} {r.attainment:>9.4f} "
            f"{r.p99_ms:>8.0f} {r.scale_events:>7d} {r.peak:>5d}"
        )
    return results


def summary(results: list[Result]) -> str:
    by = {r.name: r for r in results}
    k = by["kinfer"]
    return (
        f"kinfer attainment={k.attainment:.3f} "
        f"oracle_ratio={k.replica_seconds / by['oracle'].replica_seconds:.2f} "
        f"hpa_ratio={k.replica_seconds / by['hpa'].replica_seconds:.2f} "
        f"kpa_ratio={k.replica_seconds / by['kpa'].replica_seconds:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="CSV with a TIMESTAMP column")
    p.add_argument("--copies", type=int, default=24, help="replay the trace this many times")
    p.add_argument("--shift", type=float, default=7.3, help="seconds between copies")
    p.add_argument("--slo-ms", type=float, default=500.0)
    p.add_argument("--cold-start", type=float, default=60.0, help="seconds until a pod is ready")
    p.add_argument("--scrape", type=float, default=15.0, help="Prometheus scrape interval, s")
    p.add_argument("--rate-window", type=float, default=60.0, help="rate()/p95 range, s")
    p.add_argument("--base-ms", type=float, default=50.0, help="batch latency at 0 rows, ms")
    p.add_argument("--per-row-ms", type=float, default=25.0, help="batch latency per row, ms")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-target", type=float, help="queue depth per replica (default: --max-batch)")
    p.add_argument("--p95-target-ms", type=int, help="p95 target (default: 0.9 x --slo-ms)")
    p.add_argument("--down-window", type=int, default=60, help="kinfer's scaleDownStabilizationSeconds")
    p.add_argument("--max-replicas", type=int, default=40)
    p.add_argument("--no-synthetic", action="store_true", help="skip the burst+quiet trace")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    started = time.monotonic()
    setup = Setup(
        model=Model(args.base_ms, args.per_row_ms, args.max_batch),
        slo_s=args.slo_ms / 1000,
        cold_start_s=args.cold_start,
        scrape_s=args.scrape,
        rate_window_s=args.rate_window,
        queue_target=args.queue_target or float(args.max_batch),
        p95_target_ms=args.p95_target_ms or round(0.9 * args.slo_ms),
        max_replicas=args.max_replicas,
    )
    print(
        f"replica capacity {setup.model.capacity:.1f} req/s at batch {args.max_batch}; "
        f"SLO {args.slo_ms:g} ms; cold start {args.cold_start:g} s; scrape {args.scrape:g} s\n"
        f"targets for all: queue {setup.queue_target:g}/replica, p95 {setup.p95_target_ms} ms; "
        f"kinfer scaleDownStabilizationSeconds {args.down_window} (kinfer-300: the default)"
    )
    trace = load_trace(args.trace, args.copies, args.shift)
    if not args.no_synthetic:
        burst = synthetic_trace(args.seed, base_rate=2.0 * setup.model.capacity)
        run_all("synthetic burst + quiet", burst, setup, args.down_window)
    results = run_all(f"{args.trace.name} x{args.copies}", trace, setup, args.down_window)
    print(f"\n({time.monotonic() - started:.0f} s)")
    print(summary(results))


if __name__ == "__main__":
    main()
