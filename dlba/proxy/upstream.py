"""A connection to a back end: the HTTP/1.1 client side of the proxy.

A ``BackendConnection`` carries one request at a time for an ``UpstreamUser`` (the
exchange on the front side) and parses the answer with httptools, feeding a pure
``ResponseHead``.  It knows its user only through that small interface.
"""

from __future__ import annotations

from typing import Any, Protocol

import httptools
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure

from dlba.http.framing import UNTIL_CLOSE, Framing
from dlba.http.response import ResponseHead, answer_framing
from dlba.proxy.deadlines import NEVER, DeadlineSweeper
from dlba.proxy.tcp import no_delay


class UpstreamUser(Protocol):
    """What a back-end connection needs of the request it carries (the exchange)."""

    head_request: bool  # the request is HEAD: the answer has no body whatever it says
    request_done: bool  # the whole request has been handed over
    wants_upstream: bool  # still waiting for a connection

    @property
    def client_full(self) -> bool: ...  # the client's send buffer is full: read no more

    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...
    def upstream_ready(self, conn: BackendConnection) -> None: ...
    def upstream_connect_failed(self, reason: Failure) -> None: ...
    def upstream_informational(self, code: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def upstream_head(
        self, conn: BackendConnection, code: int, head: ResponseHead, framing: Framing
    ) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_read_done(self) -> None: ...
    def upstream_complete(self, conn: BackendConnection) -> None: ...
    def upstream_lost(self, conn: BackendConnection, reason: Failure) -> None: ...
    def upstream_timeout(self, conn: BackendConnection) -> None: ...
    def upstream_bad_answer(self, conn: BackendConnection, why: str) -> None: ...
    def tunnel_from_backend(self, data: bytes) -> None: ...
    def tunnel_closed_by_backend(self) -> None: ...
    def tunnel_idle(self) -> None: ...


class ConnectionOwner(Protocol):
    """What a back-end connection needs of the pool it belongs to."""

    clock: IReactorTime
    sweeper: DeadlineSweeper
    response_timeout: float

    def connected(self, conn: BackendConnection, user: UpstreamUser) -> None: ...
    def connect_failed(self, user: UpstreamUser, reason: Failure) -> None: ...
    def give_back(self, conn: BackendConnection) -> None: ...
    def forget(self, conn: BackendConnection) -> None: ...
    def learn_keepalive_hint(self, value: bytes) -> None: ...


class _HeadOnly(Exception):
    """Stops the parser after the head of an answer to HEAD (llhttp cannot be told)."""


class _UpstreamThrottle:
    """Registered on the back end's transport: a full send buffer pauses the client."""

    __slots__ = ("conn",)

    def __init__(self, conn: BackendConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        user = self.conn.user
        if user is not None:
            user.pause_client()

    def resumeProducing(self) -> None:
        user = self.conn.user
        if user is not None:
            user.resume_client()

    def stopProducing(self) -> None:
        pass


class BackendConnection(TwistedProtocol):
    # A TCP transport, or TLSMemoryBIOProtocol: both are also producers and consumers.
    transport: Any

    deadline: float = NEVER

    def __init__(self, pool: ConnectionOwner, user: UpstreamUser) -> None:
        self.pool = pool
        self.user: UpstreamUser | None = None
        self._connecting_for: UpstreamUser | None = user
        self.parser: Any = httptools.HttpResponseParser(self)
        self.connected_ = False
        self.reusable = True
        self.idle_expires = NEVER
        self.tunnel = False
        self.tunnel_timeout = 0.0
        self.paused = False
        self.sent_at = 0.0
        self.answered = False  # a byte of the answer arrived
        self.requests = 0
        self._head = ResponseHead()
        self._complete = False
        self._informational = False

    # -- life -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        self.transport.registerProducer(_UpstreamThrottle(self), True)
        no_delay(self.transport)
        self.pool.sweeper.watch(self)
        user, self._connecting_for = self._connecting_for, None
        assert user is not None
        self.pool.connected(self, user)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.connected_ = False
        self.pool.sweeper.unwatch(self)
        self.pool.forget(self)
        user = self.user
        if user is not None:
            self.user = None
            if self.tunnel:
                user.tunnel_closed_by_backend()
            else:
                user.upstream_lost(self, reason)

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
        user = self.user
        if user is None:
            # Idle past its time in the pool: close it before the back end does.
            self.close()
        elif self.tunnel:
            user.tunnel_idle()
        else:
            user.upstream_timeout(self)

    # -- one request ------------------------------------------------------------------

    def send(self, user: UpstreamUser, head: bytes, now: float) -> None:
        self.user = user
        self.answered = False
        self.requests += 1
        self.sent_at = now
        self.idle_expires = NEVER
        # The back end's time to answer starts once the request is whole; while the client
        # is still sending, the front's body deadline is the clock that runs.
        self.deadline = now + self.pool.response_timeout if user.request_done else NEVER
        self.transport.write(head)
        if user.client_full:
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

    def end_tunnel(self) -> None:
        """The client side of the tunnel is gone: close, telling nobody."""
        self.user = None
        self.close()

    def start_tunnel(self, idle_timeout: float, now: float) -> None:
        """After 101: bytes both ways, untouched, until either side closes or is silent."""
        self.tunnel = True
        self.tunnel_timeout = idle_timeout
        self.deadline = now + idle_timeout

    def give_back(self) -> None:
        """The answer is whole and its user is done: pool this connection or close it."""
        self.user = None
        self.deadline = NEVER
        self.resume()
        self.pool.give_back(self)

    def dataReceived(self, data: bytes) -> None:
        user = self.user
        if user is None:
            # Nothing was asked: an idle connection that talks is one we cannot trust.
            self.abort()
            return
        if self.tunnel:
            self.deadline = self.pool.clock.seconds() + self.tunnel_timeout
            user.tunnel_from_backend(data)
            return
        self.answered = True
        # A streaming answer may take long in all; what times out is silence.
        self.deadline = self.pool.clock.seconds() + self.pool.response_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self._head.upgrade is None or self.user is None:
                self._bad_answer("unasked-for protocol switch")
                return
            self.tunnel = True
            rest = data[e.args[0] :]
            if rest:
                self.user.tunnel_from_backend(rest)
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
        user = self.user
        if user is not None:
            if self._complete:
                self._complete = False
                self._head = ResponseHead()
                user.upstream_complete(self)
            else:
                user.upstream_read_done()

    def _bad_answer(self, why: str) -> None:
        user = self.user
        self.user = None
        self.reusable = False
        self.abort()
        if user is not None:
            user.upstream_bad_answer(self, why)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head.final:
            # A second answer to one request: the back end is out of step.
            raise httptools.HttpParserError("extra data after the answer")

    def on_status(self, reason: bytes) -> None:
        self._head.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.add_header(name, value)

    def on_headers_complete(self) -> None:
        user = self.user
        assert user is not None
        code = self.parser.get_status_code()
        head = self._head
        if code < 200 and code != 101:
            self._informational = True
            self._head = ResponseHead()
            user.upstream_informational(code, head.headers)
            return
        head.final = True
        framing = answer_framing(head, code, user.head_request)
        if code != 101:
            if not self.parser.should_keep_alive() or framing == UNTIL_CLOSE:
                self.reusable = False
            elif head.keepalive_hint is not None:
                self.pool.learn_keepalive_hint(head.keepalive_hint)
        user.upstream_head(self, code, head, framing)
        if user.head_request and code != 101:
            raise _HeadOnly()

    def on_body(self, data: bytes) -> None:
        user = self.user
        if user is not None:
            user.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True


class ConnectFactory(ClientFactory):
    """One connection attempt on behalf of one user."""

    noisy = False

    def __init__(self, pool: ConnectionOwner, user: UpstreamUser) -> None:
        self.pool = pool
        self.user = user

    def buildProtocol(self, addr: Any) -> BackendConnection:
        conn = BackendConnection(self.pool, self.user)
        conn.factory = self
        return conn

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pool.connect_failed(self.user, reason)
