"""Services of one node: the proxy's listeners with their graceful stop, and the node itself."""

from __future__ import annotations

import re
from typing import Any

from twisted.application import strports
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger

from dlba.accesslog import AccessLog
from dlba.config import Config, PersistenceSection, PoolConfig
from dlba.interfaces import IBackendPolicy
from dlba.loading import FeedbackController, Target
from dlba.policy import CookiePolicy, RoundRobin, SessionPolicy, UrlHashPolicy, make_policy
from dlba.proxy import ProxyCore, ProxyFactory
from dlba.routing import Pool, Router, Rule
from dlba.sessions import SessionTable
from dlba.status import StatusFactory
from dlba.tables import BackendState, BackendStatusTable


def bind_to(description: str, ip: str | None) -> str:
    """A tcp listener without ``interface=`` binds to this node's own ip (DESIGN.md §10)."""
    if ip is None or not re.match(r"tcp6?:", description) or "interface=" in description:
        return description
    return f"{description}:interface={ip.replace(':', chr(92) + ':')}"


def build_status_table(config: Config) -> BackendStatusTable:
    table = BackendStatusTable()
    for pool in config.pools:
        for b in pool.backends:
            table.add(
                BackendState(b.number, b.host, b.port, b.weight, b.enabled, pool.max_concurrent)
            )
    return table


def build_policy(pool: PoolConfig, persistence: PersistenceSection) -> IBackendPolicy:
    """The policy a pool's config names; persistence falls back to weighted round-robin."""
    if pool.policy == "cookie":
        return CookiePolicy(RoundRobin(), persistence.cookie, persistence.session_cookies)
    if pool.policy == "session":
        table = SessionTable(persistence.session_table_size, persistence.session_ttl)
        return SessionPolicy(
            RoundRobin(), table, persistence.session_cookies, persistence.session_params
        )
    if pool.policy == "url-hash":
        return UrlHashPolicy(with_query=pool.hash_query)
    return make_policy(pool.policy)


def build_router(config: Config, table: BackendStatusTable) -> Router:
    pools = []
    for pc in config.pools:
        rows = [table.get(b.number) for b in pc.backends]
        pools.append(
            Pool(
                pc.name,
                [r for r in rows if r is not None],
                build_policy(pc, config.persistence),
                keepalive=pc.backend_keepalive,
                queue_limit=pc.queue_limit,
                queue_timeout=pc.queue_timeout,
            )
        )
    by_name = {p.name: p for p in pools}
    rules = [
        Rule(by_name[rc.pool], rc.host, rc.path_prefix, rc.header, rc.cookie) for rc in config.rules
    ]
    return Router(pools, rules)


class UnknownBackend(KeyError):
    """No back end has that number."""


class ProxyService(MultiService):
    """The HTTP and HTTPS listeners around one ``ProxyCore``.

    Stopping closes the listeners at once, lets requests in flight finish for up to
    ``shutdown_grace`` seconds, then cuts what is left.
    """

    log = Logger()

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
        self.log.info("back end {number} enabled", number=number)

    def disable_backend(self, number: int) -> None:
        """Send back end ``number`` nothing more; its sessions move at once."""
        self._backend(number).disable()
        self.log.info("back end {number} disabled", number=number)

    def drain_backend(self, number: int, grace: float) -> None:
        """No new sessions for back end ``number``; its sessions stay ``grace`` seconds more."""
        self._backend(number).drain(self.clock.seconds() + grace)
        self.log.info("back end {number} draining for {grace}s", number=number, grace=grace)

    def stopService(self) -> Deferred[Any]:
        listeners = super().stopService()
        core = self.core
        core.drain()
        open_now = len(core.connections)
        if open_now:
            self.log.info(
                "stopping: {count} client connections may finish within {grace}s",
                count=open_now,
                grace=self.grace,
            )
        drained: Deferred[Any] = core.when_all_closed()
        drained.addTimeout(self.grace, self.clock, onTimeoutCancel=lambda result, timeout: None)

        def cut(_: object) -> None:
            if core.connections:
                self.log.warn(
                    "grace period over: cutting {count} connections", count=len(core.connections)
                )
            core.abort_all()
            core.stop()

        return gatherResults([maybeDeferred(lambda: listeners), drained]).addBoth(cut)


