"""``NodeService.reload`` on a memory reactor: listeners, TLS, back ends, queues, settings."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport, _FakePort
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from dlba.certs import make_cert
from dlba.config import Config, parse
from dlba.errors import ConfigError, ConfigErrors, NeedsRestart
from dlba.node import NodeService, make_node_service
from dlba.proxy.front import FrontProtocol
from dlba.proxy.listeners import listening_port
from dlba.proxy.service import ProxyService
from dlba.proxy.upstream import BackendConnection
from dlba.tls import ServerTLSContextFactory

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"

TEXT = """
[node]
number = 1
state_dir = "{dir}"
[listen]
http = "tcp:{http}:interface=127.0.0.1"
https = "tcp:8443:interface=127.0.0.1"
status = "tcp:7701:interface=127.0.0.1"
[tls]
certificates = ["{cert}"]
{extra}
[[pool]]
name = "app"
policy = "{policy}"
max_concurrent = {max}
queue_timeout = 5.0
{pool}
{backends}
"""


class Reactor(MemoryReactorClock):
    """A memory reactor on which some ports are taken."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class NodeCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dlba-reload-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert_a = self.cert("a.pem", "a.example")
        self.reactor = Reactor()
        self.stopped: list[int] = []
        stopped = self.stopped

        def stop_listening(port: _FakePort) -> None:
            stopped.append(port.getHost().port)

        self.patch(_FakePort, "stopListening", stop_listening)
        self.connects_seen = 0

    def cert(self, name: str, *names: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(make_cert(list(names)))
        return path

    def config(
        self,
        backends: dict[int, int] | None = None,
        *,
        http: int = 8080,
        cert: str | None = None,
        policy: str = "round-robin",
        max: int = 64,
        pool: str = "",
        extra: str = "",
    ) -> Config:
        backends = {1: 9001, 2: 9002} if backends is None else backends
        text = TEXT.format(
            dir=self.dir,
            http=http,
            cert=cert or self.cert_a,
            policy=policy,
            max=max,
            pool=pool,
            extra=extra,
            backends="".join(
                f'[[pool.backend]]\nnumber = {n}\naddress = "127.0.0.1:{port}"\n'
                for n, port in backends.items()
            ),
        )
        return parse(text, os.path.join(self.dir, "dlba.toml"))

    def start(self, config: Config) -> NodeService:
        tls = ServerTLSContextFactory(config.tls.certificates)
        node = make_node_service(config, self.reactor, tls_context=tls)
        node.startService()
        self.addCleanup(node.stopService)
        self.reactor.advance(0)
        return node

    def proxy(self, node: NodeService) -> ProxyService:
        proxy = node._proxy()
        assert proxy is not None
        return proxy

    def port_of(self, node: NodeService, name: str) -> Any:
        svc = node._listener(name)
        assert svc is not None
        return listening_port(svc)

    def client(
        self, node: NodeService, name: str = "http"
    ) -> tuple[FrontProtocol, StringTransport]:
        svc = node._listener(name)
        assert svc is not None
        factory = svc.factory
        if name == "https":  # the front protocol under TLS, spoken to in plain text
            factory = factory.wrappedFactory  # type: ignore[attr-defined]
        front = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        assert isinstance(front, FrontProtocol)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        front.makeConnection(transport)
        return front, transport

    def backend_connects(self) -> list[tuple[Any, ...]]:
        """Connection attempts to back ends (ports 9000-9999; not the sweep's)."""
        return [c for c in self.reactor.tcpClients if 9000 <= c[1] < 10000]

    def accept_backend(self) -> tuple[BackendConnection, StringTransport, int]:
        host, port, factory, _timeout, _bind = self.backend_connects()[self.connects_seen]
        self.connects_seen += 1
        conn = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert isinstance(conn, BackendConnection)
        transport = StringTransport()
        conn.makeConnection(transport)
        return conn, transport, port

    def pending_ports(self) -> list[int]:
        return [c[1] for c in self.backend_connects()[self.connects_seen :]]


class ListenerTests(NodeCase):
    def test_unchanged_listeners_keep_their_ports(self) -> None:
        node = self.start(self.config())
        ports = {name: self.port_of(node, name) for name in ("http", "https", "status")}
        servers = len(self.reactor.tcpServers)
        done = node.reload(self.config(backends={1: 9001, 2: 9002, 3: 9003}))
        self.assertEqual(done, ["pool app: changed", "back end 3 (127.0.0.1:9003): added"])
        for name, port in ports.items():
            self.assertIs(self.port_of(node, name), port, name)
        self.assertEqual(len(self.reactor.tcpServers), servers)
        self.assertEqual(self.stopped, [])

    def test_a_moved_listener_binds_first_then_stops_the_old_port(self) -> None:
        node = self.start(self.config())
        front, transport = self.client(node)
        svc = node._listener("http")
        with capturedLogs() as events:
            done = node.reload(self.config(http=8081))
        self.assertEqual(
            done, ["listen.http: tcp:8080:interface=127.0.0.1 -> tcp:8081:interface=127.0.0.1"]
        )
        self.assertIs(node._listener("http"), svc)  # the same service, moved
        self.assertEqual(self.port_of(node, "http").getHost().port, 8081)
        self.assertEqual(self.reactor.tcpServers[-1][0], 8081)
        self.assertIs(self.reactor.tcpServers[-1][1], svc.factory)  # type: ignore[union-attr]
        self.assertEqual(self.stopped, [8080])
        # The connection the old port accepted goes on.
        self.assertIn(front, self.proxy(node).core.connections)
        self.assertFalse(transport.disconnecting)
        front.dataReceived(GET)
        self.assertEqual(self.pending_ports(), [9001])
        listening = [e for e in events if e.get("listener") == "http"]
        self.assertEqual([e["port"] for e in listening], [8081])
        self.assertEqual(node.config.listen.http, "tcp:8081:interface=127.0.0.1")
        # Stopping the node stops the new port.
        node.stopService()
        self.assertIn(8081, self.stopped)

    def test_a_listener_that_cannot_bind_stays_where_it_was(self) -> None:
        node = self.start(self.config())
        old_port = self.port_of(node, "http")
        self.reactor.taken.add(8081)
        with capturedLogs() as events:
            done = node.reload(self.config(http=8081, backends={1: 9001}))
        self.assertIs(self.port_of(node, "http"), old_port)
        self.assertEqual(self.stopped, [])
        self.assertIn("back end 2 (127.0.0.1:9002): removed", done)
        [failed] = [line for line in done if "cannot listen" in line]
        self.assertIn("listen.http: cannot listen on tcp:8081:interface=127.0.0.1", failed)
        [warning] = [e for e in events if "cannot listen" in str(e.get("why", ""))]
        self.assertEqual(warning["log_namespace"], "dlba.node")
        # The running config says where it really listens, so the next reload tries again;
        # the rest of the reload took effect.
        self.assertEqual(node.config.listen.http, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(len(node.config.pools[0].backends), 1)
        self.reactor.taken.clear()
        node.reload(self.config(http=8081, backends={1: 9001}))
        self.assertEqual(self.port_of(node, "http").getHost().port, 8081)

    def test_listeners_closed_and_opened(self) -> None:
        node = self.start(self.config())
        https_port = self.port_of(node, "https")
        front, transport = self.client(node, "https")
        config = self.config()
        listen = dataclasses.replace(
            config.listen, https=None, status="tcp:7702:interface=127.0.0.1"
        )
        node.reload(dataclasses.replace(config, listen=listen))
        self.assertIsNone(node._listener("https"))
        self.assertIn(https_port.getHost().port, self.stopped)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(node.status_address, ("0.0.0.0", 7702))
        # And back: a new https listener, with the node's TLS context.
        node.reload(self.config())
        svc = node._listener("https")
        assert svc is not None
        self.assertEqual(self.port_of(node, "https").getHost().port, 8443)
        self.assertIsInstance(svc.factory, TLSMemoryBIOFactory)
        self.assertIn(front, self.proxy(node).core.connections)


class OpeningTests(NodeCase):
    def test_status_opened_and_closed_on_a_node_that_does_not_sweep(self) -> None:
        second_sweeps = (
            '[[array.node]]\nnumber = 2\nmac = "02:00:00:00:00:02"\nip = "127.0.0.2"\n'
            '[[array.node]]\nnumber = 1\nmac = "02:00:00:00:00:01"\nip = "127.0.0.1"\n'
        )
        with_status = self.config(extra=second_sweeps)
        without = dataclasses.replace(
            with_status, listen=dataclasses.replace(with_status.listen, status=None)
        )
        node = self.start(without)
        self.assertIsNone(node._listener("status"))
        node.reload(with_status)
        self.assertEqual(self.port_of(node, "status").getHost().port, 7701)
        self.assertEqual(node.status_address, ("0.0.0.0", 7701))
        node.reload(without)
        self.assertIsNone(node._listener("status"))
        self.assertEqual(self.stopped, [7701])

    def test_https_opened_on_a_node_that_had_no_tls(self) -> None:
        config = self.config()
        plain = dataclasses.replace(config, listen=dataclasses.replace(config.listen, https=None))
        node = make_node_service(plain, self.reactor)
        node.startService()
        self.addCleanup(node.stopService)
        self.assertIsNone(node.tls_context)
        node.reload(config)
        self.assertTrue(node.tls_context.certificate_for(None).endswith("a.pem"))
        svc = node._listener("https")
        assert svc is not None
        self.assertIsInstance(svc.factory, TLSMemoryBIOFactory)
        front, _ = self.client(node, "https")
        self.assertTrue(front.secure)


class AdminListenerTests(NodeCase):
    def with_admin(self, port: int) -> Config:
        config = self.config()
        admin = f"tcp:{port}:interface=127.0.0.1"
        return dataclasses.replace(config, listen=dataclasses.replace(config.listen, admin=admin))

    def test_any_listener_the_node_runs_moves_by_its_name(self) -> None:
        node = self.start(self.with_admin(7780))
        svc = node._listener("admin")
        assert svc is not None
        site = svc.factory
        node.reload(self.with_admin(7781))
        self.assertIs(node._listener("admin"), svc)
        self.assertEqual(self.port_of(node, "admin").getHost().port, 7781)
        self.assertIs(self.reactor.tcpServers[-1][1], site)
        self.assertEqual(self.stopped, [7780])
        # Closed, it cannot be opened again without a restart: its service is gone.
        node.reload(self.config())
        self.assertIsNone(node._listener("admin"))
        self.assertRaises(NeedsRestart, node.reload, self.with_admin(7782))


class RefusalTests(NodeCase):
    def test_restart_keys_refuse_the_whole_config_before_any_change(self) -> None:
        node = self.start(self.config())
        core = self.proxy(node).core
        router = core.router
        bad = self.config(http=8081, backends={1: 9001})
        bad = dataclasses.replace(bad, array=dataclasses.replace(bad.array, table_size=7))
        with self.assertRaises(NeedsRestart) as caught:
            node.reload(bad)
        self.assertIn("array.table_size: needs a restart", str(caught.exception))
        self.assertIs(core.router, router)
        self.assertEqual(self.stopped, [])
        self.assertEqual(len(core.status), 2)

    def test_a_bad_certificate_refuses_the_whole_config(self) -> None:
        node = self.start(self.config())
        core = self.proxy(node).core
        router = core.router
        broken = os.path.join(self.dir, "broken.pem")
        with open(broken, "w") as f:
            f.write("not a certificate")
        with self.assertRaises(ConfigError) as caught:
            node.reload(self.config(cert=broken, backends={1: 9001}))
        self.assertIn("broken.pem", str(caught.exception))
        self.assertIs(core.router, router)
        self.assertTrue(node.tls_context.certificate_for(None).endswith("a.pem"))

    def test_sighup_logs_every_mistake_and_keeps_running(self) -> None:
        node = self.start(self.config())
        errors = [ConfigError("x.toml", 3, "limits.a", "bad"), ConfigError("x.toml", 4, "b", "c")]

        def reread() -> Config:
            raise ConfigErrors(errors)

        node.reread = reread
        with capturedLogs() as events:
            self.assertIsNone(node.reload_from_file())
        refused = [e["error"] for e in events if "error" in e]
        self.assertEqual(refused, [str(e) for e in errors])
        self.assertTrue(all(e["log_level"].name == "warn" for e in events))
        node.reread = lambda: self.config(http=8081)
        self.assertIsNotNone(node.reload_from_file())
        self.assertEqual(node.config.listen.http, "tcp:8081:interface=127.0.0.1")

    def test_sighup_without_a_file(self) -> None:
        node = self.start(self.config())
        with capturedLogs() as events:
            self.assertIsNone(node.reload_from_file())
        self.assertIn("nothing reloaded", events[0]["log_format"])


class TLSTests(NodeCase):
    def test_certificates_swapped_in_place(self) -> None:
        node = self.start(self.config())
        tls = node.tls_context
        svc = node._listener("https")
        port = self.port_of(node, "https")
        old_context = tls.certificates.default
        cert_b = self.cert("b.pem", "b.example")
        done = node.reload(self.config(cert=cert_b))
        self.assertEqual(done, ["tls.certificates: new certificates for new connections"])
        self.assertIs(node.tls_context, tls)
        self.assertIs(node._listener("https"), svc)
        self.assertIs(self.port_of(node, "https"), port)
        self.assertTrue(tls.certificate_for(None).endswith("b.pem"))
        self.assertIsNot(tls.certificates.default, old_context)

    def test_a_renewed_file_at_the_same_path_is_read_again(self) -> None:
        node = self.start(self.config())
        before = node.tls_context.certificates.default
        self.assertEqual(node.reload(self.config()), [])
        self.assertIs(node.tls_context.certificates.default, before)  # the same bytes: kept
        with open(self.cert_a, "wb") as f:
            f.write(make_cert(["a.example", "www.a.example"]))
        done = node.reload(self.config())
        self.assertEqual(done, ["tls.certificates: a file changed: new certificates"])
        self.assertIsNot(node.tls_context.certificates.default, before)

    def test_hsts_for_new_answers(self) -> None:
        node = self.start(self.config())
        config = self.config()
        node.reload(
            dataclasses.replace(config, tls=dataclasses.replace(config.tls, hsts="max-age=600"))
        )
        self.assertEqual(self.proxy(node).core.hsts, b"max-age=600")
        front, client = self.client(node, "https")
        front.dataReceived(GET)
        conn, _, _ = self.accept_backend()
        conn.dataReceived(OK)
        self.assertIn(b"Strict-Transport-Security: max-age=600\r\n", client.value())


class BackendTests(NodeCase):
    def test_in_flight_finishes_on_the_old_set_and_the_next_request_follows_the_new(
        self,
    ) -> None:
        node = self.start(self.config(backends={1: 9001}))
        front, client = self.client(node)
        front.dataReceived(GET)
        conn, _, port = self.accept_backend()
        self.assertEqual(port, 9001)
        node.reload(self.config(backends={2: 9002, 3: 9003}))
        core = self.proxy(node).core
        self.assertIsNone(core.status.get(1))
        conn.dataReceived(OK)  # the request in flight at the removed back end finishes
        self.assertTrue(client.value().endswith(b"hi"))
        self.assertTrue(conn.transport.disconnecting)  # type: ignore[union-attr]  # not kept
        for _ in range(2):
            front.dataReceived(GET)
            c, _, _ = self.accept_backend()
            c.dataReceived(OK)
        self.assertEqual(sorted(c[1] for c in self.backend_connects()[1:]), [9002, 9003])

    def test_rows_kept_replaced_added_removed(self) -> None:
        node = self.start(self.config(backends={1: 9001, 2: 9002, 3: 9003}))
        core = self.proxy(node).core
        row1, row2 = core.status.get(1), core.status.get(2)
        assert row1 is not None and row2 is not None
        row1.hits = 9
        row2.disable()  # an operator did, at run time
        node.reload(self.config(backends={1: 9001, 2: 9002, 4: 9004}))
        self.assertIs(core.status.get(1), row1)
        self.assertEqual(row1.hits, 9)
        self.assertIs(core.status.get(2), row2)
        self.assertFalse(row2.enabled)  # across an unrelated reload
        self.assertEqual([b.number for b in core.status], [1, 2, 4])
        assert node.report is not None
        self.assertEqual([b["number"] for b in node.report.backend_rows(0.0)], [1, 2, 4])
        self.assertEqual(node.report.pool_rows(0.0)[0]["backends"], [1, 2, 4])

    def test_a_replaced_row_gets_a_pool_of_its_own(self) -> None:
        node = self.start(self.config(backends={1: 9001}))
        front, _ = self.client(node)
        front.dataReceived(GET)
        conn, backend_transport, _ = self.accept_backend()
        conn.dataReceived(OK)  # kept idle in the pool
        core = self.proxy(node).core
        self.assertEqual(len(core.upstreams[(1, True)].idle), 1)
        node.reload(self.config(backends={1: 9011}))
        self.assertTrue(backend_transport.disconnecting)  # the old address's idle one
        front.dataReceived(GET)
        self.assertEqual(self.pending_ports(), [9011])
        self.assertIs(core.upstreams[(1, True)].backend, core.status.get(1))

    def test_a_waiting_request_is_served_by_a_back_end_added(self) -> None:
        node = self.start(self.config(backends={1: 9001}, max=1))
        first, _ = self.client(node)
        first.dataReceived(GET)
        self.accept_backend()
        second, client2 = self.client(node)
        second.dataReceived(GET)
        pool = self.proxy(node).core.router.pools[0]
        self.assertEqual(len(pool.queue), 1)
        node.reload(self.config(backends={1: 9001, 2: 9002}, max=1))
        self.assertTrue(pool.retired)
        self.assertEqual(self.pending_ports(), [9002])
        conn, _, _ = self.accept_backend()
        conn.dataReceived(OK)
        self.assertTrue(client2.value().endswith(b"hi"))

    def test_a_waiting_request_keeps_its_deadline(self) -> None:
        node = self.start(self.config(backends={1: 9001}, max=1))
        first, _ = self.client(node)
        first.dataReceived(GET)
        self.accept_backend()
        self.reactor.advance(3)
        second, client2 = self.client(node)
        second.dataReceived(GET)
        self.reactor.advance(1)
        node.reload(self.config(backends={1: 9001}, max=1, pool="queue_limit = 10"))
        new_pool = self.proxy(node).core.router.pools[0]
        self.assertEqual(len(new_pool.queue), 1)
        self.assertEqual(new_pool.queue.oldest_wait(self.reactor.seconds()), 1.0)
        self.reactor.advance(3.5)
        self.assertEqual(client2.value(), b"")
        self.reactor.advance(1)  # 5 s after it came: expired, as it would have
        self.assertTrue(client2.value().startswith(b"HTTP/1.1 503"))
        self.assertEqual(new_pool.expired, 1)

    def test_a_waiting_request_gets_the_slot_freed_after_the_reload(self) -> None:
        node = self.start(self.config(backends={1: 9001}, max=1))
        first, _ = self.client(node)
        first.dataReceived(GET)
        conn, _, _ = self.accept_backend()
        second, client2 = self.client(node)
        second.dataReceived(GET)
        node.reload(self.config(backends={1: 9001}, max=1, pool="queue_limit = 10"))
        conn.dataReceived(OK)  # the slot frees: the moved request takes it (and the
        self.assertEqual(self.pending_ports(), [])  # connection, kept alive)
        self.assertEqual(conn.transport.value().count(b"GET /a"), 2)  # type: ignore[union-attr]
        conn.dataReceived(OK)
        self.assertTrue(client2.value().endswith(b"hi"))

    def test_max_concurrent_and_controllers(self) -> None:
        node = self.start(self.config(max=8, pool="adaptive = true"))
        core = self.proxy(node).core
        controller = core.dispatch.controllers[1]
        node.reload(self.config(max=4, pool="adaptive = true"))
        self.assertIs(core.dispatch.controllers[1], controller)
        self.assertEqual((controller.ceiling, core.status.get(1).limit), (4, 4))  # type: ignore[union-attr]
        node.reload(self.config(max=16))
        self.assertEqual(core.dispatch.controllers, {})
        self.assertEqual(core.status.get(1).limit, 16)  # type: ignore[union-attr]

    def test_sessions_survive(self) -> None:
        node = self.start(self.config(policy="session"))
        table = self.proxy(node).core.router.pools[0].policy.table  # type: ignore[attr-defined]
        table.learn(b"abc", 2, self.reactor.seconds())
        node.reload(self.config(policy="session", backends={1: 9001, 2: 9002, 3: 9003}))
        policy = self.proxy(node).core.router.pools[0].policy
        self.assertIs(policy.table, table)  # type: ignore[attr-defined]
        front, _ = self.client(node)
        front.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=abc\r\n\r\n")
        self.assertEqual(self.pending_ports(), [9002])


class SettingsTests(NodeCase):
    def test_limits_for_connections_accepted_from_now(self) -> None:
        node = self.start(self.config())
        old_front, _ = self.client(node)
        node.reload(self.config(extra="[limits]\nidle_timeout = 5.0\nmax_client_connections = 7"))
        new_front, _ = self.client(node)
        self.assertEqual(old_front.limits.idle_timeout, 60.0)
        self.assertEqual(new_front.limits.idle_timeout, 5.0)
        self.assertEqual([f.max_connections for f in self.proxy(node).fronts()], [7, 7])

    def test_access_log_reopened_when_its_path_changes(self) -> None:
        first = os.path.join(self.dir, "one.log")
        second = os.path.join(self.dir, "two.log")
        node = self.start(self.config(extra=f'[log]\naccess_log = "{first}"'))
        core = self.proxy(node).core
        old = core.access_log
        node.reload(self.config(extra=f'[log]\naccess_log = "{second}"'))
        self.assertIsNot(core.access_log, old)
        self.assertTrue(old._file.closed)  # type: ignore[union-attr]
        front, _ = self.client(node)
        front.dataReceived(GET)
        conn, _, _ = self.accept_backend()
        conn.dataReceived(OK)
        core.access_log.flush()  # type: ignore[union-attr]
        with open(second) as f:
            self.assertIn('"GET /a HTTP/1.1" 200', f.read())
        node.reload(self.config())
        self.assertIsNone(core.access_log)

    def test_an_access_log_that_cannot_open_refuses_the_whole_config(self) -> None:
        node = self.start(self.config())
        bad = os.path.join(self.dir, "no", "such", "dir.log")
        with self.assertRaises(ConfigError) as caught:
            node.reload(self.config(backends={1: 9001}, extra=f'[log]\naccess_log = "{bad}"'))
        self.assertIn("log.access_log: cannot open", str(caught.exception))
        self.assertEqual(len(self.proxy(node).core.status), 2)

    def test_cookie_name(self) -> None:
        node = self.start(self.config(policy="cookie"))
        node.reload(self.config(policy="cookie", extra='[persistence]\ncookie = "LB"'))
        core = self.proxy(node).core
        self.assertEqual(core.cookie_name, b"LB")
        self.assertEqual(core.router.pools[0].policy.cookie, b"LB")  # type: ignore[attr-defined]

    def test_sweep_and_node_table(self) -> None:
        nodes = (
            "[array]\nsweep_delay = {delay}\n"
            '[[array.node]]\nnumber = 1\nmac = "02:00:00:00:00:01"\nip = "127.0.0.1"\n'
            '[[array.node]]\nnumber = {other}\nmac = "02:00:00:00:00:0{other}"\n'
            'ip = "127.0.0.{other}"\n'
        )
        node = self.start(self.config(extra=nodes.format(delay=2.0, other=2)))
        assert node.report is not None
        row1 = node.report.nodes.get(1)
        assert row1 is not None
        row1.hits = 5
        node.reload(self.config(extra=nodes.format(delay=0.5, other=3)))
        sweep = node.getServiceNamed("sweep").sweep  # type: ignore[attr-defined]
        self.assertEqual(sweep.delay, 0.5)
        self.assertEqual([n.number for n in node.report.nodes], [1, 3])
        self.assertIs(node.report.nodes.get(1), row1)
        self.assertEqual(row1.hits, 5)
