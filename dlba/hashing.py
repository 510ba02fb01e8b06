"""Stable hashes and URL-hash scheduling (DESIGN.md §4 and §5).

Pure: no reactor, no sockets opened, no time.

- `stable_hash64`: a 64-bit hash that is the same on every machine and every run, never
  Python's salted `hash()`.
- `bucket_of`: the client-table bucket of a (client IP, client port) pair (§4), by the
  kernel's jhash so nftables computes the same bucket (issue 13).
- `url_key`: what the `url-hash` policy hashes: the path, or the path and query.
- `MaglevTable`: weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016).  A lookup
  is one hash and one index (O(1)); the table is rebuilt when the set of back ends changes.

Guarantees (proved by the property tests in tests/test_hashing.py, for 3 to 50 back ends
with weights 1 to 5, at the default size and on a 100,000-URL sample):

- balance: each back end owns its weighted share of the table to within one entry (equal
  weights) or 1 + weight·N/total weight entries, so its share of the hash space, and of
  URLs, is within ±10% of ``weight / total weight``;
- disruption: removing or adding one back end moves at most that back end's weight share of
  the URLs plus 2% (``1/N + 2%`` with equal weights), provided the table size is unchanged.
  `MaglevTable.rebuild` keeps the size whenever it still fits, and the default size leaves
  room to grow, so one change at a time keeps the size; a size change (the pool doubling,
  or shrinking eightfold) remaps nearly everything once.
"""

from __future__ import annotations

import math
import operator
import socket
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from hashlib import blake2b
from itertools import chain, compress, cycle, islice

from dlba.jhash import ARRAY_SEED, jhash, jhash_ip_port, reciprocal_scale

__all__ = [
    "MAX_WEIGHT_SIZE",
    "MIN_SIZE",
    "MaglevTable",
    "bucket_of",
    "bucket_of_wire",
    "default_size",
    "is_prime",
    "next_prime",
    "required_size",
    "stable_hash64",
    "url_key",
]

# The smallest table the default size picks (2**16 + 1, a prime, so any skip generates a full
# cycle).  Maglev's extra disruption, beyond the entries of the back end that comes or goes,
# shrinks as the table grows.  Measured (6 draws per point, N = 3 to 50 equal back ends),
# removing or adding one moved this much more of the table than 1/N:
#   M/N ≈ 100: 2.0-3.3% (mean 2.0-2.7%)   M/N 300-800: 0.8-1.9%   M/N ≥ 1300: at most 0.7%
# so M = 100·N alone misses the 2% bound; 65537 keeps it for N ≤ 50 with room for the noise
# of a URL sample.  A build of 65537 entries takes ~25 ms.  From 512 back ends on the default
# size is 100 to 200 entries per back end, and the extra disruption is back to 2-3%.
MIN_SIZE = 65537
# Table entries per back end (Maglev's recommendation: M ≥ 100·N keeps disruption near 1/N).
ENTRIES_PER_BACKEND = 100
# The lightest back end gets at least this many entries when the size allows, so rounding
# (at most one entry) costs it at most 5% of its share.
LIGHTEST_ENTRIES = 20
# Very uneven weights would ask for a huge table: the weight term of the size stops here.
MAX_WEIGHT_SIZE = 1 << 18


def stable_hash64(data: bytes) -> int:
    """A 64-bit hash of `data`, the same on every machine, every run and every version.

    BLAKE2b with an 8-byte digest (RFC 7693), read little-endian.  Measured on CPython 3.11,
    2 vCPUs: about 0.38 µs for a 36-byte URL and 1.5 µs for 1 kB.  Alternatives measured:
    sha1 truncated 0.39 µs (faster only beyond ~500 bytes, weaker design), md5 truncated
    0.45 µs, blake2s 0.36 µs (slower for long keys), zlib.crc32 0.10 µs but 32 bits and
    linear, so two CRCs are not 64 independent bits (crc32(d, a) ^ crc32(d, b) depends on
    the length only); adler32 is worse.  Never `hash()`: it is salted per process.
    """
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------
# The client table bucket (§4)

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _packed_ip(ip: str | bytes) -> bytes:
    """4 bytes for IPv4 (also for IPv4-mapped IPv6), 16 for IPv6."""
    if isinstance(ip, bytes):
        packed = ip
        if len(packed) not in (4, 16):
            raise ValueError(f"a packed IP address has 4 or 16 bytes, not {len(packed)}")
    else:
        text = ip.strip()
        try:
            if ":" in text:
                if text.startswith("[") and text.endswith("]"):
                    text = text[1:-1]
                # A zone ("fe80::1%eth0") names the local link, not the client.
                packed = socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
            else:
                packed = socket.inet_pton(socket.AF_INET, text)
        except OSError:
            raise ValueError(f"not an IP address: {ip!r}") from None
    if len(packed) == 16 and packed[:12] == _V4_MAPPED:
        packed = packed[12:]
    return packed


