"""Controlled loading in the proxy: free slots go to waiting requests, limits are steered.

The decisions are ``dlba.loading``'s (the wait queue, admission, feedback controllers);
this is their glue to the clock and to the requests that wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dlba.loading import FeedbackController, Ticket
from dlba.proxy.deadlines import NEVER, DeadlineSweeper
from dlba.routing import Pool, Router
from dlba.tables import BackendState, BackendStatusTable

# How often the feedback controllers are asked for new limits (seconds).
CONTROL_INTERVAL = 0.25


class Waiting(Protocol):
    """A request that may wait in a pool's queue (the exchange)."""

    ticket: Ticket[Any] | None

    def go(self, backend: BackendState) -> None: ...
    def respond_error(self, status: int, retry_after: int | None = None) -> None: ...


class SlotDispatcher:
    """Hands slots that free up to the oldest waiting requests that may use them, expires
    waits past their deadline, and applies the feedback controllers' limits."""

    def __init__(
        self,
        router: Router,
        status: BackendStatusTable,
        clock: IReactorTime,
        sweeper: DeadlineSweeper,
        limit_fell: Callable[[BackendState], None],
    ) -> None:
        self.router = router
        self.status = status
        self.clock = clock
        self.sweeper = sweeper
        self.limit_fell = limit_fell
        self.controllers: dict[int, FeedbackController] = {}
        self._watches = {id(p): _QueueWatch(self, p) for p in router.pools}
        self._call: IDelayedCall | None = None

    # -- waiting ------------------------------------------------------------------------

    def wait(self, pool: Pool, request: Waiting, sticky: int | None, now: float) -> None:
        """Queue ``request`` in ``pool`` (bound to back end ``sticky``, if not None)."""
        request.ticket = pool.queue.push(request, sticky, now + pool.queue_timeout, now)
        watch = self._watches[id(pool)]
        watch.deadline = pool.queue.next_deadline()
        self.sweeper.watch(watch)

    def leave(self, pool: Pool, request: Waiting) -> None:
        """``request`` waits no more (its client went away)."""
        ticket, request.ticket = request.ticket, None
        if ticket is not None:
            pool.queue.cancel(ticket)

    def slot_freed(self, backend: BackendState) -> None:
        """Hand free slots at ``backend`` to the oldest requests that may use them."""
        now = self.clock.seconds()
        number = backend.number

        def usable(bound: int | None) -> bool:
            return bound == number if bound is not None else backend.accepts_new(now)

        for pool in self.router.pools_with(number):
            while backend.has_room() and pool.queue:
                request = pool.queue.pop_any(usable)
                if request is None:
                    break
                request.ticket = None
                request.go(backend)

    def accepting(self) -> bool:
        """Whether new client connections are welcome (no pool's queue stays too long)."""
        return all(p.admission.accept_connections(len(p.queue)) for p in self.router.pools)

    # -- feedback -------------------------------------------------------------------------

    def control(self, number: int, controller: FeedbackController) -> None:
        self.controllers[number] = controller

    def completed(self, backend: BackendState, seconds: float, now: float) -> None:
        """A request to ``backend`` was answered whole in ``seconds``."""
        controller = self.controllers.get(backend.number)
        if controller is not None:
            controller.on_complete(seconds, now, backend.open_connections)

    def dropped(self, backend: BackendState) -> None:
        """A request failed at the back end: a bad sample for its controller."""
        controller = self.controllers.get(backend.number)
        if controller is not None:
            controller.on_dropped(self.clock.seconds(), backend.open_connections)

    def start(self) -> None:
        if self.controllers and self._call is None:
            self._call = self.clock.callLater(CONTROL_INTERVAL, self._steer)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _steer(self) -> None:
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
                self.limit_fell(backend)
        self._call = self.clock.callLater(CONTROL_INTERVAL, self._steer)


class _QueueWatch:
    """Puts a pool's oldest queue deadline on the sweeper: expired requests get 503."""

    def __init__(self, dispatcher: SlotDispatcher, pool: Pool) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.deadline = NEVER

    def deadline_passed(self, now: float) -> None:
        queue = self.pool.queue
        for request in queue.expire(now):
            request.ticket = None
            self.pool.expired += 1
            request.respond_error(503, retry_after=1)
        self.deadline = queue.next_deadline()
        if not queue:
            self.dispatcher.sweeper.unwatch(self)
