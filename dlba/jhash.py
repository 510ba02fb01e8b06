"""The Linux kernel's ``jhash`` (Bob Jenkins' lookup3, include/linux/jhash.h), bit for bit,
so the client table's buckets are the ones nftables computes (issue 13).

Pure: no reactor, no sockets.

nftables' ``jhash EXPR mod N seed S`` hashes the expression's registers: each field of a
concatenation takes whole 32-bit registers, so ``ip saddr . tcp sport`` is 8 bytes, the
address and the port in network order followed by two zero bytes.  The result is scaled
into ``0 .. N-1`` by ``reciprocal_scale`` (``h * N >> 32``), not by ``%``.  Checked against
the kernel in tests/e2e/test_nft_fast_netns.py.
"""

from __future__ import annotations

import struct

__all__ = ["ARRAY_SEED", "jhash", "jhash_ip_port", "reciprocal_scale"]

JHASH_INITVAL = 0xDEADBEEF
# The array's seed: fixed, so every node, every run and the kernel agree ("dlba" in ASCII).
ARRAY_SEED = 0x646C6261
_M = 0xFFFFFFFF
_WORDS3 = struct.Struct("<III")


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M) ^ _rol(c, 4)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rol(a, 6)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rol(b, 8)
    b = (b + a) & _M
    a = ((a - c) & _M) ^ _rol(c, 16)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rol(a, 19)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rol(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & _M
    a ^= c
    a = (a - _rol(c, 11)) & _M
    b ^= a
    b = (b - _rol(a, 25)) & _M
    c ^= b
    c = (c - _rol(b, 16)) & _M
    a ^= c
    a = (a - _rol(c, 4)) & _M
    b ^= a
    b = (b - _rol(a, 14)) & _M
    c ^= b
    return (c - _rol(b, 24)) & _M


def jhash(data: bytes, initval: int) -> int:
    """``jhash(data, len(data), initval)`` as the kernel computes it (a little-endian CPU)."""
    length = len(data)
    a = b = c = (JHASH_INITVAL + length + initval) & _M
    at = 0
    while length > 12:
        x, y, z = _WORDS3.unpack_from(data, at)
        a, b, c = _mix((a + x) & _M, (b + y) & _M, (c + z) & _M)
        length -= 12
        at += 12
    if length == 0:
        return c
    # The kernel's switch adds the last 1..12 bytes little-endian, then mixes once more.
    tail = data[at:] + bytes(12 - length)
    x, y, z = _WORDS3.unpack(tail)
    return _final((a + x) & _M, (b + y) & _M, (c + z) & _M)


def reciprocal_scale(value: int, n: int) -> int:
    """The kernel's scaling of a 32-bit hash into ``0 .. n-1`` (what nft's ``mod`` does)."""
    return (value * n) >> 32


# ``ip saddr . tcp sport`` as nft's registers hold it: 4 + 2 bytes, then 2 bytes of zero,
# so jhash runs with length 8: a = the address, b = the port, read little-endian.
_INIT8 = (JHASH_INITVAL + 8) & _M


def jhash_ip_port(ip4: bytes, port: bytes, initval: int = ARRAY_SEED) -> int:
    """``jhash ip saddr . tcp sport seed initval``: ``ip4`` the packed address (4 bytes),
    ``port`` its two network-order bytes.  The per-frame form, unrolled."""
    start = (_INIT8 + initval) & _M
    a = (start + int.from_bytes(ip4, "little")) & _M
    b = (start + int.from_bytes(port, "little")) & _M
    c = start ^ b
    c = (c - (((b << 14) | (b >> 18)) & _M)) & _M
    a ^= c
    a = (a - (((c << 11) | (c >> 21)) & _M)) & _M
    b ^= a
    b = (b - (((a << 25) | (a >> 7)) & _M)) & _M
    c ^= b
    c = (c - (((b << 16) | (b >> 16)) & _M)) & _M
    a ^= c
    a = (a - (((c << 4) | (c >> 28)) & _M)) & _M
    b ^= a
    b = (b - (((a << 14) | (a >> 18)) & _M)) & _M
    c ^= b
    return (c - (((b << 24) | (b >> 8)) & _M)) & _M
