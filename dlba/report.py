"""What one node says of itself: the data of the status daemon and the admin web.

Pure: the tables and counters are read when asked, with the time passed in.  The status
daemon writes it as JSON lines (``STATUS`` and ``TABLES``); the admin web as one JSON
document, a dashboard and Prometheus metrics.  One builder, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dlba import __version__
from dlba.clienttable import ClientTable
from dlba.routing import Pool
from dlba.sessions import SessionTable
from dlba.sweep import Sweep
from dlba.tables import RESPONSE_BOUNDS, BackendState, BackendStatusTable, NodeStatusTable

Row = dict[str, Any]


class ProxyCounters(Protocol):
    """What the proxy counts of its client connections."""

    @property
    def connections_open(self) -> int: ...
    @property
    def connections_total(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def refused_connections(self) -> int: ...


class NoProxy:
    """The counters of a node that runs no proxy listener."""

    connections_open = connections_total = rejected = refused_connections = 0


def _round(x: float) -> float:
    return round(x, 6)


class NodeReport:
    """This node, its back ends, pools and session tables; the array tables it holds."""

    def __init__(
        self,
        number: int,
        started: float,
        backends: BackendStatusTable,
        pools: Sequence[Pool] = (),
        *,
        policies: Mapping[str, str] | None = None,
        counters: ProxyCounters | None = None,
        nodes: NodeStatusTable | None = None,
        sweep: Sweep | None = None,
        scheduler: Callable[[], int | None] = lambda: None,
        term: Callable[[], int] = lambda: 0,
        table_size: int = 0,
        client_table: ClientTable | None = None,
        sweeping: Callable[[], bool] = lambda: True,
        packets: Callable[[], Row] | None = None,
    ) -> None:
        self.number = number
        self.started = started
        self.backends = backends
        self.pools = pools
        self.policies = dict(policies or {})
        self.counters: ProxyCounters = counters if counters is not None else NoProxy()
        self.nodes = nodes if nodes is not None else NodeStatusTable()
        self.sweep = sweep
        self.scheduler = scheduler
        self.term = term
        self.table_size = table_size
        self.client_table = client_table  # held by the scheduler (and synced copies)
        self.sweeping = sweeping  # with failover the sweep runs only while scheduler
        self.packets = packets  # the packet scheduler's counters, with [array] vip

    # -- the parts ------------------------------------------------------------------------

    def node(self, now: float) -> Row:
        hits = 0
        weighted = 0.0
        for b in self.backends:
            hits += b.hits
            weighted += b.hits * b.avg_response_time
        scheduler = self.scheduler()
        c = self.counters
        return {
            "number": self.number,
            "role": "scheduler" if scheduler == self.number else "node",
            "term": self.term(),
            "started": self.started,
            "uptime": _round(max(0.0, now - self.started)),
            "version": __version__,
            "connections_open": c.connections_open,
            "connections_total": c.connections_total,
            "requests_rejected": c.rejected,
            "connections_refused": c.refused_connections,
            "hits": hits,
            "avg_response_time": _round(weighted / hits) if hits else 0.0,
        }

    def backend_rows(self, now: float) -> list[Row]:
        pools_of: dict[int, list[str]] = {}
        for pool in self.pools:
            for b in pool.backends:
                pools_of.setdefault(b.number, []).append(pool.name)
        return [self._backend(b, now, pools_of.get(b.number, [])) for b in self.backends]

    @staticmethod
    def _backend(b: BackendState, now: float, pools: list[str]) -> Row:
        cumulative = []
        total = 0
        for count in b.response_counts:
            total += count
            cumulative.append(total)
        return {
            "number": b.number,
            "address": b.address,
            "pools": pools,
            "enabled": b.enabled,
            "draining": b.draining,
            "failed": b.failed(now),
            "avg_response_time": _round(b.avg_response_time),
            "hits": b.hits,
            "open_connections": b.open_connections,
            "queued": b.queued,
            "limit": b.limit,
            "metric": _round(b.metric),
            "last_error": b.last_error,
            "failures": b.failures,
            "sessions": b.sessions_assigned,
            "response_histogram": {
                "bounds": list(RESPONSE_BOUNDS),
                "counts": cumulative,
                "sum": _round(b.response_sum),
            },
        }

    def pool_rows(self, now: float) -> list[Row]:
        rows = []
        for pool in self.pools:
            admission = pool.admission
            rows.append(
                {
                    "name": pool.name,
                    "policy": self.policies.get(pool.name, ""),
                    "backends": [b.number for b in pool.backends],
                    "queued": len(pool.queue),
                    "oldest_wait": _round(pool.queue.oldest_wait(now)),
                    "queue_limit": pool.queue_limit,
                    "queue_timeout": pool.queue_timeout,
                    "refusing_connections": admission.refusing,
                    "refused_requests": admission.refused_requests,
                    "refused_connections": admission.refused_connections,
                    "expired": pool.expired,
                }
            )
        return rows

    def session_rows(self) -> list[Row]:
        rows = []
        for pool in self.pools:
            table = getattr(pool.policy, "table", None)
            if isinstance(table, SessionTable):
                rows.append(
                    {
                        "pool": pool.name,
                        "size": len(table),
                        "max_size": table.max_size,
                        "hits": table.hits,
                        "misses": table.misses,
                        "hit_rate": round(table.hit_rate, 4),
                    }
                )
        return rows

    def array(self, now: float) -> Row:
        sweep = self.sweep if self.sweep is not None and self.sweeping() else None
        age = sweep.age(now) if sweep is not None else None
        return {
            "scheduler": self.scheduler(),
            "sweeping": sweep is not None,
            "last_sweep": sweep.last_sweep if sweep is not None else None,
            "sweep_age": _round(age) if age is not None else None,
            "sweeps": sweep.sweeps if sweep is not None else 0,
            "nodes": [n.row() for n in self.nodes] if sweep is not None else [],
            "summary": [r.row() for r in sweep.summary.rows] if sweep is not None else [],
            "client_table": self._client_table(owners=True),
        }

    def _client_table(self, *, owners: bool) -> Row | None:
        table = self.client_table
        if table is None:
            return None
        row: Row = dict(table.row())
        if owners:
            row["owners"] = table.owners()  # the dashboard's bucket map
        return row

    # -- the whole ------------------------------------------------------------------------

    def report(self, now: float) -> Row:
        """Everything, as one JSON-ready document (the admin API)."""
        return {
            "time": now,
            "node": self.node(now),
            "backends": self.backend_rows(now),
            "pools": self.pool_rows(now),
            "sessions": self.session_rows(),
            "array": self.array(now),
            "packets": self.packets() if self.packets is not None else None,
        }

    def status_lines(self, now: float) -> list[Row]:
        """The ``STATUS`` answer: this node and its back-end status table."""
        lines: list[Row] = [{"table": "node", **self.node(now)}]
        lines += [{"table": "backend", **row} for row in self.backend_rows(now)]
        lines += [{"table": "pool", **row} for row in self.pool_rows(now)]
        lines += [{"table": "sessions", **row} for row in self.session_rows()]
        if self.packets is not None:
            lines.append({"table": "packets", **self.packets()})
        return lines

    def tables_lines(self, now: float) -> list[Row]:
        """The ``TABLES`` answer: what this node holds of the array's tables."""
        array = self.array(now)
        client = self._client_table(owners=False) or {
            # Not held: this node neither schedules nor has synced a copy.
            "version": None,
            "size": self.table_size,
            "buckets": {},
        }
        lines: list[Row] = [
            {"table": "client", **client},
            {
                "table": "sweep",
                "sweeping": array["sweeping"],
                "last_sweep": array["last_sweep"],
                "sweep_age": array["sweep_age"],
                "sweeps": array["sweeps"],
            },
        ]
        lines += [{"table": "node_status", **row} for row in array["nodes"]]
        lines += [{"table": "summary", **row} for row in array["summary"]]
        return lines
