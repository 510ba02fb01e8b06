"""Many clients at once: no errors, every answer whole."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred, gatherResults

from tests.e2e.backend import pattern
from tests.e2e.harness import E2ETestCase, RawClient, need, request, run


class LoadTests(E2ETestCase):
    async def test_concurrent_keepalive_clients(self) -> None:
        """100 client connections at once, 5 requests each, over 3 back ends."""
        backends = [self.backend(f"b{i}") for i in (1, 2, 3)]
        node = await self.start(backends)

        async def client_run(n: int) -> list[int]:
            client: RawClient = await self.connect(
                node.https if n % 4 == 0 else node.http, tls=n % 4 == 0
            )
            sizes = []
            for i in range(5):
                size = 1000 * (n % 7) + i
                client.send(request(f"/body?n={size}"))
                response = await client.next_response()
                self.assertEqual(response.status, 200)
                self.assertEqual(response.body, pattern(size))
                sizes.append(size)
            return sizes

        results = await gatherResults([Deferred.fromCoroutine(client_run(n)) for n in range(100)])
        self.assertEqual(len(results), 100)
        total = sum([(await b.stats())["requests"] for b in backends])
        self.assertEqual(total, 500)

    async def test_wrk(self) -> None:
        """wrk (if installed) for a second over 50 connections: no errors, no non-2xx."""
        need("wrk")
        node = await self.start([self.backend("b1"), self.backend("b2")])
        result = await run(
            ["wrk", "-t2", "-c50", "-d1s", "--timeout", "5s", f"http://127.0.0.1:{node.http}/w"]
        )
        self.assertEqual(result.code, 0, result.text)
        self.assertNotIn("Socket errors", result.stdout)
        self.assertNotIn("Non-2xx", result.stdout)
        match = re.search(r"(\d+) requests in", result.stdout)
        self.assertIsNotNone(match, result.stdout)
        assert match is not None
        self.assertGreater(int(match.group(1)), 100, result.stdout)
