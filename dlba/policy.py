"""Choosing a back end: weights, least load, cookie and session persistence, URL hash.

Pure: no reactor, no sockets; time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zope.interface import implementer

from dlba.hashing import MaglevTable, stable_hash64, url_key
from dlba.http.cookies import (
    SetCookie,
    backend_number,
    cookie_value,
    default_attributes,
    injected_cookie,
    unquote,
    url_session_id,
)
from dlba.interfaces import IBackendPolicy, RequestView
from dlba.sessions import SessionTable
from dlba.tables import BackendState


def fresh_candidates(
    backends: Sequence[BackendState], now: float, exclude: set[int] | None
) -> list[BackendState]:
    """Back ends that may take a request of no session: enabled, live, not draining."""
    if exclude:
        return [b for b in backends if b.number not in exclude and b.accepts_new(now)]
    return [b for b in backends if b.accepts_new(now)]


def sticky_target(
    number: int | None, backends: Sequence[BackendState], now: float, exclude: set[int] | None
) -> BackendState | None:
    """The back end a session is bound to, if it may still take the session's requests."""
    if number is None or (exclude and number in exclude):
        return None
    for b in backends:
        if b.number == number:
            return b if b.accepts_sticky(now) else None
    return None


class _NoAnswers:
    looks_at_answers = False

    def bound(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        """No request is bound to a back end under this policy."""
        return None

    def answered(
        self,
        request: RequestView,
        backend: BackendState,
        headers: Sequence[tuple[bytes, bytes]],
        secure: bool,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        return []


@implementer(IBackendPolicy)
class RoundRobin(_NoAnswers):
    """Smooth weighted round-robin (nginx's): weights honoured, picks interleaved, not bursty."""

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def choose(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        candidates = fresh_candidates(backends, now, exclude)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        current = self._current
        total = 0
        best = candidates[0]
        best_value = None
        for b in candidates:
            value = current.get(b.number, 0) + b.weight
            current[b.number] = value
            total += b.weight
            if best_value is None or value > best_value:
                best, best_value = b, value
        current[best.number] -= total
        return best


@implementer(IBackendPolicy)
class LeastLoad(_NoAnswers):
    """Fewest requests open and queued per unit of weight; ties go to the faster back end."""

    def choose(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        candidates = fresh_candidates(backends, now, exclude)
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda b: ((b.open_connections + b.queued) / b.weight, b.avg_response_time),
        )


class _Persistent:
    """A request bound to a back end goes there; any other is scheduled by ``base``."""

    base: IBackendPolicy

    def bound(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        raise NotImplementedError

    def choose(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        stuck = self.bound(request, backends, now, exclude)
        if stuck is not None:
            return stuck
        return self.base.choose(request, backends, now, exclude)


@implementer(IBackendPolicy)
class CookiePolicy(_Persistent):
    """Persistence by an injected cookie that names the back end (no table is kept).

    A request carrying a valid cookie for a back end that may take it goes there; any
    other request is scheduled by ``base``.  When the back end's answer sets one of the
    session cookies, the answer also gets ``<cookie>=<back end number>`` with that
    cookie's lifetime, scope and flags; when the client's cookie could not be honoured,
    the answer carries the new number even if the back end set no session cookie.
    """

    looks_at_answers = True

    def __init__(self, base: IBackendPolicy, cookie: str, session_cookies: Sequence[str]) -> None:
        self.base = base
        self.cookie = cookie.encode("ascii")
        self.session_cookies = frozenset(c.encode("ascii") for c in session_cookies)

    def requested(self, request: RequestView) -> int | None:
        if not request.cookies:
            return None
        # Raw: we only ever write plain digits, so a quoted value is not ours.
        return backend_number(cookie_value(request.cookies, self.cookie, raw=True))

    def bound(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        return sticky_target(self.requested(request), backends, now, exclude)

    def answered(
        self,
        request: RequestView,
        backend: BackendState,
        headers: Sequence[tuple[bytes, bytes]],
        secure: bool,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        injected: bytes | None = None
        has_cache_control = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"set-cookie":
                parsed = SetCookie.parse(value)
                if parsed is None:
                    continue
                if parsed.name == self.cookie:
                    return []  # the application sets this cookie itself: leave it be
                if injected is None and parsed.name in self.session_cookies:
                    attributes = parsed.copied_attributes()
                    injected = injected_cookie(self.cookie, backend.number, attributes)
            elif lname == b"cache-control":
                has_cache_control = True
        if injected is None and request.cookies:
            had = cookie_value(request.cookies, self.cookie, raw=True)
            if had is not None and backend_number(had) != backend.number:
                attributes = default_attributes(secure)
                injected = injected_cookie(self.cookie, backend.number, attributes)
        if injected is None:
            return []
        backend.sessions_assigned += 1
        added = [(b"Set-Cookie", injected)]
        if not has_cache_control:
            # Shared caches must not hand one client's back-end cookie to another.
            added.append((b"Cache-Control", b"private"))
        return added


@implementer(IBackendPolicy)
class SessionPolicy(_Persistent):
    """Persistence by the application's own session id, learned from its answers.

    Ids come from the session cookies of ``Set-Cookie`` and from ``;jsessionid=``-style
    path parameters or ``?sid=``-style query parameters of ``Location``; a request
    carrying a known id (cookie or URL) goes to the back end that issued it.
    """

    looks_at_answers = True

    def __init__(
        self,
        base: IBackendPolicy,
        table: SessionTable,
        session_cookies: Sequence[str],
        session_params: Sequence[str],
    ) -> None:
        self.base = base
        self.table = table
        self.session_cookies = tuple(c.encode("ascii") for c in session_cookies)
        self._cookie_set = frozenset(self.session_cookies)
        self.session_params = tuple(p.lower().encode("ascii") for p in session_params)

    def session_id(self, request: RequestView) -> bytes | None:
        if request.cookies:
            for name, value in request.cookies:
                if name in self._cookie_set and value:
                    return unquote(value)
        if self.session_params and (b";" in request.target or b"?" in request.target):
            return url_session_id(request.target, self.session_params)
        return None

    def bound(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        sid = self.session_id(request)
        if sid is None:
            return None
        return sticky_target(self.table.lookup(sid, now), backends, now, exclude)

    def answered(
        self,
        request: RequestView,
        backend: BackendState,
        headers: Sequence[tuple[bytes, bytes]],
        secure: bool,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        for name, value in headers:
            lname = name.lower()
            learned: bytes | None = None
            if lname == b"set-cookie":
                parsed = SetCookie.parse(value)
                if parsed is not None and parsed.name in self._cookie_set:
                    learned = unquote(parsed.value)
            elif lname == b"location" and self.session_params:
                learned = url_session_id(value, self.session_params)
            if learned:
                if self.table.peek(learned, now) != backend.number:
                    backend.sessions_assigned += 1
                self.table.learn(learned, backend.number, now)
        # A request whose session this back end now holds (new to us, or moved here
        # because its back end died or was disabled) keeps going there.
        sid = self.session_id(request)
        if sid is not None and self.table.peek(sid, now) != backend.number:
            backend.sessions_assigned += 1
            self.table.learn(sid, backend.number, now)
        return []


class _Unfit:
    """The back ends a URL must avoid now, asked one number at a time (no O(N) set)."""

    __slots__ = ("by_number", "exclude", "now")

    def __init__(
        self, by_number: dict[int, BackendState], now: float, exclude: set[int] | None
    ) -> None:
        self.by_number = by_number
        self.now = now
        self.exclude = exclude

    def __contains__(self, number: object) -> bool:
        if self.exclude and number in self.exclude:
            return True
        return self.by_number[number].failed_until > self.now  # type: ignore[index]


@implementer(IBackendPolicy)
class UrlHashPolicy(_NoAnswers):
    """Consistent hashing of the URL (weighted Maglev), so each URL keeps to one cache.

    The table holds the enabled, undrained back ends and is rebuilt (at the same size,
    so few URLs move) only when that set changes.  A back end that is failed for a while
    keeps its place: its URLs go to other back ends for that while, and come back.
    """

    def __init__(self, with_query: bool = False) -> None:
        self.with_query = with_query
        self._table = MaglevTable(())
        self._built_for: tuple[int, int] = (-1, -1)
        self._by_number: dict[int, BackendState] = {}

    def continue_from(self, previous: UrlHashPolicy) -> None:
        """Rebuild from ``previous``'s table (a reload), at its size, so that a change of
        back ends moves only the URLs it must, as a change of membership does."""
        self._table = previous._table

    def _table_for(self, backends: Sequence[BackendState]) -> MaglevTable:
        stamp = (BackendState.membership_changes, id(backends))
        if stamp != self._built_for:
            members = [b for b in backends if b.enabled and not b.draining]
            self._by_number = {b.number: b for b in members}
            self._table = self._table.rebuild([(b.number, b.weight) for b in members])
            self._built_for = stamp
        return self._table

    def choose(
        self,
        request: RequestView,
        backends: Sequence[BackendState],
        now: float,
        exclude: set[int] | None,
    ) -> BackendState | None:
        table = self._table_for(backends)
        h = stable_hash64(url_key(request.target, self.with_query))
        number = table.get_hash(h, _Unfit(self._by_number, now, exclude))
        return None if number is None else self._by_number[number]

    # Every URL is bound to its cache: a full one is waited for, not spilled over.
    bound = choose


PolicyFactory = Callable[[], IBackendPolicy]
BASE_POLICIES: dict[str, PolicyFactory] = {"round-robin": RoundRobin, "least-load": LeastLoad}


class UnknownPolicy(KeyError):
    pass


def make_policy(name: str) -> IBackendPolicy:
    """A policy that needs nothing but its name (the base policies)."""
    try:
        factory = BASE_POLICIES[name]
    except KeyError:
        raise UnknownPolicy(name) from None
    return factory()
