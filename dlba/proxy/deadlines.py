"""Deadlines for many connections from one coarse periodic check.

A request would otherwise start and cancel two or three DelayedCalls; setting a float
is cheaper, and a timeout a quarter-second late harms nobody.
"""

from __future__ import annotations

import math
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

NEVER = math.inf


def body_deadline(
    started: float, now: float, received: int, silence: float, min_rate: float
) -> float:
    """When a request body that began at ``started`` and has brought ``received`` bytes so
    far must have gone on: within ``silence`` seconds of its last bytes, and (``min_rate``
    > 0) on average at ``min_rate`` bytes/s after a first ``silence`` seconds of grace, as
    Apache's mod_reqtimeout ``MinRate`` does.  A body trickled a byte at a time is cut when
    its credit runs out, however often the bytes come."""
    deadline = now + silence
    if min_rate > 0:
        deadline = min(deadline, started + silence + received / min_rate)
    return deadline


class HasDeadline(Protocol):
    deadline: float

    def deadline_passed(self, now: float) -> None: ...


class DeadlineSweeper:
    """Calls ``deadline_passed(now)`` on each watched object once its ``deadline`` has passed.

    The object sets ``deadline`` (an absolute ``clock.seconds()`` value, or NEVER) as its
    state changes; it must move or clear the deadline when called, or it is called again.
    """

    def __init__(self, clock: IReactorTime, interval: float = 0.25) -> None:
        self.clock = clock
        self.interval = interval
        self._watched: set[HasDeadline] = set()
        self._call: IDelayedCall | None = None

    def watch(self, obj: HasDeadline) -> None:
        self._watched.add(obj)

    def unwatch(self, obj: HasDeadline) -> None:
        self._watched.discard(obj)

    def __len__(self) -> int:
        return len(self._watched)

    def start(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def check(self) -> None:
        now = self.clock.seconds()
        expired = [o for o in self._watched if o.deadline <= now]
        for obj in expired:
            if obj in self._watched and obj.deadline <= now:
                obj.deadline_passed(now)

    def _tick(self) -> None:
        self._call = None
        try:
            self.check()
        finally:
            self._call = self.clock.callLater(self.interval, self._tick)
