"""Client connections: WebSocket tunnels, pipelining, and closing (over TCP and TLS)."""

from __future__ import annotations

import base64
import hashlib
import os

from tests.e2e.backend import WS_GUID
from tests.e2e.harness import E2ETestCase, RawClient, request


def handshake(key: bytes, path: str = "/ws") -> bytes:
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )


class WebSocketTests(E2ETestCase):
    async def tunnel(self, tls: bool, early: bytes = b"") -> None:
        port = self.node.https if tls else self.node.http
        client = await self.connect(port, tls=tls)
        key = base64.b64encode(os.urandom(16))
        # ``early`` rides in the same write as the handshake, before any 101.
        client.send(handshake(key) + early)
        response = await client.response()
        self.assertEqual(response.status, 101, response)
        self.assertEqual((response.header("upgrade") or "").lower(), "websocket")
        self.assertIn("upgrade", (response.header("connection") or "").lower())
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.assertEqual(response.header("sec-websocket-accept"), accept)
        head_end = client.data.index(b"\r\n\r\n") + 4
        sent = early
        for message in (b"\x81\x05hello", bytes(range(256)) * 40, b"\x00\xff\r\n\r\n"):
            client.send(message)
            sent += message
            await client.when(
                lambda sent=sent: client.data[head_end:] == sent or None,  # type: ignore[misc]
                f"{len(sent)} bytes echoed through the tunnel",
            )
        stats = await self.b1.stats()
        self.assertEqual(stats["targets"], ["/ws"])

    async def test_websocket_tunnel(self) -> None:
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])
        await self.tunnel(tls=False)

    async def test_websocket_tunnel_tls(self) -> None:
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])
        await self.tunnel(tls=True)

    async def test_websocket_bytes_sent_with_the_handshake(self) -> None:
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])
        await self.tunnel(tls=False, early=b"early bytes")

    async def test_websocket_closed_by_the_client(self) -> None:
        """Closing the client's side closes the back end's side of the tunnel."""
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])
        client = await self.connect(self.node.http)
        client.send(handshake(base64.b64encode(os.urandom(16))))
        self.assertEqual((await client.response()).status, 101)
        await client.close()
        await self.b1.wait_event("closed", 1)


class PipeliningTests(E2ETestCase):
    async def test_two_requests_in_one_write(self) -> None:
        """The first is slow, the second quick (and on another back end): answers in order."""
        backends = [self.backend("b1"), self.backend("b2")]
        node = await self.start(backends)
        client = await self.connect(node.http)
        client.send(request("/slow?ms=400") + request("/echo"))
        first, second = await client.responses(2)
        self.assertEqual(first.body, b"slow " + first.header("x-backend").encode())  # type: ignore[union-attr]
        self.assertEqual(second.json()["target"], "/echo")
        self.assertNotEqual(first.header("x-backend"), second.header("x-backend"))
        self.assertFalse(client.closed)

    async def test_many_pipelined_with_bodies_and_head(self) -> None:
        node = await self.start([self.backend("b1")])
        client = await self.connect(node.http)
        data = (
            request("/upload", method="POST", body=b"one")
            + request("/body?n=5", method="HEAD")
            + b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3\r\ntwo\r\n0\r\n\r\n"
            + request("/chunked?n=100&size=30")
            + request("/body?n=7", headers=[("Connection", "close")])
        )
        client.send(data)
        await client.when_closed()
        answers = await client.responses(5, heads=[False, True, False, False, False])
        self.assertEqual([a.status for a in answers], [200] * 5)
        self.assertEqual(answers[0].json()["length"], 3)
        self.assertEqual(answers[1].body, b"")
        self.assertEqual(answers[2].json()["sha256"], hashlib.sha256(b"two").hexdigest())
        self.assertEqual(len(answers[3].body), 100)
        self.assertEqual(len(answers[4].body), 7)
        self.assertEqual(answers[4].header("connection"), "close")

    async def test_pipelined_after_a_bad_request(self) -> None:
        """A good request, then a bad one: the good one is answered, then 400 and close;
        nothing after the bad one is read."""
        b1 = self.backend("b1")
        node = await self.start([b1])
        client = await self.connect(node.http)
        bad = b"GET /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        client.send(request("/slow?ms=200") + bad + request("/never"))
        await client.when_closed()
        first, second = await client.responses(2)
        self.assertEqual((first.status, second.status), (200, 400))
        self.assertEqual((await b1.stats())["targets"], ["/slow?ms=200"])


class ClosingTests(E2ETestCase):
    """dlba closes the client connection when it says so, over TCP and over TLS."""

    async def closes(self, tls: bool, data: bytes) -> RawClient:
        port = self.node.https if tls else self.node.http
        client = await self.connect(port, tls=tls)
        client.send(data)
        await client.when_closed(3)
        await client.response()
        return client

    async def test_connection_close_request(self) -> None:
        self.node = await self.start([self.backend("b1")])
        client = await self.closes(False, request("/", headers=[("Connection", "close")]))
        self.assertEqual((await client.response()).header("connection"), "close")

    async def test_connection_close_request_tls(self) -> None:
        self.node = await self.start([self.backend("b1")])
        await self.closes(True, request("/", headers=[("Connection", "close")]))

    async def test_http10_close_delimited_tls(self) -> None:
        """Over TLS an HTTP/1.0 client learns the end of a chunked answer by the close."""
        self.node = await self.start([self.backend("b1")])
        client = await self.closes(True, b"GET /chunked?n=3000 HTTP/1.0\r\nHost: a\r\n\r\n")
        self.assertEqual(len((await client.response()).body), 3000)

    async def idle_closed(self, tls: bool) -> None:
        self.node = await self.start([self.backend("b1")], limits={"idle_timeout": 1.0})
        port = self.node.https if tls else self.node.http
        client = await self.connect(port, tls=tls)
        client.send(request("/"))
        await client.response()
        await client.when_closed(3)

    async def test_idle_client_closed_after_idle_timeout(self) -> None:
        await self.idle_closed(tls=False)

    async def test_idle_client_closed_after_idle_timeout_tls(self) -> None:
        await self.idle_closed(tls=True)
