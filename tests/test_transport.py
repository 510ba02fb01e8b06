"""dlba.proxy.transport: write-through TCP, over real loopback sockets and the real reactor.

Every wait is on a Deferred, bounded by the test case's timeout; the only blocking call
is a ``select`` with a deadline, to see a peer's reset reach a socket that Twisted is
not reading.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import tempfile
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IPushProducer,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from dlba.certs import make_cert
from dlba.config import parse
from dlba.proxy.service import make_proxy_service
from dlba.proxy.transport import (
    WriteThroughClient,
    WriteThroughPort,
    WriteThroughServer,
    WriteThroughServerEndpoint,
    connect_tcp,
    listen_endpoint,
    listen_tcp,
)
from dlba.routing import backend_table, build_router
from dlba.tls import ServerTLSContextFactory, wrap_tls

reactor: Any = _reactor


class Recorder(Protocol):
    """Keeps what arrives; Deferreds for the connection, an amount of data, and the end."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.made: Deferred[Recorder] = Deferred()
        self.lost: Deferred[BaseException] = Deferred()  # the reason's exception
        self._waiting: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        whole = self.data
        waiting, self._waiting = self._waiting, []
        for done, d in waiting:
            if done(whole):
                d.callback(whole)
            else:
                self._waiting.append((done, d))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        for _, d in self._waiting:
            d.errback(reason)
        self._waiting = []
        self.lost.callback(cast(BaseException, reason.value))

    def until(self, done: Callable[[bytes], bool]) -> Deferred[bytes]:
        """Fires with all that arrived once ``done`` of it holds."""
        d: Deferred[bytes] = Deferred()
        if done(self.data):
            d.callback(self.data)
        else:
            self._waiting.append((done, d))
        return d

    def when_received(self, size: int) -> Deferred[bytes]:
        return self.until(lambda data: len(data) >= size)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """Hears the peer's half-close, and answers on the half still open."""

    reply = b""

    def __init__(self) -> None:
        super().__init__()
        self.read_closed: Deferred[bytes] = Deferred()

    def readConnectionLost(self) -> None:
        self.read_closed.callback(self.data)
        assert self.transport is not None
        self.transport.write(self.reply)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Accepting(Factory):
    """Each accepted connection's protocol goes into ``accepted``."""

    def __init__(self, make: Callable[[], Recorder] = Recorder) -> None:
        self.make = make
        self.accepted: DeferredQueue[Recorder] = DeferredQueue()

    def buildProtocol(self, addr: object) -> Recorder:
        proto = self.make()
        proto.factory = self
        proto.made.addCallback(self.accepted.put)
        return proto


