"""Controlled loading in the proxy: free slots go to waiting requests, limits are steered.

The decisions are ``dlba.loading``'s (the wait queue, admission, feedback controllers);
this is their glue to the clock and to the requests that wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dlba.interfaces import RequestView
from dlba.loading import FeedbackController, Target, Ticket
from dlba.proxy.deadlines import NEVER, DeadlineSweeper
from dlba.routing import Pool, Router
from dlba.tables import BackendState, BackendStatusTable

# How often the feedback controllers are asked for new limits (seconds).
CONTROL_INTERVAL = 0.25


class Waiting(Protocol):
    """A request that may wait in a pool's queue (the exchange)."""

    ticket: Ticket[Any] | None
    pool: Pool | None  # the pool it waits in (a reload moves it)

    @property
    def request(self) -> RequestView: ...

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
        self._running = False

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
        if backend.retired:
            return  # a row a reload let go: its slot is nobody's to take
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
        if controller is not None and not backend.retired:
            controller.on_complete(seconds, now, backend.open_connections)

    def dropped(self, backend: BackendState) -> None:
        """A request failed at the back end: a bad sample for its controller."""
        controller = self.controllers.get(backend.number)
        if controller is not None and not backend.retired:
            controller.on_dropped(self.clock.seconds(), backend.open_connections)

    def start(self) -> None:
        self._running = True
        if self.controllers and self._call is None:
            self._call = self.clock.callLater(CONTROL_INTERVAL, self._steer)

    # -- reload -------------------------------------------------------------------------

    def reload(self, router: Router) -> int:
        """Schedule over ``router`` from now on.  The old pools retire; requests waiting in
        their queues move, oldest first, with their deadline and age, to the new pool of
        the same name (or, their pool gone, the one the rules pick), still bound to their
        back end if it is in that pool.  Then free slots are handed out (a back end may
        have been added, a limit raised).  Returns how many requests moved."""
        old, self.router = self.router, router
        for watch in self._watches.values():
            self.sweeper.unwatch(watch)
        self._watches = {id(p): _QueueWatch(self, p) for p in router.pools}
        moved = 0
        for pool in old.pools:
            pool.retired = True
            for ticket in pool.queue.drain_tickets():
                request = ticket.item
                target = router.current(pool, request.request)
                sticky = ticket.sticky
                if sticky is not None and not any(b.number == sticky for b in target.backends):
                    sticky = None  # its back end is not there: any may take it
                request.pool = target
                request.ticket = target.queue.push(
                    request, sticky, ticket.deadline, ticket.queued_at
                )
                moved += 1
        for pool in router.pools:
            if pool.queue:
                watch = self._watches[id(pool)]
                watch.deadline = pool.queue.next_deadline()
                self.sweeper.watch(watch)
        for backend in self.status:
            if backend.has_room():
                self.slot_freed(backend)
        return moved

    def reconfigure(self, wanted: dict[int, tuple[int, Target]], fresh: set[int]) -> None:
        """The feedback controllers a reload asks for: ``wanted`` maps each steered back
        end to (ceiling, target); those in ``fresh`` (a new row) start afresh, the others
        keep their controller with the new ceiling unless the target changed."""
        for number in list(self.controllers):
            if number not in wanted or number in fresh:
                del self.controllers[number]
        for number, (ceiling, target) in wanted.items():
            backend = self.status.get(number)
            if backend is None:
                continue
            controller = self.controllers.get(number)
            if controller is not None and controller.target == target:
                controller.set_ceiling(ceiling)
            else:
                # As at start, from the ceiling; a new target from the limit reached so far.
                start = ceiling if controller is None else controller.limit
                controller = self.controllers[number] = FeedbackController(ceiling, target, start)
            old_limit, backend.limit = backend.limit, controller.limit
            if backend.limit < old_limit:
                self.limit_fell(backend)
        if self._running and self.controllers and self._call is None:
            self._call = self.clock.callLater(CONTROL_INTERVAL, self._steer)

    def stop(self) -> None:
        self._running = False
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
