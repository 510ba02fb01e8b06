"""Small glue: deadlines, the access log, the status daemon."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dlba.array.status import StatusFactory
from dlba.policy import RoundRobin
from dlba.proxy.accesslog import AccessLog, escape
from dlba.proxy.deadlines import NEVER, DeadlineSweeper, body_deadline
from dlba.routing import Pool
from dlba.tables import BackendState, BackendStatusTable


class Watched:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.calls: list[float] = []

    def deadline_passed(self, now: float) -> None:
        self.calls.append(now)
        self.deadline = NEVER


class SweeperTests(SynchronousTestCase):
    def test_called_once_when_due(self) -> None:
        clock = Clock()
        s = DeadlineSweeper(clock, interval=0.25)
        a, b = Watched(1.0), Watched(NEVER)
        s.watch(a)
        s.watch(b)
        s.start()
        clock.advance(0.75)
        self.assertEqual(a.calls, [])
        clock.pump([0.25] * 8)
        self.assertEqual(a.calls, [1.0])
        self.assertEqual(b.calls, [])
        s.unwatch(a)
        a.deadline = 0.0
        clock.advance(1)
        self.assertEqual(len(a.calls), 1)
        s.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class AccessLogTests(SynchronousTestCase):
    def test_combined_format_and_escaping(self) -> None:
        d = tempfile.mkdtemp()
        path = os.path.join(d, "access.log")
        log = AccessLog(path)
        log.log(0.0, "192.0.2.1", b"GET /a HTTP/1.1", 200, 12, b"http://r/", b'ua "x"\n')
        log.log(0.0, "192.0.2.1", b"-", 400, 0, None, None)
        log.close()
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        os.unlink(path)
        os.rmdir(d)
        self.assertRegex(
            lines[0].decode(),
            r'^192\.0\.2\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /a HTTP/1\.1" '
            r'200 12 "http://r/" "ua \\x22x\\x22\\x0A"$',
        )
        self.assertTrue(lines[1].endswith(b'"-" 400 - "-" "-"'))
        self.assertEqual(escape(b"plain"), b"plain")


class StatusTests(SynchronousTestCase):
    def test_dumps_table_and_closes(self) -> None:
        table = BackendStatusTable([BackendState(1, "127.0.0.1", 9001, limit=8)])
        factory = StatusFactory(3, table, Clock())
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        t = StringTransport()
        proto.makeConnection(t)
        lines = [json.loads(line) for line in t.value().splitlines()]
        self.assertEqual(lines[0]["number"], 3)
        self.assertEqual(lines[1]["address"], "127.0.0.1:9001")
        self.assertEqual(lines[1]["limit"], 8)
        self.assertEqual(lines[-1], {"table": "end"})
        self.assertTrue(t.disconnecting)

    def test_pool_queue_line(self) -> None:
        clock = Clock()
        backend = BackendState(1, "127.0.0.1", 9001, limit=1)
        pool = Pool("app", [backend], RoundRobin(), queue_limit=4, queue_timeout=2.0)
        pool.queue.push("a", None, 2.0, now=0.0)
        pool.queue.push("b", 1, 2.5, now=0.5)
        pool.admission.admit_request(4)
        pool.expired = 3
        clock.advance(1.5)
        factory = StatusFactory(1, BackendStatusTable([backend]), clock, [pool])
        t = StringTransport()
        proto = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proto is not None
        proto.makeConnection(t)
        [row] = [r for r in map(json.loads, t.value().splitlines()) if r["table"] == "pool"]
        self.assertEqual(
            row,
            {
                "table": "pool",
                "name": "app",
                "queued": 2,
                "oldest_wait": 1.5,
                "queue_limit": 4,
                "queue_timeout": 2.0,
                "refusing_connections": False,
                "refused_requests": 1,
                "refused_connections": 0,
                "expired": 3,
            },
        )


class BodyDeadlineTests(SynchronousTestCase):
    def test_silence_alone_without_a_minimum(self) -> None:
        self.assertEqual(body_deadline(0.0, 100.0, 5, 30.0, 0.0), 130.0)

    def test_credit_grows_with_bytes(self) -> None:
        # 30 s of grace, then 1 s per 500 bytes received.
        self.assertEqual(body_deadline(0.0, 1.0, 500, 30.0, 500.0), 31.0)
        self.assertEqual(body_deadline(0.0, 1.0, 50_000, 30.0, 500.0), 31.0)  # silence first
        self.assertEqual(body_deadline(0.0, 90.0, 50_000, 30.0, 500.0), 120.0)
