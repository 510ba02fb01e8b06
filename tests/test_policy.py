from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dlba.interfaces import IBackendPolicy
from dlba.loading import WaitQueue
from dlba.policy import (
    CookiePolicy,
    LeastLoad,
    RoundRobin,
    SessionPolicy,
    UnknownPolicy,
    make_policy,
)
from dlba.routing import Pool, Router, Rule
from dlba.sessions import SessionTable
from dlba.tables import BackendState


@dataclass
class Req:
    """A request as routing and policies see it."""

    target: bytes = b"/"
    method: bytes = b"GET"
    host: bytes | None = b"example.com"
    cookies: list[tuple[bytes, bytes]] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


R = Req()


def backends(*weights: int) -> list[BackendState]:
    return [BackendState(i + 1, "127.0.0.1", 9000 + i, weight=w) for i, w in enumerate(weights)]


class RoundRobinTests(SynchronousTestCase):
    def test_provides_interface(self) -> None:
        for policy in (
            RoundRobin(),
            LeastLoad(),
            CookiePolicy(RoundRobin(), "SpServer", ["JSESSIONID"]),
            SessionPolicy(RoundRobin(), SessionTable(10, 60.0), ["JSESSIONID"], ["sid"]),
        ):
            verifyObject(IBackendPolicy, policy)

    def test_weights_honoured_and_interleaved(self) -> None:
        rr = RoundRobin()
        bs = backends(5, 1, 1)
        picks = [rr.choose(R, bs, 0.0, None) for _ in range(70)]
        counts = Counter(b.number for b in picks if b is not None)
        self.assertEqual(counts, {1: 50, 2: 10, 3: 10})
        first7 = [b.number for b in picks[:7] if b is not None]
        self.assertEqual(sorted(first7), [1, 1, 1, 1, 1, 2, 3])
        self.assertNotEqual(first7[:5], [1, 1, 1, 1, 1])  # smooth, not bursty

    def test_empty_and_unfit(self) -> None:
        self.assertIsNone(RoundRobin().choose(R, [], 0.0, None))
        self.assertIsNone(LeastLoad().choose(R, [], 0.0, None))
        bs = backends(1, 1)
        bs[0].disable()
        bs[1].drain(100.0)
        self.assertIsNone(RoundRobin().choose(R, bs, 0.0, None))


class LeastLoadTests(SynchronousTestCase):
    def test_fewest_open_per_weight_then_faster(self) -> None:
        a, b, c = backends(1, 2, 1)
        a.open_connections, b.open_connections, c.open_connections = 2, 3, 2
        a.avg_response_time, c.avg_response_time = 0.5, 0.1
        self.assertIs(LeastLoad().choose(R, [a, b, c], 0.0, None), b)  # 1.5 per weight
        queue: WaitQueue[str] = WaitQueue()
        b.count_waiting_in(queue)
        queue.push("x", b.number, math.inf)
        queue.push("y", b.number, math.inf)
        self.assertEqual(b.queued, 2)
        self.assertIs(LeastLoad().choose(R, [a, b, c], 0.0, None), c)  # tie 2.0: faster wins


class CookiePolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = CookiePolicy(RoundRobin(), "SpServer", ["JSESSIONID", "PHPSESSID"])
        self.bs = backends(1, 1, 1)

    def choose(self, cookies: list[tuple[bytes, bytes]], now: float = 0.0) -> int:
        b = self.policy.choose(Req(cookies=cookies), self.bs, now, None)
        assert b is not None
        return b.number

    def test_valid_cookie_wins(self) -> None:
        for _ in range(5):
            self.assertEqual(self.choose([(b"a", b"1"), (b"SpServer", b"3")]), 3)

    def test_garbage_ignored(self) -> None:
        for value in [b"", b"-1", b"0", b"99", b"99999999999999999999", b"x", b'"2"', b"2;", b"2 "]:
            picks = {self.choose([(b"SpServer", value)]) for _ in range(6)}
            self.assertEqual(picks, {1, 2, 3}, value)  # scheduled afresh

    def test_dead_disabled_or_drained_past_deadline_moves(self) -> None:
        self.bs[2].mark_failed(0.0, 10.0, "refused")
        self.assertNotEqual(self.choose([(b"SpServer", b"3")], now=1.0), 3)
        self.bs[1].disable()
        self.assertNotEqual(self.choose([(b"SpServer", b"2")], now=20.0), 2)
        self.bs[0].drain(deadline=30.0)
        self.assertEqual(self.choose([(b"SpServer", b"1")], now=20.0), 1)  # session kept
        self.assertNotEqual(self.choose([(b"SpServer", b"1")], now=31.0), 1)

    def test_excluded_after_connect_failure(self) -> None:
        b = self.policy.choose(Req(cookies=[(b"SpServer", b"2")]), self.bs, 0.0, {2})
        self.assertNotEqual(b.number if b else None, 2)

    def answered(
        self,
        headers: list[tuple[bytes, bytes]],
        cookies: tuple[tuple[bytes, bytes], ...] = (),
        n: int = 2,
    ) -> list[tuple[bytes, bytes]]:
        return self.policy.answered(Req(cookies=list(cookies)), self.bs[n - 1], headers, True, 0.0)

    def test_injection_copies_attributes(self) -> None:
        table = [
            (b"JSESSIONID=abc; Path=/app; HttpOnly", b"SpServer=2; Path=/app; HttpOnly"),
            (
                b'JSESSIONID="q v"; Max-Age=600; Domain=.example.com; Secure; SameSite=Lax',
                b"SpServer=2; Max-Age=600; Domain=.example.com; Secure; SameSite=Lax",
            ),
            (
                b"PHPSESSID=x; expires=Wed, 21 Oct 2026 07:28:00 GMT; path=/; comment=no; "
                b"Partitioned",
                b"SpServer=2; expires=Wed, 21 Oct 2026 07:28:00 GMT; path=/",
            ),
            (b"JSESSIONID=abc", b"SpServer=2"),
        ]
        for set_cookie, expected in table:
            added = self.answered([(b"Set-Cookie", set_cookie)])
            self.assertEqual(added, [(b"Set-Cookie", expected), (b"Cache-Control", b"private")])

    def test_one_injection_among_several_set_cookies_and_cache_control_kept(self) -> None:
        added = self.answered(
            [
                (b"Set-Cookie", b"theme=dark; Path=/"),
                (b"set-cookie", b"JSESSIONID=1; Path=/a"),
                (b"Set-Cookie", b"PHPSESSID=2; Path=/b"),
                (b"Cache-Control", b"no-cache"),
            ]
        )
        self.assertEqual(added, [(b"Set-Cookie", b"SpServer=2; Path=/a")])

    def test_no_session_cookie_no_injection(self) -> None:
        self.assertEqual(self.answered([(b"Set-Cookie", b"theme=dark")]), [])
        self.assertEqual(self.answered([], cookies=((b"SpServer", b"2"),)), [])

    def test_moved_session_gets_new_number(self) -> None:
        added = self.answered([], cookies=((b"SpServer", b"3"),), n=2)
        self.assertEqual(
            added,
            [
                (b"Set-Cookie", b"SpServer=2; Path=/; HttpOnly; Secure"),
                (b"Cache-Control", b"private"),
            ],
        )
        added = self.answered([], cookies=((b"SpServer", b"junk"),), n=1)
        self.assertEqual(added[0][1].split(b";")[0], b"SpServer=1")

    def test_application_setting_the_cookie_itself_is_left_alone(self) -> None:
        self.assertEqual(
            self.answered([(b"Set-Cookie", b"SpServer=7"), (b"Set-Cookie", b"JSESSIONID=1")]), []
        )


class SessionPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = SessionTable(100, 60.0)
        self.policy = SessionPolicy(
            RoundRobin(), self.table, ["JSESSIONID", "PHPSESSID"], ["jsessionid", "sid"]
        )
        self.bs = backends(1, 1, 1)

    def test_learned_from_set_cookie_and_location(self) -> None:
        self.policy.answered(
            R, self.bs[1], [(b"Set-Cookie", b'JSESSIONID="abc"; Path=/')], False, 0.0
        )
        self.policy.answered(
            R, self.bs[2], [(b"Location", b"http://h/app;jsessionid=XYZ?x=1")], False, 0.0
        )
        self.policy.answered(R, self.bs[0], [(b"Location", b"/next?a=1&SID=q1")], False, 0.0)
        cases = [
            (Req(cookies=[(b"JSESSIONID", b"abc")]), 2),
            (Req(cookies=[(b"JSESSIONID", b'"abc"')]), 2),
            (Req(target=b"/app;jsessionid=XYZ"), 3),
            (Req(target=b"/app;JSESSIONID=XYZ/more?x"), 3),
            (Req(target=b"/p?sid=q1"), 1),
        ]
        for _ in range(3):
            for req, expected in cases:
                b = self.policy.choose(req, self.bs, 1.0, None)
                self.assertEqual(b.number if b else None, expected, req)
        self.assertEqual(self.table.hits, 15)

    def test_unknown_id_scheduled_then_learned(self) -> None:
        req = Req(cookies=[(b"PHPSESSID", b"fromelsewhere")])
        b = self.policy.choose(req, self.bs, 0.0, None)
        assert b is not None
        self.policy.answered(req, b, [], False, 0.0)
        for _ in range(4):
            self.assertIs(self.policy.choose(req, self.bs, 1.0, None), b)

    def test_expired_session_rescheduled(self) -> None:
        self.policy.answered(R, self.bs[1], [(b"Set-Cookie", b"JSESSIONID=s")], False, 0.0)
        req = Req(cookies=[(b"JSESSIONID", b"s")])
        self.assertEqual(self.policy.choose(req, self.bs, 59.0, None).number, 2)  # type: ignore[union-attr]
        self.assertEqual(self.table.lookup(b"s", 200.0), None)


