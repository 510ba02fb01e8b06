"""The front of the proxy: client connections, one exchange per request, and their glue.

``FrontProtocol`` parses what a client sends (httptools, strictly, plus the rules of
``dlba.http.rules``) and makes one ``Exchange`` per request.  Exchanges on one connection
are answered in order; each is scheduled on its own, so consecutive requests may go to
different back ends.  An exchange borrows a ``BackendConnection`` from the back end's
``BackendPool``, streams the request body up and the answer down with backpressure both
ways, and gives the connection back when the answer is whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import httptools
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dlba.accesslog import AccessLog
from dlba.config import LimitsSection
from dlba.http.cookies import cookie_pairs, without_cookie
from dlba.http.responses import REASONS, error_response
from dlba.http.rules import (
    IDEMPOTENT,
    RequestRejected,
    check_version,
    comma_tokens,
    split_target,
    valid_host,
)
from dlba.loading import FeedbackController
from dlba.routing import Pool, Router
from dlba.tables import BackendState, BackendStatusTable
from dlba.tcp import no_delay
from dlba.timeouts import NEVER, DeadlineSweeper
from dlba.upstream import (
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    BackendConnection,
    BackendPool,
)

# Request body framing as received.
BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2

# Buffered request body beyond which the client is paused until a back end takes it.
BODY_BUFFER_LIMIT = 65536

VIA = b"Via: 1.1 dlba\r\n"

# How often the feedback controllers are asked for new limits (seconds).
CONTROL_INTERVAL = 0.25

_SPECIAL_REQUEST_HEADERS = frozenset(
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


class _ClientThrottle:
    """Registered on the client's transport: a full send buffer pauses the back end."""

    __slots__ = ("front",)

    def __init__(self, front: FrontProtocol) -> None:
        self.front = front

    def pauseProducing(self) -> None:
        self.front.client_buffer_full(True)

    def resumeProducing(self) -> None:
        self.front.client_buffer_full(False)

    def stopProducing(self) -> None:
        pass


