"""dlba.tls and dlba.certs, checked from outside with the real ``openssl s_client`` and ``curl``.

Every server listens on 127.0.0.1 port 0 with the real reactor; clients run as
child processes through ``spawnProcess`` with a hard deadline, so a stuck
handshake fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IReactorProcess,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from dlba.certs import ensure_self_signed, make_ca, make_cert
from dlba.errors import ConfigError
from dlba.tls import ServerTLSContextFactory, TicketKeys, wrap_tls

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# Per child process; generous because CI machines stall, far below trial's timeout.
PROCESS_DEADLINE = 10.0
# Children see only PATH: a stray https_proxy or OPENSSL_CONF must not change
# what is being tested.
CHILD_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class ProcessResult:
    def __init__(self, out: bytes, err: bytes, code: int | None) -> None:
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")
        self.code = code

    @property
    def text(self) -> str:
        return self.out + self.err


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes, deadline: float) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[ProcessResult] = Deferred()
        self._timer = cast(IReactorTime, reactor).callLater(deadline, self._kill)
        self._timed_out = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def _kill(self) -> None:
        self._timed_out = True
        assert self.transport is not None
        self.transport.signalProcess("KILL")

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        value = reason.value
        code = value.exitCode if isinstance(value, ProcessDone | ProcessTerminated) else None
        result = ProcessResult(b"".join(self.out), b"".join(self.err), code)
        if self._timed_out:
            self.done.errback(AssertionError(f"child process timed out:\n{result.text}"))
        else:
            self.done.callback(result)


def run(argv: Sequence[str], stdin: bytes = b"") -> Deferred[ProcessResult]:
    collect = _Collect(stdin, PROCESS_DEADLINE)
    cast(IReactorProcess, reactor).spawnProcess(collect, argv[0], list(argv), env=CHILD_ENV)
    return collect.done


class _Answer(Protocol):
    """Answers one request with a fixed response, then closes.

    Closing makes ``s_client -ign_eof`` exit only after it has read everything,
    including TLS 1.3 tickets, which arrive after the handshake.
    """

    def __init__(self, factory: _AnswerFactory) -> None:
        self.factory = factory
        self.buffer = b""

    def connectionMade(self) -> None:
        self.factory.open.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            assert self.transport is not None
            self.transport.write(RESPONSE)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.open.discard(self)
        if not self.factory.open:
            waiters, self.factory.waiters = self.factory.waiters, []
            for d in waiters:
                d.callback(None)


class _AnswerFactory(Factory):
    def __init__(self) -> None:
        self.open: set[_Answer] = set()
        self.waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: object) -> _Answer:
        return _Answer(self)

    def closed(self) -> Deferred[None]:
        """Fires once no connection is left; cuts any that linger (a refused handshake)."""
        if not self.open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        for proto in list(self.open):
            transport = cast(ITransport, proto.transport)
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()
        return d


def scratch_dir(case: SynchronousTestCase) -> str:
    """A private directory removed after the test.

    Not ``mktemp()``: under pytest that lands in the repository's working tree.
    """
    path = tempfile.mkdtemp(prefix="dlba-test-tls-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def split_pem(pem: bytes) -> tuple[bytes, bytes]:
    """``(key, certificates)`` of what make_cert returns."""
    at = pem.index(b"-----BEGIN CERTIFICATE-----")
    return pem[:at], pem[at:]


def subject_cn(text: str) -> str:
    # OpenSSL 3.0 prints "subject=CN = a.example", 3.2 and later "subject=CN=a.example".
    match = re.search(r"^subject=.*?CN ?= ?([^,\s/]+)", text, re.MULTILINE)
    return match.group(1) if match else ""


class _ServerTestCase(TestCase):
    timeout = 20

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def setUp(self) -> None:
        self.dir = scratch_dir(self)
        self.ca = make_ca()
        self.ca_path = self.write("ca.pem", split_pem(self.ca)[1])

    def listen(
        self, certificates: Sequence[str], ticket_keys: TicketKeys | None = None
    ) -> ServerTLSContextFactory:
        tls = ServerTLSContextFactory(certificates, ticket_keys)
        answers = _AnswerFactory()
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listening = endpoint.listen(wrap_tls(answers, tls))
        # listen() on TCP has already fired; a failure to bind surfaces here.
        port: IListeningPort = self.successResultOf(listening)
        # LIFO: stop accepting first, then wait out the connections left.
        self.addCleanup(answers.closed)
        self.addCleanup(port.stopListening)
        self.port = cast(IPv4Address, port.getHost()).port
        return tls

    def s_client(self, *args: str) -> Deferred[ProcessResult]:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-ign_eof"]
        return run([*argv, *args], REQUEST)

    def curl(self, name: str, *args: str) -> Deferred[ProcessResult]:
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(PROCESS_DEADLINE)]
        argv += ["--cacert", self.ca_path, "--resolve", f"{name}:{self.port}:127.0.0.1"]
        argv += ["-w", "\n%{http_version}", *args, f"https://{name}:{self.port}/"]
        return run(argv)

    def assertHandshake(self, result: ProcessResult, version: str) -> None:
        self.assertIn(f", {version}, Cipher is ", result.text)
        self.assertIn(RESPONSE.decode(), result.out)


class ProtocolVersionTests(_ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.listen([self.write("a.pem", make_cert(["a.example"], ca=self.ca))])

    async def test_tls13(self) -> None:
        result = await self.s_client("-tls1_3")
        self.assertHandshake(result, "TLSv1.3")
        # "Server Temp Key" up to OpenSSL 3.4, "Negotiated TLS1.3 group" after.
        self.assertRegex(result.text, r"(Server Temp Key|Negotiated TLS1.3 group): X25519\b")

    async def test_tls12_prefers_the_server_cipher_order(self) -> None:
        client_order = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
        result = await self.s_client("-tls1_2", "-cipher", client_order)
        self.assertIn("New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256", result.text)
        self.assertHandshake(result, "TLSv1.2")

    async def test_tls12_chacha20(self) -> None:
        result = await self.s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
        self.assertIn("Cipher is ECDHE-ECDSA-CHACHA20-POLY1305", result.text)

    async def test_tls12_cbc_refused(self) -> None:
        result = await self.s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
        self.assertNotEqual(result.code, 0)
        self.assertIn("handshake failure", result.text)

    async def test_tls11_refused(self) -> None:
        # SECLEVEL=0 so that the refusal comes from the server, not the client's own policy.
        result = await self.s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(result.code, 0)
        self.assertIn("alert protocol version", result.text)

    async def test_unlisted_group_refused(self) -> None:
        result = await self.s_client("-tls1_3", "-groups", "P-521")
        self.assertNotEqual(result.code, 0)
        result = await self.s_client("-tls1_3", "-groups", "P-384")
        self.assertHandshake(result, "TLSv1.3")

    async def test_curl_verifies_the_chain(self) -> None:
        result = await self.curl("a.example")
        self.assertEqual((result.code, result.out), (0, "ok\n1.1"), result.text)


class RSATests(_ServerTestCase):
    async def test_ecdhe_rsa(self) -> None:
        self.listen([self.write("r.pem", make_cert(["r.example"], ca=self.ca, key_type="rsa"))])
        result = await self.s_client("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        self.assertIn("Cipher is ECDHE-RSA-AES256-GCM-SHA384", result.text)
        result = await self.curl("r.example", "--tlsv1.3")
        self.assertEqual((result.code, result.out), (0, "ok\n1.1"), result.text)


class SNITests(_ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.tls = self.listen(
            [
                self.write("a.pem", make_cert(["a.example"], ca=self.ca)),
                self.write("b.pem", make_cert(["b.example", "*.w.example"], ca=self.ca)),
            ]
        )

    async def assertServes(self, server_name: str | None, cn: str) -> None:
        sni = ["-servername", server_name] if server_name else ["-noservername"]
        result = await self.s_client(*sni)
        self.assertEqual(subject_cn(result.text), cn, result.text)
        self.assertHandshake(result, "TLSv1.3")

    async def test_each_name_gets_its_certificate(self) -> None:
        await self.assertServes("a.example", "a.example")
        await self.assertServes("b.example", "b.example")
        await self.assertServes("B.Example", "b.example")

    async def test_wildcard_covers_one_label(self) -> None:
        await self.assertServes("x.w.example", "b.example")
        await self.assertServes("y.x.w.example", "a.example")
        await self.assertServes("w.example", "a.example")

    async def test_first_certificate_is_the_default(self) -> None:
        await self.assertServes("unknown.example", "a.example")
        await self.assertServes(None, "a.example")

    async def test_curl_verifies_the_switched_certificate(self) -> None:
        result = await self.curl("b.example", "--tls-max", "1.2")
        self.assertEqual((result.code, result.out), (0, "ok\n1.1"), result.text)

    def test_names(self) -> None:
        verifyObject(IOpenSSLServerConnectionCreator, self.tls)
        self.assertEqual(
            [names for _, names in self.tls.names()],
            [("a.example",), ("b.example", "*.w.example")],
        )
        self.assertTrue(self.tls.certificate_for("x.w.example").endswith("b.pem"))
        self.assertTrue(self.tls.certificate_for(None).endswith("a.pem"))


class ALPNTests(_ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.listen([self.write("a.pem", make_cert(["a.example"], ca=self.ca))])

    async def test_http11(self) -> None:
        result = await self.s_client("-alpn", "h2,http/1.1")
        self.assertIn("ALPN protocol: http/1.1", result.text)

    async def test_h2_only_still_connects(self) -> None:
        result = await self.s_client("-alpn", "h2")
        self.assertIn("No ALPN negotiated", result.text)
        self.assertHandshake(result, "TLSv1.3")

    async def test_curl_http2_falls_back(self) -> None:
        result = await self.curl("a.example", "--http2")
        self.assertEqual((result.code, result.out), (0, "ok\n1.1"), result.text)


class ResumptionTests(_ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.listen(
            [
                self.write("a.pem", make_cert(["a.example"], ca=self.ca)),
                self.write("b.pem", make_cert(["b.example"], ca=self.ca)),
            ]
        )

    async def assertResumes(self, version: str, *args: str) -> ProcessResult:
        """Connect twice with ``args``; the second must resume the first's session."""
        session = os.path.join(scratch_dir(self), "session.pem")
        first = await self.s_client(*args, "-sess_out", session)
        self.assertIn(f"New, {version}", first.text)
        # A TLS 1.3 client learns its ticket only after the handshake; -ign_eof
        # plus a server that closes after answering makes s_client wait for it.
        self.assertTrue(os.path.exists(session), first.text)
        second = await self.s_client(*args, "-sess_in", session)
        self.assertIn(f"Reused, {version}", second.text)
        self.assertHandshake(second, version)
        return first

    async def test_tls12_ticket(self) -> None:
        first = await self.assertResumes("TLSv1.2", "-tls1_2")
        self.assertIn("TLS session ticket:", first.text)

    async def test_tls12_session_cache(self) -> None:
        first = await self.assertResumes("TLSv1.2", "-tls1_2", "-no_ticket")
        self.assertNotIn("TLS session ticket:", first.text)

    async def test_tls13_ticket(self) -> None:
        await self.assertResumes("TLSv1.3", "-tls1_3")

    async def test_after_sni_switch(self) -> None:
        cases = [
            ("TLSv1.2", ["-tls1_2"]),
            ("TLSv1.2", ["-tls1_2", "-no_ticket"]),
            ("TLSv1.3", ["-tls1_3"]),
        ]
        for version, args in cases:
            first = await self.assertResumes(version, *args, "-servername", "b.example")
            self.assertEqual(subject_cn(first.text), "b.example", first.text)


