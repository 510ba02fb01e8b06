"""The proxy service: the HTTP and HTTPS listeners of one node around one ``ProxyCore``."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger

from dlba.config import Config
from dlba.loading import FeedbackController
from dlba.proxy.accesslog import AccessLog
from dlba.proxy.core import ProxyCore
from dlba.proxy.front import ProxyFactory
from dlba.proxy.transport import listen_endpoint
from dlba.reload import apply_backends, plan_backends
from dlba.routing import Router, build_router, controlled
from dlba.tables import BackendState, BackendStatusTable

log = Logger(namespace="dlba.proxy.service")  # stable, wherever this module moves


class UnknownBackend(KeyError):
    """No back end has that number."""


class ProxyService(MultiService):
    """The HTTP and HTTPS listeners around one ``ProxyCore``.

    Stopping closes the listeners at once, lets requests in flight finish for up to
    ``shutdown_grace`` seconds, then cuts what is left.
    """

    def __init__(
        self, core: ProxyCore, grace: float, clock: IReactorTime, tls_wrap: Any = None
    ) -> None:
        super().__init__()
        self.core = core
        self.grace = grace
        self.clock = clock
        self.tls_wrap = tls_wrap  # factory -> the same under TLS, for https

    def factory_for(self, name: str) -> IProtocolFactory:
        """The factory of a new listener called ``name`` ("http" or "https")."""
        secure = name == "https"
        front = ProxyFactory(self.core, secure, self.core.limits.max_client_connections)
        factory: IProtocolFactory = self.tls_wrap(front) if secure else front
        return factory

    def reload(self, old: Config, new: Config) -> int:
        """Take ``new`` (the node checked that it may): back-end rows, pools and rules,
        feedback controllers, limits, cookie and HSTS.  Nothing here touches a client
        connection: requests in flight finish on the rows and pools they started with.
        Returns how many waiting requests moved to the new pools."""
        core = self.core
        plan = plan_backends(old, new)
        retired = apply_backends(core.status, plan, new)
        router = build_router(new, core.status, core.router)
        # The limits first, so that the slots handed out below respect them.
        core.dispatch.reconfigure(controlled(new), set(plan.replaced) | set(plan.added))
        moved = core.reload(
            router,
            retired,
            new.limits,
            cookie_name=new.persistence.cookie,
            hsts=new.tls.hsts,
        )
        self.grace = new.limits.shutdown_grace
        for front in self.fronts():
            front.max_connections = new.limits.max_client_connections
        return moved

    def fronts(self) -> list[ProxyFactory]:
        """The client-side factories of the listeners, under TLS or not."""
        found = []
        for listener in self:
            factory = getattr(listener, "factory", None)
            factory = getattr(factory, "wrappedFactory", factory)
            if isinstance(factory, ProxyFactory):
                found.append(factory)
        return found

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
    for number, (ceiling, target) in controlled(config).items():
        core.dispatch.control(number, FeedbackController(ceiling, target))
    proxy = ProxyService(core, limits.shutdown_grace, clock, tls_wrap)
    proxy.setName("proxy")
    for name, description in listen.items():
        factory = proxy.factory_for(name)
        # strports.service, but with connections that write through; under https the
        # TLS layer sits on the factory, so its ciphertext writes through as well.
        svc = StreamServerEndpointService(listen_endpoint(reactor, description), factory)
        svc._raiseSynchronously = True  # as strports: a port in use fails startService
        svc.setName(name)
        svc.setServiceParent(proxy)
    return proxy
