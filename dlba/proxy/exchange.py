"""One request and its answer, from the moment its head is whole to the last byte out.

An ``Exchange`` is scheduled (a back end with a free slot, or a place in its pool's wait
queue), borrows a ``BackendConnection``, streams the request body up and the answer down
with backpressure both ways, and gives the connection back when the answer is whole.  It
talks to its client connection through ``ClientSide`` and is the ``UpstreamUser`` of the
back-end connection that carries it.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from dlba.http.framing import CHUNKED, LAST_CHUNK, NONE, UNTIL_CLOSE, Framing, chunk
from dlba.http.request import Request, forward_head
from dlba.http.response import ResponseHead, client_head, informational_head, upgrade_head
from dlba.http.responses import error_response
from dlba.http.rules import IDEMPOTENT
from dlba.loading import Ticket
from dlba.proxy.core import ProxyCore
from dlba.proxy.upstream import BackendConnection
from dlba.routing import Pool
from dlba.tables import BackendState

# Buffered request body beyond which the client is paused until a back end takes it.
BODY_BUFFER_LIMIT = 65536

_STS = b"strict-transport-security"

log = Logger(namespace="dlba.proxy")  # stable, wherever this module moves


class Pause:
    """Why a client connection is not being read: bits, several may hold at once.

    Plain ints, not an ``enum.IntFlag``: flag arithmetic on an IntFlag runs in Python and
    cost about 1 µs an operation (3.11), several times per request."""

    PIPELINE = 1  # a pipelined request waits for the one before it
    UPSTREAM_FULL = 2  # the back end's send buffer is full
    BUFFER = 4  # a request body waits for a back end, buffered to the limit
    TUNNEL = 8  # bytes for an upgraded protocol wait for the back end's 101


class ClientSide(Protocol):
    """What an exchange needs of the client connection it answers (the front protocol)."""

    secure: bool
    client_ip: str
    gone: bool
    client_full: bool

    def send(self, data: bytes) -> None: ...
    def pause_reading(self, why: int) -> None: ...
    def resume_reading(self, why: int) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def exchange_done(self, exchange: Exchange) -> None: ...
    def start_tunnel(self, exchange: Exchange, conn: BackendConnection) -> None: ...


class Exchange:
    """One request and its answer."""

    __slots__ = (
        "backend",
        "body",
        "body_buffered",
        "chunk_out",
        "close_after",
        "conn",
        "core",
        "finished",
        "front",
        "head_out",
        "head_request",
        "pending",
        "pool",
        "request",
        "request_done",
        "response_framing",
        "response_started",
        "retried",
        "sent_bytes",
        "slot",
        "status",
        "ticket",
        "tried",
        "tunnel_buf",
        "wants_upstream",
    )

    def __init__(self, front: ClientSide, core: ProxyCore, request: Request) -> None:
        self.front = front
        self.core = core
        self.request = request
        self.head_request = request.method == b"HEAD"
        self.body: list[bytes] = []
        self.body_buffered = 0
        self.request_done = request.body == NONE
        self.head_out = b""  # the head sent to the back end, made once the pool is known
        self.conn: BackendConnection | None = None
        self.backend: BackendState | None = None
        self.pool: Pool | None = None
        self.tried: set[int] | None = None
        self.retried = False
        self.wants_upstream = False
        self.response_started = False
        self.response_framing = NONE
        self.chunk_out = False
        self.close_after = False
        self.finished = False
        self.status = 0
        self.sent_bytes = 0
        self.tunnel_buf: list[bytes] | None = None
        self.pending = b""  # the answer's head, held to go out with the first body bytes
        self.slot: BackendState | None = None  # the back end whose concurrency slot we hold
        self.ticket: Ticket[Any] | None = None  # our place in the pool's wait queue

    @property
    def client_full(self) -> bool:
        return self.front.client_full

    # -- scheduling -----------------------------------------------------------------------

    def start(self) -> None:
        """Schedule this request: a back end with a free slot now, or a place in the queue."""
        core = self.core
        now = core.clock.seconds()
        pool = self.pool
        if pool is None:
            pool = self.pool = core.router.route(self.request)
        elif pool.retired:
            # Scheduled again (a back end refused) after a reload: over the new set.
            pool = self.pool = core.router.current(pool, self.request)
        backend, bound = pool.pick(self.request, now, self.tried)
        if backend is None:
            self.respond_error(503, retry_after=core.status.retry_after(now))
        elif backend.has_room():
            self.go(backend)
        elif not pool.admission.admit_request(len(pool.queue)):
            self.respond_error(503, retry_after=1)
        else:
            core.dispatch.wait(pool, self, backend.number if bound else None, now)

    def go(self, backend: BackendState) -> None:
        """Take a slot at ``backend`` and ask its pool for a connection."""
        assert self.pool is not None
        self.ticket = None
        self.backend = backend
        self.slot = backend
        backend.open_connections += 1
        self.wants_upstream = True
        self.core.upstream(backend, self.pool.keepalive).acquire(self)

    def release_slot(self) -> None:
        """Give back our slot or our place in the queue (idempotent)."""
        if self.ticket is not None and self.pool is not None:
            self.core.dispatch.leave(self.pool, self)
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.open_connections -= 1
            self.core.dispatch.slot_freed(slot)

    # -- the request side ---------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.request.body == CHUNKED:
            data = chunk(data)
        conn = self.conn
        if conn is not None:
            conn.write(data)
        elif not self.finished:
            self.body.append(data)
            self.body_buffered += len(data)
            if self.body_buffered > BODY_BUFFER_LIMIT:
                self.front.pause_reading(Pause.BUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.request.body == CHUNKED:
            # Trailers are dropped with the chunked coding (RFC 9112 §7.1.2 allows it).
            if self.conn is not None:
                self.conn.write(LAST_CHUNK)
            elif not self.finished:
                self.body.append(LAST_CHUNK)
        if self.conn is not None:
            self.conn.request_sent()

    # -- the back end's side (UpstreamUser) -----------------------------------------------

    def pause_client(self) -> None:
        self.front.pause_reading(Pause.UPSTREAM_FULL)

    def resume_client(self) -> None:
        self.front.resume_reading(Pause.UPSTREAM_FULL)

    def upstream_ready(self, conn: BackendConnection) -> None:
        self.wants_upstream = False
        front = self.front
        if self.finished or front.gone:
            conn.give_back()
            return
        self.conn = conn
        if not self.head_out:
            assert self.pool is not None
            close = not self.pool.keepalive
            self.head_out = forward_head(self.request, front.client_ip, front.secure, close)
        conn.send(self, self.head_out, self.core.clock.seconds())
        if self.body:
            conn.write(b"".join(self.body))
            self.body = []
            self.body_buffered = 0
            front.resume_reading(Pause.BUFFER)

    def upstream_connect_failed(self, reason: Failure) -> None:
        self.wants_upstream = False
        backend = self.backend
        assert backend is not None
        core = self.core
        now = core.clock.seconds()
        error = f"connect: {reason.getErrorMessage()}"
        backoff = core.limits.backend_failure_backoff
        backend.mark_failed(now, backoff, error)
        log.warn(
            "back end {number} ({address}) failed: {error}; marked failed for {backoff}s",
            number=backend.number,
            address=backend.address,
            error=error,
            backoff=backoff,
        )
        self.release_slot()
        if self.finished or self.front.gone:
            return
        if self.tried is None:
            self.tried = set()
        self.tried.add(backend.number)
        self.start()

    def _drop(self, conn: BackendConnection) -> None:
        """``conn`` carries the request no more (the slot is released at the end)."""
        if self.conn is conn:
            self.conn = None

    def upstream_informational(self, code: int, headers: list[tuple[bytes, bytes]]) -> None:
        # HTTP/1.0 clients do not know 1xx (RFC 9110 §15.2).
        if self.request.http11 and not self.response_started:
            self.front.send(informational_head(code, headers))

    def upstream_head(
        self, conn: BackendConnection, code: int, head: ResponseHead, framing: Framing
    ) -> None:
        front = self.front
        core = self.core
        pool = self.pool
        backend = self.backend
        assert pool is not None and backend is not None
        self.response_started = True
        self.status = code
        self.response_framing = framing
        headers = head.forwarded_headers()
        added: list[tuple[bytes, bytes]] = []
        if pool.looks_at_answers:
            now = core.clock.seconds()
            added = pool.policy.answered(self.request, backend, headers, front.secure, now)
        if core.hsts is not None and front.secure:
            if not any(n.lower() == _STS for n, _ in headers):
                added = [*added, (b"Strict-Transport-Security", core.hsts)]
        request = self.request
        if code == 101:
            if request.upgrade is None or head.upgrade is None:
                conn.reusable = False
                self._drop(conn)
                conn.abort()
                self.response_started = False
                self.respond_error(502)
                return
            front.send(upgrade_head(head.reason, headers, added, head.upgrade))
            front.start_tunnel(self, conn)
            return
        keep = (
            request.keep_alive
            and not self.close_after
            and not core.draining
            # answered before the request was whole: its rest cannot be skipped
            and self.request_done
            # the request's connection was promised to the upgrade
            and request.upgrade is None
        )
        length = head.length if framing != CHUNKED else None
        self.pending, self.chunk_out, keep = client_head(
            code,
            head.reason,
            headers,
            added,
            framing,
            length,
            head_request=self.head_request,
            http11=request.http11,
            keep_alive=keep,
        )
        if not keep:
            self.close_after = True
        # The head is held to go out in one write with the first body bytes: one TLS
        # record, one send.

    def upstream_read_done(self) -> None:
        """The back end's read is over: send a head still held back, the body may be late."""
        if self.pending:
            self.front.send(self.pending)
            self.pending = b""

    def upstream_body(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        if self.chunk_out:
            data = chunk(data)
        if self.pending:
            data = self.pending + data
            self.pending = b""
        self.front.send(data)

    def upstream_complete(self, conn: BackendConnection) -> None:
        if self.chunk_out:
            self.pending += LAST_CHUNK
        self.upstream_read_done()
        core = self.core
        backend = self.backend
        assert backend is not None
        now = core.clock.seconds()
        seconds = now - conn.sent_at
        backend.record_response(seconds)
        core.dispatch.completed(backend, seconds, now)
        self._drop(conn)
        if not self.request_done:
            conn.reusable = False
        conn.give_back()
        self.finish()

    def upstream_lost(self, conn: BackendConnection, reason: Failure) -> None:
        self._drop(conn)
        if self.finished:
            return
        backend = self.backend
        assert backend is not None
        if self.response_started:
            if self.response_framing == UNTIL_CLOSE:
                backend.record_response(self.core.clock.seconds() - conn.sent_at)
                if self.chunk_out:
                    self.pending += LAST_CHUNK
                self.upstream_read_done()
                self.finish()
            else:
                self.fail_midway(f"back end closed mid-answer: {reason.getErrorMessage()}")
            return
        request = self.request
        if (
            not conn.answered
            and not self.retried
            and request.body == NONE
            and request.method in IDEMPOTENT
            and conn.requests > 1
        ):
            # A pooled connection the back end closed as we sent: once more, on a new one.
            assert self.pool is not None
            self.retried = True
            self.wants_upstream = True
            self.core.upstream(backend, self.pool.keepalive).connect(self)
            return
        backend.note_error(f"closed without answering: {reason.getErrorMessage()}")
        self.respond_error(502)

    def upstream_timeout(self, conn: BackendConnection) -> None:
        backend = self.backend
        assert backend is not None
        backend.note_error("no answer within backend_response_timeout")
        self.core.dispatch.dropped(backend)
        self._drop(conn)
        conn.abort()
        if self.response_started:
            self.fail_midway("back end stalled mid-answer")
        else:
            self.respond_error(504)

    def upstream_bad_answer(self, conn: BackendConnection, why: str) -> None:
        backend = self.backend
        assert backend is not None
        backend.note_error(why)
        self.core.dispatch.dropped(backend)
        self._drop(conn)
        if self.response_started:
            self.fail_midway(why)
        else:
            self.respond_error(502)

    # -- the tunnel after 101 ---------------------------------------------------------------

    def tunnel_from_backend(self, data: bytes) -> None:
        self.front.send(data)

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
        close = status != 503 or not self.request.keep_alive or not self.request_done
        self.close_after = self.close_after or close
        answer = error_response(
            status,
            close=self.close_after,
            retry_after=retry_after,
            head_only=self.head_request,
            hsts=self.core.hsts if self.front.secure else None,
        )
        self.front.send(answer)
        self.sent_bytes = len(answer) - answer.index(b"\r\n\r\n") - 4
        conn = self.conn
        if conn is not None:
            self._drop(conn)
            conn.abort()
        self.finish()

    def fail_midway(self, why: str) -> None:
        """The answer broke after its head went out: only closing tells the client."""
        log.info(
            "{request} from {client}: {why}",
            request=self.request.request_line,
            client=self.front.client_ip,
            why=why,
        )
        self.finished = True
        self.close_after = True
        self.release_slot()
        self.front.abort()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.wants_upstream = False
        self.release_slot()
        self.front.exchange_done(self)

    def abandon(self) -> None:
        """The client went away."""
        self.finished = True
        self.wants_upstream = False
        conn = self.conn
        if conn is not None:
            self._drop(conn)
            conn.abort()
        self.release_slot()
