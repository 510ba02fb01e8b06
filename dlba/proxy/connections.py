"""The pool of connections to one back end: idle keep-alive connections, reused newest first."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from dlba.http.response import keepalive_timeout
from dlba.proxy.deadlines import DeadlineSweeper
from dlba.proxy.transport import connect_tcp
from dlba.proxy.upstream import BackendConnection, ConnectFactory, UpstreamUser
from dlba.tables import BackendState


class ConnectionPool:
    """The connections to one back end.  Idle ones are reused newest first, so the pool
    shrinks by itself when load falls: the oldest idle ones reach their timeout."""

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
        self.reused = 0  # requests sent on an idle connection, for tests and stats
        self._hinted_idle: float | None = None  # what the back end's Keep-Alive said
        # Its back end left the table (a reload): connections still carrying requests
        # finish, and none is kept afterwards.
        self.retired = False

    def acquire(self, user: UpstreamUser) -> None:
        """Give ``user`` a connection: at once if one is idle, else when one connects."""
        idle = self.idle
        if idle:
            now = self.clock.seconds()
            while idle:
                conn = idle.pop()
                if conn.connected_ and conn.idle_expires > now:
                    self.reused += 1
                    user.upstream_ready(conn)
                    return
                conn.close()
        self.connect(user)

    def connect(self, user: UpstreamUser) -> None:
        """A new connection for ``user``, whatever is idle."""
        connect_tcp(
            self.reactor,
            self.backend.host,
            self.backend.port,
            ConnectFactory(self, user),
            timeout=self.connect_timeout,
        )

    def connected(self, conn: BackendConnection, user: UpstreamUser) -> None:
        self.all.add(conn)
        if user.wants_upstream:
            user.upstream_ready(conn)
        else:
            self.give_back(conn)  # its request went elsewhere meanwhile: keep it for another

    def connect_failed(self, user: UpstreamUser, reason: Failure) -> None:
        user.upstream_connect_failed(reason)

    def give_back(self, conn: BackendConnection) -> None:
        """Keep ``conn`` for another request if it may carry one, else close it."""
        limit = self.backend.limit
        if self.retired or (limit > 0 and len(self.idle) >= limit):
            conn.close()  # never more connections kept than the back end may be sent at once
        elif self.keepalive and conn.reusable and conn.connected_ and not conn.tunnel:
            conn.idle_expires = self.clock.seconds() + self.idle_timeout
            conn.deadline = conn.idle_expires
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: BackendConnection) -> None:
        """``conn`` is closed."""
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def learn_keepalive_hint(self, value: bytes) -> None:
        """``Keep-Alive: timeout=N`` says when the back end will close an idle connection."""
        seconds = keepalive_timeout(value)
        if seconds is not None:
            # Leave a second's margin so a request never meets the back end's close.
            hinted = max(0.0, seconds - 1.0)
            if self._hinted_idle is not None:
                hinted = min(hinted, self._hinted_idle)
            self._hinted_idle = hinted
            self.idle_timeout = min(self.idle_timeout, hinted)

    def set_timeouts(self, connect: float, response: float, idle: float) -> None:
        """New ``[limits]`` (a reload), for the connections made and given back from now;
        what the back end said of its own idle timeout still holds."""
        self.connect_timeout = connect
        self.response_timeout = response
        self.idle_timeout = idle if self._hinted_idle is None else min(idle, self._hinted_idle)

    def retire(self) -> None:
        """The back end left the table: close the idle connections, keep none from now."""
        self.retired = True
        self.close_idle()

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
