"""Back ends that die: requests go to the live ones; with none left, 503 and Retry-After."""

from __future__ import annotations

from tests.e2e.harness import E2ETestCase, request


class RerouteTests(E2ETestCase):
    async def test_kill_one_then_both(self) -> None:
        b1, b2 = self.backend("b1"), self.backend("b2")
        dlba = await self.start([b1, b2])
        client = await self.connect(dlba.http)
        seen = set()
        for i in range(4):  # both back ends answer, and each has a pooled connection
            client.send(request(f"/warm{i}"))
            response = await client.next_response()
            self.assertEqual(response.status, 200)
            seen.add(response.header("x-backend"))
        self.assertEqual(seen, {"b1", "b2"})

        await b2.child.kill()
        for i in range(10):
            client.send(request(f"/one-left{i}"))
            response = await client.next_response()
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.header("x-backend"), "b1")
        for i in range(4):  # new client connections too
            response, _ = await self.exchange(dlba.http, request(f"/new{i}"))
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.header("x-backend"), "b1")

        await b1.child.kill()
        for i in range(3):
            client.send(request(f"/none-left{i}"))
            response = await client.next_response()
            self.assertEqual(response.status, 503, response)
            retry_after = response.header("retry-after")
            self.assertIsNotNone(retry_after, response)
            assert retry_after is not None
            self.assertTrue(retry_after.isdigit() and int(retry_after) >= 1, retry_after)
        response, _ = await self.exchange(dlba.https, request("/tls-none-left"), tls=True)
        self.assertEqual(response.status, 503, response)
        self.assertIsNotNone(response.header("retry-after"))

    async def test_dead_from_the_start(self) -> None:
        """A back end that was never up is skipped at once; the live one answers all."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        dlba = await self.start([b1, b2])
        await b1.child.kill()
        for i in range(6):
            response, _ = await self.exchange(dlba.http, request(f"/r{i}"))
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.header("x-backend"), "b2")