class Connecting(ClientFactory):
    def __init__(self, proto: Recorder) -> None:
        self.proto = proto

    def buildProtocol(self, addr: object) -> Recorder:
        return self.proto

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.proto.made.errback(reason)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def buffered(transport: Any) -> int:
    """What the transport holds in user space, not yet sent."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


class _LoopbackCase(TestCase):
    timeout = 30

    def listen(self, factory: IProtocolFactory) -> int:
        port = listen_tcp(reactor, 0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(cast(Any, port.getHost()).port)

    async def connect(self, port: int, client: Recorder) -> Recorder:
        connect_tcp(reactor, "127.0.0.1", port, Connecting(client), timeout=5)
        await client.made
        self.addCleanup(self._close, client)
        return client

    async def pair(
        self, client: Recorder | None = None, server: Callable[[], Recorder] = Recorder
    ) -> tuple[Recorder, Recorder]:
        """A connected (client, server) pair of write-through transports."""
        accepting = Accepting(server)
        port = self.listen(accepting)
        client = await self.connect(port, client or Recorder())
        accepted = await accepting.accepted.get()
        self.addCleanup(self._close, accepted)
        return client, accepted

    def _close(self, proto: Recorder) -> Deferred[BaseException] | None:
        if proto.lost.called:
            return None
        assert proto.transport is not None
        cast(Any, proto.transport).abortConnection()
        return proto.lost


class WriteThroughTests(_LoopbackCase):
    async def test_transports_write_through(self) -> None:
        client, server = await self.pair()
        self.assertIsInstance(client.transport, WriteThroughClient)
        self.assertIsInstance(server.transport, WriteThroughServer)

    async def test_small_write_leaves_at_once(self) -> None:
        """The fast path: nothing buffered, never registered for writing."""
        client, server = await self.pair()
        for proto in (client, server):
            transport = cast(Any, proto.transport)
            transport.write(b"hello")
            self.assertNotIn(transport, reactor.getWriters())
            self.assertEqual(buffered(transport), 0)
        self.assertEqual(await server.when_received(5), b"hello")
        self.assertEqual(await client.when_received(5), b"hello")

    async def test_writes_arrive_in_order(self) -> None:
        client, server = await self.pair()
        transport = cast(Any, client.transport)
        expected = []
        for i in range(200):
            piece = b"%d," % i
            expected.append(piece)
            if i % 3:
                transport.write(piece)
            else:
                transport.writeSequence([piece[:1], piece[1:]])
        whole = b"".join(expected)
        self.assertEqual(await server.when_received(len(whole)), whole)

    async def test_large_write_partly_sent_then_drained(self) -> None:
        """More than one send can take: the remainder is buffered, the rest follows it."""
        client, server = await self.pair()
        transport = cast(Any, client.transport)
        big = os.urandom(8 * 1024 * 1024)
        transport.write(big)
        left = buffered(transport)
        self.assertTrue(0 < left < len(big), f"{left} of {len(big)} bytes left buffered")
        self.assertIn(transport, reactor.getWriters())
        transport.write(b"tail")  # buffered behind the rest, never sent ahead of it
        self.assertEqual(buffered(transport), left + 4)
        data = await server.when_received(len(big) + 4)
        self.assertEqual(sha(data), sha(big + b"tail"))
        # doWrite flushed the lot and unregistered: the next write goes through again.
        self.assertNotIn(transport, reactor.getWriters())
        transport.write(b"again")
        self.assertEqual(buffered(transport), 0)
        await server.when_received(len(big) + 9)

    async def test_write_sequence_is_one_send(self) -> None:
        client, server = await self.pair()
        transport = cast(Any, client.transport)
        sends = CountingSocket(transport.socket)
        transport.socket = sends
        pieces = [b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n"]
        transport.writeSequence(pieces)
        self.assertEqual(sends.sent, [b"".join(pieces)])
        self.assertEqual(buffered(transport), 0)
        self.assertEqual(await server.when_received(27), b"".join(pieces))

    async def test_lose_connection_flushes_first(self) -> None:
        client, server = await self.pair()
        transport = cast(Any, client.transport)
        big = os.urandom(4 * 1024 * 1024)
        transport.write(b"head")
        transport.write(big)
        transport.loseConnection()
        transport.write(b"last")  # after loseConnection, still before the close
        self.assertIsInstance(await server.lost, ConnectionDone)
        self.assertEqual(sha(server.data), sha(b"head" + big + b"last"))
        self.assertIsInstance(await client.lost, ConnectionDone)

    async def test_small_write_then_lose_connection(self) -> None:
        client, server = await self.pair()
        cast(Any, client.transport).write(b"bye")
        cast(Any, client.transport).loseConnection()
        self.assertIsInstance(await server.lost, ConnectionDone)
        self.assertEqual(server.data, b"bye")

    async def test_half_close(self) -> None:
        """loseWriteConnection after writes: the peer reads all, then EOF, and can answer."""
        answer = HalfCloser()
        client, server = await self.pair(client=answer, server=HalfCloser)
        cast(HalfCloser, server).reply = b"answer"
        transport = cast(Any, client.transport)
        big = os.urandom(1024 * 1024)
        transport.write(big)
        transport.loseWriteConnection()
        transport.write(b"late")  # still before the shutdown: Twisted sends it too
        got = await cast(HalfCloser, server).read_closed
        self.assertEqual(sha(got), sha(big + b"late"))
        self.assertIsInstance(await client.lost, ConnectionDone)
        self.assertEqual(client.data, b"answer")


class CountingSocket:
    """Stands in for a transport's socket, recording each send."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        n = self._sock.send(data)
        self.sent.append(bytes(data[:n]))
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@implementer(IPushProducer)
class Flood:
    """A streaming producer writing 64 KiB chunks until it is paused."""

    CHUNK = b"x" * 65536

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False
        self.written = 0
        self.resumed: Deferred[None] = Deferred()

    def flood(self, limit: int = 64 * 1024 * 1024) -> None:
        while not self.paused and self.written < limit:
            self.transport.write(self.CHUNK)
            self.written += len(self.CHUNK)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.resumed.called:
            self.resumed.callback(None)

    def stopProducing(self) -> None:
        pass


class Pull:
    """A pull producer: one chunk per resumeProducing, then unregisters and closes."""

    def __init__(self, transport: Any, chunks: list[bytes]) -> None:
        self.transport = transport
        self.chunks = chunks

    def resumeProducing(self) -> None:
        if self.chunks:
            self.transport.write(self.chunks.pop(0))
        else:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        pass


