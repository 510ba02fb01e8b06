"""The election (DESIGN.md §7): single steps by hand, then 3 to 5 nodes over an in-memory
network on a task.Clock, with nodes killed, restarted and partitioned at random."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.election import (
    Action,
    AskScheduler,
    BecomeScheduler,
    Election,
    Follow,
    Ping,
    StandDown,
)

INTERVAL = 0.5  # ping_interval
MISSES = 3  # ping_misses


def pings(actions: Iterable[Action]) -> list[int]:
    return [a.node for a in actions if isinstance(a, Ping)]


def changes(actions: Iterable[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Ping | AskScheduler)]


class StepTests(SynchronousTestCase):
    def election(self, own: int = 1, **kw: object) -> Election:
        return Election(own, [1, 2, 3], ping_interval=INTERVAL, ping_misses=MISSES, **kw)  # type: ignore[arg-type]

    def test_start_asks_then_pings_every_peer(self) -> None:
        e = self.election(2)
        actions = e.tick(0.0)
        self.assertEqual(actions[0], AskScheduler((1, 3)))
        self.assertEqual(actions[1:], [Ping(1, None, 0), Ping(3, None, 0)])
        self.assertEqual(e.role, "electing")
        self.assertEqual(e.tick(0.2), [])  # not a round yet
        self.assertEqual(pings(e.tick(0.5)), [1, 3])

    def test_alone_after_the_grace_the_first_node_claims(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        for t in (0.5, 1.0):
            self.assertEqual(changes(e.tick(t)), [])
        # Terms are node 1's: 3, 6, 9... (it is first of three: t % 3 == 0).
        self.assertEqual(changes(e.tick(1.5)), [BecomeScheduler(3)])
        self.assertEqual((e.role, e.scheduler, e.term), ("scheduler", 1, 3))

    def test_alone_a_later_node_claims_when_the_earlier_never_answer(self) -> None:
        e = self.election(3)
        e.tick(0.0)
        e.tick(0.5)
        e.tick(1.0)
        self.assertEqual(changes(e.tick(1.5)), [BecomeScheduler(2)])

    def test_a_starting_node_follows_the_running_scheduler(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        # Hearsay of a newer claim is believed (2 has MISSES rounds to answer us itself).
        self.assertEqual(e.peer_says(3, 2, 7, 0.01), [Follow(2, 7)])
        self.assertEqual(e.peer_says(2, 2, 7, 0.02), [])
        self.assertEqual((e.role, e.scheduler, e.term), ("node", 2, 7))
        # No pre-emption, though node 1 is first in order.
        for k in range(1, 10):
            e.tick(k * INTERVAL)
            e.pong(2, 2, 7, k * INTERVAL)
            e.pong(3, 2, 7, k * INTERVAL)
        self.assertEqual(e.role, "node")

    def test_a_scheduler_known_by_hearsay_that_never_answers_is_dropped(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        self.assertEqual(e.peer_says(3, 2, 7, 0.01), [Follow(2, 7)])
        t = 0.0
        for k in range(MISSES + 1):  # the round's ping counts as answered: MISSES more
            t += INTERVAL
            out = changes(e.tick(t))
            e.pong(3, 2, 7, t)
            self.assertEqual(out, [BecomeScheduler(9)] if k == MISSES else [])

    def test_hearsay_of_a_scheduler_counted_dead_is_no_news(self) -> None:
        f = self.election(3)
        f.tick(0.0)
        f.peer_says(1, 1, 3, 0.0)
        for k in range(1, MISSES + 2):  # node 1 silent, node 2 answers: 2 is the one to claim
            f.tick(k * INTERVAL)
            f.pong(2, None, 3, k * INTERVAL)
        self.assertEqual((f.role, f.live_nodes()), ("electing", [2, 3]))
        # Node 2 not having noticed yet is no reason to follow node 1 again.
        self.assertEqual(f.pinged_by(2, 1, 3, 2.1), [])
        self.assertEqual(f.role, "electing")

    def test_the_highest_term_wins_at_start(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        e.peer_says(2, 2, 4, 0.01)
        self.assertEqual(e.peer_says(3, 3, 8, 0.02), [Follow(3, 8)])
        self.assertEqual(e.peer_says(2, 2, 4, 0.03), [])  # older: ignored
        self.assertEqual(e.scheduler, 3)

    def test_the_scheduler_dies(self) -> None:
        e = self.election(2)
        e.tick(0.0)
        e.peer_says(1, 1, 3, 0.0)
        e.peer_says(3, 1, 3, 0.0)
        t = 0.0
        for _ in range(2):  # answered rounds
            t += INTERVAL
            e.tick(t)
            e.pong(1, 1, 3, t)
            e.pong(3, 1, 3, t)
        # Node 1 dead from now on: the round after sends the first ping it leaves
        # unanswered, and MISSES rounds later that is MISSES misses: (MISSES + 1) rounds in all.
        for k in range(MISSES + 1):
            t += INTERVAL
            out = changes(e.tick(t))
            e.pong(3, 1, 3, t)
            self.assertEqual(out, [BecomeScheduler(4)] if k == MISSES else [])
        self.assertEqual((e.role, e.term), ("scheduler", 4))

    def test_a_missed_ping_reported_counts_at_once(self) -> None:
        e = self.election(2)
        e.tick(0.0)
        e.peer_says(1, 1, 3, 0.0)
        e.peer_says(3, 1, 3, 0.0)
        t = 2.0
        e.tick(t)
        e.pong(3, 1, 3, t)
        for k in range(MISSES):
            self.assertEqual(
                changes(e.ping_missed(1, t)), [BecomeScheduler(4)] if k == MISSES - 1 else []
            )
            e.ping_missed(1, t)  # twice in a round is one miss
            t += INTERVAL
            if k < MISSES - 1:
                e.tick(t)
                e.pong(3, 1, 3, t)

    def test_an_old_scheduler_stands_down_on_hearing_a_newer_term(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        e.tick(1.5)
        self.assertEqual(e.role, "scheduler")
        self.assertEqual(e.pinged_by(2, 2, 4, 2.0), [StandDown(2, 4)])
        self.assertEqual((e.role, e.scheduler, e.term), ("node", 2, 4))
        self.assertEqual(e.pinged_by(3, 1, 3, 2.1), [])  # stale news of its old term

    def test_a_newer_term_without_a_scheduler_makes_a_scheduler_stand_down(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        e.tick(1.5)
        # Node 3 says term 5 (node 2's) whose node 2 it no longer hears; we never heard 2.
        self.assertEqual(changes(e.pong(3, None, 5, 2.0)), [StandDown(None, 5), BecomeScheduler(6)])

    def test_terms_belong_to_their_node(self) -> None:
        # order[i] claims only terms t = i (mod 3): nodes 1, 2, 3 start at 3, 1, 2.
        for own, first in ((1, 3), (2, 1), (3, 2)):
            e = self.election(own)
            e.tick(0.0)
            self.assertEqual(changes(e.tick(MISSES * INTERVAL)), [BecomeScheduler(first)])
            # A higher term seen, no scheduler named: the first live node claims above it.
            e.pinged_by(own % 3 + 1, None, 7, 2.0)
            expected = {1: (9, "scheduler"), 2: (10, "scheduler"), 3: (7, "electing")}
            self.assertEqual((e.term, e.role), expected[own])  # node 3 waits for node 1
        e = Election(2, [1, 2, 3], ping_interval=INTERVAL, ping_misses=1, grace=0.0, past_term=10)
        self.assertEqual(changes(e.tick(0.0)), [BecomeScheduler(13)])
        # A past term is a floor for claims, not a claim: a lower live scheduler is followed.
        e = Election(1, [1, 2, 3], ping_interval=INTERVAL, ping_misses=1, past_term=12)
        e.tick(0.0)
        self.assertEqual(e.peer_says(2, 2, 1, 0.1), [Follow(2, 1)])

    def test_a_disabled_node_never_claims(self) -> None:
        e = self.election(1, eligible={2, 3})
        e.tick(0.0)
        for t in (0.5, 1.0, 1.5, 2.0, 5.0):
            self.assertEqual(changes(e.tick(t)), [])
        self.assertEqual(e.role, "electing")

    def test_a_scheduler_disabled_stands_down(self) -> None:
        enabled = {1, 2, 3}
        e = self.election(1, eligible=lambda n: n in enabled)
        e.tick(0.0)
        e.tick(1.5)
        self.assertEqual(e.role, "scheduler")
        enabled.discard(1)
        self.assertEqual(changes(e.tick(2.0)), [StandDown(None, 3)])
        self.assertEqual(pings(e.tick(2.0)), [])  # the round was at 2.0
        # Its followers hear it say so and elect the next.
        f = self.election(2, eligible=lambda n: n in enabled)
        f.tick(0.0)
        f.peer_says(1, 1, 3, 0.0)
        self.assertEqual(f.pinged_by(1, None, 3, 2.0), [BecomeScheduler(4)])

    def test_news_of_this_node_from_before_a_restart(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        self.assertEqual(e.peer_says(2, 1, 6, 0.0), [])
        self.assertEqual((e.role, e.term), ("electing", 6))
        self.assertEqual(changes(e.tick(1.5)), [BecomeScheduler(9)])

    def test_two_claims_of_one_term_the_earlier_wins(self) -> None:
        # Only nodes with different orders can claim one term; node 1 wins here.
        e = self.election(2)
        e.tick(0.0)
        e.peer_says(3, 3, 5, 0.0)
        self.assertEqual(e.scheduler, 3)
        self.assertEqual(e.pinged_by(1, 1, 5, 0.1), [Follow(1, 5)])
        self.assertEqual(e.pinged_by(3, 3, 5, 0.2), [])
        s = self.election(3)
        s.tick(0.0)
        s.tick(1.5)
        self.assertEqual(s.term, 2)
        self.assertEqual(s.pinged_by(1, 1, 2, 1.6), [StandDown(1, 2)])

    def test_nothing_is_claimed_before_the_first_tick(self) -> None:
        e = self.election(1)
        self.assertEqual(e.pinged_by(2, None, 0, 5.0), [])
        self.assertEqual(e.role, "electing")
        self.assertEqual(changes(e.tick(5.0)), [])  # the grace starts now
        self.assertEqual(changes(e.tick(5.0 + MISSES * INTERVAL)), [BecomeScheduler(3)])

    def test_strangers_are_ignored(self) -> None:
        e = self.election(1)
        e.tick(0.0)
        self.assertEqual(e.pinged_by(9, 9, 99, 0.1), [])
        self.assertEqual(e.pinged_by(2, 9, 99, 0.1), [])
        self.assertEqual((e.term, e.scheduler), (99, None))

    def test_bad_arguments(self) -> None:
        with self.assertRaises(ValueError):
            Election(4, [1, 2, 3], ping_interval=INTERVAL, ping_misses=MISSES)
        with self.assertRaises(ValueError):
            Election(1, [1, 2, 1], ping_interval=INTERVAL, ping_misses=MISSES)
        with self.assertRaises(ValueError):
            Election(1, [1, 2], ping_interval=0, ping_misses=MISSES)
        with self.assertRaises(ValueError):
            Election(1, [1, 2], ping_interval=INTERVAL, ping_misses=0)

    def test_a_node_appended_at_run_time_joins(self) -> None:
        one = Election(1, [1, 2], ping_interval=INTERVAL, ping_misses=MISSES)
        one.tick(0.0)
        one.pong(2, None, 0, 0.1)
        for k in range(1, MISSES + 1):
            one.tick(k * INTERVAL)
            one.pong(2, one.scheduler, one.term, k * INTERVAL)
        self.assertEqual(one.role, "scheduler")
        term = one.term
        # Before the push, node 3 is a stranger: its pings are no evidence.
        self.assertEqual(one.pinged_by(3, None, 0, 2.0), [])
        self.assertEqual(one.add_nodes([1, 2, 3]), (3,))
        self.assertEqual((one.order, one.peers), ((1, 2, 3), (2, 3)))
        self.assertFalse(one.live(3))  # not until heard from
        self.assertEqual(pings(one.tick(2.5)), [2, 3])
        # The newcomer starts with the grown order, asks, and follows the running scheduler.
        three = Election(3, [1, 2, 3], ping_interval=INTERVAL, ping_misses=MISSES)
        self.assertEqual(three.tick(2.6)[0], AskScheduler((1, 2)))
        scheduler, now = one.scheduler, one.term
        self.assertEqual(three.peer_says(1, scheduler, now, 2.7), [Follow(1, term)])
        self.assertEqual(one.pinged_by(3, three.scheduler, three.term, 2.8), [])
        self.assertTrue(one.live(3))
        self.assertEqual((one.role, one.term), ("scheduler", term))  # no takeover
        for k in range(6, 12):
            t = k * INTERVAL
            self.assertEqual(changes(three.tick(t)), [])
            three.pong(1, 1, term, t)
            three.pong(2, 1, term, t)
        self.assertEqual((three.role, three.scheduler), ("node", 1))
        self.assertEqual(one.add_nodes([1, 2, 3]), ())  # the same order again: nothing

    def test_only_appending_is_taken_at_run_time(self) -> None:
        e = self.election(1)
        for order in ([1, 3, 2], [1, 2], [2, 1, 3, 4], [1, 2, 3, 3], [4, 1, 2, 3]):
            with self.assertRaises(ValueError):
                e.add_nodes(order)
            self.assertEqual(e.order, (1, 2, 3))
        self.assertEqual(e.add_nodes([1, 2, 3, 5, 4]), (5, 4))
        self.assertEqual(e.peers, (2, 3, 5, 4))


# -- a network in memory -------------------------------------------------------------------


@dataclass
class Process:
    """One run of one node's election: killed and restarted, a node is a new process."""

    election: Election
    tick: IDelayedCall
    last_term: int
    scheduler_since: float | None = None


