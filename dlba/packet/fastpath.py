"""The kernel fast path while this node is scheduler (issue 13): installs the nftables
program of `dlba.kernelpath`, keeps its bucket map equal to what the client table says the
kernel may forward, and feeds the kernel's last-access times back to the table.

One transaction per change set: `poke` (after Python placed a bucket on a miss) flushes
on the next reactor turn, but never two flushes within ``FLUSH_DELAY``: under a burst of
new connections the buckets placed meanwhile go in together, and Python forwards their
frames until then.  Every ``SYNC_INTERVAL`` a changed client table (a failed node's buckets freed)
reaches the kernel and the kernel's counters are read; the kernel's activity (listing
~4,000 buckets costs ~25 ms) is read every `activity_interval`, an eighth of the idle
timeout between 1 and 5 s, and only then are buckets judged idle.  A takeover installs the
whole table in one transaction before the gratuitous ARP.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dlba.clienttable import ClientTable
from dlba.kernelpath import (
    ACTIVE,
    FAMILY,
    MISS_IN,
    MISS_OUT,
    TABLE,
    KernelProgram,
    absorb_activity,
    active_buckets,
    counters,
    frames_by_node,
    list_counters,
    wanted_map,
)
from dlba.packet.host import Host, HostError

log = Logger(namespace="dlba.packet")

SYNC_INTERVAL = 1.0
# The least time between two flushes of placed buckets.  A transaction costs about 0.45
# ms of CPU for one bucket and 0.75 ms for fifty; a frame Python forwards meanwhile about
# 6 us.  New connections at a thousand a second would otherwise cost a transaction each;
# a lone one still reaches the kernel on the next turn.
FLUSH_DELAY = 0.005


def activity_interval(idle_timeout: float) -> float:
    """How often the kernel's last-access times are read: often enough that a bucket is
    never judged idle more than an eighth of the timeout late or early."""
    return min(5.0, max(SYNC_INTERVAL, idle_timeout / 8))


class Runs(Protocol):
    """What `dlba.packet.nft.Nft` offers (a fake in the unit tests)."""

    @property
    def mechanism(self) -> str: ...

    def run(self, document: dict[str, Any]) -> dict[str, Any]: ...


class KernelFastPath:
    """The program, its map and the miss channel, for one term as scheduler."""

    def __init__(
        self, program: KernelProgram, table: ClientTable, nft: Runs, host: Host, clock: Any
    ) -> None:
        self.program = program
        self.table = table
        self.nft = nft
        self.host = host
        self.clock = clock
        self.installed: dict[int, int] = {}
        self.running = False
        self.transactions = 0
        self.errors = 0
        self._kernel: dict[str, int] = {}
        self._loop = LoopingCall(self.tick)
        self._activity_read = 0.0
        self._applied_version = -1
        self._loop.clock = clock
        self._soon: IDelayedCall | None = None
        self._flushed = float("-inf")  # when the last flush ran

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """The miss channel, then the whole program with every busy bucket in it."""
        self.host.veth_pair(MISS_IN, MISS_OUT)
        now = self.clock.seconds()
        wanted = wanted_map(self.table, now)
        self.nft.run(self.program.install(wanted))
        self.installed = wanted
        self._applied_version = self.table.version
        self._activity_read = now
        self.transactions += 1
        self.running = True
        self._loop.start(SYNC_INTERVAL, now=False)

    def stop(self) -> None:
        self.running = False
        if self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        try:
            self.nft.run(self.program.remove())
        except Exception as e:
            log.warn("cannot remove the fast path's table: {why}", why=str(e))
        try:
            self.host.delete_link(MISS_IN)
        except HostError as e:
            log.warn("cannot remove the miss channel: {why}", why=str(e))
        self.installed = {}

    def replace_program(self, program: KernelProgram) -> None:
        """Another set of nodes (one joined, a MAC changed) or idle timeout: the whole
        program again, in one transaction, with the buckets it forwards now.  The
        activity is read first: the new ``active`` set starts empty, and a bucket busy
        only since the last reading must not look idle at the next."""
        if program == self.program:
            return
        if self.running:
            self.read_activity()
        wanted = wanted_map(self.table, self._activity_read)
        self.nft.run(program.install(wanted))
        self.program = program
        self.installed = wanted
        self.transactions += 1

    # -- keeping the map -----------------------------------------------------------------

    def poke(self) -> None:
        """The client table changed (a miss placed a bucket): flush on the next turn, or
        FLUSH_DELAY after the last flush, with every bucket placed meanwhile."""
        if self.running and self._soon is None:
            wait = max(0.0, self._flushed + FLUSH_DELAY - self.clock.seconds())
            self._soon = self.clock.callLater(wait, self._flush)

    def _flush(self) -> None:
        self._soon = None
        self._flushed = self.clock.seconds()
        self.apply(wanted_map(self.table, self._activity_read))

    def tick(self) -> None:
        self.read_counters()
        now = self.clock.seconds()
        # The table's timeout: it is what a push changes first (the program follows at
        # the reload's nodes_changed).  Half a tick of slack: the last reading's time is
        # taken after its listing (tens of ms past its tick), and a 1 s pace must mean
        # every tick, not every other one.
        due = activity_interval(self.table.idle_timeout) - SYNC_INTERVAL / 2
        if now - self._activity_read >= due:
            self.sync()
        elif self.table.version != self._applied_version:
            self.apply(wanted_map(self.table, self._activity_read))

    def read_counters(self) -> None:
        """The kernel's frame counters, for the status table: a listing of the named
        counters only, about 7 ms (the whole table's, with the map and set, ~25 ms)."""
        if not self.running:
            return
        try:
            self._kernel = counters(self.nft.run(list_counters()))
        except Exception as e:
            self.errors += 1
            log.error("cannot read the fast path's counters: {why}", why=str(e))

    def sync(self) -> None:
        """Read the kernel's activity into the table, then bring the map up to date."""
        if self.running and self.read_activity():
            self.apply(wanted_map(self.table, self._activity_read))

    def read_activity(self) -> bool:
        """The kernel's last-access times into the table; whether that worked."""
        try:
            listing = self.nft.run(
                {
                    "nftables": [
                        {"list": {"set": {"family": FAMILY, "table": TABLE, "name": ACTIVE}}}
                    ]
                }
            )
            # Listed as of now (a listing of thousands takes tens of ms).
            now = self.clock.seconds()
            absorb_activity(self.table, active_buckets(listing), self.program.idle_timeout, now)
        except Exception as e:
            # Nothing is judged idle until a reading succeeds: the map keeps what it has
            # (a busy bucket dropped on stale times would move, breaking connections).
            self.errors += 1
            log.error("cannot read the fast path's state: {why}", why=str(e))
            return False
        self._activity_read = now
        return True

    def apply(self, wanted: dict[int, int]) -> None:
        self._applied_version = self.table.version
        changes = self.program.changes(self.installed, wanted)
        if not changes["nftables"]:
            return
        try:
            self.nft.run(changes)
        except Exception as e:
            # The kernel's map is unknown now: install it whole on the next sync.
            self.errors += 1
            log.error("nftables refused a bucket change: {why}; installing again", why=str(e))
            try:
                self.nft.run(self.program.install(wanted))
            except Exception as again:
                log.critical("cannot install the fast path again: {why}", why=str(again))
                return
        self.installed = wanted
        self.transactions += 1

    # -- the report ----------------------------------------------------------------------

    def row(self) -> dict[str, object]:
        k = self._kernel
        return {
            "kernel_forwarded": frames_by_node(k, self.program.nodes, self.program.own),
            "kernel_misses": k.get("misses", 0),
            "kernel_buckets": len(self.installed),
            "kernel_transactions": self.transactions,
            "kernel_errors": self.errors,
        }
