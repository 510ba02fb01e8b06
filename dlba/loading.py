"""Controlled server loading (DESIGN §6): limits, the FIFO wait queue, admission, feedback.

Each back end takes at most ``limit`` requests at once; the rest wait in one FIFO queue per
pool (``WaitQueue``), each with a deadline, and a freed slot goes to the oldest request that
may use it. ``Admission`` refuses requests once the queue is full and, with hysteresis, new
client connections while it is nearly full, so the clients already admitted are served
first. ``FeedbackController`` moves one back end's limit between 1 and its ceiling.

Pure: no reactor, no sockets; time is passed in as ``now`` (seconds, any epoch).

The controller
--------------

It measures in *windows*: a window closes at the first ``tick`` at which it has lasted
``min_window`` seconds and holds ``min_samples`` answers (``baseline_samples`` for a
baseline probe); one still short of answers after ``max_window`` seconds (an idle back end)
is dropped and the limit held. After the limit falls, the next window opens once the
requests over the new limit have finished (paragraph [0040]: a slot is taken back only when
it falls idle), and after any change only about one p90 later, so that the quick answers of
the new limit do not stand for all of them; answers to requests sent before the change
count towards the goodput but not the p90.

Goodput (completions/s, errors excluded) is sought by *paired probing*: between windows at
the base limit B it runs one window at B·(1+step) ("up") and one at B·(1-step) ("down"),
accumulating completions and seconds per arm. An arm that beats the base arm by ``min_gain``
with a z-score of ``confidence`` (Poisson counts) wins, and B moves there once a base window
has followed the probe (so a back end that changes during a probe does not read as a win).
The first step is ``step`` (half the limit), successive moves one way double it, a reversal
halves it: a start at 256 comes down in a few moves. When both probes lose, a closer pair is
tried (half the step); when they lose at ``min_step``, or are known to be within ``tie`` of
the base, or ``max_cycles`` rounds decide nothing, B is the top of the curve: the controller
holds it, probing again after 2, 4, ... ``max_hold`` base windows, so the dither costs
little once settled (at B = 8 it probes 7 and 9: the limit swings by 1/8). Once settled, only
a third move in a row lengthens the step. A base window whose goodput is 30% and 4 sigma off
the base arm's means the back end changed: the arms are dropped and probing resumes at once,
a quarter away, first up if the goodput rose. Up probes run only when the base window used
all its slots (``inflight`` reached the limit); while the limit is above the concurrency in
use, down probes start from the concurrency in use, so a start at 256 in front of 32
clients probes 16, not 128, and a lightly loaded back end keeps its limit. Comparing arms
measured in alternating windows, rather than the present with the past, keeps a drift of
the back end, which moves every arm alike, from reading as the effect of the limit.

``target = "throughput"`` is that alone. ``target = "latency"`` adds the band, by default
1.5 to 2 times the baseline p90: a window whose p90 is over ``band[1]``·baseline (by more
than the p90's own uncertainty, about 1/sqrt(answers)) narrows the limit at once, to
``band[1] / ratio`` of the concurrency in use (at most halving it, at least by one) and
probes from there at most a quarter away, the band having put it near the top; an up
probe over it loses; while the base is above ``band[0]``·baseline the limit does not widen,
and below it, it widens only where goodput grows. Why that band: at the knee of a back end
that degrades under concurrency the response time is about twice its unloaded value
(Kleinrock's power X/R of a single queue peaks where R is twice the service time; for the
contention curve X(c) = c / (1 + k·c·(c-1)) the best c = 1/sqrt(k) has R = (2 - 1/c)·R0), so
p90 <= 2 x baseline keeps a back end at or below its knee, and widening stops at 1.5 x,
which leaves room for noise. Why goodput must also grow before the limit widens: on a back
end whose service time starts to grow only at the knee, every step past it costs goodput
while the p90 is still inside any band, so a band alone would settle past the knee (at
T(c) = t0·(c/knee)², p90 = 1.5 x baseline is reached at 1.22·knee, with 18% less goodput).

The baseline is the p90 at low concurrency. With none yet (a latency target), one probe
window runs at an eighth of the concurrency in use; the window before it is then judged
against what it measured. Afterwards: a window at concurrency <= 2 measures it afresh (and
if it finds it higher by more than ``band[0]``, the back end is slow at any concurrency, so
the narrowing that led there is undone: the limit goes back to where it was); a window whose
p90 is lower by two sigmas pulls it a quarter of the way down; when a window's p90 falls
under baseline / ``band[0]`` (the back end recovered from a slow spell) a fresh probe is run,
at most once per ``baseline_ttl``; and when no window came within ``band[0]`` of it for
``baseline_ttl`` seconds it moves halfway up to the lowest p90 seen meanwhile, so a back end
whose normal response time grew for good is re-baselined. A dropped request
(``on_dropped``: a timeout or error at the back end) counts as an answer of infinite time in
the p90 and not at all in the goodput.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

Target = Literal["latency", "throughput"]
TARGETS: tuple[Target, ...] = ("latency", "throughput")


# --------------------------------------------------------------------------- the queue


class Ticket(Generic[T]):
    """A place in a ``WaitQueue``: hand it to ``cancel`` when the client goes away."""

    __slots__ = ("active", "deadline", "item", "queued_at", "seq", "sticky")

    def __init__(
        self, item: T, sticky: int | None, deadline: float, queued_at: float, seq: int
    ) -> None:
        self.item = item
        self.sticky = sticky
        self.deadline = deadline
        self.queued_at = queued_at
        self.seq = seq
        self.active = True  # False once popped, expired or cancelled

    def __repr__(self) -> str:
        state = "waiting" if self.active else "gone"
        return f"<Ticket #{self.seq} sticky={self.sticky} deadline={self.deadline} {state}>"


class WaitQueue(Generic[T]):
    """The requests of one pool waiting for a slot, oldest first.

    A request with ``sticky = n`` may only go to back end n; it waits for that back end's
    slot and does not hold up the requests behind it. Inside: one deque of the requests
    that may go anywhere, one per back end for those bound to it, and a heap of deadlines;
    removal is lazy (a ticket is marked gone and skipped when met), the count is exact, and
    the dead entries are compacted away before they outnumber the live ones. ``push`` is
    O(log n) (the deadline heap), ``cancel`` O(1), ``pop_for`` O(1) amortised, ``pop_any``
    and ``oldest_wait`` O(back ends with sticky requests waiting).
    """

    def __init__(self) -> None:
        self._seq = 0
        self._live = 0
        self._entries = 0  # tickets in the deques, live or not
        self._any: deque[Ticket[T]] = deque()
        self._sticky: dict[int, deque[Ticket[T]]] = {}
        self._sticky_live: dict[int, int] = {}
        self._deadlines: list[tuple[float, int, Ticket[T]]] = []

    def __len__(self) -> int:
        return self._live

    def __bool__(self) -> bool:
        return self._live > 0

    def __iter__(self) -> Iterator[T]:
        """The waiting items, oldest first."""
        return iter([t.item for t in self._waiting()])

    def waiting_for(self, backend: int) -> int:
        """How many waiting requests are bound to ``backend``."""
        return self._sticky_live.get(backend, 0)

    def push(
        self, item: T, sticky: int | None, deadline: float, now: float | None = None
    ) -> Ticket[T]:
        """Queue ``item`` until ``deadline`` (``math.inf``: no deadline); ``now`` dates it."""
        self._seq += 1
        ticket = Ticket(item, sticky, deadline, deadline if now is None else now, self._seq)
        if sticky is None:
            self._any.append(ticket)
        else:
            dq = self._sticky.get(sticky)
            if dq is None:
                dq = self._sticky[sticky] = deque()
            dq.append(ticket)
            self._sticky_live[sticky] = self._sticky_live.get(sticky, 0) + 1
        self._entries += 1
        if deadline < math.inf:
            heapq.heappush(self._deadlines, (deadline, ticket.seq, ticket))
        self._live += 1
        return ticket

    def cancel(self, ticket: Ticket[T]) -> bool:
        """Forget a waiting request (its client went away); False if it was no longer waiting."""
        if not ticket.active:
            return False
        self._retire(ticket)
        self._maybe_compact()
        return True

    def pop_for(self, backend: int) -> T | None:
        """The oldest request back end ``backend`` may take: free or bound to it."""
        free = self._head(self._any)
        bound = self._head(self._sticky.get(backend))
        if free is None and bound is None:
            return None
        if bound is None or (free is not None and free.seq < bound.seq):
            assert free is not None
            self._any.popleft()
            ticket = free
        else:
            ticket = bound
            self._sticky[backend].popleft()
        self._entries -= 1
        self._retire(ticket)
        return ticket.item

    def pop_any(self, usable: Callable[[int | None], bool]) -> T | None:
        """The oldest request whose binding ``usable`` accepts (None: a request free to go
        anywhere; n: a request bound to back end n)."""
        best: Ticket[T] | None = None
        best_dq: deque[Ticket[T]] | None = None
        free = self._head(self._any)
        if free is not None and usable(None):
            best, best_dq = free, self._any
        for number in list(self._sticky):
            dq = self._sticky[number]
            head = self._head(dq)
            if head is None:
                del self._sticky[number]
                self._entries -= len(dq)
                continue
            if (best is None or head.seq < best.seq) and usable(number):
                best, best_dq = head, dq
        if best is None or best_dq is None:
            return None
        best_dq.popleft()
        self._entries -= 1
        self._retire(best)
        return best.item

    def expire(self, now: float) -> list[T]:
        """Remove and return, oldest deadline first, the requests whose deadline has come."""
        out: list[T] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            ticket = heapq.heappop(heap)[2]
            if ticket.active:
                self._retire(ticket)
                out.append(ticket.item)
        if out:
            self._maybe_compact()
        return out

    def next_deadline(self) -> float:
        """The earliest deadline of a waiting request (``math.inf`` if none)."""
        heap = self._deadlines
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def oldest_wait(self, now: float) -> float:
        """How long the oldest waiting request has waited (0 if none is waiting)."""
        oldest = self._head(self._any)
        for dq in self._sticky.values():
            head = self._head(dq)
            if head is not None and (oldest is None or head.seq < oldest.seq):
                oldest = head
        return 0.0 if oldest is None else max(0.0, now - oldest.queued_at)

    def drain(self) -> list[T]:
        """Remove and return every waiting request, oldest first (shutting down)."""
        return [t.item for t in self.drain_tickets()]

    def drain_tickets(self) -> list[Ticket[T]]:
        """Remove and return the tickets of every waiting request, oldest first, with their
        binding, deadline and age (a reload moves them to another queue)."""
        tickets = self._waiting()
        for t in tickets:
            t.active = False
        self._any.clear()
        self._sticky.clear()
        self._sticky_live.clear()
        self._deadlines.clear()
        self._live = self._entries = 0
        return tickets

    # internals

    def _waiting(self) -> list[Ticket[T]]:
        tickets = [t for t in self._any if t.active]
        for dq in self._sticky.values():
            tickets.extend(t for t in dq if t.active)
        tickets.sort(key=lambda t: t.seq)
        return tickets

    def _head(self, dq: deque[Ticket[T]] | None) -> Ticket[T] | None:
        if dq is None:
            return None
        while dq and not dq[0].active:
            dq.popleft()
            self._entries -= 1
        return dq[0] if dq else None

    def _retire(self, ticket: Ticket[T]) -> None:
        ticket.active = False
        self._live -= 1
        if ticket.sticky is not None:
            left = self._sticky_live[ticket.sticky] - 1
            if left:
                self._sticky_live[ticket.sticky] = left
            else:
                del self._sticky_live[ticket.sticky]

    def _maybe_compact(self) -> None:
        slack = 2 * self._live + 64
        if self._entries > slack:
            self._any = deque(t for t in self._any if t.active)
            sticky: dict[int, deque[Ticket[T]]] = {}
            for number, dq in self._sticky.items():
                kept = deque(t for t in dq if t.active)
                if kept:
                    sticky[number] = kept
            self._sticky = sticky
            self._entries = self._live
        if len(self._deadlines) > slack:
            self._deadlines = [e for e in self._deadlines if e[2].active]
            heapq.heapify(self._deadlines)


# --------------------------------------------------------------------------- admission


class Admission:
    """Whether to queue one more request, and whether to accept new client connections.

    A request that must wait is refused (503) once ``queue_limit`` requests wait. New client
    connections are refused from the moment the queue holds ``refuse_at``·queue_limit
    requests (at least one) until it has fallen to ``accept_at``·queue_limit, so refusing
    does not flap: the clients already admitted are served first ([0037]) and the rest of
    the queue is room for the requests they send meanwhile. Both are fractions of
    ``queue_limit``, ``0 <= accept_at < refuse_at <= 1``; ``refuse_at = 0`` never refuses
    a connection (``accept_at`` is then unused), and nor does ``queue_limit = 0``, where
    nothing waits (requests over the limit are refused instead).
    """

    def __init__(self, queue_limit: int, refuse_at: float = 0.75, accept_at: float = 0.375) -> None:
        if queue_limit < 0:
            raise ValueError("queue_limit must be >= 0")
        if not 0.0 <= refuse_at <= 1.0:
            raise ValueError("refuse_at must be in [0, 1]")
        if not 0.0 <= accept_at <= 1.0:
            raise ValueError("accept_at must be in [0, 1]")
        if refuse_at and accept_at >= refuse_at:
            raise ValueError("accept_at must be below refuse_at")
        self.queue_limit = queue_limit
        self.refuse_at = refuse_at
        self.accept_at = accept_at
        # Queue lengths: refusing from ``high`` on, until ``low``; high 0 = never refuse.
        # Rounded so that 0.3 x 10 is 3, not the 4 that ceil(3.0000000000000004) gives.
        on = bool(queue_limit and refuse_at)
        self.high = max(1, math.ceil(round(refuse_at * queue_limit, 6))) if on else 0
        low = math.floor(round(accept_at * queue_limit, 6))
        self.low = min(low, self.high - 1) if on else 0
        self.refusing = False
        self.refused_requests = 0
        self.refused_connections = 0

    def admit_request(self, queued: int) -> bool:
        """May a request that finds no free slot wait, ``queued`` requests waiting already?"""
        if queued < self.queue_limit:
            return True
        self.refused_requests += 1
        return False

    def update(self, queued: int) -> bool:
        """Follow the queue length; True while new connections are being refused."""
        if not self.high:
            self.refusing = False
        elif self.refusing:
            self.refusing = queued > self.low
        else:
            self.refusing = queued >= self.high
        return self.refusing

    def accept_connections(self, queued: int) -> bool:
        """May a new client connection be accepted, ``queued`` requests waiting?"""
        if self.update(queued):
            self.refused_connections += 1
            return False
        return True


# --------------------------------------------------------------------------- the controller


@dataclass(frozen=True)
class ControllerOptions:
    """Tuning of ``FeedbackController``; the defaults suit 10 to 10,000 requests/s."""

    band: tuple[float, float] = (1.5, 2.0)  # latency: p90 / baseline, widen below, narrow above
    min_samples: int = 30  # answers before a window may close
    min_window: float = 0.5  # seconds
    max_window: float = 30.0  # a window still short of answers after this is dropped
    baseline_samples: int = 60  # answers in a baseline probe window
    baseline_ttl: float = 60.0  # unconfirmed this long, the baseline ages upward
    step: float = 0.5  # first probe distance, a fraction of the limit
    min_step: float = 0.125
    max_step: float = 0.5
    confidence: float = 2.0  # z-score an arm must reach to move the limit
    min_gain: float = 0.04  # and relative goodput gain
    tie: float = 0.15  # probes surely within this of the base: the top is flat, hold
    max_cycles: int = 4  # rounds of probes without a winner before holding
    max_hold: int = 12  # base windows between rounds of probes, once settled
    settle_cap: float = 2.0  # longest wait after a change before measuring again

    def __post_init__(self) -> None:
        low, high = self.band
        if not 1.0 <= low <= high:
            raise ValueError("band must be (low, high) with 1 <= low <= high")
        if self.min_samples < 1 or self.baseline_samples < 1:
            raise ValueError("sample counts must be >= 1")
        if not 0.0 < self.min_step <= self.step <= self.max_step < 1.0:
            raise ValueError("need 0 < min_step <= step <= max_step < 1")
        if self.min_window <= 0 or self.max_window < self.min_window:
            raise ValueError("need 0 < min_window <= max_window")


@dataclass(frozen=True)
class ControllerStatus:
    """One back end's row in the status table."""

    target: Target
    limit: int
    ceiling: int
    metric: float | None  # p90 seconds (latency) or completions/s (throughput), last window
    baseline: float | None  # p90 seconds at low concurrency
    p90: float | None
    throughput: float | None
    phase: str  # base, up, down, baseline (a probe), hold


