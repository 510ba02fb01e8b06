"""A back end's answer head: gathered from the parser, framed, and rewritten for the client.

Pure: ``ResponseHead`` collects httptools' callbacks on the back-end side;
``answer_framing`` says how its body ends; ``client_head`` writes the head the client is
sent and decides whether the client connection may stay open after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dlba.http.framing import CHUNKED, LENGTH, NONE, UNTIL_CLOSE, Framing
from dlba.http.request import VIA
from dlba.http.responses import REASONS
from dlba.http.rules import HOP_BY_HOP, comma_tokens

# Hop-by-hop, and Content-Length: the proxy sets the framing of what it forwards itself.
_HOP = HOP_BY_HOP | {b"content-length"}

_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


class ResponseHead:
    """What the parser has told of one answer head so far (1xx heads are heads too)."""

    __slots__ = (
        "chunked",
        "conn_tokens",
        "final",
        "headers",
        "keepalive_hint",
        "length",
        "reason",
        "upgrade",
    )

    def __init__(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self.length: bytes | None = None
        self.conn_tokens: list[bytes] = []
        self.keepalive_hint: bytes | None = None
        self.upgrade: bytes | None = None
        self.final = False  # the final (non-1xx) head is whole: what follows are trailers

    def add_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in _HOP:
            if lname == b"content-length":
                self.length = value
            elif lname == b"transfer-encoding":
                self.chunked = True
            elif lname == b"connection":
                self.conn_tokens += comma_tokens(value)
            elif lname == b"keep-alive":
                self.keepalive_hint = value
            elif lname == b"upgrade":
                self.upgrade = value
            return
        if self.final:
            return  # trailers of a chunked answer: dropped with the chunked coding
        self.headers.append((name, value))

    def forwarded_headers(self) -> list[tuple[bytes, bytes]]:
        """The end-to-end headers, without those the back end's Connection names."""
        if self.conn_tokens:
            drop = set(self.conn_tokens) - _CONNECTION_OPTIONS
            if drop:
                return [(n, v) for (n, v) in self.headers if n.lower() not in drop]
        return self.headers


def answer_framing(head: ResponseHead, code: int, head_request: bool) -> Framing:
    """How the body of an answer is delimited (RFC 9112 §6.3)."""
    if head_request or code in (204, 304) or code == 101:
        return NONE
    if head.chunked:
        return CHUNKED
    if head.length is not None:
        return LENGTH
    return UNTIL_CLOSE


def keepalive_timeout(value: bytes) -> float | None:
    """The ``timeout=N`` of a ``Keep-Alive`` header: when the back end closes an idle
    connection; None if it says nothing usable."""
    for part in value.split(b","):
        key, _, num = part.strip().partition(b"=")
        if key.strip().lower() == b"timeout":
            try:
                seconds = float(num.strip())
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) else None
    return None


def informational_head(code: int, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    out = [b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Continue"))]
    out += [b"%s: %s\r\n" % h for h in headers]
    out.append(b"\r\n")
    return b"".join(out)


def _status_and_headers(
    code: int,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    added: Sequence[tuple[bytes, bytes]],
) -> list[bytes]:
    out = [b"HTTP/1.1 %d %s\r\n" % (code, reason or REASONS.get(code, b""))]
    out += [b"%s: %s\r\n" % h for h in headers]
    out += [b"%s: %s\r\n" % h for h in added]
    return out


def upgrade_head(
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    added: Sequence[tuple[bytes, bytes]],
    upgrade: bytes,
) -> bytes:
    """The 101 the client is sent when a WebSocket upgrade was agreed."""
    out = _status_and_headers(101, reason, headers, added)
    out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
    out.append(VIA)
    out.append(b"\r\n")
    return b"".join(out)


def client_head(
    code: int,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    added: Sequence[tuple[bytes, bytes]],
    framing: Framing,
    length: bytes | None,
    *,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
) -> tuple[bytes, bool, bool]:
    """(head, chunk the body, keep the connection) for a final answer other than 101.

    ``added``: headers the proxy adds; ``keep_alive``: whether the
    client connection could stay open as far as the request side knows (the client asked
    for it, the request was read whole, no upgrade was promised, not shutting down).
    """
    out = _status_and_headers(code, reason, headers, added)
    keep = keep_alive
    chunk_out = False
    if framing == LENGTH:
        assert length is not None
        out.append(b"Content-Length: %s\r\n" % length)
    elif framing == NONE:
        if length is not None and (head_request or code == 304):
            out.append(b"Content-Length: %s\r\n" % length)
    elif http11:
        chunk_out = True
        out.append(b"Transfer-Encoding: chunked\r\n")
    else:
        keep = False  # an HTTP/1.0 client learns where the body ends only by the close
    out.append(VIA)
    if not keep:
        out.append(b"Connection: close\r\n")
    elif not http11:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out), chunk_out, keep
