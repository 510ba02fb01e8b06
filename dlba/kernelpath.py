"""The scheduler's fast path in the kernel, as data (issue 13): the nftables program that
forwards every frame of an assigned bucket without Python, and the transactions that keep
its bucket map equal to the client table.

Pure: it builds nftables JSON (``nft -j`` / libnftables) and reads it back; dlba/packet/
runs it.  No user input is ever pasted into a rule: every value is a number, a MAC or an
address the config already checked, placed in JSON, not in text.

On ``[array].interface`` a ``netdev`` ingress chain takes IPv4 TCP to the VIP that is not a
fragment and not from another array node (a peer forwarding a frame to us means it is ours)
and computes ``bucket = jhash ip saddr . tcp sport mod size seed ARRAY_SEED`` into the mark
(`dlba.jhash`, the same function as `dlba.hashing.bucket_of`).  The bucket is refreshed in
the ``active`` set (its timeout is the bucket idle timeout, so the kernel keeps each
bucket's last access) and looked up in the ``owners`` map: another node's bucket jumps to
that node's chain (source MAC = ours, destination MAC = the owner's, ``fwd`` back out of
the interface), ours to ``local`` (up our own stack, where the VIP is on loopback).  A
bucket not in the map, a fragment, and any other frame to the VIP goes out of the miss
channel, a veth pair whose far end only dlba reads: Python assigns the bucket, adds it to
the map and forwards that first frame itself.  An AF_PACKET socket on the interface would
see every frame before the ingress hook, so Python reads only the miss channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dlba.clienttable import ClientTable
from dlba.jhash import ARRAY_SEED

FAMILY = "netdev"
TABLE = "dlba_fast"
OWNERS = "owners"
ACTIVE = "active"
LOCAL_CHAIN = "local"
MISS_COUNTER = "misses"
# The miss channel: dlba sends nothing into MISS_IN's peer; the kernel fwds misses to
# MISS_IN, and they arrive on MISS_OUT, where dlba reads them.
MISS_IN = "dlbamiss0"
MISS_OUT = "dlbamiss1"


def node_chain(number: int) -> str:
    return f"to_node{number}"


def _payload(protocol: str, name: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": name}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


_MARK = {"meta": {"key": "mark"}}


@dataclass(frozen=True)
class KernelProgram:
    """What one scheduler installs: its VIP, interface and MAC, the array's nodes, the
    table size and the idle timeout.  ``nodes``: number → MAC of every node, ``own`` ours."""

    vip: str
    interface: str
    mac: str
    own: int
    nodes: Mapping[int, str]
    size: int
    idle_timeout: float
    seed: int = ARRAY_SEED
    miss_device: str = MISS_IN

    def _where(self, chain: str) -> dict[str, Any]:
        return {"family": FAMILY, "table": TABLE, "chain": chain}

    def verdict(self, node: int) -> dict[str, Any]:
        """The map's value for a bucket of ``node``."""
        target = LOCAL_CHAIN if node == self.own else node_chain(node)
        return {"goto": {"target": target}}

    def install(self, owners: Mapping[int, int]) -> dict[str, Any]:
        """One transaction: the whole table, replacing any earlier one, with ``owners``
        (bucket → node) already in the map, so a takeover forwards from its first frame."""
        t = {"family": FAMILY, "name": TABLE}
        commands: list[dict[str, Any]] = [
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {
                "add": {
                    "map": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": OWNERS,
                        "type": "mark",
                        "map": "verdict",
                        "size": max(self.size, 1),
                    }
                }
            },
            {
                "add": {
                    "set": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": ACTIVE,
                        "type": "mark",
                        "flags": ["timeout"],
                        "timeout": max(1, round(self.idle_timeout)),
                        "size": max(self.size, 1),
                    }
                }
            },
            {"add": {"counter": {"family": FAMILY, "table": TABLE, "name": MISS_COUNTER}}},
        ]
        for number in sorted(self.nodes):
            name = LOCAL_CHAIN if number == self.own else node_chain(number)
            commands.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})
            # A named counter each (as the chain): `list counters` reads them all without
            # the map and the set, cheaply enough for every second.
            commands.append({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})
            if number == self.own:
                expr: list[dict[str, Any]] = [{"counter": name}, {"accept": None}]
            else:
                expr = [
                    {"counter": name},
                    {"mangle": {"key": _payload("ether", "saddr"), "value": self.mac.lower()}},
                    {"mangle": {"key": _payload("ether", "daddr"), "value": self.nodes[number]}},
                    {"fwd": {"dev": self.interface}},
                ]
            commands.append({"add": {"rule": {**self._where(name), "expr": expr}}})
        commands.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": "ingress",
                        "type": "filter",
                        "hook": "ingress",
                        "dev": self.interface,
                        "prio": -100,
                        "policy": "accept",
                    }
                }
            }
        )
        vip = _match(_payload("ip", "daddr"), self.vip)
        peers = sorted(m.lower() for n, m in self.nodes.items() if n != self.own)
        from_client = [_match(_payload("ether", "saddr"), {"set": peers}, "!=")] if peers else []
        jhash = {
            "jhash": {
                "mod": self.size,
                "seed": self.seed,
                "expr": {"concat": [_payload("ip", "saddr"), _payload("tcp", "sport")]},
            }
        }
        fast = [
            vip,
            *from_client,
            _match(_payload("ip", "protocol"), "tcp"),
            _match({"&": [_payload("ip", "frag-off"), 0x3FFF]}, 0),
            {"mangle": {"key": _MARK, "value": jhash}},
            {"set": {"op": "update", "elem": _MARK, "set": f"@{ACTIVE}"}},
            {"vmap": {"key": _MARK, "data": f"@{OWNERS}"}},
        ]
        miss = [
            vip,
            *from_client,
            {"counter": MISS_COUNTER},
            {"fwd": {"dev": self.miss_device}},
        ]
        for expr in (fast, miss):
            commands.append({"add": {"rule": {**self._where("ingress"), "expr": expr}}})
        commands += self.changes({}, owners)["nftables"]
        return {"nftables": commands}

    def changes(self, old: Mapping[int, int], new: Mapping[int, int]) -> dict[str, Any]:
        """One transaction of only the buckets whose owner differs between ``old`` (what the
        kernel holds) and ``new``: a changed bucket is deleted and added again in it, so no
        frame sees it missing."""
        gone = sorted(b for b, n in old.items() if new.get(b) != n)
        came = sorted(b for b, n in new.items() if old.get(b) != n)
        commands: list[dict[str, Any]] = []
        where = {"family": FAMILY, "table": TABLE, "name": OWNERS}
        if gone:
            commands.append({"delete": {"element": {**where, "elem": gone}}})
        if came:
            elems = [[b, self.verdict(new[b])] for b in came]
            commands.append({"add": {"element": {**where, "elem": elems}}})
        return {"nftables": commands}

    def remove(self) -> dict[str, Any]:
        t = {"family": FAMILY, "name": TABLE}
        return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}