class Network:
    """Nodes ticking on one Clock, each with its own phase; messages arrive at once between
    nodes of one group; checks the invariants after every step."""

    def __init__(
        self,
        order: Sequence[int],
        *,
        misses: int = MISSES,
        eligible: Iterable[int] | None = None,
        phases: Sequence[float] | None = None,
        report_misses: bool = True,
        persist_terms: bool = False,
    ) -> None:
        self.clock = Clock()
        self.order = list(order)
        self.misses = misses
        self.eligible = set(order if eligible is None else eligible)
        self.phases = list(phases) if phases is not None else [0.0] * len(order)
        self.report_misses = report_misses
        self.persist_terms = persist_terms
        self.disk: dict[int, int] = {}
        self.procs: dict[int, Process] = {}
        self.group = dict.fromkeys(order, 0)
        self.connected_since = 0.0
        self.disabled_at: dict[int, float] = {}

    def __repr__(self) -> str:
        return (
            f"Network(order={self.order}, misses={self.misses}, eligible={sorted(self.eligible)}"
            f", phases={self.phases}, report_misses={self.report_misses}"
            f", persist_terms={self.persist_terms})"
        )

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def start(self, node: int) -> None:
        assert node not in self.procs
        past = self.disk.get(node, 0) if self.persist_terms else 0
        e = Election(
            node,
            self.order,
            ping_interval=INTERVAL,
            ping_misses=self.misses,
            eligible=lambda n: n in self.eligible,  # the operator may change it
            past_term=past,
        )
        delay = self.phases[self.order.index(node)]
        self.procs[node] = Process(e, self.clock.callLater(delay, self._tick, node), 0)

    def start_all(self) -> None:
        for n in self.order:
            self.start(n)

    def kill(self, node: int) -> None:
        proc = self.procs.pop(node)
        if proc.tick.active():
            proc.tick.cancel()

    def toggle(self, node: int) -> None:
        """Disable or enable ``node`` (the last eligible node stays eligible)."""
        if node in self.eligible and len(self.eligible) > 1:
            self.eligible.discard(node)
            self.disabled_at[node] = self.now
        elif node not in self.eligible:
            self.eligible.add(node)

    def partition(self, groups: dict[int, int]) -> None:
        self.group.update(groups)
        if len({self.group[n] for n in self.order}) == 1:
            self.connected_since = self.now

    def heal(self) -> None:
        self.partition(dict.fromkeys(self.order, 0))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            step = min([t for t in calls if t <= end], default=None)
            if step is None:
                break
            self.clock.advance(step - self.now)
        self.clock.advance(end - self.now)

    def can_talk(self, a: int, b: int) -> bool:
        return a in self.procs and b in self.procs and self.group[a] == self.group[b]

    def schedulers(self) -> list[int]:
        return [n for n, p in self.procs.items() if p.election.role == "scheduler"]

    def views(self) -> set[tuple[int | None, int]]:
        return {(p.election.scheduler, p.election.term) for p in self.procs.values()}

    # -- the glue's part --

    def _tick(self, node: int) -> None:
        proc = self.procs[node]
        proc.tick = self.clock.callLater(INTERVAL, self._tick, node)
        self._act(node, lambda e: e.tick(self.now), from_tick=True)

    def _act(
        self, node: int, call: Callable[[Election], list[Action]], from_tick: bool = False
    ) -> None:
        """Run one input on ``node`` and carry out its actions, checking as we go."""
        proc = self.procs[node]
        e = proc.election
        before = e.role
        actions = call(e)
        after = e.role
        # The actions tell the glue every change of role it must act on, and only those.
        claims = [a for a in actions if isinstance(a, BecomeScheduler)]
        downs = [a for a in actions if isinstance(a, StandDown)]
        if after == "scheduler" and before != "scheduler":
            assert claims and claims[-1].term == e.term, (node, actions)
            assert node in self.eligible, f"disabled node {node} claimed"
        if before == "scheduler" and after != "scheduler":
            assert downs, (node, actions)
        for a in actions:
            if isinstance(a, Follow):
                assert a.scheduler != node
        if after == "scheduler" and proc.scheduler_since is None:
            proc.scheduler_since = self.now
        elif after != "scheduler":
            proc.scheduler_since = None
        if not from_tick:
            assert not [a for a in actions if isinstance(a, Ping | AskScheduler)]
        self.check()
        for a in actions:
            if isinstance(a, Ping):
                self._ping(node, a)
            elif isinstance(a, AskScheduler):
                for peer in a.nodes:
                    self._ask(node, peer)

    def _ping(self, src: int, ping: Ping) -> None:
        dst = ping.node
        if not self.can_talk(src, dst):
            if self.report_misses and src in self.procs:
                self._act(src, lambda e: e.ping_missed(dst, self.now))
            return
        self._act(dst, lambda e: e.pinged_by(src, ping.scheduler, ping.term, self.now))
        if self.can_talk(src, dst):
            peer = self.procs[dst].election
            view = (peer.scheduler, peer.term)
            self._act(src, lambda e: e.pong(dst, view[0], view[1], self.now))

    def _ask(self, src: int, dst: int) -> None:
        if self.can_talk(src, dst):
            peer = self.procs[dst].election
            view = (peer.scheduler, peer.term)
            self._act(src, lambda e: e.peer_says(dst, view[0], view[1], self.now))

    # -- the invariants --

    def check(self) -> None:
        terms: dict[int, int] = {}
        for node, proc in self.procs.items():
            e = proc.election
            assert e.term >= proc.last_term, f"node {node}: term {proc.last_term} -> {e.term}"
            proc.last_term = e.term
            self.disk[node] = max(self.disk.get(node, 0), e.term)
            if e.role == "scheduler":
                if node not in self.eligible:  # stands down by its next tick
                    late = self.now - self.disabled_at[node]
                    assert late <= INTERVAL + 1e-9, f"node {node} disabled {late} s ago, scheduler"
                assert e.term not in terms, f"nodes {terms.get(e.term)} and {node}: term {e.term}"
                terms[e.term] = node
        # Connected, two schedulers at once for at most one ping interval.
        if len({self.group[n] for n in self.procs}) <= 1:
            since = sorted(
                p.scheduler_since for p in self.procs.values() if p.scheduler_since is not None
            )
            if len(since) >= 2:  # the longest overlap: the first two to become scheduler
                overlap = self.now - max(self.connected_since, since[1])
                assert overlap <= INTERVAL + 1e-9, f"two schedulers for {overlap} s at {self.now}"

    def assert_agreed(self) -> None:
        """Exactly one scheduler (if any node may be one), and every node knows it."""
        running_eligible = [n for n in self.procs if n in self.eligible]
        views = self.views()
        if not running_eligible:
            assert self.schedulers() == [], self.schedulers()
            return
        assert len(self.schedulers()) == 1, (self.now, self.schedulers(), views)
        assert views == {(self.schedulers()[0], self.procs[self.schedulers()[0]].election.term)}


