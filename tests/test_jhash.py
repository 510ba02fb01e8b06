"""The kernel's jhash in Python (dlba.jhash): the answers Linux gave, and the unrolled
per-frame form against the general one."""

from __future__ import annotations

import socket
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dlba.hashing import bucket_of, bucket_of_wire
from dlba.jhash import ARRAY_SEED, jhash, jhash_ip_port, reciprocal_scale

UINT32 = st.integers(0, 2**32 - 1)

# What the kernel (6.18, nftables 1.0.6) put in a dynamic set for
# ``ip saddr . tcp sport . jhash ip saddr . tcp sport mod 1024 seed 0x1234``.
KERNEL = [
    ("249.192.143.239", 41338, 0),
    ("210.11.93.89", 62563, 2),
    ("79.115.253.148", 60108, 4),
    ("15.12.138.137", 48329, 10),
    ("207.35.202.232", 8470, 14),
    ("180.97.8.204", 33181, 23),
]


class JhashTests(SynchronousTestCase):
    def test_the_kernels_answers(self) -> None:
        for ip, port, bucket in KERNEL:
            packed, wire = socket.inet_aton(ip), port.to_bytes(2, "big")
            self.assertEqual(reciprocal_scale(jhash_ip_port(packed, wire, 0x1234), 1024), bucket)
            self.assertEqual(
                reciprocal_scale(jhash(packed + wire + b"\0\0", 0x1234), 1024), bucket, ip
            )

    def test_lengths_the_loop_and_the_tail_share(self) -> None:
        # The empty key is the start value itself; lengths on either side of the 12-byte
        # block all differ.
        self.assertEqual(jhash(b"", 0), 0xDEADBEEF)
        seen = {jhash(bytes(range(n)), 7) for n in range(40)}
        self.assertEqual(len(seen), 40)

    @given(
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=2, max_size=2),
        st.integers(0, 2**32 - 1),
    )
    def test_unrolled_equals_general(self, ip: bytes, port: bytes, seed: int) -> None:
        self.assertEqual(jhash_ip_port(ip, port, seed), jhash(ip + port + b"\0\0", seed))

    @given(UINT32, st.integers(1, 2**22))
    def test_scale_in_range(self, h: int, n: int) -> None:
        self.assertTrue(0 <= reciprocal_scale(h, n) < n)

    def test_buckets_are_the_kernels_and_even(self) -> None:
        counts: Counter[int] = Counter()
        for i in range(40_000):
            ip = socket.inet_aton(f"10.{i % 251}.{i // 251 % 256}.{i % 7}")
            port = (1024 + i * 37) % 65536
            b = bucket_of_wire(ip, port.to_bytes(2, "big"), 64)
            self.assertEqual(b, bucket_of(ip, port, 64))
            self.assertEqual(
                b, reciprocal_scale(jhash_ip_port(ip, port.to_bytes(2, "big"), ARRAY_SEED), 64)
            )
            counts[b] += 1
        self.assertEqual(len(counts), 64)
        self.assertLess(max(counts.values()), 1.2 * 40_000 / 64)
        self.assertGreater(min(counts.values()), 0.8 * 40_000 / 64)
