"""The AMP commands of the control plane (DESIGN.md §2, §7): the contract between nodes,
``dlba-ctl`` and the Python client (``dlba.client``).

Every command is typed; every refusal is an AMP error with a code below and a message a
person can act on.  Values larger than AMP's 64 KiB limit (a config file, a whole client
table, a status report) travel as ``BigBytes``: split over numbered keys.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

_log = Logger()

# Bucket changes travel packed: (bucket, node) as two little-endian int32 each.
PAIR = "<ii"


def pack_buckets(buckets: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack(PAIR, b, n) for b, n in buckets)


def unpack_buckets(data: bytes) -> dict[int, int]:
    return dict(struct.iter_unpack(PAIR, data))


class QuietAMP(amp.AMP):
    """AMP whose connections are logged at debug, not info: an array opens and closes them
    all day (peers, pings, dlba-ctl), and Twisted's two info lines each drown the log."""

    def makeConnection(self, transport: ITransport) -> None:
        self._transportPeer = transport.getPeer()  # type: ignore[attr-defined]
        self._transportHost = transport.getHost()  # type: ignore[attr-defined]
        _log.debug("AMP connection from {peer}", peer=self._transportPeer)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _log.debug("AMP connection to {peer} lost", peer=self._transportPeer)
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None  # type: ignore[assignment]


class OneConnectionFactory(Factory):
    """``connectProtocol``'s factory without its "Starting factory" lines."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_instance


class BigBytes(amp.Argument):
    """Bytes of any length: the count of chunks under ``name``, the chunks under
    ``name.0``, ``name.1``, …"""

    CHUNK = amp.MAX_VALUE_LENGTH

    def toBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        value: bytes = self.retrieve(objects, amp._wireNameToPythonIdentifier(name), proto)
        chunks = [value[i : i + self.CHUNK] for i in range(0, len(value), self.CHUNK)]
        strings[name] = str(len(chunks)).encode()
        for i, chunk in enumerate(chunks):
            strings[name + b"." + str(i).encode()] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        count = int(self.retrieve(strings, name, proto))
        if not 0 <= count <= 1024:  # 64 MiB: far beyond any config or table
            raise ValueError(f"{name!r}: {count} chunks")
        parts = [strings.pop(name + b"." + str(i).encode()) for i in range(count)]
        objects[amp._wireNameToPythonIdentifier(name)] = b"".join(parts)


class BigUnicode(BigBytes):
    def toBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        key = amp._wireNameToPythonIdentifier(name)
        objects = {**objects, key: objects[key].encode("utf-8")}
        super().toBox(name, strings, objects, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = amp._wireNameToPythonIdentifier(name)
        objects[key] = objects[key].decode("utf-8")


# -- errors: a code each, the message says what to do ------------------------------------


class NotAllowed(Exception):
    """The peer's certificate does not allow this command (a node asking an admin one)."""


class ConfigRefused(Exception):
    """The pushed config is invalid here; the message lists every error, one a line."""


class NothingStaged(Exception):
    """A commit named a config this node has not validated (or another one since)."""


class UnknownTarget(Exception):
    """No such pool, back end or node."""


class BadState(Exception):
    """A state that is not one of the command's states."""


ERRORS: dict[type[Exception], bytes] = {
    NotAllowed: b"NOT_ALLOWED",
    ConfigRefused: b"CONFIG_REFUSED",
    NothingStaged: b"NOTHING_STAGED",
    UnknownTarget: b"UNKNOWN_TARGET",
    BadState: b"BAD_STATE",
}


# -- the commands ---------------------------------------------------------------------------


class Ping(amp.Command):
    """Liveness, carrying the sender's view so an old scheduler hears of a newer term."""

    arguments = [
        (b"node", amp.Integer()),  # the sender; 0 for dlba-ctl
        (b"scheduler", amp.Integer()),  # who the sender thinks is scheduler; -1: nobody
        (b"term", amp.Integer()),
    ]
    response = [(b"node", amp.Integer()), (b"scheduler", amp.Integer()), (b"term", amp.Integer())]
    errors = ERRORS


class WhoIsScheduler(amp.Command):
    arguments = []  # type: ignore[var-annotated]
    response = [(b"node", amp.Integer()), (b"term", amp.Integer())]
    errors = ERRORS


class GetClientTable(amp.Command):
    """The buckets changed since ``since_version`` of table ``table_id``, or the whole
    table (``full``) when the asker is too far behind or has another table."""

    arguments = [(b"since_version", amp.Integer()), (b"table_id", amp.Unicode())]
    response = [
        (b"version", amp.Integer()),
        (b"table_id", amp.Unicode()),
        (b"full", amp.Boolean()),
        (b"size", amp.Integer()),
        (b"buckets", BigBytes()),  # packed PAIRs; full: every bucket
    ]
    errors = ERRORS


class PushConfig(amp.Command):
    """Validate ``text`` only; on success it is staged under ``digest`` (its SHA-256)."""

    arguments = [(b"text", BigUnicode()), (b"serial", amp.Integer())]
    response = [(b"digest", amp.Unicode())]
    errors = ERRORS


class CommitConfig(amp.Command):
    """Apply the staged config with this digest."""

    arguments = [(b"digest", amp.Unicode())]
    response = [(b"serial", amp.Integer())]
    errors = ERRORS


class GetConfig(amp.Command):
    """The committed config (how a node that was down catches up from a peer)."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"text", BigUnicode()), (b"serial", amp.Integer())]
    errors = ERRORS


class GetStatus(amp.Command):
    """The node report (``dlba.report``) as JSON."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"report", BigBytes())]
    errors = ERRORS


class SetBackendState(amp.Command):
    arguments = [
        (b"pool", amp.Unicode()),  # "" for every pool the back end is in
        (b"backend", amp.Integer()),
        (b"state", amp.Unicode()),  # enabled | disabled | drain
        (b"grace", amp.Float()),  # drain: seconds existing sessions may stay
    ]
    response = [(b"state", amp.Unicode())]
    errors = ERRORS


class SetNodeState(amp.Command):
    arguments = [(b"node", amp.Integer()), (b"state", amp.Unicode())]  # enabled | disabled
    response = [(b"state", amp.Unicode())]
    errors = ERRORS


# Who may ask what: dlba-ctl (the ``admin`` certificate) may ask everything; a node only
# what nodes ask each other.
class SetTicketKeys(amp.Command):
    """The scheduler's TLS session-ticket keys (``TicketKeyRing.to_bytes``), merged by the
    receiver; answers with the generation it holds after.  Node certificates only."""

    arguments = [(b"keys", BigBytes())]
    response = [(b"generation", amp.Unicode())]
    errors = ERRORS


NODE_COMMANDS: frozenset[type[amp.Command]] = frozenset(
    {Ping, WhoIsScheduler, GetClientTable, GetConfig, GetStatus, SetTicketKeys}
)
