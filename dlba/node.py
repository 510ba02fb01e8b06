"""One node: every service one ``twistd dlba`` process runs, composed from the config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from dlba.array.status import StatusFactory
from dlba.array.sweep import Address, SweepService
from dlba.clienttable import ClientTable
from dlba.config import Config, bind_to, endpoint_option, scheduler_of
from dlba.errors import ConfigError, ConfigErrors, NeedsRestart
from dlba.proxy import listeners
from dlba.proxy.accesslog import AccessLog
from dlba.proxy.service import ProxyService, make_proxy_service
from dlba.proxy.transport import listen_endpoint
from dlba.reload import apply_backends, diff, failover_on
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


def admin_service(config: Config, report: NodeReport, reactor: Any) -> Service:
    """The admin web on ``[listen] admin``, the sweep's age judged by the sweep's pace."""
    from dlba.admin.web import make_admin_service

    a = config.array
    nodes = max(1, len(a.nodes))
    # A healthy sweep ends every delay + one answer per node; a node being failed takes
    # its tries.  Twice each before the dashboard calls the tables stale.
    warn = 2 * (a.sweep_delay + nodes * a.sweep_timeout)
    alarm = max(2 * warn, 2 * (a.sweep_delay + nodes * a.sweep_timeout * a.sweep_retries))
    return make_admin_service(
        bind_to(config.listen.admin or "", config.node_ip()),
        report,
        reactor,
        sweep_warn=warn,
        sweep_alarm=alarm,
    )


def client_table_answer(report: NodeReport, since_version: int, table_id: str) -> dict[str, Any]:
    """``GetClientTable``: the buckets changed since a version, else the whole table."""
    from dlba.array import commands

    table = report.client_table
    if table is None:
        raise commands.UnknownTarget(
            f"node {report.number} holds no client table: ask the scheduler"
        )
    changed = table.changes_since(since_version, table_id)
    if changed is None:
        version, owners = table.snapshot()
        full, buckets = True, commands.pack_buckets(enumerate(owners))
    else:
        version, changes = changed
        full, buckets = False, commands.pack_buckets(sorted(changes.items()))
    return {
        "version": version,
        "table_id": table.table_id,
        "full": full,
        "size": table.size,
        "buckets": buckets,
    }


def sync_service(node: NodeService, proxy: ProxyService | None, reactor: Any) -> Service:
    """The control plane on ``[listen] sync``: AMP inside mutual TLS."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from dlba.array.control import ControlPlane, read_committed
    from dlba.array.peers import server_options
    from dlba.array.sync import SyncFactory

    config = node.config
    report = node.report
    assert report is not None and config.tls.ca and config.tls.node_certificate
    try:
        options = server_options(config.tls.ca, config.tls.node_certificate)
    except (OSError, ValueError) as e:
        raise ConfigError(
            config.path,
            None,
            "tls.node_certificate",
            str(e),
            "make the array's certificates with: dlba-ctl certs init --config FILE",
        ) from None
    plane = ControlPlane(
        config,
        read_committed(config.path, config.node.state_dir),
        report,
        apply=node.reload,
        backends=proxy,
        nodes=report.nodes,
        clock=reactor,
        # Until the election runs: the first [[array.node]], term 0.
        scheduler=lambda: (scheduler_of(node.config), 0),
        client_table=lambda since, table_id: client_table_answer(report, since, table_id),
    )
    node.control = plane
    factory = SyncFactory(plane, lambda: [n.number for n in node.config.array.nodes])
    tls = TLSMemoryBIOFactory(options, False, factory)
    endpoint = serverFromString(reactor, bind_to(config.listen.sync or "", config.node_ip()))
    svc = CatchingUpService(endpoint, tls, node, plane, reactor)
    svc._raiseSynchronously = True  # as strports: a port in use fails startService
    svc.setName("sync")
    return svc


def failover_service(node: NodeService, reactor: Any) -> Service:
    """Pings, the election and table sync: who is scheduler, decided at run time."""
    from dlba.array.failover import FailoverService
    from dlba.client import ArrayClient
    from dlba.election import Election

    config = node.config
    report = node.report
    sweep = node.getServiceNamed("sweep")
    assert report is not None and report.client_table is not None
    a = config.array
    nodes = report.nodes

    def eligible(number: int) -> bool:
        row = nodes.get(number)
        return row is not None and row.enabled

    election = Election(
        config.node.number,
        [n.number for n in a.nodes],
        ping_interval=a.ping_interval,
        ping_misses=a.ping_misses,
        eligible=eligible,
    )
    # A ping that has not come back within the interval is as good as missed.
    client = ArrayClient(
        config, reactor, certificate=config.tls.node_certificate, timeout=a.ping_interval
    )
    packets = node.namedServices.get("packet")  # the packet scheduler, with [array] vip
    failover = FailoverService(
        election, client, report.client_table, nodes, sweep, reactor, packets=packets
    )
    report.scheduler = lambda: election.scheduler
    report.term = lambda: election.term
    report.sweeping = lambda: sweep.active
    if node.control is not None:
        node.control.scheduler = failover.view
        node.control.heard_ping = failover.pinged_by
    node.failover = failover
    return failover


