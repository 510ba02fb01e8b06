"""The status daemon: dumps this node's tables, read-only, one JSON object a line, then closes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol

from dlba.routing import Pool
from dlba.sessions import SessionTable
from dlba.tables import BackendStatusTable


class StatusProtocol(Protocol):
    """Writes the tables as soon as the connection opens; reads nothing."""

    transport: Any

    def connectionMade(self) -> None:
        factory: StatusFactory = self.factory  # type: ignore[assignment]
        self.transport.write(factory.dump())
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass  # read-only: whatever a client sends changes nothing


class StatusFactory(Factory):
    noisy = False
    protocol = StatusProtocol

    def __init__(
        self,
        node: int,
        backends: BackendStatusTable,
        clock: IReactorTime,
        pools: Sequence[Pool] = (),
    ) -> None:
        self.node = node
        self.backends = backends
        self.clock = clock
        self.pools = pools

    def dump(self) -> bytes:
        now = self.clock.seconds()
        lines: list[dict[str, Any]] = [{"table": "node", "number": self.node, "time": now}]
        for row in self.backends.snapshot(now):
            lines.append({"table": "backend", **asdict(row)})
        for pool in self.pools:
            admission = pool.admission
            lines.append(
                {
                    "table": "pool",
                    "name": pool.name,
                    "queued": len(pool.queue),
                    "oldest_wait": round(pool.queue.oldest_wait(now), 6),
                    "queue_limit": pool.queue_limit,
                    "queue_timeout": pool.queue_timeout,
                    "refusing_connections": admission.refusing,
                    "refused_requests": admission.refused_requests,
                    "refused_connections": admission.refused_connections,
                    "expired": pool.expired,
                }
            )
        for pool in self.pools:
            sessions = getattr(pool.policy, "table", None)
            if isinstance(sessions, SessionTable):
                lines.append(
                    {
                        "table": "sessions",
                        "pool": pool.name,
                        "size": len(sessions),
                        "max_size": sessions.max_size,
                        "hits": sessions.hits,
                        "misses": sessions.misses,
                        "hit_rate": round(sessions.hit_rate, 4),
                    }
                )
        lines.append({"table": "end"})
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
