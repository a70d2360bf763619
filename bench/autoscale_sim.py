"""Autoscaling policies on the same replayed traces: kinfer, Kubernetes' HPA and Knative's KPA at
their documented defaults and once tuned, every static pool from 1 replica up, a look-ahead
heuristic and an offline lower bound on replica-seconds.

A discrete-event simulation of one InferenceService:

- arrivals: one request per TIMESTAMP row of a CSV trace (offsets from the first row), replayed as
  ``--copies`` copies shifted by a few seconds each so the peak needs several replicas; the
  synthetic burst trace; or a family of ``../shared/traces/families.py`` (rate x ``--family-scale``);
- replicas: each runs one batch at a time, up to ``--max-batch`` rows, taking ``base + per_row *
  rows`` ms (the runtime's batch-latency curve: fit yours and pass it); requests wait in one queue
  served by whichever ready replica is free (a least-outstanding-requests balancer);
- a new replica is ready ``--cold-start`` s after it is created and costs from creation; a removed
  replica finishes its batch first;
- metrics as Prometheus has them: gauges scraped every ``--scrape`` s, rates and the p95 over the
  last ``--rate-window`` s of scrapes, the p95 from the runtime's histogram buckets.
  Knative's KPA reads concurrency every second from its queue-proxies, as it does for real.

What each policy sees is listed in bench/autoscale.md ("Inputs").

    python bench/autoscale_sim.py                      # the conversation trace x24 + synthetic
    python bench/autoscale_sim.py --suite --jobs 2     # + seeds 0-4 of every family, tuning
    python bench/autoscale_sim.py --trace FILE.csv     # any CSV with a TIMESTAMP column
    python bench/autoscale_sim.py --family spike --seed 3   # one trace of a family
"""

from __future__ import annotations

import argparse
import csv
import heapq
import importlib.util
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kinfer.api.v1alpha1 import Scaling, Targets  # noqa: E402
from kinfer.autoscaling.decision import ScalingState, decide  # noqa: E402
from kinfer.autoscaling.window import MetricsWindow  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
DEFAULT_TRACE = TRACES / "azure_llm_conv_2023.csv"
FAMILY_SEEDS = range(5)
TUNE_SEEDS = (0, 1)  # the tuned rows are chosen on these seeds of each family; 2-4 are held out
# The runtime's histogram buckets (kinfer_runtime.metrics.LATENCY_BUCKETS), in seconds.
BUCKETS = np.array([
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
])  # fmt: skip
EDGES = np.append(np.insert(BUCKETS, 0, 0.0), np.inf)

# The tuned rows: each policy's best configuration of a grid of the same size (TUNING_BUDGET),
# chosen by `--suite` on the tuning traces (seeds TUNE_SEEDS of each family and the synthetic
# trace) by the mean frontier margin: attainment minus the static-pool frontier's attainment at
# the same replica-seconds. Never chosen per trace. TUNED records the last suite's choice for
# runs without --suite.
GRID: dict[str, list[dict[str, float]]] = {
    "hpa": [{"down_s": d, "util": u} for d in (60, 300) for u in (1.0, 0.75, 0.5)],
    "kpa": [{"stable_s": w, "util": u} for w in (60, 180) for u in (1.0, 0.7, 0.5)],
    "kinfer": [{"down_s": d, "p95": f} for d in (60, 120, 300) for f in (1.0, 0.8)],
}
TUNING_BUDGET = 6
TUNED: dict[str, dict[str, float]] = {
    "hpa": {"down_s": 300, "util": 0.5},
    "kpa": {"stable_s": 60, "util": 0.5},
    "kinfer": {"down_s": 120, "p95": 1.0},
}


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
    prom_rows_rate: float  # rate(kinfer_batch_size_sum)
    prom_forwards_rate: float  # rate(kinfer_batch_size_count)
    prom_busy_rate: float  # rate(kinfer_forward_seconds_total)
    prom_rows_sq_rate: float  # rate(kinfer_batch_rows_squared_total)
    prom_row_s_rate: float  # rate(kinfer_request_duration_seconds_sum{phase=compute})
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