def packet_service(node: NodeService, reactor: Any, *, scheduler_at_start: bool) -> Service:
    """The packet scheduler: the VIP on every node, frame forwarding while scheduler."""
    from dlba.packet.service import PacketSchedulerService

    report = node.report
    assert report is not None
    svc = PacketSchedulerService(
        node.config.array,
        node.config.node.number,
        report.client_table,
        report.nodes,
        reactor,
        scheduler_at_start=scheduler_at_start,
    )
    report.packets = svc.row
    return svc


def ticket_key_service(node: NodeService, reactor: Any) -> Service:
    """The array's session-ticket keys: the scheduler rotates and pushes, the rest merge."""
    from dlba.array.ticketkeys import TicketKeyService

    config = node.config
    own = config.node.number
    client = None
    if config.listen.sync and config.array.nodes and config.tls.node_certificate:
        from dlba.client import ArrayClient

        client = ArrayClient(config, reactor, certificate=config.tls.node_certificate, timeout=2)
        node.array_clients.append(client)

    def is_scheduler() -> bool:
        if node.failover is not None:
            return bool(node.failover.election.scheduler == own)
        return scheduler_of(node.config) == own

    def peers() -> list[int]:
        return [n.number for n in node.config.array.nodes if n.number != own]

    def merge(data: bytes) -> str:
        if node.ticket_keys is None:
            raise ValueError("this node's HTTPS listener keeps no ticket keys")
        node.ticket_keys.merge(data)
        return str(node.ticket_keys.ring.generation)

    if node.control is not None:
        node.control.ticket_keys = merge

    # Asked each round: a reload that gives a node its first HTTPS listener gives it its
    # first ring too.
    return TicketKeyService(lambda: node.ticket_keys, is_scheduler, peers, client, reactor)


