"""Tests for dlba.hashing: stable hashes, client buckets, URL keys and the Maglev table.

The property tests check the bounds of the issue for N = 3 to 50 back ends, equal weights
and random weights 1 to 5, at the default table size: removing or adding one back end moves
at most its weight share of a 100,000-URL sample (1/N with equal weights) plus 2%; each back
end owns its weighted fair share ±10% of the table (so of the hash space), and with equal
weights also gets its fair share ±10% of the URL sample.  (With weights, a back end's
expected share of the sample can be 400 URLs, whose sampling noise alone is ±5%.)
"""

from __future__ import annotations

import ipaddress
import operator
import random
from collections import Counter
from collections.abc import Sequence
from functools import cache
from hashlib import blake2b
from itertools import islice

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dlba import hashing
from dlba.hashing import (
    MIN_SIZE,
    MaglevTable,
    bucket_of,
    default_size,
    is_prime,
    next_prime,
    required_size,
    stable_hash64,
    url_key,
)

Pairs = list[tuple[int, int]]

# Each property builds two or three tables of ~65537 entries (~25 ms each) and looks up
# 100,000 URLs: a few examples each keep the file well under 30 s.  derandomize: the same
# examples on every run, so CI does not flake.
FEW = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SOME = settings(max_examples=25, deadline=None, derandomize=True, database=None)
MANY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

DISRUPTION_SLACK = 0.02  # "at most 1/N + 2%"
SHARE_TOLERANCE = 0.10  # "weighted fair share ±10%"


# ---------------------------------------------------------------------------------------
# The URL sample


@cache
def sample_hashes() -> tuple[int, ...]:
    """stable_hash64 of 100,000 distinct, cache-like URL paths (computed once)."""
    urls = (
        url_key(b"/catalog/%d/item-%d.html?ref=%d" % (i % 977, i, i % 13), False)
        for i in range(100_000)
    )
    return tuple(map(stable_hash64, urls))


@cache
def sample_slots(size: int) -> tuple[int, ...]:
    """The table entry of each sample URL for a table of `size`."""
    return tuple(h % size for h in sample_hashes())


def owners(table: MaglevTable) -> list[int]:
    """The back end of each sample URL: one index per URL, as `lookup` does."""
    return list(map(table.entries.__getitem__, sample_slots(table.size)))


def moved(before: MaglevTable, after: MaglevTable) -> float:
    """The fraction of the sample whose back end differs between two tables."""
    assert before.size == after.size
    a, b = owners(before), owners(after)
    changed: int = sum(map(operator.ne, a, b))
    return changed / len(a)


def weight_share(pairs: Pairs, number: int) -> float:
    weights = dict(pairs)
    return weights[number] / sum(weights.values())


@st.composite
def backend_sets(
    draw: st.DrawFn, min_size: int = 3, max_size: int = 50, weighted: bool | None = None
) -> Pairs:
    """(number, weight) pairs: 3 to 50 back ends, equal weights or random weights 1 to 5."""
    numbers = draw(
        st.lists(st.integers(1, 100_000), min_size=min_size, max_size=max_size, unique=True)
    )
    if weighted is None:
        weighted = draw(st.booleans())
    if not weighted:
        return [(n, 1) for n in numbers]
    return [(n, draw(st.integers(1, 5))) for n in numbers]


def maglev_reference(pairs: Pairs, size: int) -> tuple[int, ...]:
    """Maglev populate as in the paper: each turn walks its preference list to a free entry.

    Same offsets, skips and turn order as dlba.hashing, none of its shortcuts.
    """
    pairs = sorted(pairs)
    numbers = [n for n, _ in pairs]
    offsets = [hashing._offset(n, size) for n in numbers]
    skips = hashing._skips(numbers, size)
    following = [0] * len(pairs)
    table = [0] * size
    for b in islice(hashing._turns([w for _, w in pairs], size), size):
        i = b - 1
        while True:
            c = (offsets[i] + following[i] * skips[i]) % size
            following[i] += 1
            if not table[c]:
                table[c] = numbers[i]
                break
    return tuple(table)


# ---------------------------------------------------------------------------------------


class StableHashTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        """BLAKE2b-64 read little-endian (b2sum -l 64 agrees): a change of hash is caught."""
        vectors = {
            b"": 0xB4B2797457A0A6E4,
            b"/": 0x901D479C282838BF,
            b"/index.html": 0xB4C16D008041F3E6,
            b"/images/logo.png?v=2": 0x5CFFE81FB662BEFC,
            b"dlba": 0x4416ABAFE9B2BD1A,
        }
        for data, expected in vectors.items():
            self.assertEqual(stable_hash64(data), expected, data)

    @given(st.binary(max_size=300))
    @MANY
    def test_range_and_definition(self, data: bytes) -> None:
        h = stable_hash64(data)
        self.assertTrue(0 <= h < 1 << 64)
        self.assertEqual(h, int.from_bytes(blake2b(data, digest_size=8).digest(), "little"))


class BucketTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        # The kernel's jhash (tests/test_jhash.py checks it against Linux's own answers).
        self.assertEqual(bucket_of("192.0.2.1", 40000, 65521), 55955)
        self.assertEqual(bucket_of("2001:db8::1", 443, 65521), 21034)
        self.assertEqual(bucket_of("10.0.0.1", 1, 4093), 121)
        self.assertEqual(bucket_of("::1", 65535, 4093), 431)
        self.assertEqual(bucket_of("198.51.100.7", 0, 1000003), 3261)

    def test_forms_of_one_address_agree(self) -> None:
        v4 = bucket_of("192.0.2.1", 40000, 65521)
        self.assertEqual(bucket_of(b"\xc0\x00\x02\x01", 40000, 65521), v4)
        self.assertEqual(bucket_of("::ffff:192.0.2.1", 40000, 65521), v4)
        self.assertEqual(bucket_of(b"\0" * 10 + b"\xff\xff\xc0\x00\x02\x01", 40000, 65521), v4)
        self.assertEqual(bucket_of(" 192.0.2.1 ", 40000, 65521), v4)
        v6 = bucket_of("2001:db8::1", 443, 65521)
        self.assertEqual(bucket_of("[2001:db8::1]", 443, 65521), v6)
        self.assertEqual(bucket_of("2001:0db8:0:0:0:0:0:1", 443, 65521), v6)
        self.assertEqual(bucket_of("fe80::1%eth0", 443, 65521), bucket_of("fe80::1", 443, 65521))

    def test_bad_input(self) -> None:
        for ip in ("", "192.0.2", "192.0.2.256", "example.com", "1::2::3", b"\x01\x02\x03"):
            self.assertRaises(ValueError, bucket_of, ip, 80, 4093)
        self.assertRaises(ValueError, bucket_of, "192.0.2.1", -1, 4093)
        self.assertRaises(ValueError, bucket_of, "192.0.2.1", 65536, 4093)
        self.assertRaises(ValueError, bucket_of, "192.0.2.1", 80, 0)

    @given(
        st.ip_addresses(),
        st.integers(0, 65535),
        st.integers(1, 1 << 20),
    )
    @MANY
    def test_range_and_text_equals_packed(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, size: int
    ) -> None:
        b = bucket_of(str(ip), port, size)
        self.assertTrue(0 <= b < size)
        self.assertEqual(bucket_of(ip.packed, port, size), b)
        self.assertEqual(bucket_of(str(ip), port, size), b)

    def assertUniform(self, buckets: Sequence[int], size: int) -> None:
        """Pearson's chi-square over `size` buckets, loosely: mean df, sd √(2 df)."""
        expected = len(buckets) / size
        counts = Counter(buckets)
        chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(size))
        df = size - 1
        self.assertLess(chi2, df + 6 * (2 * df) ** 0.5, f"chi-square {chi2:.0f}, df {df}")

    def test_uniform_over_ports_of_one_client(self) -> None:
        """A client behind NAT opens many ports: they spread over the table."""
        size = 101
        self.assertUniform([bucket_of("203.0.113.9", p, size) for p in range(1024, 41424)], size)

    def test_uniform_over_clients(self) -> None:
        """Sequential IPv4 and IPv6 clients on one port spread over the table."""
        size = 127
        v4 = [bucket_of(bytes((10, 1, i >> 8, i & 255)), 443, size) for i in range(30000)]
        self.assertUniform(v4, size)
        v6 = [bucket_of(f"2001:db8::{i:x}", 443, size) for i in range(30000)]
        self.assertUniform(v6, size)


