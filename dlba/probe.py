"""The external probe's decisions: what counts as a failed try, when to page, how to read an answer.

Pure: no sockets and no clock.  ``dlba-ctl probe`` (``dlba/ctl.py``) does the I/O and the
timing and hands each outcome to a :class:`Pager`, which decides alone when the alert
command runs: once when the target has failed ``threshold`` tries in a row, once more at
the first success after that.  :class:`ResponseReader` turns the bytes of one HTTP/1.1
answer into its status and body length and says when its last byte has arrived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

THRESHOLD = 3

# An answer head longer than this is not a web server's: stop reading rather than buffer it.
MAX_HEAD = 64 * 1024

AlertState = Literal["down", "up"]


@dataclass(frozen=True)
class Alert:
    """What the alert command is told: the new state, and the failures that led to it.

    ``failures`` is the count of consecutive failed tries: at "down", those that tripped the
    alert; at "up", how many the outage lasted.  ``error`` is the last failure's reason.
    """

    state: AlertState
    failures: int
    error: str


class Pager:
    """The paper's pager: page after ``threshold`` consecutive failures, and once at recovery.

    A plain class rather than an Automat machine: two states and one counter, and the only
    output is the returned :class:`Alert`.  A target that is down when the probe starts is
    paged after ``threshold`` failures like any other; a success before the threshold just
    resets the count, so a flapping target never pages.
    """

    def __init__(self, threshold: int = THRESHOLD) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.down = False
        self.failures = 0
        self.last_error = ""

    def record(self, error: str | None) -> Alert | None:
        """One try's outcome (``None``: it succeeded; else why it failed); the alert, if any."""
        if error is None:
            failures, self.failures = self.failures, 0
            if self.down:
                self.down = False
                return Alert("up", failures, self.last_error)
            return None
        self.failures += 1
        self.last_error = error
        if not self.down and self.failures >= self.threshold:
            self.down = True
            return Alert("down", self.failures, error)
        return None


def failure(status: int | None, error: str | None) -> str | None:
    """Why a try failed, or ``None`` if it succeeded.

    The rule: any error before the whole answer was read (name resolution, connect refused
    or timed out, TLS handshake or verification, a timeout at any step, a connection closed
    early, an answer that is not HTTP) fails, and so does a 5xx status: the server answered
    but cannot serve.  1xx-4xx answers succeed: a 404 or a redirect proves the server up.
    """
    if error is not None:
        return error
    if status is None:
        return "no answer"
    if status >= 500:
        return f"status {status}"
    return None


@dataclass(frozen=True)
class Try:
    """One request's outcome, times in milliseconds since just before ``connect()``.

    ``connect_ms``: TCP connected; ``tls_ms``: TLS handshake done (https only);
    ``first_ms``: the first byte of the answer arrived; ``last_ms``: its last body byte
    arrived (by Content-Length, the last chunk, or the server's close).  A step not reached
    is ``None``.  Name resolution happens before the clock starts.  ``started`` is the wall
    clock time of the try, for the log line only.
    """

    started: float
    connect_ms: float | None = None
    tls_ms: float | None = None
    first_ms: float | None = None
    last_ms: float | None = None
    status: int | None = None
    body_bytes: int | None = None
    error: str | None = None

    @property
    def failed(self) -> str | None:
        return failure(self.status, self.error)


_COLUMNS = (
    ("time", 23),
    ("status", 6),
    ("bytes", 9),
    ("connect", 8),
    ("tls", 8),
    ("first", 8),
    ("last", 8),
)


def header() -> str:
    """The table's heading: times are milliseconds since ``connect()``."""
    first, *rest = _COLUMNS
    cells = [first[0].ljust(first[1])] + [name.rjust(width) for name, width in rest]
    return "  ".join([*cells, "result (times in ms since connect)"])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(t: Try, local_time: str) -> str:
    """One aligned line; ``local_time`` is ``t.started`` as the face formats it."""
    failed = t.failed
    cells = [
        local_time,
        "-" if t.status is None else str(t.status),
        "-" if t.body_bytes is None else str(t.body_bytes),
        _ms(t.connect_ms),
        _ms(t.tls_ms),
        _ms(t.first_ms),
        _ms(t.last_ms),
    ]
    out = [cells[0].ljust(_COLUMNS[0][1])]
    out += [cell.rjust(width) for cell, (_, width) in zip(cells[1:], _COLUMNS[1:], strict=True)]
    out.append("ok" if failed is None else f"FAIL {failed}")
    return "  ".join(out)


