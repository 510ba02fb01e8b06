"""The session table of the ``session`` policy: session id → back end, learned from answers.

Pure: time is passed in.  Bounded (least recently used entries go first) and expiring
(an entry unused for ``ttl`` seconds is gone); every operation is O(1).
"""

from __future__ import annotations

from collections import OrderedDict


class SessionTable:
    def __init__(self, max_size: int, ttl: float) -> None:
        if max_size < 1:
            raise ValueError("a session table holds at least one entry")
        self.max_size = max_size
        self.ttl = ttl
        # id → (back end number, expiry); order is recency of use, oldest first.
        self._entries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def reconfigure(self, max_size: int, ttl: float) -> None:
        """New bounds (a reload): the least recently used entries over ``max_size`` go;
        ``ttl`` counts from each entry's next use."""
        if max_size < 1:
            raise ValueError("a session table holds at least one entry")
        self.max_size = max_size
        self.ttl = ttl
        while len(self._entries) > max_size:
            self._entries.popitem(last=False)
            self.evicted += 1

    def learn(self, session_id: bytes, backend: int, now: float) -> None:
        entries = self._entries
        entries[session_id] = (backend, now + self.ttl)
        entries.move_to_end(session_id)
        self._trim(now)

    def lookup(self, session_id: bytes, now: float) -> int | None:
        """The back end of a known, unexpired session; using it keeps it alive."""
        entry = self._entries.get(session_id)
        if entry is None:
            self.misses += 1
            return None
        backend, expires = entry
        if expires <= now:
            del self._entries[session_id]
            self.expired += 1
            self.misses += 1
            return None
        self._entries[session_id] = (backend, now + self.ttl)
        self._entries.move_to_end(session_id)
        self.hits += 1
        return backend

    def peek(self, session_id: bytes, now: float) -> int | None:
        """The back end of an unexpired session, without counting a hit or a miss."""
        entry = self._entries.get(session_id)
        return entry[0] if entry is not None and entry[1] > now else None

    def known(self, session_id: bytes, now: float) -> bool:
        return self.peek(session_id, now) is not None

    def forget(self, session_id: bytes) -> None:
        self._entries.pop(session_id, None)

    def _trim(self, now: float) -> None:
        entries = self._entries
        while len(entries) > self.max_size:
            entries.popitem(last=False)
            self.evicted += 1
        # The oldest entries are the first to expire: drop a few per call, O(1) amortised.
        for _ in range(2):
            if not entries:
                break
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[key]
            self.expired += 1

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
