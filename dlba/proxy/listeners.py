"""Listeners that move: a reload rebinds a listener whose endpoint changed, in place.

A listener is a ``StreamServerEndpointService`` (what ``strports.service`` and the proxy
make).  Moving one binds the new endpoint first, with the same factory, and only then
stops the old listening port: ``stopListening`` closes the listening socket alone, so the
connections it accepted go on, and the factory never sees its last port go (no
``doStop``).  If the new endpoint cannot be bound, the listener stays where it was.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint

from dlba.proxy.transport import WriteThroughServerEndpoint, listen_endpoint


class BoundListener(StreamServerEndpointService):
    """A listener whose port was bound before it joined its parent, so that a bind that
    fails never leaves a half-started service behind (a reload opening a listener)."""

    def __init__(
        self, port: IListeningPort, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        super().__init__(endpoint, factory)
        self._waitingForPort = succeed(port)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)  # bound already


def endpoint_like(old: Any, reactor: Any, description: str) -> IStreamServerEndpoint:
    """An endpoint for ``description`` of the kind ``old`` is: the proxy's listeners write
    through (``listen_endpoint``), the others are Twisted's own."""
    if isinstance(old, WriteThroughServerEndpoint):
        return listen_endpoint(reactor, description)
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint


def listening_port(svc: StreamServerEndpointService) -> IListeningPort | None:
    """The port ``svc`` listens on, once bound."""
    found: list[IListeningPort] = []

    def seen(port: IListeningPort) -> IListeningPort:
        found.append(port)
        return port

    waiting = svc._waitingForPort
    if waiting is not None:
        waiting.addCallback(seen)
    return found[0] if found else None


def bind(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> Deferred[IListeningPort]:
    return endpoint.listen(factory)


def move(svc: StreamServerEndpointService, endpoint: IStreamServerEndpoint) -> Deferred[Any]:
    """Make ``svc`` listen on ``endpoint`` instead, new port first; fires with the new
    port, or fails (``svc`` still listening where it was) if it cannot be bound."""
    old = svc._waitingForPort
    d = bind(endpoint, svc.factory)

    def bound(port: IListeningPort) -> IListeningPort:
        svc.endpoint = endpoint
        svc._waitingForPort = succeed(port)  # what stopService will stop
        if old is not None:
            old.addCallback(_stop_listening).addErrback(lambda _: None)
        return port

    return d.addCallback(bound)


def _stop_listening(port: IListeningPort | None) -> object:
    return port.stopListening() if port is not None else None


def add(
    parent: IServiceCollection,
    name: str,
    endpoint: IStreamServerEndpoint,
    factory: IProtocolFactory,
) -> Deferred[IListeningPort]:
    """Bind ``endpoint`` and, once bound, add a listener called ``name`` to ``parent``."""

    def bound(port: IListeningPort) -> IListeningPort:
        svc = BoundListener(port, endpoint, factory)
        svc.setName(name)
        svc.setServiceParent(parent)
        return port

    return bind(endpoint, factory).addCallback(bound)
