"""The client side of the proxy: one ``FrontProtocol`` per client connection.

It parses what a client sends with httptools (strictly), feeds the head to the pure
``dlba.http.request`` functions, and makes one ``Exchange`` per request.  Exchanges on
one connection are answered in order; each is scheduled on its own, so consecutive
requests may go to different back ends.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dlba.config import LimitsSection
from dlba.http.framing import CHUNKED, NONE
from dlba.http.request import RequestHead, accept_request
from dlba.http.responses import error_response
from dlba.http.rules import RequestRejected
from dlba.proxy.core import ProxyCore
from dlba.proxy.deadlines import NEVER, body_deadline
from dlba.proxy.exchange import BODY_BUFFER_LIMIT, Exchange, Pause
from dlba.proxy.tcp import no_delay
from dlba.proxy.upstream import BackendConnection

log = Logger(namespace="dlba.proxy")  # stable, wherever this module moves


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


@implementer(IHalfCloseableProtocol)
class FrontProtocol(Protocol):
    """One client connection."""

    # A TCP transport, or TLSMemoryBIOProtocol: both are also producers and consumers.
    transport: Any

    deadline: float = NEVER

    def __init__(self, core: ProxyCore, secure: bool) -> None:
        self.core = core
        self.limits: LimitsSection = core.limits
        self.secure = secure
        self.parser: Any = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.reading: Exchange | None = None  # whose body the parser is in
        self.paused = 0  # Pause bits
        self.client_full = False
        self.gone = False
        self.broken = False
        self.tunnel: BackendConnection | None = None
        self.client_ip = ""
        self._in_head = False
        self._head_bytes = 0
        self._pending_error: tuple[int, str] | None = None
        self._body_seen = 0
        self._body_started = 0.0  # when the body being read began (paused time excluded)
        self._paused_at = 0.0
        self._head = RequestHead()

    # -- connection life -------------------------------------------------------------------

    def connectionMade(self) -> None:
        core = self.core
        core.connection_opened(self)
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
        while self.queue:
            self.queue.popleft().abandon()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.end_tunnel()
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

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def idle(self) -> bool:
        """Between requests: nothing asked, nothing being read, no tunnel."""
        return not self.queue and self.tunnel is None and not self._in_head

    def pause_reading(self, why: int) -> None:
        if not self.paused:
            self._paused_at = self.core.clock.seconds()
            if not self.gone:
                self.transport.pauseProducing()
        self.paused |= why

    def resume_reading(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused:
                # Time we did not read is not the client's: its body's rate clock waited.
                self._body_started += self.core.clock.seconds() - self._paused_at
                if not self.gone:
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
                log.info(
                    "{request} from {client}: body too slow (body_timeout, min_body_rate)",
                    request=ex.request.request_line,
                    client=self.client_ip,
                )
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
                    self.pause_reading(Pause.TUNNEL)
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
        if last is not None and last.request.upgrade is not None and not last.finished:
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
        log.info(
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
            self.pause_reading(Pause.PIPELINE)
            return
        self._write_error_and_close(status)

    def _write_error_and_close(self, status: int) -> None:
        hsts = self.core.hsts if self.secure else None
        answer = error_response(status, close=True, hsts=hsts)
        self.transport.write(answer)
        body = len(answer) - answer.index(b"\r\n\r\n") - 4
        self.core.log_access(self.client_ip, None, status, body)
        self.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.queue:
            # Pipelined behind an unanswered request: read no further until it is answered.
            self.pause_reading(Pause.PIPELINE)
        else:
            self.deadline = self.core.clock.seconds() + self.limits.header_timeout
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._head.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._head.add_header(name, value)
            return
        # A trailer: dropped with the chunked coding, but counted against the body limit.
        self._body_seen += len(name) + len(value)
        if self._body_seen > self.limits.max_body_bytes:
            raise RequestRejected(413, "chunked body over max_body_bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        limits = self.limits
        core = self.core
        parser = self.parser
        head, self._head = self._head, RequestHead()
        request = accept_request(
            head,
            parser.get_method(),
            parser.get_http_version(),
            bool(parser.should_keep_alive()),
            max_header_bytes=limits.max_header_bytes,
            max_body_bytes=limits.max_body_bytes,
            cookie_name=core.cookie_name,
        )
        now = core.clock.seconds()
        ex = Exchange(self, core, request)
        has_body = request.body != NONE
        self.reading = ex if has_body else None
        if has_body:
            self._body_started = now
            self._body_seen = 0
            self.deadline = now + limits.body_timeout
        else:
            self.deadline = NEVER
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def on_body(self, data: bytes) -> None:
        ex = self.reading
        if ex is None:
            return
        self._body_seen += len(data)
        if ex.request.body == CHUNKED and self._body_seen > self.limits.max_body_bytes:
            raise RequestRejected(413, "chunked body over max_body_bytes")
        limits = self.limits
        self.deadline = body_deadline(
            self._body_started,
            self.core.clock.seconds(),
            self._body_seen,
            limits.body_timeout,
            limits.min_body_rate,
        )
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
        core.log_access(self.client_ip, ex.request, ex.status, ex.sent_bytes)
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
        self.resume_reading(Pause.PIPELINE)
        if not self._in_head:
            self.deadline = core.clock.seconds() + self.limits.idle_timeout

    def start_tunnel(self, ex: Exchange, conn: BackendConnection) -> None:
        """After 101: bytes go both ways untouched until either side closes."""
        ex.conn = None
        ex.release_slot()  # a tunnel is no request in flight: it holds no slot
        self.queue.clear()
        self.tunnel = conn
        core = self.core
        now = core.clock.seconds()
        conn.start_tunnel(self.limits.idle_timeout, now)
        self.deadline = now + self.limits.idle_timeout
        core.log_access(self.client_ip, ex.request, 101, 0)
        if ex.tunnel_buf:
            conn.write(b"".join(ex.tunnel_buf))
        ex.tunnel_buf = None
        self.resume_reading(Pause.TUNNEL)


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
        if not core.dispatch.accepting():
            # The queue is long: serve the clients already admitted first ([0037]).
            return None
        return FrontProtocol(self.core, self.secure)
