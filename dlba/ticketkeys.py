"""The array's TLS session-ticket keys: one ring, the same on every node.

A client that resumes a session sends back a ticket that some node sealed.  With a key
per node, a resumption that lands on another node is a full handshake again (three
nginx behind one VIP: new-connection HTTPS requests/s fell from 3,079 to 1,572).  So the
scheduler makes the keys and pushes them to every node, and every node seals with the
same key at the same time.

Each key has three times: ``start`` (it seals from then), ``stop`` (it seals no more
after: the next key has started) and ``expire`` (tickets it sealed are refused after:
``stop`` + the ticket lifetime, so no ticket outlives its key's acceptance).  The
scheduler always holds the next key one rotation ahead, so every node has it long before
it starts sealing; which key seals is decided by time alone, so every node that holds
the same keys seals with the same one.

Merging is a union (keys are never changed once made), so two schedulers during an
election, or a node that missed pushes, converge without a conflict: the worst case is
a key accepted for a while that nobody seals with.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NAME_BYTES = 16
AES_BYTES = 32  # AES-256-CBC, as OpenSSL's own tickets
HMAC_BYTES = 32  # HMAC-SHA256
_WIRE = struct.Struct(f"!{NAME_BYTES}s{AES_BYTES}s{HMAC_BYTES}sddd")
WIRE_BYTES = _WIRE.size
# A ring this long is a bug or an attack, not a rotation schedule.
MAX_KEYS = 64


@dataclass(frozen=True)
class TicketKey:
    name: bytes
    aes: bytes
    hmac: bytes
    start: float
    stop: float
    expire: float

    def __repr__(self) -> str:
        # Never the secrets: a repr ends up in logs and tracebacks.
        return f"TicketKey(name={self.name.hex()[:8]}…, start={self.start}, stop={self.stop})"


class TicketKeyRing:
    """The keys a node seals and opens tickets with; time is passed in.

    ``rotation``: how long one key seals.  ``lifetime``: how long a ticket is good for
    (the TLS session timeout); a key opens tickets that long after it stops sealing.
    """

    def __init__(
        self,
        rotation: float,
        lifetime: float,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if rotation <= 0 or lifetime <= 0:
            raise ValueError("rotation and lifetime must be positive")
        self.rotation = rotation
        self.lifetime = lifetime
        self._random = random
        self._keys: dict[bytes, TicketKey] = {}
        self._sealing: TicketKey | None = None
        self._sealing_until = float("-inf")  # the cache above holds until this time
        self.generation = _generation(())

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[TicketKey]:
        return sorted(self._keys.values(), key=lambda k: (k.start, k.name))

    # -- what the TLS layer asks, on handshakes ------------------------------------------

    def sealing(self, now: float) -> TicketKey | None:
        """The key new tickets are sealed with: the latest started that has not stopped."""
        if self._sealing is not None and now < self._sealing_until and now >= self._sealing.start:
            return self._sealing
        best = None
        for key in self._keys.values():
            if key.start <= now < key.stop and (
                best is None or (key.start, key.name) > (best.start, best.name)
            ):
                best = key
        self._sealing = best
        # Valid until that key stops or a later one starts, whichever is first.
        later = [k.start for k in self._keys.values() if k.start > now]
        self._sealing_until = min([best.stop if best else float("inf"), *later])
        return best

    def opening(self, name: bytes, now: float) -> tuple[TicketKey, bool] | None:
        """The key that sealed a ticket, and whether the client should get a new ticket
        (sealed with the current key); None: unknown or expired, a full handshake."""
        key = self._keys.get(name)
        if key is None or now >= key.expire:
            return None
        return key, key is not self.sealing(now)

    # -- the scheduler's side ------------------------------------------------------------

    def rotate(self, now: float) -> bool:
        """Drop expired keys; make sure a key seals now and the next one is held a whole
        rotation ahead.  Returns whether the ring changed."""
        changed = self.prune(now)
        current = self.sealing(now)
        if current is None:
            current = self._make(now)
            changed = True
        if not any(k.start >= current.stop for k in self._keys.values()):
            self._make(current.stop)
            changed = True
        if changed:
            self._changed()
        return changed

    def _make(self, start: float) -> TicketKey:
        stop = start + self.rotation
        key = TicketKey(
            name=self._random(NAME_BYTES),
            aes=self._random(AES_BYTES),
            hmac=self._random(HMAC_BYTES),
            start=start,
            stop=stop,
            expire=stop + self.lifetime,
        )
        self._keys[key.name] = key
        return key

    # -- every node ----------------------------------------------------------------------

    def merge(self, keys: Iterable[TicketKey], now: float) -> bool:
        """Take the keys another node holds (a union); expired ones are not taken."""
        changed = self.prune(now)
        for key in keys:
            if now < key.expire and key.name not in self._keys:
                self._keys[key.name] = key
                changed = True
        if len(self._keys) > MAX_KEYS:
            for key in self.keys()[: len(self._keys) - MAX_KEYS]:
                del self._keys[key.name]
        if changed:
            self._changed()
        return changed

    def prune(self, now: float) -> bool:
        gone = [name for name, key in self._keys.items() if now >= key.expire]
        for name in gone:
            del self._keys[name]
        if gone:
            self._changed()
        return bool(gone)

    def _changed(self) -> None:
        self._sealing = None
        self._sealing_until = float("-inf")
        self.generation = _generation(self._keys)

    # -- the wire --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return b"".join(
            _WIRE.pack(k.name, k.aes, k.hmac, k.start, k.stop, k.expire) for k in self.keys()
        )


def keys_from_bytes(data: bytes) -> list[TicketKey]:
    """The keys of :meth:`TicketKeyRing.to_bytes`; ValueError on anything else."""
    if len(data) % WIRE_BYTES or len(data) > MAX_KEYS * WIRE_BYTES:
        raise ValueError(f"{len(data)} bytes is not a ring of ticket keys")
    keys = []
    for fields in _WIRE.iter_unpack(data):
        key = TicketKey(*fields)
        if not key.start < key.stop <= key.expire:
            raise ValueError("a ticket key's times are out of order")
        keys.append(key)
    return keys


def _generation(names: Iterable[bytes]) -> str:
    # Names only (never the secrets): what a node compares to know it is up to date.
    return hashlib.sha256(b"".join(sorted(names))).hexdigest()[:16]