class ArrayTicketTests(_ServerTestCase):
    """Two listeners as two nodes: with the array's ring, a session sealed on one resumes
    on the other; across a rotation old tickets still open; with rings of their own, not."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.pem = self.write("a.pem", make_cert(["a.example"], ca=self.ca))

    def node(self, keys: TicketKeys) -> int:
        self.listen([self.pem], keys)
        return self.port

    async def resume(self, first_port: int, second_port: int, *args: str) -> ProcessResult:
        session = os.path.join(scratch_dir(self), f"s{first_port}-{second_port}.pem")
        self.port = first_port
        first = await self.s_client(*args, "-sess_out", session)
        self.assertIn("New, TLSv1", first.text)
        self.assertTrue(os.path.exists(session), first.text)
        self.port = second_port
        return await self.s_client(*args, "-sess_in", session)

    def shared(self) -> tuple[TicketKeys, TicketKeys]:
        scheduler, other = TicketKeys(self.clock), TicketKeys(self.clock)
        self.assertTrue(scheduler.rotate())
        other.merge(scheduler.ring.to_bytes())
        self.assertEqual(other.ring.generation, scheduler.ring.generation)
        return scheduler, other

    async def test_a_session_resumes_on_another_node(self) -> None:
        scheduler, other = self.shared()
        a, b = self.node(scheduler), self.node(other)
        for args in (["-tls1_3"], ["-tls1_2"]):
            second = await self.resume(a, b, *args)
            self.assertIn("Reused, TLSv1", second.text)
        self.assertGreaterEqual(other.counters()["tickets_opened"], 2)

    async def test_old_tickets_open_after_a_rotation(self) -> None:
        scheduler, other = self.shared()
        a, b = self.node(scheduler), self.node(other)
        session = os.path.join(scratch_dir(self), "rotated.pem")
        self.port = a
        await self.s_client("-tls1_3", "-sess_out", session)
        sealed_with = scheduler.ring.sealing(self.clock.seconds())
        self.clock.advance(scheduler.ring.rotation + 1)  # the next key seals now
        scheduler.rotate()
        other.merge(scheduler.ring.to_bytes())
        self.assertIsNot(scheduler.ring.sealing(self.clock.seconds()), sealed_with)
        self.port = b
        second = await self.s_client("-tls1_3", "-sess_in", session)
        self.assertIn("Reused, TLSv1.3", second.text)
        # Past the ticket lifetime after its key stopped sealing, the key is gone.
        self.clock.advance(scheduler.ring.lifetime + 1)
        scheduler.rotate()
        self.assertIsNone(other.opening_key(sealed_with.name))  # type: ignore[union-attr]

    async def test_rings_of_their_own_do_not_resume(self) -> None:
        one, two = TicketKeys(self.clock), TicketKeys(self.clock)
        one.rotate()
        two.rotate()
        second = await self.resume(self.node(one), self.node(two), "-tls1_3")
        self.assertIn("New, TLSv1.3", second.text)
        self.assertEqual(two.counters()["tickets_unknown"], 1)

    async def test_a_node_without_keys_seals_no_ticket(self) -> None:
        empty = TicketKeys(self.clock)  # not pushed yet: it must not seal a ticket of its own
        self.port = self.node(empty)
        session = os.path.join(scratch_dir(self), "none.pem")
        result = await self.s_client("-tls1_2", "-sess_out", session)
        self.assertNotIn("TLS session ticket:", result.text)
        self.assertEqual(empty.counters()["tickets_sealed"], 0)


class RefusalTests(SynchronousTestCase):
    def test_a_refused_connection_gets_no_tls_protocol(self) -> None:
        """The wrapped factory's None (a refusal) reaches the port, which closes the
        connection at once; Twisted's own TLS factory would wrap the None."""
        path = os.path.join(scratch_dir(self), "a.pem")
        with open(path, "wb") as f:
            f.write(make_cert(["a.example"]))
        tls = ServerTLSContextFactory([path])
        addr = IPv4Address("TCP", "127.0.0.1", 40000)

        class Refusing(Factory):
            def buildProtocol(self, addr: object) -> None:  # type: ignore[override]
                return None

        self.assertIsNone(wrap_tls(Refusing(), tls).buildProtocol(addr))
        accepted = wrap_tls(Factory.forProtocol(Protocol), tls).buildProtocol(addr)
        assert accepted is not None
        self.assertIsInstance(accepted.wrappedProtocol, Protocol)


class ConfigErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = scratch_dir(self)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertConfigError(self, path: str, problem: str) -> ConfigError:
        error: ConfigError = self.assertRaises(ConfigError, ServerTLSContextFactory, [path])
        self.assertEqual((error.path, error.key), (path, "tls.certificates"))
        self.assertIn(problem, error.problem)
        self.assertTrue(str(error).startswith(f"{path}: tls.certificates: "), str(error))
        return error

    def test_missing_file(self) -> None:
        self.assertConfigError(os.path.join(self.dir, "absent.pem"), "not found")

    def test_mismatched_key(self) -> None:
        key, _ = split_pem(make_cert(["a.example"]))
        _, cert = split_pem(make_cert(["a.example"]))
        self.assertConfigError(self.write("x.pem", key + cert), "does not match")

    def test_chain_in_wrong_order(self) -> None:
        ca = make_ca()
        key, certs = split_pem(make_cert(["a.example"], ca=ca))
        end = b"-----END CERTIFICATE-----\n"
        leaf, issuer = certs.split(end, 1)
        reversed_chain = issuer + leaf + end
        self.assertConfigError(self.write("x.pem", key + reversed_chain), "does not match")

    def test_no_certificate(self) -> None:
        key, _ = split_pem(make_cert(["a.example"]))
        self.assertConfigError(self.write("x.pem", key), "no PEM certificate")

    def test_no_key(self) -> None:
        _, cert = split_pem(make_cert(["a.example"]))
        self.assertConfigError(self.write("x.pem", cert), "private key")

    def test_garbage(self) -> None:
        self.assertConfigError(self.write("x.pem", b"not a pem\n"), "no PEM certificate")

    def test_encrypted_key(self) -> None:
        from cryptography.hazmat.primitives import serialization

        pem = make_cert(["a.example"])
        key = serialization.load_pem_private_key(pem, None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.assertConfigError(self.write("x.pem", encrypted + split_pem(pem)[1]), "encrypted")

    def test_unreadable(self) -> None:
        if os.geteuid() == 0:
            raise self.skipTest("root reads any file")
        path = self.write("x.pem", make_cert(["a.example"]))
        os.chmod(path, 0)
        self.assertConfigError(path, "permission denied")

    def test_directory(self) -> None:
        # Unlike a mode-000 file, this is unreadable even when the tests run as root.
        self.assertConfigError(self.dir, "cannot read")

    def test_one_bad_among_good(self) -> None:
        good = self.write("a.pem", make_cert(["a.example"]))
        bad = os.path.join(self.dir, "absent.pem")
        error = self.assertRaises(ConfigError, ServerTLSContextFactory, [good, bad])
        self.assertEqual(error.path, bad)

    def test_common_name_only_without_san(self) -> None:
        path = self.write("a.pem", make_cert([], common_name="cn.example"))
        self.assertEqual(ServerTLSContextFactory([path]).names(), [(path, ("cn.example",))])


class SelfSignedTests(SynchronousTestCase):
    def test_created_then_reused(self) -> None:
        state = os.path.join(scratch_dir(self), "state")
        path = ensure_self_signed(state)
        self.assertEqual(path, os.path.join(state, "tls", "selfsigned.pem"))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, "rb") as f:
            first = f.read()
        self.assertEqual(ensure_self_signed(state), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(ServerTLSContextFactory([path]).names(), [(path, ("localhost",))])

    def test_names_and_ips(self) -> None:
        from cryptography import x509

        path = ensure_self_signed(scratch_dir(self), names=("demo.example",), ips=("10.0.0.1",))
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(split_pem(f.read())[1])
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["demo.example"])
        self.assertEqual([str(ip) for ip in san.get_values_for_type(x509.IPAddress)], ["10.0.0.1"])


