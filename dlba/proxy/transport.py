"""Write-through TCP transports: ``write()`` sends at once when nothing is waiting.

Twisted's ``FileDescriptor.write`` only buffers and registers for writability; the bytes
leave on the next reactor turn, in ``doWrite``, which then unregisters.  Under load that
is two ``epoll_ctl`` calls and a reactor pass per write, most of them for a send that
would have gone through whole at once.  Here ``write()`` tries ``socket.send`` itself when
the transport's buffer is empty and no flush, close, abort or paused producer is pending,
and hands only what the kernel refused to Twisted's ordinary buffered path, which keeps
``startWriting``, producer backpressure and close-after-flush exactly as they were.

A send that fails because the connection is gone is not reported from inside ``write()``
(callers do not expect ``connectionLost`` under them): the data is buffered as usual and
the next event the reactor sees on the socket reports the loss, as ``doWrite`` would have.

Only real posix reactors get these; memory and clock reactors in tests keep their own
``listenTCP``/``connectTCP``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, error, main, tcp
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IConnector,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

# The kernel's send buffer is full: buffer, and let doWrite send when there is room.
_TRY_LATER = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOBUFS})


class _WriteThrough(tcp.Connection):
    """The write-through ``write``/``writeSequence``, mixed in before ``tcp.Server`` or
    ``tcp.Client``."""

    def write(self, data: bytes) -> None:
        if (
            self._tempDataLen
            or self.dataBuffer
            or not self.connected
            or self.disconnecting  # doWrite closes once flushed: leave that path alone
            or self._writeDisconnecting
            or self._aborting
            or self.TLS  # startTLS: the TLS layer encrypts first, then writes through its bypass
            or data.__class__ is not bytes  # let Twisted reject what is not bytes
            or not data
            # A pull producer is asked for more by doWrite, and a paused push producer
            # resumed by it: both need the buffered path to run.
            or (self.producer is not None and (self.producerPaused or not self.streamingProducer))
        ):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except OSError as e:
            if e.errno not in _TRY_LATER:
                self._lost_at_next_event()
            sent = 0
        if sent < len(data):
            super().write(data[sent:] if sent else data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self.TLS:
            super().writeSequence(iovec)
        else:
            # One send for the lot: a head and a body chunk should leave in one segment.
            self.write(b"".join(iovec))

    def _lost_at_next_event(self) -> None:
        """The send failed for good: make the reactor report the loss on its next event.

        The send has consumed the socket's error, so a later ``recv`` would read a plain
        EOF and the loss would pass for a clean (or half-) close.  The caller buffers the
        data, which registers for writability; a dead socket is always writable, so the
        next poll calls ``doRead`` or ``doWrite``, and both now say the connection was
        lost, through the reactor's usual disconnect path, as ``abortConnection`` does.
        """
        read = self.doRead

        def doRead() -> object:
            why = read()  # input that arrived before the reset is still delivered
            return main.CONNECTION_LOST if isinstance(why, error.ConnectionDone) else why

        self.doRead = doRead  # type: ignore[method-assign,assignment]
        self.doWrite = lambda: main.CONNECTION_LOST  # type: ignore[method-assign]


class WriteThroughServer(_WriteThrough, tcp.Server):
    """An accepted connection that writes through."""


class WriteThroughClient(_WriteThrough, tcp.Client):
    """An outgoing connection that writes through."""


class WriteThroughPort(tcp.Port):
    """A listening TCP port whose connections write through."""

    transport = WriteThroughServer


class WriteThroughConnector(tcp.Connector):
    """Connects with a ``WriteThroughClient``."""

    def _makeTransport(self) -> WriteThroughClient:
        return WriteThroughClient(self.host, self.port, self.bindAddress, self, self.reactor)


def writes_through(reactor: object) -> bool:
    """Whether ``reactor`` runs real file descriptors, so these transports can work."""
    return isinstance(reactor, PosixReactorBase)


def listen_tcp(
    reactor: Any, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
) -> IListeningPort:
    """``reactor.listenTCP`` with write-through connections where the reactor allows."""
    if not writes_through(reactor):
        listening: IListeningPort = reactor.listenTCP(port, factory, backlog, interface)
        return listening
    # As PosixReactorBase.listenTCP: a failure to bind raises CannotListenError here.
    p = WriteThroughPort(port, factory, backlog, interface, reactor)
    p.startListening()
    return p


def connect_tcp(
    reactor: Any,
    host: str,
    port: int,
    factory: ClientFactory[Any],
    timeout: float = 30.0,
    bindAddress: tuple[str, int] | None = None,
) -> IConnector:
    """``reactor.connectTCP`` with a write-through connection where the reactor allows."""
    if not writes_through(reactor):
        connector: IConnector = reactor.connectTCP(host, port, factory, timeout, bindAddress)
        return connector
    c = WriteThroughConnector(host, port, factory, timeout, bindAddress, reactor)
    c.connect()
    return c


@implementer(IStreamServerEndpoint)
class WriteThroughServerEndpoint:
    """A TCP server endpoint (IPv4 or IPv6) listening with ``listen_tcp``."""

    def __init__(self, reactor: Any, port: int, backlog: int, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        # As TCP4ServerEndpoint.listen: an error to bind fails the Deferred at once.
        return defer.execute(
            listen_tcp, self.reactor, self.port, protocolFactory, self.backlog, self.interface
        )


def listen_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``serverFromString(reactor, description)``, writing through for ``tcp:``/``tcp6:``.

    Twisted's own parser reads the description, so its syntax and errors stay Twisted's;
    anything not plain TCP (``unix:``, ``ssl:``, ``systemd:``...) is returned as parsed.
    """
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    if writes_through(reactor) and isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return WriteThroughServerEndpoint(
            reactor, endpoint._port, endpoint._backlog, endpoint._interface
        )
    return endpoint