def bucket_of(ip: str | bytes, port: int, size: int) -> int:
    """The client-table bucket of (client IP, client port): ``0 <= bucket < size``.

    `ip` is text ("192.0.2.1", "2001:db8::1", "[2001:db8::1]", "fe80::1%eth0") or packed
    bytes (4 or 16).  An IPv4-mapped IPv6 address ("::ffff:192.0.2.1") is the IPv4 address,
    so a dual-stack socket and an IPv4 socket agree.  The hash is the kernel's: what
    nftables' ``jhash ip saddr . tcp sport mod size seed ARRAY_SEED`` computes (`dlba.jhash`),
    so the scheduler's kernel fast path and this agree on every frame; IPv6 the same way
    over ``ip6 saddr . tcp sport`` (20 bytes).
    """
    if size < 1:
        raise ValueError(f"table size must be at least 1, not {size}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be 0 to 65535, not {port}")
    packed = _packed_ip(ip)
    wire = port.to_bytes(2, "big")
    if len(packed) == 4:
        return reciprocal_scale(jhash_ip_port(packed, wire), size)
    return reciprocal_scale(jhash(packed + wire + b"\0\0", ARRAY_SEED), size)


def bucket_of_wire(ip: bytes, port: bytes, size: int) -> int:
    """`bucket_of` for the bytes as an IPv4 frame carries them: the packed address and the
    port's two big-endian bytes, unchecked.  The packet scheduler's per-frame path."""
    return (jhash_ip_port(ip, port) * size) >> 32


# ---------------------------------------------------------------------------------------
# URL keys (§5, url-hash)


def url_key(target: bytes, with_query: bool) -> bytes:
    """The bytes the `url-hash` policy hashes for an origin-form request target.

    The path only (the query stripped) unless `with_query`.  A fragment, which a client
    must not send, is dropped either way.  No percent-decoding and no case folding: the
    back ends are caches, and they key on the target as sent.
    """
    if with_query:
        return target.partition(b"#")[0]
    return target.partition(b"?")[0].partition(b"#")[0]


# ---------------------------------------------------------------------------------------
# Table sizes

# Deterministic Miller-Rabin bases for every n < 3.3e24.
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
    """Whether `n` is prime (deterministic for n < 3.3e24, far above any table size)."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(n: int) -> int:
    """The smallest prime ≥ `n`."""
    n = max(n, 2)
    while not is_prime(n):
        n += 1
    return n


def _pairs(backends: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validated (number, weight) pairs sorted by number."""
    pairs = sorted(backends)
    for i, (number, weight) in enumerate(pairs):
        if i and pairs[i - 1][0] == number:
            raise ValueError(f"back end {number} is listed twice")
        if weight < 1:
            raise ValueError(f"back end {number}: weight must be at least 1, not {weight}")
    return pairs


