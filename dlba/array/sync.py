"""The sync service's protocol: AMP inside mutual TLS, on ``listen.sync``.

The protocol only checks who the peer is and what it may ask, then hands each command to
the handler (``SyncHandler``), which decides.  A peer whose certificate names neither a
node of the array nor ``admin`` is refused and logged with its address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from dlba.array import commands as c
from dlba.array.peers import ADMIN, identity

log = Logger(namespace="dlba.array.sync")


class SyncHandler(Protocol):
    """What answers the commands: the node's control plane."""

    def ping(self, node: int, scheduler: int, term: int) -> tuple[int, int, int]: ...
    def who_is_scheduler(self) -> tuple[int, int]: ...
    def client_table(self, since_version: int, table_id: str) -> dict[str, Any]: ...
    def push_config(self, text: str, serial: int) -> str: ...
    def commit_config(self, digest: str) -> int: ...
    def config_text(self) -> tuple[str, int]: ...
    def status(self) -> bytes: ...
    def set_backend_state(self, pool: str, backend: int, state: str, grace: float) -> str: ...
    def set_node_state(self, node: int, state: str) -> str: ...
    def set_ticket_keys(self, keys: bytes) -> str: ...


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "?"


@implementer(IHandshakeListener)
class SyncProtocol(c.QuietAMP):
    """One control-plane connection, from a peer node or from dlba-ctl."""

    def __init__(self, handler: SyncHandler, nodes: Callable[[], Iterable[int]]) -> None:
        super().__init__()
        self.handler = handler
        self.nodes = nodes
        self.peer_identity: str | None = None  # set once the TLS handshake is done
        self.peer = "?"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer = _peer(self.transport)

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.peer_identity = identity(cert, self.nodes())
        if self.peer_identity is None:
            log.warn(
                "sync: refused {peer}: its certificate names neither a node of the array nor admin",
                peer=self.peer,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.peer_identity is None and reason is not None:
            why = reason.getErrorMessage()
            if reason.check(ConnectionDone) is None:
                log.warn("sync: refused {peer}: {why}", peer=self.peer, why=why)
        super().connectionLost(reason)

    def _allowed(self, command: type[amp.Command]) -> None:
        if self.peer_identity is None:
            raise c.NotAllowed("no verified certificate")
        if self.peer_identity != ADMIN and command not in c.NODE_COMMANDS:
            raise c.NotAllowed(
                f"{command.__name__} needs the admin certificate; {self.peer_identity} "
                "presented its node certificate"
            )

    @c.Ping.responder
    def ping(self, node: int, scheduler: int, term: int) -> dict[str, int]:
        self._allowed(c.Ping)
        n, s, t = self.handler.ping(node, scheduler, term)
        return {"node": n, "scheduler": s, "term": t}

    @c.WhoIsScheduler.responder
    def who_is_scheduler(self) -> dict[str, int]:
        self._allowed(c.WhoIsScheduler)
        node, term = self.handler.who_is_scheduler()
        return {"node": node, "term": term}

    @c.GetClientTable.responder
    def get_client_table(self, since_version: int, table_id: str) -> dict[str, Any]:
        self._allowed(c.GetClientTable)
        return self.handler.client_table(since_version, table_id)

    @c.PushConfig.responder
    def push_config(self, text: str, serial: int) -> dict[str, str]:
        self._allowed(c.PushConfig)
        return {"digest": self.handler.push_config(text, serial)}

    @c.CommitConfig.responder
    def commit_config(self, digest: str) -> dict[str, int]:
        self._allowed(c.CommitConfig)
        return {"serial": self.handler.commit_config(digest)}

    @c.GetConfig.responder
    def get_config(self) -> dict[str, Any]:
        self._allowed(c.GetConfig)
        text, serial = self.handler.config_text()
        return {"text": text, "serial": serial}

    @c.GetStatus.responder
    def get_status(self) -> dict[str, bytes]:
        self._allowed(c.GetStatus)
        return {"report": self.handler.status()}

    @c.SetBackendState.responder
    def set_backend_state(
        self, pool: str, backend: int, state: str, grace: float
    ) -> dict[str, str]:
        self._allowed(c.SetBackendState)
        return {"state": self.handler.set_backend_state(pool, backend, state, grace)}

    @c.SetNodeState.responder
    def set_node_state(self, node: int, state: str) -> dict[str, str]:
        self._allowed(c.SetNodeState)
        return {"state": self.handler.set_node_state(node, state)}

    @c.SetTicketKeys.responder
    def set_ticket_keys(self, keys: bytes) -> dict[str, str]:
        self._allowed(c.SetTicketKeys)
        if self.peer_identity == ADMIN:
            # Only the scheduler makes ticket keys; dlba-ctl has no business with them.
            raise c.NotAllowed("ticket keys come from the scheduler's node certificate")
        return {"generation": self.handler.set_ticket_keys(keys)}


class SyncFactory(Factory):
    noisy = False

    def __init__(self, handler: SyncHandler, nodes: Callable[[], Iterable[int]]) -> None:
        self.handler = handler
        self.nodes = nodes

    def buildProtocol(self, addr: Any) -> SyncProtocol:
        p = SyncProtocol(self.handler, self.nodes)
        p.factory = self
        return p
