"""Tests for dlba.loading: the wait queue, admission, and the feedback controller.

The controller's headline property is checked on tests/loadsim.py, a deterministic
simulator of a back end whose goodput falls when too many requests run at once: 32 clients
(4 times its best concurrency of 8) in front of it, the adaptive limit starting at 256.
"""

from __future__ import annotations

import math
import random
import statistics
from functools import cache

from twisted.trial.unittest import SynchronousTestCase

from dlba.loading import (
    Admission,
    ControllerOptions,
    FeedbackController,
    Target,
    WaitQueue,
    quantile,
)
from tests.loadsim import (
    Contention,
    Model,
    SharpKnee,
    SimResult,
    best_concurrency,
    simulate,
)

KNEE = SharpKnee(t0=0.02, knee=8, power=2.0)  # best at 8: 400 completions/s
SMOOTH = Contention(t0=0.02, sigma=0.0, kappa=1 / 64)  # best at 8, a flat top
DURATION = 60.0
WARMUP = 10.0


@cache
def unlimited(model: Model = KNEE) -> SimResult:
    return simulate(model, duration=DURATION, warmup=WARMUP)


@cache
def static(limit: int, model: Model = KNEE) -> SimResult:
    return simulate(model, duration=DURATION, warmup=WARMUP, limit=limit)


@cache
def best_static(model: Model = KNEE) -> tuple[int, SimResult]:
    """The best static limit of a sweep around the knee, and its run."""
    results = {n: static(n, model) for n in range(5, 12)}
    best = max(results, key=lambda n: results[n].throughput)
    return best, results[best]


@cache
def adaptive(target: Target, model: Model = KNEE, seed: int = 1) -> SimResult:
    controller = FeedbackController(256, target)
    return simulate(model, duration=DURATION, warmup=WARMUP, controller=controller, seed=seed)


def swing(limits: list[int]) -> float:
    """The largest relative distance of a limit from the median of ``limits``."""
    median = statistics.median(limits)
    return max(abs(n / median - 1) for n in limits)


# --------------------------------------------------------------------------- the queue


