"""Which pool a request goes to, and which back end in it.  Pure: no reactor, no sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlba.config import BackendConfig, Config, PersistenceSection, PoolConfig
from dlba.http.cookies import cookie_value
from dlba.interfaces import IBackendPolicy, RequestView
from dlba.loading import Admission, Target, WaitQueue
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
        # Replaced by a reload: requests in flight finish here, anything scheduled anew
        # goes to the router's pool of the same name (``Router.current``).
        self.retired = False

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
        self._by_name = {p.name: p for p in self.pools}
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
        return self._by_name[name]

    def current(self, pool: Pool, request: RequestView) -> Pool:
        """Where a request of ``pool``, retired by a reload, is scheduled now: the pool of
        the same name, or if there is none the pool the rules pick."""
        found = self._by_name.get(pool.name)
        return found if found is not None else self.route(request)


# -- from the config ------------------------------------------------------------------------


def backend_entries(config: Config) -> dict[int, tuple[BackendConfig, PoolConfig]]:
    """Each back end's first ``[[pool.backend]]`` and its pool: what its row is made of
    (a back end in several pools has one row)."""
    entries: dict[int, tuple[BackendConfig, PoolConfig]] = {}
    for pool in config.pools:
        for b in pool.backends:
            entries.setdefault(b.number, (b, pool))
    return entries


def new_row(b: BackendConfig, pool: PoolConfig) -> BackendState:
    return BackendState(b.number, b.host, b.port, b.weight, b.enabled, pool.max_concurrent)


def backend_table(config: Config) -> BackendStatusTable:
    """One row per back end of the config (a back end in several pools has one row)."""
    return BackendStatusTable(new_row(b, pool) for b, pool in backend_entries(config).values())


def controlled(config: Config) -> dict[int, tuple[int, Target]]:
    """The back ends whose limit a feedback controller moves: (ceiling, target) from the
    first adaptive pool each is in."""
    found: dict[int, tuple[int, Target]] = {}
    for pool in config.pools:
        if pool.adaptive:
            target: Target = "throughput" if pool.target == "throughput" else "latency"
            for b in pool.backends:
                found.setdefault(b.number, (pool.max_concurrent, target))
    return found


def build_policy(
    pool: PoolConfig, persistence: PersistenceSection, previous: IBackendPolicy | None = None
) -> IBackendPolicy:
    """The policy a pool's config names; persistence falls back to weighted round-robin.

    ``previous``: the policy of the pool of that name before a reload.  A session table is
    kept (sessions survive the reload) and a URL-hash table rebuilt from the old one, as
    when a back end joins or leaves."""
    if pool.policy == "cookie":
        return CookiePolicy(RoundRobin(), persistence.cookie, persistence.session_cookies)
    if pool.policy == "session":
        if isinstance(previous, SessionPolicy):
            table = previous.table
            table.reconfigure(persistence.session_table_size, persistence.session_ttl)
        else:
            table = SessionTable(persistence.session_table_size, persistence.session_ttl)
        return SessionPolicy(
            RoundRobin(), table, persistence.session_cookies, persistence.session_params
        )
    if pool.policy == "url-hash":
        policy = UrlHashPolicy(with_query=pool.hash_query)
        if isinstance(previous, UrlHashPolicy) and previous.with_query == pool.hash_query:
            policy.continue_from(previous)
        return policy
    return make_policy(pool.policy)


def build_router(
    config: Config, table: BackendStatusTable, previous: Router | None = None
) -> Router:
    """The pools and rules of ``config``, over the rows of ``table``.

    ``previous``: the router before a reload.  A pool of the same name carries on its
    policy's state (``build_policy``) and its counters, so that what the status daemon and
    the metrics show does not fall back to zero."""
    pools = []
    before = {p.name: p for p in previous.pools} if previous is not None else {}
    # A row counts the requests bound to it in the queues of the pools it is in: those of
    # this router from now on (the old router's queues are emptied into these).
    for row in table:
        row.queues = []
    for pc in config.pools:
        rows = [table.get(b.number) for b in pc.backends]
        old = before.get(pc.name)
        pool = Pool(
            pc.name,
            [r for r in rows if r is not None],
            build_policy(pc, config.persistence, old.policy if old is not None else None),
            keepalive=pc.backend_keepalive,
            queue_limit=pc.queue_limit,
            queue_timeout=pc.queue_timeout,
            refuse_connections_at=pc.refuse_connections_at,
            accept_connections_at=pc.accept_connections_at,
        )
        if old is not None:
            pool.expired = old.expired
            pool.admission.refused_requests = old.admission.refused_requests
            pool.admission.refused_connections = old.admission.refused_connections
        pools.append(pool)
    by_name = {p.name: p for p in pools}
    rules = [
        Rule(by_name[rc.pool], rc.host, rc.path_prefix, rc.header, rc.cookie) for rc in config.rules
    ]
    return Router(pools, rules)