def as_json(t: Try, url: str, local_time: str) -> str:
    """One JSON line: the same fields as :func:`row`, plus the URL and ``ok``."""
    failed = t.failed
    record: dict[str, Any] = {
        "time": local_time,
        "url": url,
        "ok": failed is None,
        "status": t.status,
        "bytes": t.body_bytes,
        "connect_ms": _round(t.connect_ms),
        "tls_ms": _round(t.tls_ms),
        "first_byte_ms": _round(t.first_ms),
        "last_byte_ms": _round(t.last_ms),
        "error": failed,
    }
    return json.dumps(record)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def alert_environment(alert: Alert, url: str, status: int | None) -> dict[str, str]:
    """The variables the alert command gets, besides the probe's own environment."""
    return {
        "DLBA_PROBE_URL": url,
        "DLBA_PROBE_STATE": alert.state,
        "DLBA_PROBE_FAILURES": str(alert.failures),
        "DLBA_PROBE_ERROR": alert.error,
        "DLBA_PROBE_STATUS": "" if status is None else str(status),
    }


class BadResponse(Exception):
    """The bytes are not an HTTP/1.x answer, or it ended before its framing said."""


class ResponseReader:
    """Reads one HTTP/1.1 answer to a GET: status, body length, and when it is complete.

    Fed bytes as they arrive; :attr:`done` turns true when the body's last byte has been
    read by its framing (Content-Length, chunked, or no body at all for 204 and 304).
    An answer with neither length nor chunking ends at the server's close: call
    :meth:`eof` then, which raises :class:`BadResponse` if a framed answer was cut short.
    Interim 1xx answers (103 Early Hints) are skipped.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.body_bytes = 0
        self.done = False
        self._buf = b""
        self._head_done = False
        self._length: int | None = None  # Content-Length still to read
        self._chunked = False
        self._chunk_state = "size"  # size, data, crlf, trailer
        self._chunk_left = 0

    def feed(self, data: bytes) -> None:
        if self.done:
            return  # bytes after the answer (a server ignoring "Connection: close"): unused
        self._buf += data
        if not self._head_done:
            self._read_head()
        if self._head_done and not self.done:
            self._read_body()

    def eof(self) -> None:
        """The server closed the connection."""
        if self.done:
            return
        if not self._head_done:
            raise BadResponse(
                "closed before the answer's head was complete"
                if self._buf
                else "closed without answering"
            )
        if self._chunked or self._length is not None:
            raise BadResponse(f"closed after {self.body_bytes} body bytes, before the end")
        self.done = True

    def _read_head(self) -> None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise BadResponse(f"answer head longer than {MAX_HEAD} bytes")
                if not b"HTTP/".startswith(self._buf[:5]):
                    raise BadResponse("the answer is not HTTP")
                return
            head, self._buf = self._buf[:end], self._buf[end + 4 :]
            lines = head.split(b"\r\n")
            status = _status(lines[0])
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer: the real one follows
            self.status = status
            self._head_done = True
            self._framing(lines[1:], status)
            return

    def _framing(self, lines: list[bytes], status: int) -> None:
        lengths: set[bytes] = set()
        codings = b""
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep:
                raise BadResponse(f"bad header line {line[:40]!r}")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                codings += b"," + value.strip().lower()
        if status in (101, 204, 304):
            self.done = True
        elif codings.rsplit(b",", 1)[-1].strip() == b"chunked":
            self._chunked = True
        elif lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                raise BadResponse(f"bad Content-Length {b','.join(sorted(lengths))!r}")
            self._length = int(next(iter(lengths)))
            if self._length == 0:
                self.done = True

    def _read_body(self) -> None:
        if self._chunked:
            self._read_chunks()
        elif self._length is not None:
            take = min(self._length, len(self._buf))
            self.body_bytes += take
            self._length -= take
            self._buf = b""
            if self._length == 0:
                self._length = None
                self.done = True
        else:
            self.body_bytes += len(self._buf)
            self._buf = b""

    def _read_chunks(self) -> None:
        while not self.done:
            if self._chunk_state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 4096:
                        raise BadResponse("chunk size line too long")
                    return
                size_text = self._buf[:end].split(b";", 1)[0].strip()
                self._buf = self._buf[end + 2 :]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    self._chunk_left = size
                    self._chunk_state = "data"
            elif self._chunk_state == "data":
                if not self._buf:
                    return
                take = min(self._chunk_left, len(self._buf))
                self.body_bytes += take
                self._chunk_left -= take
                self._buf = self._buf[take:]
                if self._chunk_left == 0:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise BadResponse("chunk data not followed by CRLF")
                self._buf = self._buf[2:]
                self._chunk_state = "size"
            else:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise BadResponse("trailer too long")
                    return
                line, self._buf = self._buf[:end], self._buf[end + 2 :]
                if not line:
                    self.done = True


def _status(line: bytes) -> int:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        raise BadResponse(f"not an HTTP/1.x status line: {line[:60]!r}")
    return int(code)
