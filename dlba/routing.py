"""Which pool a request goes to, and which back end in it.  Pure: no reactor, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

from dlba.interfaces import IBackendPolicy
from dlba.tables import BackendState


class Pool:
    """A named set of back ends with one policy.  A back end may be in several pools."""

    def __init__(
        self,
        name: str,
        backends: Sequence[BackendState],
        policy: IBackendPolicy,
        *,
        keepalive: bool = True,
    ) -> None:
        self.name = name
        self.backends = list(backends)
        self.policy = policy
        self.keepalive = keepalive

    def choose(self, request: object, now: float, exclude: set[int] | None) -> BackendState | None:
        """A live, enabled back end not in ``exclude``, as the policy picks; None if none."""
        if exclude:
            candidates = [b for b in self.backends if b.number not in exclude and b.live(now)]
        else:
            candidates = [b for b in self.backends if b.live(now)]
        return self.policy.choose(candidates, request)


class Router:
    """Picks the pool for a request.  With no rules every request goes to the first pool."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        if not pools:
            raise ValueError("a router needs at least one pool")
        self.pools = list(pools)
        self.default = self.pools[0]

    def route(self, request: object) -> Pool:
        return self.default
