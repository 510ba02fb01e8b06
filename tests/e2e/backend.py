"""A test back end for the end-to-end tests: a small, strict HTTP/1.1 server.

Run as a child process by ``tests.e2e.harness``::

    python backend.py --name b1 --fd 3 [--idle-close SECONDS] [--always-close]

It serves on a listening socket it inherits as file descriptor ``--fd`` (the test binds
it, so the port is known before this process starts and no port can be stolen), or on
``--port`` (0 picks one).  When it is serving it prints one JSON line to stdout:
``{"event": "ready", "port": N}``; it prints ``{"event": "idle-close", ...}`` when it
closes an idle connection (``--idle-close``), ``{"event": "request", "target": T}``
for each request head it reads (but ``/_stats``), and ``{"event": "closed", ...}`` when
a connection ends (but those of ``/_stats``).

Every answer carries ``X-Backend: NAME``.  Paths:

- ``/_stats``: JSON ``{"name", "connections", "requests", "completed", "open",
  "inflight", "max_inflight", "targets"}``: ``requests`` counts heads received,
  ``completed`` requests whose body arrived whole, ``inflight`` requests read and not yet
  answered (nor their connection lost), ``max_inflight`` the most ever in flight at once.
  A connection whose first request is ``/_stats`` is not counted, nor are those requests.
- ``/echo``: JSON of what arrived: method, target, version, headers as ``[name, value]``
  pairs in order, the body's length and sha256, and whether ``Expect: 100-continue``
  was seen.
- ``/upload``, ``/continue``: the same JSON (bodies of either framing are read).
- ``/body?n=N``: N bytes of a fixed pattern (``pattern(N)``), with Content-Length.
- ``/chunked?n=N&size=K``: N bytes of the pattern in K-byte chunks, with a trailer.
- ``/slow?ms=N``: answers after N milliseconds.
- ``/drip?chunks=N&ms=M``: a chunked answer whose N chunks come M milliseconds apart.
- ``/hang``: never answers.
- ``/truncate?n=N&send=M``: promises N bytes (Content-Length, or chunked with
  ``chunked=1``), sends M of them and closes.
- ``/garbage``: answers with bytes that are not HTTP.
- ``/switch``: answers 101 though nobody asked for an upgrade.
- ``/close``: answers with ``Connection: close`` and closes.
- ``/status?code=N``: answers with status N (no body for 1xx, 204, 304).
- ``/ws``: a WebSocket upgrade: 101, then every byte is echoed back.
- ``/login``: sets ``JSESSIONID=<random>; Path=/; HttpOnly``; the body is
  ``backend NAME session ID``.
- ``/redirect?style=path|query``: 302 to ``/app;jsessionid=<random>`` (``path``) or
  ``/app?sid=<random>`` (``query``); the id is in the body too.
- ``/setcookie?h=V&h=V2...[&cc=V][&sts=V]``: one ``Set-Cookie: V`` header per ``h``
  (values as given, URL-decoded), ``Cache-Control: V`` with ``cc`` and
  ``Strict-Transport-Security: V`` with ``sts``; the body is ``backend NAME``.
- anything else: ``backend NAME`` as text.

A request carrying ``Expect: 100-continue`` and a body gets ``100 Continue`` first.
``--idle-close S`` closes a connection idle between requests for S seconds;
``--always-close`` answers every request with ``Connection: close``; ``--drop-reused``
closes, without answering, a connection on which a second request arrives (the race of
a keep-alive connection closed just as a request is sent on it).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import socket
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IDelayedCall, IReactorSocket, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

reactor: Any = _reactor

_PATTERN = bytes(range(33, 127)) * 64  # printable, and no period a small test would miss
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    302: b"Found",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    404: b"Not Found",
    500: b"Internal Server Error",
}


def pattern(n: int) -> bytes:
    """The body ``/body?n=N`` and ``/chunked?n=N`` send."""
    whole, part = divmod(n, len(_PATTERN))
    return _PATTERN * whole + _PATTERN[:part]


def event(name: str, **fields: object) -> None:
    """A JSON line on stdout for the test to wait on."""
    sys.stdout.write(json.dumps({"event": name, **fields}) + "\n")
    sys.stdout.flush()


class BadRequest(Exception):
    pass


class Server(ServerFactory):
    def __init__(
        self, name: str, idle_close: float | None, always_close: bool, drop_reused: bool
    ) -> None:
        self.name = name
        self.idle_close = idle_close
        self.always_close = always_close
        self.drop_reused = drop_reused
        self.accepted = 0
        self.completed = 0
        self.stats_connections = 0
        self.requests = 0
        self.open = 0
        self.inflight = 0  # requests read and not yet answered (nor their connection lost)
        self.max_inflight = 0  # the most ever in flight at once
        self.targets: list[str] = []

    def buildProtocol(self, addr: Any) -> Connection:
        return Connection(self)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "connections": self.accepted - self.stats_connections,
            "requests": self.requests,
            "completed": self.completed,
            "open": self.open,
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "targets": self.targets,
        }


HEAD, BODY, WAIT, TUNNEL, DEAD = range(5)


class Connection(Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""
        self.state = HEAD
        self.served = 0
        self.idle_call: IDelayedCall | None = None
        self.pending: IDelayedCall | None = None
        self.close_after = False
        self.stats_only = False  # its first request was /_stats: not counted
        self.in_flight = False  # a request (but /_stats) read and not answered yet

    # -- life --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.server.accepted += 1
        self.server.open += 1
        self._idle()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.server.open -= 1
        self._answered()
        if not self.stats_only:
            event("closed", served=self.served)
        self.state = DEAD
        for call in (self.idle_call, self.pending):
            if call is not None and call.active():
                call.cancel()

    def _idle(self) -> None:
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        self.idle_call = None
        if self.server.idle_close is not None:
            clock: IReactorTime = reactor
            self.idle_call = clock.callLater(self.server.idle_close, self._idle_expired)

    def _idle_expired(self) -> None:
        self.idle_call = None
        if self.state == HEAD and not self.buf:
            assert self.transport is not None
            self.transport.loseConnection()
            event("idle-close", served=self.served)

    # -- reading -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
            self.idle_call = None
        if self.state == TUNNEL:
            assert self.transport is not None
            self.transport.write(data)
            return
        self.buf += data
        try:
            self._advance()
        except BadRequest as e:
            self._send(400, [], f"bad request: {e}\n".encode(), close=True)

    def _advance(self) -> None:
        while self.state in (HEAD, BODY):
            if self.state == HEAD:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 65536:
                        raise BadRequest("head too large")
                    return
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                self._head(head)
            if self.state == BODY and not self._body():
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise BadRequest(f"request line {lines[0]!r}")
        self.method, target, self.version = parts
        self.target = target.decode("latin-1")
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b"\n" in line:
                raise BadRequest(f"header line {line!r}")
            self.headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        self.url = urlsplit(self.target)
        self.query = {k: v[-1] for k, v in parse_qs(self.url.query).items()}
        self.query_all = parse_qs(self.url.query, keep_blank_values=True)
        stats = self.url.path == "/_stats"
        if stats and self.served == 0:
            self.server.stats_connections += 1
            self.stats_only = True
        if not stats:
            self.server.requests += 1
            self.server.targets.append(self.target)
            event("request", target=self.target)
        self.served += 1
        if self.server.drop_reused and self.served > 1 and not stats:
            event("dropped", target=self.target)
            self.state = DEAD
            assert self.transport is not None
            self.transport.loseConnection()
            return
        if not stats:
            self.in_flight = True
            self.server.inflight += 1
            self.server.max_inflight = max(self.server.max_inflight, self.server.inflight)
        self.hasher = hashlib.sha256()
        self.body_length = 0
        te = self.header("transfer-encoding")
        cl = self.headers_named("content-length")
        if te is not None and cl:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        if len(cl) > 1:
            raise BadRequest("several Content-Length")
        self.chunked = te is not None
        if te is not None and te.lower() != "chunked":
            raise BadRequest(f"transfer coding {te!r}")
        self.chunk_left = -1  # -1: a chunk-size line comes next; -2: trailers
        self.remaining = int(cl[0]) if cl else 0
        self.expect = (self.header("expect") or "").lower() == "100-continue"
        has_body = self.chunked or self.remaining > 0
        if self.expect and has_body:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.state = BODY if has_body else WAIT
        if self.state == WAIT:
            self._dispatch()

    def _body(self) -> bool:
        """Consume body bytes; True once the body is whole (and the request dispatched)."""
        if not self.chunked:
            take = self.buf[: self.remaining]
            self.buf = self.buf[len(take) :]
            self._feed(take)
            self.remaining -= len(take)
            if self.remaining:
                return False
        else:
            while True:
                if self.chunk_left == -1:
                    end = self.buf.find(b"\r\n")
                    if end < 0:
                        return False
                    line, self.buf = self.buf[:end], self.buf[end + 2 :]
                    size = line.split(b";")[0].strip()
                    try:
                        self.chunk_left = int(size, 16)
                    except ValueError:
                        raise BadRequest(f"chunk size {line!r}") from None
                    if self.chunk_left == 0:
                        self.chunk_left = -2
                elif self.chunk_left == -2:
                    end = self.buf.find(b"\r\n")
                    if end < 0:
                        return False
                    line, self.buf = self.buf[:end], self.buf[end + 2 :]
                    if not line:
                        break
                else:
                    if len(self.buf) < self.chunk_left + 2:
                        if len(self.buf) > self.chunk_left:
                            return False
                        self._feed(self.buf)
                        self.chunk_left -= len(self.buf)
                        self.buf = b""
                        return False
                    if self.buf[self.chunk_left : self.chunk_left + 2] != b"\r\n":
                        raise BadRequest("chunk not followed by CRLF")
                    self._feed(self.buf[: self.chunk_left])
                    self.buf = self.buf[self.chunk_left + 2 :]
                    self.chunk_left = -1
        self.state = WAIT
        self._dispatch()
        return True

    def _feed(self, data: bytes) -> None:
        self.hasher.update(data)
        self.body_length += len(data)

    def header(self, name: str) -> str | None:
        found = self.headers_named(name)
        return found[-1] if found else None

    def headers_named(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    # -- answering -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        path = self.url.path
        name = self.server.name
        if path != "/_stats":
            self.server.completed += 1
        if path == "/_stats":
            self._json(self.server.stats())
        elif path in ("/echo", "/upload", "/continue"):
            self._json(
                {
                    "backend": name,
                    "method": self.method.decode("latin-1"),
                    "target": self.target,
                    "version": self.version.decode("latin-1"),
                    "headers": [[n, v] for n, v in self.headers],
                    "length": self.body_length,
                    "sha256": self.hasher.hexdigest(),
                    "expect": self.expect,
                }
            )
        elif path == "/body":
            self._send(200, [("Content-Type", "application/octet-stream")], pattern(self._n()))
        elif path == "/chunked":
            self._send_chunked(pattern(self._n()), int(self.query.get("size", "4096")))
        elif path == "/slow":
            clock: IReactorTime = reactor
            ms = int(self.query.get("ms", "1000"))
            self.pending = clock.callLater(ms / 1000, self._slow_done)
        elif path == "/drip":
            self._drip(int(self.query.get("chunks", "5")), int(self.query.get("ms", "100")))
        elif path == "/hang":
            pass
        elif path == "/truncate":
            self._truncate(self._n(), int(self.query.get("send", "10")), "chunked" in self.query)
        elif path == "/garbage":
            assert self.transport is not None
            self.transport.write(b"SPDY/9 what\r\n\x00\x01\r\n\r\n")
        elif path == "/switch":
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
            )
        elif path == "/close":
            self._send(200, [], b"closing " + name.encode() + b"\n", close=True)
        elif path == "/status":
            code = int(self.query.get("code", "200"))
            self._send(code, [], b"" if code in (204, 304) else b"status\n")
        elif path == "/ws":
            self._websocket()
        elif path == "/login":
            sid = secrets.token_hex(8)
            self._send(
                200,
                [
                    ("Content-Type", "text/plain"),
                    ("Set-Cookie", f"JSESSIONID={sid}; Path=/; HttpOnly"),
                ],
                f"backend {name} session {sid}\n".encode(),
            )
        elif path == "/redirect":
            sid = secrets.token_hex(8)
            if self.query.get("style", "path") == "query":
                location = f"/app?sid={sid}"
            else:
                location = f"/app;jsessionid={sid}"
            self._send(302, [("Location", location)], f"{sid}\n".encode())
        elif path == "/setcookie":
            headers = [("Set-Cookie", v) for v in self.query_all.get("h", [])]
            if "cc" in self.query:
                headers.append(("Cache-Control", self.query["cc"]))
            if "sts" in self.query:
                headers.append(("Strict-Transport-Security", self.query["sts"]))
            self._send(200, headers, f"backend {name}\n".encode())
        else:
            self._send(200, [("Content-Type", "text/plain")], f"backend {name}\n".encode())

    def _n(self) -> int:
        return int(self.query.get("n", "1000"))

    def _slow_done(self) -> None:
        self.pending = None
        self._send(200, [("Content-Type", "text/plain")], b"slow " + self.server.name.encode())

    def _truncate(self, n: int, send: int, chunked: bool) -> None:
        assert self.transport is not None
        body = pattern(send)
        if chunked:
            head = self._start(200, [], False) + b"Transfer-Encoding: chunked\r\n\r\n"
            self.transport.write(head + b"%x\r\n%s" % (n, body))
        else:
            head = self._start(200, [], False) + b"Content-Length: %d\r\n\r\n" % n
            self.transport.write(head + body)
        self.state = DEAD
        self.transport.loseConnection()

    def _drip(self, chunks: int, ms: int) -> None:
        assert self.transport is not None
        self.transport.write(
            self._start(200, [("Content-Type", "text/plain")], False)
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self._drip_next(chunks, 0, ms)

    def _drip_next(self, chunks: int, sent: int, ms: int) -> None:
        self.pending = None
        assert self.transport is not None
        if sent == chunks:
            self.transport.write(b"0\r\n\r\n")
            self._done()
            return
        self.transport.write(b"6\r\ndrip%d\n\r\n" % (sent % 10))
        clock: IReactorTime = reactor
        self.pending = clock.callLater(ms / 1000, self._drip_next, chunks, sent + 1, ms)

    def _json(self, value: object) -> None:
        body = json.dumps(value).encode() + b"\n"
        self._send(200, [("Content-Type", "application/json")], body)

    def _wants_close(self, close: bool) -> bool:
        if close or self.server.always_close:
            return True
        tokens = [t.strip().lower() for v in self.headers_named("connection") for t in v.split(",")]
        if self.version == b"HTTP/1.0":
            return "keep-alive" not in tokens
        return "close" in tokens

    def _start(self, code: int, headers: list[tuple[str, str]], close: bool) -> bytes:
        self.close_after = self._wants_close(close)
        lines = [b"HTTP/1.1 %d %s" % (code, REASONS.get(code, b"Whatever"))]
        lines.append(b"X-Backend: " + self.server.name.encode())
        lines += [f"{n}: {v}".encode("latin-1") for n, v in headers]
        if self.close_after:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n"

    def _send(
        self, code: int, headers: list[tuple[str, str]], body: bytes, close: bool = False
    ) -> None:
        if self.state == DEAD:
            return
        head = self._start(code, headers, close)
        if code not in (204, 304):
            head += b"Content-Length: %d\r\n" % len(body)
        out = head + b"\r\n"
        if self.method != b"HEAD" and code not in (204, 304):
            out += body
        assert self.transport is not None
        self.transport.write(out)
        self._done()

    def _send_chunked(self, body: bytes, size: int) -> None:
        head = self._start(200, [("Trailer", "X-Checksum")], False)
        out = [head + b"Transfer-Encoding: chunked\r\n\r\n"]
        if self.method != b"HEAD":
            for at in range(0, len(body), size):
                piece = body[at : at + size]
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            digest = hashlib.sha256(body).hexdigest().encode()
            out.append(b"0\r\nX-Checksum: " + digest + b"\r\n\r\n")
        assert self.transport is not None
        self.transport.write(b"".join(out))
        self._done()

    def _answered(self) -> None:
        if self.in_flight:
            self.in_flight = False
            self.server.inflight -= 1

    def _done(self) -> None:
        self._answered()
        assert self.transport is not None
        if self.close_after:
            self.state = DEAD
            self.transport.loseConnection()
            return
        self.state = HEAD
        self._idle()
        if self.buf:
            # A pipelined request arrived while this one was answered.
            reactor.callLater(0, self.dataReceived, b"")

    def _websocket(self) -> None:
        key = self.header("sec-websocket-key")
        upgrade = (self.header("upgrade") or "").lower()
        tokens = [t.strip().lower() for v in self.headers_named("connection") for t in v.split(",")]
        if key is None or upgrade != "websocket" or "upgrade" not in tokens:
            self._send(400, [], b"not a websocket handshake\n", close=True)
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nX-Backend: %s\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
        ) % (self.server.name.encode(), accept.encode())
        self.state = TUNNEL
        assert self.transport is not None
        self.transport.write(head)
        if self.buf:
            self.transport.write(self.buf)
            self.buf = b""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--fd", type=int, help="an inherited listening TCP socket")
    parser.add_argument("--port", type=int, default=0, help="else listen on 127.0.0.1:PORT")
    parser.add_argument("--idle-close", type=float, default=None)
    parser.add_argument("--always-close", action="store_true")
    parser.add_argument("--drop-reused", action="store_true")
    parser.add_argument("--log", action="store_true", help="Twisted's log on stderr")
    args = parser.parse_args(argv)
    if args.log:
        from twisted.python import log

        log.startLogging(sys.stderr, setStdout=False)
    server = Server(args.name, args.idle_close, args.always_close, args.drop_reused)
    if args.fd is not None:
        os.set_blocking(args.fd, False)  # the reactor accepts until EAGAIN
        sockets: IReactorSocket = reactor
        port = sockets.adoptStreamPort(args.fd, socket.AF_INET, server)
        # adoptStreamPort dups the descriptor: close ours so only the reactor holds it.
        os.close(args.fd)
    else:
        tcp: IReactorTCP = reactor
        port = tcp.listenTCP(args.port, server, interface="127.0.0.1")
    event("ready", port=port.getHost().port)  # type: ignore[attr-defined]
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