class PoolAndRuleTests(SynchronousTestCase):
    def test_failed_disabled_and_excluded_are_skipped(self) -> None:
        bs = backends(1, 1, 1)
        pool = Pool("p", bs, RoundRobin())
        bs[0].mark_failed(now=100.0, backoff=5.0, error="refused")
        bs[1].enabled = False
        self.assertIs(pool.choose(R, 101.0, None), bs[2])
        self.assertIsNone(pool.choose(R, 101.0, {3}))
        self.assertIs(pool.choose(R, 105.0, {3}), bs[0])  # back-off over

    def test_rules_first_match_wins_default_first_pool(self) -> None:
        app, api, static, beta = (
            Pool(n, [], RoundRobin()) for n in ("app", "api", "static", "beta")
        )
        router = Router(
            [app, api, static, beta],
            [
                Rule(beta, cookie="beta=1"),
                Rule(api, host="api.example.com"),
                Rule(static, host="*.example.com", path_prefix="/static/"),
                Rule(static, header="X-Cache"),
                Rule(api, header="X-Client=mobile", path_prefix="/v2"),
            ],
        )
        cases = [
            (Req(), app),
            (Req(host=b"API.example.com:443"), api),
            (Req(host=b"www.example.com", target=b"/static/a.css"), static),
            (Req(host=b"example.com", target=b"/static/a.css"), app),  # wildcard needs a label
            (Req(host=b"api.example.com", cookies=[(b"beta", b"1")]), beta),
            (Req(cookies=[(b"beta", b"2")]), app),
            (Req(headers=[(b"x-cache", b"")]), static),
            (Req(headers=[(b"X-Client", b"mobile")], target=b"/v2/x"), api),
            (Req(headers=[(b"X-Client", b"desktop")], target=b"/v2/x"), app),
            (Req(host=None), app),
        ]
        for req, pool in cases:
            self.assertIs(router.route(req), pool, req)
        self.assertIs(router.pool_named("api"), api)
        self.assertRaises(ValueError, Router, [])

    def test_make_policy(self) -> None:
        self.assertIsInstance(make_policy("round-robin"), RoundRobin)
        self.assertIsInstance(make_policy("least-load"), LeastLoad)
        self.assertRaises(UnknownPolicy, make_policy, "nope")


class UrlHashPolicyTests(SynchronousTestCase):
    def test_same_url_same_backend_and_spread(self) -> None:
        from dlba.policy import UrlHashPolicy

        policy = UrlHashPolicy()
        bs = backends(1, 1, 1)
        seen: dict[bytes, int] = {}
        for i in range(300):
            target = b"/img/%d.gif?v=%d" % (i, i % 7)
            b = policy.choose(Req(target=target), bs, 0.0, None)
            assert b is not None
            seen[target] = b.number
            again = policy.choose(Req(target=target.split(b"?")[0] + b"?other"), bs, 0.0, None)
            self.assertIs(again, b)  # the query is not hashed by default
        counts = Counter(seen.values())
        self.assertEqual(set(counts), {1, 2, 3})
        self.assertTrue(all(60 <= c <= 140 for c in counts.values()), counts)

    def test_failed_backend_urls_move_and_come_back(self) -> None:
        from dlba.policy import UrlHashPolicy

        policy = UrlHashPolicy()
        bs = backends(1, 1, 1)
        targets = [b"/%d" % i for i in range(200)]
        before = {t: policy.choose(Req(target=t), bs, 0.0, None) for t in targets}
        bs[1].mark_failed(0.0, 10.0, "refused")
        during = {t: policy.choose(Req(target=t), bs, 1.0, None) for t in targets}
        for t in targets:
            if before[t] is bs[1]:
                self.assertIsNot(during[t], bs[1])
            else:
                self.assertIs(during[t], before[t])  # nobody else's URLs move
        after = {t: policy.choose(Req(target=t), bs, 11.0, None) for t in targets}
        self.assertEqual(after, before)

    def test_disabled_backend_leaves_table_and_query_option(self) -> None:
        from dlba.policy import UrlHashPolicy

        bs = backends(1, 1, 1, 1)
        policy = UrlHashPolicy(with_query=True)
        targets = [b"/a?%d" % i for i in range(400)]
        before = {t: policy.choose(Req(target=t), bs, 0.0, None) for t in targets}
        self.assertGreater(len({b.number for b in before.values() if b}), 3)
        bs[0].disable()
        after = {t: policy.choose(Req(target=t), bs, 0.0, None) for t in targets}
        moved = sum(1 for t in targets if before[t] is not after[t])
        self.assertTrue(all(b is not bs[0] for b in after.values()))
        owned = sum(1 for b in before.values() if b is bs[0])
        self.assertLessEqual(moved, owned + len(targets) * 0.02)
        self.assertIsNone(policy.choose(Req(), [], 0.0, None))
