"""A small client of the control plane, for dlba-ctl and for operators' scripts.

It reads the array's config to find the nodes (each node's ``ip`` and the ``listen.sync``
port) and the certificates (``[tls] ca`` and ``admin_certificate``), and speaks the AMP
commands of ``dlba.array.commands`` over mutual TLS.  Every call returns a Deferred; a
script drives it with ``twisted.internet.task.react``::

    from twisted.internet import task
    from dlba.client import ArrayClient
    from dlba.config import load

    async def main(reactor):
        client = ArrayClient(load("/etc/dlba/dlba.toml"), reactor)
        try:
            print(await client.who_is_scheduler(1))
            print(await client.client_table(1, since_version=0))
        finally:
            await client.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from dlba.array import commands as c
from dlba.array.peers import client_options, node_name
from dlba.config import ArrayNode, Config, endpoint_option


class ClientError(Exception):
    """A call that could not be made; ``str()`` names the node and what to do."""


def sync_port(config: Config) -> int:
    """The port of ``listen.sync`` (every node uses the same file, so the same port)."""
    description = config.listen.sync
    if not description:
        raise ClientError(f"{config.path}: listen.sync: not set, so no node can be reached")
    port = endpoint_option(description, "port", 1)
    if port is None or not port.isdigit() or port == "0":
        raise ClientError(f"{config.path}: listen.sync: {description!r} names no fixed port")
    return int(port)


@dataclass(frozen=True)
class Table:
    """A client table fetched from a node: the changes since a version, or all of it."""

    version: int
    table_id: str
    full: bool
    size: int
    buckets: dict[int, int]  # bucket → node; full: every bucket


@dataclass
class PushResult:
    """What a two-phase push did: committed everywhere it could, or nowhere."""

    committed: bool
    serial: int
    errors: dict[int, str] = field(default_factory=dict)  # node → why it refused
    down: dict[int, str] = field(default_factory=dict)  # node → why it could not be reached
    serials: dict[int, int] = field(default_factory=dict)  # node → serial now committed


class _Connection(c.QuietAMP):
    """An AMP connection that says when it is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