class ProducerTests(_LoopbackCase):
    async def test_streaming_producer_paused_then_resumed(self) -> None:
        client, server = await self.pair()
        cast(Any, server.transport).pauseProducing()  # the peer reads nothing
        transport = cast(Any, client.transport)
        flood = Flood(transport)
        transport.registerProducer(flood, True)
        transport.write(b"first")  # a streaming producer, not paused: still at once
        self.assertEqual(buffered(transport), 0)
        flood.flood()
        self.assertTrue(flood.paused, f"never paused after {flood.written} bytes")
        self.assertGreater(buffered(transport), transport.bufferSize)
        self.assertIn(transport, reactor.getWriters())
        # While paused, writes queue behind what is buffered.
        before = buffered(transport)
        transport.write(b"behind")
        self.assertEqual(buffered(transport), before + 6)
        cast(Any, server.transport).resumeProducing()
        await flood.resumed
        self.assertEqual(buffered(transport), 0)
        total = 5 + flood.written + 6
        data = await server.when_received(total)
        self.assertEqual(data[:5], b"first")
        self.assertEqual(data[-6:], b"behind")
        self.assertEqual(len(data), total)

    async def test_pull_producer_is_asked_for_more(self) -> None:
        client, server = await self.pair()
        transport = cast(Any, client.transport)
        chunks = [os.urandom(1000 * (i + 1)) for i in range(20)]
        transport.registerProducer(Pull(transport, list(chunks)), False)
        self.assertIsInstance(await server.lost, ConnectionDone)
        self.assertEqual(sha(server.data), sha(b"".join(chunks)))


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


class TLSTests(_LoopbackCase):
    def setUp(self) -> None:
        pem = make_cert(["localhost"])
        fd, path = tempfile.mkstemp(prefix="dlba-test-transport-", suffix=".pem")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        self.server_options = ServerTLSContextFactory([path])  # as dlba's https listener
        self.client_options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pem))

    async def test_tls_both_ways(self) -> None:
        accepting = Accepting(Echo)
        port = self.listen(wrap_tls(accepting, self.server_options))
        client = Recorder()
        wrapped = TLSMemoryBIOFactory(self.client_options, True, Connecting(client))
        connector = connect_tcp(reactor, "127.0.0.1", port, wrapped, timeout=5)
        self.addCleanup(connector.disconnect)
        await client.made
        server = await accepting.accepted.get()
        tls = cast(Any, client.transport)
        self.assertIsInstance(tls.transport, WriteThroughClient)
        self.assertIsInstance(cast(Any, server.transport).transport, WriteThroughServer)
        tls.write(b"ping")
        self.assertEqual(await client.when_received(4), b"ping")
        big = os.urandom(3 * 1024 * 1024)
        tls.write(big)  # more than the sockets hold: the echo backs up both ways
        echoed = await client.when_received(4 + len(big))
        self.assertEqual(sha(echoed), sha(b"ping" + big))
        tls.loseConnection()
        self.assertIsInstance(await server.lost, ConnectionDone)
        await client.lost

    async def test_start_tls(self) -> None:
        """startTLS on a write-through transport: Twisted's TLS bypass still writes."""
        server_options, client_options = self.server_options, self.client_options

        class StartsTLS(Echo):
            def connectionMade(self) -> None:
                cast(Any, self.transport).startTLS(server_options)
                super().connectionMade()

        client, server = await self.pair(server=StartsTLS)
        transport = cast(Any, client.transport)
        transport.startTLS(client_options)
        transport.write(b"secret")
        self.assertEqual(await client.when_received(6), b"secret")
        self.assertEqual(server.data, b"secret")


