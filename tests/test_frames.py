"""The packet scheduler's per-frame decision (dlba.frames) on hand-built frames."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dlba.clienttable import ClientTable
from dlba.frames import (
    DROP,
    DROP_REASONS,
    FORWARD,
    LOCAL,
    FrameRouter,
    classify,
    mac_bytes,
)
from dlba.hashing import bucket_of, bucket_of_wire
from dlba.tables import NodeState, NodeStatusTable

VIP = "10.77.0.100"
CLIENT_MAC = bytes.fromhex("020000000002")
SCHEDULER_MAC = bytes.fromhex("02000000000b")
TAP_MAC = "02:00:00:00:00:ff"
MACS = {1: "02:00:00:00:00:0b", 2: "02:00:00:00:00:0c", 3: "02:00:00:00:00:0d"}


def ipv4(
    src: str = "10.77.0.2",
    dst: str = VIP,
    proto: int = 6,
    payload: bytes = b"",
    options: bytes = b"",
    flags_offset: int = 0x4000,  # DF, the usual
    total: int | None = None,
    version: int = 4,
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(payload) if total is None else total
    head = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        length,
        1,
        flags_offset,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return head + options + payload


def tcp(sport: int = 40000, dport: int = 443, flags: int = 0x02) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def ether(payload: bytes, ethertype: int = 0x0800, vlan: int | None = None) -> bytearray:
    head = SCHEDULER_MAC + CLIENT_MAC
    if vlan is not None:
        head += struct.pack("!HH", 0x8100, vlan)
    return bytearray(head + struct.pack("!H", ethertype) + payload)


def syn(src: str = "10.77.0.2", sport: int = 40000, **kw: object) -> bytearray:
    return ether(ipv4(src=src, payload=tcp(sport), **kw))  # type: ignore[arg-type]


def nodes(*numbers: int) -> NodeStatusTable:
    return NodeStatusTable(NodeState(n, MACS[n], f"10.77.0.{10 + n}") for n in numbers)


class ClassifyTests(SynchronousTestCase):
    vip = socket.inet_aton(VIP)

    def test_tcp_to_the_vip(self) -> None:
        frame = syn()
        self.assertEqual(classify(frame, len(frame), self.vip), (14, 34))

    def test_ip_options_move_the_tcp_header(self) -> None:
        options = b"\x01" * 8  # two words of NOPs
        frame = ether(ipv4(payload=tcp(), options=options))
        self.assertEqual(classify(frame, len(frame), self.vip), (14, 42))

    def test_one_vlan_tag_is_skipped(self) -> None:
        frame = ether(ipv4(payload=tcp()), vlan=7)
        self.assertEqual(classify(frame, len(frame), self.vip), (18, 38))

    def test_a_memoryview_of_a_longer_buffer(self) -> None:
        frame = syn()
        buffer = bytearray(2048)
        buffer[: len(frame)] = frame
        self.assertEqual(classify(memoryview(buffer), len(frame), self.vip), (14, 34))

    def test_padding_beyond_the_ip_length_is_fine(self) -> None:
        frame = syn() + bytes(6)  # a 60-byte minimum frame's padding
        self.assertEqual(classify(frame, len(frame), self.vip), (14, 34))

    def test_reasons(self) -> None:
        cases = [
            ("not_ipv4", ether(b"\x00" * 40, ethertype=0x86DD)),
            ("not_ipv4", ether(b"\x00" * 28, ethertype=0x0806)),  # ARP
            ("not_vip", ether(ipv4(dst="10.77.0.11", payload=tcp()))),
            ("not_tcp", ether(ipv4(proto=17, payload=b"\x00" * 8))),
            ("not_tcp", ether(ipv4(proto=1, payload=b"\x08" + b"\x00" * 7))),
            ("fragment", ether(ipv4(payload=tcp(), flags_offset=0x2000))),  # MF
            ("fragment", ether(ipv4(payload=tcp(), flags_offset=0x00B9))),  # a later one
            ("truncated", ether(ipv4(payload=tcp()))[:40]),
            ("truncated", ether(ipv4(payload=tcp(), total=60))),  # shorter than it says
            ("truncated", bytearray(b"\x02" * 13)),
            ("truncated", ether(b"", vlan=1)[:16]),
            ("truncated", ether(ipv4(payload=tcp()))[:30]),
            ("malformed", ether(ipv4(payload=tcp(), version=6))),
            ("malformed", ether(ipv4(payload=tcp(), total=30))),  # no room for TCP
            ("malformed", ether(ipv4(payload=tcp()[:8], options=b"\x01" * 12))),
        ]
        for i, (reason, frame) in enumerate(cases):
            self.assertEqual(classify(frame, len(frame), self.vip), reason, f"case {i}")

    def test_ihl_below_five_is_malformed(self) -> None:
        frame = syn()
        frame[14] = 0x44
        self.assertEqual(classify(frame, len(frame), self.vip), "malformed")

    def test_length_limits_what_is_read(self) -> None:
        frame = syn()
        self.assertEqual(classify(frame, 20, self.vip), "truncated")


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.nodes = nodes(1, 2, 3)
        self.table = ClientTable(4093, self.nodes, idle_timeout=300.0, table_id="t")
        self.router = FrameRouter(self.table, VIP, 1, MACS[1], MACS, local_mac=TAP_MAC)

    def test_the_bucket_is_the_arrays_bucket_hash(self) -> None:
        for port in (0, 1, 80, 40000, 65535):
            self.assertEqual(
                bucket_of_wire(socket.inet_aton("192.0.2.7"), port.to_bytes(2, "big"), 4093),
                bucket_of("192.0.2.7", port, 4093),
            )

    def test_another_nodes_frame_is_rewritten_for_it(self) -> None:
        for port in range(40000, 40100):
            frame = syn(sport=port)
            before = bytes(frame)
            owner = self.table.route("10.77.0.2", port, 0.0)
            verdict = self.router.route(frame, len(frame), 0.0)
            if owner == 1:
                self.assertEqual(verdict, LOCAL)
                self.assertEqual(frame[0:6], mac_bytes(TAP_MAC))
                self.assertEqual(frame[6:], before[6:])
            else:
                self.assertEqual(verdict, FORWARD)
                self.assertEqual(frame[0:6], mac_bytes(MACS[owner]))
                self.assertEqual(frame[6:12], mac_bytes(MACS[1]))
                self.assertEqual(frame[12:], before[12:])  # otherwise unchanged

    def test_a_new_bucket_is_assigned_and_counted_as_a_miss(self) -> None:
        frame = syn(sport=1234)
        bucket = bucket_of("10.77.0.2", 1234, 4093)
        self.assertEqual(self.table.node_of(bucket), -1)
        self.router.route(frame, len(frame), 5.0)
        owner = self.table.node_of(bucket)
        self.assertNotEqual(owner, -1)
        self.assertEqual(self.table.last_access(bucket), 5.0)
        self.assertEqual(self.router.counters.table_misses, 1)
        # The same client again: a hit, refreshed.
        frame = syn(sport=1234)
        self.router.route(frame, len(frame), 6.0)
        self.assertEqual(self.router.counters.table_misses, 1)
        self.assertEqual(self.table.last_access(bucket), 6.0)
        self.assertEqual(self.table.node_of(bucket), owner)

    def test_counters(self) -> None:
        frames = [syn(sport=p) for p in range(1000, 1300)]
        frames += [ether(ipv4(proto=17, payload=b"\x00" * 8))] * 3
        frames += [ether(ipv4(payload=tcp(), flags_offset=0x2000))] * 2
        for frame in frames:
            self.router.route(frame, len(frame), 0.0)
        c = self.router.counters
        self.assertEqual(c.frames_in, 305)
        self.assertEqual(c.dropped["not_tcp"], 3)
        self.assertEqual(c.dropped["fragment"], 2)
        self.assertEqual(c.local + sum(c.forwarded.values()), 300)
        self.assertEqual(set(c.forwarded), {2, 3})
        # Spread as the table placed them (equal weights: within one bucket of each other).
        self.assertLessEqual(max(c.forwarded.values()) - min(c.forwarded.values()), 40)
        row = c.row()
        self.assertEqual(row["frames_in"], 305)
        self.assertEqual(list(c.dropped), list(DROP_REASONS))

    def test_no_node_can_take_it(self) -> None:
        for row in self.nodes:
            row.failed = True
        frame = syn()
        before = bytes(frame)
        self.assertEqual(self.router.route(frame, len(frame), 0.0), DROP)
        self.assertEqual(bytes(frame), before)
        self.assertEqual(self.router.counters.dropped["no_node"], 1)

    def test_a_node_without_a_mac_is_no_node(self) -> None:
        router = FrameRouter(self.table, VIP, 1, MACS[1], {1: MACS[1]})
        for row in self.nodes:
            row.enabled = row.number == 2
        frame = syn()
        self.assertEqual(router.route(frame, len(frame), 0.0), DROP)
        self.assertEqual(router.counters.dropped["no_node"], 1)

    def test_the_scheduler_alone_takes_everything_locally(self) -> None:
        for row in self.nodes:
            row.enabled = row.number == 1
        frame = syn()
        self.assertEqual(self.router.route(frame, len(frame), 0.0), LOCAL)
        self.assertEqual(self.router.counters.local, 1)

    def test_local_without_a_device_mac_leaves_the_frame(self) -> None:
        router = FrameRouter(self.table, VIP, 1, MACS[1], MACS)
        for row in self.nodes:
            row.enabled = row.number == 1
        frame = syn()
        before = bytes(frame)
        self.assertEqual(router.route(frame, len(frame), 0.0), LOCAL)
        self.assertEqual(bytes(frame), before)

    def test_a_writable_memoryview_is_rewritten_in_place(self) -> None:
        for row in self.nodes:
            row.enabled = row.number == 3
        buffer = bytearray(2048)
        frame = syn()
        buffer[: len(frame)] = frame
        view = memoryview(buffer)
        self.assertEqual(self.router.route(view, len(frame), 0.0), FORWARD)
        self.assertEqual(buffer[0:6], mac_bytes(MACS[3]))
        self.assertEqual(buffer[6:12], mac_bytes(MACS[1]))

    def test_bad_macs(self) -> None:
        for bad in ("", "02:00", "zz:00:00:00:00:00", "02:00:00:00:00:00:00"):
            self.assertRaises(ValueError, mac_bytes, bad)
        self.assertEqual(mac_bytes("02-00-00-00-00-0A"), b"\x02\0\0\0\0\x0a")

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=120))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        frame = bytearray(data)
        verdict = self.router.route(frame, len(frame), 0.0)
        self.assertIn(verdict, (DROP, FORWARD, LOCAL))

    @settings(max_examples=400, deadline=None)
    @given(
        st.binary(min_size=0, max_size=80),
        st.integers(0, 255),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.booleans(),
    )
    def test_mangled_ip_headers_never_raise(
        self, tail: bytes, first: int, total: int, flags: int, vlan: bool
    ) -> None:
        # Past the ethertype check, so the IP and TCP offsets are what is exercised.
        head = ether(b"", vlan=1 if vlan else None)
        ip = bytearray(ipv4(payload=tcp()))
        ip[0] = first
        ip[2:4] = total.to_bytes(2, "big")
        ip[6:8] = flags.to_bytes(2, "big")
        frame = head + ip[:20] + tail
        verdict = self.router.route(frame, len(frame), 0.0)
        self.assertIn(verdict, (DROP, FORWARD, LOCAL))


class BucketCacheTests(SynchronousTestCase):
    """The (client IP, client port) -> bucket cache in front of the bucket hash: bounded,
    the table's own answer on every frame (never a stale node), and started again when
    the router is given another table."""

    def setUp(self) -> None:
        self.nodes = nodes(1, 2, 3)
        self.table = ClientTable(4093, self.nodes, idle_timeout=300.0, table_id="t")
        self.router = FrameRouter(
            self.table, VIP, 1, MACS[1], MACS, local_mac=TAP_MAC, cache_limit=8
        )

    def owner(self, frame: bytearray) -> bytes:
        verdict = self.router.route(frame, len(frame), 0.0)
        self.assertNotEqual(verdict, DROP)
        return bytes(frame[0:6])

    def test_bounded(self) -> None:
        for port in range(100):
            frame = syn(sport=port)
            self.router.route(frame, len(frame), 0.0)
            self.assertLessEqual(len(self.router._buckets), 8)
            bucket = bucket_of("10.77.0.2", port, 4093)
            key = int.from_bytes(socket.inet_aton("10.77.0.2"), "big") << 16 | port
            self.assertEqual(self.router._buckets[key], bucket)
            self.assertNotEqual(self.table.node_of(bucket), -1)

    def test_a_reassigned_bucket_is_never_served_stale(self) -> None:
        frame = syn(sport=4321)
        self.owner(frame)
        bucket = bucket_of("10.77.0.2", 4321, 4093)
        node = self.table.node_of(bucket)
        self.nodes.get(node).failed = True  # type: ignore[union-attr]
        self.table.node_failed(node)
        again = self.owner(syn(sport=4321))  # the cache still holds the bucket
        moved = self.table.node_of(bucket)
        self.assertNotEqual(moved, node)
        expected = TAP_MAC if moved == 1 else MACS[moved]
        self.assertEqual(again, mac_bytes(expected))
        self.assertEqual(self.router.counters.table_misses, 2)

    def test_another_table_starts_the_cache_again(self) -> None:
        frame = syn(sport=999)
        self.router.route(frame, len(frame), 0.0)
        small = ClientTable(7, self.nodes, idle_timeout=300.0, table_id="u")
        self.router.table = small
        self.assertEqual(self.router._buckets, {})
        frame = syn(sport=999)
        self.router.route(frame, len(frame), 0.0)
        self.assertNotEqual(small.node_of(bucket_of("10.77.0.2", 999, 7)), -1)

    def test_the_slow_path_finds_the_same_bucket(self) -> None:
        # A tagged frame and one with IP options take classify, not the one-read path.
        for port in range(50):
            plain = syn(sport=port)
            tagged = ether(ipv4(payload=tcp(port)), vlan=5)
            options = ether(ipv4(payload=tcp(port), options=b"\x01" * 4))
            self.assertEqual(self.owner(plain), self.owner(tagged))
            self.assertEqual(self.owner(plain), self.owner(options))
        self.assertEqual(self.router.counters.table_misses, 50)

    def test_route_at_an_offset(self) -> None:
        for row in self.nodes:
            row.enabled = row.number == 2
        frame = syn(sport=77)
        buffer = bytearray(200)
        buffer[100 : 100 + len(frame)] = frame
        self.assertEqual(self.router.route_at(buffer, 100, len(frame), 0.0), FORWARD)
        self.assertEqual(buffer[100:106], mac_bytes(MACS[2]))
        self.assertEqual(buffer[106:112], mac_bytes(MACS[1]))
        self.assertEqual(buffer[112 : 100 + len(frame)], frame[12:])
        self.assertEqual(buffer[:100], bytes(100))

    def test_a_new_own_mac_is_in_every_forward(self) -> None:
        for row in self.nodes:
            row.enabled = row.number == 3
        self.router.own_mac = SCHEDULER_MAC
        frame = syn()
        self.assertEqual(self.router.route(frame, len(frame), 0.0), FORWARD)
        self.assertEqual(frame[0:12], mac_bytes(MACS[3]) + SCHEDULER_MAC)