@dataclass
class KernelMirror:
    """What the kernel's map holds, as far as dlba knows: the last transaction it applied.
    ``pending`` collects owner changes between two flushes (one transaction per turn)."""

    installed: dict[int, int] = field(default_factory=dict)
    pending: dict[int, int | None] = field(default_factory=dict)

    def set(self, bucket: int, node: int | None) -> None:
        self.pending[bucket] = node

    def wanted(self) -> dict[int, int]:
        out = dict(self.installed)
        for bucket, node in self.pending.items():
            if node is None:
                out.pop(bucket, None)
            else:
                out[bucket] = node
        return out

    def applied(self, wanted: dict[int, int]) -> None:
        self.installed = wanted
        self.pending.clear()


def active_buckets(listing: Mapping[str, Any]) -> dict[int, float]:
    """bucket → seconds until the kernel forgets it, from ``nft -j list set`` of ``active``
    (the bucket was seen ``timeout - expires`` seconds ago)."""
    out: dict[int, float] = {}
    for item in listing.get("nftables", []):
        body = item.get("set") if isinstance(item, dict) else None
        if not isinstance(body, dict) or body.get("name") != ACTIVE:
            continue
        for elem in body.get("elem", []):
            inner = elem.get("elem") if isinstance(elem, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("val"), int):
                out[inner["val"]] = float(inner.get("expires", 0))
            elif isinstance(elem, int):
                out[elem] = 0.0
    return out


def list_counters() -> dict[str, Any]:
    """The command that reads every named counter of the table (`counters` parses it)."""
    return {"nftables": [{"list": {"counters": {"family": FAMILY, "table": TABLE}}}]}


def counters(listing: Mapping[str, Any]) -> dict[str, int]:
    """Frames the kernel handled, from `list_counters`: per node chain (its counter has
    the chain's name), ``local``, and ``misses`` handed to Python."""
    out: dict[str, int] = {}
    for item in listing.get("nftables", []):
        body = item.get("counter") if isinstance(item, dict) else None
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            out[body["name"]] = int(body.get("packets", 0))
    return out


def frames_by_node(found: Mapping[str, int], nodes: Iterable[int], own: int) -> dict[str, int]:
    """`counters` as the status table shows them: node number (text) → frames forwarded."""
    out = {}
    for n in sorted(nodes):
        name = LOCAL_CHAIN if n == own else node_chain(n)
        out[str(n)] = found.get(name, 0)
    return out


# nft lists ``expires`` in whole seconds, rounded down: a bucket may have been seen up to
# this much later than ``timeout - expires`` says.
EXPIRES_GRAIN = 1.0


def absorb_activity(
    table: ClientTable, active: Mapping[int, float], timeout: float, now: float
) -> None:
    """Give the client table the last access the kernel kept: a bucket in the ``active``
    set with ``expires`` seconds left was last seen ``timeout - expires`` seconds ago, less
    the listing's grain (the later end: a busy bucket must never look idle)."""
    for bucket, expires in active.items():
        if 0 <= bucket < table.size:
            table.seen(bucket, now - max(0.0, timeout - expires - EXPIRES_GRAIN))


def wanted_map(table: ClientTable, now: float) -> dict[int, int]:
    """The buckets the kernel may forward without asking: assigned to a node that is not
    failed, and busy (a frame within the idle timeout).  An idle bucket is left out, so
    its next frame is a miss and the client table places it again (a node that joined
    gets it; a disabled node's buckets drain), exactly as on the Python path.

    ``now`` is when the table last learnt the kernel's activity (`absorb_activity`), not
    the clock: between two readings a busy bucket's frames pass unseen, and judging it
    at a later time would call it idle and let its next frame move it, breaking its
    connections.  Buckets placed since (a miss) carry a later access and stay in."""
    out: dict[int, int] = {}
    rows = {row.number: row for row in table.nodes}
    limit = table.idle_timeout
    for bucket, node in enumerate(table.owners()):
        if node < 0:
            continue
        row = rows.get(node)
        if row is None or row.failed:
            continue
        if now - table.last_access(bucket) <= limit:
            out[bucket] = node
    return out
