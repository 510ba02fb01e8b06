from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dlba.tables import BackendState, BackendStatusTable


class BackendStateTests(SynchronousTestCase):
    def test_failure_and_backoff(self) -> None:
        b = BackendState(1, "127.0.0.1", 80)
        self.assertTrue(b.live(0.0))
        b.mark_failed(10.0, 5.0, "connect: refused")
        self.assertFalse(b.live(12.0))
        self.assertEqual(b.retry_after(12.0), 3)
        self.assertTrue(b.live(15.0))
        self.assertEqual(b.last_error, "connect: refused")
        self.assertEqual(b.failures, 1)

    def test_response_time_average(self) -> None:
        b = BackendState(1, "::1", 80)
        self.assertEqual(b.address, "[::1]:80")
        b.record_response(1.0)
        self.assertEqual(b.avg_response_time, 1.0)
        for _ in range(200):
            b.record_response(0.0)
        self.assertLess(b.avg_response_time, 0.001)
        self.assertEqual(b.hits, 201)


class TableTests(SynchronousTestCase):
    def test_one_row_per_number_and_snapshot(self) -> None:
        a = BackendState(2, "h", 2)
        t = BackendStatusTable([a, BackendState(1, "h", 1)])
        self.assertIs(t.add(BackendState(2, "other", 9)), a)  # shared across pools
        self.assertEqual([b.number for b in t], [1, 2])
        a.mark_failed(0.0, 4.0, "x")
        rows = t.snapshot(1.0)
        self.assertEqual([(r.number, r.failed) for r in rows], [(1, False), (2, True)])
        self.assertEqual(t.retry_after(1.0), 3)
        self.assertEqual(BackendStatusTable().retry_after(0.0), 1)
