"""The sweep: the pure state machine with task.Clock, then the service over real loopback
sockets against real status daemons."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dlba.array.status import StatusFactory
from dlba.array.sweep import SweepService
from dlba.report import NodeReport
from dlba.sweep import BadAnswer, Pause, StatusAnswer, Sweep, Visit, parse_status
from dlba.tables import (
    BackendReport,
    BackendState,
    BackendStatusTable,
    NodeState,
    NodeStatusTable,
    SummaryTable,
)

reactor: Any = _reactor


def answer(number: int, hits: int, open_connections: int = 0) -> StatusAnswer:
    return StatusAnswer(
        number=number,
        avg_response_time=0.01 * number,
        hits=hits,
        open_connections=open_connections,
        backends=(
            BackendReport(1, "10.0.0.1:80", hits, open_connections, number),
            BackendReport(2, "10.0.0.2:80", 2 * hits, 0, 0),
        ),
    )


class SweepStateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100.0)
        self.nodes = NodeStatusTable(
            NodeState(n, f"02:00:00:00:00:0{n}", f"10.0.0.1{n}") for n in (1, 2, 3)
        )
        self.failed: list[int] = []
        self.rejoined: list[int] = []
        self.sweep = Sweep(
            self.nodes,
            SummaryTable(),
            timeout=1.0,
            tries=3,
            delay=2.0,
            on_failed=[self.failed.append],
            on_rejoined=[self.rejoined.append],
        )

    def now(self) -> float:
        return self.clock.seconds()

    def visit(self) -> Visit:
        action = self.sweep.next(self.now())
        assert isinstance(action, Visit), action
        return action

    def answer_all(self, hits: int = 10) -> None:
        for _ in range(3):
            v = self.visit()
            self.sweep.answered(v.node, answer(v.node.number, hits), self.now())

    def test_visits_nodes_one_at_a_time_in_order_then_pauses(self) -> None:
        self.assertEqual(self.sweep.state, "asking")
        seen = []
        for _ in range(3):
            v = self.visit()
            self.assertEqual(self.sweep.state, "waiting")
            self.assertEqual((v.attempt, v.deadline), (1, self.now() + 1.0))
            seen.append(v.node.number)
            self.clock.advance(0.1)
            self.sweep.answered(v.node, answer(v.node.number, 5), self.now())
        self.assertEqual(seen, [1, 2, 3])
        self.assertEqual(self.sweep.state, "idle")
        self.assertEqual(self.sweep.last_sweep, self.now())
        self.assertEqual(self.sweep.sweeps, 1)
        self.assertEqual(self.sweep.next(self.now()), Pause(self.now() + 2.0))
        self.clock.advance(1.0)
        self.assertEqual(self.sweep.age(self.now()), 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.visit().node.number, 1)  # the next sweep starts over

    def test_no_sweep_yet_has_no_age(self) -> None:
        self.assertIsNone(self.sweep.last_sweep)
        self.assertIsNone(self.sweep.age(self.now()))

    def test_answer_fills_the_dynamic_columns(self) -> None:
        v = self.visit()
        self.clock.advance(0.2)
        self.sweep.answered(v.node, answer(1, 42, open_connections=3), self.now())
        row = self.nodes.get(1)
        assert row is not None
        self.assertEqual(
            (row.hits, row.open_connections, row.avg_response_time, row.last_seen, row.failed),
            (42, 3, 0.01, 100.2, False),
        )

    def test_summary_adds_up_the_nodes(self) -> None:
        self.answer_all(hits=10)
        rows = {r.backend: r for r in self.sweep.summary.rows}
        self.assertEqual((rows[1].hits, rows[2].hits), (30, 60))
        self.assertEqual(rows[1].sessions, 1 + 2 + 3)
        self.assertEqual(rows[1].address, "10.0.0.1:80")

    def test_a_node_that_misses_every_try_is_failed_once(self) -> None:
        v = self.visit()
        self.sweep.answered(v.node, answer(1, 1), self.now())
        for attempt in (1, 2, 3):
            v = self.visit()
            self.assertEqual((v.node.number, v.attempt), (2, attempt))
            self.clock.advance(1.0)
            self.sweep.missed(v.node, "timed out", self.now())
        self.assertEqual(self.failed, [2])
        row = self.nodes.get(2)
        assert row is not None
        self.assertTrue(row.failed)
        self.assertEqual(row.last_error, "timed out")
        self.assertEqual([n.number for n in self.nodes.live()], [1, 3])
        self.assertEqual(self.visit().node.number, 3)  # the sweep goes on

    def test_a_failed_node_gets_one_try_a_sweep_and_rejoins(self) -> None:
        for n in (1, 2, 3):
            row = self.nodes.get(n)
            assert row is not None
            row.failed = n == 2
        v = self.visit()
        self.sweep.answered(v.node, answer(1, 1), self.now())
        v = self.visit()
        self.sweep.missed(v.node, "refused", self.now())
        self.assertEqual(self.visit().node.number, 3)  # no second try of a failed node
        self.assertEqual(self.failed, [])  # already failed: no hook again
        self.sweep.answered(self.nodes.get(3), answer(3, 1), self.now())  # type: ignore[arg-type]
        self.clock.advance(2.0)
        self.visit()
        self.sweep.answered(self.nodes.get(1), answer(1, 1), self.now())  # type: ignore[arg-type]
        v = self.visit()
        self.sweep.answered(v.node, answer(2, 1), self.now())
        self.assertEqual(self.rejoined, [2])
        self.assertFalse(v.node.failed)

    def test_a_miss_then_an_answer_is_not_a_failure(self) -> None:
        self.visit()
        v = self.visit()
        self.sweep.missed(v.node, "refused", self.now())
        v = self.visit()
        self.assertEqual(v.attempt, 2)
        self.sweep.answered(v.node, answer(1, 1), self.now())
        self.assertEqual(self.failed, [])
        self.assertEqual(self.visit().attempt, 1)

    def test_failed_nodes_open_connections_leave_the_summary_but_hits_stay(self) -> None:
        for n in (1, 2, 3):
            v = self.visit()
            self.sweep.answered(v.node, answer(n, 10, open_connections=4), self.now())
        self.clock.advance(2.0)
        v = self.visit()
        for _ in range(3):
            self.sweep.missed(v.node, "refused", self.now())
            if not v.node.failed:
                v = self.visit()
        rows = {r.backend: r for r in self.sweep.summary.rows}
        self.assertEqual(rows[1].hits, 30)
        self.assertEqual(rows[1].open_connections, 8)

    def test_failure_within_the_bound(self) -> None:
        """A node that stops answering right after its visit is failed within
        tries * timeout + delay + the time to visit the others."""
        self.answer_all()
        died = self.now()
        while not self.failed:
            action = self.sweep.next(self.now())
            if isinstance(action, Pause):
                self.clock.advance(action.until - self.now())
                continue
            if action.node.number == 1:
                self.clock.advance(1.0)  # the whole timeout, each try
                self.sweep.missed(action.node, "timed out", self.now())
            else:
                self.clock.advance(0.01)
                self.sweep.answered(action.node, answer(action.node.number, 1), self.now())
        self.assertLessEqual(self.now() - died, 3 * 1.0 + 2.0 + 0.1)

    def test_empty_table_only_pauses(self) -> None:
        sweep = Sweep(NodeStatusTable(), SummaryTable(), timeout=1.0, tries=1, delay=2.0)
        self.assertEqual(sweep.next(5.0), Pause(7.0))
        self.assertEqual(sweep.next(6.0), Pause(7.0))

    def test_at_least_one_try(self) -> None:
        self.assertRaises(
            ValueError, Sweep, self.nodes, SummaryTable(), timeout=1, tries=0, delay=0
        )

    def test_answers_only_for_the_node_asked(self) -> None:
        self.visit()
        other = self.nodes.get(2)
        assert other is not None
        self.assertRaises(RuntimeError, self.sweep.answered, other, answer(2, 1), self.now())


class ParseStatusTests(SynchronousTestCase):
    def test_reads_the_node_and_backend_lines(self) -> None:
        lines = [
            json.dumps(x).encode()
            for x in (
                {
                    "table": "node",
                    "number": 2,
                    "hits": 5,
                    "connections_open": 1,
                    "avg_response_time": 0.5,
                },
                {
                    "table": "backend",
                    "number": 1,
                    "address": "a:1",
                    "hits": 5,
                    "open_connections": 1,
                    "sessions": 2,
                },
                {"table": "pool", "name": "app"},
            )
        ]
        got = parse_status(lines)
        self.assertEqual((got.number, got.hits, got.open_connections), (2, 5, 1))
        self.assertEqual(got.backends, (BackendReport(1, "a:1", 5, 1, 2),))

    def test_bad_answers(self) -> None:
        for lines in (
            [],
            [b"not json"],
            [b"[1, 2]"],
            [b'{"table": "backend", "number": 1}'],
            [b'{"table": "node"}'],
        ):
            self.assertRaises(BadAnswer, parse_status, lines)


class Silent(Protocol):
    """Accepts and reads, never answers: a hung node."""


class Garbage(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"hello\r\nEND\r\n")  # type: ignore[union-attr]


class SweepServiceTests(TestCase):
    """The service against real status daemons on 127.0.0.1: one answers, one hangs, one
    sends garbage, one port is closed."""

    timeout = 30

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_real_sweep(self) -> None:
        backend = BackendState(1, "127.0.0.1", 9001)
        backend.record_response(0.01)
        report = NodeReport(1, reactor.seconds(), BackendStatusTable([backend]))
        good = self.listen(StatusFactory(report, reactor))
        hung = self.listen(Factory.forProtocol(Silent))
        garbage = self.listen(Factory.forProtocol(Garbage))
        closed_port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        closed = closed_port.getHost().port
        await closed_port.stopListening()
        ports = {1: good, 2: hung, 3: garbage, 4: closed}
        nodes = NodeStatusTable(NodeState(n, "", "127.0.0.1") for n in ports)
        sweep = Sweep(nodes, SummaryTable(), timeout=0.3, tries=2, delay=0.05)
        swept: Deferred[None] = Deferred()
        failed: list[int] = []

        def on_failed(number: int) -> None:
            failed.append(number)
            if len(failed) == 3 and not swept.called:
                swept.callback(None)

        sweep.on_failed.append(on_failed)
        service = SweepService(sweep, reactor, lambda n: ("127.0.0.1", ports[n.number]))
        service.startService()
        self.addCleanup(service.stopService)
        swept.addTimeout(10, reactor)
        await swept
        self.assertEqual(sorted(failed), [2, 3, 4])
        rows = {n.number: n for n in nodes}
        self.assertFalse(rows[1].failed)
        self.assertEqual(rows[1].hits, 1)
        self.assertEqual(rows[2].last_error, "timed out")
        self.assertIn("not JSON", rows[3].last_error)
        self.assertEqual(rows[4].last_error, "connectionrefused")
        self.assertEqual([r.hits for r in sweep.summary.rows], [1])
