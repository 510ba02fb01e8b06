"""Odd but valid requests, back ends that misbehave, policies and connection limits."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from twisted.internet.defer import DeferredList

from tests.e2e.backend import pattern
from tests.e2e.harness import (
    Backend,
    E2ETestCase,
    PoolSpec,
    parse_responses,
    request,
)

HOST_ADDED = (
    "dlba bug: an HTTP/1.0 request without Host is forwarded as HTTP/1.1 without Host, "
    "which RFC 9112 §3.2 forbids (send an empty Host)"
)
HALF_CLOSE = (
    "dlba bug: a client that half-closes after its request (shutdown(SHUT_WR), nc -N) gets "
    "no answer: FrontProtocol is not an IHalfCloseableProtocol"
)


def named(answer: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in answer["headers"] if n.lower() == name]


class RequestFormTests(E2ETestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])

    async def test_absolute_form_target(self) -> None:
        """RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host."""
        data = b"GET http://other.example:81/echo?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n"
        response, _ = await self.exchange(self.node.http, data)
        answer = response.json()
        self.assertEqual(answer["target"], "/echo?q=1")
        self.assertEqual(named(answer, "host"), ["other.example:81"])

    async def test_asterisk_options(self) -> None:
        response, _ = await self.exchange(self.node.http, request("*", method="OPTIONS"))
        self.assertEqual(response.status, 200)
        self.assertEqual((await self.b1.stats())["targets"], ["*"])

    async def test_http10_without_host_reaches_the_back_end_with_a_host(self) -> None:
        response, _ = await self.exchange(self.node.http, b"GET /echo HTTP/1.0\r\n\r\n")
        answer = response.json()
        self.assertEqual(answer["version"], "HTTP/1.1")
        self.assertEqual(len(named(answer, "host")), 1, answer["headers"])

    async def test_h2c_upgrade_is_ignored(self) -> None:
        """An upgrade dlba does not tunnel is dropped; the request is answered as usual and
        the connection stays HTTP/1.1."""
        client = await self.connect(self.node.http)
        client.send(
            request(
                "/echo",
                headers=[
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
                ],
            )
            + request("/next")
        )
        first, second = await client.responses(2)
        self.assertEqual((first.status, second.status), (200, 200))
        names = {n.lower() for n, _ in first.json()["headers"]}
        self.assertEqual(names & {"upgrade", "http2-settings", "connection"}, set())

    async def test_no_content_then_next_request(self) -> None:
        client = await self.connect(self.node.http)
        client.send(request("/status?code=204") + request("/status?code=304") + request("/x"))
        answers = await client.responses(3)
        self.assertEqual([a.status for a in answers], [204, 304, 200])
        self.assertEqual(answers[2].body, b"backend b1\n")

    async def test_half_closed_client_is_answered(self) -> None:
        client = await self.connect(self.node.http)
        client.send(request("/half"))
        assert client.transport is not None
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        response = await client.response(seconds=5)
        self.assertEqual(response.status, 200)


class BackendFaultTests(E2ETestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])

    async def broken_answer(self, data: bytes) -> None:
        """The back end breaks mid-answer: the client must be able to tell the answer is
        not whole (no complete framing, and no clean close), and dlba serves on."""
        client = await self.connect(self.node.http)
        client.send(data)
        await client.when_closed()
        found, _ = parse_responses(client.data, closed=False)
        self.assertEqual(found, [], client.data)
        self.assertFalse(client.clean_close, client.data)
        response, _ = await self.exchange(self.node.http, request("/after"))
        self.assertEqual(response.status, 200)

    async def test_truncated_length_answer(self) -> None:
        await self.broken_answer(request("/truncate?n=100000&send=5000"))

    async def test_truncated_chunked_answer(self) -> None:
        await self.broken_answer(request("/truncate?n=100000&send=5000&chunked=1"))

    async def test_truncated_answer_to_http10_client(self) -> None:
        """An HTTP/1.0 client reads to the close: only an abort (not a FIN) says "broken"."""
        client = await self.connect(self.node.http)
        client.send(b"GET /truncate?n=100000&send=5000&chunked=1 HTTP/1.0\r\nHost: a\r\n\r\n")
        await client.when_closed()
        self.assertFalse(client.clean_close, client.data)

    async def test_garbage_answer(self) -> None:
        response, _ = await self.exchange(self.node.http, request("/garbage"))
        self.assertEqual(response.status, 502)

    async def test_unasked_protocol_switch(self) -> None:
        response, _ = await self.exchange(self.node.http, request("/switch"))
        self.assertEqual(response.status, 502)


class PolicyTests(E2ETestCase):
    async def test_weights(self) -> None:
        b1, b2 = self.backend("b1"), self.backend("b2")
        node = await self.start(
            pools=[PoolSpec([b1, b2], backend_options=[{"weight": 3}, {"weight": 1}])]
        )
        client = await self.connect(node.http)
        seen: Counter[str | None] = Counter()
        for i in range(8):
            client.send(request(f"/w{i}"))
            seen[(await client.next_response()).header("x-backend")] += 1
        self.assertEqual(seen, {"b1": 6, "b2": 2})

    async def test_disabled_backend_is_never_used(self) -> None:
        b1, b2 = self.backend("b1"), self.backend("b2")
        node = await self.start(
            pools=[PoolSpec([b1, b2], backend_options=[{"enabled": False}, {}])]
        )
        client = await self.connect(node.http)
        for i in range(4):
            client.send(request(f"/d{i}"))
            self.assertEqual((await client.next_response()).header("x-backend"), "b2")
        self.assertEqual((await b1.stats())["connections"], 0)

    async def test_least_load(self) -> None:
        """While one back end holds a slow request, least-load sends the rest elsewhere."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        node = await self.start([b1, b2], pool={"policy": "least-load"})
        slow = await self.connect(node.http)
        slow.send(request("/slow?ms=1500"))
        busy = await self.first_request(b1, b2)
        quick = await self.connect(node.http)
        for i in range(4):
            quick.send(request(f"/q{i}"))
            response = await quick.next_response()
            self.assertNotEqual(response.header("x-backend"), busy)
        self.assertEqual((await slow.response(seconds=5)).header("x-backend"), busy)

    async def first_request(self, *backends: Backend) -> str:
        """The name of the first of ``backends`` to receive a request."""
        waits = [b.wait_event("request", 1) for b in backends]
        _, index = await DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
        for w in waits:
            w.addErrback(lambda _: None)
            w.cancel()
        return backends[index].name


