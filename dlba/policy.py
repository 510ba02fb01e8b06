"""Choosing a back end.  Pure: no reactor, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from dlba.interfaces import IBackendPolicy
from dlba.tables import BackendState


@implementer(IBackendPolicy)
class RoundRobin:
    """Smooth weighted round-robin (nginx's): weights honoured, picks interleaved, not bursty."""

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def choose(self, candidates: Sequence[BackendState], request: object) -> BackendState | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        current = self._current
        total = 0
        best: BackendState | None = None
        best_value = 0
        for b in candidates:
            value = current.get(b.number, 0) + b.weight
            current[b.number] = value
            total += b.weight
            if best is None or value > best_value:
                best, best_value = b, value
        assert best is not None
        current[best.number] = best_value - total
        return best


@implementer(IBackendPolicy)
class LeastLoad:
    """Fewest requests open and queued per unit of weight; ties go to the faster back end."""

    def choose(self, candidates: Sequence[BackendState], request: object) -> BackendState | None:
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda b: ((b.open_connections + b.queued) / b.weight, b.avg_response_time),
        )


POLICIES = {"round-robin": RoundRobin, "least-load": LeastLoad}


class UnknownPolicy(KeyError):
    pass


def make_policy(name: str) -> IBackendPolicy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise UnknownPolicy(name) from None
    policy: IBackendPolicy = factory()
    return policy