class NodeService(MultiService):
    """Everything one ``twistd dlba`` process runs, composed from the config."""

    log = Logger(namespace="dlba.node")

    def __init__(self, config: Config, reactor: Any, json_log: ILogObserver | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._json_log = json_log

    def setServiceParent(self, parent: IServiceCollection) -> None:  # type: ignore[override]
        # twistd asks the application for an ILogObserver before it starts logging.
        if self._json_log is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._json_log)
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        for svc in self._listeners():
            waiting = getattr(svc, "_waitingForPort", None)
            if waiting is not None:
                waiting.addCallback(self._announce_when_running, svc.name)

    def _listeners(self) -> list[Any]:
        found = []
        for svc in self:
            found += list(svc) if isinstance(svc, MultiService) else [svc]
        return found

    def _announce_when_running(self, port: Any, name: str) -> Any:
        # twistd binds before reactor.run(); signal handlers exist only once it runs, and a
        # supervisor may send SIGTERM as soon as it reads "listening".
        self.reactor.callWhenRunning(self._announce, port, name)
        return port

    def _announce(self, port: Any, name: str) -> Any:
        address = port.getHost()
        # Tests and operators wait for this line; its fields are the contract.
        self.log.info(
            "listening: {listener} on {host}:{port}",
            listener=name,
            host=getattr(address, "host", ""),
            port=getattr(address, "port", 0),
        )
        return port


def make_node_service(
    config: Config,
    reactor: Any,  # provides IReactorCore, IReactorTCP and IReactorTime
    *,
    tls_context: Any = None,
    extra: list[tuple[str, str, Any]] = (),  # type: ignore[assignment]
    json_log: ILogObserver | None = None,
) -> NodeService:
    """Wire the node.  ``extra``: (name, endpoint, factory) listeners, e.g. demo back ends."""
    from dlba.tls import wrap_tls

    clock: IReactorTime = reactor  # type: ignore[assignment]
    node = NodeService(config, reactor, json_log)
    table = build_status_table(config)
    access_log = AccessLog(config.log.access_log) if config.log.access_log else None
    ip = config.node_ip()
    limits = config.limits
    proxy = None
    if config.listen.http or config.listen.https:
        router = build_router(config, table)
        core = ProxyCore(
            router, table, limits, reactor, clock, access_log, config.persistence.cookie
        )
        for pc in config.pools:
            if pc.adaptive:
                for b in pc.backends:
                    if b.number not in core.controllers:
                        target: Target = "throughput" if pc.target == "throughput" else "latency"
                        core.control(b.number, FeedbackController(pc.max_concurrent, target))
        proxy = ProxyService(core, limits.shutdown_grace, clock)
        proxy.setName("proxy")
        proxy.setServiceParent(node)
        if config.listen.http:
            factory = ProxyFactory(core, False, limits.max_client_connections)
            svc = strports.service(bind_to(config.listen.http, ip), factory, reactor=reactor)
            svc.setName("http")
            svc.setServiceParent(proxy)
        if config.listen.https:
            factory = ProxyFactory(core, True, limits.max_client_connections)
            svc = strports.service(
                bind_to(config.listen.https, ip),
                wrap_tls(factory, tls_context),
                reactor=reactor,
            )
            svc.setName("https")
            svc.setServiceParent(proxy)
    if config.listen.status:
        svc = strports.service(
            bind_to(config.listen.status, ip),
            StatusFactory(config.node.number, table, clock, router.pools if proxy else ()),
            reactor=reactor,
        )
        svc.setName("status")
        svc.setServiceParent(node)
    for name, endpoint, factory in extra:
        svc = strports.service(endpoint, factory, reactor=reactor)
        svc.setName(name)
        svc.setServiceParent(node)
    return node
