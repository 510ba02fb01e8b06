"""The twistd plugin, its options and the service it builds."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dlba import tap
from dlba.certs import make_cert
from dlba.config import bind_to, endpoint_option, parse
from dlba.node import array_nodes

CONFIG = """
[node]
number = 2
state_dir = "{state}"
[listen]
http = "tcp:0"
https = "tcp:0:interface=127.0.0.1"
status = "tcp:0"
[tls]
certificates = ["{cert}"]
[[array.node]]
number = 1
mac = "02:00:00:00:00:01"
ip = "127.0.0.11"
[[array.node]]
number = 2
mac = "02:00:00:00:00:02"
ip = "127.0.0.12"
[[pool]]
name = "app"
policy = "least-load"
[[pool.backend]]
number = 1
address = "127.0.0.1:9001"
"""


class TempDir:
    def make(self, case: SynchronousTestCase) -> str:
        d = tempfile.mkdtemp(prefix="dlba-test-")
        case.addCleanup(shutil.rmtree, d, True)
        return d


class PluginTests(SynchronousTestCase):
    def test_found_and_provides_interfaces(self) -> None:
        plugins = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("dlba", plugins)
        verifyObject(IServiceMaker, plugins["dlba"])
        verifyObject(IPlugin, plugins["dlba"])


class OptionsTests(SynchronousTestCase):
    def parse_fails(self, *argv: str, lines: int = 1) -> str:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as cm:
            tap.Options().parseOptions(list(argv))
        self.assertEqual(cm.exception.code, 2)
        text = err.getvalue()
        self.assertEqual(text.count("\n"), lines, text)
        return text

    def test_needs_config_or_demo(self) -> None:
        self.assertIn("--config", self.parse_fails())
        self.assertIn("not both", self.parse_fails("--demo", "--config", "x.toml"))

    def test_config_error_is_one_line_with_file_and_key(self) -> None:
        d = TempDir().make(self)
        path = os.path.join(d, "bad.toml")
        with open(path, "w") as f:
            f.write("[limits]\nheader_timout = 3\n")
        text = self.parse_fails("--config", path)
        self.assertIn(f"{path}:2:", text)
        self.assertIn("header_timout", text)

    def test_every_config_error_is_a_line(self) -> None:
        d = TempDir().make(self)
        path = os.path.join(d, "bad.toml")
        with open(path, "w") as f:
            f.write('[limits]\nheader_timout = 3\n[[pool]]\nname = "a"\n')
        first, second = self.parse_fails("--config", path, lines=2).splitlines()
        self.assertTrue(first.startswith(f"dlba: {path}:2: limits.header_timout"), first)
        self.assertTrue(second.startswith(f"dlba: {path}:3: pool[1].backend"), second)


class MakeServiceTests(SynchronousTestCase):
    def options(self) -> tap.Options:
        d = TempDir().make(self)
        cert = os.path.join(d, "www.pem")
        with open(cert, "wb") as f:
            f.write(make_cert(["www.example"]))
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(state=d, cert=cert))
        o = tap.Options()
        o.parseOptions(["--config", path])
        return o

    def test_listeners_bind_to_node_ip(self) -> None:
        reactor = MemoryReactorClock()
        svc = tap.makeService(self.options(), reactor)
        verifyObject(IService, svc)
        svc.startService()
        interfaces = sorted(port[3] for port in reactor.tcpServers)
        self.assertEqual(interfaces, ["127.0.0.1", "127.0.0.12", "127.0.0.12"])
        proxy = svc.getServiceNamed("proxy")  # type: ignore[attr-defined]
        self.assertEqual(proxy.getServiceNamed("https").name, "https")
        d = svc.stopService()
        self.successResultOf(d)  # stopped without waiting: no client was connected

    def test_node_override(self) -> None:
        o = self.options()
        o2 = tap.Options()
        o2.parseOptions(["--config", o["config"], "--node", "1"])
        self.assertEqual(o2.config.node.number, 1)
        self.assertEqual(o2.config.node_ip(), "127.0.0.11")

    def test_demo(self) -> None:
        d = TempDir().make(self)
        o = tap.Options()
        o.parseOptions(["--demo", "--state-dir", d])
        reactor = MemoryReactorClock()
        svc = tap.makeService(o, reactor)
        svc.startService()
        ports = sorted(p[0] for p in reactor.tcpServers)
        self.assertEqual(ports, [7701, 7780, 8080, 8443, 9001, 9002, 9003])
        self.assertEqual(svc.getServiceNamed("sweep").sweep.tries, 3)  # type: ignore[attr-defined]
        self.assertTrue(os.path.exists(os.path.join(d, "tls", "selfsigned.pem")))
        svc.stopService()

    def test_bind_to(self) -> None:
        self.assertEqual(bind_to("tcp:80", "10.0.0.1"), "tcp:80:interface=10.0.0.1")
        self.assertEqual(bind_to("tcp:80", "::1"), "tcp:80:interface=\\:\\:1")
        self.assertEqual(
            bind_to("tcp:80:interface=1.2.3.4", "10.0.0.1"), "tcp:80:interface=1.2.3.4"
        )
        self.assertEqual(bind_to("tcp:80", None), "tcp:80")
        self.assertEqual(bind_to("unix:/x", "10.0.0.1"), "unix:/x")

    def test_endpoint_option(self) -> None:
        self.assertEqual(endpoint_option("tcp:7701", "port", 1), "7701")
        self.assertEqual(endpoint_option("tcp:port=7701:interface=::1", "port", 1), "7701")
        self.assertEqual(
            endpoint_option("tcp:7701:interface=127.0.0.2", "interface", 2), "127.0.0.2"
        )
        self.assertEqual(endpoint_option("tcp6:7701:interface=\\:\\:1", "interface", 2), "::1")
        self.assertEqual(endpoint_option("tcp:7701:50:127.0.0.3", "interface", 3), "127.0.0.3")
        self.assertIsNone(endpoint_option("tcp:7701", "interface", 2))
        self.assertIsNone(endpoint_option("unix:/run/x", "port", 1))

    def test_only_the_first_array_node_sweeps(self) -> None:
        o = self.options()
        node2 = tap.makeService(o, MemoryReactorClock())
        self.assertRaises(KeyError, node2.getServiceNamed, "sweep")  # type: ignore[attr-defined]
        o1 = tap.Options()
        o1.parseOptions(["--config", o["config"], "--node", "1"])
        node1 = tap.makeService(o1, MemoryReactorClock())
        sweep = node1.getServiceNamed("sweep").sweep  # type: ignore[attr-defined]
        self.assertEqual([n.ip for n in sweep.nodes], ["127.0.0.11", "127.0.0.12"])
        self.assertEqual(node1.report.node(0.0)["role"], "scheduler")  # type: ignore[attr-defined]
        self.assertEqual(node2.report.node(0.0)["role"], "node")  # type: ignore[attr-defined]
        # The scheduler holds the client table; the sweep frees a failed node's buckets.
        report = node1.report  # type: ignore[attr-defined]
        table = report.client_table
        self.assertEqual(table.lookup(0, 0.0), 1)  # placed on the emptiest live node
        self.assertIn(table.node_failed, sweep.on_failed)
        client = report.array(0.0)["client_table"]
        self.assertEqual((client["size"], client["buckets"]), (4093, {1: 1, 2: 0}))
        self.assertEqual(len(client["owners"]), 4093)
        [line] = [x for x in report.tables_lines(0.0) if x["table"] == "client"]
        self.assertNotIn("owners", line)
        self.assertEqual(line["table_id"], table.table_id)
        self.assertIsNone(node2.report.client_table)  # type: ignore[attr-defined]

    def test_without_array_nodes_a_node_sweeps_itself(self) -> None:
        config = parse('[listen]\nstatus = "tcp:7701:interface=127.0.0.5"\n', "x.toml")
        [only] = list(array_nodes(config))
        self.assertEqual((only.number, only.ip), (1, "127.0.0.5"))


class CommandLineTests(SynchronousTestCase):
    """``twistd dlba`` as a user runs it, from outside the source tree."""

    def run_twistd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        twistd = shutil.which("twistd")
        if twistd is None:
            self.skipTest("no twistd on PATH: the package is not installed (pip install .)")
        return subprocess.run(
            [twistd, "-n", "--pidfile=", "dlba", *argv],
            cwd=TempDir().make(self),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_bad_config_one_line_non_zero_no_traceback(self) -> None:
        d = TempDir().make(self)
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write(
                '[listen]\nhttp = "tcp:0"\n\n[[pool]]\nname = "a"\npolicy = "fastest"\n'
                '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:1"\n'
            )
        result = self.run_twistd("--config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"{path}:6:", lines[0])
        self.assertIn("policy", lines[0])

    def test_help_documents_options(self) -> None:
        result = self.run_twistd("--help")
        for option in ("--config", "--demo", "--node", "--state-dir"):
            self.assertIn(option, result.stdout)


class JsonLogTests(SynchronousTestCase):
    def test_json_log_observer_handed_to_twistd(self) -> None:
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        d = TempDir().make(self)
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write('[log]\njson = true\n[listen]\nstatus = "tcp:0"\n')
        o = tap.Options()
        o.parseOptions(["--config", path])
        svc = tap.makeService(o, MemoryReactorClock())
        app = Application("dlba")
        svc.setServiceParent(app)
        observer = app.getComponent(ILogObserver)
        self.assertTrue(ILogObserver.providedBy(observer))


class ControlTests(SynchronousTestCase):
    """The in-process API the control plane will call: enable, disable, drain."""

    def service(self) -> tuple[Any, MemoryReactorClock]:
        d = TempDir().make(self)
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write(
                '[listen]\nhttp = "tcp:0"\nstatus = "tcp:1"\n'
                '[[pool]]\nname = "a"\npolicy = "session"\n'
                '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:1"\n'
                '[[pool.backend]]\nnumber = 2\naddress = "127.0.0.1:2"\n'
            )
        o = tap.Options()
        o.parseOptions(["--config", path])
        reactor = MemoryReactorClock()
        return tap.makeService(o, reactor), reactor

    def test_enable_disable_drain(self) -> None:
        from dlba.proxy.service import UnknownBackend

        node, reactor = self.service()
        proxy = node.getServiceNamed("proxy")  # type: ignore[attr-defined]
        table = proxy.core.status
        proxy.disable_backend(2)
        self.assertFalse(table.get(2).enabled)
        proxy.enable_backend(2)
        self.assertTrue(table.get(2).accepts_new(reactor.seconds()))
        proxy.drain_backend(1, 30.0)
        b1 = table.get(1)
        self.assertFalse(b1.accepts_new(reactor.seconds()))
        self.assertTrue(b1.accepts_sticky(reactor.seconds()))
        reactor.advance(31)
        self.assertFalse(b1.accepts_sticky(reactor.seconds()))
        self.assertRaises(UnknownBackend, proxy.disable_backend, 9)

    def test_status_shows_session_table(self) -> None:
        import json

        from twisted.internet.testing import StringTransport

        node, reactor = self.service()
        node.startService()
        factory = next(p[1] for p in reactor.tcpServers if p[0] == 1)
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"STATUS\r\n")
        lines = t.value().splitlines()
        self.assertEqual(lines[-1], b"END")
        rows = [json.loads(line) for line in lines[:-1]]
        sessions = [r for r in rows if r["table"] == "sessions"]
        self.assertEqual(sessions[0]["pool"], "a")
        self.assertEqual(sessions[0]["size"], 0)
        self.assertIn("hit_rate", sessions[0])
        self.assertEqual([r["draining"] for r in rows if r["table"] == "backend"], [False, False])
        node.stopService()
