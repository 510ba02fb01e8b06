"""Busiest minutes and hours, status mix and top URLs of combined-format access logs.

Pure: :class:`LogStats` takes lines as bytes (an open binary file is such an iterable) and
keeps counts; :func:`render` and :func:`as_json` format its :class:`Report`.  Opening files,
gzip and stdin are ``dlba-ctl logstats``'s business (``dlba/ctl.py``).

The format is the one ``dlba/proxy/accesslog.py`` writes, Apache's and nginx's "combined"::

    HOST IDENT USER [DD/Mon/YYYY:HH:MM:SS +ZZZZ] "REQUEST" STATUS BYTES "REFERER" "AGENT"

The referer and agent are not used, so "common" lines (without them) are read too.  A line
is malformed, counted and skipped, when it has no quoted request, no bracketed timestamp
just before it, a status that is not 100-599, or a size that is neither ``-`` nor a count.
A request line with an Apache-escaped quote (``\\"``) inside is read as dlba writes it
(``\\x22``).  URLs are counted by path, the query string cut off (``keep_query`` keeps it),
so cache-busting queries do not spread one page over thousands of counters; a request
line that is not ``METHOD TARGET [VERSION]`` (such as dlba's ``-`` for a request that
never arrived) counts in every figure but the URLs.

Memory does not grow with the number of lines:

- URLs: the Misra-Gries "frequent items" summary with at most ``url_capacity`` counters
  (10,000).  When full, every count drops by their median and those at zero go, so at
  least half are freed and each purge costs O(capacity log capacity) once per
  capacity/2 new URLs.  Every count is then low by at most the sum of the medians
  subtracted (``Report.url_error``, 0 while no purge happened: exact), and any URL with
  more than that many hits is still tracked.
- Minutes: one counter per distinct minute of the log's time span (1,440 a day), not per
  line.  Beyond ``max_minutes`` (100,000, about ten weeks) the oldest half is retired:
  each retired minute goes to a heap of the ``top`` busiest and to the hour counts, and
  leaves the table.  A line for a retired minute (a log far out of time order) then starts
  a fresh count and the minutes are reported approximate.
- Hours are summed from the minutes, and statuses are 500 fixed counters.

Speed: the loop is one ``split`` on quotes, one on whitespace and a few dictionary updates
per line.  Lines of one minute are added up in local variables and land in the minute
table when the minute changes, and only then is the timestamp parsed and checked (cached
by its text, so an out-of-order log parses each minute once): in a log in time order that
happens once a minute.  A line's seconds and offset are therefore checked only at a minute
change; the minute itself, which is all that is counted, always is.
"""

from __future__ import annotations

import datetime
import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

URL_CAPACITY = 10_000
MAX_MINUTES = 100_000
MALFORMED_SAMPLES = 5

_MONTHS = {
    m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
}
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
# The minute-text cache is only a cache: cleared when it reaches this size.
_STAMP_CACHE = 4096


class _BadLine(Exception):
    pass


def _minute(stamp: bytes, seconds: bytes) -> tuple[int, int]:
    """``[DD/Mon/YYYY:HH:MM`` + ``+ZZZZ] `` and ``:SS `` -> (UTC epoch minute, offset minutes)."""
    if len(stamp) != 25 or stamp[0] != 0x5B or stamp[-2:] != b"] ":
        raise _BadLine
    if stamp[3] != 0x2F or stamp[7] != 0x2F or stamp[12] != 0x3A or stamp[15] != 0x3A:
        raise _BadLine
    if (
        seconds[:1] != b":"
        or seconds[3:] != b" "
        or not seconds[1:3].isdigit()
        or seconds > b":60 "
    ):
        raise _BadLine
    day, year, hour, minute = stamp[1:3], stamp[8:12], stamp[13:15], stamp[16:18]
    sign, zone = stamp[18:19], stamp[19:23]
    month = _MONTHS.get(stamp[4:7])
    numbers = (day, year, hour, minute, zone)
    if month is None or sign not in (b"+", b"-") or not all(n.isdigit() for n in numbers):
        raise _BadLine
    h, m = int(hour), int(minute)
    if h > 23 or m > 59:
        raise _BadLine
    try:
        days = datetime.date(int(year), month, int(day)).toordinal() - _EPOCH_DAY
    except ValueError:
        raise _BadLine from None
    offset = int(zone[:2]) * 60 + int(zone[2:])
    if sign == b"-":
        offset = -offset
    return days * 1440 + h * 60 + m - offset, offset