class WaitQueueTests(SynchronousTestCase):
    def test_fifo(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        for name in "abcde":
            q.push(name, None, math.inf)
        self.assertEqual(len(q), 5)
        self.assertEqual([q.pop_for(1) for _ in range(5)], list("abcde"))
        self.assertIsNone(q.pop_for(1))
        self.assertEqual(len(q), 0)
        self.assertFalse(q)

    def test_sticky_waits_for_its_back_end_without_blocking_others(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        q.push("to-2", 2, math.inf)
        q.push("free-1", None, math.inf)
        q.push("to-1", 1, math.inf)
        q.push("free-2", None, math.inf)
        self.assertEqual(q.waiting_for(2), 1)
        # back end 1 frees a slot: the request bound to 2 is skipped, not blocking
        self.assertEqual(q.pop_for(1), "free-1")
        self.assertEqual(q.pop_for(1), "to-1")
        self.assertEqual(q.pop_for(1), "free-2")
        self.assertIsNone(q.pop_for(1))
        self.assertEqual(len(q), 1)
        self.assertEqual(q.pop_for(2), "to-2")
        self.assertEqual(q.waiting_for(2), 0)

    def test_sticky_older_than_free_goes_first(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        q.push("free", None, math.inf)
        q.push("to-3", 3, math.inf)
        q.push("free-late", None, math.inf)
        self.assertEqual(q.pop_for(3), "free")
        self.assertEqual(q.pop_for(3), "to-3")

    def test_pop_any(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        q.push("to-2", 2, math.inf)
        q.push("to-1", 1, math.inf)
        q.push("free", None, math.inf)
        self.assertEqual(q.pop_any(lambda b: b == 1), "to-1")
        self.assertEqual(q.pop_any(lambda b: b is None or b == 2), "to-2")
        self.assertIsNone(q.pop_any(lambda b: b is not None))
        self.assertEqual(q.pop_any(lambda b: True), "free")
        self.assertEqual(len(q), 0)

    def test_cancel(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        a = q.push("a", None, 10.0)
        b = q.push("b", 4, 10.0)
        q.push("c", None, 10.0)
        self.assertTrue(q.cancel(a))
        self.assertFalse(q.cancel(a))
        self.assertTrue(q.cancel(b))
        self.assertEqual(len(q), 1)
        self.assertEqual(q.waiting_for(4), 0)
        self.assertEqual(list(q), ["c"])
        self.assertEqual(q.pop_for(4), "c")
        self.assertEqual(q.expire(20.0), [])
        self.assertEqual(len(q), 0)

    def test_cancel_after_pop_or_expiry(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        a = q.push("a", None, 5.0)
        b = q.push("b", None, 1.0)
        self.assertEqual(q.pop_for(0), "a")
        self.assertFalse(q.cancel(a))
        self.assertEqual(q.expire(1.0), ["b"])
        self.assertFalse(q.cancel(b))
        self.assertEqual(len(q), 0)

    def test_expire(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        q.push("a", None, 1.0, now=0.0)
        q.push("b", 2, 2.0, now=0.5)
        q.push("c", None, 3.0, now=1.0)
        q.push("never", None, math.inf, now=1.0)
        self.assertEqual(q.expire(0.5), [])
        self.assertEqual(q.next_deadline(), 1.0)
        self.assertEqual(q.expire(2.0), ["a", "b"])
        self.assertEqual(len(q), 2)
        self.assertEqual(q.waiting_for(2), 0)
        self.assertEqual(q.pop_for(2), "c")
        self.assertEqual(q.expire(1e9), [])
        self.assertEqual(q.pop_for(2), "never")

    def test_expire_mixed_timeouts(self) -> None:
        """Deadlines need not follow arrival order."""
        q: WaitQueue[str] = WaitQueue()
        q.push("long", None, 30.0)
        q.push("short", None, 2.0)
        q.push("mid", 1, 10.0)
        self.assertEqual(q.expire(5.0), ["short"])
        self.assertEqual(q.expire(15.0), ["mid"])
        self.assertEqual(list(q), ["long"])

    def test_oldest_wait_and_drain(self) -> None:
        q: WaitQueue[str] = WaitQueue()
        self.assertEqual(q.oldest_wait(5.0), 0.0)
        t = q.push("a", None, 100.0, now=1.0)
        q.push("b", 7, 100.0, now=2.0)
        q.push("c", None, 100.0, now=3.0)
        self.assertEqual(q.oldest_wait(5.0), 4.0)
        q.cancel(t)
        self.assertEqual(q.oldest_wait(5.0), 3.0)
        self.assertEqual(q.drain(), ["b", "c"])
        self.assertEqual(len(q), 0)
        self.assertIsNone(q.pop_for(7))

    def test_against_a_model(self) -> None:
        """Random pushes, pops, cancels and expiries agree with a plain list, and the
        lazily deleted entries are compacted away."""
        rng = random.Random(7)
        q: WaitQueue[int] = WaitQueue()
        model: list[tuple[int, int | None, float]] = []  # item, sticky, deadline
        tickets = {}
        now = 0.0
        for item in range(20000):
            op = rng.random()
            if op < 0.45:
                sticky = rng.choice([None, None, 1, 2, 3])
                deadline = now + rng.choice([1.0, 5.0, 2.5])
                tickets[item] = q.push(item, sticky, deadline, now)
                model.append((item, sticky, deadline))
            elif op < 0.65 and model:
                backend = rng.randint(1, 4)
                want = next((m for m in model if m[1] in (None, backend)), None)
                got = q.pop_for(backend)
                self.assertEqual(got, None if want is None else want[0])
                if want is not None:
                    model.remove(want)
            elif op < 0.85 and model:
                victim = rng.choice(model)
                self.assertTrue(q.cancel(tickets[victim[0]]))
                model.remove(victim)
            else:
                now += rng.random()
                expired = sorted(m for m in model if m[2] <= now)
                self.assertEqual(sorted(q.expire(now)), [m[0] for m in expired])
                model = [m for m in model if m[2] > now]
            self.assertEqual(len(q), len(model))
            self.assertLessEqual(q._entries, 2 * len(model) + 64 + 1)
            self.assertLessEqual(len(q._deadlines), 2 * len(model) + 64 + 1)
        self.assertEqual(list(q), [m[0] for m in model])
        for b in (1, 2, 3):
            self.assertEqual(q.waiting_for(b), sum(1 for m in model if m[1] == b))


# --------------------------------------------------------------------------- admission


class AdmissionTests(SynchronousTestCase):
    def test_queue_limit(self) -> None:
        a = Admission(queue_limit=10)
        self.assertTrue(a.admit_request(9))
        self.assertFalse(a.admit_request(10))
        self.assertFalse(a.admit_request(11))
        self.assertEqual(a.refused_requests, 2)

    def test_hysteresis(self) -> None:
        a = Admission(queue_limit=100, refuse_at=0.75, accept_at=0.375)
        self.assertEqual((a.high, a.low), (75, 37))
        self.assertTrue(all(a.accept_connections(n) for n in range(75)))
        self.assertFalse(a.accept_connections(75))
        self.assertTrue(a.refusing)
        # refuses while the queue drains, until half way down: no flapping at 74/75
        for n in (74, 60, 38, 80, 38):
            self.assertFalse(a.accept_connections(n), n)
        self.assertTrue(a.accept_connections(37))
        self.assertTrue(a.accept_connections(74))
        self.assertFalse(a.accept_connections(76))
        self.assertEqual(a.refused_connections, 7)

    def test_defaults(self) -> None:
        """0.75 and 0.375 of queue_limit: what the old threshold 0.75, resume 0.5 gave."""
        for limit, expected in [(1024, (768, 384)), (100, (75, 37)), (4, (3, 1)), (1, (1, 0))]:
            a = Admission(limit)
            self.assertEqual((a.high, a.low), expected, limit)

    def test_fractions_of_queue_limit(self) -> None:
        a = Admission(queue_limit=10, refuse_at=0.3, accept_at=0.1)
        self.assertEqual((a.high, a.low), (3, 1))  # not 4: 0.3 x 10 is 3
        self.assertTrue(a.accept_connections(2))
        self.assertFalse(a.accept_connections(3))
        self.assertFalse(a.accept_connections(2))
        self.assertTrue(a.accept_connections(1))
        # refuse at the full queue, accept only once it is empty
        a = Admission(queue_limit=10, refuse_at=1.0, accept_at=0.0)
        self.assertEqual((a.high, a.low), (10, 0))
        self.assertTrue(a.accept_connections(9))
        self.assertFalse(a.accept_connections(10))
        self.assertFalse(a.accept_connections(1))
        self.assertTrue(a.accept_connections(0))
        # a tiny fraction still means at least one waiting request
        self.assertEqual(Admission(queue_limit=10, refuse_at=0.01, accept_at=0.0).high, 1)

    def test_refuse_at_zero_never_refuses_connections(self) -> None:
        a = Admission(queue_limit=8, refuse_at=0.0)
        self.assertEqual((a.high, a.low), (0, 0))
        self.assertTrue(all(a.accept_connections(n) for n in range(20)))
        self.assertFalse(a.refusing)
        self.assertEqual(a.refused_connections, 0)
        # requests over the limit are still refused
        self.assertTrue(a.admit_request(7))
        self.assertFalse(a.admit_request(8))
        self.assertEqual(a.refused_requests, 1)
        # accept_at is unused then: any fraction, even above 0
        self.assertTrue(Admission(8, refuse_at=0.0, accept_at=0.5).accept_connections(100))

    def test_recovers_by_itself(self) -> None:
        a = Admission(queue_limit=8)
        self.assertTrue(a.update(8))
        self.assertFalse(a.update(0))
        self.assertTrue(a.accept_connections(0))

    def test_no_queue(self) -> None:
        a = Admission(queue_limit=0)
        self.assertFalse(a.admit_request(0))
        self.assertTrue(a.accept_connections(0))
        self.assertTrue(a.accept_connections(100))

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Admission, -1)
        self.assertRaises(ValueError, Admission, 10, refuse_at=1.5)
        self.assertRaises(ValueError, Admission, 10, refuse_at=-0.1)
        self.assertRaises(ValueError, Admission, 10, refuse_at=float("nan"))
        self.assertRaises(ValueError, Admission, 10, accept_at=-0.1)
        self.assertRaises(ValueError, Admission, 10, accept_at=1.5, refuse_at=0.0)
        self.assertRaises(ValueError, Admission, 10, refuse_at=0.5, accept_at=0.5)
        self.assertRaises(ValueError, Admission, 10, refuse_at=0.5, accept_at=0.6)


# --------------------------------------------------------------------------- the controller


def feed(
    c: FeedbackController,
    seconds: float,
    rtt: float,
    rate: float,
    start: float = 0.0,
    inflight: int | None = None,
    tick: float = 0.25,
) -> list[int]:
    """Report ``rate`` answers/s of ``rtt`` s for ``seconds``; the limits after each tick."""
    limits = []
    now = start
    per_tick = max(0, round(rate * tick))
    while now < start + seconds:
        for i in range(per_tick):
            running = min(inflight or c.limit, c.limit)
            c.on_complete(rtt, now + tick * i / max(1, per_tick), running)
        now += tick
        limits.append(c.tick(now))
    return limits


class ControllerUnitTests(SynchronousTestCase):
    def test_arguments(self) -> None:
        self.assertRaises(ValueError, FeedbackController, 0)
        self.assertRaises(ValueError, FeedbackController, 8, "speed")  # type: ignore[arg-type]
        self.assertEqual(FeedbackController(64).limit, 64)
        self.assertEqual(FeedbackController(64, start=500).limit, 64)
        self.assertEqual(FeedbackController(64, start=0).limit, 1)
        self.assertEqual(FeedbackController(64, start=10).limit, 10)
        self.assertRaises(ValueError, ControllerOptions, band=(2.0, 1.5))
        self.assertRaises(ValueError, ControllerOptions, band=(0.5, 1.5))
        self.assertRaises(ValueError, ControllerOptions, step=0.01)

    def test_few_samples_do_not_move_it(self) -> None:
        for target in ("latency", "throughput"):
            c = FeedbackController(64, target)  # type: ignore[arg-type]
            c.tick(0.0)
            c.on_complete(0.5, 0.1, 64)
            c.on_complete(9.0, 0.2, 64)
            self.assertEqual({c.tick(t / 4) for t in range(1, 400)}, {64})
            self.assertIsNone(c.metric)

    def test_idle_holds(self) -> None:
        c = FeedbackController(32, "throughput", start=12)
        c.tick(0.0)
        self.assertEqual({c.tick(t) for t in range(1, 1000)}, {12})
        self.assertEqual(c.changes, 0)

    def test_bounded(self) -> None:
        """Whatever it is told, the limit stays in 1..ceiling."""
        rng = random.Random(3)
        for target in ("latency", "throughput"):
            c = FeedbackController(20, target)  # type: ignore[arg-type]
            now = 0.0
            for _ in range(4000):
                now += 0.25
                for _ in range(rng.randint(0, 80)):
                    if rng.random() < 0.1:
                        c.on_dropped(now, rng.randint(0, 40))
                    else:
                        c.on_complete(rng.expovariate(1.0) ** 3, now, rng.randint(1, 40))
                limit = c.tick(now)
                self.assertTrue(1 <= limit <= 20, limit)

    def test_latency_narrows_on_drops(self) -> None:
        c = FeedbackController(64, "latency", start=16)
        feed(c, 10.0, rtt=0.05, rate=200, inflight=16)
        self.assertIsNotNone(c.baseline)
        before = c.limit
        now = 10.0
        for _ in range(40):
            for _ in range(50):
                c.on_dropped(now, c.limit)
            now += 0.25
            c.tick(now)
        self.assertLess(c.limit, before)
        self.assertEqual(c.limit, 1)

    def test_reporting(self) -> None:
        c = FeedbackController(64, "latency", start=16)
        feed(c, 10.0, rtt=0.05, rate=200, inflight=16)
        self.assertEqual(c.metric, c.p90)
        self.assertAlmostEqual(c.p90 or 0, 0.05)
        self.assertAlmostEqual(c.baseline or 0, 0.05)
        status = c.status()
        self.assertEqual(status.limit, c.limit)
        self.assertEqual(status.target, "latency")
        self.assertEqual(status.ceiling, 64)
        t = FeedbackController(64, "throughput", start=16)
        feed(t, 10.0, rtt=0.05, rate=200, inflight=16)
        self.assertEqual(t.metric, t.throughput)
        self.assertTrue(180 <= (t.throughput or 0) <= 220, t.throughput)

    def test_quantile(self) -> None:
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(quantile(values, 0.9), 90.0)
        self.assertEqual(quantile(values, 0.99), 99.0)
        self.assertEqual(quantile([3.0], 0.5), 3.0)


# --------------------------------------------------------------------------- the simulator


class SimulatorTests(SynchronousTestCase):
    def test_deterministic(self) -> None:
        a = simulate(KNEE, duration=5.0, warmup=1.0, limit=8, seed=4)
        b = simulate(KNEE, duration=5.0, warmup=1.0, limit=8, seed=4)
        self.assertEqual((a.completions, a.latencies), (b.completions, b.latencies))

    def test_model(self) -> None:
        """Goodput peaks at the knee; the static limit there is the best of the sweep and
        doubles (and more) what no limit gets with 32 clients."""
        self.assertEqual(best_concurrency(KNEE), 8)
        self.assertEqual(best_concurrency(SMOOTH), 8)
        best, run = best_static()
        self.assertEqual(best, 8)
        self.assertTrue(0.97 <= run.throughput * KNEE.t0 / 8 <= 1.03, run.throughput)
        self.assertGreater(run.throughput, 3 * unlimited().throughput)


class ControllerSimulationTests(SynchronousTestCase):
    """The issue's property: from a start far too high (256 when the best is 8), the
    adaptive limit gets >= 2x the completions/s and <= half the p99 of no limit, and >= 90%
    of the best static limit's completions/s, for both targets."""

    def check_headline(self, target: Target) -> None:
        free = unlimited()
        _best, fixed = best_static()
        run = adaptive(target)
        self.assertGreaterEqual(run.throughput, 2 * free.throughput)
        self.assertLessEqual(run.p99, 0.5 * free.p99)
        self.assertGreaterEqual(run.throughput, 0.9 * fixed.throughput)
        self.assertEqual(run.errors, 0)

    def test_headline_latency(self) -> None:
        self.check_headline("latency")

    def test_headline_throughput(self) -> None:
        self.check_headline("throughput")

    def check_comes_down_and_settles(self, target: Target) -> None:
        run = adaptive(target)
        # far too high at first, near the knee within 15 simulated seconds, and stays there
        self.assertEqual(run.limits[0][1], 256)
        self.assertLess(run.settling_time(), 15.0)
        late = run.limits_between(20.0, DURATION + 1)
        self.assertTrue(all(5 <= n <= 11 for n in late), late)
        # the last 20 s (80 ticks): within +-20% of their median
        tail = run.limits_between(DURATION - 20, DURATION + 1)
        self.assertGreaterEqual(len(tail), 79)
        self.assertLessEqual(swing(tail), 0.2)
        self.assertIn(statistics.median(tail), (7, 8, 9))

    def test_comes_down_and_settles_latency(self) -> None:
        self.check_comes_down_and_settles("latency")

    def test_comes_down_and_settles_throughput(self) -> None:
        self.check_comes_down_and_settles("throughput")

    def test_other_seeds(self) -> None:
        _best, fixed = best_static()
        for target in ("latency", "throughput"):
            run = adaptive(target, seed=2)  # type: ignore[arg-type]
            self.assertGreaterEqual(run.throughput, 0.9 * fixed.throughput, target)

    def test_smooth_curve(self) -> None:
        """A contention curve (universal scalability law) with a flat top: both targets
        within 10% of the best static limit."""
        _best, fixed = best_static(SMOOTH)
        for target in ("latency", "throughput"):
            run = adaptive(target, SMOOTH)  # type: ignore[arg-type]
            self.assertGreaterEqual(run.throughput, 0.9 * fixed.throughput, target)
            self.assertLessEqual(run.p99, 0.5 * unlimited(SMOOTH).p99, target)

    def test_latency_target_keeps_the_band(self) -> None:
        """On the smooth curve the latency target keeps the back end's p90 within 2x its
        unloaded p90 (2.3 t0 for exponential work), the throughput target need not."""
        run = adaptive("latency", SMOOTH)
        self.assertLessEqual(quantile(run.rtts, 0.9), 2.0 * 2.3 * SMOOTH.t0)

    def check_recovers(self, target: Target, slow: float | Model) -> SimResult:
        """30 s of trouble from t = 30 s; near the knee again within 15 s of its end, and
        settled (+-20%) within 25 s."""
        controller = FeedbackController(256, target)
        run = simulate(
            KNEE,
            duration=100.0,
            warmup=10.0,
            controller=controller,
            slow=[(30.0, 60.0, slow)],
        )
        self.assertIn(statistics.median(run.limits_between(20.0, 30.0)), (7, 8, 9))
        after = run.limits_between(75.0, 101.0)
        self.assertIn(statistics.median(after), (7, 8, 9), after)
        late = run.limits_between(85.0, 101.0)
        self.assertLessEqual(swing(late), 0.2, late)
        return run

    def test_recovers_from_slow_period_latency(self) -> None:
        """Every request 4x slower: the band narrows the limit, finds the back end slow at
        any concurrency (a new baseline), puts the limit back where it was, and after the
        slow period re-measures the baseline."""
        run = self.check_recovers("latency", 4.0)
        during = run.limits_between(40.0, 60.0)
        self.assertIn(statistics.median(during), (7, 8, 9), during)

    def test_recovers_from_slow_period_throughput(self) -> None:
        """Slower at every concurrency: the goodput curve keeps its shape, the limit stays."""
        run = self.check_recovers("throughput", 4.0)
        during = run.limits_between(40.0, 60.0)
        self.assertIn(statistics.median(during), (7, 8, 9), during)

    def test_recovers_from_knee_moving_down(self) -> None:
        """The back end thrashes beyond 3 requests for 30 s: both targets come down, and
        climb back to 8 when it recovers."""
        for target in ("latency", "throughput"):
            run = self.check_recovers(target, SharpKnee(t0=0.02, knee=3))  # type: ignore[arg-type]
            during = run.limits_between(45.0, 60.0)
            self.assertLessEqual(statistics.median(during), 5, (target, during))
