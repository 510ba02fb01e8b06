"""Small glue: deadlines and the access log."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from dlba.config import LimitsSection
from dlba.policy import make_policy
from dlba.proxy.accesslog import AccessLog, escape
from dlba.proxy.core import ACCESS_LOG_FLUSH, ProxyCore
from dlba.proxy.deadlines import NEVER, DeadlineSweeper, body_deadline
from dlba.routing import Pool, Router
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

    def test_the_proxy_writes_its_lines_within_a_second(self) -> None:
        # A quiet node's lines must reach the file while someone tails it, not at 64 KiB.
        d = tempfile.mkdtemp()
        path = os.path.join(d, "access.log")
        self.addCleanup(os.rmdir, d)
        self.addCleanup(os.unlink, path)
        log = AccessLog(path)
        self.addCleanup(log.close)
        clock = Clock()
        table = BackendStatusTable([BackendState(1, "127.0.0.1", 9001)])
        pool = Pool("p", list(table), make_policy("round-robin"))
        core = ProxyCore(Router([pool]), table, LimitsSection(), MemoryReactor(), clock, log)
        core.start()
        log.log(clock.seconds(), "192.0.2.1", b"GET / HTTP/1.1", 200, 2, None, None)
        self.assertEqual(os.path.getsize(path), 0)
        clock.advance(ACCESS_LOG_FLUSH)
        self.assertGreater(os.path.getsize(path), 0)
        core.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class BodyDeadlineTests(SynchronousTestCase):
    def test_silence_alone_without_a_minimum(self) -> None:
        self.assertEqual(body_deadline(0.0, 100.0, 5, 30.0, 0.0), 130.0)

    def test_credit_grows_with_bytes(self) -> None:
        # 30 s of grace, then 1 s per 500 bytes received.
        self.assertEqual(body_deadline(0.0, 1.0, 500, 30.0, 500.0), 31.0)
        self.assertEqual(body_deadline(0.0, 1.0, 50_000, 30.0, 500.0), 31.0)  # silence first
        self.assertEqual(body_deadline(0.0, 90.0, 50_000, 30.0, 500.0), 120.0)