class UrlKeyTests(SynchronousTestCase):
    def test_path_or_path_and_query(self) -> None:
        self.assertEqual(url_key(b"/a/b?x=1&y=2", False), b"/a/b")
        self.assertEqual(url_key(b"/a/b?x=1&y=2", True), b"/a/b?x=1&y=2")
        self.assertEqual(url_key(b"/a/b", False), b"/a/b")
        self.assertEqual(url_key(b"/a/b", True), b"/a/b")
        self.assertEqual(url_key(b"/?", False), b"/")
        self.assertEqual(url_key(b"/?", True), b"/?")
        self.assertEqual(url_key(b"*", False), b"*")

    def test_no_decoding_and_no_fragment(self) -> None:
        self.assertEqual(url_key(b"/a%2Fb?q", False), b"/a%2Fb")
        self.assertEqual(url_key(b"/a#frag", False), b"/a")
        self.assertEqual(url_key(b"/a?q#frag", True), b"/a?q")
        self.assertEqual(url_key(b"/a#f?not-a-query", True), b"/a")

    @given(st.binary(max_size=50).filter(lambda b: b"?" not in b and b"#" not in b))
    @SOME
    def test_query_only_matters_with_query(self, path: bytes) -> None:
        self.assertEqual(url_key(path + b"?a=1", False), url_key(path + b"?b=2", False))
        self.assertNotEqual(url_key(path + b"?a=1", True), url_key(path + b"?b=2", True))


class SizeTests(SynchronousTestCase):
    def test_is_prime(self) -> None:
        sieve = [True] * 5000
        sieve[0] = sieve[1] = False
        for i in range(2, 71):
            for j in range(i * i, 5000, i):
                sieve[j] = False
        self.assertEqual(
            [n for n in range(5000) if is_prime(n)], [n for n in range(5000) if sieve[n]]
        )
        for prime in (65537, 100003, 1000003, 2**31 - 1, 2**61 - 1):
            self.assertTrue(is_prime(prime), prime)
        # Carmichael numbers and strong pseudoprimes to several bases.
        for composite in (561, 1105, 2047, 1373653, 25326001, 3215031751, 2**32 + 1):
            self.assertFalse(is_prime(composite), composite)
        self.assertEqual(next_prime(65536), 65537)
        self.assertEqual(next_prime(100_000), 100_003)
        self.assertEqual(next_prime(0), 2)

    def test_default_size(self) -> None:
        """Prime, ≥ 100·N, room for one more, and the same while N stays below a power of 2."""
        self.assertEqual(default_size([]), 0)
        for n in (1, 2, 3, 10, 50, 511):
            self.assertEqual(default_size([(i, 1) for i in range(n)]), MIN_SIZE)
        for n in (512, 700, 1000, 1023):
            self.assertEqual(default_size([(i, 1) for i in range(n)]), 102407)
        self.assertEqual(default_size([(i, 1) for i in range(1024)]), 204803)

    @given(backend_sets(1, 1200))
    @SOME
    def test_default_size_properties(self, pairs: Pairs) -> None:
        size = default_size(pairs)
        self.assertTrue(is_prime(size))
        self.assertGreaterEqual(size, 100 * (len(pairs) + 1))
        self.assertGreaterEqual(size, required_size(pairs))
        self.assertGreaterEqual(size, required_size([*pairs, (-1, 1)]))

    def test_uneven_weights_ask_for_a_bigger_table(self) -> None:
        pairs = [(1, 1), (2, 3000)]
        self.assertEqual(required_size(pairs), 20 * 3001)
        self.assertEqual(default_size(pairs), next_prime(40 * 3001))
        huge = [(1, 1), (2, 10**9)]
        self.assertEqual(required_size(huge), hashing.MAX_WEIGHT_SIZE)


