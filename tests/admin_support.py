"""A node report of the shape ``dlba.report.NodeReport`` builds, with numbers to change."""

from __future__ import annotations

import copy
from typing import Any

BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
START = 1764699000.0


def backend(number: int, hits: int, **changes: Any) -> dict[str, Any]:
    # cumulative counts: every answer under 25 ms except one slow one under 0.5 s
    fast = max(hits - 1, 0)
    counts = [0, fast // 2, fast, fast, fast, fast, hits, hits, hits, hits, hits, hits]
    row: dict[str, Any] = {
        "number": number,
        "address": f"127.0.0.1:{9000 + number}",
        "pools": ["demo"],
        "enabled": True,
        "draining": False,
        "failed": False,
        "avg_response_time": 0.004,
        "hits": hits,
        "open_connections": number - 1,
        "queued": 0,
        "limit": 64,
        "metric": 0.0,
        "last_error": "",
        "failures": 0,
        "sessions": number * 3,
        "response_histogram": {"bounds": list(BOUNDS), "counts": counts, "sum": 0.3 + 0.01 * fast},
    }
    row.update(changes)
    return row


def fixture_report(now: float = START + 1000.0) -> dict[str, Any]:
    return {
        "time": now,
        "node": {
            "number": 1,
            "role": "scheduler",
            "term": 2,
            "started": START,
            "uptime": now - START,
            "version": "0.1.0",
            "connections_open": 3,
            "connections_total": 120,
            "requests_rejected": 4,
            "connections_refused": 5,
            "hits": 100,
            "avg_response_time": 0.002,
        },
        "backends": [
            backend(1, 10),
            backend(2, 40, failed=True, last_error="connection refused", failures=7),
            backend(3, 50, draining=True, queued=2, limit=8),
            backend(4, 0, enabled=False, pools=["static"]),
        ],
        "pools": [
            {
                "name": "demo",
                "policy": "cookie",
                "backends": [1, 2, 3],
                "queued": 2,
                "oldest_wait": 0.25,
                "queue_limit": 1024,
                "queue_timeout": 5.0,
                "refusing_connections": False,
                "refused_requests": 6,
                "refused_connections": 8,
                "expired": 1,
            },
            {
                "name": "static",
                "policy": "session",
                "backends": [4],
                "queued": 0,
                "oldest_wait": 0.0,
                "queue_limit": 64,
                "queue_timeout": 1.0,
                "refusing_connections": True,
                "refused_requests": 0,
                "refused_connections": 0,
                "expired": 0,
            },
        ],
        "sessions": [
            {
                "pool": "static",
                "size": 3,
                "max_size": 100000,
                "hits": 5,
                "misses": 3,
                "hit_rate": 0.625,
            }
        ],
        "array": {
            "scheduler": 1,
            "sweeping": True,
            "last_sweep": now - 2.0,
            "sweep_age": 2.0,
            "sweeps": 40,
            "nodes": [
                {
                    "number": 1,
                    "mac": "02:00:00:00:00:01",
                    "ip": "127.0.0.11",
                    "enabled": True,
                    "weight": 1,
                    "buckets": 2000,
                    "avg_response_time": 0.002,
                    "hits": 100,
                    "open_connections": 3,
                    "failed": False,
                    "last_seen": now - 2.0,
                    "last_error": "",
                },
                {
                    "number": 2,
                    "mac": "02:00:00:00:00:02",
                    "ip": "127.0.0.12",
                    "enabled": True,
                    "weight": 2,
                    "buckets": 2093,
                    "avg_response_time": 0.003,
                    "hits": 200,
                    "open_connections": 9,
                    "failed": True,
                    "last_seen": None,
                    "last_error": "timed out",
                },
            ],
            "summary": [
                {
                    "backend": 1,
                    "address": "127.0.0.1:9001",
                    "sessions": 3,
                    "hits": 10,
                    "open_connections": 0,
                }
            ],
            "client_table": None,
        },
    }


class ReportFixture:
    """Any object with ``report(now)`` feeds the admin site; this one can be changed."""

    def __init__(self, report: dict[str, Any] | None = None) -> None:
        self.data = report if report is not None else fixture_report()
        self.calls: list[float] = []
        self.broken = False  # True: report() raises, as a bug in the node would

    def report(self, now: float) -> dict[str, Any]:
        """The data as at ``now``: every time in it moves with the clock, ages stay."""
        self.calls.append(now)
        if self.broken:
            raise RuntimeError("the report is broken")
        out = copy.deepcopy(self.data)
        shift = now - out["time"]
        out["time"] = now
        if "started" in out.get("node", {}):
            out["node"]["started"] += shift
        array = out.get("array") or {}
        if array.get("last_sweep") is not None:
            array["last_sweep"] += shift
        for node in array.get("nodes") or ():
            if node.get("last_seen") is not None:
                node["last_seen"] += shift
        return out

    def add_hits(self, backend_number: int, hits: int) -> None:
        """More answers from one back end: its counters and the node's move together."""
        row = next(b for b in self.data["backends"] if b["number"] == backend_number)
        row["hits"] += hits
        histogram = row["response_histogram"]
        # each new answer took 2 ms: it counts in every cumulative bucket
        histogram["counts"] = [c + hits for c in histogram["counts"]]
        histogram["sum"] += 0.002 * hits
        self.data["node"]["hits"] += hits
        self.data["node"]["connections_total"] += hits
