"""What the listeners of one node share: routing, connection pools, timers, the log."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall

from dlba.config import LimitsSection
from dlba.http.request import Request
from dlba.proxy.accesslog import AccessLog
from dlba.proxy.connections import ConnectionPool
from dlba.proxy.deadlines import DeadlineSweeper
from dlba.proxy.dispatch import SlotDispatcher
from dlba.routing import Router
from dlba.tables import BackendState, BackendStatusTable

ACCESS_LOG_FLUSH = 1.0  # seconds between writes of the access log's buffer


class ClientConnection(Protocol):
    """What the core needs of a client connection (the front protocol)."""

    def idle(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class ProxyCore:
    """The state every client connection of one node shares, and its life cycle."""

    def __init__(
        self,
        router: Router,
        status: BackendStatusTable,
        limits: LimitsSection,
        reactor: IReactorTCP,
        clock: IReactorTime,
        access_log: AccessLog | None = None,
        cookie_name: str = "SpServer",
        hsts: str | None = None,
    ) -> None:
        self.router = router
        self.cookie_name = cookie_name.encode("ascii")
        # Added to HTTPS answers that carry none of their own.
        self.hsts = hsts.encode("ascii") if hsts else None
        self.status = status
        self.limits = limits
        self.reactor = reactor
        self.clock = clock
        self.access_log = access_log
        self.sweeper = DeadlineSweeper(clock)
        self.dispatch = SlotDispatcher(router, status, clock, self.sweeper, self._limit_fell)
        self.connections: set[ClientConnection] = set()
        self.upstreams: dict[tuple[int, bool], ConnectionPool] = {}
        self.draining = False
        self.rejected = 0  # requests refused for what the client sent
        self.connections_total = 0  # client connections accepted since start
        self._all_closed: list[Deferred[None]] = []
        # Written in 64 KiB blocks, so a quiet node's lines would wait for minutes; once a
        # second is what a person tailing the log expects (nginx's ``flush=1s``).
        self._log_flusher = LoopingCall(self._flush_access_log)
        self._log_flusher.clock = clock

    @property
    def refused_connections(self) -> int:
        """Client connections refused because a queue was long."""
        return sum(p.admission.refused_connections for p in self.router.pools)

    def upstream(self, backend: BackendState, keepalive: bool) -> ConnectionPool:
        """The pool of connections to ``backend`` (pooled or one per request)."""
        key = (backend.number, keepalive)
        pool = self.upstreams.get(key)
        if pool is None or pool.backend is not backend:
            pool = self._new_upstream(backend, keepalive)
        return pool

    def _new_upstream(self, backend: BackendState, keepalive: bool) -> ConnectionPool:
        limits = self.limits
        pool = ConnectionPool(
            backend,
            self.reactor,
            self.clock,
            self.sweeper,
            keepalive=keepalive,
            connect_timeout=limits.backend_connect_timeout,
            response_timeout=limits.backend_response_timeout,
            idle_timeout=limits.backend_idle_timeout,
        )
        if backend.retired:
            # A request in flight at a row a reload let go, trying again: a connection of
            # its own, never one of the new row's pool, and none kept afterwards.
            pool.retire()
        else:
            old = self.upstreams.get((backend.number, keepalive))
            if old is not None:
                old.retire()
            self.upstreams[(backend.number, keepalive)] = pool
        return pool

    def _limit_fell(self, backend: BackendState) -> None:
        for (number, _), pool in self.upstreams.items():
            if number == backend.number:
                pool.trim(backend.limit)

    def log_access(self, client: str, request: Request | None, status: int, sent: int) -> None:
        """One access-log line; ``request`` None for a head too broken to name."""
        access_log = self.access_log
        if access_log is None:
            return  # the line is not even formatted: this runs for every request
        if request is None:
            line, referer, user_agent = b"-", None, None
        else:
            line, referer, user_agent = request.request_line, request.referer, request.user_agent
        access_log.log(self.clock.seconds(), client, line, status, sent, referer, user_agent)

    # -- reload ---------------------------------------------------------------------------

    def reload(
        self,
        router: Router,
        retired: list[BackendState],
        limits: LimitsSection,
        *,
        cookie_name: str,
        hsts: str | None,
    ) -> int:
        """Take a new config's routing and settings: what is scheduled from now on goes
        over ``router``; requests in flight finish where they are.  The connection pools
        of the ``retired`` rows close their idle connections and are let go, so the new
        row of the same number gets a pool of its own.  ``limits`` apply to client
        connections accepted from now on (a ``FrontProtocol`` keeps the limits it opened
        with, as an old worker does after an nginx reload) and to every back-end connection
        made or given back from now.  Returns how many waiting requests moved."""
        self.router = router
        self.limits = limits
        self.cookie_name = cookie_name.encode("ascii")
        self.hsts = hsts.encode("ascii") if hsts else None
        for row in retired:
            for keepalive in (True, False):
                pool = self.upstreams.get((row.number, keepalive))
                if pool is not None and pool.backend is row:
                    del self.upstreams[(row.number, keepalive)]
                    pool.retire()
        for pool in self.upstreams.values():
            pool.set_timeouts(
                limits.backend_connect_timeout,
                limits.backend_response_timeout,
                limits.backend_idle_timeout,
            )
        return self.dispatch.reload(router)

    def replace_access_log(self, access_log: AccessLog | None) -> None:
        """Write the access log to ``access_log`` from now on; the old one is closed."""
        old, self.access_log = self.access_log, access_log
        if old is not None and old is not access_log:
            old.flush()
            old.close()

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.sweeper.start()
        self.dispatch.start()
        if not self._log_flusher.running:
            self._log_flusher.start(ACCESS_LOG_FLUSH, now=False)

    def _flush_access_log(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()

    def stop(self) -> None:
        self.sweeper.stop()
        self.dispatch.stop()
        if self._log_flusher.running:
            self._log_flusher.stop()
        for pool in self.upstreams.values():
            pool.close_idle()
        if self.access_log is not None:
            self.access_log.flush()

    def drain(self) -> None:
        """Stop taking requests: close idle clients now, the rest after their answer."""
        self.draining = True
        for front in list(self.connections):
            if front.idle():
                front.close()
        for pool in self.upstreams.values():
            pool.close_idle()

    @property
    def connections_open(self) -> int:
        return len(self.connections)

    def connection_opened(self, front: ClientConnection) -> None:
        self.connections.add(front)
        self.connections_total += 1

    def connection_closed(self, front: ClientConnection) -> None:
        self.connections.discard(front)
        if not self.connections and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def when_all_closed(self) -> Deferred[None]:
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
