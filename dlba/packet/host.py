"""The host's side of the VIP: loopback address, ARP sysctls and dlba's nftables tables.

Every node, at start: the VIP on ``lo`` (so its kernel takes the frames the scheduler
sends it), ``arp_ignore=1`` / ``arp_announce=2`` (so it never answers ARP for the VIP nor
uses it as an ARP source), and the kernel guard.  The scheduler, while it is one: the
ingress rule that keeps its own kernel from answering other nodes' connections.

Both rules live in tables of dlba's own, replaced whole in one transaction (idempotent:
add, delete, add), from JSON built here (``nft -j -f -``): values are never pasted into
nft's text syntax.  Nothing here is undone when the process dies: the kernel keeps the
guard and the ingress rule, which is the point (issue 12 §1: a dead scheduler's kernel
reset 182 connections of other nodes).

Runs ``ip`` and ``nft`` synchronously: a few milliseconds at start and on takeover.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.logger import Logger

__all__ = [
    "GUARD_TABLE",
    "SCHEDULER_TABLE",
    "Host",
    "HostError",
    "guard_ruleset",
    "scheduler_ruleset",
]

log = Logger(namespace="dlba.packet.host")

GUARD_TABLE = ("inet", "dlba_guard")
SCHEDULER_TABLE = ("netdev", "dlba")

Runner = Callable[[Sequence[str], bytes | None], tuple[int, str]]


class HostError(Exception):
    """A kernel setting dlba needs could not be made; the message says which and how."""


def _run(argv: Sequence[str], data: bytes | None) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), input=data, capture_output=True, timeout=10, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer in 10 s"
    return done.returncode, (done.stderr or done.stdout).decode(errors="replace").strip()


def _daddr(vip: str) -> dict[str, Any]:
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": vip,
        }
    }


def _ct_state(state: str) -> dict[str, Any]:
    return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": state}}


def _table_again(family: str, name: str) -> list[dict[str, Any]]:
    # "add" of an existing table is no error, so add-delete-add replaces it in any state.
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]


def guard_ruleset(vip: str) -> dict[str, Any]:
    """TCP to the VIP that belongs to no local connection is dropped, never reset: a
    packet conntrack calls new that is not a pure SYN (a mid-stream ACK, a FIN, a RST of
    a connection this node never had), and anything it calls invalid."""
    family, name = GUARD_TABLE
    where = {"family": family, "table": name, "chain": "input"}
    flags = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}
    return {
        "nftables": [
            *_table_again(family, name),
            {
                "add": {
                    "chain": {
                        "family": family,
                        "table": name,
                        "name": "input",
                        "type": "filter",
                        "hook": "input",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            {
                "add": {
                    "rule": {
                        **where,
                        "expr": [
                            _daddr(vip),
                            {"match": {"op": "!=", "left": flags, "right": "syn"}},
                            _ct_state("new"),
                            {"drop": None},
                        ],
                    }
                }
            },
            {
                "add": {
                    "rule": {**where, "expr": [_daddr(vip), _ct_state("invalid"), {"drop": None}]}
                }
            },
        ]
    }


def scheduler_ruleset(vip: str, interface: str, macs: Sequence[str]) -> dict[str, Any]:
    """On the scheduler's interface: frames for the VIP from anything but an array node are
    dropped before its IP stack (a packet socket sees them first, so the forwarder still
    does).  Its own clients' frames reach its stack through the tap instead; frames a new
    scheduler forwards here after a takeover carry a node's MAC and still pass."""
    family, name = SCHEDULER_TABLE
    expr: list[dict[str, Any]] = [_daddr(vip)]
    if macs:
        expr.append(
            {
                "match": {
                    "op": "!=",
                    "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                    "right": {"set": sorted(m.lower() for m in macs)},
                }
            }
        )
    expr.append({"drop": None})
    return {
        "nftables": [
            *_table_again(family, name),
            {
                "add": {
                    "chain": {
                        "family": family,
                        "table": name,
                        "name": "ingress",
                        "type": "filter",
                        "hook": "ingress",
                        "dev": interface,
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            {"add": {"rule": {"family": family, "table": name, "chain": "ingress", "expr": expr}}},
        ]
    }


class Host:
    """The kernel settings, through ``ip``, ``nft`` and ``/proc/sys`` (both injectable)."""

    def __init__(
        self,
        run: Runner = _run,
        proc_sys: Path = Path("/proc/sys"),
        sys_net: Path = Path("/sys/class/net"),
    ) -> None:
        self.run = run
        self.proc_sys = proc_sys
        self.sys_net = sys_net

    # -- sysctls --------------------------------------------------------------------------

    def sysctl(self, name: str, value: str) -> None:
        """Set ``name`` (dotted, as ``sysctl`` names it) and read it back."""
        path = self.proc_sys / name.replace(".", "/")
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
            got = path.read_text().strip()
        except OSError as e:
            raise HostError(
                f"cannot set {name} = {value}: {e.strerror or e} (dlba needs root, or "
                f"set it beforehand: sysctl -w {name}={value})"
            ) from None
        if got != value:
            raise HostError(f"{name} is {got} after setting it to {value}")

    def arp_sysctls(self, interface: str) -> None:
        """Never answer ARP for the VIP (on lo) nor announce it as an ARP source."""
        self.sysctl("net.ipv4.conf.all.arp_ignore", "1")
        self.sysctl("net.ipv4.conf.all.arp_announce", "2")
        self.sysctl(f"net.ipv4.conf.{interface}.arp_ignore", "1")
        self.sysctl(f"net.ipv4.conf.{interface}.arp_announce", "2")

    # -- the VIP on loopback ---------------------------------------------------------------

    def has_vip(self, vip: str, device: str = "lo") -> bool:
        code, out = self.run(["ip", "-j", "-4", "addr", "show", "dev", device], None)
        if code != 0:
            raise HostError(f"ip addr show dev {device}: {out}")
        try:
            links = json.loads(out or "[]")
        except ValueError:
            return False
        return any(a.get("local") == vip for link in links for a in link.get("addr_info", ()))

    def add_vip(self, vip: str) -> None:
        self.add_address(vip, "lo")

    def remove_vip(self, vip: str) -> None:
        if self.has_vip(vip):
            self.run(["ip", "addr", "del", f"{vip}/32", "dev", "lo"], None)

    def add_address(self, ip: str, device: str) -> None:
        """``ip/32`` on ``device``, unless it is there already."""
        if self.has_vip(ip, device):
            return
        code, out = self.run(["ip", "addr", "add", f"{ip}/32", "dev", device], None)
        if code != 0 and not self.has_vip(ip, device):
            raise HostError(f"cannot put {ip} on {device}: {out} (dlba needs root)")

    # -- nftables -------------------------------------------------------------------------

    def nft(self, ruleset: dict[str, Any]) -> None:
        code, out = self.run(["nft", "-j", "-f", "-"], json.dumps(ruleset).encode())
        if code != 0:
            raise HostError(f"nft refused dlba's rules: {out}")

    def delete_table(self, *tables: tuple[str, str]) -> None:
        """``tables`` gone, in one transaction; one that is not there is no error."""
        commands: list[dict[str, Any]] = []
        for family, name in tables:
            nothing = {"family": family, "name": name}
            commands += [{"add": {"table": nothing}}, {"delete": {"table": nothing}}]
        self.nft({"nftables": commands})

    def install_guard(self, vip: str) -> None:
        self.nft(guard_ruleset(vip))

    def remove_guard(self) -> None:
        self.delete_table(GUARD_TABLE)

    def install_scheduler_rule(self, vip: str, interface: str, macs: Sequence[str]) -> None:
        self.nft(scheduler_ruleset(vip, interface, macs))

    def remove_scheduler_rule(self) -> None:
        self.delete_table(SCHEDULER_TABLE)

    # -- links ----------------------------------------------------------------------------

    def link_up(self, name: str) -> None:
        code, out = self.run(["ip", "link", "set", "dev", name, "up"], None)
        if code != 0:
            raise HostError(f"cannot bring {name} up: {out}")

    def mac_of(self, name: str) -> str:
        return (self.sys_net / name / "address").read_text().strip()

    def has_interface(self, name: str) -> bool:
        return (self.sys_net / name).exists()

    def veth_pair(self, name: str, peer: str) -> None:
        """A veth pair, both ends up, no address (the fast path's miss channel); one left
        by a process that died is taken as it is."""
        if not self.has_interface(name):
            code, out = self.run(
                ["ip", "link", "add", name, "type", "veth", "peer", "name", peer], None
            )
            if code != 0 and not self.has_interface(name):
                raise HostError(f"cannot make the veth pair {name}/{peer}: {out} (dlba needs root)")
        for end in (name, peer):
            # No IPv6 on it: its router solicitations would arrive as misses.
            with contextlib.suppress(HostError):
                self.sysctl(f"net.ipv6.conf.{end}.disable_ipv6", "1")
            self.link_up(end)

    def delete_link(self, name: str) -> None:
        if self.has_interface(name):
            code, out = self.run(["ip", "link", "del", name], None)
            if code != 0 and self.has_interface(name):
                raise HostError(f"cannot remove {name}: {out}")