class MaglevBasicsTests(SynchronousTestCase):
    def test_empty(self) -> None:
        table = MaglevTable([])
        self.assertIsNone(table.get(b"/"))
        self.assertRaises(LookupError, table.lookup, b"/")
        self.assertRaises(LookupError, table.lookup_hash, 12345)
        self.assertEqual((len(table), table.size, table.numbers, table.entries), (0, 0, (), ()))
        self.assertEqual(table.counts(), {})
        self.assertEqual(table.rebuild([(4, 1)]).size, MIN_SIZE)

    def test_one_backend(self) -> None:
        table = MaglevTable([(7, 3)])
        self.assertEqual(set(table.entries), {7})
        self.assertEqual(table.lookup(b"/x"), 7)
        self.assertEqual(table.get(b"/y"), 7)
        self.assertEqual(table.counts(), {7: MIN_SIZE})

    def test_bad_input(self) -> None:
        self.assertRaises(ValueError, MaglevTable, [(1, 1), (1, 2)])
        self.assertRaises(ValueError, MaglevTable, [(1, 0)])
        self.assertRaises(ValueError, MaglevTable, [(1, 1), (2, 1)], 1000)
        self.assertRaises(ValueError, MaglevTable, [(1, 1), (2, 1), (3, 1)], 2)

    def test_known_tables(self) -> None:
        """The table is part of the contract: nodes of one array, possibly running different
        releases, must send a URL to the same back end.  A change here remaps every URL."""
        three = MaglevTable([(1, 1), (2, 1), (3, 1)])
        self.assertEqual(three.entries[:10], (1, 2, 1, 2, 1, 3, 2, 1, 2, 1))
        self.assertEqual(stable_hash64(bytes(three.entries)), 0x1B0337306015C7E7)
        weighted = MaglevTable([(7, 5), (3, 3), (2, 2), (1, 1)])
        self.assertEqual(stable_hash64(bytes(weighted.entries)), 0xFE5367B1D7D78750)
        self.assertEqual(weighted.counts(), {1: 5957, 2: 11916, 3: 17874, 7: 29790})
        small = MaglevTable([(5, 1), (9, 2)], size=1009)
        self.assertEqual(
            [small.lookup(url_key(u, False)) for u in (b"/", b"/a", b"/b?x", b"/c")],
            [5, 9, 9, 5],
        )

    def test_lookup_is_one_index(self) -> None:
        """O(1): lookup is stable_hash64, one modulo and one index into a table of M entries."""
        pairs = [(n, 1 + n % 3) for n in range(1, 41)]
        table = MaglevTable(pairs)
        self.assertEqual(len(table), table.size)
        self.assertEqual(len(table.entries), table.size)
        self.assertEqual(table.numbers, tuple(range(1, 41)))
        self.assertEqual(table.backends, tuple(pairs))
        self.assertEqual(set(table.entries), set(table.numbers))
        for i in range(200):
            key = b"/k/%d" % i
            h = stable_hash64(key)
            self.assertEqual(table.lookup(key), table.entries[h % table.size])
            self.assertEqual(table.get(key), table.lookup(key))
            self.assertEqual(table.lookup_hash(h), table.lookup(key))

    @given(backend_sets(2, 30), st.sampled_from([1009, 2003, 4099]))
    @SOME
    def test_same_as_the_paper(self, pairs: Pairs, size: int) -> None:
        """The fast build (tail found from the free side) equals the plain Maglev loop."""
        self.assertEqual(MaglevTable(pairs, size).entries, maglev_reference(pairs, size))

    def test_same_as_the_paper_at_default_size(self) -> None:
        pairs = [(n, 1 + n % 4) for n in range(3, 60, 4)]
        table = MaglevTable(pairs)
        self.assertEqual(table.entries, maglev_reference(pairs, table.size))

    @given(backend_sets(2, 50), st.randoms(use_true_random=False))
    @SOME
    def test_order_independent(self, pairs: Pairs, rnd: random.Random) -> None:
        shuffled = list(pairs)
        rnd.shuffle(shuffled)
        self.assertEqual(MaglevTable(shuffled, 4099).entries, MaglevTable(pairs, 4099).entries)

    def test_skips_differ(self) -> None:
        """Back ends never share a skip (it would make their changes cascade)."""
        for size in (3, 1009, 65537, 102407):
            numbers = list(range(min(size - 1, 70000)))
            self.assertEqual(len(set(hashing._skips(numbers, size))), len(numbers), size)
        skips = hashing._skips(list(range(65536)), 65537)
        self.assertEqual(sorted(skips), list(range(1, 65537)))


