"""The client table (DESIGN.md §4): placement by weight, idle moves, failed nodes, and sync
by version, checked by hand and against a plain dict-based model."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from dlba.clienttable import UNASSIGNED, ClientTable
from dlba.hashing import bucket_of
from dlba.sweep import StatusAnswer, Sweep, Visit
from dlba.tables import NodeState, NodeStatusTable, SummaryTable

IDLE = 300.0


def node_table(*weights: int) -> NodeStatusTable:
    return NodeStatusTable(
        NodeState(n, f"02:00:00:00:00:{n:02x}", f"10.0.0.{n}", weight=w)
        for n, w in enumerate(weights, start=1)
    )


def sync(follower: ClientTable, leader: ClientTable) -> bool:
    """What the sync glue does: a diff if the follower's version is still in the leader's
    log, else the whole table.  True if a diff sufficed."""
    since = follower.version
    diff = leader.changes_since(since, follower.table_id)
    if diff is not None and follower.apply_changes(
        diff[0], diff[1], since=since, table_id=leader.table_id
    ):
        return True
    version, nodes = leader.snapshot()
    follower.load(version, nodes, table_id=leader.table_id)
    return False


class PlacementTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.nodes = node_table(1, 1, 1)
        self.table = ClientTable(4093, self.nodes, idle_timeout=IDLE, table_id="t")

    def row(self, n: int) -> NodeState:
        row = self.nodes.get(n)
        assert row is not None
        return row

    def test_a_new_bucket_goes_to_the_lowest_number_on_a_tie(self) -> None:
        self.assertEqual(self.table.lookup(7, 1.0), 1)
        self.assertEqual(self.table.lookup(8, 1.0), 2)
        self.assertEqual(self.table.lookup(9, 1.0), 3)
        self.assertEqual(self.table.lookup(10, 1.0), 1)
        self.assertEqual([self.row(n).buckets for n in (1, 2, 3)], [2, 1, 1])
        self.assertEqual(self.table.buckets_per_node(), {1: 2, 2: 1, 3: 1})

    def test_ties_of_load_go_to_fewest_open_connections(self) -> None:
        self.row(1).open_connections = 5
        self.row(2).open_connections = 3
        self.row(3).open_connections = 4
        self.assertEqual(self.table.lookup(0, 1.0), 2)
        self.assertEqual(self.table.lookup(1, 1.0), 3)
        self.assertEqual(self.table.lookup(2, 1.0), 1)

    def test_a_busy_bucket_stays(self) -> None:
        node = self.table.lookup(5, 1.0)
        for t in range(2, 50):
            self.assertEqual(self.table.lookup(5, float(t)), node)
        self.assertEqual(self.table.version, 1)

    def test_weights_1_1_2_share_1_1_2(self) -> None:
        table = ClientTable(4093, node_table(1, 1, 2), idle_timeout=IDLE)
        for b in range(4000):
            table.lookup(b, 1.0)
        counts = table.buckets_per_node()
        self.assertEqual(sum(counts.values()), 4000)
        self.assertEqual(counts, {1: 1000, 2: 1000, 3: 2000})

    def test_weights_and_real_addresses(self) -> None:
        table = ClientTable(4093, node_table(1, 2, 3), idle_timeout=IDLE)
        for i in range(20000):
            node = table.route(f"192.0.2.{i % 250}", 1024 + i, 1.0)
            self.assertIn(node, (1, 2, 3))
        counts = table.buckets_per_node()
        total = sum(counts.values())
        for node, weight in ((1, 1), (2, 2), (3, 3)):
            # Placement is exact: within one bucket of the weighted share.
            self.assertLessEqual(abs(counts[node] - total * weight / 6), 1)

    def test_route_uses_bucket_of(self) -> None:
        node = self.table.route("198.51.100.7", 40000, 1.0)
        self.assertEqual(self.table.node_of(bucket_of("198.51.100.7", 40000, 4093)), node)

    def test_a_weight_of_zero_takes_nothing(self) -> None:
        self.row(2).weight = 0
        self.assertEqual({self.table.lookup(b, 1.0) for b in range(30)}, {1, 3})

    def test_no_live_node(self) -> None:
        for n in (1, 2, 3):
            self.row(n).failed = True
        self.assertEqual(self.table.lookup(3, 1.0), UNASSIGNED)
        self.assertEqual(self.table.version, 0)
        self.row(2).failed = False
        self.assertEqual(self.table.lookup(3, 2.0), 2)

    def test_no_live_node_for_a_draining_bucket_unassigns_it_when_idle(self) -> None:
        self.assertEqual(self.table.lookup(3, 1.0), 1)
        for n in (1, 2, 3):
            self.row(n).enabled = False
        self.assertEqual(self.table.lookup(3, 2.0), 1)  # busy: drains
        self.assertEqual(self.table.lookup(3, 2.0 + IDLE + 1), UNASSIGNED)
        self.assertEqual(self.table.buckets_per_node(), {1: 0, 2: 0, 3: 0})

    def test_an_empty_node_table(self) -> None:
        table = ClientTable(11, NodeStatusTable(), idle_timeout=IDLE)
        self.assertEqual(table.lookup(3, 1.0), UNASSIGNED)


class IdleTests(SynchronousTestCase):
    """A node that joins gets idle buckets, never busy ones."""

    def setUp(self) -> None:
        self.nodes = node_table(1, 1)
        joiner = self.nodes.get(2)
        assert joiner is not None
        self.joiner: NodeState = joiner
        self.joiner.failed = True  # down at first: everything goes to node 1
        self.table = ClientTable(101, self.nodes, idle_timeout=IDLE, table_id="t")
        for b in range(10):
            self.assertEqual(self.table.lookup(b, 0.0), 1)
        self.joiner.failed = False  # the sweep saw it again

    def test_no_move_before_the_timeout(self) -> None:
        for b in range(10):
            self.assertEqual(self.table.lookup(b, IDLE), 1)  # exactly the timeout: busy
        self.assertEqual(self.table.version, 10)

    def test_an_idle_bucket_moves_to_the_least_loaded_node(self) -> None:
        self.assertEqual(self.table.lookup(0, IDLE + 0.5), 2)
        self.assertEqual(self.table.version, 11)
        self.assertEqual(self.table.buckets_per_node(), {1: 9, 2: 1})
        self.assertEqual(self.table.changes_since(10, "t"), (11, {0: 2}))

    def test_idle_buckets_spread_until_balanced_then_stay(self) -> None:
        moved = [self.table.lookup(b, 1000.0) for b in range(10)]
        self.assertEqual(Counter(moved), {2: 5, 1: 5})
        self.assertEqual(self.table.version, 15)
        # Idle again, and balanced: each stays where it is, no version moves.
        for b in range(10):
            self.assertEqual(self.table.lookup(b, 2000.0), moved[b])
        self.assertEqual(self.table.version, 15)

    def test_an_idle_bucket_on_the_least_loaded_node_stays_without_a_change(self) -> None:
        self.joiner.failed = True
        self.assertEqual(self.table.lookup(0, 1000.0), 1)
        self.assertEqual(self.table.version, 10)

    def test_a_disabled_node_drains(self) -> None:
        node1 = self.nodes.get(1)
        assert node1 is not None
        node1.enabled = False
        self.assertEqual(self.table.lookup(0, 10.0), 1)  # busy: its connections survive
        self.assertEqual(self.table.lookup(0, 10.0 + IDLE + 1), 2)  # idle: moves
        self.assertEqual(self.table.lookup(11, 10.0), 2)  # new buckets avoid it

    def test_touch_all_makes_every_bucket_busy(self) -> None:
        self.table.touch_all(900.0)
        self.assertEqual(self.table.last_access(5), 900.0)
        self.assertEqual(self.table.lookup(0, 1000.0), 1)
        self.assertEqual(self.table.version, 10)


class FailedNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.nodes = node_table(1, 1, 1)
        self.table = ClientTable(31, self.nodes, idle_timeout=IDLE, table_id="t")
        for b in range(12):
            self.table.lookup(b, 1.0)

    def test_a_failed_nodes_buckets_reset_at_once(self) -> None:
        self.assertEqual(self.table.buckets_per_node(), {1: 4, 2: 4, 3: 4})
        v = self.table.version
        row2 = self.nodes.get(2)
        assert row2 is not None
        row2.failed = True
        self.table.node_failed(2)
        self.assertEqual(row2.buckets, 0)
        self.assertEqual(self.table.buckets_per_node(), {1: 4, 2: 0, 3: 4})
        self.assertNotIn(2, self.table.owners())
        self.assertEqual(self.table.version, v + 4)
        diff = self.table.changes_since(v, "t")
        assert diff is not None
        self.assertEqual(set(diff[1].values()), {UNASSIGNED})
        # Its buckets' next frames spread over the others, busy or not.
        for b in diff[1]:
            self.assertIn(self.table.lookup(b, 2.0), (1, 3))
        row2.failed = False
        self.table.node_rejoined(2)
        self.assertEqual(self.table.lookup(20, 2.0), 2)

    def test_a_failed_node_twice_changes_nothing(self) -> None:
        self.table.node_failed(2)
        v = self.table.version
        self.table.node_failed(2)
        self.assertEqual(self.table.version, v)

    def test_a_bucket_naming_a_failed_node_moves_on_its_next_frame(self) -> None:
        # A table taken over from another scheduler may name a node the sweep has failed
        # without the hook having run here.
        row1 = self.nodes.get(1)
        assert row1 is not None
        row1.failed = True
        self.assertIn(self.table.lookup(0, 2.0), (2, 3))

    def test_the_sweeps_failed_hook(self) -> None:
        sweep = Sweep(
            self.nodes,
            SummaryTable(),
            timeout=1.0,
            tries=1,
            delay=1.0,
            on_failed=[self.table.node_failed],
            on_rejoined=[self.table.node_rejoined],
        )
        visit = sweep.next(5.0)
        assert isinstance(visit, Visit)
        node = visit.node
        self.assertEqual(node.number, 1)
        sweep.missed(node, "refused", 5.0)
        self.assertEqual(node.buckets, 0)
        self.assertNotIn(1, self.table.owners())


class GrowTests(SynchronousTestCase):
    """A node added to a running array by a config push (``NodeStatusTable.reconfigure``):
    it takes nothing until the sweep hears it, then only new and idle buckets."""

    def test_a_node_that_joins_gets_only_idle_and_new_buckets(self) -> None:
        nodes = node_table(1, 1)
        table = ClientTable(101, nodes, idle_timeout=IDLE, table_id="t")
        for b in range(40):
            table.lookup(b, 0.0)
        busy = set(range(0, 40, 2))  # still in use at 500 s; the odd ones went idle
        for b in busy:
            table.lookup(b, 400.0)
        before = table.owners()
        nodes.reconfigure(node_table(1, 1, 1), node_table(1, 1))
        joiner = nodes.get(3)
        assert joiner is not None and joiner.failed
        # Not yet heard: an idle bucket's next frame stays on its node, new ones avoid 3.
        self.assertNotEqual(table.lookup(1, 500.0), 3)
        self.assertNotEqual(table.lookup(41, 500.0), 3)
        sweep = Sweep(nodes, SummaryTable(), timeout=1.0, tries=1, delay=1.0)
        while not isinstance(visit := sweep.next(501.0), Visit) or visit.node.number != 3:
            assert isinstance(visit, Visit)
            sweep.answered(visit.node, StatusAnswer(visit.node.number, 0.0, 0, 0, ()), 501.0)
        sweep.answered(joiner, StatusAnswer(3, 0.0, 0, 0, ()), 501.0)
        self.assertFalse(joiner.failed)
        version = table.version
        self.assertEqual(table.lookup(60, 502.0), 3)  # a new bucket
        got = [b for b in range(3, 40, 2) if table.lookup(b, 502.0) == 3]
        for b in busy:
            self.assertEqual(table.lookup(b, 502.0), before[b])
        changed = table.changes_since(version, "t")
        assert changed is not None
        self.assertEqual(set(changed[1]), {*got, 60})
        self.assertFalse(busy & set(changed[1]))
        self.assertEqual(set(changed[1].values()), {3})
        # Idle buckets went to it until it held its share, not all of them.
        self.assertTrue(got, changed)
        self.assertLess(len(got), 19)
        counts = table.buckets_per_node()
        self.assertLessEqual(max(counts.values()) - min(counts.values()), 12, counts)


class DrainTests(SynchronousTestCase):
    def test_a_disabled_node_with_no_connection_left_gives_its_buckets_back(self) -> None:
        nodes = node_table(1, 1)
        table = ClientTable(31, nodes, idle_timeout=IDLE, table_id="t")
        for b in range(10):
            table.lookup(b, 1.0)
        sweep = Sweep(
            nodes,
            SummaryTable(),
            timeout=1.0,
            tries=1,
            delay=1.0,
            on_drained=[table.node_drained],
        )
        row2 = nodes.get(2)
        assert row2 is not None
        row2.enabled = False
        visits = []
        for open_connections in (3, 0):
            for _ in range(2):
                visit = sweep.next(5.0)
                assert isinstance(visit, Visit)
                visits.append(visit.node.number)
                number = visit.node.number
                answer = StatusAnswer(number, 0.0, 0, open_connections if number == 2 else 9, ())
                sweep.answered(visit.node, answer, 5.0)
                if number == 2 and open_connections:
                    self.assertEqual(row2.buckets, 5)  # live connections: its buckets stay
            sweep.next(10.0)
        self.assertEqual(visits, [1, 2, 1, 2])
        self.assertEqual(row2.buckets, 0)
        self.assertEqual(table.buckets_per_node(), {1: 5, 2: 0})
        self.assertEqual(table.lookup(1, 12.0), 1)  # a drained bucket's next frame: node 1
        # Enabled again before the hook: it keeps what it holds.
        row1 = nodes.get(1)
        assert row1 is not None
        table.node_drained(1)
        self.assertEqual(table.buckets_per_node()[1], 6)


class SyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.nodes = node_table(1, 1, 1)
        self.table = ClientTable(31, self.nodes, idle_timeout=IDLE, table_id="t")

    def test_changes_since_gives_exactly_the_buckets_changed(self) -> None:
        for b in (3, 5, 8, 13):
            self.table.lookup(b, 1.0)
        self.assertEqual(self.table.changes_since(0, "t"), (4, {3: 1, 5: 2, 8: 3, 13: 1}))
        self.assertEqual(self.table.changes_since(2, "t"), (4, {8: 3, 13: 1}))
        self.assertEqual(self.table.changes_since(4, "t"), (4, {}))

    def test_a_bucket_changed_twice_is_one_entry_with_its_node_now(self) -> None:
        self.table.lookup(3, 1.0)
        self.table.node_failed(1)
        self.assertEqual(self.table.changes_since(0, "t"), (2, {3: UNASSIGNED}))

    def test_three_changes_in_a_big_table_are_three_entries(self) -> None:
        table = ClientTable(65521, node_table(1, 1), idle_timeout=IDLE, table_id="t")
        for b in range(1000):
            table.lookup(b, 1.0)
        v = table.version
        for b in (60000, 61000, 62000):
            table.lookup(b, 2.0)
        diff = table.changes_since(v, "t")
        assert diff is not None
        self.assertEqual(diff, (v + 3, {60000: 1, 61000: 2, 62000: 1}))
        self.assertLess(len(json.dumps({"version": diff[0], "changes": diff[1]})), 80)

    def test_too_far_behind_or_ahead_or_another_table(self) -> None:
        table = ClientTable(31, self.nodes, idle_timeout=IDLE, table_id="t", log_limit=4)
        for b in range(31):
            table.lookup(b, 1.0)
        self.assertEqual(table.version, 31)
        self.assertIsNone(table.changes_since(0, "t"))  # trimmed away
        kept = table.changes_since(27, "t")
        assert kept is not None
        self.assertEqual(sorted(kept[1]), [27, 28, 29, 30])
        self.assertIsNone(table.changes_since(32, "t"))  # from the future
        self.assertIsNone(table.changes_since(31, "u"))  # another table
        self.assertIsNone(table.changes_since(-1, "t"))

    def test_the_log_stays_bounded(self) -> None:
        table = ClientTable(31, self.nodes, idle_timeout=IDLE, log_limit=8)
        t = 0.0
        for _ in range(100):
            t += IDLE + 1
            for b in range(31):
                table.lookup(b, t)
            table.node_failed(1)
        self.assertLessEqual(len(table._log), 16)
        self.assertIsNotNone(table.changes_since(table.version - 8, table.table_id))

    def test_a_follower_follows(self) -> None:
        follower = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE, table_id="x")
        self.assertFalse(sync(follower, self.table))  # another id: the whole table
        self.assertEqual(follower.table_id, "t")
        for b in range(10):
            self.table.lookup(b, 1.0)
        self.assertTrue(sync(follower, self.table))
        self.assertEqual(follower.snapshot(), self.table.snapshot())
        self.assertEqual(follower.buckets_per_node(), self.table.buckets_per_node())
        f1 = follower.nodes.get(1)
        assert f1 is not None
        self.assertEqual(f1.buckets, 4)

    def test_a_late_diff_is_refused(self) -> None:
        follower = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE, table_id="t")
        self.table.lookup(1, 1.0)
        old = self.table.changes_since(0, "t")
        assert old is not None
        self.table.lookup(2, 1.0)
        self.assertTrue(sync(follower, self.table))  # at version 2 now
        self.assertFalse(follower.apply_changes(old[0], old[1], since=0, table_id="t"))
        self.assertFalse(follower.apply_changes(3, {}, since=2, table_id="u"))
        self.assertEqual(follower.snapshot(), self.table.snapshot())

    def test_a_bad_diff_changes_nothing(self) -> None:
        follower = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE, table_id="t")
        with self.assertRaises(ValueError):
            follower.apply_changes(2, {1: 1, 31: 2}, since=0, table_id="t")
        with self.assertRaises(ValueError):
            follower.load(1, [1] * 30, table_id="t")
        self.assertEqual(follower.snapshot(), (0, [UNASSIGNED] * 31))

    def test_a_restarted_scheduler_is_not_mistaken_for_the_old_one(self) -> None:
        follower = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE)
        for b in range(5):
            self.table.lookup(b, 1.0)
        sync(follower, self.table)
        restarted = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE, table_id="t2")
        for b in (20, 21, 22, 23, 24):
            restarted.lookup(b, 1.0)
        self.assertEqual(restarted.version, follower.version)  # same number, other table
        self.assertIsNone(restarted.changes_since(follower.version, follower.table_id))
        self.assertFalse(sync(follower, restarted))
        self.assertEqual(follower.owners(), restarted.owners())

    def test_take_over(self) -> None:
        follower = ClientTable(31, node_table(1, 1, 1), idle_timeout=IDLE)
        for b in range(5):
            self.table.lookup(b, 1.0)
        sync(follower, self.table)
        follower.take_over(50.0, table_id="node2:term7")
        self.assertEqual(follower.table_id, "node2:term7")
        self.assertEqual(follower.version, 5)
        self.assertEqual(follower.last_access(0), 50.0)
        self.assertEqual(follower.changes_since(5, "node2:term7"), (5, {}))
        self.assertIsNone(follower.changes_since(5, "t"))
        # Busy on the new scheduler: the buckets stay where the old one put them.
        self.assertEqual(follower.lookup(0, 60.0), self.table.node_of(0))

    def test_row(self) -> None:
        self.table.lookup(0, 1.0)
        self.assertEqual(
            json.loads(json.dumps(self.table.row())),
            {"version": 1, "size": 31, "table_id": "t", "buckets": {"1": 1, "2": 0, "3": 0}},
        )

    def test_a_copy_may_name_nodes_it_does_not_know(self) -> None:
        follower = ClientTable(3, node_table(1), idle_timeout=IDLE, table_id="t")
        follower.load(4, [1, 9, 9], table_id="t")
        self.assertEqual(follower.buckets_per_node(), {1: 1, 9: 2})
        self.assertEqual(follower.lookup(1, 1.0), 1)  # node 9 is unknown here: placed again

    def test_bad_sizes(self) -> None:
        with self.assertRaises(ValueError):
            ClientTable(0, self.nodes, idle_timeout=IDLE)


# -- the model ----------------------------------------------------------------------------


class Model:
    """The client table's rules, written again as plainly as possible: dicts, Fractions and
    min() over a key, no counts kept (they are counted from the owners each time)."""

    def __init__(self, size: int, idle: float, nodes: NodeStatusTable) -> None:
        self.size = size
        self.idle = idle
        self.nodes = nodes  # the same rows the table reads
        self.owner: dict[int, int] = {}
        self.last: dict[int, float] = {}
        self.changes = 0

    def counts(self) -> Counter[int]:
        return Counter(self.owner.values())

    def usable(self, n: int) -> bool:
        row = self.nodes.get(n)
        return row is not None and not row.failed

    def place(self, current: int) -> int:
        counts = self.counts()
        rows = [r for r in self.nodes if r.enabled and not r.failed and r.weight > 0]
        if not rows:
            return UNASSIGNED

        def key(r: NodeState) -> tuple[Fraction, bool, int, int]:
            load = counts[r.number] - (r.number == current)
            return (Fraction(load, r.weight), r.number != current, r.open_connections, r.number)

        return min(rows, key=key).number

    def frame(self, bucket: int, now: float) -> int:
        current = self.owner.get(bucket, UNASSIGNED)
        last = self.last.get(bucket, 0.0)
        self.last[bucket] = now
        if current != UNASSIGNED and now - last <= self.idle and self.usable(current):
            return current
        new = self.place(current)
        self.assign(bucket, new)
        return new

    def assign(self, bucket: int, node: int) -> None:
        if self.owner.get(bucket, UNASSIGNED) == node:
            return
        self.changes += 1
        if node == UNASSIGNED:
            del self.owner[bucket]
        else:
            self.owner[bucket] = node

    def fail(self, n: int) -> None:
        for b in [b for b, o in self.owner.items() if o == n]:
            self.assign(b, UNASSIGNED)

    def column(self) -> list[int]:
        return [self.owner.get(b, UNASSIGNED) for b in range(self.size)]


SIZE = 23
NODES = (1, 2, 3, 4)


class ClientTableMachine(RuleBasedStateMachine):
    """Random frames, failures, rejoins, enabling, idle times, syncs, restarts and failovers;
    the table must match the model, and every follower the table after a sync."""

    followers = Bundle("followers")

    @initialize(
        weights=st.lists(st.integers(0, 3), min_size=len(NODES), max_size=len(NODES)),
        log_limit=st.sampled_from([2, 5, SIZE]),
    )
    def start(self, weights: list[int], log_limit: int) -> None:
        self.now = 0.0
        self.log_limit = log_limit
        self.nodes = node_table(*weights)
        self.table = ClientTable(SIZE, self.nodes, idle_timeout=IDLE, log_limit=log_limit)
        self.model = Model(SIZE, IDLE, self.nodes)
        self.start_version = 0

    def row(self, n: int) -> NodeState:
        row = self.nodes.get(n)
        assert row is not None
        return row

    @rule(target=followers)
    def new_follower(self) -> ClientTable:
        return ClientTable(SIZE, node_table(1, 1, 1, 1), idle_timeout=IDLE)

    @rule(buckets=st.lists(st.integers(0, SIZE - 1), min_size=1, max_size=8))
    def frames(self, buckets: list[int]) -> None:
        for b in buckets:
            assert self.table.lookup(b, self.now) == self.model.frame(b, self.now)

    @rule(seconds=st.sampled_from([0.5, 10.0, IDLE, IDLE + 0.5, 3 * IDLE]))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(n=st.sampled_from(NODES))
    def fail(self, n: int) -> None:
        self.row(n).failed = True
        self.table.node_failed(n)
        self.model.fail(n)

    @rule(n=st.sampled_from(NODES))
    def fail_unheard(self, n: int) -> None:
        """Failed in the node status table, the hook not run here (a taken-over table)."""
        self.row(n).failed = True

    @rule(n=st.sampled_from(NODES))
    def rejoin(self, n: int) -> None:
        self.row(n).failed = False
        self.table.node_rejoined(n)

    @rule(n=st.sampled_from(NODES), enabled=st.booleans())
    def enable(self, n: int, enabled: bool) -> None:
        self.row(n).enabled = enabled

    @rule(n=st.sampled_from(NODES), connections=st.integers(0, 3))
    def connections(self, n: int, connections: int) -> None:
        self.row(n).open_connections = connections

    @rule(follower=followers)
    def sync(self, follower: ClientTable) -> None:
        was_current = follower.table_id == self.table.table_id
        behind = self.table.version - follower.version
        used_diff = sync(follower, self.table)
        assert follower.owners() == self.table.owners()
        assert follower.version == self.table.version
        assert follower.table_id == self.table.table_id
        assert follower.buckets_per_node() == self.table.buckets_per_node()
        # A follower of this table still within the log gets a diff, never the whole table.
        if was_current and 0 <= behind <= self.log_limit:
            assert used_diff

    @rule()
    def restart(self) -> None:
        """The scheduler's process restarts: an empty table at version 0, another id."""
        self.table = ClientTable(SIZE, self.nodes, idle_timeout=IDLE, log_limit=self.log_limit)
        self.model = Model(SIZE, IDLE, self.nodes)
        self.start_version = 0

    @rule(follower=followers)
    def failover(self, follower: ClientTable) -> None:
        """A follower (synced first) becomes the scheduler with the table it has."""
        sync(follower, self.table)
        old_id = follower.table_id
        new = ClientTable(SIZE, self.nodes, idle_timeout=IDLE, log_limit=self.log_limit)
        new.load(*follower.snapshot(), table_id=old_id)
        new.take_over(self.now)
        assert new.table_id != old_id
        self.table = new
        self.start_version = new.version
        self.model.changes = 0
        self.model.last = {b: self.now for b in range(SIZE)}

    @invariant()
    def table_matches_the_model(self) -> None:
        if not hasattr(self, "table"):
            return
        assert self.table.owners() == self.model.column()
        counts = self.model.counts()
        for row in self.nodes:
            assert row.buckets == counts[row.number]
        assert self.table.buckets_per_node() == {n: counts[n] for n in NODES}
        assert self.table.version == self.start_version + self.model.changes


class ModelTests(SynchronousTestCase):
    def test_the_table_against_the_model(self) -> None:
        run_state_machine_as_test(
            ClientTableMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=60,
                deadline=None,
                derandomize=True,
                database=None,
            ),
        )