@dataclass
class Scrape:
    at: float
    queue: float
    ready: int
    counts: np.ndarray  # latency histogram of requests answered since the previous scrape
    answered: int
    rows: int
    forwards: int
    busy_s: float  # seconds of forwards finished
    rows_sq: float  # sum of rows² over those forwards
    row_s: float  # sum over their rows of the forward's seconds


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
    done = np.full(n, np.inf)
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
    counters = [0, 0, 0.0, 0, 0.0]  # rows, forwards, seconds, rows², rows x seconds since the last scrape
    scanned = 0  # answered requests below this index are in a scrape already

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

    scrapes: deque[Scrape] = deque()
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
            rows = busy.pop(pod)
            counters[0] += rows
            counters[1] += 1
            counters[2] += model.batch_s(rows)
            counters[3] += rows * rows
            counters[4] += rows * model.batch_s(rows)
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
            # Requests answered since the last scrape lie in [scanned, head): answered in order
            # but for the few rows of forwards still running.
            seg = done[scanned:head]
            answered = (seg > 0) & (seg <= now)
            lat = seg[answered] - arrivals[scanned:head][answered]
            pending = np.flatnonzero(~answered)
            done[scanned:head][answered] = -done[scanned:head][answered]  # mark counted
            scanned = scanned + (int(pending[0]) if len(pending) else len(seg))
            counts = np.histogram(lat, bins=EDGES)[0]
            ready = sum(1 for p, at in pods_ready_at.items() if at <= now and p not in removing)
            scrapes.append(Scrape(now, depth(), ready, counts, len(lat), *counters))
            counters[:] = [0, 0, 0.0, 0, 0.0]
            while scrapes and scrapes[0].at < now - setup.rate_window_s - 1e-9:
                scrapes.popleft()
            heapq.heappush(events, (now + setup.scrape_s, SCRAPE, -1))
        elif kind == SAMPLE:
            kpa_samples.append((now, depth()))
            while kpa_samples and kpa_samples[0][0] <= now - 180.0:
                kpa_samples.popleft()
            heapq.heappush(events, (now + 1.0, SAMPLE, -1))
        elif kind == TICK:
            obs = _observe(now, target, pods_ready_at, removing, scrapes, kpa_samples, setup)
            set_target(now, policy(obs))
            heapq.heappush(events, (now + tick_s, TICK, -1))

    for pod in list(pods_ready_at):
        stop_pod(pod, end)
    latencies = np.abs(done) - arrivals  # never served: inf
    return Result(
        name=name,
        replica_seconds=replica_seconds,
        attainment=float(np.mean(latencies <= setup.slo_s)),
        p99_ms=float(np.percentile(latencies, 99, method="higher") * 1000),
        scale_events=scale_events,
        peak=peak,
        latencies=latencies,
    )


def _observe(
    now: float,
    target: int,
    pods_ready_at: dict[int, float],
    removing: set[int],
    scrapes: deque[Scrape],
    kpa_samples: deque[tuple[float, float]],
    setup: Setup,
) -> Obs:
    ready = sum(1 for p, at in pods_ready_at.items() if at <= now and p not in removing)
    at, queue, prom_ready, p95, rate = now, 0.0, 0, None, 0.0
    rows = forwards = busy = rows_sq = row_s = 0.0
    window: list[Scrape] = []
    if scrapes:  # else nothing scraped yet: no series
        last = scrapes[-1]
        at, queue, prom_ready = last.at, last.queue, last.ready
        window = [s for s in scrapes if s.at > at - setup.rate_window_s]
        span = max(at - window[0].at + setup.scrape_s, setup.scrape_s)
        p95 = p95_from_buckets(np.sum([s.counts for s in window], axis=0))
        rate = sum(s.answered for s in window) / span
        rows, forwards = sum(s.rows for s in window) / span, sum(s.forwards for s in window) / span
        busy = sum(s.busy_s for s in window) / span
        rows_sq, row_s = sum(s.rows_sq for s in window) / span, sum(s.row_s for s in window) / span
    return Obs(
        now=now,
        current=target,
        ready=ready,
        prom_at=at,
        prom_queue=queue,
        prom_ready=prom_ready,
        prom_p95_ms=None if p95 is None else p95 * 1000,
        prom_rate=rate,
        prom_latency_ready=min((s.ready for s in window), default=0),
        prom_rows_rate=rows,
        prom_forwards_rate=forwards,
        prom_busy_rate=busy,
        prom_rows_sq_rate=rows_sq,
        prom_row_s_rate=row_s,
        kpa_samples=kpa_samples,
    )


# --- policies ----------------------------------------------------------------------------------