class _Arm:
    __slots__ = ("level", "n", "seconds", "worst_ratio")

    def __init__(self, level: int) -> None:
        self.level = level
        self.n = 0.0
        self.seconds = 0.0
        self.worst_ratio = 0.0

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    @property
    def variance(self) -> float:
        return self.n / (self.seconds * self.seconds) if self.seconds > 0 else math.inf


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``, which must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class FeedbackController:
    """Moves one back end's concurrency limit to keep goodput high and (``target =
    "latency"``) the p90 response time inside a band over its low-load baseline.

    The proxy reports each answer (``on_complete``) and each timeout or error
    (``on_dropped``), calls ``tick`` every 0.25 to 1 s and enforces ``limit``: when it
    grows, queued requests may start at once; when it shrinks, requests in flight finish
    and no new one starts until fewer than ``limit`` run. See the module's docstring.
    """

    def __init__(
        self,
        ceiling: int,
        target: Target = "latency",
        start: int | None = None,
        options: ControllerOptions | None = None,
    ) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}")
        self.ceiling = ceiling
        self.target: Target = target
        self.options = options or ControllerOptions()
        self._limit = self._clamp(ceiling if start is None else start)
        self._base = self._limit
        self._step = self.options.step
        self._last_move = 0  # +1 up, -1 down, 0 none since the last hold
        self._streak = 0  # moves in a row that way
        self._settled = False  # held at a top since the start or the last change
        self._hold = 0  # base windows left before the next round of probes
        self._last_hold = 0
        self._next_probe = "up"
        self._cycles = 0.0
        self._arms: dict[str, _Arm] = {}
        self._base_level = self._limit  # concurrency in use in the last base window
        self._base_binding = False
        self._base_ratio: float | None = None
        self._narrowed_from: int | None = None  # the base before narrowing, until in band
        # the window
        self._phase = "base"
        self._wstart: float | None = None
        self._n_ok = 0
        self._n_drop = 0
        self._rtts: list[float] = []
        self._rtt_sum = 0.0
        self._max_inflight = 0
        self._mean_rtt = 0.0
        self._changed_at = -math.inf  # when the limit last changed
        self._draining: float | None = None  # since when requests over a new limit finish
        # measurements
        self._p90: float | None = None
        self._throughput: float | None = None
        self._baseline: float | None = None
        self._confirmed = 0.0  # when a window last came within band[0] of the baseline
        self._aging_min = math.inf
        self._probed: float | None = None  # when the last baseline probe began
        self._before_probe: tuple[int, float, float] | None = None  # level, p90, noise
        self.changes = 0

    def set_ceiling(self, ceiling: int) -> None:
        """A new ``max_concurrent`` (a reload): the limit and the base stay where they are
        if they fit under it, else they come down to it; probing goes on from there."""
        if ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        self.ceiling = ceiling
        limit = self._clamp(self._limit)
        if limit != self._limit:
            self._limit = limit
            self.changes += 1
        self._base = self._clamp(self._base)

    # reporting

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def metric(self) -> float | None:
        """The p90 response time (latency) or completions/s (throughput) of the last window."""
        return self._p90 if self.target == "latency" else self._throughput

    @property
    def baseline(self) -> float | None:
        """The p90 response time at low concurrency, seconds (None until measured)."""
        return self._baseline

    @property
    def p90(self) -> float | None:
        return self._p90

    @property
    def throughput(self) -> float | None:
        return self._throughput

    @property
    def phase(self) -> str:
        if self._phase == "base" and self._hold > 0:
            return "hold"
        return self._phase

    def status(self) -> ControllerStatus:
        return ControllerStatus(
            target=self.target,
            limit=self._limit,
            ceiling=self.ceiling,
            metric=self.metric,
            baseline=self._baseline,
            p90=self._p90,
            throughput=self._throughput,
            phase=self.phase,
        )

    # input

    def on_complete(self, rtt: float, now: float, inflight: int) -> None:
        """A request answered after ``rtt`` seconds at the back end; ``inflight`` requests
        (this one included) were running there when it finished."""
        if self._draining is not None:
            if inflight > self._limit:
                return
            self._draining = None  # the last request over the new limit has left
            if self._wstart is not None:
                self._wstart = max(self._wstart, now)
            return
        if self._wstart is None or now < self._wstart:
            return
        self._n_ok += 1
        if now - rtt >= self._changed_at:  # sent under this limit: its time tells of it
            self._rtts.append(rtt)
        self._rtt_sum += rtt
        if inflight > self._max_inflight:
            self._max_inflight = inflight

    def on_dropped(self, now: float, inflight: int = 0) -> None:
        """A request sent to the back end timed out or failed: a bad sample."""
        if self._draining is not None:
            if inflight <= self._limit:
                self._draining = None
            return
        if self._wstart is None or now < self._wstart:
            return
        self._n_drop += 1
        if inflight > self._max_inflight:
            self._max_inflight = inflight

    def tick(self, now: float) -> int:
        """Called periodically; closes the window when it is due and returns the limit."""
        if self._wstart is None:
            self._open(now, self._phase, self._limit, settle=False)
            return self._limit
        opts = self.options
        if self._draining is not None:
            if now - self._draining < opts.max_window:
                return self._limit
            self._draining = None  # nothing reported for long: idle
            self._wstart = now
        if now < self._wstart:
            return self._limit
        duration = now - self._wstart
        count = self._n_ok + self._n_drop
        need = opts.baseline_samples if self._phase == "baseline" else opts.min_samples
        if count < need or duration < opts.min_window:
            if duration >= opts.max_window:  # idle: hold, measure afresh
                if self._phase == "baseline":
                    self._open(now, "baseline", self._limit, settle=False)
                else:
                    self._open(now, "base", self._base, settle=False)
            return self._limit
        self._close(now, duration)
        return self._limit

    # internals

    def _clamp(self, value: float) -> int:
        return max(1, min(self.ceiling, int(value)))

    def _open(self, now: float, phase: str, limit: int, settle: bool) -> None:
        changed = limit != self._limit
        if changed:
            self.changes += 1
            self._changed_at = now
            # measure a lower limit only once the requests over it have finished
            self._draining = now if limit < self._limit else None
        self._limit = limit
        self._phase = phase
        # requests sent under the new limit: the quick ones return first, so wait about
        # a p90 before their times are an unbiased sample
        recent = self._mean_rtt if self._p90 is None or math.isinf(self._p90) else self._p90
        delay = min(self.options.settle_cap, recent) if (settle and changed) else 0.0
        self._wstart = now + delay
        self._n_ok = self._n_drop = self._max_inflight = 0
        self._rtts = []
        self._rtt_sum = 0.0

    def _close(self, now: float, duration: float) -> None:
        opts = self.options
        limit = self._limit
        n_ok, n_drop = self._n_ok, self._n_drop
        goodput = n_ok / duration
        samples = self._rtts + [math.inf] * n_drop
        p90 = quantile(samples, 0.9) if samples else math.inf
        # a p90 of n answers is uncertain by about 1/sqrt(n) (more for a long tail): the
        # band is crossed only by more than that
        noise = 1.0 + 1.0 / math.sqrt(max(1, len(samples)))
        level = max(1, min(limit, self._max_inflight))
        binding = self._max_inflight >= limit
        if n_ok:
            self._mean_rtt = self._rtt_sum / n_ok
        self._p90 = p90
        self._throughput = goodput
        phase = self._phase
        rebased = self._update_baseline(now, p90, len(samples), level, phase == "baseline", noise)
        if rebased and self._narrowed_from is not None:
            # the narrowing followed a back end slow at any concurrency, not an excess of
            # it: measured against its new baseline, the old limit may well be right
            restore, self._narrowed_from = self._narrowed_from, None
            self._move(now, self._clamp(restore), +1, keep_step=True)
            return
        if phase == "baseline":
            before, self._before_probe = self._before_probe, None
            if before is not None and self._baseline:
                # the window before the probe, judged against the baseline just measured
                lvl, p90_then, noise_then = before
                if p90_then > opts.band[1] * noise_then * self._baseline:
                    self._narrow(now, lvl, p90_then / noise_then / self._baseline)
                    return
            self._open(now, "base", self._base, settle=True)
            return
        ratio = self._ratio(p90)
        if self.target == "latency" and phase == "base" and self._wants_probe(now, ratio):
            self._base_level = level
            self._probed = now
            self._before_probe = (level, p90, noise)
            self._open(now, "baseline", max(1, level // 8), settle=True)
            return
        over = ratio is not None and ratio > opts.band[1] * noise
        if ratio is not None and not over and phase == "base":
            self._narrowed_from = None
        if ratio is not None and over:
            if phase != "up":
                self._narrow(now, level, ratio / noise)
                return
            # widening would leave the band: not a reason to narrow the base, only to
            # probe less far
            self._step = max(opts.min_step, self._step / 2)
        if phase == "base":
            self._base_level = level
            self._base_binding = binding
            self._base_ratio = ratio
            change = self._changed(n_ok, duration)
            if change:
                # the back end changed under us: what the arms hold is stale. Faster at
                # the same limit, it may take more; slower, it may need fewer: look there
                self._reset_arms()
                self._hold = 0
                self._settled = False
                self._step = max(self._step, 0.25)
                self._next_probe = "up" if change > 0 else "down"
        self._add(phase, limit, n_ok, duration, None if ratio is None else ratio / noise)
        if self._decide(now):
            return
        if phase != "base":
            self._open(now, "base", self._base, settle=True)
        elif self._hold > 0:
            self._hold -= 1
            self._open(now, "base", self._base, settle=False)
        else:
            self._open_probe(now)

    def _wants_probe(self, now: float, ratio: float | None) -> bool:
        """No baseline yet, or the p90 fell far below it (the back end recovered from a
        slow period that had raised it), at most once per ``baseline_ttl``."""
        if self._baseline is None:
            return True
        recent = self._probed is not None and now - self._probed < self.options.baseline_ttl
        return ratio is not None and ratio * self.options.band[0] < 1.0 and not recent

    def _ratio(self, p90: float) -> float | None:
        if self.target != "latency" or not self._baseline:
            return None
        return p90 / self._baseline

    def _update_baseline(
        self, now: float, p90: float, n: int, level: int, probe: bool, noise: float
    ) -> bool:
        """Learn from a window's p90; True if the baseline jumped up (measured afresh)."""
        if n < self.options.min_samples or math.isinf(p90):
            return False
        low = self.options.band[0]
        old = self._baseline
        authoritative = probe or level <= 2
        jumped = False
        if old is None and not authoritative and self.target == "latency":
            return False  # a latency target measures its first baseline in a probe
        if old is None:
            self._baseline = p90
        elif authoritative:
            jumped = p90 > low * noise * old
            self._baseline = p90 if jumped else old + 0.5 * (p90 - old)
        elif p90 * (2 * noise - 1) < old:
            # clearly (two sigmas) lower: a quarter of the way, or noise drags it down
            self._baseline = old + 0.25 * (p90 - old)
        baseline = self._baseline
        assert baseline is not None
        if authoritative or old is None or p90 <= low * baseline:
            self._confirmed = now
            self._aging_min = math.inf
            return jumped
        self._aging_min = min(self._aging_min, p90)
        if now - self._confirmed >= self.options.baseline_ttl:
            self._baseline = baseline + 0.5 * (self._aging_min - baseline)
            self._confirmed = now
            self._aging_min = math.inf
        return False

    def _narrow(self, now: float, level: int, ratio: float) -> None:
        high = self.options.band[1]
        if self._narrowed_from is None:
            self._narrowed_from = min(self._base, level)
        factor = max(0.5, min(0.9, high / ratio))
        target = min(self._base, level - 1, math.floor(level * factor))
        # the band has placed the limit near the top already: probe around it closely, a
        # probe half a limit away costs a third of the goodput on a sharp knee
        self._step = max(self.options.min_step, min(self._step, 0.25))
        self._move(now, self._clamp(max(1, target)), -1, keep_step=True)

    def _move(self, now: float, new_base: int, direction: int, keep_step: bool = False) -> None:
        if not keep_step:
            # successive moves one way lengthen the step; once settled at a top, only the
            # third does (two may be noise)
            self._streak = self._streak + 1 if direction == self._last_move else 1
            if direction == self._last_move and self._streak > (2 if self._settled else 1):
                self._step = min(self.options.max_step, self._step * 2)
            elif self._last_move not in (0, direction):
                self._step = max(self.options.min_step, self._step / 2)
            self._last_move = direction
        self._next_probe = "up" if direction > 0 else "down"
        self._base = new_base
        self._hold = self._last_hold = 0
        self._reset_arms()
        self._open(now, "base", new_base, settle=True)

    def _reset_arms(self) -> None:
        self._arms = {}
        self._cycles = 0.0

    def _add(self, arm: str, level: int, n: int, seconds: float, ratio: float | None) -> None:
        a = self._arms.get(arm)
        if a is None or a.level != level:
            a = self._arms[arm] = _Arm(level)
        a.n += n
        a.seconds += seconds
        if ratio is not None:
            a.worst_ratio = max(a.worst_ratio, ratio)

    def _loses(self, arm: _Arm, base: _Arm) -> bool:
        """``arm`` is significantly worse than ``base``."""
        if arm.seconds <= 0 or base.seconds <= 0 or base.rate <= 0:
            return False
        spread = math.sqrt(arm.variance + base.variance)
        return (
            arm.rate < base.rate * (1 - self.options.min_gain)
            and (base.rate - arm.rate) > self.options.confidence * spread
        )

    def _tied(self, arm: _Arm, base: _Arm) -> bool:
        """``arm`` and ``base`` are known to differ by less than ``tie``."""
        if arm.seconds <= 0 or base.seconds <= 0 or base.rate <= 0:
            return False
        spread = math.sqrt(arm.variance + base.variance)
        gap = abs(arm.rate - base.rate) + self.options.confidence * spread
        return gap < self.options.tie * base.rate

    def _wins(self, arm: _Arm, base: _Arm) -> float:
        """The relative gain of ``arm`` over ``base`` if significant, else 0."""
        if arm.seconds <= 0 or base.seconds <= 0 or base.rate <= 0:
            return 0.0
        gain = arm.rate / base.rate - 1.0
        spread = math.sqrt(arm.variance + base.variance)
        if gain < self.options.min_gain or spread <= 0:
            return 0.0
        if (arm.rate - base.rate) / spread < self.options.confidence:
            return 0.0
        return gain

    def _decide(self, now: float) -> bool:
        """Move to a probe that won, or hold once the probes have lost or tied long enough."""
        base = self._arms.get("base")
        if base is None:
            return False
        best: tuple[float, str] | None = None
        beaten: set[str] = set()
        for name in ("up", "down"):
            arm = self._arms.get(name)
            if arm is None:
                continue
            if self._loses(arm, base) or arm.worst_ratio > self.options.band[1]:
                beaten.add(name)  # less goodput, or (widening) a p90 over the band
                continue
            gain = self._wins(arm, base)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, name)
        if best is not None and self._phase == "base":
            # only after a base window has followed the probe: a back end that changed
            # during the probe then shows in the base arm (or resets it), not as a win
            name = best[1]
            self._move(now, self._arms[name].level, 1 if name == "up" else -1)
            return True
        if best is not None:
            return False
        probes = self._probe_levels()
        lost = bool(beaten) and all(name in beaten for name in probes)
        flat = self._cycles >= 1 and all(
            name in beaten or (name in self._arms and self._tied(self._arms[name], base))
            for name in probes
        )
        if lost and self._step > self.options.min_step:
            # both sides worse at this distance: the top may lie nearer, look closer
            self._step = max(self.options.min_step, self._step / 2)
            self._arms = {"base": base}
            self._cycles = 0.0
            return False
        if lost or flat or self._cycles >= self.options.max_cycles:
            self._step = max(self.options.min_step, self._step / 2)
            self._last_move = 0
            self._settled = True
            self._last_hold = min(self.options.max_hold, max(2, 2 * self._last_hold))
            self._hold = self._last_hold
            self._arms = {"base": base}
            self._cycles = 0.0
            self._open(now, "base", self._base, settle=self._limit != self._base)
            return True
        return False

    def _changed(self, n: int, seconds: float) -> int:
        """+1 (-1) if a base window's goodput is far (30%, 4 sigma) above (below) the base
        arm's, else 0."""
        base = self._arms.get("base")
        if base is None or base.seconds <= 0 or seconds <= 0:
            return 0
        rate = n / seconds
        spread = math.sqrt(n / (seconds * seconds) + base.variance)
        diff = rate - base.rate
        if abs(diff) > 0.3 * base.rate and abs(diff) > 4 * spread:
            return 1 if diff > 0 else -1
        return 0

    def _probe_levels(self) -> dict[str, int]:
        levels: dict[str, int] = {}
        base = self._base
        step = self._step
        in_use = max(1, min(base, self._base_level))
        widen_ok = self._base_binding and base < self.ceiling
        if self.target == "latency" and self._base_ratio is not None:
            widen_ok = widen_ok and self._base_ratio <= self.options.band[0]
        if widen_ok:
            levels["up"] = self._clamp(max(base + 1, round(base * (1 + step))))
        if in_use > 1:
            levels["down"] = max(1, min(in_use - 1, round(in_use * (1 - step))))
        return levels

    def _open_probe(self, now: float) -> None:
        levels = self._probe_levels()
        if not levels:
            self._cycles += 1.0
            self._open(now, "base", self._base, settle=False)
            return
        name = self._next_probe if self._next_probe in levels else next(iter(levels))
        self._next_probe = "down" if name == "up" else "up"
        self._cycles += 1.0 / len(levels)
        self._open(now, name, levels[name], settle=True)
