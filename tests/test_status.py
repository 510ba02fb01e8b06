"""The status daemon's line protocol, over StringTransport, and the node report."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dlba.array.status import StatusFactory, StatusProtocol
from dlba.policy import RoundRobin
from dlba.report import NodeReport
from dlba.routing import Pool
from dlba.sweep import Sweep
from dlba.tables import (
    BackendReport,
    BackendState,
    BackendStatusTable,
    NodeState,
    NodeStatusTable,
    SummaryTable,
)


class Counters:
    connections_open = 2
    connections_total = 9
    rejected = 1
    refused_connections = 0


def make_report(clock: Clock, *, sweep: bool = False) -> tuple[NodeReport, Pool]:
    b1 = BackendState(1, "127.0.0.1", 9001, limit=8)
    b2 = BackendState(2, "127.0.0.1", 9002, limit=8)
    b1.record_response(0.002)
    b1.record_response(0.3)
    b2.record_response(0.004)
    b1.sessions_assigned = 4
    pool = Pool("app", [b1, b2], RoundRobin(), queue_limit=4, queue_timeout=2.0)
    nodes = NodeStatusTable([NodeState(3, "02:00:00:00:00:03", "127.0.0.13")])
    s = None
    if sweep:
        s = Sweep(nodes, SummaryTable(), timeout=1.0, tries=3, delay=2.0)
    report = NodeReport(
        3,
        clock.seconds(),
        BackendStatusTable([b1, b2]),
        [pool],
        policies={"app": "round-robin"},
        counters=Counters(),
        nodes=nodes,
        sweep=s,
        scheduler=lambda: 3,
        table_size=4093,
    )
    return report, pool


class Connection:
    """One status connection over a StringTransport."""

    def __init__(self, factory: StatusFactory) -> None:
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert isinstance(proto, StatusProtocol)
        self.proto: StatusProtocol = proto
        self.transport: StringTransport = StringTransport()
        proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def lines(self) -> list[bytes]:
        value: bytes = self.transport.value()
        return value.splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        lines = self.lines()
        assert lines[-1] == b"END", lines[-3:]
        return [json.loads(line) for line in lines[:-1]]

    def close(self) -> None:
        self.proto.connectionLost(None)


class StatusProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.report, self.pool = make_report(self.clock)
        self.factory = StatusFactory(self.report, self.clock, idle_timeout=5.0, max_connections=2)

    def test_nothing_before_a_command(self) -> None:
        c = Connection(self.factory)
        self.assertEqual(c.transport.value(), b"")
        self.assertFalse(c.transport.disconnecting)

    def test_status_is_the_node_and_its_backends_then_end_and_close(self) -> None:
        self.clock.advance(12.5)
        c = Connection(self.factory)
        c.send(b"STATUS\r\n")
        lines = c.json_lines()
        self.assertTrue(c.transport.disconnecting)
        node = lines[0]
        self.assertEqual(node["table"], "node")
        self.assertEqual(
            {k: node[k] for k in ("number", "role", "term", "uptime", "hits")},
            {"number": 3, "role": "scheduler", "term": 0, "uptime": 12.5, "hits": 3},
        )
        self.assertEqual((node["connections_open"], node["connections_total"]), (2, 9))
        backends = [line for line in lines if line["table"] == "backend"]
        self.assertEqual([b["address"] for b in backends], ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.assertEqual((backends[0]["hits"], backends[0]["limit"]), (2, 8))
        self.assertEqual(backends[0]["sessions"], 4)
        self.assertEqual(backends[0]["pools"], ["app"])
        histogram = backends[0]["response_histogram"]
        self.assertEqual(histogram["counts"][0], 1)  # 0.002 s ≤ 5 ms
        self.assertEqual(histogram["counts"][-1], 2)  # +Inf: every response
        self.assertAlmostEqual(histogram["sum"], 0.302)
        [pool] = [line for line in lines if line["table"] == "pool"]
        self.assertEqual(
            (pool["name"], pool["policy"], pool["backends"]), ("app", "round-robin", [1, 2])
        )

    def test_status_pool_line_counts_the_queue(self) -> None:
        self.pool.queue.push("a", None, 2.0, now=1000.0)
        self.pool.queue.push("b", 1, 2.5, now=1000.5)
        self.pool.admission.admit_request(4)
        self.pool.expired = 3
        self.clock.advance(1.5)
        c = Connection(self.factory)
        c.send(b"STATUS\n")
        [row] = [r for r in c.json_lines() if r["table"] == "pool"]
        self.assertEqual(
            {k: row[k] for k in ("queued", "oldest_wait", "refused_requests", "expired")},
            {"queued": 2, "oldest_wait": 1.5, "refused_requests": 1, "expired": 3},
        )

    def test_tables_on_a_node_that_does_not_sweep(self) -> None:
        c = Connection(self.factory)
        c.send(b"TABLES\r\n")
        lines = c.json_lines()
        self.assertEqual(
            lines,
            [
                {"table": "client", "version": None, "size": 4093, "buckets": {}},
                {
                    "table": "sweep",
                    "sweeping": False,
                    "last_sweep": None,
                    "sweep_age": None,
                    "sweeps": 0,
                },
            ],
        )
        self.assertTrue(c.transport.disconnecting)

    def test_tables_on_the_sweeping_node(self) -> None:
        report, _ = make_report(self.clock, sweep=True)
        sweep = report.sweep
        assert sweep is not None
        sweep.summary.node_reported(3, [BackendReport(1, "127.0.0.1:9001", 7, 1, 2)])
        sweep.summary.rebuild()
        visit = sweep.next(self.clock.seconds())
        assert not hasattr(visit, "until")
        self.clock.advance(0.25)
        sweep.missed(visit.node, "refused", self.clock.seconds())  # type: ignore[union-attr]
        c = Connection(StatusFactory(report, self.clock))
        c.send(b"tables\r\n")  # commands are not case-sensitive
        lines = c.json_lines()
        [node] = [line for line in lines if line["table"] == "node_status"]
        self.assertEqual((node["number"], node["ip"], node["failed"]), (3, "127.0.0.13", False))
        self.assertEqual(node["last_error"], "refused")
        [summary] = [line for line in lines if line["table"] == "summary"]
        self.assertEqual(
            summary,
            {
                "table": "summary",
                "backend": 1,
                "address": "127.0.0.1:9001",
                "sessions": 2,
                "hits": 7,
                "open_connections": 1,
            },
        )

    def test_unknown_command_is_an_error_and_a_close(self) -> None:
        c = Connection(self.factory)
        c.send(b"SET weight 3\r\n")
        self.assertEqual(c.lines(), [b"ERR unknown command; say STATUS or TABLES"])
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(self.factory.errors, 1)

    def test_only_the_first_command_is_answered(self) -> None:
        c = Connection(self.factory)
        c.send(b"STATUS\r\nTABLES\r\nBOGUS\r\n")
        lines = c.lines()
        self.assertEqual(lines.count(b"END"), 1)
        self.assertFalse([line for line in lines if line.startswith(b"ERR")])

    def test_blank_lines_are_ignored(self) -> None:
        c = Connection(self.factory)
        c.send(b"\r\n\r\n")
        self.assertEqual(c.transport.value(), b"")
        c.send(b"STATUS\r\n")
        self.assertEqual(c.lines()[-1], b"END")

    def test_a_long_line_is_cut_off(self) -> None:
        c = Connection(self.factory)
        c.send(b"S" * 65)  # no newline yet: the buffer alone is over the limit
        self.assertEqual(c.lines(), [b"ERR line too long"])
        self.assertTrue(c.transport.disconnecting)

    def test_a_long_line_with_its_newline_is_cut_off(self) -> None:
        c = Connection(self.factory)
        c.send(b"STATUS" + b" " * 70 + b"\r\n")
        self.assertEqual(c.lines(), [b"ERR line too long"])

    def test_an_idle_client_is_cut_off(self) -> None:
        c = Connection(self.factory)
        self.clock.advance(4.9)
        self.assertFalse(c.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(c.lines(), [b"ERR idle too long"])
        self.assertTrue(c.transport.disconnecting)
        c.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_answer_cancels_the_idle_timer(self) -> None:
        c = Connection(self.factory)
        c.send(b"STATUS\r\n")
        c.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connections_over_the_cap_are_cut_off(self) -> None:
        a, b = Connection(self.factory), Connection(self.factory)
        c = Connection(self.factory)
        self.assertEqual(c.lines(), [b"ERR busy"])
        self.assertTrue(c.transport.disconnecting)
        self.assertFalse(a.transport.disconnecting or b.transport.disconnecting)
        c.close()
        self.assertEqual(self.factory.open, 2)
        a.close()
        d = Connection(self.factory)  # a freed place is taken again
        d.send(b"STATUS\r\n")
        self.assertEqual(d.lines()[-1], b"END")
        self.assertEqual(self.factory.refused, 1)

    def test_report_is_json_ready(self) -> None:
        report, _ = make_report(self.clock, sweep=True)
        document = report.report(self.clock.seconds())
        self.assertEqual(json.loads(json.dumps(document)), document)
        self.assertEqual(
            set(document), {"time", "node", "backends", "pools", "sessions", "array", "packets"}
        )
        self.assertIsNone(document["packets"])  # no [array] vip
        self.assertEqual(document["array"]["scheduler"], 3)
        self.assertIsNone(document["array"]["client_table"])
