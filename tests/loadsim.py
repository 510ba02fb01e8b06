"""A deterministic discrete-event simulator of one back end behind dlba's controlled loading.

The back end is processor sharing: every request brings an amount of work (exponential,
mean ``t0`` seconds, or exactly ``t0``) and, while ``c`` requests run, each advances at the
rate ``t0 / T(c)``, so a request alone takes its work's worth of seconds and ``c`` together
each take ``T(c)/t0`` times longer. ``T`` comes from a model:

- ``SharpKnee``: T(c) = t0 for c <= knee, t0·(c/knee)**power beyond: goodput c/T(c) grows
  linearly up to the knee and falls as knee²/c beyond it (thrashing);
- ``Contention``: the universal scalability law, T(c) = t0·(1 + sigma·(c-1) + kappa·c·(c-1)),
  whose goodput peaks smoothly at c = sqrt((1-sigma)/kappa).

A ``slow`` list of (start, end, how) changes the back end during those periods: ``how`` a
number multiplies T by it (every request slower), a model replaces T (say, a knee moved).

In front stands the proxy's side: a concurrency limit (none, a static number, or a
``FeedbackController`` ticked every ``tick`` seconds), a ``WaitQueue`` with a deadline per
request (``queue_timeout`` → 503) and a ``queue_limit`` (→ 503 at once). The clients are a
closed population: ``clients`` users, each sending its next request ``think`` seconds
(exponential; 0: at once) after the previous answer, 503 included.

Everything is driven by a simulated clock and one seeded ``random.Random``: the same
arguments give the same result.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dlba.loading import FeedbackController, WaitQueue, quantile


class Model(Hashable, Protocol):
    @property
    def t0(self) -> float:
        """Service time of one request alone, seconds (the mean with exponential work)."""
        ...

    def time(self, c: int) -> float:
        """Service time of each request while ``c`` run at once."""
        ...


@dataclass(frozen=True)
class SharpKnee:
    t0: float = 0.02
    knee: int = 8
    power: float = 2.0

    def time(self, c: int) -> float:
        return self.t0 * float(max(1.0, c / self.knee) ** self.power)


@dataclass(frozen=True)
class Contention:
    t0: float = 0.02
    sigma: float = 0.0
    kappa: float = 1.0 / 64

    def time(self, c: int) -> float:
        c = max(1, c)
        return self.t0 * (1 + self.sigma * (c - 1) + self.kappa * c * (c - 1))


def best_concurrency(model: Model, upto: int = 256) -> int:
    """The concurrency of the highest goodput c / T(c)."""
    best, rate = 1, 0.0
    for c in range(1, upto + 1):
        if c / model.time(c) > rate:
            best, rate = c, c / model.time(c)
    return best


@dataclass
class SimResult:
    duration: float  # measured seconds (after the warm-up)
    completions: int
    errors: int  # 503s: queue full or queue deadline passed
    latencies: list[float]  # client-side: queue wait + back-end time, answered requests
    rtts: list[float]  # back-end time only
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) per tick

    @property
    def throughput(self) -> float:
        return self.completions / self.duration

    def latency(self, q: float) -> float:
        return quantile(self.latencies, q) if self.latencies else math.inf

    @property
    def p50(self) -> float:
        return self.latency(0.5)

    @property
    def p99(self) -> float:
        return self.latency(0.99)

    def limits_between(self, start: float, end: float) -> list[int]:
        return [lim for t, lim in self.limits if start <= t < end]

    def settling_time(self, swing: float = 0.2, tail: float = 20.0) -> float:
        """When the limit entered, for good, ±swing of the median of the last ``tail`` s."""
        if not self.limits:
            return 0.0
        end = self.limits[-1][0]
        final = self.limits_between(end - tail, end + 1)
        med = sorted(final)[len(final) // 2]
        lo, hi = med * (1 - swing), med * (1 + swing)
        settled = self.limits[0][0]
        for t, lim in self.limits:
            if not lo <= lim <= hi:
                settled = t
        return settled


class _Request:
    __slots__ = ("client", "dispatched", "sent")

    def __init__(self, client: int, sent: float) -> None:
        self.client = client
        self.sent = sent
        self.dispatched = 0.0


_ARRIVE, _TICK, _SLOW = 0, 1, 2


def simulate(
    model: Model,
    *,
    clients: int = 32,
    think: float = 0.0,
    duration: float = 60.0,
    warmup: float = 10.0,
    limit: int | None = None,
    controller: FeedbackController | None = None,
    queue_limit: int = 1024,
    queue_timeout: float = 5.0,
    tick: float = 0.25,
    slow: Sequence[tuple[float, float, float | Model]] = (),
    deterministic: bool = False,
    seed: int = 1,
) -> SimResult:
    """Run ``duration`` simulated seconds; measure after ``warmup``.

    ``limit`` None and no controller: no limit at all. With a controller, its limit rules.
    """
    rng = random.Random(seed)
    queue: WaitQueue[_Request] = WaitQueue()
    cur_limit = controller.limit if controller is not None else (limit or 1 << 30)
    events: list[tuple[float, int, int, int]] = []
    seq = 0

    def schedule(t: float, kind: int, data: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    for i in range(clients):
        schedule(rng.random() * 0.01, _ARRIVE, i)
    schedule(0.0, _TICK)
    for start, end, _factor in slow:
        schedule(start, _SLOW)
        schedule(end, _SLOW)

    now = 0.0
    virtual = 0.0  # work done by each running request since time 0
    running: list[tuple[float, int, _Request]] = []
    factor = 1.0
    current: Model = model
    t0 = model.t0
    completions = errors = 0
    latencies: list[float] = []
    rtts: list[float] = []
    limits: list[tuple[float, int]] = []

    def rate() -> float:
        return t0 / (current.time(len(running)) * factor)

    def next_send(client: int) -> None:
        delay = rng.expovariate(1.0 / think) if think > 0 else 0.0
        schedule(now + delay, _ARRIVE, client)

    def dispatch(req: _Request) -> None:
        nonlocal seq
        req.dispatched = now
        work = t0 if deterministic else rng.expovariate(1.0 / t0)
        seq += 1
        heapq.heappush(running, (virtual + work, seq, req))

    def fill() -> None:
        while len(running) < cur_limit and queue:
            req = queue.pop_for(0)
            if req is None:
                break
            dispatch(req)

    def fail(req: _Request) -> None:
        nonlocal errors
        if now >= warmup:
            errors += 1
        next_send(req.client)

    while True:
        t_event = events[0][0] if events else math.inf
        t_done = now + (running[0][0] - virtual) / rate() if running else math.inf
        t_next = min(t_event, t_done)
        if t_next > duration:
            break
        if t_done <= t_event:
            virtual = running[0][0]
            now = t_done
            _tag, _s, req = heapq.heappop(running)
            inflight = len(running) + 1
            rtt = now - req.dispatched
            if controller is not None:
                controller.on_complete(rtt, now, inflight)
            if now >= warmup:
                completions += 1
                latencies.append(now - req.sent)
                rtts.append(rtt)
            fill()
            next_send(req.client)
            continue
        if running:
            virtual += rate() * (t_event - now)
        now = t_event
        _t, _s, kind, data = heapq.heappop(events)
        if kind == _ARRIVE:
            req = _Request(data, now)
            if len(running) < cur_limit and not queue:
                dispatch(req)
            elif len(queue) < queue_limit:
                queue.push(req, None, now + queue_timeout, now)
            else:
                fail(req)
        elif kind == _TICK:
            for req in queue.expire(now):
                fail(req)
            if controller is not None:
                cur_limit = controller.tick(now)
                fill()
            limits.append((now, cur_limit))
            schedule(now + tick, _TICK)
        else:
            factor, current = 1.0, model
            for start, end, how in slow:
                if start <= now < end:
                    if isinstance(how, (int, float)):
                        factor = float(how)
                    else:
                        current = how
    return SimResult(
        duration=duration - warmup,
        completions=completions,
        errors=errors,
        latencies=latencies,
        rtts=rtts,
        limits=limits,
    )