class Exchange:
    """One request and its answer."""

    __slots__ = (
        "backend",
        "body",
        "body_buffered",
        "body_kind",
        "chunk_out",
        "close_after",
        "conn",
        "cookies",
        "finished",
        "front",
        "head_out",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "method",
        "pending",
        "pool",
        "referer",
        "request_done",
        "request_line",
        "response_framing",
        "response_started",
        "retried",
        "sent_bytes",
        "slot",
        "started",
        "status",
        "target",
        "ticket",
        "tried",
        "tunnel_buf",
        "upgrade",
        "user_agent",
        "wants_upstream",
    )

    def __init__(
        self,
        front: FrontProtocol,
        method: bytes,
        request_line: bytes,
        head_out: bytes,
        body_kind: int,
        http11: bool,
        keep_alive: bool,
        upgrade: bytes | None,
        now: float,
    ) -> None:
        self.front = front
        self.method = method
        self.request_line = request_line
        self.head_out = head_out
        self.body_kind = body_kind
        self.http11 = http11
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.started = now
        self.body: list[bytes] = []
        self.body_buffered = 0
        self.request_done = body_kind == BODY_NONE
        self.conn: BackendConnection | None = None
        self.backend: BackendState | None = None
        self.pool: Any = None
        self.tried: set[int] | None = None
        self.retried = False
        self.wants_upstream = False
        self.response_started = False
        self.response_framing = NO_BODY
        self.chunk_out = False
        self.close_after = False
        self.finished = False
        self.status = 0
        self.sent_bytes = 0
        self.referer: bytes | None = None
        self.user_agent: bytes | None = None
        self.tunnel_buf: list[bytes] | None = None
        self.pending = b""  # the answer's head, held to go out with the first body bytes
        self.slot: BackendState | None = None  # the back end whose concurrency slot we hold
        self.ticket: Any = None  # our place in the pool's wait queue
        # What rules and policies read (RequestView).
        self.target = b""
        self.host: bytes | None = None
        self.cookies: list[tuple[bytes, bytes]] = []
        self.headers: list[tuple[bytes, bytes]] = []

    # -- the request side ---------------------------------------------------------------

    def start(self) -> None:
        """Schedule this request: a back end with a free slot now, or a place in the queue."""
        core = self.front.core
        now = core.clock.seconds()
        if self.pool is None:
            self.pool = core.router.route(self)
        pool = self.pool
        backend, bound = pool.pick(self, now, self.tried)
        if backend is None:
            self.respond_error(503, retry_after=core.status.retry_after(now))
        elif backend.has_room():
            self.go(backend)
        elif not pool.admission.admit_request(len(pool.queue)):
            core.refused_full += 1
            self.respond_error(503, retry_after=1)
        else:
            sticky = backend.number if bound else None
            self.ticket = pool.queue.push(self, sticky, now + pool.queue_timeout, now)
            if sticky is not None:
                backend.queued += 1
            core.queued(pool)

    def go(self, backend: BackendState) -> None:
        """Take a slot at ``backend`` and ask its pool for a connection."""
        self.ticket = None
        self.backend = backend
        self.slot = backend
        backend.open_connections += 1
        self.wants_upstream = True
        self.front.core.upstream(backend, self.pool.keepalive).acquire(self)

    def release(self) -> None:
        """Give back our slot or our place in the queue (idempotent)."""
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            if self.pool.queue.cancel(ticket) and ticket.sticky is not None:
                bound = self.front.core.status.get(ticket.sticky)
                if bound is not None:
                    bound.queued -= 1
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.open_connections -= 1
            self.front.core.slot_freed(slot)

    def request_body(self, data: bytes) -> None:
        if self.body_kind == BODY_CHUNKED:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        conn = self.conn
        if conn is not None:
            conn.write(data)
        elif not self.finished:
            self.body.append(data)
            self.body_buffered += len(data)
            if self.body_buffered > BODY_BUFFER_LIMIT:
                self.front.pause_reading(FrontProtocol.PAUSE_BUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.body_kind == BODY_CHUNKED:
            # Trailers are dropped with the chunked coding (RFC 9112 §7.1.2 allows it).
            if self.conn is not None:
                self.conn.write(b"0\r\n\r\n")
            elif not self.finished:
                self.body.append(b"0\r\n\r\n")
        if self.conn is not None:
            self.conn.request_sent()

    # -- the back end's side --------------------------------------------------------------

    def upstream_ready(self, conn: BackendConnection, fresh: bool) -> None:
        self.wants_upstream = False
        front = self.front
        if self.finished or front.gone:
            conn.pool.release(conn)
            return
        self.conn = conn
        end = b"\r\n" if self.pool.keepalive or self.upgrade else b"Connection: close\r\n\r\n"
        conn.send(self, self.head_out + end, front.core.clock.seconds())
        if self.body:
            conn.write(b"".join(self.body))
            self.body = []
            self.body_buffered = 0
            front.resume_reading(FrontProtocol.PAUSE_BUFFER)

    def upstream_connect_failed(self, backend: BackendState, reason: Failure) -> None:
        self.wants_upstream = False
        core = self.front.core
        now = core.clock.seconds()
        error = f"connect: {reason.getErrorMessage()}"
        backend.mark_failed(now, core.limits.backend_failure_backoff, error)
        core.log.warn(
            "back end {number} ({address}) failed: {error}; marked failed for {backoff}s",
            number=backend.number,
            address=backend.address,
            error=error,
            backoff=core.limits.backend_failure_backoff,
        )
        self.release()
        if self.finished or self.front.gone:
            return
        if self.tried is None:
            self.tried = set()
        self.tried.add(backend.number)
        self.start()

    def _let_go(self, conn: BackendConnection) -> None:
        """This connection carries the request no more (the slot is released at the end)."""
        if self.conn is conn:
            self.conn = None

    def upstream_informational(self, code: int, headers: list[tuple[bytes, bytes]]) -> None:
        # HTTP/1.0 clients do not know 1xx (RFC 9110 §15.2).
        if self.http11 and not self.response_started:
            head = [b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Continue"))]
            head += [b"%s: %s\r\n" % h for h in headers]
            head.append(b"\r\n")
            self.front.transport.write(b"".join(head))

    def upstream_head(
        self,
        conn: BackendConnection,
        code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: int,
        length: bytes | None,
        upgrade: bytes | None,
    ) -> None:
        front = self.front
        self.response_started = True
        self.status = code
        self.response_framing = framing
        out = [b"HTTP/1.1 %d %s\r\n" % (code, reason or REASONS.get(code, b""))]
        out += [b"%s: %s\r\n" % h for h in headers]
        if self.pool.looks_at_answers:
            assert self.backend is not None
            added = self.pool.policy.answered(
                self, self.backend, headers, front.secure, front.core.clock.seconds()
            )
            out += [b"%s: %s\r\n" % h for h in added]
        if code == 101:
            if self.upgrade is None or upgrade is None:
                conn.reusable = False
                self._let_go(conn)
                conn.abort()
                self.response_started = False
                self.respond_error(502)
                return
            out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
            out.append(VIA)
            out.append(b"\r\n")
            front.transport.write(b"".join(out))
            front.start_tunnel(self, conn)
            return
        keep = self.keep_alive and not self.close_after and not front.core.draining
        if framing == LENGTH:
            assert length is not None
            out.append(b"Content-Length: %s\r\n" % length)
        elif framing == NO_BODY:
            if length is not None and (self.method == b"HEAD" or code == 304):
                out.append(b"Content-Length: %s\r\n" % length)
        elif self.http11:
            self.chunk_out = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep = False  # an HTTP/1.0 client learns where the body ends only by the close
        if not self.request_done:
            keep = False  # answered before the request was whole: its rest cannot be skipped
        if self.upgrade is not None:
            keep = False  # the request's connection was promised to the upgrade
        out.append(VIA)
        if not keep:
            out.append(b"Connection: close\r\n")
            self.close_after = True
        elif not self.http11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        # One write for head and body where they arrive together: one TLS record, one send.
        self.pending = b"".join(out)

    def flush(self) -> None:
        """Send a head still held back: the back end's read is over, the body may be late."""
        if self.pending:
            self.front.transport.write(self.pending)
            self.pending = b""

    def upstream_body(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        if self.chunk_out:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.pending:
            data = self.pending + data
            self.pending = b""
        self.front.transport.write(data)

    def upstream_complete(self, conn: BackendConnection) -> None:
        if self.chunk_out:
            self.pending += b"0\r\n\r\n"
        self.flush()
        core = self.front.core
        backend = self.backend
        assert backend is not None
        now = core.clock.seconds()
        backend.record_response(now - conn.sent_at)
        controller = core.controllers.get(backend.number)
        if controller is not None:
            controller.on_complete(now - conn.sent_at, now, backend.open_connections)
        self._let_go(conn)
        if not self.request_done:
            conn.reusable = False
        conn.detach()
        self.finish()

    def upstream_lost(self, conn: BackendConnection, reason: Failure) -> None:
        self._let_go(conn)
        if self.finished:
            return
        if self.response_started:
            if self.response_framing == UNTIL_CLOSE:
                assert self.backend is not None
                self.backend.record_response(self.front.core.clock.seconds() - conn.sent_at)
                if self.chunk_out:
                    self.pending += b"0\r\n\r\n"
                self.flush()
                self.finish()
            else:
                self.fail_midway(f"back end closed mid-answer: {reason.getErrorMessage()}")
            return
        assert self.backend is not None
        if (
            not conn.answered
            and not self.retried
            and self.body_kind == BODY_NONE
            and self.method in IDEMPOTENT
            and conn.requests > 1
        ):
            # A pooled connection the back end closed as we sent: once more, on a new one.
            self.retried = True
            self.wants_upstream = True
            self.front.core.upstream(self.backend, self.pool.keepalive).connect(self)
            return
        self.backend.note_error(f"closed without answering: {reason.getErrorMessage()}")
        self.respond_error(502)

    def upstream_timeout(self, conn: BackendConnection) -> None:
        assert self.backend is not None
        self.backend.note_error("no answer within backend_response_timeout")
        self.front.core.dropped(self.backend)
        self._let_go(conn)
        conn.abort()
        if self.response_started:
            self.fail_midway("back end stalled mid-answer")
        else:
            self.respond_error(504)

    def upstream_bad_answer(self, conn: BackendConnection, why: str) -> None:
        assert self.backend is not None
        self.backend.note_error(why)
        self.front.core.dropped(self.backend)
        self._let_go(conn)
        if self.response_started:
            self.fail_midway(why)
        else:
            self.respond_error(502)

    # -- the tunnel after 101 ---------------------------------------------------------------

    def tunnel_from_backend(self, data: bytes) -> None:
        self.front.transport.write(data)

    def tunnel_closed_by_backend(self) -> None:
        self.finished = True
        self.front.close()

    def tunnel_idle(self) -> None:
        self.front.abort()

    # -- endings -----------------------------------------------------------------------

    def respond_error(self, status: int, retry_after: int | None = None) -> None:
        """Answer with our own error; the connection closes after it unless it is 503."""
        if self.finished:
            return
        self.status = status
        close = status != 503 or not self.keep_alive or not self.request_done
        self.close_after = self.close_after or close
        answer = error_response(
            status,
            close=self.close_after,
            retry_after=retry_after,
            head_only=self.method == b"HEAD",
        )
        self.front.transport.write(answer)
        self.sent_bytes = len(answer) - answer.index(b"\r\n\r\n") - 4
        if self.conn is not None:
            conn = self.conn
            self._let_go(conn)
            conn.abort()
        self.finish()

    def fail_midway(self, why: str) -> None:
        """The answer broke after its head went out: only closing tells the client."""
        self.front.core.log.info(
            "{request} from {client}: {why}",
            request=self.request_line,
            client=self.front.client_ip,
            why=why,
        )
        self.finished = True
        self.close_after = True
        self.release()
        self.front.abort()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.wants_upstream = False
        self.release()
        self.front.exchange_done(self)

    def abandon(self) -> None:
        """The client went away."""
        self.finished = True
        self.wants_upstream = False
        conn = self.conn
        if conn is not None:
            self._let_go(conn)
            conn.abort()
        self.release()


@implementer(IHalfCloseableProtocol)
class FrontProtocol(Protocol):
    """One client connection."""

    # A TCP transport, or TLSMemoryBIOProtocol: both are also producers and consumers.
    transport: Any

    PAUSE_PIPELINE = 1
    PAUSE_UPSTREAM_FULL = 2
    PAUSE_BUFFER = 4
    PAUSE_TUNNEL = 8

    deadline: float = NEVER

    def __init__(self, core: ProxyCore, secure: bool) -> None:
        self.core = core
        self.limits: LimitsSection = core.limits
        self.secure = secure
        self.parser: Any = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.reading: Exchange | None = None  # whose body the parser is in
        self.paused = 0
        self.client_full = False
        self.gone = False
        self.broken = False
        self.tunnel: BackendConnection | None = None
        self.client_ip = ""
        self._in_head = False
        self._head_bytes = 0
        self._pending_error: tuple[int, str] | None = None
        self._body_seen = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._host: bytes | None = None
        self._hosts = 0
        self._length: bytes | None = None
        self._te: bytes | None = None
        self._conn_tokens: list[bytes] = []
        self._upgrade: bytes | None = None
        self._expect: bytes | None = None
        self._xff: bytes | None = None
        self._ua: bytes | None = None
        self._referer: bytes | None = None
        self._cookie_headers: list[bytes] = []

    # -- connection life -------------------------------------------------------------------

    def connectionMade(self) -> None:
        core = self.core
        core.connections.add(self)
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "")
        self.transport.registerProducer(_ClientThrottle(self), True)
        no_delay(self.transport)
        self.deadline = core.clock.seconds() + self.limits.header_timeout
        core.sweeper.watch(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.gone = True
        core = self.core
        core.sweeper.unwatch(self)
        core.connections.discard(self)
        while self.queue:
            self.queue.popleft().abandon()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.exchange = None
            tunnel.close()
        core.connection_closed(self)

    def readConnectionLost(self) -> None:
        """The client sent FIN after its requests (``shutdown(SHUT_WR)``): answer, then close."""
        self.broken = True  # nothing more will be read
        if self._in_head or self.reading is not None:
            self.abort()  # the FIN cut a request short: there is nothing whole to answer
            return
        if self.queue:
            self.queue[-1].close_after = True  # the earlier ones are answered first, in order
        elif self.tunnel is None:
            self.close()

    def writeConnectionLost(self) -> None:
        self.abort()

    def abort(self) -> None:
        self.broken = True
        if not self.gone:
            self.transport.abortConnection()

    def close(self) -> None:
        """Close once what is written has gone out."""
        self.broken = True
        if not self.gone:
            # A TLS transport will not shut down while a producer is registered.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pause_reading(self, why: int) -> None:
        if not self.paused and not self.gone:
            self.transport.pauseProducing()
        self.paused |= why

    def resume_reading(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.gone:
                self.transport.resumeProducing()

    def client_buffer_full(self, full: bool) -> None:
        self.client_full = full
        conn = self.queue[0].conn if self.queue else self.tunnel
        if conn is not None:
            if full:
                conn.pause()
            else:
                conn.resume()
        if full:
            # A client that stops reading for idle_timeout is gone for our purposes.
            self.deadline = self.core.clock.seconds() + self.limits.idle_timeout
        elif not self._in_head and self.queue:
            self.deadline = NEVER

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        if self.client_full or self.tunnel is not None:
            self.abort()
            return
        if self._in_head:
            self.reject(408, "request head not received within header_timeout")
            return
        ex = self.reading
        if ex is not None:
            if ex.response_started:
                self.abort()
            else:
                ex.close_after = True
                ex.respond_error(408)
            return
        # Idle between requests, or silent after connecting.
        self.close()

    # -- bytes in ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.broken:
            return
        tunnel = self.tunnel
        if tunnel is not None:
            self.deadline = self.core.clock.seconds() + self.limits.idle_timeout
            tunnel.write(data)
            return
        if self.queue:
            waiting = self.queue[-1].tunnel_buf
            if waiting is not None:
                # Bytes for the upgraded protocol before the back end agreed: hold a little.
                waiting.append(data)
                if sum(map(len, waiting)) > BODY_BUFFER_LIMIT:
                    self.pause_reading(self.PAUSE_TUNNEL)
                return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0] :])
            return
        except httptools.HttpParserError as e:
            rejected = e.__context__
            if isinstance(rejected, RequestRejected):
                self.reject(rejected.status, rejected.reason)
            elif isinstance(e, httptools.HttpParserInvalidMethodError):
                self.reject(501, "unknown method")
            elif self.broken:
                pass
            else:
                self.reject(400, f"malformed request: {e}")
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self.reject(431, "request head larger than max_header_bytes")

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stops after a request asking to switch protocols."""
        last = self.queue[-1] if self.queue else None
        if last is not None and last.upgrade is not None and not last.finished:
            last.tunnel_buf = [rest] if rest else []
            return
        # An upgrade we declined: the request goes on as plain HTTP on a fresh parser.
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.dataReceived(rest)

    def reject(self, status: int, why: str) -> None:
        """Refuse what the client sent; framing is in doubt, so the connection ends."""
        if self.broken:
            return
        self._in_head = False
        self.core.rejected += 1
        self.core.log.info(
            "refused request from {client}: {status} {why}",
            client=self.client_ip,
            status=status,
            why=why,
        )
        ex, self.reading = self.reading, None
        if ex is not None:
            if ex.response_started:
                self.abort()  # the answer is under way: nothing but the close can tell
                return
            if self.queue and self.queue[0] is ex:
                ex.close_after = True
                ex.respond_error(status)
                self.broken = True
                return
            self.queue.remove(ex)
            ex.abandon()
        self.broken = True
        if self.queue:
            # Answer the requests before it first, in order.
            self._pending_error = (status, why)
            self.pause_reading(self.PAUSE_PIPELINE)
            return
        self._write_error_and_close(status)

    def _write_error_and_close(self, status: int) -> None:
        answer = error_response(status, close=True)
        self.transport.write(answer)
        body = len(answer) - answer.index(b"\r\n\r\n") - 4
        self.core.log_access(self.client_ip, b"-", status, body, None, None)
        self.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.queue:
            # Pipelined behind an unanswered request: read no further until it is answered.
            self.pause_reading(self.PAUSE_PIPELINE)
        else:
            self.deadline = self.core.clock.seconds() + self.limits.header_timeout
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if not self._in_head:
            return  # a trailer: dropped with the chunked coding
        lname = name.lower()
        if lname in _SPECIAL_REQUEST_HEADERS:
            if lname == b"host":
                self._host = value
                self._hosts += 1
            elif lname == b"content-length":
                self._length = value
            elif lname == b"transfer-encoding":
                self._te = value
            elif lname == b"connection":
                self._conn_tokens += comma_tokens(value)
            elif lname == b"upgrade":
                self._upgrade = value
            elif lname == b"expect":
                self._expect = value
            elif lname == b"x-forwarded-for":
                self._xff = value if self._xff is None else self._xff + b", " + value
            elif lname == b"user-agent":
                self._ua = value
                self._headers.append((name, value))
            elif lname == b"referer":
                self._referer = value
                self._headers.append((name, value))
            elif lname == b"cookie":
                self._cookie_headers.append(value)
            # keep-alive, proxy-connection, te, trailer, x-forwarded-proto: ours to set
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        limits = self.limits
        if self._header_bytes > limits.max_header_bytes:
            raise RequestRejected(431, "request head larger than max_header_bytes")
        parser = self.parser
        version = parser.get_http_version()
        major, _, minor = version.partition(".")
        check_version(int(major), int(minor or 0))
        http11 = minor == "1"
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise RequestRejected(501, "CONNECT is never tunnelled")
        target, authority = split_target(method, self._url)
        if self._hosts > 1:
            raise RequestRejected(400, "more than one Host header")
        host = self._host
        if host is None:
            if http11:
                raise RequestRejected(400, "HTTP/1.1 request without Host")
        elif not valid_host(host):
            raise RequestRejected(400, "invalid Host header")
        if authority is not None:
            host = authority
        body_kind = BODY_NONE
        framing = b""
        if self._te is not None:
            if not http11:
                raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
            if self._te.strip().lower() != b"chunked":
                raise RequestRejected(501, "transfer coding other than chunked")
            body_kind = BODY_CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self._length is not None:
            length = int(self._length)
            if length > limits.max_body_bytes:
                raise RequestRejected(413, "Content-Length over max_body_bytes")
            if length:
                body_kind = BODY_LENGTH
                framing = b"Content-Length: %d\r\n" % length
            elif method in (b"POST", b"PUT", b"PATCH"):
                framing = b"Content-Length: 0\r\n"
        if self._expect is not None and http11:
            if self._expect.strip().lower() != b"100-continue":
                raise RequestRejected(417, "unknown expectation")
            if body_kind != BODY_NONE:
                framing += b"Expect: 100-continue\r\n"
        keep_alive = bool(parser.should_keep_alive())
        upgrade: bytes | None = None
        if (
            self._upgrade is not None
            and http11
            and b"upgrade" in self._conn_tokens
            and b"websocket" in comma_tokens(self._upgrade)
            and method == b"GET"
        ):
            upgrade = self._upgrade

        headers = self._headers
        extra = [t for t in self._conn_tokens if t not in (b"close", b"keep-alive", b"upgrade")]
        if extra:
            drop = set(extra)
            headers = [(n, v) for (n, v) in headers if n.lower() not in drop]
        client = self.client_ip.encode("ascii")
        xff = client if self._xff is None else self._xff + b", " + client
        proto = b"https" if self.secure else b"http"
        fwd_for = b'"[%s]"' % client if b":" in client else client
        # HTTP/1.1 to the back end requires Host, even if an HTTP/1.0 client sent none.
        out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host or b"")]
        out += [b"%s: %s\r\n" % h for h in headers]
        cookies: list[tuple[bytes, bytes]] = []
        if self._cookie_headers:
            cookies, cookie_line = self.core.client_cookies(self._cookie_headers)
            if cookie_line is not None:
                out.append(b"Cookie: %s\r\n" % cookie_line)
        out.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (xff, proto))
        if host:
            out.append(b'Forwarded: for=%s;proto=%s;host="%s"\r\n' % (fwd_for, proto, host))
        else:
            out.append(b"Forwarded: for=%s;proto=%s\r\n" % (fwd_for, proto))
        out.append(VIA)
        out.append(framing)
        if upgrade is not None:
            out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
        # The blank line is added when the pool is known: it may want Connection: close.

        request_line = b"%s %s HTTP/%s" % (method, self._url, version.encode("ascii"))
        now = self.core.clock.seconds()
        ex = Exchange(
            self,
            method,
            request_line,
            b"".join(out),
            body_kind,
            http11,
            keep_alive,
            upgrade,
            now,
        )
        ex.referer = self._referer
        ex.user_agent = self._ua
        ex.target = target
        ex.host = host
        ex.cookies = cookies
        ex.headers = headers
        self._reset_head()
        self.reading = ex if body_kind != BODY_NONE else None
        self.deadline = now + limits.body_timeout if body_kind != BODY_NONE else NEVER
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def on_body(self, data: bytes) -> None:
        ex = self.reading
        if ex is None:
            return
        self._body_seen += len(data)
        if ex.body_kind == BODY_CHUNKED and self._body_seen > self.limits.max_body_bytes:
            raise RequestRejected(413, "chunked body over max_body_bytes")
        self.deadline = self.core.clock.seconds() + self.limits.body_timeout
        ex.request_body(data)

    def on_message_complete(self) -> None:
        ex = self.reading
        self.reading = None
        self._body_seen = 0
        if ex is not None:
            ex.request_complete()
            if self.queue and self.queue[0] is ex and not ex.response_started:
                self.deadline = NEVER

    # -- exchanges -----------------------------------------------------------------------------

    def exchange_done(self, ex: Exchange) -> None:
        core = self.core
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        elif ex in self.queue:
            self.queue.remove(ex)
        if self.reading is ex:
            self.reading = None
        core.log_access(
            self.client_ip, ex.request_line, ex.status, ex.sent_bytes, ex.referer, ex.user_agent
        )
        if self.gone:
            return
        if ex.close_after or (core.draining and not self.queue):
            self.close()
            return
        if self.queue:
            self.queue[0].start()
            return
        if self._pending_error is not None:
            status, _ = self._pending_error
            self._write_error_and_close(status)
            return
        self.resume_reading(self.PAUSE_PIPELINE)
        if not self._in_head:
            self.deadline = core.clock.seconds() + self.limits.idle_timeout

    def start_tunnel(self, ex: Exchange, conn: BackendConnection) -> None:
        """After 101: bytes go both ways untouched until either side closes."""
        ex._let_go(conn)
        ex.release()  # a tunnel is no request in flight: it holds no slot
        self.queue.clear()
        self.tunnel = conn
        conn.tunnel = True
        conn.deadline = self.deadline = self.core.clock.seconds() + self.limits.idle_timeout
        core = self.core
        core.log_access(self.client_ip, ex.request_line, 101, 0, ex.referer, ex.user_agent)
        if ex.tunnel_buf:
            conn.write(b"".join(ex.tunnel_buf))
        ex.tunnel_buf = None
        self.resume_reading(self.PAUSE_TUNNEL)


class ProxyCore:
    """What the listeners of one node share: routing, back-end pools, timers, the log."""

    log = Logger(namespace="dlba.proxy")

    def __init__(
        self,
        router: Router,
        status: BackendStatusTable,
        limits: LimitsSection,
        reactor: IReactorTCP,
        clock: IReactorTime,
        access_log: AccessLog | None = None,
        cookie_name: str = "SpServer",
    ) -> None:
        self.router = router
        self.cookie_name = cookie_name.encode("ascii")
        self.status = status
        self.limits = limits
        self.reactor = reactor
        self.clock = clock
        self.access_log = access_log
        self.sweeper = DeadlineSweeper(clock)
        self.connections: set[FrontProtocol] = set()
        self.upstreams: dict[tuple[int, bool], BackendPool] = {}
        self.draining = False
        self.rejected = 0
        self.refused_full = 0  # requests refused because their pool's queue was full
        self.refused_connections = 0
        self.controllers: dict[int, FeedbackController] = {}
        self._queue_watches = {id(p): _QueueWatch(self, p) for p in router.pools}
        self._control_call: Any = None
        self._all_closed: list[Any] = []
        self._keepalive_any = any(p.keepalive for p in router.pools)

    def upstream(self, backend: BackendState, keepalive: bool) -> BackendPool:
        key = (backend.number, keepalive)
        pool = self.upstreams.get(key)
        if pool is None:
            limits = self.limits
            pool = self.upstreams[key] = BackendPool(
                backend,
                self.reactor,
                self.clock,
                self.sweeper,
                keepalive=keepalive,
                connect_timeout=limits.backend_connect_timeout,
                response_timeout=limits.backend_response_timeout,
                idle_timeout=limits.backend_idle_timeout,
            )
        return pool

    def client_cookies(
        self, headers: list[bytes]
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """The client's cookies, and the one Cookie header to forward: ours is taken out,
        several headers (HTTP/2 style) become one (RFC 9113 §8.2.3)."""
        pairs = cookie_pairs(headers)
        name = self.cookie_name
        if len(headers) == 1 and name not in headers[0]:
            return pairs, headers[0]
        return pairs, without_cookie(pairs, name)

    def log_access(
        self,
        client: str,
        request_line: bytes,
        status: int,
        sent: int,
        referer: bytes | None,
        user_agent: bytes | None,
    ) -> None:
        if self.access_log is not None:
            self.access_log.log(
                self.clock.seconds(), client, request_line, status, sent, referer, user_agent
            )

    # -- controlled loading ---------------------------------------------------------------

    def slot_freed(self, backend: BackendState) -> None:
        """Hand free slots at ``backend`` to the oldest requests that may use them."""
        now = self.clock.seconds()
        number = backend.number

        def usable(bound: int | None) -> bool:
            return bound == number if bound is not None else backend.accepts_new(now)

        for pool in self.router.pools_with(number):
            while backend.has_room() and len(pool.queue):
                ex = pool.queue.pop_any(usable)
                if ex is None:
                    break
                ticket, ex.ticket = ex.ticket, None
                if ticket is not None and ticket.sticky is not None:
                    backend.queued -= 1
                ex.go(backend)

    def queued(self, pool: Pool) -> None:
        """A request joined ``pool``'s queue: keep its deadline watched."""
        watch = self._queue_watches[id(pool)]
        watch.deadline = pool.queue.next_deadline()
        self.sweeper.watch(watch)

    def accepting(self) -> bool:
        """Whether new client connections are welcome (no pool's queue stays too long)."""
        return all(p.admission.accept_connections(len(p.queue)) for p in self.router.pools)

    def dropped(self, backend: BackendState) -> None:
        """A request failed at the back end: a bad sample for its controller."""
        controller = self.controllers.get(backend.number)
        if controller is not None:
            controller.on_dropped(self.clock.seconds(), backend.open_connections)

    def control(self, number: int, controller: FeedbackController) -> None:
        self.controllers[number] = controller

    def _steer(self) -> None:
        """Apply the feedback controllers' limits."""
        now = self.clock.seconds()
        for number, controller in self.controllers.items():
            backend = self.status.get(number)
            if backend is None:
                continue
            old = backend.limit
            backend.limit = controller.tick(now)
            backend.metric = controller.metric or 0.0
            if backend.limit > old:
                self.slot_freed(backend)
            elif backend.limit < old:
                for key, pool in self.upstreams.items():
                    if key[0] == number:
                        pool.trim(backend.limit)
        self._control_call = self.clock.callLater(CONTROL_INTERVAL, self._steer)

    def start(self) -> None:
        self.sweeper.start()
        if self.controllers:
            self._control_call = self.clock.callLater(CONTROL_INTERVAL, self._steer)

    def stop(self) -> None:
        self.sweeper.stop()
        if self._control_call is not None and self._control_call.active():
            self._control_call.cancel()
        for pool in self.upstreams.values():
            pool.close_idle()
        if self.access_log is not None:
            self.access_log.flush()

    def drain(self) -> None:
        """Stop taking requests: close idle clients now, the rest after their answer."""
        self.draining = True
        for front in list(self.connections):
            if not front.queue and front.tunnel is None and not front._in_head:
                front.close()
        for pool in self.upstreams.values():
            pool.close_idle()

    def connection_closed(self, front: FrontProtocol) -> None:
        if not self.connections and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def when_all_closed(self) -> Any:
        from twisted.internet.defer import Deferred, succeed

        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)
        return d

    def abort_all(self) -> None:
        for front in list(self.connections):
            front.abort()
        for pool in self.upstreams.values():
            pool.abort_all()