class MaglevAvoidTests(SynchronousTestCase):
    def test_avoid(self) -> None:
        """An avoided back end's URLs spread over the others by weight; no other URL moves."""
        pairs = [(n, 1 + n % 3) for n in range(1, 21)]
        table = MaglevTable(pairs)
        down = {5}
        survivors = dict(pairs)
        del survivors[5]
        spread: Counter[int] = Counter()
        for h in sample_hashes():
            first = table.lookup_hash(h)
            got = table.get_hash(h, down)
            assert got is not None
            self.assertNotIn(got, down)
            if first in down:
                spread[got] += 1
                self.assertEqual(table.get_hash(h, down), got)  # the same one every time
            else:
                self.assertEqual(got, first)
        moved_urls = sum(spread.values())
        self.assertAlmostEqual(moved_urls / len(sample_hashes()), weight_share(pairs, 5), 1)
        total = sum(survivors.values())
        for number, weight in survivors.items():  # loose: ~300 URLs per back end
            self.assertLess(abs(spread[number] / (moved_urls * weight / total) - 1), 0.5)

    def test_avoid_all_or_most(self) -> None:
        table = MaglevTable([(1, 1), (2, 1), (3, 1)])
        self.assertIsNone(table.get(b"/x", {1, 2, 3}))
        self.assertIsNone(MaglevTable([]).get_hash(7, {1}))
        for i in range(300):
            self.assertEqual(table.get(b"/x/%d" % i, {1, 3}), 2)
        self.assertEqual(table.get(b"/x", ()), table.lookup(b"/x"))


class MaglevSizeTests(SynchronousTestCase):
    @given(backend_sets(1, 200))
    @SOME
    def test_size_prime_and_at_least_100_per_backend(self, pairs: Pairs) -> None:
        table = MaglevTable(pairs)
        self.assertTrue(is_prime(table.size))
        self.assertGreaterEqual(table.size, 100 * len(pairs))
        self.assertEqual(len(table.entries), table.size)

    def test_rebuild_keeps_the_size_while_it_fits(self) -> None:
        pairs = [(n, 1) for n in range(1, 11)]
        table = MaglevTable(pairs)
        self.assertEqual(table.rebuild(pairs[1:]).size, table.size)
        self.assertEqual(table.rebuild([*pairs, (11, 1)]).size, table.size)
        given_size = MaglevTable(pairs, 1009)  # M = 100·N exactly: full
        self.assertEqual(given_size.rebuild(pairs[1:]).size, 1009)
        self.assertEqual(given_size.rebuild([*pairs, (11, 1)]).size, MIN_SIZE)
        big = MaglevTable(pairs, next_prime(9 * MIN_SIZE))  # too big: shrinks
        self.assertEqual(big.rebuild(pairs[1:]).size, MIN_SIZE)
        self.assertEqual(table.rebuild([]).size, 0)
        self.assertEqual(table.rebuild(pairs).entries, table.entries)

    @given(backend_sets(2, 600), st.integers(0, 1 << 30))
    @SOME
    def test_one_change_keeps_the_default_size(self, pairs: Pairs, pick: int) -> None:
        """From a default-size table, rebuilding after one removal or one addition (equal
        weights) keeps the size, so only the URLs of that back end need to move."""
        pairs = [(n, 1) for n, _ in pairs]
        size = default_size(pairs)
        removed = pairs[: pick % len(pairs)] + pairs[pick % len(pairs) + 1 :]
        added = [*pairs, (-1, 1)]
        for new in (removed, added):  # MaglevTable.rebuild's rule for keeping the size
            self.assertLessEqual(required_size(new), size)
            self.assertLessEqual(size, 8 * default_size(new))


