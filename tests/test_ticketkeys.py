"""The ring of session-ticket keys: rotation, opening, merging, the wire (pure, no TLS)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dlba.ticketkeys import WIRE_BYTES, TicketKeyRing, keys_from_bytes


def counting_random() -> object:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def ring(rotation: float = 100.0, lifetime: float = 30.0) -> TicketKeyRing:
    return TicketKeyRing(rotation, lifetime, random=counting_random())  # type: ignore[arg-type]


class RingTests(SynchronousTestCase):
    def test_empty_ring_seals_nothing(self) -> None:
        r = ring()
        self.assertIsNone(r.sealing(0.0))
        self.assertIsNone(r.opening(b"x" * 16, 0.0))

    def test_rotate_makes_the_current_and_the_next_key(self) -> None:
        r = ring()
        self.assertTrue(r.rotate(1000.0))
        current = r.sealing(1000.0)
        assert current is not None
        self.assertEqual((current.start, current.stop, current.expire), (1000.0, 1100.0, 1130.0))
        self.assertEqual(len(r), 2)
        self.assertFalse(r.rotate(1050.0))  # nothing due: the next key is already held
        nxt = r.sealing(1100.0)
        assert nxt is not None
        self.assertIsNot(nxt, current)
        self.assertEqual(nxt.start, 1100.0)

    def test_an_old_key_opens_and_asks_for_renewal_until_it_expires(self) -> None:
        r = ring()
        r.rotate(1000.0)
        old = r.sealing(1000.0)
        assert old is not None
        self.assertEqual(r.opening(old.name, 1000.0), (old, False))
        r.rotate(1101.0)
        self.assertEqual(r.opening(old.name, 1101.0), (old, True))
        self.assertIsNone(r.opening(old.name, 1130.0))
        r.rotate(1131.0)
        self.assertNotIn(old.name, [k.name for k in r.keys()])

    def test_merge_is_a_union_and_converges(self) -> None:
        a, b = ring(), ring()
        a.rotate(1000.0)
        self.assertTrue(b.merge(keys_from_bytes(a.to_bytes()), 1000.0))
        self.assertEqual(b.generation, a.generation)
        self.assertEqual(b.sealing(1000.0), a.sealing(1000.0))
        self.assertFalse(b.merge(keys_from_bytes(a.to_bytes()), 1000.0))  # nothing new

    def test_merge_leaves_expired_keys_out(self) -> None:
        a, b = ring(), ring()
        a.rotate(1000.0)
        b.merge(keys_from_bytes(a.to_bytes()), 1131.0)
        self.assertEqual([k.start for k in b.keys()], [1100.0])

    def test_the_generation_changes_with_the_keys(self) -> None:
        r = ring()
        before = r.generation
        r.rotate(0.0)
        self.assertNotEqual(r.generation, before)

    def test_repr_shows_no_secret(self) -> None:
        r = ring()
        r.rotate(0.0)
        key = r.keys()[0]
        self.assertNotIn(key.aes.hex(), repr(key))
        self.assertNotIn(key.hmac.hex(), repr(key))

    def test_the_wire_refuses_garbage(self) -> None:
        self.assertRaises(ValueError, keys_from_bytes, b"x" * (WIRE_BYTES - 1))
        r = ring()
        r.rotate(5.0)
        data = bytearray(r.to_bytes())
        data[80:88] = data[88:96]  # start = stop: out of order
        self.assertRaises(ValueError, keys_from_bytes, bytes(data))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.floats(min_value=0, max_value=10_000), min_size=1, max_size=30))
    def test_every_node_seals_with_the_same_key(self, times: list[float]) -> None:
        """Whatever the order of rotations and pushes, nodes holding the same keys seal
        with the same one, and a ticket sealed by any opens on every node until it
        expires."""
        scheduler, node = ring(), ring()
        for now in sorted(times):
            scheduler.rotate(now)
            node.merge(keys_from_bytes(scheduler.to_bytes()), now)
            sealing = scheduler.sealing(now)
            self.assertIsNotNone(sealing)
            self.assertEqual(node.sealing(now), sealing)
            assert sealing is not None
            self.assertIsNotNone(node.opening(sealing.name, now))
