"""The access log, in the combined log format, with no reverse DNS."""

from __future__ import annotations

import time
from typing import IO

_MONTHS = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


def escape(value: bytes) -> bytes:
    """nginx-style escaping, so a hostile header cannot forge a log line or a field."""
    if not any(c < 0x20 or c in (0x22, 0x5C) or c >= 0x7F for c in value):
        return value
    out = bytearray()
    for c in value:
        if c < 0x20 or c in (0x22, 0x5C) or c >= 0x7F:
            out += b"\\x%02X" % c
        else:
            out.append(c)
    return bytes(out)


class AccessLog:
    """Buffered appends; the proxy flushes them once a second and at stop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "ab", buffering=65536)
        self._stamp_second = -1
        self._stamp = b""

    def _timestamp(self, now: float) -> bytes:
        second = int(now)
        if second != self._stamp_second:
            t = time.localtime(second)
            off = t.tm_gmtoff // 60
            sign = b"+" if off >= 0 else b"-"
            off = abs(off)
            self._stamp = b"%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d" % (
                t.tm_mday,
                _MONTHS[t.tm_mon - 1],
                t.tm_year,
                t.tm_hour,
                t.tm_min,
                t.tm_sec,
                sign,
                off // 60,
                off % 60,
            )
            self._stamp_second = second
        return self._stamp

    def log(
        self,
        now: float,
        client: str,
        request_line: bytes,
        status: int,
        body_bytes: int,
        referer: bytes | None,
        user_agent: bytes | None,
    ) -> None:
        self._file.write(
            b'%s - - [%s] "%s" %d %s "%s" "%s"\n'
            % (
                client.encode("ascii", "replace"),
                self._timestamp(now),
                escape(request_line),
                status,
                b"%d" % body_bytes if body_bytes else b"-",
                escape(referer) if referer else b"-",
                escape(user_agent) if user_agent else b"-",
            )
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