class MaglevBalanceTests(SynchronousTestCase):
    def assertFairShares(self, table: MaglevTable, pairs: Pairs) -> None:
        """Each back end owns its weighted share of the table to within 1 + weight·N/total
        entries (one entry with equal weights), so to within ±10% (the share of hash
        space, hence of URLs, it is sent)."""
        counts = table.counts()
        total = sum(w for _, w in pairs)
        self.assertEqual(sum(counts.values()), table.size)
        for number, weight in pairs:
            fair = table.size * weight / total
            slack = 1 + weight * len(pairs) / total
            self.assertLessEqual(abs(counts[number] - fair), slack, (number, counts[number], fair))
            self.assertLessEqual(abs(counts[number] / fair - 1), SHARE_TOLERANCE)

    def assertFairUrlShares(self, table: MaglevTable, pairs: Pairs) -> None:
        """Each back end gets its fair share ±10% of the 100,000-URL sample."""
        got = Counter(owners(table))
        n = len(sample_hashes())
        total = sum(w for _, w in pairs)
        for number, weight in pairs:
            fair = n * weight / total
            self.assertLessEqual(abs(got[number] / fair - 1), SHARE_TOLERANCE, (number, fair))

    @given(backend_sets(3, 50, weighted=False))
    @FEW
    def test_equal_weights(self, pairs: Pairs) -> None:
        table = MaglevTable(pairs)
        self.assertFairShares(table, pairs)
        self.assertFairUrlShares(table, pairs)

    @given(backend_sets(3, 50, weighted=True))
    @SOME
    def test_random_weights(self, pairs: Pairs) -> None:
        """With weights 1 to 5 a back end's share of 100,000 URLs can be 400 URLs, whose
        sampling noise alone (±5%) makes a ±10% bound on the sample a coin toss at N = 50:
        the bound is proved on the table, which is what the URLs are drawn from."""
        self.assertFairShares(MaglevTable(pairs), pairs)

    def test_fixed_sizes(self) -> None:
        for n in (3, 10, 50):
            pairs = [(i, 1) for i in range(1, n + 1)]
            table = MaglevTable(pairs)
            self.assertFairShares(table, pairs)
            self.assertFairUrlShares(table, pairs)
            weighted = [(i, 1 + i % 5) for i in range(1, n + 1)]
            self.assertFairShares(MaglevTable(weighted), weighted)

    def test_smaller_given_size(self) -> None:
        """At M ≈ 100·N (a given size) the table is still balanced to one entry."""
        pairs = [(i, 1 + i % 5) for i in range(1, 51)]
        self.assertFairShares(MaglevTable(pairs, 15013), pairs)


class MaglevDisruptionTests(SynchronousTestCase):
    def assertRemovalBounded(self, pairs: Pairs, number: int) -> None:
        before = MaglevTable(pairs)
        after = before.rebuild([p for p in pairs if p[0] != number])
        self.assertEqual(after.size, before.size)
        share = weight_share(pairs, number)
        fraction = moved(before, after)
        self.assertLessEqual(fraction, share + DISRUPTION_SLACK, (len(pairs), number))
        # The removed back end's URLs do have to move.
        self.assertGreaterEqual(fraction, share * (1 - SHARE_TOLERANCE))

    def assertAdditionBounded(self, pairs: Pairs, new: tuple[int, int]) -> None:
        before = MaglevTable(pairs)
        after = before.rebuild([*pairs, new])
        self.assertEqual(after.size, before.size)
        share = weight_share([*pairs, new], new[0])
        fraction = moved(before, after)
        self.assertLessEqual(fraction, share + DISRUPTION_SLACK, (len(pairs), new))
        self.assertGreaterEqual(fraction, share * (1 - SHARE_TOLERANCE))

    @given(backend_sets(3, 50), st.integers(0, 1 << 30))
    @FEW
    def test_remove_one(self, pairs: Pairs, pick: int) -> None:
        self.assertRemovalBounded(pairs, pairs[pick % len(pairs)][0])

    @given(backend_sets(3, 50), st.integers(1, 5))
    @FEW
    def test_add_one(self, pairs: Pairs, weight: int) -> None:
        if len({w for _, w in pairs}) == 1:
            weight = pairs[0][1]
        self.assertAdditionBounded(pairs, (100_001, weight))

    def test_fixed_sizes(self) -> None:
        for n in (3, 10, 50):
            pairs = [(i, 1) for i in range(1, n + 1)]
            self.assertRemovalBounded(pairs, n // 2 + 1)
            self.assertAdditionBounded(pairs, (n + 1, 1))
        weighted = [(i, 1 + i % 5) for i in range(1, 11)]
        self.assertRemovalBounded(weighted, 4)  # the heaviest
        self.assertRemovalBounded(weighted, 5)  # the lightest
        self.assertAdditionBounded(weighted, (11, 5))
        self.assertAdditionBounded(weighted, (11, 1))

    def test_remove_each_of_three(self) -> None:
        pairs = [(1, 1), (2, 1), (3, 1)]
        for number, _ in pairs:
            self.assertRemovalBounded(pairs, number)