class UploadRerouteTests(E2ETestCase):
    async def test_post_body_goes_to_a_live_back_end(self) -> None:
        """A back end refusing connections: the request, body and all, goes to another."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        node = await self.start([b1, b2])
        await b1.child.kill()
        body = pattern(30000)
        for i in range(4):
            response, _ = await self.exchange(
                node.http, request(f"/upload?i={i}", method="POST", body=body)
            )
            self.assertEqual(response.status, 200, response)
            answer = response.json()
            self.assertEqual(answer["backend"], "b2")
            self.assertEqual(answer["sha256"], hashlib.sha256(body).hexdigest())


class ConnectionLimitTests(E2ETestCase):
    async def test_max_client_connections(self) -> None:
        node = await self.start([self.backend("b1")], limits={"max_client_connections": 2})
        clients = [await self.connect(node.http) for _ in range(2)]
        for c in clients:
            c.send(request("/in"))
            self.assertEqual((await c.next_response()).status, 200)
        third = await self.connect(node.http)
        third.send(request("/third"))
        await third.when_closed()
        self.assertEqual(third.data, b"")
        for c in clients:
            c.send(request("/still"))
            self.assertEqual((await c.next_response()).status, 200)


class AbandonedRequestTests(E2ETestCase):
    """A request that ends badly on the client's side must not leave its back-end
    connection in the pool half-used: the next request would be read as its body."""

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1])
        # A pooled connection to the back end, so the next head is sent on it at once.
        response, _ = await self.exchange(self.node.http, request("/warm"))
        self.assertEqual(response.status, 200)

    async def assertServesOn(self, completed: int) -> None:
        for i in range(3):
            response, _ = await self.exchange(self.node.http, request(f"/next{i}"))
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.body, b"backend b1\n")
        stats = await self.b1.stats()
        self.assertEqual(stats["completed"], completed + 3, stats)

    async def test_bad_chunk_after_good_ones(self) -> None:
        client = await self.connect(self.node.http)
        client.send(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await self.b1.wait_event("request", 2)  # the head is at the back end
        client.send(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await client.response()
        self.assertEqual(response.status, 400)
        await client.when_closed(3)
        await self.assertServesOn(completed=1)
        self.assertNotIn("/smuggled", (await self.b1.stats())["targets"])

    async def test_client_gone_mid_upload(self) -> None:
        client = await self.connect(self.node.http)
        client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await self.b1.wait_event("request", 2)
        await client.close()
        await self.b1.wait_event("closed", 1)  # dlba cut the back end's connection
        await self.assertServesOn(completed=1)

    async def test_client_gone_while_waiting(self) -> None:
        client = await self.connect(self.node.http)
        client.send(request("/slow?ms=3000"))
        await self.b1.wait_event("request", 2)
        await client.close()
        await self.b1.wait_event("closed", 1)
        await self.assertServesOn(completed=2)
