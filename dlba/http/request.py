"""A client's request head: gathered from the parser, checked, and rewritten for a back end.

Pure: the front protocol feeds ``RequestHead`` from httptools' callbacks, then
``accept_request`` checks it (RFC 9110, RFC 9112; llhttp has already refused the
smuggling shapes it knows) and ``forward_head`` writes what the back end is sent.  No
reactor, no transport: every decision here is unit-tested on bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlba.http.cookies import forwarded_cookies
from dlba.http.framing import CHUNKED, LENGTH, NONE, Framing
from dlba.http.rules import (
    RequestRejected,
    check_version,
    comma_tokens,
    split_target,
    valid_host,
)

VIA = b"Via: 1.1 dlba\r\n"

# Headers the proxy reads or sets itself; every other header is forwarded as it came.
_SPECIAL = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"user-agent",
        b"referer",
        b"cookie",
    }
)

# Connection tokens that name no header to remove.
_CONNECTION_OPTIONS = (b"close", b"keep-alive", b"upgrade")


class RequestHead:
    """What the parser has told of one request head so far."""

    __slots__ = (
        "conn_tokens",
        "cookie_headers",
        "expect",
        "header_bytes",
        "headers",
        "host",
        "hosts",
        "length",
        "referer",
        "te",
        "upgrade",
        "url",
        "user_agent",
        "xff",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []  # forwarded as they came
        self.header_bytes = 0
        self.host: bytes | None = None
        self.hosts = 0
        self.length: bytes | None = None
        self.te: bytes | None = None
        self.conn_tokens: list[bytes] = []
        self.upgrade: bytes | None = None
        self.expect: bytes | None = None
        self.xff: bytes | None = None
        self.user_agent: bytes | None = None
        self.referer: bytes | None = None
        self.cookie_headers: list[bytes] = []

    def add_url(self, part: bytes) -> None:
        self.url += part
        self.header_bytes += len(part)

    def add_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        lname = name.lower()
        if lname not in _SPECIAL:
            self.headers.append((name, value))
            return
        if lname == b"host":
            self.host = value
            self.hosts += 1
        elif lname == b"content-length":
            self.length = value
        elif lname == b"transfer-encoding":
            self.te = value
        elif lname == b"connection":
            self.conn_tokens += comma_tokens(value)
        elif lname == b"upgrade":
            self.upgrade = value
        elif lname == b"expect":
            self.expect = value
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"user-agent":
            self.user_agent = value
            self.headers.append((name, value))
        elif lname == b"referer":
            self.referer = value
            self.headers.append((name, value))
        elif lname == b"cookie":
            self.cookie_headers.append(value)
        # keep-alive, proxy-connection, te, trailer, x-forwarded-proto: ours to set


@dataclass(slots=True)
class Request:
    """A request that passed the checks: what routing, policies and the exchange read.

    It is the ``RequestView`` policies see (method, target, host, cookies, headers).
    """

    method: bytes
    version: bytes  # b"1.0" or b"1.1", as the client spoke
    http11: bool  # version == b"1.1", asked several times per request
    target: bytes  # origin-form (or "*"), as forwarded
    host: bytes | None  # Host, or the authority of an absolute-form target
    headers: list[tuple[bytes, bytes]]  # forwarded headers, names as sent
    cookies: list[tuple[bytes, bytes]]  # every Cookie header's pairs, values as sent
    cookie_line: bytes | None  # the one Cookie header forwarded, ours taken out
    body: Framing  # NONE, LENGTH or CHUNKED
    length: int | None  # Content-Length as sent (None: none, or chunked)
    expect_continue: bool
    keep_alive: bool  # the client wants the connection kept after this request
    upgrade: bytes | None  # a WebSocket upgrade we will relay, else None
    xff: bytes | None
    referer: bytes | None
    user_agent: bytes | None
    url: bytes  # the request-target as the client sent it (for the access log)

    @property
    def request_line(self) -> bytes:
        return b"%s %s HTTP/%s" % (self.method, self.url, self.version)


def accept_request(
    head: RequestHead,
    method: bytes,
    version: str,
    keep_alive: bool,
    *,
    max_header_bytes: int,
    max_body_bytes: int,
    cookie_name: bytes,
) -> Request:
    """Check a whole head; raise ``RequestRejected`` with the status to answer if it fails.

    ``version`` and ``keep_alive`` are the parser's (``get_http_version``,
    ``should_keep_alive``); ``cookie_name`` is the injected cookie, never forwarded.
    """
    if head.header_bytes > max_header_bytes:
        raise RequestRejected(431, "request head larger than max_header_bytes")
    major, _, minor = version.partition(".")
    check_version(int(major), int(minor or 0))
    http11 = minor == "1"
    if method == b"CONNECT":
        raise RequestRejected(501, "CONNECT is never tunnelled")
    target, authority = split_target(method, head.url)
    if head.hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    host = head.host
    if host is None:
        if http11:
            raise RequestRejected(400, "HTTP/1.1 request without Host")
    elif not valid_host(host):
        raise RequestRejected(400, "invalid Host header")
    if authority is not None:
        host = authority
    body = NONE
    length: int | None = None
    if head.te is not None:
        if not http11:
            raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
        if head.te.strip().lower() != b"chunked":
            raise RequestRejected(501, "transfer coding other than chunked")
        body = CHUNKED
    elif head.length is not None:
        length = int(head.length)  # llhttp has checked it is digits, and only one
        if length > max_body_bytes:
            raise RequestRejected(413, "Content-Length over max_body_bytes")
        if length:
            body = LENGTH
    expect_continue = False
    if head.expect is not None and http11:
        if head.expect.strip().lower() != b"100-continue":
            raise RequestRejected(417, "unknown expectation")
        expect_continue = body != NONE
    upgrade: bytes | None = None
    if (
        head.upgrade is not None
        and http11
        and b"upgrade" in head.conn_tokens
        and b"websocket" in comma_tokens(head.upgrade)
        and method == b"GET"
    ):
        upgrade = head.upgrade
    headers = head.headers
    named = [t for t in head.conn_tokens if t not in _CONNECTION_OPTIONS]
    if named:
        drop = set(named)
        headers = [(n, v) for (n, v) in headers if n.lower() not in drop]
    cookies: list[tuple[bytes, bytes]] = []
    cookie_line: bytes | None = None
    if head.cookie_headers:
        cookies, cookie_line = forwarded_cookies(head.cookie_headers, cookie_name)
    return Request(
        method=method,
        version=b"1.1" if http11 else b"1.0",
        http11=http11,
        target=target,
        host=host,
        headers=headers,
        cookies=cookies,
        cookie_line=cookie_line,
        body=body,
        length=length,
        expect_continue=expect_continue,
        keep_alive=keep_alive,
        upgrade=upgrade,
        xff=head.xff,
        referer=head.referer,
        user_agent=head.user_agent,
        url=head.url,
    )


def forward_head(request: Request, client_ip: str, secure: bool, close: bool) -> bytes:
    """The whole head sent to the back end, blank line included.

    ``close``: ask the back end to close after answering (no pooled connection).
    """
    method, host = request.method, request.host
    client = client_ip.encode("ascii")
    xff = client if request.xff is None else request.xff + b", " + client
    proto = b"https" if secure else b"http"
    fwd_for = b'"[%s]"' % client if b":" in client else client
    # HTTP/1.1 to the back end requires Host, even if an HTTP/1.0 client sent none.
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, request.target, host or b"")]
    out += [b"%s: %s\r\n" % h for h in request.headers]
    if request.cookie_line is not None:
        out.append(b"Cookie: %s\r\n" % request.cookie_line)
    out.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (xff, proto))
    if host:
        out.append(b'Forwarded: for=%s;proto=%s;host="%s"\r\n' % (fwd_for, proto, host))
    else:
        out.append(b"Forwarded: for=%s;proto=%s\r\n" % (fwd_for, proto))
    out.append(VIA)
    body = request.body
    if body == CHUNKED:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif request.length:
        out.append(b"Content-Length: %d\r\n" % request.length)
    elif request.length == 0 and method in (b"POST", b"PUT", b"PATCH"):
        out.append(b"Content-Length: 0\r\n")  # said so by the client: keep it said
    if request.expect_continue:
        out.append(b"Expect: 100-continue\r\n")
    if request.upgrade is not None:
        out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % request.upgrade)
    elif close:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out)
