"""Failover (DESIGN.md §7): the Twisted side of ``dlba.election`` and of table sync.

Every ``ping_interval`` each node pings every peer over the control plane (``Ping``
carries its view), feeds the answers and the misses to the election, and does what the
election says: the winner takes over the client table it has (every bucket's last access
set to now, a new table id), starts the sweep and the packet scheduler; a node that
stands down stops them.  A node that is not scheduler pulls the client table's changes
from the scheduler by version each round: k changed buckets cost O(k) bytes.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dlba.array import commands as c
from dlba.array.sweep import SweepService
from dlba.client import ArrayClient
from dlba.clienttable import ClientTable
from dlba.config import Config
from dlba.election import (
    Action,
    AskScheduler,
    BecomeScheduler,
    Election,
    Follow,
    Ping,
    StandDown,
)
from dlba.tables import NodeStatusTable

log = Logger(namespace="dlba.array.failover")

NOBODY = -1  # "no scheduler" on the wire


class PacketScheduler(Protocol):
    """What failover tells the packet scheduler (the packet issue implements it)."""

    def start(self, term: int) -> None: ...
    def stop(self) -> None: ...


class RecordingPacketScheduler:
    """Until the packet scheduler exists: remembers what it was told, does nothing."""

    def __init__(self) -> None:
        self.told: list[tuple[str, int]] = []

    def start(self, term: int) -> None:
        self.told.append(("start", term))

    def stop(self) -> None:
        self.told.append(("stop", 0))


def _wire(scheduler: int | None) -> int:
    return NOBODY if scheduler is None else scheduler


def _unwire(scheduler: int) -> int | None:
    return None if scheduler < 0 else scheduler


class FailoverService(Service):
    name = "failover"

    def __init__(
        self,
        election: Election,
        client: ArrayClient,
        table: ClientTable,
        nodes: NodeStatusTable,
        sweep: SweepService,
        reactor: Any,
        packets: PacketScheduler | None = None,
    ) -> None:
        self.election = election
        self.client = client
        self.table = table
        self.nodes = nodes
        self.sweep = sweep
        self.reactor = reactor
        self.packets: PacketScheduler = packets or RecordingPacketScheduler()
        self._loop: LoopingCall | None = None
        self._pinging: set[int] = set()
        self._syncing = False
        self.changes_pulled = 0  # buckets received by table sync (the O(k) claim, checked)

    # -- the view the control plane answers with -------------------------------------------

    def view(self) -> tuple[int, int]:
        return _wire(self.election.scheduler), self.election.term

    def pinged_by(self, node: int, scheduler: int, term: int) -> None:
        now = self.reactor.seconds()
        self.do(self.election.pinged_by(node, _unwire(scheduler), term, now))

    def nodes_changed(self, config: Config) -> tuple[int, ...]:
        """A reload's ``[[array.node]]``: nodes appended join the election (``reload``
        refuses anything else while it runs), and the pings reach them at the addresses
        of ``config``.  Returns the nodes that joined."""
        added = self.election.add_nodes(n.number for n in config.array.nodes)
        self.client.config = config
        for number in added:
            log.info("node {joined} joins the election", joined=number)
        return added

    # -- life cycle -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.round)
        loop.clock = self.reactor
        loop.start(self.election.ping_interval, now=True).addErrback(
            lambda f: log.failure("failover round failed", f)
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self.client.close()

    def round(self) -> None:
        now = self.reactor.seconds()
        self.do(self.election.tick(now))
        scheduler = self.election.scheduler
        if scheduler is not None and scheduler != self.election.own:
            self._sync(scheduler)

    # -- doing what the election says -------------------------------------------------------

    def do(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Ping):
                self._ping(action)
            elif isinstance(action, AskScheduler):
                for node in action.nodes:
                    self._ask(node)
            elif isinstance(action, BecomeScheduler):
                self._become(action.term)
            elif isinstance(action, StandDown):
                self._stand_down(action.new_scheduler, action.term)
            elif isinstance(action, Follow):
                log.info(
                    "following scheduler {scheduler} (term {term})",
                    scheduler=action.scheduler,
                    term=action.term,
                )

    def _ping(self, action: Ping) -> None:
        node = action.node
        if node in self._pinging:
            return  # the last one is still out: it counts as missed at the next round
        self._pinging.add(node)

        async def go() -> None:
            try:
                answer = await self.client.call(
                    node,
                    c.Ping,
                    node=self.election.own,
                    scheduler=_wire(action.scheduler),
                    term=action.term,
                )
            except Exception:
                actions = self.election.ping_missed(node, self.reactor.seconds())
            else:
                actions = self.election.pong(
                    node, _unwire(answer["scheduler"]), answer["term"], self.reactor.seconds()
                )
            finally:
                self._pinging.discard(node)
            if self.running:
                self.do(actions)

        ensureDeferred(go())

    def _ask(self, node: int) -> None:
        async def go() -> None:
            try:
                scheduler, term = await self.client.who_is_scheduler(node)
            except Exception:
                return  # the pings will count it
            if self.running:
                now = self.reactor.seconds()
                self.do(self.election.peer_says(node, _unwire(scheduler), term, now))

        ensureDeferred(go())

    def _become(self, term: int) -> None:
        now = self.reactor.seconds()
        own = self.election.own
        previous = [
            n.number for n in self.nodes if n.number != own and not self.election.live(n.number)
        ]
        self.table.take_over(now, table_id=f"{own}:{term}")
        for number in previous:
            # The old scheduler (and any node the pings count dead) gets no buckets until
            # the sweep sees it answer again.
            row = self.nodes.get(number)
            if row is not None and not row.failed:
                row.failed = True
                self.table.node_failed(number)
        self.sweep.activate()
        self.packets.start(term)
        log.warn("this node is scheduler now (term {term})", term=term)

    def _stand_down(self, new_scheduler: int | None, term: int) -> None:
        self.sweep.deactivate()
        self.packets.stop()
        log.warn(
            "standing down: node {scheduler} is scheduler (term {term})",
            scheduler=new_scheduler,
            term=term,
        )

    # -- table sync ---------------------------------------------------------------------

    def _sync(self, scheduler: int) -> None:
        if self._syncing:
            return
        self._syncing = True
        table = self.table

        async def go() -> None:
            try:
                since, table_id = table.version, table.table_id
                got = await self.client.client_table(scheduler, since, table_id)
                if got.full:
                    owners = [got.buckets.get(b, -1) for b in range(got.size)]
                    table.load(got.version, owners, table_id=got.table_id)
                    self.changes_pulled += got.size
                elif table.apply_changes(
                    got.version, got.buckets, since=since, table_id=got.table_id
                ):
                    self.changes_pulled += len(got.buckets)
            except Exception as e:
                log.debug("table sync from {scheduler}: {why}", scheduler=scheduler, why=str(e))
            finally:
                self._syncing = False

        ensureDeferred(go())