class NetworkTests(SynchronousTestCase):
    def test_three_nodes_start_and_node_1_wins(self) -> None:
        net = Network([1, 2, 3], phases=[0.0, 0.1, 0.3])
        net.start_all()
        net.advance((MISSES + 3) * INTERVAL)
        net.assert_agreed()
        self.assertEqual(net.schedulers(), [1])

    def test_the_scheduler_dies_and_the_next_takes_over_in_time(self) -> None:
        net = Network([1, 2, 3], phases=[0.0, 0.1, 0.3], report_misses=False)
        net.start_all()
        net.advance(5.0)
        net.kill(1)
        net.advance((MISSES + 1) * INTERVAL)
        self.assertEqual(net.schedulers(), [2])
        net.advance(INTERVAL)
        net.assert_agreed()

    def test_an_old_scheduler_returning_stands_down(self) -> None:
        net = Network([1, 2, 3], phases=[0.0, 0.2, 0.4])
        net.start_all()
        net.advance(5.0)
        net.partition({1: 1})
        net.advance((MISSES + 2) * INTERVAL)
        self.assertEqual(sorted(net.schedulers()), [1, 2])  # one a side
        net.heal()
        net.advance(INTERVAL)
        self.assertEqual(net.schedulers(), [2])
        net.assert_agreed()

    def test_a_node_cut_off_alone_elects_itself_and_wins_on_its_return(self) -> None:
        # No quorum: the documented cost of being able to fail over with two nodes.
        net = Network([1, 2, 3], phases=[0.0, 0.2, 0.4])
        net.start_all()
        net.advance(5.0)
        net.partition({3: 1})
        net.advance((MISSES + 2) * INTERVAL)
        self.assertEqual(sorted(net.schedulers()), [1, 3])
        net.heal()
        net.advance(INTERVAL)
        self.assertEqual(net.schedulers(), [3])

    def test_a_restarted_scheduler_gives_way(self) -> None:
        net = Network([1, 2, 3], phases=[0.0, 0.2, 0.4])
        net.start_all()
        net.advance(5.0)
        net.kill(1)
        net.start(1)  # back at once, before anyone missed it
        net.advance((MISSES + 3) * INTERVAL)
        net.assert_agreed()
        self.assertEqual(net.schedulers(), [1])  # first in order, and the old term was its own


