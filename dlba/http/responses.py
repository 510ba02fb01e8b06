"""The answers the proxy makes itself: errors, in full, ready to write."""

from __future__ import annotations

REASONS: dict[int, bytes] = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(
    status: int,
    *,
    close: bool,
    retry_after: int | None = None,
    head_only: bool = False,
    hsts: bytes | None = None,
) -> bytes:
    """A small text/plain error.  ``close`` says whether the connection ends after it;
    ``hsts``: a Strict-Transport-Security value to send (HTTPS only)."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\n" % (status, reason)
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
    ]
    if retry_after is not None:
        lines.append(b"Retry-After: %d" % retry_after)
    if hsts is not None:
        lines.append(b"Strict-Transport-Security: " + hsts)
    lines.append(b"Connection: close" if close else b"Connection: keep-alive")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body
