"""One node: every service one ``twistd dlba`` process runs, composed from the config."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IServiceCollection, MultiService
from twisted.logger import ILogObserver, Logger

from dlba.array.status import StatusFactory
from dlba.array.sweep import Address, SweepService
from dlba.config import Config, bind_to, endpoint_option, scheduler_of
from dlba.proxy.service import make_proxy_service
from dlba.report import NodeReport
from dlba.routing import backend_table, build_router
from dlba.sweep import Sweep
from dlba.tables import NodeState, NodeStatusTable, SummaryTable

# Stable namespaces, whatever module an event comes from: operators filter on them.  (A
# Logger on a class would take the class's module and name, which move with the code.)
log = Logger(namespace="dlba.node")


def array_nodes(config: Config) -> NodeStatusTable:
    """The node status table's static columns; a config without ``[[array.node]]`` is a
    one-node array of this node alone."""
    if config.array.nodes:
        return NodeStatusTable(
            NodeState(n.number, n.mac, n.ip, n.weight, n.enabled) for n in config.array.nodes
        )
    ip = (config.listen.status and endpoint_option(config.listen.status, "interface", 2)) or ""
    return NodeStatusTable([NodeState(config.node.number, "", ip or "127.0.0.1")])


class NodeService(MultiService):
    """Everything one ``twistd dlba`` process runs, composed from the config."""

    def __init__(self, config: Config, reactor: Any, json_log: ILogObserver | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._json_log = json_log
        # Where this node's status daemon really listens (its port may be 0 in the file).
        self.status_address: Address | None = None
        self.report: NodeReport | None = None

    def setServiceParent(self, parent: IServiceCollection) -> None:  # type: ignore[override]
        # twistd asks the application for an ILogObserver before it starts logging.
        if self._json_log is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._json_log)
        super().setServiceParent(parent)

    def startService(self) -> None:
        log.info(
            "node {node} starting on the {reactor} reactor",
            node=self.config.node.number,
            reactor=type(self.reactor).__name__,
        )
        super().startService()
        for svc in self._listeners():
            waiting = getattr(svc, "_waitingForPort", None)
            if waiting is not None:
                if svc.name == "status":
                    waiting.addCallback(self._status_listening)
                waiting.addCallback(self._announce_when_running, svc.name)

    def _status_listening(self, port: Any) -> Any:
        address = port.getHost()
        self.status_address = (address.host, address.port)
        return port

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
        log.info(
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

    node = NodeService(config, reactor, json_log)
    table = backend_table(config)
    ip = config.node_ip()
    listen = {
        name: bind_to(description, ip)
        for name, description in (("http", config.listen.http), ("https", config.listen.https))
        if description
    }
    router = build_router(config, table) if listen else None
    proxy = None
    if router is not None:
        proxy = make_proxy_service(
            config,
            table,
            router,
            reactor,
            listen=listen,
            tls_wrap=lambda factory: wrap_tls(factory, tls_context),
        )
        proxy.setServiceParent(node)
    nodes = array_nodes(config)
    scheduler = scheduler_of(config)
    sweep = None
    if config.listen.status and scheduler == config.node.number:
        sweep = Sweep(
            nodes,
            SummaryTable(),
            timeout=config.array.sweep_timeout,
            tries=max(1, config.array.sweep_retries),
            delay=config.array.sweep_delay,
        )
    node.report = NodeReport(
        config.node.number,
        reactor.seconds(),
        table,
        router.pools if router is not None else (),
        policies={p.name: p.policy for p in config.pools},
        counters=proxy.core if proxy is not None else None,
        nodes=nodes,
        sweep=sweep,
        scheduler=lambda: scheduler,
        table_size=config.array.table_size,
    )
    if config.listen.status:
        svc = strports.service(
            bind_to(config.listen.status, ip),
            StatusFactory(node.report, reactor),
            reactor=reactor,
        )
        svc.setName("status")
        svc.setServiceParent(node)
    if sweep is not None:
        status_port = endpoint_option(config.listen.status or "", "port", 1)
        own = config.node.number

        def address_of(peer: NodeState) -> Address | None:
            if peer.number == own and node.status_address is not None:
                return node.status_address
            if status_port is None or status_port == "0":
                return None
            return (peer.ip, int(status_port))

        SweepService(sweep, reactor, address_of).setServiceParent(node)
    for name, endpoint, factory in extra:
        svc = strports.service(endpoint, factory, reactor=reactor)
        svc.setName(name)
        svc.setServiceParent(node)
    return node
