"""The control plane's AMP commands inside mutual TLS, over real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dlba.array import commands as c
from dlba.array.peers import client_options, identity, server_options
from dlba.array.sync import SyncFactory
from dlba.certs import make_ca, make_cert
from tests.array_support import node_tables

reactor: Any = _reactor


class Handler:
    """Answers every command plainly and records what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[Any, ...]] = []

    def ping(self, node: int, scheduler: int, term: int) -> tuple[int, int, int]:
        self.told.append(("ping", node, scheduler, term))
        return 1, 1, 7

    def who_is_scheduler(self) -> tuple[int, int]:
        return 1, 7

    def client_table(self, since_version: int, table_id: str) -> dict[str, Any]:
        return {"version": 3, "table_id": "t", "full": False, "size": 7, "buckets": b""}

    def push_config(self, text: str, serial: int) -> str:
        if "bad" in text:
            raise c.ConfigRefused("dlba.toml:1: limits.x: unknown key")
        self.told.append(("push", len(text), serial))
        return "d1"

    def commit_config(self, digest: str) -> int:
        return 2

    def config_text(self) -> tuple[str, int]:
        return "x" * 200_000, 2

    def status(self) -> bytes:
        return b"{}"

    def set_backend_state(self, pool: str, backend: int, state: str, grace: float) -> str:
        return state

    def set_node_state(self, node: int, state: str) -> str:
        self.told.append(("node", node, state))
        return state

    def set_ticket_keys(self, keys: bytes) -> str:
        self.told.append(("keys", len(keys)))
        return "g1"