def kinfer_policy(spec: Scaling, setup: Setup, initial: int) -> Policy:
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
            rows_per_second=obs.prom_rows_rate,
            forwards_per_second=obs.prom_forwards_rate,
            busy_seconds_per_second=obs.prom_busy_rate,
            rows_squared_per_second=obs.prom_rows_sq_rate,
            row_seconds_per_second=obs.prom_row_s_rate,
            max_batch_size=setup.model.max_batch,
            cold_start_seconds=setup.cold_start_s,
        )
        state = ScalingState(**{**state.__dict__, "replicas": obs.current})
        decision = decide(spec, window, state, obs.now)
        state = decision.next_state
        return decision.replicas

    return tick


def hpa_policy(setup: Setup, min_replicas: int, down_s: float = 300, util: float = 1.0) -> Policy:
    """pkg/controller/podautoscaler: replica calculator + default behavior.

    ``util`` scales the queue target (1.0: the shared target, the HPA's AverageValue)."""
    tolerance = 0.1
    recs: deque[tuple[float, int]] = deque()
    events: deque[tuple[float, int]] = deque()  # (time, replicas added) for the up policy
    queue_target = setup.queue_target * util

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
            proposals.append(proposal(ready, current, obs.prom_queue / ready / queue_target))
            if obs.prom_p95_ms is not None:
                proposals.append(proposal(ready, current, obs.prom_p95_ms / setup.p95_target_ms))
        desired = max(proposals) if proposals else current
        desired = max(min_replicas, min(desired, setup.max_replicas))
        # Stabilization: up window 0 s, down window (default 300 s), highest recommendation.
        if not recs:  # the controller seeds a new HPA's history with the current count
            recs.append((obs.now, current))
        recs.append((obs.now, desired))
        while recs and recs[0][0] < obs.now - down_s:
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


def kpa_policy(setup: Setup, min_replicas: int, stable_s: float = 60.0, util: float = 0.7) -> Policy:
    """knative/serving pkg/autoscaler/scaling/autoscaler.go, with its defaults: target
    utilisation 70 % of the concurrency target, 60 s stable / 6 s panic window (10 %), panic at
    200 %, max scale-up rate 1000, max scale-down rate 2, 2 s tick."""
    panic_s, panic_threshold = stable_s / 10, 2.0
    max_up_rate, max_down_rate = 1000.0, 2.0
    target = setup.queue_target * util
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
        dspc = math.ceil(sum(stable) / len(stable) / target)
        dppc = math.ceil(sum(panic) / len(panic) / target)
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


def lookahead_schedule(arrivals: np.ndarray, setup: Setup, headroom: float, step: float) -> np.ndarray:
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
    return np.asarray(np.minimum(ahead, setup.max_replicas), dtype=int)


