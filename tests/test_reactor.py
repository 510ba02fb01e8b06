"""LeanEPollReactor: Twisted's epoll reactor without a log context per event still runs
connections, timers and errors the way the stock one does."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.protocol import connectionDone
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

try:
    from dlba.proxy.reactor import LeanEPollReactor
except ImportError:  # no select.epoll on this platform
    LeanEPollReactor = None  # type: ignore[assignment,misc]


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a protocol bug")
        self.transport.write(data)  # type: ignore[union-attr]


class Client(protocol.Protocol):
    def __init__(self, reactor: Any, send: bytes, result: dict[str, Any]) -> None:
        self.reactor, self.send, self.result = reactor, send, result

    def connectionMade(self) -> None:
        self.transport.write(self.send)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.result["got"] = self.result.get("got", b"") + data
        if self.result["got"] == self.send:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.result["lost"] = getattr(reason.type, "__name__", "?")
        self.reactor.stop()


class LeanReactorTests(unittest.TestCase):
    def setUp(self) -> None:
        if LeanEPollReactor is None:
            raise unittest.SkipTest("no epoll on this platform: LeanEPollReactor is not used")

    def run_client(self, send: bytes) -> dict[str, Any]:
        # A reactor of its own, run to completion inside the test (as Twisted's
        # ReactorBuilder tests do); a timer stops it should the exchange hang.
        reactor = LeanEPollReactor()
        server = protocol.ServerFactory.forProtocol(Echo)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        result: dict[str, Any] = {}
        factory = protocol.ClientFactory()
        factory.protocol = lambda: Client(reactor, send, result)  # type: ignore[assignment,misc]
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)

        def hung() -> None:
            result["timeout"] = True
            reactor.stop()

        watchdog = reactor.callLater(10, hung)
        reactor.run(installSignalHandlers=False)
        if watchdog.active():
            watchdog.cancel()
        port.stopListening()
        for reader in reactor.getReaders():  # the server side of the connection, if left
            reader.connectionLost(None)  # type: ignore[attr-defined]
        return result

    def test_echo_round_trip(self) -> None:
        result = self.run_client(b"x" * 200_000)
        self.assertNotIn("timeout", result)
        self.assertEqual(result["got"], b"x" * 200_000)
        self.assertEqual(result["lost"], "ConnectionDone")

    def test_protocol_exception_is_logged_and_disconnects(self) -> None:
        errors: list[dict[str, Any]] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("isError"):
                errors.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            result = self.run_client(b"boom")
        finally:
            globalLogPublisher.removeObserver(observe)
        self.flushLoggedErrors(RuntimeError)
        self.assertNotIn("timeout", result)
        self.assertIn(result["lost"], ("ConnectionDone", "ConnectionLost"))
        self.assertTrue(any("a protocol bug" in str(e.get("log_text", "")) for e in errors), errors)
