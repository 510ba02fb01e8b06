"""The tables of DESIGN.md §4.  Pure: every time is passed in by the caller.

The back-end status table (kept by the proxy on every node), the node status table and
the summary table (kept by the sweep on the scheduler).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol


class CountsWaiting(Protocol):
    """A wait queue that can say how many of its requests are bound to a back end."""

    def waiting_for(self, backend: int) -> int: ...


# Upper bounds (seconds, inclusive) of the response-time histogram: Prometheus's defaults,
# which span a cache hit to a slow report.
RESPONSE_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BackendState:
    """One row of the back-end status table: what this node knows of one back end.

    A back end shared by several pools has one row, so its counts and its failure
    are seen by all of them.
    """

    __slots__ = (
        "address",
        "avg_response_time",
        "drain_deadline",
        "draining",
        "enabled",
        "failed_until",
        "failures",
        "hits",
        "host",
        "last_error",
        "limit",
        "metric",
        "number",
        "open_connections",
        "port",
        "queues",
        "response_counts",
        "response_sum",
        "retired",
        "sessions_assigned",
        "weight",
    )

    # Weight of the newest sample in the response-time average: about the last 20 requests.
    EWMA_ALPHA = 0.05

    # Bumped whenever any back end is enabled, disabled or drained, so that structures
    # built over the set (the URL-hash table) know to rebuild, without an O(N) check.
    membership_changes = 0

    def __init__(
        self,
        number: int,
        host: str,
        port: int,
        weight: int = 1,
        enabled: bool = True,
        limit: int = 0,
    ) -> None:
        self.number = number
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.weight = weight
        self.enabled = enabled
        self.draining = False  # no new sessions; existing ones until drain_deadline
        self.drain_deadline = 0.0
        self.failed_until = 0.0
        self.failures = 0
        self.last_error = ""
        self.hits = 0
        self.open_connections = 0  # requests in flight at this back end
        self.queues: list[CountsWaiting] = []  # the wait queues of the pools it is in
        self.limit = limit  # requests in flight at most; 0: no limit
        self.metric = 0.0  # what the feedback controller steers by (p90 s or completions/s)
        self.avg_response_time = 0.0
        # A histogram of response times: counts per RESPONSE_BOUNDS bucket, +Inf last.
        self.response_counts = [0] * (len(RESPONSE_BOUNDS) + 1)
        self.response_sum = 0.0
        self.sessions_assigned = 0  # new sessions (cookie groups) given to this back end
        # Out of the table since a reload removed it or moved its number to another
        # address: only requests in flight still use it, and its freed slots go to nobody.
        self.retired = False

    def count_waiting_in(self, queue: CountsWaiting) -> None:
        """``queue`` may hold requests bound to this back end: count them in ``queued``."""
        self.queues.append(queue)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot here in particular (bound by session or URL)."""
        number = self.number
        return sum(q.waiting_for(number) for q in self.queues)

    def has_room(self) -> bool:
        return self.limit <= 0 or self.open_connections < self.limit

    def live(self, now: float) -> bool:
        return self.enabled and self.failed_until <= now

    def accepts_new(self, now: float) -> bool:
        """May take a request that belongs to no session yet."""
        return self.enabled and not self.draining and self.failed_until <= now

    def accepts_sticky(self, now: float) -> bool:
        """May take a request of a session it already holds (while draining, until the deadline)."""
        return (
            self.enabled
            and self.failed_until <= now
            and (not self.draining or now < self.drain_deadline)
        )

    def enable(self) -> None:
        self.enabled = True
        self.draining = False
        BackendState.membership_changes += 1

    def disable(self) -> None:
        self.enabled = False
        self.draining = False
        BackendState.membership_changes += 1

    def drain(self, deadline: float) -> None:
        self.enabled = True
        self.draining = True
        self.drain_deadline = deadline
        BackendState.membership_changes += 1

    def failed(self, now: float) -> bool:
        return self.failed_until > now

    def mark_failed(self, now: float, backoff: float, error: str) -> None:
        self.failed_until = now + backoff
        self.failures += 1
        self.last_error = error

    def note_error(self, error: str) -> None:
        """An error that does not take the back end out (a timeout, a bad answer)."""
        self.last_error = error

    def record_response(self, seconds: float) -> None:
        self.hits += 1
        self.response_counts[bisect_left(RESPONSE_BOUNDS, seconds)] += 1
        self.response_sum += seconds
        if self.avg_response_time == 0.0:
            self.avg_response_time = seconds
        else:
            self.avg_response_time += self.EWMA_ALPHA * (seconds - self.avg_response_time)

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.failed_until - now))