class ArrayClient:
    """Connections to the nodes of one array, made as they are needed."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        certificate: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not config.tls.ca:
            raise ClientError(f"{config.path}: tls.ca: not set; dlba-ctl needs the array CA")
        own = certificate or config.tls.admin_certificate
        if not own:
            raise ClientError(
                f"{config.path}: tls.admin_certificate: not set; dlba-ctl presents it"
            )
        self.config = config
        self.reactor = reactor
        self.ca = config.tls.ca
        self.certificate = own
        self.timeout = timeout
        self.port = sync_port(config)
        self._connections: dict[int, _Connection] = {}

    def nodes(self) -> tuple[ArrayNode, ...]:
        return self.config.array.nodes

    def _node(self, number: int) -> ArrayNode:
        for n in self.config.array.nodes:
            if n.number == number:
                return n
        raise ClientError(f"{self.config.path}: node {number} is not in [[array.node]]")

    async def connection(self, number: int) -> amp.AMP:
        existing = self._connections.get(number)
        if existing is not None and not existing.lost.called:
            return existing
        node = self._node(number)
        options = client_options(self.ca, self.certificate, node_name(number))
        endpoint = wrapClientTLS(
            options, HostnameEndpoint(self.reactor, node.ip, self.port, timeout=self.timeout)
        )
        d: Deferred[_Connection] = endpoint.connect(  # type: ignore[assignment]
            c.OneConnectionFactory(_Connection())
        )
        d.addTimeout(self.timeout, self.reactor)
        try:
            proto = await d
        except Exception as e:
            raise ClientError(
                f"node {number} ({node.ip}:{self.port}): cannot connect: {_why(e)}"
            ) from None
        self._connections[number] = proto
        return proto

    async def call(self, number: int, command: type[amp.Command], **kw: Any) -> dict[str, Any]:
        proto = await self.connection(number)
        d: Deferred[dict[str, Any]] = proto.callRemote(command, **kw)
        d.addTimeout(self.timeout, self.reactor)
        try:
            return await d
        except tuple(c.ERRORS):
            raise
        except Exception as e:
            self._connections.pop(number, None)
            raise ClientError(f"node {number}: {command.__name__} failed: {_why(e)}") from None

    def close(self) -> Deferred[Any]:
        """Close every connection; the Deferred fires once they are all gone."""
        waiting = []
        for proto in self._connections.values():
            if proto.transport is not None and not proto.lost.called:
                proto.transport.loseConnection()
                waiting.append(proto.lost)
        self._connections.clear()
        return DeferredList(waiting)

    # -- the commands -----------------------------------------------------------------------

    async def ping(self, number: int) -> dict[str, int]:
        return await self.call(number, c.Ping, node=0, scheduler=-1, term=0)

    async def who_is_scheduler(self, number: int) -> tuple[int, int]:
        answer = await self.call(number, c.WhoIsScheduler)
        return answer["node"], answer["term"]

    async def client_table(self, number: int, since_version: int = -1, table_id: str = "") -> Table:
        a = await self.call(
            number, c.GetClientTable, since_version=since_version, table_id=table_id
        )
        return Table(
            a["version"], a["table_id"], a["full"], a["size"], c.unpack_buckets(a["buckets"])
        )

    async def status(self, number: int) -> dict[str, Any]:
        answer = await self.call(number, c.GetStatus)
        report: dict[str, Any] = json.loads(answer["report"])
        return report

    async def config_text(self, number: int) -> tuple[str, int]:
        answer = await self.call(number, c.GetConfig)
        return answer["text"], answer["serial"]

    async def set_backend_state(
        self, number: int, pool: str, backend: int, state: str, grace: float = 0.0
    ) -> str:
        answer = await self.call(
            number, c.SetBackendState, pool=pool, backend=backend, state=state, grace=grace
        )
        return str(answer["state"])

    async def set_node_state(self, number: int, node: int, state: str) -> str:
        answer = await self.call(number, c.SetNodeState, node=node, state=state)
        return str(answer["state"])

    async def push(self, text: str, serial: int | None = None) -> PushResult:
        """Two phases over every node of the file: all validate, then all commit.  If any
        node refuses, nobody commits.  Nodes that cannot be reached are named; they fetch
        the committed config from a peer when they come back (the serial says which is
        newer)."""
        numbers = [n.number for n in self.nodes()]
        result = PushResult(committed=False, serial=serial or 0)
        if serial is None:
            serials = await self._by_node(numbers, self.config_text)
            known = [got[1] for got in serials.values() if not isinstance(got, Exception)]
            result.serial = max(known, default=0) + 1
        staged = await self._by_node(
            numbers, lambda n: self.call(n, c.PushConfig, text=text, serial=result.serial)
        )
        digests: dict[int, str] = {}
        for n, outcome in staged.items():
            if isinstance(outcome, ClientError):
                result.down[n] = str(outcome)
            elif isinstance(outcome, Exception):
                result.errors[n] = str(outcome)
            else:
                digests[n] = outcome["digest"]
        if result.errors or not digests:
            return result
        committed = await self._by_node(
            list(digests), lambda n: self.call(n, c.CommitConfig, digest=digests[n])
        )
        for n, outcome in committed.items():
            if isinstance(outcome, Exception):
                result.down[n] = str(outcome)
            else:
                result.serials[n] = outcome["serial"]
        result.committed = bool(result.serials)
        return result

    async def _by_node(self, numbers: list[int], call: Any) -> dict[int, Any]:
        return dict(zip(numbers, await self.gather(numbers, call), strict=True))

    async def gather(self, numbers: list[int], call: Any) -> list[Any]:
        """``await call(n)`` on every node at once: each node's answer or exception, in
        the order of ``numbers``."""
        from twisted.internet.defer import ensureDeferred

        ds = [ensureDeferred(call(n)) for n in numbers]
        outcomes = await DeferredList(ds, consumeErrors=True)
        return [value if ok else value.value for ok, value in outcomes]


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]
