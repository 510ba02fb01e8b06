"""The packet scheduler service's life cycle and the host settings, with fakes for the
kernel (the real thing runs in tests/e2e/test_packet_netns.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dlba.clienttable import ClientTable
from dlba.config import ArrayNode, ArraySection
from dlba.frames import FrameRouter, mac_bytes
from dlba.interfaces import IFrameIO
from dlba.kernelpath import MISS_IN
from dlba.packet.bpf import arp_request_filter, vip_filter
from dlba.packet.host import Host, HostError, guard_ruleset, scheduler_ruleset
from dlba.packet.rawio import PacketSocketIO
from dlba.packet.service import PacketSchedulerService
from dlba.tables import NodeState, NodeStatusTable
from tests.array_support import node_tables

VIP = "10.77.0.100"
MACS = {1: "02:00:00:00:00:0b", 2: "02:00:00:00:00:0c"}
# At start, what a dlba killed while scheduler may have left: both ingress programs.
CLEARED = ["-dlba", "-dlba_fast"]


class FakeHost(Host):
    def __init__(self, root: Path) -> None:
        (root / "sys" / "eth0").mkdir(parents=True)
        (root / "sys" / "eth0" / "address").write_text(MACS[1] + "\n")
        super().__init__(self.record, root / "proc", root / "sys")
        self.commands: list[tuple[list[str], Any]] = []
        self.vips: set[str] = set()
        for name in ("all", "eth0", "dlba0"):
            conf = root / "proc" / "net" / "ipv4" / "conf" / name
            conf.mkdir(parents=True)
            for key in ("arp_ignore", "arp_announce", "rp_filter"):
                (conf / key).write_text("0\n")

    def record(self, argv: Sequence[str], data: bytes | None) -> tuple[int, str]:
        argv = list(argv)
        self.commands.append((argv, json.loads(data) if data else None))
        if argv[:2] == ["ip", "-j"]:
            addrs = [{"local": v} for v in sorted(self.vips)]
            return 0, json.dumps([{"ifname": "lo", "addr_info": addrs}])
        if argv[:3] == ["ip", "addr", "add"]:
            self.vips.add(argv[3].split("/")[0])
        if argv[:3] == ["ip", "addr", "del"]:
            self.vips.discard(argv[3].split("/")[0])
        return 0, ""

    def tables(self) -> list[str]:
        """The nft transactions, as the table each one ends with ("-" deletes)."""
        out = []
        for argv, data in self.commands:
            if argv[0] != "nft":
                continue
            commands = data["nftables"]
            deleted = [c["delete"]["table"]["name"] for c in commands if "delete" in c]
            if deleted and len(commands) == 2 * len(deleted):  # add + delete: gone
                out += ["-" + name for name in deleted]
                continue
            verb, what = next(iter(commands[-1].items()))
            name = what.get("table", what.get("rule", {}).get("table"))
            if isinstance(name, dict):
                name = name["name"]
            out.append(("-" if verb == "delete" else "+") + str(name))
        return out


@implementer(IFrameIO)
class FakeIO:
    path = "fake"

    def __init__(self) -> None:
        self.router: FrameRouter | None = None
        self.stops = 0

    def start(self, router: Any) -> None:
        self.router = router

    def stop(self) -> None:
        self.router = None
        self.stops += 1


class FakeArp:
    def __init__(self, vip: str, mac: str) -> None:
        self.vip, self.mac, self.running = vip, mac, False
        self.answered = self.announced = 0

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.root = root
        self.host = FakeHost(root)
        self.nodes = NodeStatusTable(
            NodeState(n, mac, f"10.77.0.{10 + n}") for n, mac in MACS.items()
        )
        self.table = ClientTable(7, self.nodes, idle_timeout=60.0)
        self.io = FakeIO()
        self.arps: list[FakeArp] = []
        array = ArraySection(
            vip=VIP, nodes=tuple(ArrayNode(n, mac, f"10.77.0.{10 + n}") for n, mac in MACS.items())
        )
        self.svc = PacketSchedulerService(
            array,
            1,
            self.table,
            self.nodes,
            Clock(),
            host=self.host,
            io=self.io,
            arp=self.arp,
        )

    def arp(self, vip: str, mac: str) -> Any:
        self.arps.append(FakeArp(vip, mac))
        return self.arps[-1]

    def sysctl(self, name: str) -> str:
        return (self.root / "proc" / name.replace(".", "/")).read_text().strip()

    def test_every_node_holds_the_vip_quietly_and_guards_it(self) -> None:
        self.svc.startService()
        self.assertEqual(self.sysctl("net.ipv4.conf.all.arp_ignore"), "1")
        self.assertEqual(self.sysctl("net.ipv4.conf.eth0.arp_announce"), "2")
        self.assertEqual(self.host.vips, {VIP})
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard"])
        self.assertIsNone(self.io.router)  # not scheduler: no frames
        self.svc.stopService()
        self.assertEqual(self.host.vips, set())
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard", "-dlba_guard"])

    def test_a_fast_path_left_by_a_killed_scheduler_is_removed_at_start(self) -> None:
        (self.root / "sys" / MISS_IN).mkdir()  # the miss channel is still there
        self.svc.startService()
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard"])
        self.assertIn(["ip", "link", "del", MISS_IN], [argv for argv, _ in self.host.commands])
        self.assertIsNone(self.io.router)
        self.svc.stopService()

    def test_the_scheduler_forwards_with_the_nodes_table(self) -> None:
        self.svc.startService()
        self.svc.start(4)
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard", "+dlba"])
        assert self.io.router is not None
        self.assertIs(self.io.router.table, self.table)
        self.assertTrue(self.arps[-1].running)
        self.assertEqual(self.arps[-1].mac, MACS[1])
        row = self.svc.row()
        self.assertEqual((row["forwarding"], row["path"], row["frames_in"]), (True, "fake", 0))
        self.svc.stop()
        self.assertFalse(self.arps[-1].running)
        self.assertIsNone(self.io.router)
        self.assertEqual(self.host.tables()[-1], "-dlba")
        self.assertFalse(self.svc.row()["forwarding"])
        self.svc.stop()  # twice: nothing more
        self.assertEqual(self.io.stops, 1)

    def test_counters_outlive_a_term(self) -> None:
        self.svc.startService()
        self.svc.start(1)
        self.svc.counters.frames_in = 9
        self.svc.stop()
        self.svc.start(2)
        self.assertEqual(self.svc.row()["frames_in"], 9)

    def test_stopping_the_service_stops_forwarding(self) -> None:
        self.svc.startService()
        self.svc.start(1)
        self.svc.stopService()
        self.assertIsNone(self.io.router)
        self.assertEqual(self.host.tables()[-2:], ["-dlba", "-dlba_guard"])

    def test_no_interface_no_packet_scheduler(self) -> None:
        shutil.rmtree(self.root / "sys" / "eth0")
        self.svc.startService()
        self.svc.start(1)
        self.assertEqual(self.host.commands, [])
        self.assertIsNone(self.io.router)

    def test_an_ipv6_vip_is_not_forwarded(self) -> None:
        self.svc.vip = "2001:db8::100"
        self.svc.startService()
        self.svc.start(1)
        self.assertEqual(self.host.commands, [])
        self.assertIsNone(self.io.router)

    def test_a_sysctl_that_cannot_be_set_is_named(self) -> None:
        path = self.root / "proc" / "net" / "ipv4" / "conf" / "all" / "arp_ignore"
        path.unlink()
        path.mkdir()  # neither readable nor writable as a file
        error = self.assertRaises(HostError, self.svc.startService)
        self.assertIn("net.ipv4.conf.all.arp_ignore", str(error))

    def test_a_scheduler_without_a_table_says_so(self) -> None:
        self.svc.table = None
        self.svc.startService()
        self.svc.start(1)
        self.assertIsNone(self.io.router)
        self.assertFalse(self.svc.row()["forwarding"])

    def test_the_vip_is_held_before_any_listener_binds(self) -> None:
        self.svc.privilegedStartService()
        self.assertEqual(self.host.vips, {VIP})
        self.svc.startService()  # nothing twice
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard"])

    def test_the_frame_io_provides_its_interface(self) -> None:
        verifyObject(IFrameIO, PacketSocketIO("eth0", VIP, Clock(), self.host))

    def test_a_node_that_joins_gets_its_mac_in_the_router_and_the_rule(self) -> None:
        self.svc.startService()
        self.svc.nodes_changed()  # not scheduler: nothing to do
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard"])
        self.svc.start(1)
        joiner = "02:00:0a:4d:00:1e"
        grown = NodeStatusTable([*(NodeState(r.number, r.mac, r.ip) for r in self.nodes)])
        grown = NodeStatusTable([*grown, NodeState(9, joiner, "10.77.0.19")])
        self.nodes.reconfigure(grown, NodeStatusTable(list(self.nodes)))
        self.svc.nodes_changed()
        assert self.io.router is not None
        self.assertEqual(self.io.router.macs[9], bytes.fromhex(joiner.replace(":", "")))
        self.assertEqual(self.host.tables(), [*CLEARED, "+dlba_guard", "+dlba", "+dlba"])
        _, rules = self.host.commands[-1]
        self.assertIn(joiner, json.dumps(rules))


class RulesetTests(SynchronousTestCase):
    def test_guard(self) -> None:
        rules = [
            c["add"]["rule"] for c in guard_ruleset(VIP)["nftables"] if "rule" in c.get("add", {})
        ]
        self.assertEqual(len(rules), 2)
        self.assertTrue(all(r["expr"][0]["match"]["right"] == VIP for r in rules))
        self.assertEqual(rules[0]["expr"][-1], {"drop": None})

    def test_scheduler_rule_names_the_interface_and_the_macs(self) -> None:
        commands = scheduler_ruleset(VIP, "eth0", ["02:00:00:00:00:0C", "02:00:00:00:00:0b"])
        chain = commands["nftables"][3]["add"]["chain"]
        self.assertEqual((chain["hook"], chain["dev"]), ("ingress", "eth0"))
        rule = commands["nftables"][4]["add"]["rule"]
        self.assertEqual(
            rule["expr"][1]["match"]["right"], {"set": ["02:00:00:00:00:0b", "02:00:00:00:00:0c"]}
        )

    def test_bpf_programs_end_in_accept_and_drop(self) -> None:
        for program in (vip_filter(VIP), arp_request_filter(VIP)):
            self.assertEqual(program[-2], (0x06, 0, 0, 0x40000))
            self.assertEqual(program[-1], (0x06, 0, 0, 0))
            self.assertIn(0x0A4D0064, [k for op, _, _, k in program if op == 0x15])  # jeq VIP


class WiringTests(SynchronousTestCase):
    """make_node_service builds the packet scheduler only with [array] vip (never started
    here: that would change this host)."""

    CONFIG = '[node]\nnumber = {node}\n[listen]\nstatus = "tcp:0"\n[array]\n{vip}' + node_tables(
        [1, 2], "10.77.0.1{}".format
    )

    def node(self, number: int, vip: str) -> Any:
        from dlba.config import parse
        from dlba.node import make_node_service

        return make_node_service(parse(self.CONFIG.format(node=number, vip=vip), "x.toml"), Clock())

    def test_with_a_vip(self) -> None:
        node = self.node(1, f'vip = "{VIP}"\n')
        svc = node.getServiceNamed("packet")
        self.assertIsInstance(svc, PacketSchedulerService)
        self.assertIs(svc.table, node.report.client_table)
        self.assertTrue(svc.scheduler_at_start)  # no election: the first node schedules
        self.assertIs(node.services[0], svc)  # the VIP is there before listeners bind
        self.assertEqual(node.report.packets(), svc.row())
        self.assertFalse(
            self.node(2, f'vip = "{VIP}"\n').getServiceNamed("packet").scheduler_at_start
        )

    def test_without_a_vip_none(self) -> None:
        node = self.node(1, "")
        self.assertRaises(KeyError, node.getServiceNamed, "packet")
        self.assertIsNone(node.report.packets)


class FakeSocket:
    """recv_into from a list of frames (BlockingIOError when empty); send recorded."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def recv_into(self, buffer: bytearray) -> int:
        if not self.frames:
            raise BlockingIOError
        frame = self.frames.pop(0)
        buffer[: len(frame)] = frame
        return len(frame)

    def send(self, data: Any, flags: int = 0) -> int:
        self.sent.append(bytes(data))
        return len(data)