@dataclass(frozen=True)
class BackendRow:
    """A snapshot of a row, for the status daemon, the admin API and logs."""

    number: int
    address: str
    enabled: bool
    draining: bool
    failed: bool
    avg_response_time: float
    hits: int
    open_connections: int
    queued: int
    limit: int
    metric: float
    last_error: str


class BackendStatusTable:
    """Every back end this node sends to, by number."""

    def __init__(self, backends: Iterable[BackendState] = ()) -> None:
        self._rows: dict[int, BackendState] = {}
        for b in backends:
            self.add(b)

    def add(self, backend: BackendState) -> BackendState:
        existing = self._rows.get(backend.number)
        if existing is not None:
            return existing
        self._rows[backend.number] = backend
        return backend

    def get(self, number: int) -> BackendState | None:
        return self._rows.get(number)

    def replace(self, backend: BackendState) -> BackendState | None:
        """Make ``backend`` the row of its number; the row it replaces (if any) is retired."""
        old = self._rows.get(backend.number)
        if old is not None:
            old.retired = True
        self._rows[backend.number] = backend
        return old

    def remove(self, number: int) -> BackendState | None:
        """Take back end ``number`` out; its row is retired (requests in flight keep it)."""
        old = self._rows.pop(number, None)
        if old is not None:
            old.retired = True
        return old

    def __iter__(self) -> Iterator[BackendState]:
        return iter(sorted(self._rows.values(), key=lambda b: b.number))

    def __len__(self) -> int:
        return len(self._rows)

    def snapshot(self, now: float) -> list[BackendRow]:
        return [
            BackendRow(
                number=b.number,
                address=b.address,
                enabled=b.enabled,
                draining=b.draining,
                failed=b.failed(now),
                avg_response_time=b.avg_response_time,
                hits=b.hits,
                open_connections=b.open_connections,
                queued=b.queued,
                limit=b.limit,
                metric=b.metric,
                last_error=b.last_error,
            )
            for b in self
        ]

    def retry_after(self, now: float) -> int:
        """Seconds until the first failed back end may be tried again (for Retry-After)."""
        waits = [b.retry_after(now) for b in self._rows.values() if b.enabled and b.failed(now)]
        return min(waits) if waits else 1


class NodeState:
    """One row of the node status table (the scheduler's view of one DLBA node).

    The static columns come from ``[[array.node]]``; the dynamic ones from the sweep.
    """

    __slots__ = (
        "avg_response_time",
        "buckets",
        "enabled",
        "failed",
        "hits",
        "ip",
        "last_error",
        "last_seen",
        "mac",
        "number",
        "open_connections",
        "weight",
    )

    def __init__(
        self, number: int, mac: str, ip: str, weight: int = 1, enabled: bool = True
    ) -> None:
        self.number = number
        self.mac = mac
        self.ip = ip
        self.weight = weight
        self.enabled = enabled
        self.buckets = 0  # client-table buckets assigned (kept by the client table)
        self.avg_response_time = 0.0
        self.hits = 0
        self.open_connections = 0
        # A node is presumed alive until the sweep fails it: failing every node at start
        # would send the client table's buckets nowhere.
        self.failed = False
        self.last_seen: float | None = None
        self.last_error = ""

    def row(self) -> dict[str, object]:
        return {
            "number": self.number,
            "mac": self.mac,
            "ip": self.ip,
            "enabled": self.enabled,
            "weight": self.weight,
            "buckets": self.buckets,
            "avg_response_time": self.avg_response_time,
            "hits": self.hits,
            "open_connections": self.open_connections,
            "failed": self.failed,
            "last_seen": self.last_seen,
            "last_error": self.last_error,
        }


