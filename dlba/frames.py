"""The packet scheduler's per-frame decision (DESIGN.md §1 step 2).  Pure: no sockets, no
reactor; the time is passed in.

A frame is read at fixed offsets, never dissected into objects: Ethernet (one 802.1Q tag
skipped), IPv4 with its options, the TCP source port.  A frame for the VIP gets the bucket
of (client IP, client port) from the array's bucket hash; the client table names the node
(assigning or refreshing the bucket, DESIGN §4); the frame is rewritten in place:

- another node's: destination MAC = that node's, source MAC = the scheduler's own, so the
  switch never learns the client's MAC on the scheduler's port (issue 12 §1: with the
  client's source MAC kept, about half the replies went astray);
- the scheduler's own: destination MAC = the local delivery device's (the glue's tap), so
  the scheduler's own kernel takes it as ingress;
- anything else is dropped and counted by reason: a frame the kernel filter should have
  kept out (not IPv4, not for the VIP), non-TCP traffic to the VIP, fragments (a non-first
  fragment carries no port, so its bucket is unknown, and the first one alone is no use
  at the node), truncated or malformed headers, and frames whose bucket no node can take.

The verdict is a small int, not an object: the glue's loop runs once per frame.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from typing import Any

from dlba.clienttable import ClientTable
from dlba.hashing import bucket_of_wire

__all__ = [
    "DROP",
    "DROP_REASONS",
    "FORWARD",
    "LOCAL",
    "FrameCounters",
    "FrameRouter",
    "classify",
    "mac_bytes",
]

DROP = 0
FORWARD = 1  # rewritten for another node: send it back out of the interface
LOCAL = 2  # rewritten for the scheduler's own stack: hand it to the local device

ETH_HEADER = 14
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6
# The More Fragments flag and the 13-bit fragment offset of IPv4's flags/offset field.
_FRAGMENT_BITS = 0x3FFF

DROP_REASONS = (
    "not_ipv4",
    "not_vip",
    "not_tcp",
    "fragment",
    "truncated",
    "malformed",
    "no_node",
)


def mac_bytes(mac: str) -> bytes:
    """``"02:00:0a:4d:00:0b"`` as 6 bytes (``-`` separators taken too)."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        packed = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None
    return packed


def classify(frame: bytearray | memoryview, length: int, vip: bytes) -> tuple[int, int] | str:
    """(IPv4 header offset, TCP header offset) of a TCP frame for ``vip`` (4 packed bytes),
    else the reason it is none (one of `DROP_REASONS`).  ``length``: the frame's bytes in
    ``frame`` (a reused receive buffer is longer than most frames)."""
    if length < ETH_HEADER:
        return "truncated"
    l3 = ETH_HEADER
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == ETH_P_8021Q:
        # One tag (the kernel usually strips it before a packet socket sees the frame).
        if length < ETH_HEADER + 4:
            return "truncated"
        l3 += 4
        ethertype = (frame[16] << 8) | frame[17]
    if ethertype != ETH_P_IP:
        return "not_ipv4"
    if length < l3 + 20:
        return "truncated"
    first = frame[l3]
    header = (first & 0x0F) * 4
    if first >> 4 != 4 or header < 20:
        return "malformed"
    # A bytearray's or memoryview's slice compares with bytes by value (no copy to bytes).
    if frame[l3 + 16 : l3 + 20] != vip:  # type: ignore[comparison-overlap]
        return "not_vip"
    if frame[l3 + 9] != IPPROTO_TCP:
        return "not_tcp"
    if ((frame[l3 + 6] << 8) | frame[l3 + 7]) & _FRAGMENT_BITS:
        return "fragment"
    total = (frame[l3 + 2] << 8) | frame[l3 + 3]
    if total < header + 20:
        return "malformed"  # no room for the options it claims, or for a TCP header
    if l3 + total > length:
        return "truncated"  # the frame may be longer (padding), never shorter
    return l3, l3 + header


class FrameCounters:
    """What the packet scheduler did with the frames it read (status, dashboard, /metrics)."""

    __slots__ = ("dropped", "forwarded", "frames_in", "local", "send_errors", "table_misses")

    def __init__(self) -> None:
        self.frames_in = 0
        self.forwarded: dict[int, int] = {}  # node number -> frames sent to it
        self.local = 0  # frames for the scheduler's own stack
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # Frames whose bucket had to be placed (new, idle, or its node gone): the table
        # changed.  Issue 13's kernel path hands Python exactly these.
        self.table_misses = 0
        # Frames decided but not sent (a full queue, a link going down): the glue counts.
        self.send_errors = 0

    def row(self) -> dict[str, object]:
        return {
            "frames_in": self.frames_in,
            "forwarded": dict(sorted(self.forwarded.items())),
            "local": self.local,
            "dropped": dict(self.dropped),
            "table_misses": self.table_misses,
            "send_errors": self.send_errors,
        }


