"""The packet scheduler service (DESIGN.md §2): the failover ``PacketScheduler``.

Started with the node (``[array].vip`` set): every node puts the VIP on its loopback,
sets the ARP sysctls and installs the kernel guard; a stop undoes the VIP and the guard.
``start(term)`` (this node won the election, or is the configured scheduler) installs the
scheduler's ingress rule, opens the frame path and answers ARP for the VIP after a few
gratuitous announcements; ``stop()`` undoes those.  The frame path forwards with the
node's own client table, so a new scheduler starts with the copy it has been syncing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from dlba.clienttable import ClientTable
from dlba.config import ArraySection
from dlba.frames import FrameCounters, FrameRouter
from dlba.interfaces import IFrameIO
from dlba.kernelpath import FAMILY, MISS_IN, MISS_OUT, TABLE, KernelProgram
from dlba.packet.arp import ArpSpeaker
from dlba.packet.fastpath import KernelFastPath, Runs
from dlba.packet.host import SCHEDULER_TABLE, Host, HostError
from dlba.packet.rawio import PacketSocketIO
from dlba.tables import NodeStatusTable

__all__ = ["PacketSchedulerService"]

log = Logger(namespace="dlba.packet")


def _dissect(frame: bytes) -> str:
    from scapy.layers.l2 import Ether

    return str(Ether(frame).summary())


def _library_nft() -> Runs:
    from dlba.packet.nft import Nft

    return Nft()


class PacketSchedulerService(Service):
    name = "packet"

    def __init__(
        self,
        array: ArraySection,
        own: int,
        table: ClientTable | None,
        nodes: NodeStatusTable,
        reactor: Any,
        *,
        host: Host | None = None,
        io: IFrameIO | None = None,
        arp: Callable[[str, str], ArpSpeaker] | None = None,
        scheduler_at_start: bool = False,
        debug: bool = False,
        nft: Callable[[], Runs] | None = None,
        miss_io: Callable[[Callable[[], None]], IFrameIO] | None = None,
        euid: Callable[[], int] = os.geteuid,
    ) -> None:
        assert array.vip is not None
        self.vip: str = array.vip
        self.interface = array.interface
        self.array = array
        self.fast_path_mode = array.fast_path
        self._nft_factory = nft or _library_nft
        self.fast: KernelFastPath | None = None  # while the kernel forwards
        self._python_io: IFrameIO | None = None
        self.why_no_fast_path = ""  # said once a run, on the first term that wanted it
        self._nft: Runs | None = None
        debug = debug or array.debug_frames
        self.own = own
        self.table = table
        self.nodes = nodes
        self.reactor = reactor
        self.host = host if host is not None else Host()
        self._dissect = _dissect if debug else None
        self.io: IFrameIO = (
            io
            if io is not None
            else PacketSocketIO(self.interface, self.vip, reactor, self.host, dissect=self._dissect)
        )
        self._injected_io = io is not None
        # The fast path's reader of the miss channel, given the flush to call after a
        # batch (a fake in the tests; with an injected io and none, no fast path).
        self._miss_io = miss_io
        self._euid = euid
        self._arp_factory = arp or (
            lambda ip, mac: ArpSpeaker(self.interface, ip, mac, self.reactor)
        )
        self.arp: ArpSpeaker | None = None
        self.scheduler_at_start = scheduler_at_start
        self.counters = FrameCounters()  # over every term: Prometheus counters never fall
        self.router: FrameRouter | None = None
        self.term: int | None = None  # while scheduling
        self.ready = False  # the every-node part is in place
        self._tried = False  # once a run: a missing interface is logged once

    # -- every node -------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Before any listener binds (the proxy's listen on the VIP): node.py puts this
        # service first, and privilegedStartService runs for every child before any
        # startService.
        super().privilegedStartService()
        self._hold_vip()

    def startService(self) -> None:
        super().startService()
        self._hold_vip()
        if self.ready and self.scheduler_at_start:
            self.start(0)

    def _hold_vip(self) -> None:
        if self.ready or self._tried:
            return
        self._tried = True
        host = self.host
        if ":" in self.vip:
            log.error(
                "packet scheduler off: it forwards IPv4 only, and the VIP is {vip}", vip=self.vip
            )
            return
        if not host.has_interface(self.interface):
            log.error(
                "packet scheduler off: no interface {interface} ([array] interface)",
                interface=self.interface,
            )
            return
        try:
            host.arp_sysctls(self.interface)
            self._clear_leftovers()
            host.add_vip(self.vip)
            host.install_guard(self.vip)
        except HostError as e:
            log.critical("cannot hold the VIP {vip}: {why}", vip=self.vip, why=str(e))
            raise
        self.ready = True
        if self._fast_path_wanted() and self._nft is None:
            # Loaded now, not at a takeover: the library and its context take ~0.15 s.
            try:
                self._nft = self._nft_factory()
            except Exception as e:
                log.warn("nftables cannot be loaded yet: {why}", why=str(e))
        log.info(
            "the VIP {vip} is on lo, ARP for it is off and the kernel guard is in",
            vip=self.vip,
        )

    def _fast_path_wanted(self) -> bool:
        """The config asks for it, and the miss channel can be read (an injected frame
        I/O without a miss reader, in tests, means the Python path only)."""
        if self.fast_path_mode == "off":
            return False
        return not self._injected_io or self._miss_io is not None

    def _clear_leftovers(self) -> None:
        """What a dlba killed while scheduler left in the kernel: its ingress program (the
        fast path's or the Python path's rule) and the miss channel.  A node that starts
        is not scheduler yet, and a stale map would forward the frames of clients that
        still hold this node's MAC by decisions the new scheduler no longer makes."""
        left = self.host.has_interface(MISS_IN)
        self.host.delete_table(SCHEDULER_TABLE, (FAMILY, TABLE))
        if left:
            self.host.delete_link(MISS_IN)
            log.warn(
                "removed the kernel fast path an earlier dlba left on {interface} "
                "(it stopped while scheduler)",
                interface=self.interface,
            )

    def stopService(self) -> None:
        super().stopService()
        if self.term is not None:
            self.stop()
        self._tried = False
        if self.ready:
            self.ready = False
            for undo in (self.host.remove_guard, lambda: self.host.remove_vip(self.vip)):
                try:
                    undo()
                except HostError as e:
                    log.warn("on stop: {why}", why=str(e))

    # -- the scheduler (failover's PacketScheduler) ------------------------------------------

    def start(self, term: int) -> None:
        if self.term is not None:
            self.term = term
            return
        if not self.ready or self.table is None:
            log.error(
                "this node is scheduler (term {term}) but cannot forward: {why}",
                term=term,
                why="no client table" if self.ready else "the VIP is not set up on this host",
            )
            return
        host = self.host
        try:
            mac = host.mac_of(self.interface)
            macs = {row.number: row.mac for row in self.nodes if row.mac}
            configured = macs.get(self.own)
            if configured and configured.lower() != mac.lower():
                log.warn(
                    "[[array.node]] {node} says mac {configured}, {interface} has {mac}",
                    node=self.own,
                    configured=configured,
                    interface=self.interface,
                    mac=mac,
                )
            self.router = FrameRouter(
                self.table, self.vip, self.own, mac, macs, counters=self.counters
            )
            if not self._start_fast_path(mac, macs):
                if self.fast_path_mode == "nftables":
                    raise HostError(
                        f'[array] fast_path = "nftables", and {self.why_no_fast_path} '
                        '(set fast_path = "auto" to fall back to Python)'
                    )
                host.install_scheduler_rule(self.vip, self.interface, [*macs.values(), mac])
                self.io.start(self.router)
            self.arp = self._arp_factory(self.vip, mac)
            self.arp.start()
        except Exception as e:
            log.critical("cannot start forwarding: {why}", why=str(e))
            self._undo()
            return
        self.term = term
        log.warn(
            "forwarding frames for {vip} on {interface} ({path}, term {term})",
            vip=self.vip,
            interface=self.interface,
            path=self.io.path,
            term=term,
        )

    def nodes_changed(self) -> None:
        """A reload: the node status table's MACs may have changed (a node that joined):
        frames for a new node's buckets need its MAC, and the ingress rule must let them
        in; the kernel's ``active`` set follows a new ``bucket_idle_timeout``.  The
        kernel's program is installed again only if one of them changed."""
        if self.term is None or self.router is None:
            return
        macs = {row.number: row.mac for row in self.nodes if row.mac}
        self.router.set_macs(macs)
        try:
            mac = self.host.mac_of(self.interface)
            if self.fast is not None:
                nodes = {n: m.lower() for n, m in macs.items()}
                nodes[self.own] = mac.lower()
                assert self.table is not None
                self.fast.replace_program(
                    dataclasses.replace(
                        self.fast.program, nodes=nodes, idle_timeout=self.table.idle_timeout
                    )
                )
            else:
                self.host.install_scheduler_rule(self.vip, self.interface, [*macs.values(), mac])
        except Exception as e:
            log.error("the nodes changed but the ingress rule did not: {why}", why=str(e))

    def stop(self) -> None:
        if self.term is None:
            return
        self.term = None
        self._undo()
        log.warn("stopped forwarding frames for {vip}", vip=self.vip)

    def _start_fast_path(self, mac: str, macs: dict[int, str]) -> bool:
        """The kernel forwards, Python reads only the misses: whether that is on now."""
        if not self._fast_path_wanted() or self.table is None:
            return False
        assert self.router is not None
        nodes = dict(macs)
        nodes[self.own] = mac
        program = KernelProgram(
            vip=self.vip,
            interface=self.interface,
            mac=mac,
            own=self.own,
            nodes={n: m.lower() for n, m in nodes.items()},
            size=self.table.size,
            idle_timeout=self.table.idle_timeout,
        )
        fast: KernelFastPath | None = None
        try:
            if self._euid() != 0:
                raise HostError("dlba does not run as root")
            if self._nft is None:
                self._nft = self._nft_factory()
            fast = KernelFastPath(program, self.table, self._nft, self.host, self.reactor)
            fast.start()
            if self._miss_io is not None:
                io = self._miss_io(fast.poke)
            else:
                io = PacketSocketIO(
                    self.interface,
                    self.vip,
                    self.reactor,
                    self.host,
                    dissect=self._dissect,
                    read_interface=MISS_OUT,
                    after_read=fast.poke,
                )
            io.start(self.router)
        except Exception as e:
            if fast is not None:
                fast.stop()
            why = f"the kernel fast path cannot start: {e}"
            if why != self.why_no_fast_path:
                log.error(
                    "{why}; the scheduler forwards in Python ([array] fast_path = {mode})",
                    why=why,
                    mode=self.fast_path_mode,
                )
            self.why_no_fast_path = why
            return False
        self.why_no_fast_path = ""
        self.fast = fast
        self._python_io, self.io = self.io, io
        return True

    def _undo(self) -> None:
        if self.arp is not None:
            self.arp.stop()
            self.arp = None
        self.io.stop()
        if self.fast is not None:
            self.fast.stop()
            self.fast = None
            assert self._python_io is not None
            self.io, self._python_io = self._python_io, None
        try:
            self.host.remove_scheduler_rule()
        except HostError as e:
            log.warn("on stop: {why}", why=str(e))

    # -- the report ----------------------------------------------------------------------

    def row(self) -> dict[str, object]:
        """The status daemon's ``packets`` line, the admin JSON's ``packets``."""
        arp = self.arp
        return {
            "path": self.io.path,
            "vip": self.vip,
            "interface": self.interface,
            "forwarding": self.term is not None,
            "arp_answered": arp.answered if arp is not None else 0,
            "arp_announced": arp.announced if arp is not None else 0,
            "fast_path": "nftables" if self.fast is not None else "python",
            **self.counters.row(),
            **(self.fast.row() if self.fast is not None else {}),
        }
