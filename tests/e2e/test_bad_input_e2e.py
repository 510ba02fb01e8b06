"""Bad input, sent raw over TCP (and TLS): the status dlba answers with, that it closes the
connection where the framing is in doubt, and that nothing reaches the back end."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from twisted.internet.task import LoopingCall

from tests.e2e.harness import E2ETestCase, RawClient, reactor, request

LIMITS: dict[str, object] = {
    "max_header_bytes": 2048,
    "max_body_bytes": 1000,
    "header_timeout": 1.0,
    "body_timeout": 1.0,
    "min_body_rate": 100.0,
    # Above body_timeout: a body that stops must be the client's 408, not a 504.
    "backend_response_timeout": 2.0,
}

GOOD = b"GET /good HTTP/1.1\r\nHost: a.example\r\n"  # the start of a valid head


class BadInputTests(E2ETestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1], limits=LIMITS)

    async def refused(
        self,
        data: bytes,
        status: int,
        *,
        tls: bool = False,
        reached: int | None = 0,
    ) -> RawClient:
        """Send ``data``; expect ``status``, then the close; the back end must have seen
        ``reached`` request heads (None: not checked, for errors in a body, whose head may
        already be on its way: dlba streams) and no whole request."""
        port = self.node.https if tls else self.node.http
        client = await self.connect(port, tls=tls)
        client.send(data)
        response = await client.response()
        self.assertEqual(response.status, status, (response, client.data))
        self.assertEqual(response.header("connection"), "close", response)
        await client.when_closed(3)
        await self.assertNothingForwarded(reached)
        return client

    async def assertNothingForwarded(self, reached: int | None = 0) -> None:
        stats = await self.b1.stats()
        if reached is not None:
            self.assertEqual(stats["requests"], reached, stats)
        self.assertEqual(stats["completed"], 0, stats)

    # -- framing ---------------------------------------------------------------------------

    async def test_content_length_and_transfer_encoding(self) -> None:
        data = GOOD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        await self.refused(data.replace(b"GET", b"POST"), 400)

    async def test_duplicate_content_length(self) -> None:
        data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        await self.refused(data + b"hello!", 400)

    async def test_duplicate_equal_content_length(self) -> None:
        data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
        await self.refused(data + b"hello", 400)

    async def test_non_numeric_content_length(self) -> None:
        for value in (b"abc", b"-1", b"+5", b"0x5", b"5 5"):
            data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\nhello" % value
            await self.refused(data, 400)

    async def test_bad_chunk_size(self) -> None:
        head = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        await self.refused(head + b"zz\r\nhello\r\n0\r\n\r\n", 400, reached=None)

    async def test_obs_fold(self) -> None:
        await self.refused(GOOD + b"X-Folded: a\r\n b\r\n\r\n", 400)

    async def test_bare_lf(self) -> None:
        await self.refused(b"GET / HTTP/1.1\nHost: a\n\n", 400)

    async def test_bare_lf_in_one_header(self) -> None:
        await self.refused(GOOD + b"X-A: 1\nX-B: 2\r\n\r\n", 400)

    async def test_invalid_header_names(self) -> None:
        for line in (b"Bad Name: x", b"X(A): x", b"Host : a", b": empty"):
            await self.refused(GOOD + line + b"\r\n\r\n", 400)

    async def test_control_characters_in_header_value(self) -> None:
        for value in (b"a\x01b", b"a\x00b", b"a\x7fb", b"a\rb"):
            await self.refused(GOOD + b"X-A: " + value + b"\r\n\r\n", 400)

    # -- limits ------------------------------------------------------------------------------

    async def test_head_over_max_header_bytes(self) -> None:
        await self.refused(GOOD + b"X-Big: " + b"a" * 3000 + b"\r\n\r\n", 431)

    async def test_many_headers_over_max_header_bytes(self) -> None:
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(60))
        await self.refused(GOOD + lines + b"\r\n", 431)

    async def test_content_length_over_max_body_bytes(self) -> None:
        await self.refused(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413)

    async def test_chunked_body_over_max_body_bytes(self) -> None:
        head = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"100\r\n" + b"c" * 256 + b"\r\n" for _ in range(5))
        await self.refused(head + body + b"0\r\n\r\n", 413, reached=None)

    def trickle(self, client: RawClient, data: Iterator[bytes]) -> Callable[[], None]:
        """Send ``client`` the next piece of ``data`` every 0.2 s, until it is closed or the
        returned function is called (the test's cleanup calls it too)."""

        def one_piece() -> None:
            if not client.closed:
                client.send(next(data))

        loop = LoopingCall(one_piece)
        loop.clock = reactor

        def stop() -> None:
            if loop.running:
                loop.stop()

        self.addCleanup(stop)
        loop.start(0.2)
        return stop

    async def test_slowloris_head(self) -> None:
        """A head trickled a byte every 0.2 s, never finishing within header_timeout (1 s)."""
        client = await self.connect(self.node.http)
        head = GOOD + b"X-Slow: " + b"s" * 100 + b"\r\n\r\n"
        stop = self.trickle(client, (head[i : i + 1] for i in range(len(head))))
        response = await client.response(seconds=5)
        self.assertEqual(response.status, 408)
        await client.when_closed(5)
        stop()
        await self.assertNothingForwarded()

    async def test_body_too_slow(self) -> None:
        """A body that stops arriving for longer than body_timeout (1 s) gets 408."""
        client = await self.connect(self.node.http)
        client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        response = await client.response(seconds=5)
        self.assertEqual(response.status, 408)
        await client.when_closed(5)
        stats = await self.b1.stats()
        self.assertEqual(stats["completed"], 0, stats)

    async def test_body_trickled_below_min_body_rate(self) -> None:
        """A byte every 0.2 s: never 1 s of silence, but 5 B/s against min_body_rate 100."""
        client = await self.connect(self.node.http)
        client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n")
        started = reactor.seconds()
        stop = self.trickle(client, itertools.repeat(b"x"))
        response = await client.response(seconds=10)
        self.assertEqual(response.status, 408)
        await client.when_closed(5)
        stop()
        # body_timeout (1 s) + 1/100 s a byte received, checked every 0.25 s: not minutes.
        self.assertLess(reactor.seconds() - started, 3.0)
        stats = await self.b1.stats()
        self.assertEqual(stats["completed"], 0, stats)

    async def test_backend_hangs(self) -> None:
        """A back end that never answers: 504 after backend_response_timeout (2 s)."""
        response, _ = await self.exchange(self.node.http, request("/hang"))
        self.assertEqual(response.status, 504)
        self.assertEqual((await self.b1.stats())["requests"], 1)

    # -- the request line and Host -------------------------------------------------------------

    async def test_http11_without_host(self) -> None:
        await self.refused(b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400)

    async def test_two_host_headers(self) -> None:
        await self.refused(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400)

    async def test_invalid_host(self) -> None:
        for host in (b"a b", b"a/b", b"[::1", b"a@b", b"a:99999", b"a:x"):
            await self.refused(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400)

    async def test_http2_request_line(self) -> None:
        await self.refused(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)

    async def test_transfer_encoding_in_http10(self) -> None:
        data = b"POST /p HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        await self.refused(data, 400)

    async def test_connect(self) -> None:
        await self.refused(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 501)

    async def test_fragment_in_target(self) -> None:
        await self.refused(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400)

    async def test_bad_characters_in_target(self) -> None:
        for target in (b"/a<b>", b"/a\x7fb", b"/%zz", b'/a"b', b"/a\\b", b"a/b"):
            await self.refused(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400)

    # -- over TLS -----------------------------------------------------------------------------

    async def test_tls_content_length_and_transfer_encoding(self) -> None:
        data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        data += b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        await self.refused(data, 400, tls=True)

    async def test_tls_obs_fold(self) -> None:
        await self.refused(GOOD + b"X-Folded: a\r\n\tb\r\n\r\n", 400, tls=True)

    async def test_tls_without_host(self) -> None:
        await self.refused(b"GET / HTTP/1.1\r\n\r\n", 400, tls=True)

    async def test_tls_head_over_max_header_bytes(self) -> None:
        await self.refused(GOOD + b"X-Big: " + b"a" * 3000 + b"\r\n\r\n", 431, tls=True)