# The common frame, read with one call: from byte 12 of an untagged frame, the ethertype,
# IPv4's version/IHL, total length, flags/fragment offset, protocol, source and destination,
# then (an IHL of 5: no options) the TCP source port.  Anything else takes `classify`.
_COMMON = struct.Struct("!HBxHxxHxBxxIIH")
_COMMON_END = 12 + _COMMON.size  # 36
_common = _COMMON.unpack_from
# (client IP, client port) -> bucket entries kept before the cache starts again.
BUCKET_CACHE = 1 << 16


class FrameRouter:
    """Decides each frame's fate with the node's `ClientTable` and rewrites it in place.

    Per frame, the common case (untagged IPv4, no options, TCP to the VIP) is one
    ``struct`` read; a bounded cache maps (client IP, client port), as one int, to its
    bucket, so BLAKE2b runs once per client port, not per frame.  The cache holds buckets,
    never nodes: the table is asked for the node on every frame (which also refreshes the
    bucket), so a reassigned bucket is never served stale; the cache only depends on the
    table's size and starts again when the table is replaced.  A forwarded frame gets its
    12 bytes of MACs in one write, from a header precomputed per node.
    """

    def __init__(
        self,
        table: ClientTable,
        vip: str,
        own: int,
        own_mac: str,
        macs: Mapping[int, str],
        *,
        local_mac: str | None = None,
        counters: FrameCounters | None = None,
        cache_limit: int = BUCKET_CACHE,
    ) -> None:
        self.vip = socket.inet_aton(vip)
        self._vip = int.from_bytes(self.vip, "big")
        self.own = own
        self._own_mac = mac_bytes(own_mac)
        self.local_mac = mac_bytes(local_mac) if local_mac else None
        self.macs: dict[int, bytes] = {}
        self._heads: dict[int, bytes] = {}  # node -> its MAC then ours: a forward's 12 bytes
        self.cache_limit = max(1, cache_limit)
        self._buckets: dict[int, int] = {}  # (ip << 16 | port) -> bucket, for self._table
        self._table = table
        self.set_macs(macs)
        self.counters = counters if counters is not None else FrameCounters()

    @property
    def table(self) -> ClientTable:
        return self._table

    @table.setter
    def table(self, table: ClientTable) -> None:
        self._table = table
        self._buckets = {}  # another table may have another size

    @property
    def own_mac(self) -> bytes:
        return self._own_mac

    @own_mac.setter
    def own_mac(self, mac: bytes) -> None:
        self._own_mac = mac
        self._heads = {number: m + mac for number, m in self.macs.items()}

    def set_macs(self, macs: Mapping[int, str]) -> None:
        """The nodes' MACs (``[[array.node]] mac``), e.g. after a reload."""
        self.macs = {number: mac_bytes(mac) for number, mac in macs.items() if mac}
        self._heads = {number: m + self._own_mac for number, m in self.macs.items()}

    def route(self, frame: bytearray | memoryview, length: int, now: float) -> int:
        """`FORWARD`, `LOCAL` or `DROP` for the frame in ``frame[:length]``, rewritten in
        place for the first two."""
        return self.route_at(frame, 0, length, now)

    def route_at(self, buffer: Any, at: int, length: int, now: float) -> int:
        """`route` for the frame at ``buffer[at : at + length]`` (any writable buffer: a
        bytearray, a memoryview, the receive ring's mmap), with no slice made of it."""
        counters = self.counters
        counters.frames_in += 1
        key = -1
        if length >= _COMMON_END:
            ethertype, first, total, fragment, proto, src, dst, port = _common(buffer, at + 12)
            if (
                dst == self._vip
                and ethertype == 0x0800  # ETH_P_IP
                and first == 0x45  # IPv4, no options
                and proto == 6  # IPPROTO_TCP
                and not fragment & 0x3FFF  # _FRAGMENT_BITS
                and 40 <= total <= length - 14
            ):
                key = src << 16 | port
        if key < 0:
            with memoryview(buffer) as view, view[at : at + length] as frame:
                where = classify(frame, length, self.vip)
                if isinstance(where, str):
                    counters.dropped[where] += 1
                    return DROP
                l3, l4 = where
                key = int.from_bytes(frame[l3 + 12 : l3 + 16], "big") << 16 | (
                    frame[l4] << 8 | frame[l4 + 1]
                )
        table = self._table
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            packed = key.to_bytes(6, "big")
            bucket = bucket_of_wire(packed[:4], packed[4:], table.size)
            if len(buckets) >= self.cache_limit:
                buckets.clear()  # bounded: a flood of new ports starts it again
            buckets[key] = bucket
        version = table.version
        node = table.lookup(bucket, now)
        if table.version != version:
            counters.table_misses += 1
        if node == self.own:
            if self.local_mac is not None:
                buffer[at : at + 6] = self.local_mac
            counters.local += 1
            return LOCAL
        head = self._heads.get(node)
        if head is None:  # -1 (no node can take it) or a node the config gives no MAC
            counters.dropped["no_node"] += 1
            return DROP
        buffer[at : at + 12] = head
        forwarded = counters.forwarded
        forwarded[node] = forwarded.get(node, 0) + 1
        return FORWARD