class CatchingUpService(StreamServerEndpointService):
    """The sync listener; once the reactor runs, it asks the peers for a newer config."""

    def __init__(
        self, endpoint: Any, factory: Any, node: NodeService, plane: Any, reactor: Any
    ) -> None:
        super().__init__(endpoint, factory)
        self.node = node
        self.plane = plane
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        from twisted.internet.defer import ensureDeferred

        from dlba.array.catchup import catch_up

        def go() -> None:
            d = ensureDeferred(catch_up(self.node.config, self.plane, self.reactor))
            d.addErrback(lambda f: log.failure("catch-up failed", f))

        self.reactor.callWhenRunning(go)


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
        self.control: Any = None  # the ControlPlane, when [listen] sync is set
        self.failover: Any = None  # the FailoverService, when the election runs
        # The control-plane clients that find peers by the config: a reload moves them.
        self.array_clients: list[Any] = []
        self.tls_context: Any = None  # the https listener's ServerTLSContextFactory
        self.ticket_keys: Any = None  # its TicketKeys, the same ring across reloads
        # Reads the config file again as at start (--node, --state-dir): SIGHUP's source.
        self.reread: Callable[[], Config] | None = None

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

    # -- hot reload ---------------------------------------------------------------------

    def reload(self, config: Config) -> list[str]:
        """Make ``config`` the running one without dropping a client connection; returns
        (and logs) what changed, a line each.

        Refused whole (``NeedsRestart``, naming the keys; a ``ConfigError`` for a
        certificate or access log that cannot be opened) before anything changes.
        Listeners move only when their endpoint changed, new port first; one that cannot
        be bound stays where it was (logged, and kept in ``self.config``, so that the next
        reload tries again).  Back ends, pools, limits and the rest change in place, for
        what comes after: see ``dlba.reload`` and ``ProxyService.reload``.
        """
        old = self.config
        changes = diff(old, config)
        if changes.restart:
            raise NeedsRestart(list(changes.restart))
        proxy = self._proxy()
        # Everything that can fail, before anything is changed.
        certificates = self._load_certificates(config)  # Certificates, or None: unchanged
        access_log_changed = proxy is not None and changes.access_log
        access_log = None
        if access_log_changed and config.log.access_log:
            access_log = _open_access_log(config)
        done = changes.summary()
        if certificates is not None:
            from dlba.tls import ServerTLSContextFactory

            if self.tls_context is None:
                self.tls_context = ServerTLSContextFactory(certificates)
            else:
                self.tls_context.use(certificates)
                if not changes.certificates:
                    done.append("tls.certificates: a file changed: new certificates")
        if proxy is not None:
            moved = proxy.reload(old, config)
            if moved:
                done.append(f"{moved} waiting requests moved to the new pools")
            if access_log_changed:
                proxy.core.replace_access_log(access_log)
        elif self.report is not None:
            # No proxy, but the status daemon still shows the config's back ends.
            apply_backends(self.report.backends, changes.backends, config)
        self.config = config
        self._reload_array(old, config, proxy)
        for name, (_, endpoint) in changes.listeners.items():
            self._move_listener(name, endpoint, old, done)
        log.info(
            "reloaded: {changes}", changes=done or ["nothing changed"], node=config.node.number
        )
        return done

    def reload_from_file(self) -> list[str] | None:
        """SIGHUP: read the config file again, check it, reload; any mistake is logged,
        a line each, and the node goes on with what it runs."""
        if self.reread is None:
            log.warn("SIGHUP: no config file to read again (--demo): nothing reloaded")
            return None
        try:
            return self.reload(self.reread())
        except ConfigErrors as e:
            for one in e.errors:
                log.warn("reload refused: {error}", error=str(one))
        except NeedsRestart as e:
            for problem in e.problems:
                log.warn("reload refused: {error}", error=problem)
        except ConfigError as e:
            log.warn("reload refused: {error}", error=str(e))
        except Exception:
            log.failure("reload failed")
        return None

    def reload_on_hangup(self) -> None:
        """From now on SIGHUP (``systemctl reload``) calls ``reload_from_file``.  Call it
        once the reactor runs (its own signal handlers are in place by then)."""
        import signal

        def hangup(signum: int, frame: object) -> None:
            # Not in the handler itself: it may interrupt the reactor anywhere.
            self.reactor.callFromThread(self.reload_from_file)

        signal.signal(signal.SIGHUP, hangup)

    def _proxy(self) -> ProxyService | None:
        proxy = self.namedServices.get("proxy")
        return proxy if isinstance(proxy, ProxyService) else None

    def _load_certificates(self, config: Config) -> Any:
        """New certificates if ``config``'s https listener needs them (new paths, or new
        bytes at the same paths), else None; a ``ConfigError`` names a bad file."""
        from dlba.tls import Certificates, same_sources

        if not config.listen.https:
            return None
        paths = config.tls.certificates
        if self.tls_context is not None and same_sources(self.tls_context.certificates, paths):
            return None
        if self.ticket_keys is None:
            from dlba.tls import TicketKeys

            self.ticket_keys = TicketKeys(self.reactor)
        return Certificates(paths, self.ticket_keys)

    def _reload_array(self, old: Config, new: Config, proxy: ProxyService | None) -> None:
        """The report, the node status table's static columns and the sweep's settings."""
        report = self.report
        if report is None:
            return
        removed = report.nodes.reconfigure(array_nodes(new), array_nodes(old))
        for client in self.array_clients:
            client.config = new
        if self.failover is not None:
            self.failover.nodes_changed(new)  # nodes appended join the election
        if report.client_table is not None:  # before the packet scheduler reads it
            report.client_table.idle_timeout = new.array.bucket_idle_timeout
        packets = self.namedServices.get("packet")
        if packets is not None:
            packets.nodes_changed()  # a new node's MAC or idle timeout, while forwarding
        sweep = self.namedServices.get("sweep")
        if isinstance(sweep, SweepService):
            a = new.array
            sweep.sweep.reconfigure(
                timeout=a.sweep_timeout,
                tries=max(1, a.sweep_retries),
                delay=a.sweep_delay,
                removed=removed,
            )
        scheduler = scheduler_of(new)
        if self.failover is None:  # with failover the election says, not the file
            report.scheduler = lambda: scheduler
        report.policies = {p.name: p.policy for p in new.pools}
        if proxy is not None:
            report.pools = proxy.core.router.pools

    def _listener(self, name: str) -> StreamServerEndpointService | None:
        for svc in self._listeners():
            if svc.name == name and isinstance(svc, StreamServerEndpointService):
                return svc
        return None

    def _move_listener(self, name: str, endpoint: str | None, old: Config, done: list[str]) -> None:
        """Rebind listener ``name`` to ``endpoint`` (None: close it), in place."""
        svc = self._listener(name)
        if endpoint is None:
            if svc is not None:
                # Its own stopService: the listening port closes, its connections go on.
                svc.disownServiceParent()
            return
        if svc is not None:
            d = listeners.move(svc, listeners.endpoint_like(svc.endpoint, self.reactor, endpoint))
        else:
            proxy = self._proxy()
            if name in ("http", "https") and proxy is not None:
                d = listeners.add(
                    proxy, name, listen_endpoint(self.reactor, endpoint), proxy.factory_for(name)
                )
            elif name == "status" and self.report is not None:
                factory = StatusFactory(self.report, self.reactor)
                d = listeners.add(self, name, serverFromString(self.reactor, endpoint), factory)
            else:  # check_reloadable refuses these; should one slip through, say so
                done.append(f"listen.{name}: cannot be opened at run time: needs a restart")
                self._keep_listener(name, old)
                return

        def bound(port: Any) -> Any:
            if name == "status":
                self._status_listening(port)
            return self._announce(port, name)

        def failed(reason: Failure) -> None:
            why = f"listen.{name}: cannot listen on {endpoint}: {reason.getErrorMessage()}"
            log.warn("reload: {why}; the listener stays as it was", why=why)
            done.append(f"{why}; it stays as it was")
            self._keep_listener(name, old)

        d.addCallbacks(bound, failed)

    def _keep_listener(self, name: str, old: Config) -> None:
        """The running config says what listener ``name`` really does: what it did."""
        listen = dataclasses.replace(self.config.listen, **{name: getattr(old.listen, name)})
        self.config = dataclasses.replace(self.config, listen=listen)


