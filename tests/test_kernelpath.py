"""The kernel fast path as data (dlba.kernelpath): the program, minimal transactions, and
reading the kernel's answers back."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dlba.clienttable import ClientTable
from dlba.jhash import ARRAY_SEED
from dlba.kernelpath import (
    KernelMirror,
    KernelProgram,
    absorb_activity,
    active_buckets,
    counters,
    frames_by_node,
    wanted_map,
)
from dlba.tables import NodeState, NodeStatusTable

NODES = {1: "02:00:0a:4d:00:0b", 2: "02:00:0a:4d:00:0c", 3: "02:00:0a:4d:00:0d"}
PROGRAM = KernelProgram("10.77.0.100", "eth0", NODES[1], 1, NODES, 4093, 60.0)
OWNERS = st.dictionaries(st.integers(0, 4092), st.sampled_from([1, 2, 3]), max_size=60)


def apply(state: dict[int, int], doc: dict[str, object]) -> dict[int, int]:
    """What a transaction of `changes` does to the kernel's map, as nftables would: a
    delete of a missing key or an add of an existing one fails the whole transaction."""
    out = dict(state)
    for command in doc["nftables"]:  # type: ignore[attr-defined]
        ((verb, body),) = command.items()
        elems = body["element"]["elem"]
        for e in elems:
            if verb == "delete":
                assert e in out, f"delete of {e}, not in the map"
                del out[e]
            else:
                bucket, verdict = e
                assert bucket not in out, f"add of {bucket}, already in the map"
                target = verdict["goto"]["target"]
                out[bucket] = 1 if target == "local" else int(target.removeprefix("to_node"))
    return out


class ProgramTests(SynchronousTestCase):
    def test_the_rules(self) -> None:
        doc = PROGRAM.install({5: 2, 6: 1})
        text = json.dumps(doc)
        rules = [c["add"]["rule"] for c in doc["nftables"] if "rule" in c.get("add", {})]
        fast = next(
            r for r in rules if r["chain"] == "ingress" and any("vmap" in e for e in r["expr"])
        )
        jhash = next(e for e in fast["expr"] if "mangle" in e)["mangle"]["value"]["jhash"]
        self.assertEqual((jhash["mod"], jhash["seed"]), (4093, ARRAY_SEED))
        # Peers' frames are not ours to forward; the peers' MACs, not our own, are excluded.
        peers = next(e for e in fast["expr"] if e.get("match", {}).get("op") == "!=")
        self.assertEqual(peers["match"]["right"]["set"], [NODES[2], NODES[3]])
        to2 = next(r for r in rules if r["chain"] == "to_node2")["expr"]
        self.assertIn({"fwd": {"dev": "eth0"}}, to2)
        self.assertIn(NODES[2], json.dumps(to2))
        self.assertIn('"dev": "dlbamiss0"', text)
        # The owners are in the same transaction as the table: a takeover forwards at once.
        self.assertEqual(apply({}, {"nftables": doc["nftables"][-1:]}), {5: 2, 6: 1})

    def test_no_change_no_transaction(self) -> None:
        self.assertEqual(PROGRAM.changes({1: 2}, {1: 2}), {"nftables": []})

    @given(OWNERS, OWNERS)
    def test_changes_turn_the_old_map_into_the_new(
        self, old: dict[int, int], new: dict[int, int]
    ) -> None:
        doc = PROGRAM.changes(old, new)
        self.assertEqual(apply(old, doc), new)
        touched = {
            b
            for c in doc["nftables"]
            for b in (
                e if isinstance(e, int) else e[0] for e in next(iter(c.values()))["element"]["elem"]
            )
        }
        self.assertEqual(touched, {b for b in set(old) | set(new) if old.get(b) != new.get(b)})


class MirrorTests(SynchronousTestCase):
    def test_pending_changes_then_applied(self) -> None:
        m = KernelMirror()
        m.set(1, 2)
        m.set(2, 3)
        m.set(2, None)
        self.assertEqual(m.wanted(), {1: 2})
        m.applied(m.wanted())
        self.assertEqual((m.installed, m.pending), ({1: 2}, {}))


class ListingTests(SynchronousTestCase):
    def test_active_and_counters(self) -> None:
        listing = {
            "nftables": [
                {"metainfo": {}},
                {"set": {"name": "active", "elem": [{"elem": {"val": 3, "expires": 47}}, 9]}},
            ]
        }
        self.assertEqual(active_buckets(listing), {3: 47.0, 9: 0.0})
        table = {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"counter": {"family": "netdev", "name": "misses", "packets": 4, "bytes": 9}},
                {"counter": {"family": "netdev", "name": "to_node2", "packets": 7, "bytes": 1}},
                {"counter": {"family": "netdev", "name": "local", "packets": 2, "bytes": 1}},
            ]
        }
        found = counters(table)
        self.assertEqual(found, {"misses": 4, "to_node2": 7, "local": 2})
        self.assertEqual(frames_by_node(found, [1, 2, 3], 1), {"1": 2, "2": 7, "3": 0})


class WantedMapTests(SynchronousTestCase):
    def table(self) -> tuple[ClientTable, NodeStatusTable]:
        nodes = NodeStatusTable(NodeState(n, NODES[n], f"10.77.0.{10 + n}") for n in (1, 2, 3))
        return ClientTable(16, nodes, idle_timeout=60.0), nodes

    def test_only_busy_buckets_of_live_nodes(self) -> None:
        table, nodes = self.table()
        for b in range(6):
            table.lookup(b, 100.0)  # placed, busy at t=100
        placed = {b: table.node_of(b) for b in range(6)}
        self.assertEqual(wanted_map(table, 120.0), placed)
        # Past the idle timeout nothing is left for the kernel: each bucket's next frame
        # comes to Python, which places it again.
        self.assertEqual(wanted_map(table, 161.0), {})
        # ... unless the kernel saw frames: 10 s left of a 60 s timeout = seen at 151, or
        # up to a second later (nft lists whole seconds, rounded down): 152 is kept.
        absorb_activity(table, {0: 10.0, 1: 10.0}, 60.0, 201.0)
        self.assertEqual(wanted_map(table, 201.0), {0: placed[0], 1: placed[1]})
        self.assertEqual(table.last_access(0), 152.0)
        absorb_activity(table, {0: 59.0}, 60.0, 140.0)  # older than what the table holds
        self.assertEqual(table.last_access(0), 152.0)
        # A failed node's buckets leave at once, busy or not.
        nodes.get(placed[0]).failed = True  # type: ignore[union-attr]
        self.assertNotIn(0, wanted_map(table, 201.0))
