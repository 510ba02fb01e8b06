from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.http.cookies import (
    SetCookie,
    backend_number,
    cookie_pairs,
    cookie_value,
    url_session_id,
    without_cookie,
)
from dlba.sessions import SessionTable


class CookieParsingTests(SynchronousTestCase):
    def test_pairs_across_headers_and_quotes(self) -> None:
        pairs = cookie_pairs([b'a=1; SpServer=2;b="x y"', b"c=3", b"junk; =v; d="])
        self.assertEqual(
            pairs, [(b"a", b"1"), (b"SpServer", b"2"), (b"b", b'"x y"'), (b"c", b"3"), (b"d", b"")]
        )
        self.assertEqual(cookie_value(pairs, b"b"), b"x y")
        self.assertEqual(cookie_value(pairs, b"b", raw=True), b'"x y"')
        self.assertIsNone(cookie_value(pairs, b"spserver"))  # names are case-sensitive
        self.assertEqual(without_cookie(pairs, b"SpServer"), b'a=1; b="x y"; c=3; d=')
        self.assertIsNone(without_cookie([(b"SpServer", b"1")], b"SpServer"))

    def test_backend_number(self) -> None:
        self.assertEqual(backend_number(b"12"), 12)
        for bad in [None, b"", b"0", b"-1", b"+1", b"1.0", b"1e3", b"9" * 20, b'"1"', b"\xd9\xa1"]:
            self.assertIsNone(backend_number(bad), bad)

    def test_set_cookie(self) -> None:
        sc = SetCookie.parse(b"JSESSIONID=abc;Path=/; HttpOnly ;  Priority=High; SameSite=None")
        assert sc is not None
        self.assertEqual((sc.name, sc.value), (b"JSESSIONID", b"abc"))
        self.assertEqual(sc.copied_attributes(), [b"Path=/", b"HttpOnly", b"SameSite=None"])
        self.assertIsNone(SetCookie.parse(b"novalue; Path=/"))
        self.assertIsNone(SetCookie.parse(b"=x"))

    def test_url_session_id(self) -> None:
        params = (b"jsessionid", b"sid")
        self.assertEqual(url_session_id(b"/a;jsessionid=AB12?x=1", params), b"AB12")
        self.assertEqual(url_session_id(b"/a;jsessionid=AB12/b;x=1", params), b"AB12")
        self.assertEqual(url_session_id(b"/a?x=1&SID=q", params), b"q")
        self.assertEqual(url_session_id(b"http://h/x;JSessionID=Z", params), b"Z")
        self.assertIsNone(url_session_id(b"/a?sidx=1&x=sid", params))
        self.assertIsNone(url_session_id(b"/a;jsessionid=?sid=", params))


class SessionTableTests(SynchronousTestCase):
    def test_bounded_lru(self) -> None:
        clock = Clock()
        t = SessionTable(max_size=3, ttl=100.0)
        for i in range(3):
            t.learn(b"s%d" % i, i, clock.seconds())
        self.assertEqual(t.lookup(b"s0", clock.seconds()), 0)  # s0 is now the newest
        t.learn(b"s3", 3, clock.seconds())
        self.assertEqual(len(t), 3)
        self.assertIsNone(t.lookup(b"s1", clock.seconds()))  # least recently used went
        self.assertEqual(t.lookup(b"s0", clock.seconds()), 0)
        self.assertEqual(t.evicted, 1)

    def test_expiry_and_refresh_on_use(self) -> None:
        clock = Clock()
        t = SessionTable(max_size=10, ttl=30.0)
        t.learn(b"a", 1, clock.seconds())
        t.learn(b"b", 2, clock.seconds())
        clock.advance(20)
        self.assertEqual(t.lookup(b"a", clock.seconds()), 1)  # used: 30 s more
        clock.advance(20)
        self.assertEqual(t.lookup(b"a", clock.seconds()), 1)
        self.assertIsNone(t.lookup(b"b", clock.seconds()))
        self.assertTrue(t.known(b"a", clock.seconds()))
        clock.advance(31)
        self.assertFalse(t.known(b"a", clock.seconds()))
        t.learn(b"c", 3, clock.seconds())  # learning sweeps the expired oldest
        self.assertEqual(len(t), 1)
        self.assertAlmostEqual(t.hit_rate, 2 / 3)

    def test_size_must_be_positive(self) -> None:
        self.assertRaises(ValueError, SessionTable, 0, 1.0)