class NodeStatusTable:
    """Every node of the array, in ``[[array.node]]`` order (the scheduler priority)."""

    def __init__(self, nodes: Iterable[NodeState] = ()) -> None:
        self._rows: dict[int, NodeState] = {}
        for n in nodes:
            if n.number in self._rows:
                raise ValueError(f"node {n.number} twice in the node status table")
            self._rows[n.number] = n

    def get(self, number: int) -> NodeState | None:
        return self._rows.get(number)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def live(self) -> list[NodeState]:
        return [n for n in self._rows.values() if n.enabled and not n.failed]

    def reconfigure(self, static: NodeStatusTable, was: NodeStatusTable) -> list[int]:
        """Take the static columns of ``static`` (a new config's nodes, in their order);
        ``was`` is what the config said before.  A node kept keeps its row and what the
        sweep learnt of it; ``enabled`` follows the config only where the config changed it,
        so a node disabled at run time stays disabled.  A node that joins starts failed,
        until the sweep hears it, so no bucket is given to a node not yet answering.
        Returns the numbers removed."""
        rows: dict[int, NodeState] = {}
        for new in static:
            row = self._rows.get(new.number)
            if row is None:
                new.failed = True
                new.last_error = "joined: not yet heard by the sweep"
                rows[new.number] = new
                continue
            row.mac, row.ip, row.weight = new.mac, new.ip, new.weight
            before = was.get(new.number)
            if before is None or before.enabled != new.enabled:
                row.enabled = new.enabled
            rows[new.number] = row
        removed = [n for n in self._rows if n not in rows]
        self._rows = rows
        return removed


@dataclass(frozen=True)
class BackendReport:
    """What one node said of one back end in its status answer."""

    number: int
    address: str
    hits: int
    open_connections: int
    sessions: int


@dataclass
class SummaryRow:
    """One back end over all nodes: for monitoring, never for scheduling."""

    backend: int
    address: str
    sessions: int = 0
    hits: int = 0
    open_connections: int = 0

    def row(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "address": self.address,
            "sessions": self.sessions,
            "hits": self.hits,
            "open_connections": self.open_connections,
        }


class SummaryTable:
    """Per back end, the sum of what every node last reported.

    Hits and sessions assigned are counters, so a failed node's last report still counts
    (they happened); its open connections do not (they are gone with it).
    """

    def __init__(self) -> None:
        self._reports: dict[int, tuple[BackendReport, ...]] = {}
        self._failed: set[int] = set()
        self.rows: list[SummaryRow] = []

    def node_reported(self, node: int, backends: Iterable[BackendReport]) -> None:
        self._reports[node] = tuple(backends)
        self._failed.discard(node)

    def node_failed(self, node: int) -> None:
        self._failed.add(node)

    def forget(self, node: int) -> None:
        """``node`` left the array: what it reported counts no more (call ``rebuild``)."""
        self._reports.pop(node, None)
        self._failed.discard(node)

    def rebuild(self) -> list[SummaryRow]:
        rows: dict[int, SummaryRow] = {}
        for node, reports in sorted(self._reports.items()):
            alive = node not in self._failed
            for r in reports:
                row = rows.get(r.number)
                if row is None:
                    row = rows[r.number] = SummaryRow(r.number, r.address)
                row.hits += r.hits
                row.sessions += r.sessions
                if alive:
                    row.open_connections += r.open_connections
        self.rows = [rows[k] for k in sorted(rows)]
        return self.rows