class TxRingSocket(FakeSocket):
    """A packet socket with a transmit ring: a send of nothing is a flush, which takes
    every slot marked send-request (unless ``stuck``) and may fail with ``error``."""

    def __init__(self, ring: Any, tx_offset: int, *, stuck: bool = False) -> None:
        super().__init__([])
        self.ring, self.tx_offset, self.stuck = ring, tx_offset, stuck
        self.flushes: list[int] = []  # flags of each flush
        self.taken: list[bytes] = []  # what the kernel sent, virtio-net header first
        self.error: OSError | None = None

    def send(self, data: Any, flags: int = 0) -> int:
        import struct

        from dlba.packet.rawio import RING_FRAME, TX_DATA

        if len(data):
            return super().send(data, flags)
        self.flushes.append(flags)
        if self.error is not None:
            raise self.error
        for to in range(self.tx_offset, len(self.ring), RING_FRAME):
            status, length = struct.unpack_from("=II", self.ring, to)
            if status == 1 and not self.stuck:
                self.taken.append(bytes(self.ring[to + TX_DATA : to + TX_DATA + length]))
                struct.pack_into("=I", self.ring, to, 0)  # TP_STATUS_AVAILABLE
        return 0


class ScriptedSetsockopt:
    """Records setsockopt calls; refuses the options in ``refuse``."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.calls.append((level, option))
        if option in self.refuse:
            raise OSError(22, "Invalid argument")


class ReaderTests(SynchronousTestCase):
    """The frame readers hand each frame to the router and send it where it says, with
    the virtio-net header it came with; a batch is bounded."""

    def setUp(self) -> None:
        from tests.test_frames import MACS as FRAME_MACS
        from tests.test_frames import TAP_MAC, ether, ipv4, syn

        self.nodes = NodeStatusTable(
            NodeState(n, FRAME_MACS[n], f"10.77.0.{10 + n}") for n in (1, 2)
        )
        for row in self.nodes:
            row.enabled = row.number == 2  # everything goes to node 2
        table = ClientTable(61, self.nodes, idle_timeout=60.0)
        self.router = FrameRouter(
            table, "10.77.0.100", 1, FRAME_MACS[1], FRAME_MACS, local_mac=TAP_MAC
        )
        self.header = bytes(range(1, 11))  # a recognisable virtio-net header
        self.frames = [self.header + bytes(syn(sport=p)) for p in range(5)]
        self.junk = self.header + bytes(ether(ipv4(proto=17, payload=bytes(8))))
        self.macs = FRAME_MACS

    def test_recv_into_reader(self) -> None:
        from dlba.packet.rawio import FrameReader

        sock = FakeSocket([*self.frames, self.junk])
        reader = FrameReader(sock, -1, self.router, lambda: 5.0, batch=4)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(len(sock.sent), 4)  # one batch
        reader.doRead()
        self.assertEqual(len(sock.sent), 5)
        for sent in sock.sent:
            self.assertEqual(sent[:10], self.header)
            self.assertEqual(sent[10:16], mac_bytes(self.macs[2]))
            self.assertEqual(sent[16:22], mac_bytes(self.macs[1]))
        self.assertEqual(self.router.counters.dropped["not_tcp"], 1)
        self.assertEqual(self.router.counters.forwarded, {2: 5})

    def test_ring_reader(self) -> None:
        import mmap
        import struct

        from dlba.packet.rawio import RING_FRAME, RingFrameReader

        ring = mmap.mmap(-1, RING_FRAME * 4)
        mac_offset = 80
        for i, frame in enumerate([*self.frames[:3], self.junk]):
            at = i * RING_FRAME
            body = frame[10:]
            struct.pack_into("=IIIH", ring, at, 1, len(body), len(body), mac_offset)
            ring[at + mac_offset - 10 : at + mac_offset + len(body)] = frame
        sock = FakeSocket([])
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(len(sock.sent), 3)
        self.assertTrue(all(s[:10] == self.header for s in sock.sent))
        self.assertTrue(all(s[10:16] == mac_bytes(self.macs[2]) for s in sock.sent))
        self.assertEqual(self.router.counters.dropped["not_tcp"], 1)
        # every slot is the kernel's again, and the reader waits at the next one
        self.assertEqual([ring[i * RING_FRAME] for i in range(4)], [0, 0, 0, 0])
        self.assertEqual(reader.next, 0)  # four slots: wrapped round
        reader.doRead()  # nothing new
        self.assertEqual(len(sock.sent), 3)
        reader.release()
        ring.close()

    def ring_with(self, frames: list[bytes], tx_slots: int = 4) -> tuple[Any, int]:
        """A receive ring of 4 slots holding ``frames`` (virtio-net header first), then a
        transmit ring of ``tx_slots``: (the map, the transmit ring's offset)."""
        import mmap
        import struct

        from dlba.packet.rawio import RING_FRAME

        ring = mmap.mmap(-1, RING_FRAME * (4 + tx_slots))
        mac_offset = 80
        for i, frame in enumerate(frames):
            at = i * RING_FRAME
            body = frame[10:]
            struct.pack_into("=IIIH", ring, at, 1, len(body), len(body), mac_offset)
            ring[at + mac_offset - 10 : at + mac_offset + len(body)] = frame
        return ring, 4 * RING_FRAME

    def test_ring_reader_with_a_transmit_ring(self) -> None:
        import socket
        import struct

        from dlba.packet.rawio import RING_FRAME, TX_DATA, RingFrameReader

        ring, tx = self.ring_with([*self.frames[:3], self.junk])
        sock = TxRingSocket(ring, tx, stuck=True)  # to look at the slots after the flush
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(sock.sent, [])  # no send a frame ...
        self.assertEqual(sock.flushes, [socket.MSG_DONTWAIT])  # ... one flush a batch
        for i, frame in enumerate(self.frames[:3]):
            to = tx + i * RING_FRAME
            status, length = struct.unpack_from("=II", ring, to)
            self.assertEqual((status, length), (1, len(frame)))
            sent = ring[to + TX_DATA : to + TX_DATA + length]
            self.assertEqual(sent[:10], self.header)  # the virtio-net header as it came
            self.assertEqual(sent[10:16], mac_bytes(self.macs[2]))
            self.assertEqual(sent[16:22], mac_bytes(self.macs[1]))
            self.assertEqual(sent[22:], frame[22:])
        self.assertEqual(ring[tx + 3 * RING_FRAME], 0)  # the junk was not queued
        self.assertEqual([ring[i * RING_FRAME] for i in range(4)], [0, 0, 0, 0])
        self.assertEqual(self.router.counters.forwarded, {2: 3})
        self.assertEqual(self.router.counters.dropped["not_tcp"], 1)
        self.assertEqual(self.router.counters.send_errors, 0)
        reader.release()
        ring.close()

    def test_the_transmit_ring_wraps_round(self) -> None:
        from dlba.packet.rawio import RingFrameReader

        ring, tx = self.ring_with(self.frames[:3], tx_slots=2)
        sock = TxRingSocket(ring, tx)
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
        reader.doRead()
        # Two slots for three frames: the third found its slot taken, flushed, used it.
        self.assertEqual(len(sock.flushes), 2)
        self.assertEqual(len(sock.taken), 3)
        self.assertEqual(reader.tx_next, 2048)
        self.assertEqual(self.router.counters.send_errors, 0)
        reader.release()
        ring.close()

    def test_a_slot_the_kernel_keeps_loses_the_frame(self) -> None:
        from dlba.packet.rawio import RingFrameReader

        ring, tx = self.ring_with(self.frames[:3], tx_slots=2)
        sock = TxRingSocket(ring, tx, stuck=True)  # a link that does not take frames
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(self.router.counters.send_errors, 1)  # the third: lost, counted
        self.assertEqual(self.router.counters.forwarded, {2: 3})  # routed all the same
        self.assertEqual(reader.next, 3)  # every receive slot handed back
        self.assertEqual([ring[i * 2048] for i in range(3)], [0, 0, 0])
        reader.release()
        ring.close()

    def test_a_long_batch_is_flushed_on_the_way(self) -> None:
        import mmap
        import struct

        from dlba.packet.rawio import RING_FRAME, TX_FLUSH, RingFrameReader
        from tests.test_frames import syn

        count = TX_FLUSH * 2 + 5
        ring = mmap.mmap(-1, RING_FRAME * count * 2)
        for i in range(count):
            at = i * RING_FRAME
            frame = self.header + bytes(syn(sport=1000 + i))
            struct.pack_into("=IIIH", ring, at, 1, len(frame) - 10, len(frame) - 10, 80)
            ring[at + 70 : at + 70 + len(frame)] = frame
        tx = count * RING_FRAME
        sock = TxRingSocket(ring, tx)
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(len(sock.flushes), 3)  # at 64, at 128, and the 5 at the end
        self.assertEqual(len(sock.taken), count)
        self.assertEqual([t[10:16] for t in sock.taken], [mac_bytes(self.macs[2])] * count)
        reader.release()
        ring.close()

    def test_a_failed_flush_is_counted(self) -> None:
        import errno

        from dlba.packet.rawio import RingFrameReader

        ring, tx = self.ring_with(self.frames[:2])
        sock = TxRingSocket(ring, tx)
        sock.error = OSError(errno.ENOBUFS, "No buffer space available")
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(self.router.counters.send_errors, 1)
        reader.release()
        ring.close()

    def test_local_frames_go_to_the_tap_not_the_transmit_ring(self) -> None:
        import os

        from dlba.packet.rawio import RingFrameReader

        for row in self.nodes:
            row.enabled = row.number == 1  # everything local now
        ring, tx = self.ring_with(self.frames[:2])
        sock = TxRingSocket(ring, tx)
        read, write = os.pipe()
        try:
            reader = RingFrameReader(sock, ring, write, self.router, lambda: 5.0, tx_offset=tx)  # type: ignore[arg-type]
            reader.doRead()
            got = os.read(read, 4096)
        finally:
            os.close(read)
            os.close(write)
        self.assertEqual(len(got), 2 * len(self.frames[0]))
        self.assertEqual(got[:10], self.header)
        self.assertEqual(sock.flushes, [])  # nothing was queued for the transmit ring
        self.assertEqual(self.router.counters.local, 2)
        reader.release()
        ring.close()

    def test_the_kernel_refusing_a_transmit_ring(self) -> None:
        from dlba.packet.rawio import (
            PACKET_LOSS,
            PACKET_RX_RING,
            PACKET_TX_RING,
            PACKET_VERSION,
            RING_BLOCK,
            RING_BLOCKS,
            TX_BLOCKS,
            request_rings,
        )

        sock = ScriptedSetsockopt(refuse={PACKET_TX_RING})
        self.assertEqual(request_rings(sock), (RING_BLOCK * RING_BLOCKS, 0))  # type: ignore[arg-type]
        options = [option for _, option in sock.calls]
        self.assertEqual(options, [PACKET_VERSION, PACKET_RX_RING, PACKET_LOSS, PACKET_TX_RING])
        sock = ScriptedSetsockopt(refuse={PACKET_LOSS})  # no PACKET_LOSS: no ring either
        self.assertEqual(request_rings(sock)[1], 0)  # type: ignore[arg-type]
        self.assertNotIn(PACKET_TX_RING, [option for _, option in sock.calls])
        sock = ScriptedSetsockopt(refuse=set())
        self.assertEqual(request_rings(sock), (RING_BLOCK * RING_BLOCKS, RING_BLOCK * TX_BLOCKS))  # type: ignore[arg-type]
        sock = ScriptedSetsockopt(refuse=set())
        self.assertEqual(request_rings(sock, tx=False)[1], 0)  # type: ignore[arg-type]
        self.assertEqual(len(sock.calls), 2)

    def test_qdisc_bypass_refused(self) -> None:
        from dlba.packet.rawio import PACKET_QDISC_BYPASS, bypass_qdisc

        self.assertFalse(bypass_qdisc(ScriptedSetsockopt({PACKET_QDISC_BYPASS})))  # type: ignore[arg-type]
        self.assertTrue(bypass_qdisc(ScriptedSetsockopt(set())))  # type: ignore[arg-type]

    def test_ring_reader_reads_past_a_slot_the_kernel_never_filled(self) -> None:
        import mmap
        import struct

        from dlba.packet.rawio import RESYNC_AFTER, RING_FRAME, RingFrameReader

        ring = mmap.mmap(-1, RING_FRAME * 4)
        mac_offset = 80
        # Slot 0 taken by the kernel and dropped (still TP_STATUS_KERNEL); 1 and 2 hold
        # frames: the kernel's poll says readable for ever.
        for i, frame in ((1, self.frames[0]), (2, self.frames[1])):
            at = i * RING_FRAME
            body = frame[10:]
            struct.pack_into("=IIIH", ring, at, 1, len(body), len(body), mac_offset)
            ring[at + mac_offset - 10 : at + mac_offset + len(body)] = frame
        sock = FakeSocket([])
        reader = RingFrameReader(sock, ring, -1, self.router, lambda: 5.0)  # type: ignore[arg-type]
        for _ in range(RESYNC_AFTER - 1):
            reader.doRead()  # perhaps still being filled: wait
        self.assertEqual((len(sock.sent), reader.next), (0, 0))
        reader.doRead()
        self.assertEqual(len(sock.sent), 2)
        self.assertEqual((reader.next, reader.skipped), (3, 1))
        self.assertEqual([ring[i * RING_FRAME] for i in range(4)], [0, 0, 0, 0])
        reader.release()
        ring.close()


class FastPathChoiceTests(SynchronousTestCase):
    """``[array] fast_path``: which path forwards, and what is said when the kernel's
    cannot (a fake nftables, fake frame I/O for both paths)."""

    def setUp(self) -> None:
        from tests.test_fastpath import FakeNft

        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.host = FakeHost(root)
        self.nodes = NodeStatusTable(
            NodeState(n, mac, f"10.77.0.{10 + n}") for n, mac in MACS.items()
        )
        self.table = ClientTable(7, self.nodes, idle_timeout=60.0)
        self.python_io, self.miss_io = FakeIO(), FakeIO()
        self.events: list[str] = []
        self.nft = FakeNft()
        run = self.nft.run

        def recorded(document: dict[str, Any]) -> dict[str, Any]:
            self.events.append("nft")
            return run(document)

        self.nft.run = recorded  # type: ignore[method-assign]
        self.nft_error: Exception | None = None
        self.euid = 0
        self.logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        observer: Any = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def service(self, mode: str) -> PacketSchedulerService:
        array = ArraySection(
            vip=VIP,
            nodes=tuple(ArrayNode(n, mac, f"10.77.0.{10 + n}") for n, mac in MACS.items()),
            fast_path=mode,
        )

        def nft() -> Any:
            if self.nft_error is not None:
                raise self.nft_error
            return self.nft

        def arp(vip: str, mac: str) -> Any:
            speaker = FakeArp(vip, mac)
            start = speaker.start
            speaker.start = lambda: (self.events.append("garp"), start())  # type: ignore
            return speaker

        svc = PacketSchedulerService(
            array, 1, self.table, self.nodes, Clock(), host=self.host, io=self.python_io,
            arp=arp, nft=nft, miss_io=lambda flush: self.miss_io, euid=lambda: self.euid,
        )  # fmt: skip
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def said(self, text: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.logged if text in formatEvent(e)]

    def test_auto_uses_the_kernel_and_installs_it_before_the_gratuitous_arp(self) -> None:
        svc = self.service("auto")
        svc.start(3)
        self.assertIsNotNone(svc.fast)
        self.assertIsNotNone(self.miss_io.router)  # Python reads the misses only
        self.assertIsNone(self.python_io.router)
        self.assertEqual(svc.row()["fast_path"], "nftables")
        self.assertEqual(self.events[0], "nft")  # the whole map, then the announcements
        self.assertEqual(self.events[-1], "garp")
        svc.stop()
        self.assertIsNone(svc.fast)
        self.assertIsNone(self.miss_io.router)

    def test_auto_without_nftables_says_why_once_and_forwards_in_python(self) -> None:
        self.nft_error = OSError("libnftables.so.1: cannot open shared object file")
        svc = self.service("auto")
        for term in (3, 4):  # two terms as scheduler, one word about it
            svc.start(term)
            self.assertIsNone(svc.fast)
            self.assertIsNotNone(self.python_io.router)
            self.assertEqual(svc.row()["fast_path"], "python")
            svc.stop()
        said = self.said("the kernel fast path cannot start")
        self.assertEqual(len(said), 1, said)
        self.assertIn("libnftables.so.1", said[0])
        self.assertIn("forwards in Python", said[0])

    def test_auto_when_not_root_says_so(self) -> None:
        self.euid = 1000
        svc = self.service("auto")
        svc.start(3)
        self.assertEqual(svc.row()["fast_path"], "python")
        self.assertIn("does not run as root", svc.why_no_fast_path)

    def test_nftables_refuses_to_forward_rather_than_fall_back(self) -> None:
        self.nft_error = OSError("libnftables.so.1: cannot open shared object file")
        svc = self.service("nftables")
        svc.start(3)
        self.assertIsNone(svc.term)
        self.assertFalse(svc.row()["forwarding"])
        self.assertIsNone(self.python_io.router)
        [said] = self.said("cannot start forwarding")
        self.assertIn('fast_path = "nftables"', said)
        self.assertIn('set fast_path = "auto"', said)

    def test_off_never_asks_the_kernel(self) -> None:
        svc = self.service("off")
        svc.start(3)
        self.assertEqual(svc.row()["fast_path"], "python")
        self.assertNotIn("nft", self.events)
        self.assertIsNotNone(self.python_io.router)
