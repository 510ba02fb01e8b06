"""A proxy wired to a memory reactor: client and back-end connections are StringTransports."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from dlba.config import LimitsSection
from dlba.policy import make_policy
from dlba.proxy.core import ProxyCore
from dlba.proxy.front import FrontProtocol, ProxyFactory
from dlba.proxy.upstream import BackendConnection
from dlba.routing import Pool, Router
from dlba.tables import BackendState, BackendStatusTable


class ProxyHarness:
    def __init__(
        self,
        backends: int = 2,
        *,
        policy: str = "round-robin",
        keepalive: bool = True,
        secure: bool = False,
        max_concurrent: int = 0,
        queue_limit: int = 1024,
        queue_timeout: float = 5.0,
        hsts: str | None = None,
        **limits: float,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.table = BackendStatusTable(
            BackendState(i + 1, "127.0.0.1", 9000 + i + 1, limit=max_concurrent)
            for i in range(backends)
        )
        self.limits = LimitsSection(**limits)  # type: ignore[arg-type]
        pool = Pool(
            "p",
            list(self.table),
            make_policy(policy),
            keepalive=keepalive,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
        )
        self.pool = pool
        self.core = ProxyCore(
            Router([pool]), self.table, self.limits, self.reactor, self.reactor, hsts=hsts
        )
        self.factory = ProxyFactory(self.core, secure, self.limits.max_client_connections)
        self.connects_seen = 0

    def client(self, ip: str = "192.0.2.7") -> tuple[FrontProtocol, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", ip, 40000))
        assert proto is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def pending_connects(self) -> list[tuple[str, int]]:
        return [(c[0], c[1]) for c in self.reactor.tcpClients[self.connects_seen :]]

    def accept_backend(self) -> tuple[BackendConnection, StringTransport, int]:
        """Complete the oldest connection attempt not yet answered."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.connects_seen]
        self.connects_seen += 1
        conn = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert isinstance(conn, BackendConnection)
        transport = StringTransport()
        conn.makeConnection(transport)
        return conn, transport, port

    def refuse_backend(self, reason: Exception) -> int:
        from twisted.python.failure import Failure

        _host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.connects_seen]
        self.connects_seen += 1
        factory.clientConnectionFailed(None, Failure(reason))  # type: ignore[arg-type]
        return port
