"""Back-end connection reuse: the pool of persistent connections, and back ends that close."""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults

from tests.e2e.harness import E2ETestCase, RawClient, request


async def sequential(client: RawClient, count: int, prefix: str) -> list[int]:
    """``count`` requests one after another on one keep-alive connection: their statuses."""
    statuses = []
    for i in range(count):
        client.send(request(f"/{prefix}/{i}"))
        response = await client.next_response()
        statuses.append(response.status)
        if response.header("connection") == "close":
            break
    return statuses


class PoolTests(E2ETestCase):
    async def test_thousand_requests_few_backend_connections(self) -> None:
        """1,000 requests on 4 keep-alive client connections reach each of 2 back ends
        over at most 4 connections (no more than were ever in use at once)."""
        backends = [self.backend("b1"), self.backend("b2")]
        dlba = await self.start(backends)
        clients = [await self.connect(dlba.http) for _ in range(4)]
        runs = [sequential(c, 250, f"c{n}") for n, c in enumerate(clients)]
        results = await gatherResults([Deferred.fromCoroutine(r) for r in runs])
        for statuses in results:
            self.assertEqual(statuses, [200] * 250)
        total = 0
        for b in backends:
            stats = await b.stats()
            total += stats["requests"]
            self.assertLessEqual(stats["connections"], 4, stats["connections"])
            self.assertGreater(stats["requests"], 100)
        self.assertEqual(total, 1000)

    async def test_backend_closing_idle_connections(self) -> None:
        """A back end that closes idle connections after 0.2 s: a request after each such
        close still succeeds (dlba notices, or retries on a fresh connection)."""
        backend = self.backend("b1", idle_close=0.2)
        dlba = await self.start([backend])
        client = await self.connect(dlba.http)
        for i in range(4):
            client.send(request(f"/r{i}"))
            response = await client.next_response()
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.header("x-backend"), "b1")
            # The back end closes the pooled connection before the next request.
            await backend.wait_event("idle-close", i + 1)
        stats = await backend.stats()
        self.assertEqual(stats["requests"], 4)
        self.assertEqual(stats["connections"], 4)

    async def test_backend_closing_idle_connections_fresh_clients(self) -> None:
        """The same with a new client connection per request (so no client state helps)."""
        backend = self.backend("b1", idle_close=0.2)
        dlba = await self.start([backend])
        for i in range(3):
            response, _ = await self.exchange(dlba.http, request(f"/r{i}"))
            self.assertEqual(response.status, 200, response)
            await backend.wait_event("idle-close", i + 1)

    async def test_backend_always_closing(self) -> None:
        """A back end answering every request with Connection: close: the client never
        sees an error and its own connection stays open."""
        backend = self.backend("b1", always_close=True)
        dlba = await self.start([backend])
        client = await self.connect(dlba.http)
        statuses = await sequential(client, 20, "c")
        self.assertEqual(statuses, [200] * 20)
        self.assertFalse(client.closed)
        stats = await backend.stats()
        self.assertEqual(stats["requests"], 20)
        self.assertEqual(stats["connections"], 20)

    async def test_reused_connection_closed_unanswered_retried(self) -> None:
        """A pooled connection the back end closes without answering (the keep-alive race):
        a GET is sent again on a fresh connection; a POST, which may have had effects, is not
        and gets 502."""
        backend = self.backend("b1", drop_reused=True)
        dlba = await self.start([backend])
        client = await self.connect(dlba.http)
        client.send(request("/first"))
        self.assertEqual((await client.next_response()).status, 200)
        client.send(request("/second"))
        response = await client.next_response()
        self.assertEqual(response.status, 200, response)
        await backend.wait_event("dropped", 1)
        stats = await backend.stats()
        self.assertEqual(stats["completed"], 2)
        self.assertEqual(stats["targets"], ["/first", "/second", "/second"])

        client.send(request("/third", method="POST", body=b"x" * 10))
        response = await client.next_response()
        self.assertEqual(response.status, 502, response)
        stats = await backend.stats()
        self.assertEqual(stats["completed"], 2)