# Hypothesis: random arrays and random troubles.

ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(1, 4 * (MISSES + 3))),  # quarter intervals
        st.tuples(st.just("kill"), st.integers(0, 4)),
        st.tuples(st.just("start"), st.integers(0, 4)),
        st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=5, max_size=5)),
        st.tuples(st.just("heal"), st.just(0)),
        st.tuples(st.just("toggle"), st.integers(0, 4)),
    ),
    max_size=14,
)


@st.composite
def arrays(draw: st.DrawFn) -> Network:
    n = draw(st.integers(3, 5))
    order = draw(st.permutations(list(range(1, n + 1))))
    eligible = draw(st.sets(st.sampled_from(order), min_size=1))
    phases = draw(
        st.lists(st.integers(0, 7).map(lambda k: k * INTERVAL / 8), min_size=n, max_size=n)
    )
    return Network(
        order,
        misses=draw(st.integers(1, 4)),
        eligible=eligible,
        phases=phases,
        report_misses=draw(st.booleans()),
        persist_terms=draw(st.booleans()),
    )


def run(net: Network, steps: list[tuple[str, object]]) -> None:
    for kind, arg in steps:
        node = net.order[arg % len(net.order)] if isinstance(arg, int) else 0
        if kind == "advance":
            net.advance(arg * INTERVAL / 4)  # type: ignore[operator]
        elif kind == "kill" and node in net.procs:
            net.kill(node)
        elif kind == "start" and node not in net.procs:
            net.start(node)
        elif kind == "partition":
            groups = arg  # type: ignore[assignment]
            net.partition({n: groups[i] for i, n in enumerate(net.order)})  # type: ignore[index]
        elif kind == "heal":
            net.heal()
        elif kind == "toggle":
            net.toggle(node)


PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, database=None)


class PropertyTests(SynchronousTestCase):
    @PROPERTIES
    @given(arrays(), ops)
    def test_troubles_then_healed(self, net: Network, steps: list[tuple[str, object]]) -> None:
        """Never two schedulers of one term, never a disabled one, terms never go back,
        connected never two for more than an interval (all checked at every step); after
        the last trouble, one scheduler everyone agrees on within (misses + 3) intervals."""
        net.start_all()
        run(net, steps)
        net.heal()
        net.advance((net.misses + 3) * INTERVAL)
        net.assert_agreed()

    @PROPERTIES
    @given(arrays(), ops, st.integers(0, 7))
    def test_the_scheduler_dies(
        self, net: Network, steps: list[tuple[str, object]], offset: int
    ) -> None:
        """Agreed, then the scheduler dies: another node is scheduler within
        (misses + 1) intervals, and everyone agrees one interval later."""
        net.start_all()
        run(net, steps)
        net.heal()
        net.advance((net.misses + 3) * INTERVAL + offset * INTERVAL / 8)
        net.assert_agreed()
        if len(net.schedulers()) != 1:
            return
        old = net.schedulers()[0]
        net.kill(old)
        if not [n for n in net.procs if n in net.eligible]:
            return
        net.advance((net.misses + 1) * INTERVAL)
        self.assertEqual(len(net.schedulers()), 1)
        self.assertNotEqual(net.schedulers(), [old])
        net.advance(INTERVAL)
        net.assert_agreed()

    @PROPERTIES
    @given(arrays(), ops, st.integers(0, 4), st.integers(0, 7))
    def test_a_node_joining_changes_nothing(
        self, net: Network, steps: list[tuple[str, object]], which: int, offset: int
    ) -> None:
        """A node that starts into an agreed array follows its scheduler: no election,
        whatever its place in the order."""
        net.start_all()
        run(net, steps)
        net.heal()
        net.advance((net.misses + 3) * INTERVAL + offset * INTERVAL / 8)
        net.assert_agreed()
        down = [n for n in net.order if n not in net.procs]
        if not down or len(net.schedulers()) != 1:
            return
        before = (net.schedulers(), net.views())
        net.start(down[which % len(down)])
        net.advance((net.misses + 3) * INTERVAL)
        self.assertEqual((net.schedulers(), net.views()), before)

    @PROPERTIES
    @given(arrays(), st.integers(1, 4 * (MISSES + 4)))
    def test_an_old_scheduler_returns(self, net: Network, apart: int) -> None:
        """Cut off the scheduler, let the rest elect, heal: the one with the older term
        stands down within one interval."""
        net.start_all()
        net.advance((net.misses + 3) * INTERVAL)
        net.assert_agreed()
        if not net.schedulers():
            return
        old = net.schedulers()[0]
        net.partition({n: int(n == old) for n in net.order})
        net.advance(apart * INTERVAL / 4)
        before = {n: p.election.term for n, p in net.procs.items()}
        net.heal()
        net.advance(INTERVAL)
        self.assertLessEqual(len(net.schedulers()), 1)
        newest = max(before.values())
        if before[old] < newest:
            self.assertNotEqual(net.schedulers(), [old])