class ArrayCertificatesTests(SynchronousTestCase):
    def test_init_makes_a_ca_node_and_admin_certificates_and_refuses_to_overwrite(self) -> None:
        from cryptography import x509

        from dlba.array.peers import identity
        from dlba.certs import CertificatesExist, ca_key_path, init_array_certificates

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        ca, admin = os.path.join(d, "tls", "ca.pem"), os.path.join(d, "tls", "admin.pem")
        nodes = [(n, os.path.join(d, "tls", f"node{n}.pem"), f"127.0.0.1{n}") for n in (1, 2)]
        written = init_array_certificates(ca, admin, nodes)
        self.assertEqual(len(written), 5)
        with open(ca, "rb") as f:
            self.assertNotIn(b"PRIVATE KEY", f.read())  # nodes get the CA without its key
        self.assertEqual(os.stat(ca_key_path(ca)).st_mode & 0o777, 0o600)
        for n, path, _ in nodes:
            with open(path, "rb") as f:
                pem = f.read()
            cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
            self.assertEqual(identity(cert, [1, 2]), f"node{n}")
        with open(admin, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
        self.assertEqual(identity(cert, [1, 2]), "admin")
        with self.assertRaises(CertificatesExist) as caught:
            init_array_certificates(ca, admin, nodes)
        self.assertIn(ca, caught.exception.paths)
        self.assertEqual(len(init_array_certificates(ca, admin, nodes, force=True)), 5)
