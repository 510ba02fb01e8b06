from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dlba.interfaces import IBackendPolicy
from dlba.policy import LeastLoad, RoundRobin, UnknownPolicy, make_policy
from dlba.routing import Pool, Router
from dlba.tables import BackendState


def backends(*weights: int) -> list[BackendState]:
    return [BackendState(i + 1, "127.0.0.1", 9000 + i, weight=w) for i, w in enumerate(weights)]


class RoundRobinTests(SynchronousTestCase):
    def test_provides_interface(self) -> None:
        verifyObject(IBackendPolicy, RoundRobin())
        verifyObject(IBackendPolicy, LeastLoad())

    def test_weights_honoured_and_interleaved(self) -> None:
        rr = RoundRobin()
        bs = backends(5, 1, 1)
        picks = [rr.choose(bs, None) for _ in range(70)]
        counts = Counter(b.number for b in picks if b is not None)
        self.assertEqual(counts, {1: 50, 2: 10, 3: 10})
        # Smooth: the heavy back end never gets more than 5 in a row... and not all 5 at once.
        first7 = [b.number for b in picks[:7] if b is not None]
        self.assertEqual(sorted(first7), [1, 1, 1, 1, 1, 2, 3])
        self.assertNotEqual(first7[:5], [1, 1, 1, 1, 1])

    def test_empty(self) -> None:
        self.assertIsNone(RoundRobin().choose([], None))
        self.assertIsNone(LeastLoad().choose([], None))


class LeastLoadTests(SynchronousTestCase):
    def test_fewest_open_per_weight_then_faster(self) -> None:
        a, b, c = backends(1, 2, 1)
        a.open_connections, b.open_connections, c.open_connections = 2, 3, 2
        a.avg_response_time, c.avg_response_time = 0.5, 0.1
        self.assertIs(LeastLoad().choose([a, b, c], None), b)  # 1.5 per weight
        b.queued = 2
        self.assertIs(LeastLoad().choose([a, b, c], None), c)  # tie 2.0: faster wins


class PoolTests(SynchronousTestCase):
    def test_failed_disabled_and_excluded_are_skipped(self) -> None:
        bs = backends(1, 1, 1)
        pool = Pool("p", bs, RoundRobin())
        bs[0].mark_failed(now=100.0, backoff=5.0, error="refused")
        bs[1].enabled = False
        self.assertIs(pool.choose(None, 101.0, None), bs[2])
        self.assertIsNone(pool.choose(None, 101.0, {3}))
        self.assertIs(pool.choose(None, 105.0, {3}), bs[0])  # back-off over

    def test_router_default_is_first_pool(self) -> None:
        p1, p2 = Pool("a", [], RoundRobin()), Pool("b", [], RoundRobin())
        self.assertIs(Router([p1, p2]).route(object()), p1)
        self.assertRaises(ValueError, Router, [])

    def test_make_policy(self) -> None:
        self.assertIsInstance(make_policy("round-robin"), RoundRobin)
        self.assertIsInstance(make_policy("least-load"), LeastLoad)
        self.assertRaises(UnknownPolicy, make_policy, "nope")
