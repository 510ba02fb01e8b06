"""dlba.logstats: counts over combined-format lines, with known answers."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from dlba.logstats import Bucket, LogStats, Report, as_json, dumps, render, when
from dlba.proxy.accesslog import AccessLog

# 2025-03-10 10:00 +0100 is 09:00 UTC: minutes since the epoch.
T1000 = 1741597200 // 60


def line(
    stamp: str,
    path: str = "/",
    status: int = 200,
    size: int | None = 100,
    method: str = "GET",
    zone: str = "+0100",
) -> bytes:
    size_text = "-" if size is None else str(size)
    return (
        f'192.0.2.1 - - [10/Mar/2025:{stamp} {zone}] "{method} {path} HTTP/1.1" '
        f'{status} {size_text} "http://ref/" "agent \\"quoted\\" 1.0"\n'
    ).encode()


def known_log() -> list[bytes]:
    """15 good lines and 7 malformed ones, with the answers the tests check."""
    return [
        line("10:00:01", "/a?x=1", 200, 100),
        line("10:00:30", "/a?x=2", 200, 200),
        b"\n",  # line 3: empty
        line("10:00:59", "/b", 404, 300),
        line("10:01:00", "/a", 200, 50),
        line("10:01:10", "/c", 304, None),
        b"not a log line at all\n",  # line 7
        line("10:01:20", "/a", 500, 50),
        line("10:01:30", "/a", 200, 50),
        line("10:01:40", "/b", 301, 150),
        line("10:59:59", "/big", 200, 1000),
        line("11:30:00", "/a", 200, 10).replace(b" 200 ", b" 700 "),  # line 12: status
        line("11:30:00", "/a", 200, 10),
        line("11:30:01", "/a", 200, 10),
        line("11:30:02", "/d", 503, 10),
        line("11:30:03", "/d", 200, 10).replace(b" 10 ", b" 1O "),  # line 16: size
        line("11:30:04", "/d", 200, 10),
        line("11:31:00", "/e", 200, 5),
        line("11:31:00", "/e", 200, 5).replace(b"Mar", b"Mxr"),  # line 19: month
        line("11:31:00", "/e", 200, 5).replace(b"11:31:00", b"25:31:00"),  # line 20: hour
        line("11:31:00", "/e", 200, 5)[:60],  # line 21: cut short inside the request
        line("11:31:01", "/e", 200, 5),
    ]


def stats_of(lines: list[bytes], **kw: object) -> Report:
    s = LogStats(**kw)  # type: ignore[arg-type]
    s.feed(lines, "access.log")
    return s.report()


class KnownAnswerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.r = stats_of(known_log(), top=3)

    def test_totals(self) -> None:
        self.assertEqual(self.r.lines, 22)
        self.assertEqual(self.r.hits, 15)
        self.assertEqual(self.r.body_bytes, 100 + 200 + 300 + 50 * 3 + 150 + 1000 + 40 + 10)

    def test_malformed_lines_counted_and_named(self) -> None:
        self.assertEqual(self.r.malformed, 7)
        self.assertEqual(self.r.malformed_at, [("access.log", n) for n in (3, 7, 12, 16, 19)])

    def test_busiest_minutes(self) -> None:
        self.assertEqual(
            self.r.minutes,
            [Bucket(T1000 + 1, 5, 300), Bucket(T1000 + 90, 4, 40), Bucket(T1000, 3, 600)],
        )
        self.assertTrue(self.r.minutes_exact)

    def test_busiest_hours(self) -> None:
        self.assertEqual(self.r.hours, [Bucket(T1000, 9, 1900), Bucket(T1000 + 60, 6, 50)])

    def test_period_and_offset(self) -> None:
        self.assertEqual(self.r.offset, 60)
        self.assertEqual(when(self.r.first or 0, 60), "2025-03-10 10:00 +0100")
        self.assertEqual(when(self.r.last or 0, 60), "2025-03-10 11:31 +0100")

    def test_status_mix(self) -> None:
        self.assertEqual(self.r.classes, {"1xx": 0, "2xx": 10, "3xx": 2, "4xx": 1, "5xx": 2})
        self.assertEqual(self.r.codes, [(200, 10), (301, 1), (304, 1)])

    def test_top_urls_by_path(self) -> None:
        self.assertEqual(self.r.urls, [(b"/a", 7), (b"/b", 2), (b"/d", 2)])
        self.assertEqual(self.r.url_error, 0)

    def test_keep_query(self) -> None:
        r = stats_of(known_log(), top=20, keep_query=True)
        urls = dict(r.urls)
        self.assertEqual((urls[b"/a"], urls[b"/a?x=1"], urls[b"/a?x=2"]), (5, 1, 1))

    def test_json(self) -> None:
        record = json.loads(dumps(self.r, ["access.log"]))
        self.assertEqual(record["hits"], 15)
        self.assertEqual(record["malformed"]["count"], 7)
        self.assertEqual(record["malformed"]["first"][0], {"log": "access.log", "line": 3})
        self.assertEqual(
            record["busiest_minutes"][0],
            {"start": "2025-03-10T10:01:00+01:00", "hits": 5, "bytes": 300},
        )
        self.assertEqual(record["busiest_hours"][0]["start"], "2025-03-10T10:00:00+01:00")
        self.assertEqual(record["status"]["5xx"], 2)
        self.assertEqual(record["codes"][0], {"code": 200, "hits": 10})
        self.assertEqual(record["urls"]["top"][0], {"url": "/a", "hits": 7})
        self.assertTrue(record["urls"]["exact"])
        self.assertEqual(record["urls"]["query"], "cut")
        self.assertEqual(
            record["period"],
            {"first": "2025-03-10T10:00:00+01:00", "last": "2025-03-10T11:31:00+01:00"},
        )

    def test_text(self) -> None:
        text = render(self.r, ["access.log"])
        self.assertIn(
            "lines    22 (7 malformed: first at access.log lines 3, 7, 12, 16, 19, ...)", text
        )
        self.assertIn("period   2025-03-10 10:00 +0100 to 2025-03-10 11:31 +0100", text)
        lines = text.splitlines()
        i = lines.index(next(x for x in lines if x.startswith("busiest minutes")))
        self.assertEqual(
            lines[i : i + 2],
            ["busiest minutes         hits  bytes", "2025-03-10 10:01 +0100     5    300"],
        )
        self.assertIn("/a                       7  46.7%", text)
        self.assertNotIn("approximate", text)


class FormatTests(SynchronousTestCase):
    def test_reads_what_dlba_writes(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        path = os.path.join(d, "access.log")
        self.addCleanup(os.unlink, path)
        log = AccessLog(path)
        ua = b'evil "agent" \\ \x01'
        log.log(1741597200.0, "192.0.2.1", b"GET /x?q=1 HTTP/1.1", 200, 12, b"http://r/", ua)
        log.log(1741597201.0, "2001:db8::1", b'GET /we"ird HTTP/1.1', 404, 0, None, None)
        log.log(1741597260.0, "192.0.2.1", b"-", 400, 0, None, None)
        log.close()
        s = LogStats()
        with open(path, "rb") as f:
            s.feed(f, path)
        r = s.report()
        self.assertEqual((r.lines, r.hits, r.malformed, r.body_bytes), (3, 3, 0, 12))
        self.assertEqual(r.first, T1000)  # whatever this machine's local offset
        self.assertEqual(dict(r.urls), {b"/x": 1, b"/we\\x22ird": 1})
        self.assertEqual(r.codes, [(200, 1), (400, 1), (404, 1)])

    def test_apache_escaped_quote_in_the_request(self) -> None:
        r = stats_of([line("10:00:00", '/a\\"b', 200, 7)])
        self.assertEqual((r.hits, r.malformed, r.urls), (1, 0, [(b"/a\\x22b", 1)]))
        self.assertEqual(r.lines, 1)

    def test_common_log_format(self) -> None:
        r = stats_of([b'h - u [10/Mar/2025:10:00:00 +0100] "GET /c HTTP/1.0" 200 42\n'])
        self.assertEqual((r.hits, r.body_bytes, r.urls), (1, 42, [(b"/c", 1)]))

    def test_crlf_and_no_final_newline(self) -> None:
        r = stats_of([line("10:00:00").replace(b"\n", b"\r\n"), line("10:00:01").rstrip(b"\n")])
        self.assertEqual((r.hits, r.malformed), (2, 0))

    def test_a_request_line_that_is_no_request_counts_but_not_as_a_url(self) -> None:
        r = stats_of([b'h - - [10/Mar/2025:10:00:00 +0100] "-" 408 - "-" "-"\n'])
        self.assertEqual((r.hits, r.urls, r.codes), (1, [], [(408, 1)]))

    def test_bad_seconds_or_offset(self) -> None:
        r = stats_of(
            [
                line("10:00:61"),
                line("10:00:00", zone="+01"),
                line("10:00:00", zone="x0100"),
                line("10:00:00").replace(b"] ", b"]x"),
            ]
        )
        self.assertEqual((r.hits, r.malformed), (0, 4))

    def test_negative_size(self) -> None:
        self.assertEqual(stats_of([line("10:00:00", size=-5)]).malformed, 1)

    def test_offsets_are_merged_in_utc_and_shown_in_the_first_lines(self) -> None:
        r = stats_of(
            [line("10:00:00"), line("09:00:30", zone="+0000"), line("04:00:59", zone="-0500")]
        )
        self.assertEqual(r.minutes, [Bucket(T1000, 3, 300)])
        self.assertEqual(r.offset, 60)

    def test_hours_follow_the_shown_offset(self) -> None:
        r = stats_of([line("10:29:00", zone="+0530"), line("10:31:00", zone="+0530")])
        self.assertEqual(len(r.hours), 1)
        self.assertEqual(when(r.hours[0].start, r.offset), "2025-03-10 10:00 +0530")

    def test_out_of_order_logs_count_exactly(self) -> None:
        a = [line(f"10:{m:02d}:00") for m in range(5)]
        b = [line(f"10:{m:02d}:30", size=1) for m in range(5)]
        r = stats_of([x for pair in zip(a, b, strict=True) for x in pair] + a[:1])
        self.assertEqual(r.minutes[0], Bucket(T1000, 3, 201))
        self.assertEqual({m.hits for m in r.minutes[1:]}, {2})

    def test_several_logs(self) -> None:
        s = LogStats()
        s.feed([line("10:00:00"), b"x\n"], "a.log")
        s.feed([b"y\n", line("10:00:00")], "b.log")
        r = s.report()
        self.assertEqual((r.lines, r.hits, r.malformed_at), (4, 2, [("a.log", 2), ("b.log", 1)]))
        self.assertEqual(r.minutes, [Bucket(T1000, 2, 200)])

    def test_empty(self) -> None:
        r = stats_of([])
        self.assertEqual((r.lines, r.hits, r.first, r.minutes, r.hours), (0, 0, None, [], []))
        self.assertIn("hits     0", render(r, ["-"]))
        self.assertIsNone(as_json(r, ["-"])["period"])

    def test_reading_fails_midway(self) -> None:
        """What was read before a read error (a truncated gzip) is counted."""

        def lines():  # type: ignore[no-untyped-def]
            yield line("10:00:00")
            yield line("10:00:01")
            raise EOFError("truncated")

        s = LogStats()
        self.assertRaises(EOFError, s.feed, lines(), "x.gz")
        r = s.report()
        self.assertEqual((r.lines, r.hits, r.minutes), (2, 2, [Bucket(T1000, 2, 200)]))


class BoundedMemoryTests(SynchronousTestCase):
    def test_url_counters_stay_bounded_and_keep_the_heavy_hitters(self) -> None:
        lines = []
        for i in range(2000):
            lines.append(line("10:00:00", f"/once/{i}"))
            if i % 10 == 0:
                lines.append(line("10:00:00", "/heavy"))
            if i % 25 == 0:
                lines.append(line("10:00:00", "/medium"))
        s = LogStats(top=2, url_capacity=50)
        s.feed(lines)
        self.assertLessEqual(len(s._urls), 50)
        r = s.report()
        self.assertEqual([u for u, _ in r.urls], [b"/heavy", b"/medium"])
        self.assertGreater(r.url_error, 0)
        for url, true in ((b"/heavy", 200), (b"/medium", 80)):
            count = dict(r.urls)[url]
            self.assertLessEqual(count, true)
            self.assertGreaterEqual(count, true - r.url_error)
        self.assertIn("approximate: each count may be low by up to", render(r, ["-"]))
        self.assertFalse(as_json(r, ["-"])["urls"]["exact"])

    def test_minute_table_stays_bounded_in_order(self) -> None:
        lines = []
        for m in range(30):
            lines += [line(f"10:{m:02d}:00", size=1)] * (m % 7 + 1)
        s = LogStats(top=3, max_minutes=4)
        s.feed(lines)
        self.assertLessEqual(len(s._minutes), 4)
        r = s.report()
        self.assertTrue(r.minutes_exact)
        self.assertEqual([(m.start - T1000, m.hits) for m in r.minutes], [(6, 7), (13, 7), (20, 7)])
        self.assertEqual(r.hours, [Bucket(T1000, sum(m % 7 + 1 for m in range(30)), r.body_bytes)])

    def test_a_line_for_a_retired_minute_makes_minutes_approximate(self) -> None:
        s = LogStats(top=3, max_minutes=4)
        s.feed([line(f"10:{m:02d}:00") for m in range(10)] + [line("10:00:30")])
        r = s.report()
        self.assertFalse(r.minutes_exact)
        self.assertEqual(r.hits, 11)
        self.assertEqual(r.hours[0].hits, 11)
        self.assertIn("approximate", render(r, ["-"]))