class _QueueWatch:
    """Puts a pool's oldest queue deadline on the sweeper: expired requests get 503."""

    def __init__(self, core: ProxyCore, pool: Pool) -> None:
        self.core = core
        self.pool = pool
        self.deadline = NEVER

    def deadline_passed(self, now: float) -> None:
        queue = self.pool.queue
        for ex in queue.expire(now):
            ticket, ex.ticket = ex.ticket, None
            if ticket is not None and ticket.sticky is not None:
                bound = self.core.status.get(ticket.sticky)
                if bound is not None:
                    bound.queued -= 1
            self.pool.expired += 1
            ex.respond_error(503, retry_after=1)
        self.deadline = queue.next_deadline()
        if not len(queue):
            self.core.sweeper.unwatch(self)


class ProxyFactory(Factory):
    """One per listener; ``secure`` says whether it sits behind TLS."""

    noisy = False

    def __init__(self, core: ProxyCore, secure: bool, max_connections: int) -> None:
        self.core = core
        self.secure = secure
        self.max_connections = max_connections

    def buildProtocol(self, addr: Any) -> FrontProtocol | None:  # type: ignore[override]
        core = self.core
        if len(core.connections) >= self.max_connections or core.draining:
            return None  # refused cheaply: the connection is closed at once
        if not core.accepting():
            # The queue is long: serve the clients already admitted first ([0037]).
            core.refused_connections += 1
            return None
        return FrontProtocol(self.core, self.secure)


def backend_states(pools: Sequence[Any]) -> BackendStatusTable:
    table = BackendStatusTable()
    for pool in pools:
        for b in pool.backends:
            table.add(
                BackendState(b.number, b.host, b.port, b.weight, b.enabled, pool.max_concurrent)
            )
    return table
