"""The proxy service: the HTTP and HTTPS listeners of one node around one ``ProxyCore``."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dlba.config import Config
from dlba.loading import FeedbackController, Target
from dlba.proxy.accesslog import AccessLog
from dlba.proxy.core import ProxyCore
from dlba.proxy.front import ProxyFactory
from dlba.proxy.transport import listen_endpoint
from dlba.routing import Router
from dlba.tables import BackendState, BackendStatusTable

log = Logger(namespace="dlba.proxy.service")  # stable, wherever this module moves


class UnknownBackend(KeyError):
    """No back end has that number."""


class ProxyService(MultiService):
    """The HTTP and HTTPS listeners around one ``ProxyCore``.

    Stopping closes the listeners at once, lets requests in flight finish for up to
    ``shutdown_grace`` seconds, then cuts what is left.
    """

    def __init__(self, core: ProxyCore, grace: float, clock: IReactorTime) -> None:
        super().__init__()
        self.core = core
        self.grace = grace
        self.clock = clock

    def startService(self) -> None:
        self.core.start()
        super().startService()

    # -- runtime control (the control plane calls these over AMP) --------------------

    def _backend(self, number: int) -> BackendState:
        backend = self.core.status.get(number)
        if backend is None:
            raise UnknownBackend(number)
        return backend

    def enable_backend(self, number: int) -> None:
        """Let back end ``number`` take new requests and sessions again."""
        self._backend(number).enable()
        log.info("back end {number} enabled", number=number)

    def disable_backend(self, number: int) -> None:
        """Send back end ``number`` nothing more; its sessions move at once."""
        self._backend(number).disable()
        log.info("back end {number} disabled", number=number)

    def drain_backend(self, number: int, grace: float) -> None:
        """No new sessions for back end ``number``; its sessions stay ``grace`` seconds more."""
        self._backend(number).drain(self.clock.seconds() + grace)
        log.info("back end {number} draining for {grace}s", number=number, grace=grace)

    def stopService(self) -> Deferred[Any]:
        listeners = super().stopService()
        core = self.core
        core.drain()
        open_now = len(core.connections)
        if open_now:
            log.info(
                "stopping: {count} client connections may finish within {grace}s",
                count=open_now,
                grace=self.grace,
            )
        drained: Deferred[Any] = core.when_all_closed()
        drained.addTimeout(self.grace, self.clock, onTimeoutCancel=lambda result, timeout: None)

        def cut(_: object) -> None:
            if core.connections:
                log.warn(
                    "grace period over: cutting {count} connections", count=len(core.connections)
                )
            core.abort_all()
            core.stop()

        return gatherResults([maybeDeferred(lambda: listeners), drained]).addBoth(cut)


def make_proxy_service(
    config: Config,
    table: BackendStatusTable,
    router: Router,
    reactor: Any,  # provides IReactorTCP and IReactorTime
    *,
    listen: dict[str, str],
    tls_wrap: Any = None,
) -> ProxyService:
    """The proxy with its listeners: ``listen`` maps "http"/"https" to endpoint strings;
    ``tls_wrap(factory)`` puts TLS under the https listener's factory."""
    clock: IReactorTime = reactor
    limits = config.limits
    access_log = AccessLog(config.log.access_log) if config.log.access_log else None
    core = ProxyCore(
        router,
        table,
        limits,
        reactor,
        clock,
        access_log,
        config.persistence.cookie,
        hsts=config.tls.hsts,
    )
    for pc in config.pools:
        if pc.adaptive:
            for b in pc.backends:
                if b.number not in core.dispatch.controllers:
                    target: Target = "throughput" if pc.target == "throughput" else "latency"
                    core.dispatch.control(b.number, FeedbackController(pc.max_concurrent, target))
    proxy = ProxyService(core, limits.shutdown_grace, clock)
    proxy.setName("proxy")
    for name, description in listen.items():
        factory: Any = ProxyFactory(core, name == "https", limits.max_client_connections)
        if name == "https":
            factory = tls_wrap(factory)
        # strports.service, but with connections that write through; under https the
        # TLS layer sits on the factory, so its ciphertext writes through as well.
        svc = StreamServerEndpointService(listen_endpoint(reactor, description), factory)
        svc._raiseSynchronously = True  # as strports: a port in use fails startService
        svc.setName(name)
        svc.setServiceParent(proxy)
    return proxy
