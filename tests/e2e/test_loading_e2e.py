"""Controlled server loading (DESIGN §6) end to end: per-back-end limits, the wait queue,
its limit and timeout, clients leaving the queue, sticky requests, admission, feedback.

The back end records the most requests it ever had in flight (``max_inflight`` in
``/_stats``): that is what a limit promises.  Client connections are opened before the
queue fills, since admission refuses new ones while it is nearly full.  Where the test must
know dlba has read what was sent (a request queued, a client gone), it reads the status
daemon first (``barrier``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from tests.e2e.harness import (
    CLIENT_DEADLINE,
    Backend,
    Dlba,
    E2ETestCase,
    RawClient,
    Response,
    reactor,
    request,
    status_lines,
)


def now() -> float:
    seconds: float = reactor.seconds()
    return seconds


def retry_after_ok(response: Response) -> bool:
    value = response.header("retry-after")
    return value is not None and value.isdigit() and int(value) >= 1


class LoadingTests(E2ETestCase):
    async def status(self, dlba: Dlba) -> list[dict[str, Any]]:
        """The status daemon's tables, as they were when it accepted the connection."""
        return await status_lines(dlba.ports["status"])

    async def barrier(self, dlba: Dlba) -> None:
        """Until dlba has handled whatever reached it before now.

        dlba writes the status tables in the reactor turn that accepts the connection and
        they go out in a later one; sockets that were ready before that accept have been
        handled by that turn at the latest.  (The tables themselves may be older than that
        turn: read them again after a barrier to see its effects.)"""
        await self.status(dlba)

    async def backend_rows(self, dlba: Dlba) -> dict[int, dict[str, Any]]:
        """The back end rows, once dlba has handled what reached it before now."""
        await self.barrier(dlba)
        return {r["number"]: r for r in await self.status(dlba) if r.get("table") == "backend"}

    async def pool_row(self, dlba: Dlba) -> dict[str, Any]:
        """The one pool's row of the status tables."""
        [row] = [r for r in await self.status(dlba) if r.get("table") == "pool"]
        return row

    async def clients(self, port: int, n: int) -> list[RawClient]:
        return [await self.connect(port) for _ in range(n)]

    async def timed(
        self, client: RawClient, seconds: float = CLIENT_DEADLINE
    ) -> tuple[Response, float]:
        response = await client.next_response(seconds=seconds)
        return response, now()

    async def test_limit_holds_under_many_clients(self) -> None:
        """max_concurrent = 2, 20 clients at once on a slow back end: it never sees more
        than 2 at once, and every client gets its 200."""
        b1 = self.backend("b1")
        dlba = await self.start([b1], pool={"max_concurrent": 2}, https=False)
        clients = await self.clients(dlba.http, 20)
        for i, client in enumerate(clients):
            client.send(request(f"/slow?ms=300&i={i}"))
        responses = await gatherResults(
            [Deferred.fromCoroutine(c.next_response()) for c in clients]
        )
        self.assertEqual([r.status for r in responses], [200] * 20, responses)
        stats = await b1.stats()
        self.assertEqual(stats["requests"], 20, stats)
        self.assertEqual(stats["max_inflight"], 2, stats)  # never more, and the 2 were used
        self.assertEqual(stats["inflight"], 0, stats)

    async def test_queue_limit_refuses_the_excess_at_once(self) -> None:
        """max_concurrent = 1, queue_limit = 3, 10 slow requests at once: 1 in flight and 3
        queued succeed; the other 6 get 503 with Retry-After before any slow one is done."""
        b1 = self.backend("b1")
        # refuse_connections_at = 0: a connection the kernel completed but dlba accepts
        # only after the queue filled would otherwise be refused (closed without bytes),
        # which is another test's subject; this one is about the requests.
        dlba = await self.start(
            [b1],
            pool={"max_concurrent": 1, "queue_limit": 3, "refuse_connections_at": 0},
            https=False,
            status=True,
        )
        clients = await self.clients(dlba.http, 10)
        for i, client in enumerate(clients):
            client.send(request(f"/slow?ms=500&i={i}"))
        results = await gatherResults([Deferred.fromCoroutine(self.timed(c)) for c in clients])
        ok = [(r, t) for r, t in results if r.status == 200]
        refused = [(r, t) for r, t in results if r.status != 200]
        self.assertEqual(len(ok), 4, results)
        self.assertEqual(len(refused), 6, results)
        for response, _ in refused:
            self.assertEqual(response.status, 503, response)
            self.assertTrue(retry_after_ok(response), response)
        first_ok = min(t for _, t in ok)
        last_refused = max(t for _, t in refused)
        self.assertLess(last_refused, first_ok, "a 503 waited for a slow answer")
        # the 4 that got in ran one after another, 500 ms each
        self.assertGreater(max(t for _, t in ok) - first_ok, 1.2)
        stats = await b1.stats()
        self.assertEqual(stats["requests"], 4, stats)
        self.assertEqual(stats["max_inflight"], 1, stats)
        await self.barrier(dlba)
        pool = await self.pool_row(dlba)
        self.assertEqual((pool["queued"], pool["refused_requests"], pool["expired"]), (0, 6, 0))

    async def test_queue_timeout(self) -> None:
        """queue_timeout = 0.5: a request queued behind a 2 s one gets 503 and Retry-After
        after about half a second, well before the first is answered."""
        b1 = self.backend("b1")
        dlba = await self.start(
            [b1], pool={"max_concurrent": 1, "queue_timeout": 0.5}, https=False, status=True
        )
        first, second = await self.clients(dlba.http, 2)
        first.send(request("/slow?ms=2000"))
        await b1.wait_event("request")
        sent = now()
        second.send(request("/queued"))
        response = await second.next_response(seconds=5)
        waited = now() - sent
        self.assertEqual(response.status, 503, response)
        self.assertTrue(retry_after_ok(response), response)
        self.assertGreaterEqual(waited, 0.45, "answered before the queue timeout")
        self.assertLess(waited, 1.4, "the queue timeout was not kept")
        self.assertEqual(first.data, b"", "the slow request was answered first")
        self.assertFalse(second.closed, "a 503 for a full queue closed a keep-alive connection")
        slow = await first.next_response()
        self.assertEqual(slow.status, 200, slow)
        second.send(request("/again"))  # the connection is still good
        again = await second.next_response()
        self.assertEqual(again.status, 200, again)
        stats = await b1.stats()
        self.assertEqual(stats["targets"], ["/slow?ms=2000", "/again"], stats)
        pool = await self.pool_row(dlba)
        self.assertEqual((pool["queued"], pool["refused_requests"], pool["expired"]), (0, 0, 1))

    async def test_no_queue(self) -> None:
        """queue_limit = 0: nothing waits; a request over the limit gets 503 at once."""
        b1 = self.backend("b1")
        dlba = await self.start([b1], pool={"max_concurrent": 1, "queue_limit": 0}, https=False)
        first, second = await self.clients(dlba.http, 2)
        first.send(request("/slow?ms=1000"))
        await b1.wait_event("request")
        second.send(request("/over"))
        response = await second.next_response(seconds=0.8)
        self.assertEqual(response.status, 503, response)
        self.assertTrue(retry_after_ok(response), response)
        self.assertEqual(first.data, b"")
        self.assertEqual((await first.next_response()).status, 200)
        # connections are still accepted (no queue: admission never refuses)
        response, _ = await self.exchange(dlba.http, request("/after"))
        self.assertEqual(response.status, 200, response)
        self.assertEqual((await b1.stats())["targets"], ["/slow?ms=1000", "/after"])

    async def test_client_gone_from_the_queue_frees_its_place(self) -> None:
        """max_concurrent = 1, queue_limit = 1: A in flight, B queued; B's client goes away
        (RST); C then gets the place in the queue and its answer after A's; B never
        reaches the back end."""
        b1 = self.backend("b1")
        dlba = await self.start(
            [b1], pool={"max_concurrent": 1, "queue_limit": 1}, https=False, status=True
        )
        a, b, c, d = await self.clients(dlba.http, 4)
        a.send(request("/slow?ms=1000&who=A"))
        await b1.wait_event("request")
        b.send(request("/slow?ms=10&who=B"))
        await self.barrier(dlba)  # B is queued now
        d.send(request("/who=D"))  # the queue is full: D is refused at once
        refused = await d.next_response()
        self.assertEqual(refused.status, 503, refused)
        await b.close()  # an abort: dlba sees the connection gone
        await self.barrier(dlba)  # dlba has handled B's going
        c.send(request("/slow?ms=10&who=C"))
        c_response = await c.next_response()
        self.assertEqual(c_response.status, 200, c_response)
        # A's answer had come by then: C waited for A's slot
        self.assertTrue(a.data.startswith(b"HTTP/1.1 200"), a.data)
        stats = await b1.stats()
        self.assertEqual(stats["targets"], ["/slow?ms=1000&who=A", "/slow?ms=10&who=C"], stats)
        self.assertEqual(stats["max_inflight"], 1, stats)

    async def test_keepalive_pool_stays_under_the_limit(self) -> None:
        """200 keep-alive requests from 4 clients at once, max_concurrent = 2: the back end
        sees at most 2 connections, never more than 2 requests at once."""
        b1 = self.backend("b1")
        dlba = await self.start([b1], pool={"max_concurrent": 2}, https=False)
        clients = await self.clients(dlba.http, 4)

        async def run(client: RawClient, n: int) -> int:
            for i in range(50):
                client.send(request(f"/k{n}-{i}"))
                response = await client.next_response()
                self.assertEqual(response.status, 200, response)
            return n

        await gatherResults([Deferred.fromCoroutine(run(c, n)) for n, c in enumerate(clients)])
        stats = await b1.stats()
        self.assertEqual(stats["requests"], 200, stats)
        self.assertLessEqual(stats["connections"], 2, stats)
        self.assertLessEqual(stats["max_inflight"], 2, stats)

    async def test_backend_closing_idle_connections(self) -> None:
        """A back end that closes idle connections after 0.2 s, max_concurrent = 2: no
        client ever sees an error, whether dlba's pooled connection was closed long ago or
        just now."""
        b1 = self.backend("b1", idle_close=0.2)
        dlba = await self.start([b1], pool={"max_concurrent": 2}, https=False)
        client = await self.connect(dlba.http)
        for i in range(6):
            client.send(request(f"/idle{i}"))
            response = await client.next_response()
            self.assertEqual(response.status, 200, response)
            await b1.wait_event("idle-close", i + 1)  # the pooled connection is gone
        stats = await b1.stats()
        self.assertEqual(stats["requests"], 6, stats)
        self.assertLessEqual(stats["max_inflight"], 1, stats)

    async def test_sticky_waits_for_its_backend_only(self) -> None:
        """policy cookie, two back ends, max_concurrent = 1 each: a slow request at b1; a
        request with SpServer=1 waits for b1 while one without the cookie goes to b2 at
        once and is answered first."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        dlba = await self.start(
            [b1, b2], pool={"policy": "cookie", "max_concurrent": 1}, https=False, status=True
        )
        slow, sticky, free = await self.clients(dlba.http, 3)
        slow.send(request("/slow?ms=1000", headers=[("Cookie", "SpServer=1")]))
        await b1.wait_event("request")
        sticky.send(request("/sticky", headers=[("Cookie", "SpServer=1")]))
        rows = await self.backend_rows(dlba)
        self.assertEqual(rows[1]["queued"], 1, rows)  # bound to b1 and waiting
        self.assertEqual(rows[2]["queued"], 0, rows)
        free.send(request("/free"))
        free_response = await free.next_response(seconds=0.9)
        self.assertEqual(free_response.status, 200, free_response)
        self.assertEqual(free_response.header("x-backend"), "b2", free_response)
        self.assertEqual(sticky.data, b"", "the sticky request did not wait for b1")
        sticky_response = await sticky.next_response()
        self.assertEqual(slow.data[:12], b"HTTP/1.1 200", "the sticky one overtook")
        self.assertEqual(sticky_response.status, 200, sticky_response)
        self.assertEqual(sticky_response.header("x-backend"), "b1", sticky_response)
        self.assertEqual((await b1.stats())["max_inflight"], 1)
        self.assertEqual((await b2.stats())["targets"], ["/free"])
        rows = await self.backend_rows(dlba)
        self.assertEqual(rows[1]["queued"], 0, rows)

    async def test_admission_refuses_then_recovers(self) -> None:
        """max_concurrent = 1, queue_limit = 4, the queue full of slow requests: a new
        client connection is closed at once without an answer; once the queue has drained
        new connections are served again."""
        b1 = self.backend("b1")
        dlba = await self.start(
            [b1], pool={"max_concurrent": 1, "queue_limit": 4}, https=False, status=True
        )
        clients = await self.clients(dlba.http, 5)
        for i, client in enumerate(clients):
            client.send(request(f"/slow?ms=300&i={i}"))
        await self.barrier(dlba)  # all 5 read: 1 in flight, 4 queued
        started = now()
        newcomer = await self.connect(dlba.http)
        data = await newcomer.when_closed(seconds=2)
        self.assertEqual(data, b"", "a refused connection got an answer")
        self.assertTrue(all(c.data == b"" for c in clients), "the queue drained meanwhile")
        self.assertLess(now() - started, 1.0)
        responses = await gatherResults(
            [Deferred.fromCoroutine(c.next_response()) for c in clients]
        )
        self.assertEqual([r.status for r in responses], [200] * 5, responses)
        response, _ = await self.exchange(dlba.http, request("/after"))
        self.assertEqual(response.status, 200, response)
        stats = await b1.stats()
        self.assertEqual(stats["requests"], 6, stats)
        self.assertEqual(stats["max_inflight"], 1, stats)

    async def one_slow_two_queued(
        self, dlba: Dlba, b1: Backend
    ) -> tuple[RawClient, list[RawClient]]:
        """With max_concurrent = 1: one request busy at ``b1`` for 1.5 s, two queued."""
        slow, *queued = await self.clients(dlba.http, 3)
        slow.send(request("/slow?ms=1500"))
        await b1.wait_event("request")
        for i, client in enumerate(queued):
            client.send(request(f"/slow?ms=10&i={i}"))
        return slow, queued

    async def refused(self, port: int, *, tls: bool = False) -> None:
        """A new connection to ``port`` is closed at once, before a byte either way (over
        TLS before the handshake)."""
        started = now()
        newcomer = await self.connect(port, tls=tls)
        data = await newcomer.when_closed(seconds=2)
        self.assertEqual(data, b"", "a refused connection got an answer")
        self.assertLess(now() - started, 1.0)

    async def test_refuse_connections_at_a_low_threshold(self) -> None:
        """queue_limit = 10, refuse_connections_at = 0.2, accept_connections_at = 0.1: two
        requests queued (far below the default 0.75 x 10) and new connections, HTTP and
        HTTPS alike, are closed at once without an answer; once the queue has drained
        they are served again."""
        b1 = self.backend("b1")
        pool: dict[str, object] = {
            "max_concurrent": 1,
            "queue_limit": 10,
            "refuse_connections_at": 0.2,
            "accept_connections_at": 0.1,
        }
        dlba = await self.start([b1], pool=pool, status=True)
        slow, queued = await self.one_slow_two_queued(dlba, b1)
        await self.barrier(dlba)  # 1 in flight, 2 queued: 0.2 x 10
        await self.refused(dlba.http)
        await self.refused(dlba.https, tls=True)
        self.assertEqual(slow.data, b"", "the queue drained meanwhile")
        row = await self.pool_row(dlba)
        self.assertEqual((row["refusing_connections"], row["refused_connections"]), (True, 2))
        for client in (slow, *queued):
            self.assertEqual((await client.next_response()).status, 200)
        for port, tls in ((dlba.http, False), (dlba.https, True)):
            response, _ = await self.exchange(port, request("/after"), tls=tls)
            self.assertEqual(response.status, 200, response)
        row = await self.pool_row(dlba)
        self.assertEqual((row["refusing_connections"], row["refused_connections"]), (False, 2))

    async def test_refuse_connections_at_zero_never_refuses(self) -> None:
        """refuse_connections_at = 0, the queue full (which the defaults would refuse
        connections at): new connections are accepted, and their requests over
        queue_limit get 503 with Retry-After at once."""
        b1 = self.backend("b1")
        pool: dict[str, object] = {
            "max_concurrent": 1,
            "queue_limit": 2,
            "refuse_connections_at": 0,
        }
        dlba = await self.start([b1], pool=pool, status=True)
        slow, queued = await self.one_slow_two_queued(dlba, b1)
        await self.barrier(dlba)  # 1 in flight, 2 queued: the queue is full
        for port, tls in ((dlba.http, False), (dlba.https, True)):
            response, client = await self.exchange(port, request("/over"), tls=tls)
            self.assertEqual(response.status, 503, response)
            self.assertTrue(retry_after_ok(response), response)
            self.assertFalse(client.closed, "a 503 for a full queue closed the connection")
        self.assertEqual(slow.data, b"", "the queue drained meanwhile")
        row = await self.pool_row(dlba)
        self.assertEqual(
            (row["refusing_connections"], row["refused_connections"], row["refused_requests"]),
            (False, 0, 2),
        )
        for client in (slow, *queued):
            self.assertEqual((await client.next_response()).status, 200)
        self.assertNotIn("/over", (await b1.stats())["targets"])

    async def test_adaptive_limit_in_status(self) -> None:
        """adaptive = true, max_concurrent = 64: requests succeed and the status daemon
        shows each back end's limit (1..64), metric and queued."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        dlba = await self.start(
            [b1, b2],
            pool={"max_concurrent": 64, "adaptive": True, "target": "latency"},
            https=False,
            status=True,
        )
        clients = await self.clients(dlba.http, 8)

        async def run(client: RawClient) -> None:
            for i in range(10):
                client.send(request(f"/slow?ms=20&i={i}"))
                response = await client.next_response()
                self.assertEqual(response.status, 200, response)

        await gatherResults([Deferred.fromCoroutine(run(c)) for c in clients])
        rows = await self.backend_rows(dlba)
        self.assertEqual(sorted(rows), [1, 2], rows)
        for row in rows.values():
            for key in ("limit", "metric", "queued"):
                self.assertIn(key, row)
            self.assertTrue(1 <= row["limit"] <= 64, row)
            self.assertEqual(row["queued"], 0, row)
            self.assertIsInstance(row["metric"], int | float)
            self.assertGreaterEqual(row["metric"], 0, row)
        total = sum([(await b.stats())["requests"] for b in (b1, b2)])
        self.assertEqual(total, 80)

    async def test_sticky_queue_accounting(self) -> None:
        """A sticky request that leaves the queue, by its deadline or its client going away,
        is no longer counted as queued for its back end."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        dlba = await self.start(
            [b1, b2],
            pool={"policy": "cookie", "max_concurrent": 1, "queue_timeout": 0.5},
            https=False,
            status=True,
        )
        slow, timed_out, leaving = await self.clients(dlba.http, 3)
        cookie = [("Cookie", "SpServer=1")]
        slow.send(request("/slow?ms=2500", headers=cookie))
        await b1.wait_event("request")
        timed_out.send(request("/t", headers=cookie))
        leaving.send(request("/l", headers=cookie))
        rows = await self.backend_rows(dlba)
        self.assertEqual((rows[1]["queued"], rows[2]["queued"]), (2, 0), rows)
        await leaving.close()
        rows = await self.backend_rows(dlba)
        self.assertEqual(rows[1]["queued"], 1, rows)
        response = await timed_out.next_response(seconds=2)
        self.assertEqual(response.status, 503, response)
        self.assertTrue(retry_after_ok(response), response)
        rows = await self.backend_rows(dlba)
        self.assertEqual(rows[1]["queued"], 0, rows)
        self.assertEqual(rows[1]["open_connections"], 1, rows)
        self.assertEqual((await slow.next_response()).status, 200)
        rows = await self.backend_rows(dlba)
        self.assertEqual((rows[1]["queued"], rows[1]["open_connections"]), (0, 0), rows)
        self.assertEqual((await b1.stats())["targets"], ["/slow?ms=2500"])
        self.assertEqual((await b2.stats())["requests"], 0)
