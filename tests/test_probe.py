"""dlba.probe: when the pager pages, what counts as a failure, reading one answer."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from dlba.probe import (
    Alert,
    BadResponse,
    Pager,
    ResponseReader,
    Try,
    alert_environment,
    as_json,
    failure,
    header,
    row,
)

FAIL = "status 500"


def alerts(outcomes: str, threshold: int = 3) -> list[tuple[int, Alert]]:
    """Feed ``F`` (failed) and ``S`` (succeeded) tries; the alerts and after which try."""
    pager = Pager(threshold)
    out = []
    for i, c in enumerate(outcomes, 1):
        alert = pager.record(FAIL if c == "F" else None)
        if alert is not None:
            out.append((i, alert))
    return out


class PagerTests(SynchronousTestCase):
    def test_three_failures_page_once(self) -> None:
        self.assertEqual(alerts("FFF"), [(3, Alert("down", 3, FAIL))])

    def test_more_failures_do_not_page_again(self) -> None:
        self.assertEqual(alerts("FFFFFFFF"), [(3, Alert("down", 3, FAIL))])

    def test_the_first_success_after_paging_pages_recovery(self) -> None:
        self.assertEqual(
            alerts("FFFFFSSS"), [(3, Alert("down", 3, FAIL)), (6, Alert("up", 5, FAIL))]
        )

    def test_up_carries_the_last_error(self) -> None:
        pager = Pager()
        for error in ("refused", "timeout", "status 502"):
            pager.record(error)
        self.assertEqual(pager.record(None), Alert("up", 3, "status 502"))

    def test_flapping_below_the_threshold_never_pages(self) -> None:
        self.assertEqual(alerts("FFSFFSFSFFS"), [])

    def test_flapping_after_paging_pages_each_change_once(self) -> None:
        self.assertEqual(
            [(i, a.state) for i, a in alerts("FFFSFFSFFF")],
            [(3, "down"), (4, "up"), (10, "down")],
        )

    def test_successes_alone_never_page(self) -> None:
        self.assertEqual(alerts("SSSS"), [])

    def test_threshold_one(self) -> None:
        self.assertEqual([a.state for _, a in alerts("FSF", threshold=1)], ["down", "up", "down"])

    def test_bad_threshold(self) -> None:
        self.assertRaises(ValueError, Pager, 0)

    def test_alert_environment(self) -> None:
        env = alert_environment(Alert("down", 3, "status 503"), "http://h/", 503)
        self.assertEqual(
            env,
            {
                "DLBA_PROBE_URL": "http://h/",
                "DLBA_PROBE_STATE": "down",
                "DLBA_PROBE_FAILURES": "3",
                "DLBA_PROBE_ERROR": "status 503",
                "DLBA_PROBE_STATUS": "503",
            },
        )
        self.assertEqual(
            alert_environment(Alert("down", 3, "refused"), "u", None)["DLBA_PROBE_STATUS"], ""
        )


class FailureRuleTests(SynchronousTestCase):
    def test_5xx_fails(self) -> None:
        self.assertEqual(failure(500, None), "status 500")
        self.assertEqual(failure(503, None), "status 503")

    def test_1xx_to_4xx_succeed(self) -> None:
        for status in (200, 204, 301, 304, 404, 418):
            self.assertIsNone(failure(status, None), status)

    def test_an_error_fails_whatever_the_status(self) -> None:
        self.assertEqual(failure(200, "closed early"), "closed early")
        self.assertEqual(failure(None, "refused"), "refused")

    def test_no_answer_fails(self) -> None:
        self.assertEqual(failure(None, None), "no answer")


def read(*pieces: bytes, eof: bool = False) -> ResponseReader:
    r = ResponseReader()
    for p in pieces:
        r.feed(p)
    if eof:
        r.eof()
    return r


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class ResponseReaderTests(SynchronousTestCase):
    def test_content_length(self) -> None:
        r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.assertEqual((r.status, r.body_bytes, r.done), (200, 2, False))
        r.feed(b"cde")
        self.assertEqual((r.body_bytes, r.done), (5, True))

    def test_content_length_byte_by_byte(self) -> None:
        r = read(*bytewise(b"HTTP/1.0 404 Not Found\r\ncontent-length: 3\r\n\r\nxyz"))
        self.assertEqual((r.status, r.body_bytes, r.done), (404, 3, True))

    def test_bytes_after_the_answer_are_not_counted(self) -> None:
        r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabEXTRA")
        self.assertEqual((r.body_bytes, r.done), (2, True))
        r.feed(b"more")
        self.assertEqual(r.body_bytes, 2)

    def test_chunked_with_extensions_and_trailer(self) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        r = read(*bytewise(answer))
        self.assertEqual((r.status, r.body_bytes, r.done), (200, 15, True))

    def test_chunked_not_done_before_the_last_chunk(self) -> None:
        r = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertFalse(r.done)
        self.assertRaises(BadResponse, r.eof)

    def test_no_framing_reads_until_close(self) -> None:
        r = read(b"HTTP/1.0 200 OK\r\n\r\nsome", b" body")
        self.assertFalse(r.done)
        r.eof()
        self.assertEqual((r.body_bytes, r.done), (9, True))

    def test_no_body_statuses(self) -> None:
        for status in (204, 304):
            r = read(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
            self.assertEqual((r.status, r.body_bytes, r.done), (status, 0, True))
        r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(r.done)

    def test_interim_answers_are_skipped(self) -> None:
        r = read(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertEqual((r.status, r.body_bytes, r.done), (200, 1, True))

    def test_closed_early(self) -> None:
        self.assertRaises(BadResponse, read, eof=True)
        self.assertRaises(BadResponse, read, b"HTTP/1.1 200 OK\r\n", eof=True)
        self.assertRaises(
            BadResponse, read, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", eof=True
        )
        with self.assertRaises(BadResponse) as e:
            read(eof=True)
        self.assertIn("without answering", str(e.exception))

    def test_not_http(self) -> None:
        self.assertRaises(BadResponse, read, b"SSH-2.0-OpenSSH_9.2\r\n")
        self.assertRaises(BadResponse, read, b"HTTP/2 200\r\n\r\n")
        self.assertRaises(BadResponse, read, b"HTTP/1.1 2x0 OK\r\n\r\n")
        self.assertRaises(BadResponse, read, b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n")

    def test_conflicting_or_bad_content_length(self) -> None:
        self.assertRaises(
            BadResponse, read, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        self.assertRaises(BadResponse, read, b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")

    def test_bad_chunk_size(self) -> None:
        self.assertRaises(
            BadResponse, read, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )

    def test_head_too_long(self) -> None:
        r = ResponseReader()
        r.feed(b"HTTP/1.1 200 OK\r\n")
        self.assertRaises(BadResponse, r.feed, b"X-Long: " + b"a" * 70000)


class OutputTests(SynchronousTestCase):
    def test_rows_line_up_with_the_header(self) -> None:
        ok = Try(0.0, 0.21, 1.5, 2.25, 3.0, 200, 612)
        refused = Try(0.0, error="connection refused")
        lines = [
            header(),
            row(ok, "2025-03-10 14:07:01.123"),
            row(refused, "2025-03-10 14:07:02.123"),
        ]
        # Every column but the last ends at the same place on every line.
        for name in ("status", "bytes", "connect", "tls", "first", "last"):
            end = lines[0].index(name) + len(name)
            for line in lines:
                self.assertNotEqual(line[end - 1], " ", (name, line))
                self.assertEqual(line[end : end + 2], "  ", (name, line))
        self.assertIn("200", lines[1])
        self.assertIn("1.5", lines[1])
        self.assertTrue(lines[1].endswith("ok"))
        self.assertTrue(lines[2].endswith("FAIL connection refused"))

    def test_5xx_row_says_why(self) -> None:
        self.assertTrue(row(Try(0.0, 0.1, None, 1, 2, 503, 0), "t").endswith("FAIL status 503"))

    def test_json(self) -> None:
        record = json.loads(as_json(Try(0.0, 0.2, None, 1.0, 1.5, 200, 10), "http://h/", "t"))
        self.assertEqual(
            record,
            {
                "time": "t",
                "url": "http://h/",
                "ok": True,
                "status": 200,
                "bytes": 10,
                "connect_ms": 0.2,
                "tls_ms": None,
                "first_byte_ms": 1.0,
                "last_byte_ms": 1.5,
                "error": None,
            },
        )
