"""The fast path's glue (dlba.packet.fastpath) against a fake nftables that keeps the map
as the kernel would, and a task.Clock."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.clienttable import ClientTable
from dlba.kernelpath import EXPIRES_GRAIN, MISS_IN, MISS_OUT, KernelProgram
from dlba.packet.fastpath import FLUSH_DELAY, SYNC_INTERVAL, KernelFastPath
from dlba.packet.host import Host
from dlba.tables import NodeState, NodeStatusTable

NODES = {1: "02:00:0a:4d:00:0b", 2: "02:00:0a:4d:00:0c", 3: "02:00:0a:4d:00:0d"}


class FakeNft:
    """The owners map and the active set, changed by transactions as nftables would."""

    mechanism = "fake"

    def __init__(self) -> None:
        self.map: dict[int, str] | None = None
        self.active: dict[int, float] = {}
        self.transactions: list[dict[str, Any]] = []
        self.refuse = False
        self.unreadable = False

    def run(self, document: dict[str, Any]) -> dict[str, Any]:
        commands = document["nftables"]
        if commands and "list" in commands[0]:
            if self.unreadable:
                raise RuntimeError("Error: Could not process rule: Device or resource busy")
            what = commands[0]["list"]
            if "set" in what:
                elems = [{"elem": {"val": b, "expires": e}} for b, e in self.active.items()]
                return {"nftables": [{"set": {"name": "active", "elem": elems}}]}
            return {"nftables": [{"counter": {"name": "misses", "packets": 3}}]}
        if self.refuse:
            raise RuntimeError("Error: Could not process rule: No such file or directory")
        self.transactions.append(document)
        state = None if self.map is None else dict(self.map)
        for command in commands:
            ((verb, body),) = command.items()
            if "table" in body:
                state = (
                    {} if verb == "add" and state is None else (None if verb == "delete" else state)
                )
            elif "element" in body:
                assert state is not None
                for e in body["element"]["elem"]:
                    if verb == "delete":
                        assert e in state, e
                        del state[e]
                    else:
                        assert e[0] not in state, e
                        state[e[0]] = e[1]["goto"]["target"]
        self.map = state
        return {}


class FastPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sys_net = Path(tempfile.mkdtemp())
        self.ran: list[Sequence[str]] = []

        def run(argv: Sequence[str], data: bytes | None) -> tuple[int, str]:
            self.ran.append(argv)
            if argv[:3] == ["ip", "link", "add"]:
                (self.sys_net / argv[3]).mkdir()
                (self.sys_net / argv[-1]).mkdir()
            if argv[:3] == ["ip", "link", "del"]:
                (self.sys_net / argv[3]).rmdir()
            return 0, ""

        host = Host(run=run, proc_sys=self.sys_net / "nosuch", sys_net=self.sys_net)
        self.nodes = NodeStatusTable(NodeState(n, m, f"10.77.0.{10 + n}") for n, m in NODES.items())
        self.table = ClientTable(32, self.nodes, idle_timeout=60.0)
        self.clock = Clock()
        self.clock.advance(1000)
        program = KernelProgram("10.77.0.100", "eth0", NODES[1], 1, NODES, 32, 60.0)
        self.nft = FakeNft()
        self.fast = KernelFastPath(program, self.table, self.nft, host, self.clock)

    def test_takeover_installs_every_busy_bucket_at_once(self) -> None:
        for b in range(10):
            self.table.lookup(b, 990.0)
        self.table.take_over(1000.0)
        self.fast.start()
        self.assertTrue((self.sys_net / MISS_IN).exists() and (self.sys_net / MISS_OUT).exists())
        self.assertEqual(len(self.nft.transactions), 1)
        assert self.nft.map is not None
        self.assertEqual(sorted(self.nft.map), list(range(10)))
        self.fast.stop()
        self.assertIsNone(self.nft.map)
        self.assertFalse((self.sys_net / MISS_IN).exists())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_misses_placed_together_reach_the_kernel_in_one_transaction(self) -> None:
        self.fast.start()
        self.table.lookup(3, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(0)  # a lone miss: in the kernel on the next turn
        self.assertEqual(len(self.nft.transactions), 2)
        self.assertEqual(sorted(self.nft.map or {}), [3])
        for b in (4, 5, 6):  # a burst, a ms or so apart: together, FLUSH_DELAY after
            self.table.lookup(b, self.clock.seconds())
            self.fast.poke()
            self.clock.advance(FLUSH_DELAY / 4)
        self.assertEqual(len(self.nft.transactions), 2)
        self.clock.advance(FLUSH_DELAY / 4)
        self.assertEqual(len(self.nft.transactions), 3)
        assert self.nft.map is not None
        self.assertEqual(sorted(self.nft.map), [3, 4, 5, 6])

    def test_idle_buckets_leave_the_map_busy_ones_stay(self) -> None:
        self.fast.start()
        for b in (3, 4):
            self.table.lookup(b, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        # The kernel forwards bucket 3's frames for the next 100 s; bucket 4 goes quiet.
        for _ in range(100):
            self.nft.active = {3: 59.5}
            self.clock.advance(SYNC_INTERVAL)
        assert self.nft.map is not None
        self.assertEqual(sorted(self.nft.map), [3])
        self.assertEqual(self.fast.row()["kernel_misses"], 3)

    def test_a_pushed_shorter_idle_timeout_paces_the_reads(self) -> None:
        # The kernel set keeps its 60 s timeout; the table's is pushed down to 4 s.  The
        # quiet bucket must leave the map within a read interval of going idle (1 s here),
        # not at the 5 s pace the program's own timeout would give.
        self.fast.start()
        self.table.idle_timeout = 4.0
        for b in (3, 4):
            self.table.lookup(b, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        start = self.clock.seconds()
        self.nft.active = {3: 60.0, 4: 60.0}
        self.clock.advance(SYNC_INTERVAL)
        gone_at = None
        for _ in range(20):
            self.nft.active = {3: 60.0, 4: max(0.0, 60.0 - (self.clock.seconds() - start))}
            self.clock.advance(SYNC_INTERVAL)
            assert self.nft.map is not None
            if 4 not in self.nft.map:
                gone_at = self.clock.seconds() - start
                break
        self.assertIsNotNone(gone_at)
        assert gone_at is not None
        self.assertLessEqual(gone_at, 4.0 + EXPIRES_GRAIN + 2 * SYNC_INTERVAL)
        self.assertIn(3, self.nft.map or {})

    def test_a_busy_bucket_stays_in_the_map_while_the_kernel_cannot_be_read(self) -> None:
        # Bucket 3 carries a connection: the kernel forwards its frames, Python sees none.
        # Misses keep coming (new connections) while the activity cannot be read: each
        # flush must not judge bucket 3 idle on old times, or its next frame would be a
        # miss and the table could move it (its connection broken).
        self.table.idle_timeout = 2.0
        self.fast.start()
        self.table.lookup(3, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        self.nft.active = {3: 60.0}
        self.clock.advance(SYNC_INTERVAL)
        self.nft.unreadable = True
        for n in range(20):  # 10 s of misses, two a second, and no reading
            self.table.lookup(10 + n, self.clock.seconds())
            self.fast.poke()
            self.clock.advance(FLUSH_DELAY)
            assert self.nft.map is not None
            self.assertIn(3, self.nft.map, f"bucket 3 left the map {n / 2} s in")
            self.clock.advance(0.5)
        self.assertGreater(self.fast.errors, 0)
        self.nft.unreadable = False
        self.clock.advance(SYNC_INTERVAL)  # read again: still busy
        self.assertIn(3, self.nft.map or {})
        self.nft.active = {}  # now quiet: it goes, once a reading shows it idle
        for _ in range(5):
            self.clock.advance(SYNC_INTERVAL)
        self.assertNotIn(3, self.nft.map or {})

    def test_a_slow_listing_still_reads_every_tick(self) -> None:
        # Each listing of the active set takes 40 ms of the clock: at a 1 s pace
        # (idle timeout 4 s) the activity must still be read at every tick.
        self.table.idle_timeout = 4.0
        self.fast.start()
        listings = []
        run = self.nft.run

        def slow(document: dict[str, Any]) -> dict[str, Any]:
            what = document["nftables"][0].get("list", {})
            if "set" in what:
                listings.append(self.clock.seconds())
                self.clock.advance(0.04)
            return run(document)

        self.nft.run = slow  # type: ignore[method-assign]
        self.clock.advance(SYNC_INTERVAL)
        for _ in range(9):  # to each next tick exactly, as the reactor's timer fires
            self.clock.advance(SYNC_INTERVAL - 0.04)
        self.assertEqual(len(listings), 10, listings)

    def test_a_reload_reinstalls_only_a_changed_program_after_reading_activity(self) -> None:
        import dataclasses

        self.fast.start()
        self.table.lookup(3, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        before = len(self.nft.transactions)
        self.fast.replace_program(dataclasses.replace(self.fast.program))  # the same
        self.assertEqual(len(self.nft.transactions), before)
        # A push of a shorter idle timeout: the set is made again with it, and bucket 3's
        # frames since the last reading (the kernel saw one 0.5 s ago) are kept first.
        self.clock.advance(0.9)
        self.nft.active = {3: 59.5}
        self.fast.replace_program(dataclasses.replace(self.fast.program, idle_timeout=20.0))
        self.assertEqual(len(self.nft.transactions), before + 1)
        [made] = [
            c["add"]["set"]
            for c in self.nft.transactions[-1]["nftables"]
            if "set" in c.get("add", {})
        ]
        self.assertEqual(made["timeout"], 20)
        self.assertGreaterEqual(self.table.last_access(3), self.clock.seconds() - 0.5)
        self.assertIn(3, self.nft.map or {})

    def test_a_failed_node_leaves_the_map_at_once(self) -> None:
        self.fast.start()
        for b in range(12):
            self.table.lookup(b, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        self.nft.active = {b: 59.0 for b in range(12)}
        self.table.node_failed(2)
        self.clock.advance(SYNC_INTERVAL)
        assert self.nft.map is not None
        self.assertNotIn("to_node2", set(self.nft.map.values()))
        self.assertEqual(len(self.nft.map), sum(1 for n in self.table.owners()[:12] if n >= 0))
        self.assertLess(len(self.nft.map), 12)

    def test_a_refused_change_installs_the_whole_map_again(self) -> None:
        self.fast.start()
        self.table.lookup(1, self.clock.seconds())
        self.nft.refuse = True
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(self.fast.errors, 1)
        self.nft.refuse = False
        self.table.lookup(2, self.clock.seconds())
        self.fast.poke()
        self.clock.advance(FLUSH_DELAY)
        assert self.nft.map is not None
        self.assertEqual(sorted(self.nft.map), [1, 2])

    def test_a_node_that_joins_gets_a_chain(self) -> None:
        import dataclasses

        self.fast.start()
        self.table.lookup(1, self.clock.seconds())
        nodes = {**NODES, 4: "02:00:0a:4d:00:0e"}
        self.fast.replace_program(dataclasses.replace(self.fast.program, nodes=nodes))
        last = self.nft.transactions[-1]["nftables"]
        chains = [c["add"]["chain"]["name"] for c in last if "chain" in c.get("add", {})]
        self.assertIn("to_node4", chains)
        assert self.nft.map is not None
        self.assertEqual(sorted(self.nft.map), [1])
