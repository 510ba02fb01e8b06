"""What dlba forwards: X-Forwarded-*, Forwarded, Via, Host; never hop-by-hop headers."""

from __future__ import annotations

from typing import Any

from tests.e2e.harness import E2ETestCase, request

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


def named(answer: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in answer["headers"] if n.lower() == name]


class ForwardedTests(E2ETestCase):
    async def echo(self, tls: bool, headers: list[tuple[str, str]]) -> dict[str, Any]:
        port = self.node.https if tls else self.node.http
        data = request("/echo?x=1", host="shop.example:8443", headers=headers)
        response, _ = await self.exchange(port, data, tls=tls)
        self.assertEqual(response.status, 200, response)
        answer: dict[str, Any] = response.json()
        return answer

    async def test_forwarding_headers(self) -> None:
        self.node = await self.start([self.backend("b1")])
        for tls, proto in ((False, "http"), (True, "https")):
            answer = await self.echo(
                tls,
                [
                    ("X-Forwarded-For", "203.0.113.9"),
                    ("X-Forwarded-Proto", "gopher"),  # the client's word is not taken
                    ("Via", "1.0 corp-proxy"),
                ],
            )
            self.assertEqual(answer["target"], "/echo?x=1")
            self.assertEqual(named(answer, "host"), ["shop.example:8443"])
            self.assertEqual(named(answer, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"])
            self.assertEqual(named(answer, "x-forwarded-proto"), [proto])
            self.assertEqual(
                named(answer, "forwarded"),
                [f'for=127.0.0.1;proto={proto};host="shop.example:8443"'],
            )
            via = ", ".join(named(answer, "via"))
            self.assertEqual(via, "1.0 corp-proxy, 1.1 dlba")

    async def test_without_client_forwarding_headers(self) -> None:
        self.node = await self.start([self.backend("b1")])
        answer = await self.echo(False, [])
        self.assertEqual(named(answer, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(named(answer, "via"), ["1.1 dlba"])

    async def test_several_x_forwarded_for_lines(self) -> None:
        self.node = await self.start([self.backend("b1")])
        answer = await self.echo(
            False, [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")]
        )
        self.assertEqual(
            named(answer, "x-forwarded-for"), ["198.51.100.1, 198.51.100.2, 127.0.0.1"]
        )

    async def test_hop_by_hop_not_forwarded(self) -> None:
        self.node = await self.start([self.backend("b1")])
        answer = await self.echo(
            False,
            [
                ("Connection", "keep-alive, X-Secret, x-other"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Secret", "s3cr3t"),
                ("X-Other", "o"),
                ("X-Kept", "yes"),
            ],
        )
        names = {n.lower() for n, _ in answer["headers"]}
        self.assertEqual(names & (HOP_BY_HOP - {"connection"}), set(), answer["headers"])
        self.assertNotIn("x-secret", names)
        self.assertNotIn("x-other", names)
        self.assertEqual(named(answer, "x-kept"), ["yes"])
        # dlba may say Connection itself (close, keep-alive), never pass the client's on.
        for value in named(answer, "connection"):
            self.assertIn(value.lower(), ("close", "keep-alive"), answer["headers"])

    async def test_hop_by_hop_not_forwarded_in_answers(self) -> None:
        """The back end's Connection, Keep-Alive and the headers it names stay at dlba."""
        self.node = await self.start([self.backend("b1")])
        response, _ = await self.exchange(self.node.http, request("/close"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("x-backend"), "b1")
        # The back end said close; the client's connection is not dlba's to close for it.
        self.assertNotEqual(response.header("connection"), "close", response.headers)
        self.assertEqual(response.headers_named("via"), ["1.1 dlba"])