@dataclass(frozen=True)
class Bucket:
    """A minute or an hour: its start (UTC minutes since the epoch), hits and body bytes."""

    start: int
    hits: int
    body_bytes: int


@dataclass(frozen=True)
class Report:
    lines: int
    hits: int
    body_bytes: int
    first: int | None  # UTC minute of the earliest line, None for an empty log
    last: int | None
    offset: int  # minutes east of UTC that times are shown in: the first line's
    minutes: list[Bucket]
    hours: list[Bucket]
    minutes_exact: bool
    classes: dict[str, int]  # "1xx".."5xx"
    codes: list[tuple[int, int]]  # (status, hits), most hits first
    urls: list[tuple[bytes, int]]  # (path, hits), most hits first
    url_error: int  # every URL count may be low by up to this many hits
    keep_query: bool
    malformed: int
    malformed_at: list[tuple[str, int]] = field(default_factory=list)  # (source, line number)


class LogStats:
    """Counts over any number of logs fed one after the other; ``report()`` at the end."""

    def __init__(
        self,
        *,
        top: int = 10,
        keep_query: bool = False,
        url_capacity: int = URL_CAPACITY,
        max_minutes: int = MAX_MINUTES,
    ) -> None:
        if url_capacity < 2 or max_minutes < 2 or top < 1:
            raise ValueError("top must be >= 1, url_capacity and max_minutes >= 2")
        self.top = top
        self.keep_query = keep_query
        self.url_capacity = url_capacity
        self.max_minutes = max_minutes
        self.lines = 0
        self.malformed = 0
        self.malformed_at: list[tuple[str, int]] = []
        self._status = {b"%d" % code: 0 for code in range(100, 600)}
        self._urls: dict[bytes, int] = {}
        self._url_error = 0
        self._minutes: dict[int, list[int]] = {}  # UTC minute -> [hits, bytes]
        self._stamps: dict[bytes, tuple[int, int]] = {}
        self._offset: int | None = None
        self._first: int | None = None
        self._last: int | None = None
        self._retired: list[tuple[int, int, int]] = []  # heap of (hits, -minute, bytes)
        self._retired_hours: dict[int, list[int]] = {}
        self._retired_upto: int | None = None
        self._minutes_exact = True

    def feed(self, lines: Iterable[bytes], source: str = "-") -> None:
        """Count every line of one log; ``source`` names it in the malformed-line samples."""
        self._feed(lines, source, 1, rescue=True)

    def _feed(self, lines: Iterable[bytes], source: str, start: int, *, rescue: bool) -> None:
        # The hot loop: everything it touches is a local, and nothing is counted for a line
        # until every check that can reject it has passed.
        status = self._status
        urls = self._urls
        capacity = self.url_capacity
        cut_query = not self.keep_query
        stamps = self._stamps
        add_run = self._add_run
        rescued = 0
        bad = 0
        run_key = None
        run_minute = 0
        run_hits = 0
        run_bytes = 0
        number = start - 1
        try:
            for number, line in enumerate(lines, start):
                try:
                    head, request, rest = line.split(b'"', 2)
                    fields = rest.split(None, 2)
                    code = fields[0]
                    size = fields[1]
                    nbytes = 0 if size == b"-" else int(size)
                    if nbytes < 0:
                        raise ValueError
                    key = head[-28:-11]
                    if key != run_key:
                        stamp = head[-29:-11] + head[-7:]
                        parsed = stamps.get(stamp)
                        if parsed is None:
                            parsed = _minute(stamp, head[-11:-7])
                            if len(stamps) >= _STAMP_CACHE:
                                stamps.clear()
                            stamps[stamp] = parsed
                        elif not head[-10:-8].isdigit():
                            raise _BadLine
                        if run_hits:
                            add_run(run_minute, run_hits, run_bytes)
                        run_key = key
                        run_minute = parsed[0]
                        if self._offset is None:
                            self._offset = parsed[1]
                        run_hits = run_bytes = 0
                    status[code] += 1
                except (ValueError, KeyError, IndexError, _BadLine):
                    if rescue and b'\\"' in line:
                        # Rare: read it again as dlba would have written it.  The inner
                        # call counts into the same tables and flushes its own run.
                        rescued += 1
                        self._feed((line.replace(b'\\"', b"\\x22"),), source, number, rescue=False)
                    else:
                        bad += 1
                        if len(self.malformed_at) < MALFORMED_SAMPLES:
                            self.malformed_at.append((source, number))
                    continue
                run_hits += 1
                run_bytes += nbytes
                target = request.split(b" ", 2)
                if len(target) > 1:
                    url = target[1].split(b"?", 1)[0] if cut_query else target[1]
                    count = urls.get(url)
                    if count is None:
                        if len(urls) >= capacity:
                            self._url_error += _purge(urls)
                        urls[url] = 1
                    else:
                        urls[url] = count + 1
        finally:
            # Also when reading fails midway (a truncated gzip): what was read counts.
            if run_hits:
                add_run(run_minute, run_hits, run_bytes)
            # A rescued line is counted by the inner call.
            self.lines += number - start + 1 - rescued
            self.malformed += bad

    def _add_run(self, minute: int, hits: int, nbytes: int) -> None:
        counts = self._minutes.get(minute)
        if counts is None:
            if self._retired_upto is not None and minute <= self._retired_upto:
                self._minutes_exact = False
            if len(self._minutes) >= self.max_minutes:
                self._retire()
            self._minutes[minute] = [hits, nbytes]
        else:
            counts[0] += hits
            counts[1] += nbytes
        if self._first is None or minute < self._first:
            self._first = minute
        if self._last is None or minute > self._last:
            self._last = minute

    def _retire(self) -> None:
        """Fold the oldest half of the minute table into the top heap and the hour counts."""
        oldest = sorted(self._minutes)[: len(self._minutes) // 2]
        offset = self._offset or 0
        for minute in oldest:
            hits, nbytes = self._minutes.pop(minute)
            _keep_top(self._retired, (hits, -minute, nbytes), self.top)
            hour = self._retired_hours.setdefault((minute + offset) // 60, [0, 0])
            hour[0] += hits
            hour[1] += nbytes
        self._retired_upto = oldest[-1]

    def report(self) -> Report:
        offset = self._offset or 0
        top: list[tuple[int, int, int]] = list(self._retired)
        hours: dict[int, list[int]] = {h: list(c) for h, c in self._retired_hours.items()}
        for minute, (hits, nbytes) in self._minutes.items():
            _keep_top(top, (hits, -minute, nbytes), self.top)
            hour = hours.setdefault((minute + offset) // 60, [0, 0])
            hour[0] += hits
            hour[1] += nbytes
        minutes = [Bucket(-m, h, b) for h, m, b in sorted(top, reverse=True)]
        busiest_hours = heapq.nlargest(self.top, hours.items(), key=lambda i: (i[1][0], -i[0]))
        hits = sum(self._status.values())
        classes = {f"{c}xx": 0 for c in range(1, 6)}
        codes = []
        for code, n in self._status.items():
            if n:
                classes[f"{code[:1].decode()}xx"] += n
                codes.append((int(code), n))
        codes.sort(key=lambda c: (-c[1], c[0]))
        urls = heapq.nsmallest(self.top, self._urls.items(), key=lambda u: (-u[1], u[0]))
        return Report(
            lines=self.lines,
            hits=hits,
            body_bytes=sum(c[1] for c in hours.values()),
            first=self._first,
            last=self._last,
            offset=offset,
            minutes=minutes,
            hours=[Bucket(h * 60 - offset, c[0], c[1]) for h, c in busiest_hours],
            minutes_exact=self._minutes_exact,
            classes=classes,
            codes=codes[: self.top],
            urls=urls,
            url_error=self._url_error,
            keep_query=self.keep_query,
            malformed=self.malformed,
            malformed_at=list(self.malformed_at),
        )


def _keep_top(heap: list[tuple[int, int, int]], item: tuple[int, int, int], size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _purge(counts: dict[bytes, int]) -> int:
    """Misra-Gries: take the median count off every counter, drop those left at zero."""
    cut = sorted(counts.values())[len(counts) // 2]
    for key, n in list(counts.items()):
        if n <= cut:
            del counts[key]
        else:
            counts[key] = n - cut
    return cut


# -- formatting --------------------------------------------------------------------------


def when(minute: int, offset: int) -> str:
    """A UTC minute shown in the log's own offset: ``2025-03-10 14:07 +0100``."""
    zone = datetime.timezone(datetime.timedelta(minutes=offset))
    t = datetime.datetime.fromtimestamp(minute * 60, zone)
    return t.strftime("%Y-%m-%d %H:%M %z")


def _iso(minute: int, offset: int) -> str:
    zone = datetime.timezone(datetime.timedelta(minutes=offset))
    return datetime.datetime.fromtimestamp(minute * 60, zone).isoformat()


def _url(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _table(title: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces between."""
    widths = [max(len(r[i]) for r in [title, *rows]) for i in range(len(title))]
    out = []
    for r in [title, *rows]:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def render(report: Report, sources: list[str]) -> str:
    """The report as aligned plain-text tables."""
    r = report
    out = [f"logs     {', '.join(sources)}"]
    out.append(f"lines    {r.lines:,} ({r.malformed:,} malformed{_samples(r)})")
    if r.first is not None and r.last is not None:
        out.append(f"period   {when(r.first, r.offset)} to {when(r.last, r.offset)}")
    out.append(f"hits     {r.hits:,}")
    out.append(f"bytes    {r.body_bytes:,}")
    out.append("")
    note = "" if r.minutes_exact else " (approximate: the log is far out of time order)"
    rows = [(when(b.start, r.offset), f"{b.hits:,}", f"{b.body_bytes:,}") for b in r.minutes]
    out += _table((f"busiest minutes{note}", "hits", "bytes"), rows)
    out.append("")
    rows = [(when(b.start, r.offset), f"{b.hits:,}", f"{b.body_bytes:,}") for b in r.hours]
    out += _table(("busiest hours (start)", "hits", "bytes"), rows)
    out.append("")
    rows = [(c, f"{n:,}", _share(n, r.hits)) for c, n in r.classes.items() if n]
    rows += [(str(code), f"{n:,}", _share(n, r.hits)) for code, n in r.codes]
    out += _table(("status", "hits", "share"), rows)
    out.append("")
    what = "URL" if r.keep_query else "URL path (query cut)"
    if r.url_error:
        what += f" (approximate: each count may be low by up to {r.url_error:,})"
    rows = [(_url(u), f"{n:,}", _share(n, r.hits)) for u, n in r.urls]
    out += _table((what, "hits", "share"), rows)
    return "\n".join(out) + "\n"


def _samples(r: Report) -> str:
    """``: first at a.log lines 3, 9, b.log line 2, ...``"""
    if not r.malformed_at:
        return ""
    groups: list[tuple[str, list[int]]] = []
    for source, n in r.malformed_at:
        if groups and groups[-1][0] == source:
            groups[-1][1].append(n)
        else:
            groups.append((source, [n]))
    shown = ", ".join(
        f"{source} line{'s' if len(ns) > 1 else ''} {', '.join(map(str, ns))}"
        for source, ns in groups
    )
    more = ", ..." if r.malformed > len(r.malformed_at) else ""
    return f": first at {shown}{more}"


def as_json(report: Report, sources: list[str]) -> dict[str, Any]:
    """The report as one JSON-ready object; times are ISO 8601 in the log's offset."""
    r = report

    def bucket(b: Bucket) -> dict[str, Any]:
        return {"start": _iso(b.start, r.offset), "hits": b.hits, "bytes": b.body_bytes}

    return {
        "logs": sources,
        "lines": r.lines,
        "hits": r.hits,
        "bytes": r.body_bytes,
        "malformed": {
            "count": r.malformed,
            "first": [{"log": s, "line": n} for s, n in r.malformed_at],
        },
        "period": None
        if r.first is None or r.last is None
        else {"first": _iso(r.first, r.offset), "last": _iso(r.last, r.offset)},
        "busiest_minutes": [bucket(b) for b in r.minutes],
        "minutes_exact": r.minutes_exact,
        "busiest_hours": [bucket(b) for b in r.hours],
        "status": dict(r.classes),
        "codes": [{"code": c, "hits": n} for c, n in r.codes],
        "urls": {
            "query": "kept" if r.keep_query else "cut",
            "exact": r.url_error == 0,
            "max_undercount": r.url_error,
            "top": [{"url": _url(u), "hits": n} for u, n in r.urls],
        },
    }


def dumps(report: Report, sources: list[str]) -> str:
    return json.dumps(as_json(report, sources), indent=2) + "\n"
