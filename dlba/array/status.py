"""The status daemon (DESIGN.md §2): a read-only line protocol on ``listen.status``.

``STATUS`` answers this node and its back-end status table; ``TABLES`` what this node
holds of the array's tables (client table, node status, summary).  One JSON object a
line, then ``END``, then the connection closes.  Anything else gets ``ERR <reason>`` and a
close.  It is open to anyone who can reach the port, so it is cheap to refuse: lines
are short, idle clients are cut off soon, and only a few connections are served at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin

from dlba.report import NodeReport, Row

log = Logger(namespace="dlba.array.status")

END = b"END"


def encode(lines: list[Row]) -> bytes:
    """JSON lines, then ``END``: the answer format of every command."""
    body = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\r\n" for line in lines)
    return body + END + b"\r\n"


class StatusProtocol(LineOnlyReceiver, TimeoutMixin):
    """One command, one answer, close."""

    MAX_LENGTH = 64  # the longest command is 6 bytes: anything long is not a client of ours
    delimiter = b"\n"  # "\r\n" from a person's nc or telnet is taken as well

    factory: StatusFactory
    transport: Any

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any) -> Any:
        return self.factory.clock.callLater(delay, f, *a)

    def connectionMade(self) -> None:
        if self.factory.open >= self.factory.max_connections:
            self.factory.refused += 1
            self.transport.write(b"ERR busy\r\n")
            self.transport.loseConnection()
            self._counted = False
            return
        self._counted = True
        self.factory.open += 1
        self.setTimeout(self.factory.idle_timeout)

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        if self._counted:
            self.factory.open -= 1

    def lineReceived(self, line: bytes) -> None:
        if self.transport.disconnecting:
            return
        command = line.strip().upper()
        now = self.factory.clock.seconds()
        report = self.factory.report
        if command == b"STATUS":
            self._answer(encode(report.status_lines(now)))
        elif command == b"TABLES":
            self._answer(encode(report.tables_lines(now)))
        elif not command:
            return  # a stray blank line (a person pressing return) is not a command
        else:
            self._refuse("unknown command; say STATUS or TABLES")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse("line too long")

    def timeoutConnection(self) -> None:
        self._refuse("idle too long")

    def _answer(self, data: bytes) -> None:
        self.setTimeout(None)
        self.factory.answered += 1
        self.transport.write(data)
        self.transport.loseConnection()

    def _refuse(self, reason: str) -> None:
        self.setTimeout(None)
        self.factory.errors += 1
        self.transport.write(b"ERR " + reason.encode() + b"\r\n")
        self.transport.loseConnection()


class StatusFactory(Factory):
    noisy = False
    protocol = StatusProtocol  # type: ignore[assignment]

    def __init__(
        self,
        report: NodeReport,
        clock: IReactorTime,
        *,
        idle_timeout: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        self.report = report
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.open = 0
        self.answered = 0
        self.errors = 0
        self.refused = 0