class LossTests(_LoopbackCase):
    async def reset_peer(self, client: Recorder) -> None:
        """A client connected to a bare socket that then resets the connection."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        await self.connect(listener.getsockname()[1], client)
        listener.settimeout(5)
        peer, _ = listener.accept()  # the handshake is done: this does not wait
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # with linger 0: RST
        fd = cast(Any, client.transport).socket.fileno()
        readable, _, _ = select.select([fd], [], [], 5)
        self.assertEqual(readable, [fd], "the reset never reached the client")

    async def check_loss(self, client: Recorder) -> None:
        transport = cast(Any, client.transport)
        transport.write(b"into the void")  # must not raise, nor lose the connection under us
        self.assertFalse(client.lost.called)
        self.assertIsInstance(await client.lost, ConnectionLost)

    async def test_write_to_reset_peer(self) -> None:
        client = Recorder()
        await self.reset_peer(client)
        await self.check_loss(client)

    async def test_write_to_reset_peer_half_closeable(self) -> None:
        """The send consumed the reset: the EOF a read then sees is still a loss, not a
        half-close."""
        client = HalfCloser()
        await self.reset_peer(client)
        await self.check_loss(client)
        self.assertFalse(client.read_closed.called)

    async def test_write_to_reset_peer_while_not_reading(self) -> None:
        client = Recorder()
        await self.reset_peer(client)
        cast(Any, client.transport).pauseProducing()
        await self.check_loss(client)

    async def test_writes_after_the_failed_send_are_dropped_with_it(self) -> None:
        client = Recorder()
        await self.reset_peer(client)
        transport = cast(Any, client.transport)
        transport.write(b"one")
        transport.writeSequence([b"two", b"three"])
        transport.loseConnection()
        self.assertIsInstance(await client.lost, ConnectionLost)


class ListenTests(TestCase):
    timeout = 30

    def test_tcp_description_writes_through(self) -> None:
        endpoint = listen_endpoint(reactor, "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(endpoint, WriteThroughServerEndpoint)
        port: IListeningPort = self.successResultOf(endpoint.listen(Accepting()))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, WriteThroughPort)
        self.assertEqual(cast(Any, port.getHost()).host, "127.0.0.1")

    def test_backlog_and_interface_carried_over(self) -> None:
        endpoint = cast(
            WriteThroughServerEndpoint,
            listen_endpoint(reactor, "tcp6:0:backlog=7:interface=\\:\\:1"),
        )
        self.assertEqual((endpoint.port, endpoint.backlog, endpoint.interface), (0, 7, "::1"))

    def test_other_descriptions_left_alone(self) -> None:
        endpoint = listen_endpoint(reactor, "unix:/nonexistent/dlba.sock")
        self.assertIsInstance(endpoint, UNIXServerEndpoint)

    def test_port_in_use(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        number = taken.getsockname()[1]
        endpoint = listen_endpoint(reactor, f"tcp:{number}:interface=127.0.0.1")
        failure = self.failureResultOf(endpoint.listen(Accepting()), CannotListenError)
        self.assertIn("Address already in use", str(failure.value))


class MemoryReactorTests(SynchronousTestCase):
    """Reactors without file descriptors keep their own listenTCP and connectTCP."""

    def test_listen_and_connect_fall_back(self) -> None:
        memory = MemoryReactorClock()
        listen_tcp(memory, 8080, Factory(), 50, "127.0.0.1")
        self.assertEqual(memory.tcpServers[0][0], 8080)
        self.assertEqual(memory.tcpServers[0][3], "127.0.0.1")
        connect_tcp(memory, "127.0.0.1", 9000, ClientFactory(), timeout=3)
        self.assertEqual(memory.tcpClients[0][:2], ("127.0.0.1", 9000))
        self.assertEqual(memory.tcpClients[0][3], 3)

    def test_endpoint_falls_back(self) -> None:
        memory = MemoryReactorClock()
        endpoint = listen_endpoint(memory, "tcp:8080:interface=127.0.0.1")
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.successResultOf(endpoint.listen(Factory()))
        self.assertEqual(memory.tcpServers[0][0], 8080)


class Answer(Protocol):
    """A back end: one fixed keep-alive answer per request."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class ProxyWiringTests(TestCase):
    """The proxy's listener and its back-end connections are write-through ones."""

    timeout = 30

    async def test_proxy_connections_write_through(self) -> None:
        backend = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        http = "tcp:0:interface=127.0.0.1"
        text = (
            f'[listen]\nhttp = "{http}"\n'
            '[[pool]]\nname = "a"\n'
            f'[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:{backend.getHost().port}"\n'
        )
        config = parse(text, "wiring.toml")
        table = backend_table(config)
        proxy = make_proxy_service(
            config, table, build_router(config, table), reactor, listen={"http": http}
        )
        proxy.startService()
        self.addCleanup(proxy.stopService)
        ports: list[IListeningPort] = []

        def keep(port: IListeningPort) -> IListeningPort:
            ports.append(port)
            return port  # not successResultOf: stopService needs the port too

        proxy.getServiceNamed("http")._waitingForPort.addCallback(keep)
        (listening,) = ports
        self.assertIsInstance(listening, WriteThroughPort)
        client = Recorder()
        port = cast(Any, listening.getHost()).port
        connect_tcp(reactor, "127.0.0.1", port, Connecting(client), 5)
        await client.made
        self.addCleanup(cast(Any, client.transport).loseConnection)
        request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        for n in (1, 2):  # the second over the kept-alive back-end connection
            cast(Any, client.transport).write(request)

            def answered(data: bytes, n: int = n) -> bool:
                return data.count(b"\r\n\r\nok") == n

            await client.until(answered)
        (front,) = proxy.core.connections
        self.assertIsInstance(cast(Any, front).transport, WriteThroughServer)
        (pool,) = proxy.core.upstreams.values()
        (conn,) = pool.all
        self.assertIsInstance(conn.transport, WriteThroughClient)
        self.assertEqual(pool.reused, 1)
