"""The sweep service: the Twisted side of ``dlba.sweep`` — it only connects and reads.

Each visit is one TCP connection to a node's status daemon: send ``STATUS``, read JSON
lines to ``END``, close.  The whole try (connect included) must end by the visit's
deadline; otherwise the connection is aborted and the try counts as missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from dlba.array.status import END
from dlba.sweep import BadAnswer, Pause, Sweep, Visit, parse_status
from dlba.tables import NodeState

log = Logger(namespace="dlba.array.sweep")

Address = tuple[str, int]


class StatusError(Exception):
    """A status daemon answered ``ERR``, or closed before ``END``."""


class StatusClient(LineOnlyReceiver):
    """Asks one status daemon one command; ``done`` fires with the lines before END."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20  # a node with thousands of back ends still fits
    transport: Any

    def __init__(self, command: bytes) -> None:
        self.command = command
        self.lines: list[bytes] = []
        self.done: Deferred[list[bytes]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.command + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if self.done.called:
            return
        if line == END:
            self.done.callback(self.lines)
            self.transport.loseConnection()
        elif line.startswith(b"ERR"):
            self.done.errback(StatusError(line.decode("utf-8", "replace")))
            self.transport.loseConnection()
        else:
            self.lines.append(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self.done.called:
            self.done.errback(StatusError("answer line too long"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(StatusError("closed before END"))


class _AskFactory(ClientFactory):
    noisy = False

    def __init__(self, command: bytes) -> None:
        self.client = StatusClient(command)

    def buildProtocol(self, addr: Any) -> StatusClient:
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.client.done.called:
            self.client.done.errback(reason)


def ask(reactor: Any, address: Address, command: bytes, timeout: float) -> Deferred[list[bytes]]:
    """The answer lines of ``command`` at ``address``, within ``timeout`` seconds."""
    factory = _AskFactory(command)
    connector = reactor.connectTCP(address[0], address[1], factory, timeout=timeout)
    d = factory.client.done

    def give_up(failure: Failure) -> Failure:
        connector.disconnect()  # aborts a connect in progress, or the connection
        return failure

    d.addTimeout(timeout, reactor)
    d.addErrback(give_up)
    return d


def describe(failure: Failure) -> str:
    """One short line for the node status table's last error."""
    if failure.check(TimeoutError):
        return "timed out"
    if failure.check(BadAnswer, StatusError):
        return str(failure.value)
    if failure.check(ConnectError):
        return type(failure.value).__name__.removesuffix("Error").lower() or "connect failed"
    if failure.check(ConnectionDone):
        return "closed before END"
    return failure.getErrorMessage()


class SweepService(Service):
    """Drives a ``Sweep`` on the reactor while this node is the one that sweeps."""

    name = "sweep"

    def __init__(
        self,
        sweep: Sweep,
        reactor: Any,  # IReactorTCP and IReactorTime
        address_of: Callable[[NodeState], Address | None],
        *,
        active: bool = True,
    ) -> None:
        self.sweep = sweep
        self.reactor = reactor
        self.address_of = address_of
        # Only the scheduler sweeps: failover turns this on and off as the role changes.
        self.active = active
        self._call: IDelayedCall | None = None
        self._asking: Deferred[list[bytes]] | None = None
        sweep.on_failed.append(self._failed)
        sweep.on_rejoined.append(self._rejoined)

    def startService(self) -> None:
        super().startService()
        if self.active:
            # On the next turn: the status listener (which the node sweeps too) is up.
            self._call = self.reactor.callLater(0, self._step)

    def activate(self) -> None:
        """This node became scheduler: sweep from the next turn."""
        if self.active:
            return
        self.active = True
        if self.running and self._call is None and self._asking is None:
            self._call = self.reactor.callLater(0, self._step)

    def deactivate(self) -> None:
        """This node stood down: the sweep stops (a visit under way is abandoned)."""
        self.active = False
        self._halt()

    def stopService(self) -> None:
        super().stopService()
        self._halt()

    def _halt(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._asking is not None:
            asking, self._asking = self._asking, None
            asking.cancel()

    def _step(self) -> None:
        self._call = None
        if not self.running or not self.active:
            return
        now = self.reactor.seconds()
        action = self.sweep.next(now)
        if isinstance(action, Pause):
            self._call = self.reactor.callLater(max(0.0, action.until - now), self._step)
            return
        self._visit(action)

    def _visit(self, visit: Visit) -> None:
        node = visit.node
        address = self.address_of(node)
        if address is None:
            self.sweep.missed(node, "no status address", self.reactor.seconds())
            self._call = self.reactor.callLater(0, self._step)
            return
        timeout = max(0.0, visit.deadline - self.reactor.seconds())
        d = self._asking = ask(self.reactor, address, b"STATUS", timeout)

        def answered(lines: list[bytes]) -> None:
            self.sweep.answered(node, parse_status(lines), self.reactor.seconds())

        def missed(failure: Failure) -> None:
            if not self.running or not self.active:
                return  # cancelled by a stop or a stand-down: not the node's fault
            self.sweep.missed(node, describe(failure), self.reactor.seconds())

        def next_step(_: object) -> None:
            if self._asking is d:
                self._asking = None
                self._call = self.reactor.callLater(0, self._step)

        d.addCallback(answered)
        d.addErrback(missed)  # a bad answer (raised in answered) is a miss too
        d.addBoth(next_step)

    def _failed(self, number: int) -> None:
        node = self.sweep.nodes.get(number)
        log.warn(
            "node {node} failed: {error}",
            node=number,
            error=node.last_error if node is not None else "",
        )

    def _rejoined(self, number: int) -> None:
        log.info("node {node} answers again: rejoined", node=number)
