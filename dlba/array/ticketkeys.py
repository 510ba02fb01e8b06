"""The array's session-ticket keys: made and rotated on the scheduler, pushed to every node.

Each round (a second) the scheduler rotates its ring (a new key a whole rotation before
it starts sealing) and pushes the whole ring to every other node with ``SetTicketKeys``;
a few hundred bytes a second per node, so no node needs to be tracked: one that missed a
push, restarted or just joined has the keys within a round.  A node that is not
scheduler only merges what it is pushed (:mod:`dlba.ticketkeys` says why a union is
safe), and until then seals no tickets, so it never hands out one the others cannot open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dlba.array import commands as c

log = Logger(namespace="dlba.array.ticketkeys")

ROUND = 1.0


class TicketKeyService(Service):
    name = "ticket-keys"

    def __init__(
        self,
        keys: Callable[[], Any],  # the node's dlba.tls.TicketKeys now, or None
        is_scheduler: Callable[[], bool],
        peers: Callable[[], Iterable[int]],
        client: Any,  # dlba.client.ArrayClient, or None: a node alone
        reactor: Any,
        interval: float = ROUND,
    ) -> None:
        self.keys = keys
        self.is_scheduler = is_scheduler
        self.peers = peers
        self.client = client
        self.reactor = reactor
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._pushing: set[int] = set()
        self.pushes = 0

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.round)
        loop.clock = self.reactor
        loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("ticket key round failed", f)
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.client is not None:
            return self.client.close()
        return None

    def round(self) -> None:
        keys = self.keys()
        if keys is None or not self.is_scheduler():
            return
        if keys.rotate():
            log.info(
                "session ticket keys rotated: {count} keys, generation {generation}",
                count=len(keys.ring),
                generation=keys.ring.generation,
            )
        if self.client is None:
            return
        ring = keys.ring.to_bytes()
        for node in self.peers():
            self._push(node, ring)

    def _push(self, node: int, ring: bytes) -> None:
        if node in self._pushing:
            return  # the last one is still out
        self._pushing.add(node)

        async def go() -> None:
            try:
                await self.client.call(node, c.SetTicketKeys, keys=ring)
                self.pushes += 1
            except Exception as e:
                # A node that is down hears from the sweep and the pings; not a warning here.
                log.debug("ticket keys to node {node}: {why}", node=node, why=str(e))
            finally:
                self._pushing.discard(node)

        ensureDeferred(go())