def _weight_term(pairs: list[tuple[int, int]], entries: int) -> int:
    total = sum(w for _, w in pairs)
    lightest = min(w for _, w in pairs)
    return min(MAX_WEIGHT_SIZE, -(-entries * total // lightest))


def required_size(backends: Iterable[tuple[int, int]]) -> int:
    """The smallest size at which the balance and disruption bounds hold for `backends`.

    ``max(100·N, 20·total weight / lightest weight)``, the second term capped at
    `MAX_WEIGHT_SIZE`.  With weights within a factor of 5 of each other it is 100·N.
    """
    pairs = _pairs(backends)
    if not pairs:
        return 0
    return max(ENTRIES_PER_BACKEND * len(pairs), _weight_term(pairs, LIGHTEST_ENTRIES))


def default_size(backends: Iterable[tuple[int, int]]) -> int:
    """The table size a new `MaglevTable` gets: a prime with room to grow.

    The smallest prime ≥ ``max(MIN_SIZE, 100·C, 40·total weight / lightest weight)`` where C
    is the smallest power of two above N.  Rounding N up to a power of two keeps the size
    (hence every URL's slot) the same while back ends come and go, even for a caller that
    builds afresh each time; it changes only when N crosses a power of two.  And the size
    fits at least one more back end (``M ≥ 100·(N+1)``), so `MaglevTable.rebuild` after one
    addition keeps it.
    """
    pairs = _pairs(backends)
    if not pairs:
        return 0
    capacity = 1 << len(pairs).bit_length()  # smallest power of two > N
    return next_prime(
        max(MIN_SIZE, ENTRIES_PER_BACKEND * capacity, _weight_term(pairs, 2 * LIGHTEST_ENTRIES))
    )


# ---------------------------------------------------------------------------------------
# Maglev


_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: Fibonacci hashing's multiplier
_MASK64 = (1 << 64) - 1


def _skips(numbers: list[int], size: int) -> list[int]:
    """A skip in 1 .. size-1 for each back end number; different numbers, different skips.

    Two back ends with the same skip walk the same cycle of the table, one behind the
    other, and a change of either then cascades: measured, one such pair among 30 back ends
    raised the disruption of a removal from 0.4% to 2.3% beyond 1/N.  With skips drawn
    independently that happens to about 1% of sets of 37 back ends at M = 65537.  So the skip
    is a keyed pseudo-random permutation of ``number mod (size - 1)`` (a 4-round Feistel
    network, round keys from stable_hash64, cycle walking to stay in range): numbers that
    differ by less than size - 1 never share a skip.  About 1 µs per back end.
    """
    domain = size - 1
    if domain <= 1:
        return [1] * len(numbers)
    half = ((domain - 1).bit_length() + 1) // 2
    mask = (1 << half) - 1
    shift = 64 - half
    keys = [stable_hash64(b"dlba maglev skip %d %d" % (size, r)) for r in range(4)]
    skips = []
    for number in numbers:
        x = number % domain
        while True:
            left, right = x >> half, x & mask
            for key in keys:
                left, right = right, left ^ (((right ^ key) * _GOLDEN & _MASK64) >> shift)
            x = (left << half) | right
            if x < domain:
                break
        skips.append(x + 1)
    return skips


def _offset(number: int, size: int) -> int:
    return stable_hash64(b"dlba maglev offset %d" % number) % size


def _turns(weights: list[int], size: int) -> Iterator[int]:
    """The order in which back ends (1-based positions in `weights`) claim entries.

    Equal weights: round robin.  Otherwise back end i claims its k-th entry at virtual time
    k / weight_i (ties: heavier first, then by number), so every prefix of the sequence gives
    each back end its weight share to within 1 + weight·N/total turns (one turn with equal
    weights, which is plain round robin), and the relative order of any two
    back ends does not depend on the others (removing one leaves the others' order alone).
    The times are floats: IEEE division is correctly rounded, so the order is the same on
    every machine.  The sequence holds at least `size` turns.
    """
    n = len(weights)
    if min(weights) == max(weights):
        return cycle(range(1, n + 1))
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(weights, 1):
        groups.setdefault(w, []).append(i)
    total = sum(weights)
    # By virtual time (size + n) / total at least `size` turns are due (each back end is
    # short of time·weight by less than one), so these are all the turns that can be among
    # the first `size`.
    events = [
        (k / w, members)
        for w, members in sorted(groups.items(), reverse=True)
        for k in range(1, (size + n) * w // total + 2)
    ]
    events.sort(key=operator.itemgetter(0))  # stable: heavier first at equal times
    return chain.from_iterable(members for _, members in events)


def _populate(pairs: list[tuple[int, int]], size: int) -> list[int]:
    """The Maglev table as 1-based positions into `pairs`.

    The classic loop: in turn, each back end claims the next entry of its preference list
    that nobody has claimed.  It costs about size·ln(size) probes, most of them at the end,
    when few entries are left and each claim walks far; so the last √size / 2 entries are
    found from the other side instead: a back end's next entry is the free entry whose place
    in its list, ``(p - offset)·skip⁻¹ mod size``, is smallest (exactly what the walk finds).
    Same result, twice as fast at 1,000 back ends.
    """
    # Back end b's preference list is offsets[b] + j·skips[b] mod size, j = 0, 1, ...: both
    # from its number, not its place in the list, so the order of the input does not matter.
    offsets = [0] + [_offset(number, size) for number, _ in pairs]
    skips = [1, *_skips([number for number, _ in pairs], size)]
    cursors = offsets[:]
    table = [0] * size  # 0 = free, else the 1-based position of the owner
    turns = _turns([w for _, w in pairs], size)

    tail = min(size - 1, math.isqrt(size) // 2)
    m = size
    for b in islice(turns, size - tail):
        c = cursors[b]
        s = skips[b]
        while table[c]:
            c = (c + s) % m  # measured faster than an add, a compare and a subtract
        table[c] = b
        cursors[b] = (c + s) % m

    free = set(compress(range(size), map(operator.not_, table)))
    mod = size.__rmod__
    for b in islice(turns, len(free)):
        offset = offsets[b]
        s = skips[b]
        inverse = pow(s, -1, size)
        shift = -offset * inverse % size
        j = min(map(mod, map(shift.__add__, map(inverse.__mul__, free))))
        c = (offset + j * s) % size
        free.remove(c)
        table[c] = b
    return table


class MaglevTable:
    """Weighted Maglev lookup table: URL key → back end number, in O(1).

    Built from (back end number, weight ≥ 1) pairs, in any order.  `size` is the table
    size M, a prime; by default `default_size(backends)`.  `lookup` costs one
    `stable_hash64` and one tuple index.  An empty set of back ends gives an empty table:
    `get` returns None and `lookup` raises LookupError.

    Tables are immutable; when the set of back ends changes, call `rebuild`, which keeps
    the size (so most URLs keep their back end) while it still fits.  For a back end that
    is down for a moment, `get_hash(h, avoid)` sends its URLs elsewhere and leaves every
    other URL where it is.
    """

    __slots__ = ("_backends", "_entries", "_numbers", "_size")

    def __init__(self, backends: Iterable[tuple[int, int]], size: int | None = None) -> None:
        pairs = _pairs(backends)
        if size is None:
            size = default_size(pairs)
        elif pairs:
            if not is_prime(size):
                raise ValueError(f"table size must be a prime, not {size}")
            if size < len(pairs):
                raise ValueError(f"table size {size} is smaller than {len(pairs)} back ends")
        self._backends = tuple(pairs)
        self._numbers = tuple(number for number, _ in pairs)
        if not pairs:
            self._size = 0
            self._entries: tuple[int, ...] = ()
            return
        self._size = size
        if len(pairs) == 1:
            self._entries = (pairs[0][0],) * size
            return
        # One C call: 1.3 ms for 100,000 entries, where map(tuple.__getitem__) takes 5 ms.
        entries: tuple[int, ...] = operator.itemgetter(*_populate(pairs, size))((0, *self._numbers))
        self._entries = entries

    def rebuild(self, backends: Iterable[tuple[int, int]]) -> MaglevTable:
        """A table for a new set of back ends, of this table's size while it fits.

        The size is kept when it is at least `required_size(backends)` and at most eight
        times `default_size(backends)`; otherwise the new table gets the default size.
        Removing a back end therefore never changes the size, and adding one changes it
        only when the pool has outgrown it (each such change remaps nearly every URL).
        """
        pairs = _pairs(backends)
        if not pairs:
            return MaglevTable(())
        size = self._size
        if not required_size(pairs) <= size <= 8 * default_size(pairs):
            size = default_size(pairs)
        return MaglevTable(pairs, size)

    @property
    def size(self) -> int:
        """The table size M (a prime), 0 for an empty table."""
        return self._size

    @property
    def numbers(self) -> tuple[int, ...]:
        """The back end numbers, ascending."""
        return self._numbers

    @property
    def backends(self) -> tuple[tuple[int, int], ...]:
        """The (number, weight) pairs, by number."""
        return self._backends

    @property
    def entries(self) -> tuple[int, ...]:
        """The table itself: entry i is the back end number of hashes ≡ i mod M."""
        return self._entries

    def counts(self) -> dict[int, int]:
        """How many table entries each back end owns (counted on each call: ~3 ms)."""
        owned = Counter(self._entries)
        return {number: owned[number] for number in self._numbers}

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<MaglevTable size={self._size} backends={list(self._backends)!r}>"

    def lookup_hash(self, h: int) -> int:
        """The back end number for a `stable_hash64` value; LookupError when empty."""
        if not self._size:
            raise LookupError("no back ends")
        return self._entries[h % self._size]

    def lookup(self, key: bytes) -> int:
        """The back end number for `key` (see `url_key`); LookupError when empty."""
        if not self._size:
            raise LookupError("no back ends")
        return self._entries[stable_hash64(key) % self._size]

    def get(self, key: bytes, avoid: Container[int] = ()) -> int | None:
        """The back end number for `key`, or None when there are no back ends.

        `avoid`: see `get_hash`.
        """
        return self.get_hash(stable_hash64(key), avoid)

    def get_hash(self, h: int, avoid: Container[int] = ()) -> int | None:
        """The back end number for a `stable_hash64` value, not one of `avoid`.

        Without `avoid` (or when its entry is not avoided) this is `lookup_hash`.  Otherwise
        the next entries of a probe sequence of its own (stride from the high bits of `h`),
        so the URLs of an avoided back end spread over the others in proportion to their
        weights, each URL always to the same one, and no other URL moves: cheaper and less
        disruptive than `rebuild` for a back end that is down for a moment.  After 64
        avoided entries the first back end by number not avoided; None when all are.
        """
        size = self._size
        if not size:
            return None
        entries = self._entries
        i = h % size
        number = entries[i]
        if number not in avoid:
            return number
        stride = (h >> 32) % (size - 1) + 1 if size > 1 else 1
        for _ in range(64):
            i = (i + stride) % size
            number = entries[i]
            if number not in avoid:
                return number
        for number in self._numbers:
            if number not in avoid:
                return number
        return None
