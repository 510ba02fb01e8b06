"""Which pool a request goes to, and which back end in it.  Pure: no reactor, no sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlba.config import Config, PersistenceSection, PoolConfig
from dlba.http.cookies import cookie_value
from dlba.interfaces import IBackendPolicy, RequestView
from dlba.loading import Admission, WaitQueue
from dlba.policy import CookiePolicy, RoundRobin, SessionPolicy, UrlHashPolicy, make_policy
from dlba.sessions import SessionTable
from dlba.tables import BackendState, BackendStatusTable


class Pool:
    """A named set of back ends with one policy.  A back end may be in several pools."""

    def __init__(
        self,
        name: str,
        backends: Sequence[BackendState],
        policy: IBackendPolicy,
        *,
        keepalive: bool = True,
        queue_limit: int = 1024,
        queue_timeout: float = 5.0,
        refuse_connections_at: float = 0.75,
        accept_connections_at: float = 0.375,
    ) -> None:
        self.name = name
        self.backends = list(backends)
        self.policy = policy
        self.keepalive = keepalive
        self.looks_at_answers: bool = policy.looks_at_answers
        # Requests waiting for a slot (controlled loading), oldest first.
        self.queue: WaitQueue[Any] = WaitQueue()
        for backend in self.backends:
            backend.count_waiting_in(self.queue)
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self.admission = Admission(queue_limit, refuse_connections_at, accept_connections_at)
        self.expired = 0  # requests answered 503 because their queue deadline passed

    def choose(
        self, request: RequestView, now: float, exclude: set[int] | None
    ) -> BackendState | None:
        return self.policy.choose(request, self.backends, now, exclude)

    def pick(
        self, request: RequestView, now: float, exclude: set[int] | None
    ) -> tuple[BackendState | None, bool]:
        """(back end, bound): the back end the request is bound to (its session, its URL),
        else a free one, preferring one with a free slot.  A full back end returned means
        "wait for a slot there" when bound, "wait for any slot" when not."""
        policy = self.policy
        backend = policy.bound(request, self.backends, now, exclude)
        if backend is not None:
            return backend, True
        fresh: IBackendPolicy = getattr(policy, "base", policy)
        backend = fresh.choose(request, self.backends, now, exclude)
        if backend is None or backend.has_room():
            return backend, False
        full = {b.number for b in self.backends if not b.has_room()}
        roomy = fresh.choose(request, self.backends, now, full | (exclude or set()))
        return (roomy if roomy is not None else backend), False


def _host_only(host: bytes) -> bytes:
    """The Host value without its port, lower-cased."""
    if host[:1] == b"[":
        return host.partition(b"]")[0][1:].lower()
    return host.partition(b":")[0].lower()


class Rule:
    """Matchers that must all hold; an absent matcher holds for every request."""

    def __init__(
        self,
        pool: Pool,
        host: str | None = None,
        path_prefix: str | None = None,
        header: str | None = None,
        cookie: str | None = None,
    ) -> None:
        self.pool = pool
        self.host = host.lower().encode("idna") if host else None
        self.wildcard = self.host is not None and self.host.startswith(b"*.")
        self.path_prefix = path_prefix.encode("ascii") if path_prefix else None
        self.header_name, self.header_value = _name_value(header, lower_name=True)
        self.cookie_name, self.cookie_value = _name_value(cookie, lower_name=False)

    def matches(self, request: RequestView) -> bool:
        if self.host is not None:
            if request.host is None:
                return False
            host = _host_only(request.host)
            if self.wildcard:
                # "*.example.com" covers any name under example.com, not example.com itself.
                if not host.endswith(self.host[1:]):
                    return False
            elif host != self.host:
                return False
        if self.path_prefix is not None and not request.target.startswith(self.path_prefix):
            return False
        if self.header_name is not None:
            found = [v for n, v in request.headers if n.lower() == self.header_name]
            if not found or (self.header_value is not None and self.header_value not in found):
                return False
        if self.cookie_name is not None:
            value = cookie_value(request.cookies, self.cookie_name) if request.cookies else None
            if value is None or (self.cookie_value is not None and value != self.cookie_value):
                return False
        return True


def _name_value(spec: str | None, *, lower_name: bool) -> tuple[bytes | None, bytes | None]:
    if not spec:
        return None, None
    name, eq, value = spec.partition("=")
    name = name.strip()
    raw = name.lower() if lower_name else name
    return raw.encode("latin-1"), value.strip().encode("latin-1") if eq else None


class Router:
    """Picks the pool for a request: the first rule that matches, else the first pool."""

    def __init__(self, pools: Sequence[Pool], rules: Sequence[Rule] = ()) -> None:
        if not pools:
            raise ValueError("a router needs at least one pool")
        self.pools = list(pools)
        self.rules = list(rules)
        self.default = self.pools[0]
        # Asked on every finished request; a router is rebuilt when its pools change.
        self._pools_with: dict[int, list[Pool]] = {}
        for pool in self.pools:
            for number in dict.fromkeys(b.number for b in pool.backends):
                self._pools_with.setdefault(number, []).append(pool)

    def route(self, request: RequestView) -> Pool:
        for rule in self.rules:
            if rule.matches(request):
                return rule.pool
        return self.default

    def pools_with(self, number: int) -> list[Pool]:
        return self._pools_with.get(number, [])

    def pool_named(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


# -- from the config ------------------------------------------------------------------------


def backend_table(config: Config) -> BackendStatusTable:
    """One row per back end of the config (a back end in several pools has one row)."""
    table = BackendStatusTable()
    for pool in config.pools:
        for b in pool.backends:
            table.add(
                BackendState(b.number, b.host, b.port, b.weight, b.enabled, pool.max_concurrent)
            )
    return table


def build_policy(pool: PoolConfig, persistence: PersistenceSection) -> IBackendPolicy:
    """The policy a pool's config names; persistence falls back to weighted round-robin."""
    if pool.policy == "cookie":
        return CookiePolicy(RoundRobin(), persistence.cookie, persistence.session_cookies)
    if pool.policy == "session":
        table = SessionTable(persistence.session_table_size, persistence.session_ttl)
        return SessionPolicy(
            RoundRobin(), table, persistence.session_cookies, persistence.session_params
        )
    if pool.policy == "url-hash":
        return UrlHashPolicy(with_query=pool.hash_query)
    return make_policy(pool.policy)


def build_router(config: Config, table: BackendStatusTable) -> Router:
    """The pools and rules of ``config``, over the rows of ``table``."""
    pools = []
    for pc in config.pools:
        rows = [table.get(b.number) for b in pc.backends]
        pools.append(
            Pool(
                pc.name,
                [r for r in rows if r is not None],
                build_policy(pc, config.persistence),
                keepalive=pc.backend_keepalive,
                queue_limit=pc.queue_limit,
                queue_timeout=pc.queue_timeout,
                refuse_connections_at=pc.refuse_connections_at,
                accept_connections_at=pc.accept_connections_at,
            )
        )
    by_name = {p.name: p for p in pools}
    rules = [
        Rule(by_name[rc.pool], rc.host, rc.path_prefix, rc.header, rc.cookie) for rc in config.rules
    ]
    return Router(pools, rules)