def schedule_policy(schedule: np.ndarray, step: float) -> Policy:
    """Start pods a cold start before they are needed; stop them the moment they are not."""

    def tick(obs: Obs) -> int:
        return int(schedule[min(int(obs.now // step), len(schedule) - 1)])

    return tick


def lower_bound(arrivals: np.ndarray, setup: Setup, attainment: float, width: float = 20.0) -> float:
    """Replica-seconds no policy can beat while answering ``attainment`` of requests on time.

    Cut time into bins of ``width`` s. A request arriving in [kW, (k+1)W - SLO] and answered on
    time is served inside bin k; a row costs at least 1/capacity replica-seconds (full batches
    are the cheapest); at least one replica runs in every bin. Cold starts, queueing and the
    rows of each bin's last SLO are not charged, so the bound is loose, never wrong. The
    (1 - attainment) share of requests that may be late is taken from the bins above the floor.
    """
    cap = setup.model.capacity
    end = float(arrivals[-1]) + 30.0
    starts = np.arange(0.0, end, width)
    lo = np.searchsorted(arrivals, starts)
    hi = np.searchsorted(arrivals, starts + width - setup.slo_s, side="right")
    work = (hi - lo) / cap
    floor = np.minimum(width, end - starts)
    total = float(np.maximum(work, floor).sum())
    spare = float(np.maximum(work - floor, 0).sum())
    return total - min((1 - attainment) * len(arrivals) / cap, spare)


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


def _families() -> Any:
    spec = importlib.util.spec_from_file_location("families", TRACES / "families.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family_trace(family: str, seed: int, scale: float, minutes: float = 45.0) -> np.ndarray:
    """Seed ``seed`` of a families.py family (its parameters drawn exactly as families.py draws
    them), its rate x ``scale``, as a Poisson process: the curve is read once a second and
    arrivals thinned from it with numpy (families.py's own thinning is too slow at this rate)."""
    rate = _families().FAMILIES[family](random.Random(seed), minutes)
    seconds = int(minutes * 60)
    curve = np.array([rate(t) for t in range(seconds)]) * scale
    rng = np.random.default_rng(seed)
    counts = rng.poisson(curve)
    starts = np.repeat(np.arange(seconds, dtype=float), counts)
    return np.sort(starts + rng.uniform(0, 1, len(starts)))


FAMILIES = ("diurnal", "spike", "step", "ramp")


def trace_names(suite: bool) -> list[str]:
    names = ["azure", "synthetic"]
    if suite:
        names += [f"{f}-{s}" for f in FAMILIES for s in FAMILY_SEEDS]
    return names


def arrivals_for(name: str, args: argparse.Namespace, setup: Setup) -> tuple[str, np.ndarray]:
    if name == "azure":
        return f"{DEFAULT_TRACE.name} x{args.copies}", load_trace(DEFAULT_TRACE, args.copies, args.shift)
    if name == "synthetic":
        return "synthetic burst + quiet", synthetic_trace(args.seed, base_rate=2.0 * setup.model.capacity)
    if name.startswith("file:"):
        path = Path(name[5:])
        return f"{path.name} x{args.copies}", load_trace(path, args.copies, args.shift)
    family, _, seed = name.rpartition("-")
    return f"{name} (rate x{args.family_scale:g})", family_trace(family, int(seed), args.family_scale)


# --- the run -----------------------------------------------------------------------------------


def kinfer_spec(setup: Setup, down_s: int = 300, p95: float = 1.0) -> Scaling:
    """The API's defaults but for the shared targets (and, tuned, the stated knobs:
    scaleDownStabilizationSeconds and the p95 target x ``p95``)."""
    return Scaling(
        min_replicas=1,
        max_replicas=setup.max_replicas,
        targets=Targets(
            queue_depth_per_replica=setup.queue_target, p95_latency_ms=round(setup.p95_target_ms * p95)
        ),
        scale_down_stabilization_seconds=down_s,
    )


def run_policy(
    kind: str, params: dict[str, float], arrivals: np.ndarray, setup: Setup, initial: int, name: str
) -> Result:
    if kind == "kinfer":
        spec = kinfer_spec(setup, int(params.get("down_s", 300)), params.get("p95", 1.0))
        return simulate(name, arrivals, setup, kinfer_policy(spec, setup, initial), 10.0, initial)
    if kind == "hpa":
        return simulate(name, arrivals, setup, hpa_policy(setup, 1, **params), 15.0, initial)
    if kind == "kpa":
        return simulate(name, arrivals, setup, kpa_policy(setup, 1, **params), 2.0, initial)
    raise ValueError(kind)


def static_pools(arrivals: np.ndarray, setup: Setup) -> list[Result]:
    """fixed-K for K = 1 up to the first pool that answers 99.9 % on time (or maxReplicas)."""
    pools = []
    for k in range(1, setup.max_replicas + 1):
        pools.append(simulate(f"fixed-{k}", arrivals, setup, fixed_policy(k), 10.0, k))
        if pools[-1].attainment >= 0.999:
            break
    return pools


def frontier(pools: list[Result], replica_seconds: float) -> float:
    """The static pools' attainment at this many replica-seconds, linear between fixed-K rows."""
    xs = [p.replica_seconds for p in pools]
    return float(np.interp(replica_seconds, xs, [p.attainment for p in pools]))


def lookahead(arrivals: np.ndarray, setup: Setup) -> tuple[Result, float]:
    """The least headroom (bisected) whose look-ahead schedule answers 99 % on time."""
    step = 10.0
    lo, hi = 0.8, 3.0
    best: Result | None = None
    for _ in range(6):
        mid = (lo + hi) / 2
        schedule = lookahead_schedule(arrivals, setup, mid, step)
        result = simulate(
            "lookahead", arrivals, setup, schedule_policy(schedule, step), step, int(schedule[0])
        )
        if result.attainment >= 0.99:
            best, hi = result, mid
        else:
            lo = mid
    if best is None:
        schedule = lookahead_schedule(arrivals, setup, hi, step)
        best = simulate("lookahead", arrivals, setup, schedule_policy(schedule, step), step, int(schedule[0]))
    return best, hi


@dataclass
class TraceRun:
    name: str
    title: str
    requests: int
    minutes: float
    headroom: float
    defaults: dict[str, Result]
    candidates: dict[str, list[Result]]  # per policy: one per GRID configuration (or TUNED's)
    pools: list[Result]
    best: Result
    bound: float
    results: list[Result] = field(default_factory=list)  # the table, once tuned rows are chosen

    def by(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def choose(self, tuned: dict[str, int]) -> None:
        rows = []
        for kind in ("kinfer", "hpa", "kpa"):
            rows += [self.defaults[kind], self.candidates[kind][tuned.get(kind, 0)]]
        self.results = [*rows, *self.pools, self.best]


def run_trace(job: tuple[str, argparse.Namespace, Setup, bool]) -> TraceRun:
    """Every row of one trace; with ``grid`` every tuning candidate too (the suite chooses)."""
    name, args, setup, grid = job
    title, arrivals = arrivals_for(name, args, setup)
    best, headroom = lookahead(arrivals, setup)
    initial = int(lookahead_schedule(arrivals, setup, 1.0, 10.0)[0])
    defaults = {kind: run_policy(kind, {}, arrivals, setup, initial, kind) for kind in GRID}
    candidates = {
        kind: [
            run_policy(kind, params, arrivals, setup, initial, f"{kind}-tuned")
            for params in (configs if grid else [TUNED[kind]])
        ]
        for kind, configs in GRID.items()
    }
    pools = static_pools(arrivals, setup)
    bound = lower_bound(arrivals, setup, 0.99)
    for r in [*defaults.values(), *(r for rs in candidates.values() for r in rs), *pools, best]:
        r.latencies = np.empty(0)  # the rows travel back from a worker process
    return TraceRun(
        name,
        title,
        len(arrivals),
        float(arrivals[-1]) / 60,
        headroom,
        defaults,
        candidates,
        pools,
        best,
        bound,
    )


def choose_tuned(runs: list[TraceRun]) -> tuple[dict[str, int], list[str]]:
    """Per policy, the GRID configuration with the best mean frontier margin on the tuning
    traces (synthetic and seeds TUNE_SEEDS of each family): never per trace."""
    tuning = [
        r
        for r in runs
        if r.name == "synthetic" or any(r.name == f"{f}-{s}" for f in FAMILIES for s in TUNE_SEEDS)
    ]
    chosen, lines = {}, []
    for kind, configs in GRID.items():
        assert len(configs) == TUNING_BUDGET, kind
        margins = [
            float(np.mean([_margin(r.candidates[kind][i], r.pools) for r in tuning]))
            for i in range(len(configs))
        ]
        chosen[kind] = int(np.argmax(margins))
        lines += [
            f"  {kind:<7} {c}  mean frontier margin {m:+.4f}" for c, m in zip(configs, margins, strict=True)
        ]
        lines.append(f"  tuned {kind}: {configs[chosen[kind]]}")
    return chosen, lines


def _margin(r: Result, pools: list[Result]) -> float:
    return r.attainment - frontier(pools, r.replica_seconds)


def report(run: TraceRun) -> str:
    base = run.by("lookahead").replica_seconds
    lines = [
        f"\n{run.title}: {run.requests} requests over {run.minutes:.1f} min, "
        f"look-ahead headroom {run.headroom:.2f}",
        f"{'policy':<13} {'replica-s':>10} {'vs lookahead':>12} {'SLO att.':>9} {'p99 ms':>8} "
        f"{'events':>7} {'peak':>5}",
    ]
    for r in run.results:
        lines.append(
            f"{r.name:<13} {r.replica_seconds:>10.0f} {r.replica_seconds / base:>12.2f} "
            f"{r.attainment:>9.4f} {r.p99_ms:>8.0f} {r.scale_events:>7d} {r.peak:>5d}"
        )
    lines.append(
        f"{'bound':<13} {run.bound:>10.0f} {run.bound / base:>12.2f} {'0.99':>9} {'-':>8} {'-':>7} {'-':>5}"
    )
    lines.append(goals(run))
    lines.append(summary(run))
    return "\n".join(lines)


def goals(run: TraceRun) -> str:
    k, hpa, kpa = run.by("kinfer"), run.by("hpa"), run.by("kpa")
    marks = {
        "frontier": k.attainment > frontier(run.pools, k.replica_seconds),
        "hpa": k.attainment >= hpa.attainment and k.replica_seconds <= hpa.replica_seconds,
        "kpa": k.attainment >= kpa.attainment and k.replica_seconds <= kpa.replica_seconds,
    }
    pool99 = next((p for p in run.pools if p.attainment >= 0.99), None)
    text = " ".join(f"{g}={'met' if ok else 'UNMET'}" for g, ok in marks.items())
    if pool99 is None:
        text += " pool99=n/a (no fixed pool up to maxReplicas reaches 0.99)"
    else:
        ok = k.attainment >= 0.99 and k.replica_seconds < pool99.replica_seconds
        verdict = "met" if ok else "UNMET"
        text += f" pool99={verdict} (cheapest: {pool99.name}, {pool99.replica_seconds:.0f} replica-s)"
    return f"goals: {text}"


def summary(run: TraceRun) -> str:
    k, hpa, kpa = run.by("kinfer"), run.by("hpa"), run.by("kpa")
    return (
        f"TRACE: kinfer attainment={k.attainment:.3f} replica_s={k.replica_seconds:.0f} "
        f"frontier_attainment={frontier(run.pools, k.replica_seconds):.3f} "
        f"hpa_attainment={hpa.attainment:.3f} hpa_replica_s={hpa.replica_seconds:.0f} "
        f"kpa_attainment={kpa.attainment:.3f} kpa_replica_s={kpa.replica_seconds:.0f} "
        f"lookahead_ratio={k.replica_seconds / run.by('lookahead').replica_seconds:.2f}"
    )


def _map(fn: Callable[[Any], Any], items: Iterable[Any], jobs: int) -> list[Any]:
    if jobs <= 1:
        return [fn(x) for x in items]
    with Pool(jobs) as pool:
        return pool.map(fn, list(items), chunksize=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", type=Path, help="CSV with a TIMESTAMP column (instead of the defaults)")
    p.add_argument(
        "--suite", action="store_true", help="conversation, synthetic and seeds 0-4 of each family"
    )
    p.add_argument("--jobs", type=int, default=1, help="traces simulated in parallel")
    p.add_argument("--copies", type=int, default=24, help="replay a CSV trace this many times")
    p.add_argument("--shift", type=float, default=7.3, help="seconds between copies")
    p.add_argument("--family-scale", type=float, default=24.0, help="multiply a family's rate by this")
    p.add_argument("--slo-ms", type=float, default=500.0)
    p.add_argument("--cold-start", type=float, default=60.0, help="seconds until a pod is ready")
    p.add_argument("--scrape", type=float, default=15.0, help="Prometheus scrape interval, s")
    p.add_argument("--rate-window", type=float, default=60.0, help="rate()/p95 range, s")
    p.add_argument("--base-ms", type=float, default=50.0, help="batch latency at 0 rows, ms")
    p.add_argument("--per-row-ms", type=float, default=25.0, help="batch latency per row, ms")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-target", type=float, help="queue depth per replica (default: --max-batch)")
    p.add_argument("--p95-target-ms", type=int, help="p95 target (default: 0.9 x --slo-ms)")
    p.add_argument("--max-replicas", type=int, default=40)
    p.add_argument("--family", choices=FAMILIES, help="one trace: seed --seed of this family")
    p.add_argument("--seed", type=int, default=1, help="of the synthetic burst trace (or of --family)")
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
        + (
            f"tuned rows: chosen below from a grid of {TUNING_BUDGET} configurations each"
            if args.suite
            else f"tuned rows: {TUNED} (chosen by the last --suite run)"
        )
    )
    names = [f"file:{args.trace}"] if args.trace else trace_names(args.suite)
    if args.family:
        names = [f"{args.family}-{args.seed}"]
    runs = _map(run_trace, [(n, args, setup, args.suite) for n in names], args.jobs)
    if args.suite:
        tuned, lines = choose_tuned(runs)
        print(
            "\ntuned rows, chosen on the tuning traces (synthetic, seeds "
            f"{', '.join(map(str, TUNE_SEEDS))} of each family):",
            *lines,
            sep="\n",
        )
    else:
        tuned = {}
    for run in runs:
        run.choose(tuned)
        print(report(run), flush=True)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
