"""Connections to back ends: the HTTP/1.1 client side of the proxy and the keep-alive pool.

A ``BackendConnection`` carries one request at a time for an ``IUpstreamUser`` (the
front side's exchange) and parses the answer with httptools.  A ``BackendPool`` keeps,
per back end, the idle connections that may carry another request.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dlba.http.rules import HOP_BY_HOP, comma_tokens
from dlba.tables import BackendState
from dlba.tcp import no_delay
from dlba.timeouts import NEVER, DeadlineSweeper

if TYPE_CHECKING:
    from dlba.proxy import Exchange


# How the body of an answer is delimited.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

# Hop-by-hop, and Content-Length: the proxy sets the framing of what it forwards itself.
_HOP = HOP_BY_HOP | {b"content-length"}


class _HeadOnly(Exception):
    """Stops the parser after the head of an answer to HEAD (llhttp cannot be told)."""


class _UpstreamThrottle:
    """Registered on the back end's transport: a full send buffer pauses the client."""

    __slots__ = ("conn",)

    def __init__(self, conn: BackendConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        ex = self.conn.exchange
        if ex is not None:
            ex.front.pause_reading(ex.front.PAUSE_UPSTREAM_FULL)

    def resumeProducing(self) -> None:
        ex = self.conn.exchange
        if ex is not None:
            ex.front.resume_reading(ex.front.PAUSE_UPSTREAM_FULL)

    def stopProducing(self) -> None:
        pass


class BackendConnection(Protocol):
    # A TCP transport, or TLSMemoryBIOProtocol: both are also producers and consumers.
    transport: Any
    log = Logger()

    deadline: float = NEVER

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.exchange: Exchange | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.connected_ = False
        self.reusable = True
        self.idle_expires = NEVER
        self.tunnel = False
        self.paused = False
        self.sent_at = 0.0
        self.answered = False  # a byte of the answer arrived
        self.requests = 0
        self._reset_message()

    def _reset_message(self) -> None:
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False
        self._length: bytes | None = None
        self._conn_tokens: list[bytes] = []
        self._keepalive_hint: bytes | None = None
        self._upgrade: bytes | None = None
        self._complete = False
        self._informational = False
        self._final_seen = False

    # -- life -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        self.transport.registerProducer(_UpstreamThrottle(self), True)
        no_delay(self.transport)
        self.pool.sweeper.watch(self)
        self.pool.connected(self, self.factory.exchange)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.connected_ = False
        self.pool.sweeper.unwatch(self)
        self.pool.forget(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            if self.tunnel:
                ex.tunnel_closed_by_backend()
            else:
                ex.upstream_lost(self, reason)

    def close(self) -> None:
        self.reusable = False
        if self.connected_:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.reusable = False
        if self.connected_:
            self.transport.abortConnection()

    def deadline_passed(self, now: float) -> None:
        self.deadline = NEVER
        ex = self.exchange
        if ex is None:
            # Idle past its time in the pool: close it before the back end does.
            self.close()
        elif self.tunnel:
            ex.tunnel_idle()
        else:
            ex.upstream_timeout(self)

    # -- one request ------------------------------------------------------------------

    def send(self, exchange: Exchange, head: bytes, now: float) -> None:
        self.exchange = exchange
        self.answered = False
        self.requests += 1
        self.sent_at = now
        self.idle_expires = NEVER
        # The back end's time to answer starts once the request is whole; while the client
        # is still sending, body_timeout at the front is the clock that runs.
        self.deadline = now + self.pool.response_timeout if exchange.request_done else NEVER
        self.transport.write(head)
        if exchange.front.client_full:
            self.pause()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def request_sent(self) -> None:
        """The whole request is on its way: the back end's time to answer starts."""
        if not self.answered:
            self.deadline = self.pool.clock.seconds() + self.pool.response_timeout

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def detach(self) -> None:
        """The exchange is done with this connection: pool it or close it."""
        self.exchange = None
        self.deadline = NEVER
        self.resume()
        self.pool.release(self)

    def dataReceived(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Nothing was asked: an idle connection that talks is one we cannot trust.
            self.abort()
            return
        if self.tunnel:
            self.deadline = self.pool.clock.seconds() + ex.front.limits.idle_timeout
            ex.tunnel_from_backend(data)
            return
        self.answered = True
        # A streaming answer may take long in all; what times out is silence.
        self.deadline = self.pool.clock.seconds() + self.pool.response_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self._upgrade is None or self.exchange is None:
                self._bad_answer("unasked-for protocol switch")
                return
            self.tunnel = True
            rest = data[e.args[0] :]
            if rest:
                self.exchange.tunnel_from_backend(rest)
            return
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _HeadOnly):
                # Stopped after the head; only a head that ended this read exactly
                # leaves the connection clean for another request.
                self.parser = httptools.HttpResponseParser(self)
                if not data.endswith(b"\r\n\r\n"):
                    self.reusable = False
                self._complete = True
            elif self._complete:
                self.reusable = False  # bytes after a whole answer: do not send here again
            else:
                self._bad_answer(f"malformed answer: {e.__context__ or e}")
                return
        ex = self.exchange
        if ex is not None:
            if self._complete:
                self._complete = False
                self._reset_message()
                ex.upstream_complete(self)
            else:
                ex.flush()

    def _bad_answer(self, why: str) -> None:
        ex = self.exchange
        self.exchange = None
        self.reusable = False
        self.abort()
        if ex is not None:
            ex.upstream_bad_answer(self, why)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final_seen:
            # A second answer to one request: the back end is out of step.
            raise httptools.HttpParserError("extra data after the answer")

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in _HOP:
            if lname == b"content-length":
                self._length = value
            elif lname == b"transfer-encoding":
                self._chunked = True
            elif lname == b"connection":
                self._conn_tokens += comma_tokens(value)
            elif lname == b"keep-alive":
                self._keepalive_hint = value
            elif lname == b"upgrade":
                self._upgrade = value
            return
        if self._final_seen:
            return  # trailers of a chunked answer: dropped with the chunked coding
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        code = self.parser.get_status_code()
        if code < 200 and code != 101:
            self._informational = True
            headers = self._headers
            self._reset_message()
            self._informational = True
            ex.upstream_informational(code, headers)
            return
        self._final_seen = True
        headers = self._headers
        if self._conn_tokens:
            drop = set(self._conn_tokens) - {b"close", b"keep-alive", b"upgrade"}
            if drop:
                headers = [(n, v) for (n, v) in headers if n.lower() not in drop]
        if code == 101:
            ex.upstream_head(self, code, self._reason, headers, NO_BODY, None, self._upgrade)
            return
        head_request = ex.method == b"HEAD"
        if head_request or code in (204, 304):
            framing = NO_BODY
        elif self._chunked:
            framing = CHUNKED
        elif self._length is not None:
            framing = LENGTH
        else:
            framing = UNTIL_CLOSE
        if not self.parser.should_keep_alive() or framing == UNTIL_CLOSE:
            self.reusable = False
        elif self._keepalive_hint is not None:
            self.pool.learn_keepalive_hint(self._keepalive_hint)
        length = self._length if framing != CHUNKED else None
        ex.upstream_head(self, code, self._reason, headers, framing, length, None)
        if head_request:
            raise _HeadOnly()

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True


class _ConnectFactory(ClientFactory):
    """One connection attempt on behalf of one exchange."""

    noisy = False

    def __init__(self, pool: BackendPool, exchange: Exchange) -> None:
        self.pool = pool
        self.exchange = exchange

    def buildProtocol(self, addr: Any) -> BackendConnection:
        conn = BackendConnection(self.pool)
        conn.factory = self
        return conn

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pool.connecting -= 1
        self.exchange.upstream_connect_failed(self.pool.backend, reason)


class BackendPool:
    """The connections to one back end.  Idle ones are reused newest first, so the pool
    shrinks by itself when load falls: the oldest idle ones reach their timeout."""

    log = Logger()

    def __init__(
        self,
        backend: BackendState,
        reactor: IReactorTCP,
        clock: IReactorTime,
        sweeper: DeadlineSweeper,
        *,
        keepalive: bool,
        connect_timeout: float,
        response_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.backend = backend
        self.reactor = reactor
        self.clock = clock
        self.sweeper = sweeper
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.idle: list[BackendConnection] = []
        self.all: set[BackendConnection] = set()
        self.connecting = 0
        self.opened = 0  # connections ever made, for tests and stats
        self.reused = 0

    def acquire(self, exchange: Exchange) -> None:
        """Give ``exchange`` a connection: at once if one is idle, else when one connects."""
        idle = self.idle
        if idle:
            now = self.clock.seconds()
            while idle:
                conn = idle.pop()
                if conn.connected_ and conn.idle_expires > now:
                    self.reused += 1
                    exchange.upstream_ready(conn, fresh=False)
                    return
                conn.close()
        self.connect(exchange)

    def connect(self, exchange: Exchange) -> None:
        self.connecting += 1
        self.reactor.connectTCP(
            self.backend.host,
            self.backend.port,
            _ConnectFactory(self, exchange),
            timeout=self.connect_timeout,  # type: ignore[arg-type]
        )

    def connected(self, conn: BackendConnection, exchange: Exchange) -> None:
        self.connecting -= 1
        self.opened += 1
        self.all.add(conn)
        if exchange.wants_upstream:
            exchange.upstream_ready(conn, fresh=True)
        else:
            self.release(conn)

    def release(self, conn: BackendConnection) -> None:
        limit = self.backend.limit
        if limit > 0 and len(self.idle) >= limit:
            conn.close()  # never more connections kept than the back end may be sent at once
        elif self.keepalive and conn.reusable and conn.connected_ and not conn.tunnel:
            conn.idle_expires = self.clock.seconds() + self.idle_timeout
            conn.deadline = conn.idle_expires
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: BackendConnection) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def learn_keepalive_hint(self, value: bytes) -> None:
        """``Keep-Alive: timeout=N`` says when the back end will close an idle connection."""
        for part in value.split(b","):
            key, _, num = part.strip().partition(b"=")
            if key.strip().lower() == b"timeout":
                try:
                    seconds = float(num.strip())
                except ValueError:
                    return
                if math.isfinite(seconds):
                    # Leave a second's margin so a request never meets the back end's close.
                    self.idle_timeout = min(self.idle_timeout, max(0.0, seconds - 1.0))
                return

    def trim(self, limit: int) -> None:
        """The limit fell: close idle connections beyond it (busy ones finish first)."""
        while len(self.idle) > max(limit, 0):
            self.idle.pop(0).close()

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def abort_all(self) -> None:
        for conn in list(self.all):
            conn.abort()
