"""How many replicas: a pure function of (spec, metrics window, state, now).

``decide`` is a chain of small named steps, each a plain function tested on its own:

1. ``usable``          missing, stale or no reporting pod → hold the current count (fail-static).
2. ``learn_forward``   fold this window's (mean batch, forward time) into a decayed line fit of
                       the runtime's batch-latency curve; ``throughput`` reads from it the rows/s
                       one replica serves at the latency target (rows per busy second until the
                       curve is known).
3. ``arrival_rate``    answered requests/s plus the queue's growth over the recent ticks.
4. ``burst_headroom``  how much the arrival rate rose within one cold start, recently (spread).
5. ``by_rate``         (arrival rate + headroom) / per-replica throughput.
6. ``by_backlog``      replicas for the queue, only if it outlasts a cold start at today's
                       capacity (else it drains before a new pod could help).
7. ``by_queue_depth``  replicas so each holds ``targets.queueDepthPerReplica`` rows: used only
                       while the throughput is not learned yet (a new service, or from zero).
8. ``by_latency``      the pods behind the p95 scaled by p95 / ``targets.p95LatencyMs``.
9. ``track_demand``    when demand was last seen; ``is_idle`` after ``scaleToZero.idleSeconds``.
10. ``bounds``         clamp to [minReplicas, maxReplicas] (0 when idle and scale-to-zero is on).
11. ``panicking``      a sharp burst: demand ≥ ``PANIC_THRESHOLD`` x ready replicas.
12. ``stabilize``      HPA-style: a scale-up takes the lowest recommendation of the up window, a
                       scale-down the highest of the down window. Panic and activation from zero
                       skip the up window; panic never scales down.
13. ``limit_scale_up`` at most ``maxScaleUpRate`` x current replicas in one step.

No I/O and no clock: ``now`` is an argument, and everything carried between ticks is in
``ScalingState``, which the operator stores in the resource (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from kinfer.api.v1alpha1 import Scaling
from kinfer.autoscaling.window import MetricsWindow

# Not spec fields (yet); constants so a change is one reviewed line.

PANIC_THRESHOLD = 2.0
"""Panic when the recommendation is at least this multiple of the ready replicas, i.e. demand
is twice what the pods that serve now can hold at target (Knative's 200 % default). A gauge read
each tick already reacts as fast as Knative's 6 s panic window, so the trigger compares one
instant reading with the capacity in service instead of comparing two averaging windows."""

PANIC_HOLD_SECONDS = 60.0
"""Panic lasts this long after the last tick that triggered it (Knative's 60 s stable window):
long enough for new pods to start absorbing the burst before any scale-down is considered."""

MAX_WINDOW_AGE_SECONDS = 60.0
"""A window sampled longer ago than this is stale: hold the count rather than act on old data."""

LATENCY_TOLERANCE = 0.1
"""p95 within ±10 % of target keeps the latency term at the ready replicas (the HPA tolerance),
so noise around the target does not add or remove a pod."""

DEFAULT_COLD_START_SECONDS = 60.0
"""Created→Ready of a new pod when the service has no measurement yet (window.cold_start_seconds
None): a model server that pulls an image and loads weights."""

FIT_HALF_LIFE_SECONDS = 1800.0
"""The batch-latency fit forgets a point after about this long (a new model version, a new
node type): half its weight per half-life."""

HISTORY_SECONDS = 600.0
"""How far back the queue and arrival-rate history reaches (for the queue's growth and the
headroom's spread)."""

GROWTH_SECONDS = 60.0
"""The queue's growth is measured over this span of history: four scrapes at 15 s."""

DRAIN_SECONDS = 30.0
"""A backlog that outlasts a cold start is drained within this long once new pods are ready."""

MIN_THROUGHPUT, MAX_THROUGHPUT = 1e-3, 1e7
"""Rows/s per replica outside this range is a broken fit (or counters), not a model server:
the decision sizes by queue depth instead."""

TREND_SECONDS = 120.0
"""The arrival rate's slope is read over this span of history."""

HEADROOM_SPREAD = 2.0
"""Headroom = this many standard deviations of the rise of the arrival rate within one cold
start over the history (about the 97th percentile if rises were normal)."""

_EPS = 1e-9  # ceil(8.000000001) must stay 8 after float division


@dataclass(frozen=True)
class ScalingState:
    """What one tick hands to the next. Small and JSON-safe: it lives in the resource."""

    replicas: int = 1
    """Replicas the Deployment(s) are set to now (the count this decision moves from)."""
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, recommendation) pairs within the longest stabilization window."""
    panic_until: float | None = None
    panic_floor: int = 0
    """Highest count reached during the current panic; never go below it while panicking."""
    last_demand_at: float | None = None
    last_scale_at: float | None = None
    fit: tuple[float, float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    """Decayed per-second sums over forwards (count, rows b, seconds t, b², b·t) and when they
    were last decayed: a least-squares fit of the batch-latency line t = t0 + t1·b."""
    history: tuple[tuple[float, float, float], ...] = ()
    """(time, queue depth, arrival rate) per tick within HISTORY_SECONDS."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "recommendations": [[t, r] for t, r in self.recommendations],
            "panicUntil": self.panic_until,
            "panicFloor": self.panic_floor,
            "lastDemandAt": self.last_demand_at,
            "lastScaleAt": self.last_scale_at,
            "fit": list(self.fit),
            "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingState:
        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            replicas=int(data.get("replicas", 1)),
            recommendations=tuple((float(t), int(r)) for t, r in data.get("recommendations", ())),
            panic_until=opt("panicUntil"),
            panic_floor=int(data.get("panicFloor", 0)),
            last_demand_at=opt("lastDemandAt"),
            last_scale_at=opt("lastScaleAt"),
            fit=_fit_from(data.get("fit")),
            history=tuple((float(t), float(q), float(r)) for t, q, r in data.get("history", ())),
        )


def _fit_from(value: Any) -> tuple[float, float, float, float, float, float]:
    if not value or len(value) != 6:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    w, b, t, bb, bt, at = (float(v) for v in value)
    return (w, b, t, bb, bt, at)


@dataclass(frozen=True)
class Term:
    """One step's result, for ``kinfer explain-scale`` and the event message."""

    name: str
    value: float | int | str | bool | None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    next_state: ScalingState
    terms: tuple[Term, ...] = field(default=())
    metrics_available: bool = True
    """False → the operator sets MetricsAvailable=False (the count was held)."""
    panic: bool = False
    previous: int = 0
    """The count this decision moves from (``state.replicas`` on the way in)."""

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


# --- the steps ---------------------------------------------------------------------------------


def usable(window: MetricsWindow, now: float, current: int, max_age: float = MAX_WINDOW_AGE_SECONDS) -> str:
    """Why the window cannot be acted on, or "" when it can.

    Pods that run but report nothing (scrape broken, or still starting) are missing data, not
    zero load: acting on them would scale a busy service down to minReplicas.
    """
    if not window.available:
        return f"metrics unavailable: {window.reason or 'no reason given'}"
    if window.is_stale(now, max_age):
        return f"metrics stale: sampled {window.age(now):.0f}s ago (limit {max_age:.0f}s)"
    if window.age(now) < -max_age:
        return f"metrics from the future: sampled {-window.age(now):.0f}s ahead of now"
    if window.ready_replicas == 0 and current > 0:
        return f"no ready replica reports metrics ({current} set)"
    return ""


Fit = tuple[float, float, float, float, float, float]


def forward_sums(window: MetricsWindow) -> tuple[float, float, float, float, float] | None:
    """Per-second sums over the window's forwards: (count n, Σrows b, Σseconds t, Σb², Σb·t);
    None when no forward finished or the runtime does not report them."""
    sums = (
        window.forwards_per_second,
        window.rows_per_second,
        window.busy_seconds_per_second,
        window.rows_squared_per_second,
        window.row_seconds_per_second,
    )
    if any(x is None or not math.isfinite(x) or x <= 0 for x in sums):
        return None
    n, b, t, bb, bt = (float(x) for x in sums)  # type: ignore[arg-type]
    return n, b, t, bb, bt


def learn_forward(
    fit: Fit, window: MetricsWindow, now: float, half_life: float = FIT_HALF_LIFE_SECONDS
) -> Fit:
    """The fit with this window's forwards added and older ones decayed (half per half-life)."""
    w, sb, st, sbb, sbt, at = fit
    decay = 0.5 ** (max(now - at, 0.0) / half_life) if w > 0 else 0.0
    w, sb, st, sbb, sbt = (x * decay for x in (w, sb, st, sbb, sbt))
    sums = forward_sums(window)
    if sums is None:
        return (w, sb, st, sbb, sbt, now)
    n, b, t, bb, bt = sums
    return (w + n, sb + b, st + t, sbb + bb, sbt + bt, now)


def throughput(fit: Fit, max_batch: int | None, latency_ms: float) -> float | None:
    """Rows/s one replica serves while requests stay within the latency target; None until a
    forward was seen.

    A request waits for the running forward, then rides the next, so it takes about two
    forwards: the batch is the largest b ≤ max batch with 2·t(b) ≤ target on the fitted line
    t(b) = t0 + t1·b, and the throughput b / t(b). Until the fit has a slope (one batch size seen,
    or no max batch known), the rows per busy second observed: a lower bound, since a batching
    server is cheaper per row at larger batches.
    """
    w, sb, st, sbb, sbt, _ = fit
    if w < 0.01 or st <= 0 or sb <= 0:  # no forward seen, or all decayed away
        return None
    mean_b, mean_t = sb / w, st / w
    if mean_t <= 0 or mean_b <= 0:  # sums so small (decayed, or read back from status) they underflow
        return None
    observed = mean_b / mean_t
    spread = sbb / w - mean_b * mean_b
    if max_batch is None or spread < 0.25:  # batch sizes within half a row: no slope to read
        return _sane(observed)
    beta = (sbt / w - mean_b * mean_t) / spread
    alpha = mean_t - beta * mean_b
    if beta <= 0 or alpha < 0:  # noise, or not a batching curve: trust what was seen
        return _sane(observed)
    b = min(float(max_batch), max(1.0, (latency_ms / 2000 - alpha) / beta))
    return _sane(b / (alpha + beta * b))


def _sane(rows_per_second: float) -> float | None:
    """A throughput to divide by, or None for a fit that is numerically nonsense."""
    ok = math.isfinite(rows_per_second) and MIN_THROUGHPUT <= rows_per_second <= MAX_THROUGHPUT
    return rows_per_second if ok else None


def arrival_rate(window: MetricsWindow, history: tuple[tuple[float, float, float], ...], now: float) -> float:
    """Requests/s arriving: those answered plus the queue's growth over the last GROWTH_SECONDS
    (while pods are saturated the answered rate hides the demand the queue shows)."""
    past = [(t, q) for t, q, _ in history if now - GROWTH_SECONDS - _EPS <= t < now]
    if not past:
        return window.request_rate
    t0, q0 = past[0]
    return window.request_rate + max(0.0, (window.queue_depth - q0) / (now - t0))


def burst_headroom(history: tuple[tuple[float, float, float], ...], now: float, cold_start: float) -> float:
    """Requests/s to keep spare: HEADROOM_SPREAD x the root-mean-square change of the arrival
    rate over one cold start, across the history (not this tick, so that more demand now never
    means less headroom). Capacity started now is ready a cold start later; this is how far the
    rate moved within such a span lately. 0 without history."""
    points = [(t, r) for t, _, r in history if t < now]
    changes = []
    j = 0
    for t, r in points:
        while j + 1 < len(points) and points[j + 1][0] <= t - cold_start + _EPS:
            j += 1
        if points[j][0] <= t - cold_start + _EPS:
            changes.append(r - points[j][1])
    if not changes:
        return 0.0
    return HEADROOM_SPREAD * math.sqrt(sum(c * c for c in changes) / len(changes))


def rate_trend(
    history: tuple[tuple[float, float, float], ...], rate: float, now: float, lead: float
) -> float:
    """Requests/s the arrival rate will have risen by ``lead`` seconds from now if it keeps the
    slope of the last TREND_SECONDS: the smaller slope of its two halves, rises only; 0 without
    history."""
    past = [(t, r) for t, _, r in history if now - TREND_SECONDS - _EPS <= t < now]
    if len(past) < 2:
        return 0.0
    (t0, r0), (t1, r1) = past[0], past[len(past) // 2]
    # Both halves must rise: a step's one-off jump is not a trend to extrapolate.
    slope = min((r1 - r0) / (t1 - t0), (rate - r1) / (now - t1)) if t1 > t0 else 0.0
    return max(0.0, slope) * lead


def by_rate(arrivals: float, headroom: float, per_replica: float) -> int:
    """Replicas that serve the arrival rate plus headroom at the learned throughput."""
    return max(0, math.ceil((arrivals + headroom) / per_replica - _EPS))


def by_backlog(window: MetricsWindow, arrivals: float, per_replica: float, cold_start: float) -> int:
    """Replicas for the queue beyond the rows in the pods' forwards, counting only pods that are
    ready before the backlog drains.

    At today's capacity (ready x throughput) the backlog drains at capacity - arrivals. If that
    takes less than a cold start a new pod would find an empty queue: 0. Otherwise size for the
    arrivals plus draining what is left when new pods are ready within DRAIN_SECONDS (every
    request behind a backlog is late, so a short drain saves more than its pods cost).
    """
    ready = window.ready_replicas
    backlog = window.queue_depth - ready * (window.max_batch_size or 1)
    if backlog <= 0:
        return 0
    left = backlog - (ready * per_replica - arrivals) * cold_start
    if left <= 0:
        return 0
    return max(0, math.ceil((arrivals + left / DRAIN_SECONDS) / per_replica - _EPS))


def record_history(
    history: tuple[tuple[float, float, float], ...], now: float, queue: float, rate: float
) -> tuple[tuple[float, float, float], ...]:
    kept = tuple(h for h in history if now - HISTORY_SECONDS <= h[0] < now)
    return (*kept, (now, queue, rate))


def by_queue_depth(spec: Scaling, window: MetricsWindow) -> int:
    """Replicas needed so each holds the target queue depth. Works from zero replicas too."""
    return max(0, math.ceil(window.queue_depth / spec.targets.queue_depth_per_replica - _EPS))


def by_latency(spec: Scaling, window: MetricsWindow) -> int:
    """The replicas behind the p95, scaled by p95/target; unchanged within tolerance; 0 without
    data.

    "Behind the p95" is the fewest ready replicas of the latency window: pods that are starting,
    or joined after the slow requests, must not multiply a latency they did not serve (else each
    tick after a scale-up would compound the same old p95). And when the pool grew during the
    window and the queue now is within target for the ready pods, the backlog behind that p95
    is gone: the term asks for no more than the ready pods until the window shows the new pool.
    """
    replicas = _latency_pool(window)
    if window.p95_latency_ms is None or replicas <= 0:
        return 0
    ratio = window.p95_latency_ms / spec.targets.p95_latency_ms
    if abs(ratio - 1.0) <= LATENCY_TOLERANCE:
        return replicas
    wanted = max(0, math.ceil(replicas * ratio - _EPS))
    if _p95_predates_pool(spec, window):
        # The slow requests were served by the smaller pool of the window's start; the pool that
        # runs now keeps its queue at target, so that p95 is no evidence against it.
        return min(wanted, window.ready_replicas)
    return wanted


def by_generation(spec: Scaling, window: MetricsWindow) -> int:
    """Generative models, when their targets are set: replicas so each holds
    ``targets.tokensInFlightPerReplica`` reserved tokens, and the pods behind the p95 time to
    first token scaled by p95 / ``targets.p95TimeToFirstTokenMs`` (HPA tolerance). 0 otherwise."""
    t = spec.targets
    by_tokens = 0
    if t.tokens_in_flight_per_replica is not None:
        by_tokens = max(0, math.ceil(window.tokens_in_flight / t.tokens_in_flight_per_replica - _EPS))
    by_ttft = 0
    replicas = _latency_pool(window)
    if t.p95_time_to_first_token_ms is not None and window.p95_ttft_ms is not None and replicas > 0:
        ratio = window.p95_ttft_ms / t.p95_time_to_first_token_ms
        by_ttft = replicas if abs(ratio - 1) <= LATENCY_TOLERANCE else math.ceil(replicas * ratio - _EPS)
    return max(by_tokens, by_ttft)


def _p95_predates_pool(spec: Scaling, window: MetricsWindow) -> bool:
    """The pool grew during the latency window and the queue now is within target for it."""
    grew = window.latency_replicas is not None and window.latency_replicas < window.ready_replicas
    keeping_up = window.queue_depth <= spec.targets.queue_depth_per_replica * window.ready_replicas
    return grew and keeping_up


def _latency_pool(window: MetricsWindow) -> int:
    if window.latency_replicas is None:
        return window.ready_replicas
    return min(window.ready_replicas, window.latency_replicas)


def check_latency(by_latency_term: int, ready: int) -> int:
    """The latency term when throughput is learned: at most one replica above the ready ones."""
    return min(by_latency_term, ready + 1)


def track_demand(last_demand_at: float | None, window: MetricsWindow, now: float) -> float:
    """When demand was last seen. A fresh state starts the idle clock now, not at the epoch."""
    if window.has_demand or last_demand_at is None:
        return now
    return last_demand_at


def is_idle(spec: Scaling, last_demand_at: float, now: float) -> bool:
    """Scale-to-zero is on and nothing arrived for idleSeconds."""
    stz = spec.scale_to_zero
    return stz.enabled and now - last_demand_at >= stz.idle_seconds


def bounds(spec: Scaling, idle: bool) -> tuple[int, int]:
    """[lo, hi] for the count: 0 only when idle; otherwise at least one pod serves."""
    lo = 0 if idle else max(spec.min_replicas, 1)
    return lo, spec.max_replicas


def clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(value, hi))


def panicking(desired: int, ready: int, now: float, panic_until: float | None) -> tuple[bool, float | None]:
    """(in panic now, panic_until). Triggered by desired ≥ threshold x ready; held for a while.

    With no ready pod there is no capacity to compare with; activation from zero is its own
    immediate path, so it is not a panic.
    """
    if ready > 0 and desired >= PANIC_THRESHOLD * ready:
        return True, now + PANIC_HOLD_SECONDS
    if panic_until is not None and now < panic_until:
        return True, panic_until
    return False, None


def record(
    recs: tuple[tuple[float, int], ...], now: float, value: int, horizon: float
) -> tuple[tuple[float, int], ...]:
    """Add this tick's recommendation, drop those older than the longest window."""
    kept = tuple((t, r) for t, r in recs if now - horizon <= t <= now)
    return (*kept, (now, value))


def stabilize(
    current: int,
    recs: tuple[tuple[float, int], ...],
    now: float,
    up_seconds: float,
    down_seconds: float,
) -> tuple[int, int, int]:
    """HPA's rule: (result, up_rec, down_rec).

    up_rec is the lowest recommendation of the up window (a rise must have held that long),
    down_rec the highest of the down window (a fall must have held that long). ``recs`` ends
    with this tick's value, so up_rec ≤ value ≤ down_rec and the result is current clamped
    into [up_rec, down_rec].
    """
    up = [r for t, r in recs if t >= now - up_seconds]
    down = [r for t, r in recs if t >= now - down_seconds]
    up_rec, down_rec = min(up), max(down)
    return clamp(current, up_rec, down_rec), up_rec, down_rec


def limit_scale_up(current: int, desired: int, rate: float) -> int:
    """At most rate x current in one step (from zero, as if from one)."""
    if desired <= current:
        return desired
    return min(desired, max(math.ceil(max(current, 1) * rate - _EPS), current + 1))


# --- the chain ---------------------------------------------------------------------------------


def decide(spec: Scaling, window: MetricsWindow, state: ScalingState, now: float) -> Decision:
    """The replicas to run now, why, and the state for the next tick."""
    current = state.replicas
    terms: list[Term] = [Term("current", current, "replicas set now")]

    problem = usable(window, now, current)
    if problem:
        # Fail-static: hold (within the spec's bounds, which are not metrics). The hold is this
        # tick's recommendation: a fall must then hold a full down window of usable metrics
        # after they return (the first windows after an outage have rates from a sample or two).
        held = min(max(current, spec.min_replicas), spec.max_replicas)
        terms.append(Term("metrics", False, problem))
        horizon = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
        state = replace(state, recommendations=record(state.recommendations, now, held, horizon))
        return _finish(held, f"holding {held}: {problem}", state, now, terms, available=False)

    terms.append(Term("metrics", True, f"sampled {window.age(now):.0f}s ago"))
    cold_start = window.cold_start_seconds or DEFAULT_COLD_START_SECONDS
    fit = learn_forward(state.fit, window, now)
    per_replica = throughput(fit, window.max_batch_size, spec.targets.p95_latency_ms)
    arrivals = arrival_rate(window, state.history, now)
    # What a pod started now meets: the rate a cold start (plus half the rate window's lag)
    # ahead on the recent slope, plus headroom for the rate's recent spread.
    trend = rate_trend(state.history, arrivals, now, cold_start + GROWTH_SECONDS / 2)
    headroom = trend + burst_headroom(state.history, now, cold_start)
    latency = by_latency(spec, window)
    terms += [
        Term(
            "cold_start_seconds",
            round(cold_start, 1),
            "measured created→Ready" if window.cold_start_seconds else "not measured: default",
        ),
        Term(
            "throughput",
            None if per_replica is None else round(per_replica, 2),
            "rows/s per replica at the p95 target, learned from batch sizes and forward times"
            if per_replica is not None
            else "no forward seen yet: sizing by queue depth",
        ),
        Term("arrival_rate", round(arrivals, 2), f"answered {window.request_rate:.2f}/s + queue growth"),
        Term(
            "headroom",
            round(headroom, 2),
            f"req/s: trend {trend:.2f} over the next {cold_start + GROWTH_SECONDS / 2:.0f}s"
            f" + {HEADROOM_SPREAD:g} x RMS change within {cold_start:.0f}s",
        ),
    ]
    if per_replica is None:
        queue = by_queue_depth(spec, window)
        sized, backlog = queue, 0
        terms.append(
            Term(
                "by_queue_depth",
                queue,
                f"queue {window.queue_depth:g} / target {spec.targets.queue_depth_per_replica:g}",
            )
        )
    else:
        queue = 0
        sized = by_rate(arrivals, headroom, per_replica)
        backlog = by_backlog(window, arrivals, per_replica, cold_start)
        terms += [
            Term(
                "by_rate", sized, f"({arrivals:.2f} + {headroom:.2f}) / {per_replica:.2f} req/s per replica"
            ),
            Term(
                "by_backlog",
                backlog,
                f"queue depth {window.queue_depth:g}: only pods ready before it drains at today's capacity",
            ),
        ]
    terms.append(
        Term(
            "by_latency",
            latency,
            "no p95 (no requests)"
            if window.p95_latency_ms is None
            else f"p95 {window.p95_latency_ms:.0f}ms / target {spec.targets.p95_latency_ms}ms"
            f" x {_latency_pool(window)} replicas behind it",
        )
    )
    if per_replica is not None:
        # The rate and backlog terms size the pool; a p95 over target with them satisfied means
        # the pods are slower than their learned curve: one more pod a tick, not the HPA's
        # multiplication of a backlog's latency.
        latency = check_latency(latency, window.ready_replicas)
    generation = by_generation(spec, window)
    if generation:
        terms.append(
            Term(
                "by_generation",
                generation,
                f"tokens in flight {window.tokens_in_flight:g} / target "
                f"{spec.targets.tokens_in_flight_per_replica}; p95 TTFT "
                + ("none" if window.p95_ttft_ms is None else f"{window.p95_ttft_ms:.0f}ms")
                + f" / target {spec.targets.p95_time_to_first_token_ms}ms",
            )
        )
    raw = max(sized, backlog, latency, generation)
    state = replace(state, fit=fit, history=record_history(state.history, now, window.queue_depth, arrivals))

    last_demand = track_demand(state.last_demand_at, window, now)
    idle = is_idle(spec, last_demand, now)
    lo, hi = bounds(spec, idle)
    wanted = clamp(raw, lo, hi)
    # The backlog is a stock, not a flow: pods for it go at once and leave no history, so the
    # down window holds the flow's count, not the backlog's.
    wanted_flow = clamp(max(sized, latency), lo, hi)
    terms += [
        Term("idle_seconds", round(now - last_demand, 3), "since demand was last seen"),
        Term("bounds", f"[{lo}, {hi}]", "scale to zero: idle" if idle else ""),
        Term("recommendation", wanted, "max of the by_ terms within bounds"),
    ]
    state = replace(state, last_demand_at=last_demand)

    horizon = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    # No history (new service, or state lost): as the HPA does, count the current replicas as
    # recommended now, so nothing is removed before a full down window is seen (max() keeps a
    # scale-up free of it).
    history = state.recommendations or ((now, max(current, wanted_flow)),)
    recs = record(history, now, wanted_flow, horizon)
    state = replace(state, recommendations=recs)

    if idle:
        # The idle period is its own (longer) stabilization; do not wait another down window.
        state = replace(state, panic_until=None, panic_floor=0)
        why = f"idle {now - last_demand:.0f}s >= {spec.scale_to_zero.idle_seconds}s"
        how = "staying at zero" if current == 0 else "scale to zero"
        return _finish(0, f"{how}: {why}", state, now, terms)

    panic, panic_until = panicking(raw, window.ready_replicas, now, state.panic_until)
    terms.append(
        Term(
            "panic",
            panic,
            f"wanted {raw} vs {PANIC_THRESHOLD:g} x {window.ready_replicas} ready"
            + (f", until t={panic_until:.0f}" if panic_until is not None else ""),
        )
    )
    activating = current == 0
    up_seconds = 0.0 if panic or activating else float(spec.scale_up_stabilization_seconds)
    result, up_rec, down_rec = stabilize(
        current, recs, now, up_seconds, float(spec.scale_down_stabilization_seconds)
    )
    terms.append(
        Term(
            "stabilized",
            result,
            f"up window {up_seconds:g}s min {up_rec}, "
            f"down window {spec.scale_down_stabilization_seconds}s max {down_rec}",
        )
    )
    if wanted > result and backlog > max(sized, latency):
        result = wanted
        terms.append(Term("backlog_now", result, "the backlog's pods go at once and leave no history"))
    panic_floor = 0
    if panic:
        panic_floor = max(state.panic_floor, current)
        result = max(result, panic_floor)
    limited = limit_scale_up(current, result, spec.max_scale_up_rate)
    terms.append(Term("rate_limited", limited, f"max {spec.max_scale_up_rate:g} x current"))
    final = clamp(limited, lo, hi)
    if panic:
        panic_floor = max(panic_floor, final)
    if final > max(wanted, current):
        # A scale-up above the recommendation (to the panic floor) is held by the down window
        # like any other scale-up.
        recs = (*recs[:-1], (now, final))
    state = replace(state, recommendations=recs, panic_until=panic_until, panic_floor=panic_floor)

    driver = _driver(queue, sized if per_replica is not None else 0, backlog, latency)
    return _finish(final, _reason(final, current, raw, driver, panic, activating), state, now, terms)


def _driver(queue: int, rate: int, backlog: int, latency: int) -> str:
    """The term that set the recommendation, in words (ties: the first)."""
    named = [
        (queue, "queue depth"),
        (backlog, "backlog (queue depth)"),
        (rate, "arrival rate"),
        (latency, "p95 latency"),
    ]
    return max(named, key=lambda x: x[0])[1]


def _reason(final: int, current: int, raw: int, driver: str, panic: bool, activating: bool) -> str:
    if final > current:
        how = "activating from zero" if activating else ("panic" if panic else "scale up")
        return f"{how}: {driver} wants {raw}"
    if final < current:
        return f"scale down: {driver} wants {raw}, highest of the down window is {final}"
    if panic:
        return f"panic: holding {final}, {driver} wants {raw}"
    return f"steady: {driver} wants {raw}"


def _finish(
    replicas: int,
    reason: str,
    state: ScalingState,
    now: float,
    terms: list[Term],
    available: bool = True,
) -> Decision:
    terms.append(Term("replicas", replicas, reason))
    last_scale = now if replicas != state.replicas else state.last_scale_at
    next_state = replace(state, replicas=replicas, last_scale_at=last_scale)
    return Decision(
        replicas=replicas,
        reason=reason,
        next_state=next_state,
        terms=tuple(terms),
        metrics_available=available,
        panic=next_state.panic_until is not None and now < next_state.panic_until,
        previous=state.replicas,
    )