class Certificates:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dlba-sync-")
        ca = make_ca("array CA")
        foreign = make_ca("someone else's CA")
        self.ca = self.write("ca.pem", ca)
        self.node1 = self.write("node1.pem", make_cert(["node1"], ca=ca))
        self.node2 = self.write("node2.pem", make_cert(["node2"], ca=ca))
        self.admin = self.write("admin.pem", make_cert(["admin"], ca=ca))
        self.stranger = self.write("stranger.pem", make_cert(["intruder"], ca=ca))
        self.foreign = self.write("foreign.pem", make_cert(["admin"], ca=foreign))

    def write(self, name: str, pem: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(pem)
        return path


class IdentityTests(SynchronousTestCase):
    def test_names(self) -> None:
        certs = Certificates()
        self.addCleanup(shutil.rmtree, certs.dir)

        def ident(path: str) -> str | None:
            return identity(
                ssl.PrivateCertificate.loadPEM(open(path, "rb").read()).original, [1, 2]
            )

        self.assertEqual(ident(certs.admin), "admin")
        self.assertEqual(ident(certs.node2), "node2")
        self.assertIsNone(ident(certs.stranger))
        self.assertIsNone(identity(None, [1]))


class SyncTLSTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.certs = Certificates()
        self.addCleanup(shutil.rmtree, self.certs.dir)
        self.handler = Handler()
        port = reactor.listenSSL(
            0,
            SyncFactory(self.handler, lambda: [1, 2, 3]),
            server_options(self.certs.ca, self.certs.node1),
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def connect(self, options: Any) -> amp.AMP:
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port, options, timeout=5)
        proto: amp.AMP = await connectProtocol(endpoint, amp.AMP())
        self.addCleanup(proto.transport.abortConnection)  # type: ignore[union-attr]
        return proto

    async def as_(self, pem: str) -> amp.AMP:
        return await self.connect(client_options(self.certs.ca, pem, "node1"))

    async def refused(self, options: Any) -> None:
        """The connection ends without an answer, and the server logs the peer."""
        try:
            proto = await self.connect(options)
            d: Deferred[Any] = proto.callRemote(c.WhoIsScheduler)
            d.addTimeout(5, reactor)
            await d
        except Exception:
            pass
        else:
            self.fail("answered a peer it should have refused")
        waited = 0
        while not [e for e in self.events if "refused" in e.get("log_format", "")]:
            await self.turn()
            waited += 1
            self.assertLess(waited, 500, "the refusal was not logged")
        [event] = [e for e in self.events if "refused" in e.get("log_format", "")][:1]
        self.assertTrue(event["peer"].startswith("127.0.0.1:"))

    def turn(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(0.01, d.callback, None)
        return d

    async def test_admin_may_ask_everything(self) -> None:
        proto = await self.as_(self.certs.admin)
        answer = await proto.callRemote(c.Ping, node=0, scheduler=-1, term=0)
        self.assertEqual(answer, {"node": 1, "scheduler": 1, "term": 7})
        answer = await proto.callRemote(c.SetNodeState, node=2, state="disabled")
        self.assertEqual(answer, {"state": "disabled"})
        self.assertIn(("node", 2, "disabled"), self.handler.told)

    async def test_big_values_cross(self) -> None:
        proto = await self.as_(self.certs.admin)
        text = "# comment\n" * 20_000  # 200 kB: over AMP's 64 KiB per value
        answer = await proto.callRemote(c.PushConfig, text=text, serial=5)
        self.assertEqual(answer, {"digest": "d1"})
        self.assertIn(("push", len(text), 5), self.handler.told)
        got = await proto.callRemote(c.GetConfig)
        self.assertEqual((len(got["text"]), got["serial"]), (200_000, 2))

    async def test_refusal_carries_the_message(self) -> None:
        proto = await self.as_(self.certs.admin)
        try:
            await proto.callRemote(c.PushConfig, text="bad", serial=1)
        except c.ConfigRefused as e:
            self.assertIn("limits.x: unknown key", str(e))
        else:
            self.fail("a bad config was accepted")

    async def test_a_node_may_not_ask_admin_commands(self) -> None:
        proto = await self.as_(self.certs.node2)
        answer = await proto.callRemote(c.WhoIsScheduler)
        self.assertEqual(answer, {"node": 1, "term": 7})
        try:
            await proto.callRemote(c.SetNodeState, node=2, state="disabled")
        except c.NotAllowed as e:
            self.assertIn("needs the admin certificate", str(e))
            self.assertIn("node2", str(e))
        else:
            self.fail("a node certificate was allowed an admin command")
        self.assertNotIn(("node", 2, "disabled"), self.handler.told)

    async def test_no_certificate_is_refused(self) -> None:
        with open(self.certs.ca, "rb") as f:
            pem = f.read()
        ca = ssl.Certificate.loadPEM(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
        await self.refused(ssl.optionsForClientTLS("node1", trustRoot=ca))

    async def test_a_foreign_ca_is_refused(self) -> None:
        await self.refused(client_options(self.certs.ca, self.certs.foreign, "node1"))

    async def test_a_name_that_is_no_node_is_refused(self) -> None:
        await self.refused(client_options(self.certs.ca, self.certs.stranger, "node1"))

    async def test_the_client_checks_the_server_name(self) -> None:
        try:
            proto = await self.connect(client_options(self.certs.ca, self.certs.admin, "node2"))
            d: Deferred[Any] = proto.callRemote(c.WhoIsScheduler)
            d.addTimeout(5, reactor)
            await d
        except Exception:
            return
        self.fail("connected to node1 believing it was node2")


class StagingHandler(Handler):
    """Two-phase: stages on push, commits only a staged digest."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.staged: str | None = None
        self.serial = 4
        self.text = "old"

    def push_config(self, text: str, serial: int) -> str:
        if self.refuse:
            raise c.ConfigRefused("dlba.toml:3: pool[1].policy: 'fastest' is not a policy")
        self.staged = text
        return f"digest-{len(text)}"

    def commit_config(self, digest: str) -> int:
        if self.staged is None or digest != f"digest-{len(self.staged)}":
            raise c.NothingStaged("push first")
        self.text, self.staged = self.staged, None
        self.serial += 1
        return self.serial

    def config_text(self) -> tuple[str, int]:
        return self.text, self.serial


IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


class ClientTests(TestCase):
    """dlba.client against three sync listeners on 127.0.0.11-13 (one port, as one config
    file gives every node)."""

    timeout = 30

    def setUp(self) -> None:
        self.certs = Certificates()
        self.addCleanup(shutil.rmtree, self.certs.dir)
        self.handlers = [StagingHandler(), StagingHandler(), StagingHandler()]
        self.ports: list[Any] = []
        first = self.listen(0, 0)
        self.port = first.getHost().port
        for i in (1, 2):
            self.listen(i, self.port)

    def listen(self, i: int, port: int) -> Any:
        pem = self.certs.write(f"n{i + 1}.pem", make_cert([f"node{i + 1}"], ca=self.ca_pem()))
        p = reactor.listenSSL(
            port,
            SyncFactory(self.handlers[i], lambda: [1, 2, 3]),
            server_options(self.certs.ca, pem),
            interface=IPS[i],
        )
        self.addCleanup(p.stopListening)
        self.ports.append(p)
        return p

    def ca_pem(self) -> bytes:
        # Certificates() keeps only the CA's path: sign the nodes' certificates with it.
        with open(self.certs.ca, "rb") as f:
            return f.read()

    def client(self) -> Any:
        from dlba.client import ArrayClient
        from dlba.config import parse

        nodes = node_tables((1, 2, 3), lambda n: IPS[n - 1])
        text = (
            f'[listen]\nsync = "tcp:{self.port}"\n'
            f'[tls]\nca = "{self.certs.ca}"\nadmin_certificate = "{self.certs.admin}"\n'
            f'node_certificate = "{self.certs.dir}/n{{number}}.pem"\n' + nodes
        )
        client = ArrayClient(parse(text, "array.toml"), reactor)
        self.addCleanup(client.close)
        return client

    async def test_ask_each_node(self) -> None:
        client = self.client()
        self.assertEqual(await client.who_is_scheduler(2), (1, 7))
        table = await client.client_table(3, since_version=1)
        self.assertEqual((table.version, table.full, table.buckets), (3, False, {}))

    async def test_push_commits_everywhere(self) -> None:
        result = await self.client().push("new config")
        self.assertTrue(result.committed)
        self.assertEqual(result.serial, 5)  # one past the newest serial the nodes had
        self.assertEqual(result.serials, {1: 5, 2: 5, 3: 5})
        self.assertEqual([h.text for h in self.handlers], ["new config"] * 3)

    async def test_one_refusal_and_nobody_changes(self) -> None:
        self.handlers[1].refuse = True
        result = await self.client().push("new config")
        self.assertFalse(result.committed)
        self.assertEqual(list(result.errors), [2])
        self.assertIn("pool[1].policy", result.errors[2])
        self.assertEqual([h.text for h in self.handlers], ["old"] * 3)

    async def test_a_node_down_is_named_and_the_others_commit(self) -> None:
        await self.ports[2].stopListening()
        result = await self.client().push("new config")
        self.assertTrue(result.committed)
        self.assertEqual(list(result.down), [3])
        self.assertIn("node 3 (127.0.0.13:", result.down[3])
        self.assertEqual([h.text for h in self.handlers], ["new config", "new config", "old"])


class SyncOverIOSimTests(SynchronousTestCase):
    """The commands over an in-memory pair (twisted.test.iosim), no sockets: the TLS
    layer's verdict is set by hand, as handshakeCompleted would."""

    def pair(self, identity: str | None) -> tuple[Any, Any, Any, Handler]:
        from twisted.test import iosim

        from dlba.array.sync import SyncProtocol

        handler = Handler()
        server = SyncProtocol(handler, lambda: [1, 2])
        client = amp.AMP()
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
        server.peer_identity = identity
        return server, client, pump, handler

    def call(self, client: Any, pump: Any, command: Any, **kw: Any) -> Any:
        """The answer, or the Failure, once the pair has exchanged everything."""
        results: list[Any] = []
        client.callRemote(command, **kw).addBoth(results.append)
        pump.flush()
        self.assertEqual(len(results), 1, "no answer")
        return results[0]

    def test_commands_round_trip(self) -> None:
        _, client, pump, handler = self.pair("admin")
        answer = self.call(client, pump, c.Ping, node=2, scheduler=1, term=4)
        self.assertEqual(answer, {"node": 1, "scheduler": 1, "term": 7})
        self.assertIn(("ping", 2, 1, 4), handler.told)
        table = self.call(client, pump, c.GetClientTable, since_version=1, table_id="t")
        self.assertEqual((table["version"], table["full"]), (3, False))
        got = self.call(client, pump, c.GetConfig)
        self.assertEqual(len(got["text"]), 200_000)

    def test_refusals_travel_as_typed_errors(self) -> None:
        _, client, pump, _ = self.pair("node2")
        failure = self.call(client, pump, c.SetNodeState, node=1, state="disabled")
        self.assertTrue(failure.check(c.NotAllowed), failure)
        self.assertIn("needs the admin certificate", str(failure.value))
        _, client, pump, _ = self.pair("admin")
        failure = self.call(client, pump, c.PushConfig, text="bad", serial=1)
        self.assertTrue(failure.check(c.ConfigRefused), failure)
        self.assertIn("limits.x", str(failure.value))

    def test_ticket_keys_come_from_nodes_only(self) -> None:
        _, client, pump, handler = self.pair("node2")
        answer = self.call(client, pump, c.SetTicketKeys, keys=b"k" * 208)
        self.assertEqual(answer, {"generation": "g1"})
        self.assertIn(("keys", 208), handler.told)
        _, client, pump, handler = self.pair("admin")
        failure = self.call(client, pump, c.SetTicketKeys, keys=b"k" * 208)
        self.assertTrue(failure.check(c.NotAllowed), failure)
        self.assertIn("scheduler's node certificate", str(failure.value))
        self.assertEqual(handler.told, [])

    def test_nothing_before_the_handshake(self) -> None:
        _, client, pump, handler = self.pair(None)
        self.assertTrue(self.call(client, pump, c.WhoIsScheduler).check(c.NotAllowed))
        self.assertEqual(handler.told, [])