def _open_access_log(config: Config) -> AccessLog:
    path = config.log.access_log or ""
    try:
        return AccessLog(path)
    except OSError as e:
        raise ConfigError(
            config.path,
            None,
            "log.access_log",
            f"cannot open {path}: {e.strerror or e}",
            "check the directory exists and dlba's user may write there",
        ) from None


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
    node.tls_context = tls_context
    if tls_context is not None:
        node.ticket_keys = tls_context.certificates.ticket_keys
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
            # The node's, not this one: a reload may give a node without one its first.
            tls_wrap=lambda factory: wrap_tls(factory, node.tls_context),
        )
        proxy.setServiceParent(node)
    nodes = array_nodes(config)
    scheduler = scheduler_of(config)
    sweep = None
    client_table = None
    # With a control plane and peers, the election decides who sweeps, at run time: every
    # node keeps a sweep (idle unless scheduler) and a client table (a synced copy).
    failover = failover_on(config)
    if config.listen.status and (failover or scheduler == config.node.number):
        # The scheduler keeps the client table; the sweep frees a failed node's buckets.
        client_table = ClientTable(
            config.array.table_size, nodes, idle_timeout=config.array.bucket_idle_timeout
        )
        sweep = Sweep(
            nodes,
            SummaryTable(),
            timeout=config.array.sweep_timeout,
            tries=max(1, config.array.sweep_retries),
            delay=config.array.sweep_delay,
            on_failed=[client_table.node_failed],
            on_drained=[client_table.node_drained],
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
        client_table=client_table,
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
        own = config.node.number

        def address_of(peer: NodeState) -> Address | None:
            if peer.number == own and node.status_address is not None:
                return node.status_address
            # Asked each visit: a reload may move the status port.
            status_port = endpoint_option(node.config.listen.status or "", "port", 1)
            if status_port is None or status_port == "0":
                return None
            return (peer.ip, int(status_port))

        SweepService(sweep, reactor, address_of, active=not failover).setServiceParent(node)
    if config.listen.admin:
        admin_service(config, node.report, reactor).setServiceParent(node)
    if config.array.vip:
        # Without an election the configured scheduler forwards from the start.
        fixed = scheduler == config.node.number and not failover
        packets = packet_service(node, reactor, scheduler_at_start=fixed)
        packets.setServiceParent(node)
        # First of all: the VIP must be on lo before the listeners on it bind (in their
        # privilegedStartService), and go after they close.  MultiService keeps its
        # children in a list and starts them in its order.
        node.services.remove(packets)
        node.services.insert(0, packets)
    if config.listen.sync:
        sync_service(node, proxy, reactor).setServiceParent(node)
    if failover:
        failover_service(node, reactor).setServiceParent(node)
    if config.listen.https:
        ticket_key_service(node, reactor).setServiceParent(node)
    for name, endpoint, factory in extra:
        svc = strports.service(endpoint, factory, reactor=reactor)
        svc.setName(name)
        svc.setServiceParent(node)
    return node
