"""Bodies through dlba: big uploads and downloads, HEAD, 100-continue, HTTP/1.0 clients,
and the back-end response timeout while bodies are still moving."""

from __future__ import annotations

import hashlib
import json
import os

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.e2e.backend import pattern
from tests.e2e.harness import E2ETestCase, reactor, request

MiB = 1024 * 1024


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


class StreamingTests(E2ETestCase):
    async def start_one(self, **limits: object) -> None:
        self.b1 = self.backend("b1")
        self.node = await self.start([self.b1], limits=limits or None)

    async def upload(self, *args: str) -> dict[str, object]:
        body = os.urandom(5 * MiB)
        path = self.write("upload.bin", body)
        result = await self.curl(
            "--data-binary",
            f"@{path}",
            "-H",
            "Content-Type: application/octet-stream",
            *args,
            f"http://127.0.0.1:{self.node.http}/upload",
        )
        self.assertEqual(result.code, 0, result.text)
        answer: dict[str, object] = json.loads(result.out)
        self.assertEqual(answer["length"], len(body))
        self.assertEqual(answer["sha256"], hashlib.sha256(body).hexdigest())
        return answer

    async def test_upload_5mib_content_length(self) -> None:
        await self.start_one()
        answer = await self.upload()
        headers = dict((n.lower(), v) for n, v in answer["headers"])  # type: ignore[attr-defined]
        self.assertEqual(headers["content-length"], str(5 * MiB))

    async def test_upload_5mib_chunked(self) -> None:
        await self.start_one()
        answer = await self.upload("-H", "Transfer-Encoding: chunked")
        headers = dict((n.lower(), v) for n, v in answer["headers"])  # type: ignore[attr-defined]
        self.assertEqual(headers["transfer-encoding"], "chunked")

    async def test_download_20mib(self) -> None:
        await self.start_one()
        n = 20 * MiB
        expected = hashlib.sha256(pattern(n)).hexdigest()
        for url, extra in (
            (f"http://127.0.0.1:{self.node.http}/body?n={n}", []),
            (
                f"https://a.example:{self.node.https}/body?n={n}",
                ["-k", "--resolve", f"a.example:{self.node.https}:127.0.0.1"],
            ),
        ):
            path = self.path("download.bin")
            result = await self.curl(*extra, "-o", path, "-w", "%{http_code}", url)
            self.assertEqual((result.code, result.out), (0, b"200"), result.text)
            self.assertEqual(os.path.getsize(path), n)
            self.assertEqual(sha256_file(path), expected)

    async def test_chunked_answer(self) -> None:
        await self.start_one()
        response, _ = await self.exchange(self.node.http, request("/chunked?n=300000&size=7000"))
        self.assertEqual(response.status, 200)
        self.assertTrue(response.chunked)
        self.assertEqual(response.body, pattern(300000))

    async def test_head_then_get_on_one_connection(self) -> None:
        await self.start_one()
        client = await self.connect(self.node.http)
        for path in ("/body?n=1000", "/chunked?n=5000"):
            client.send(request(path, method="HEAD"))
            response = await client.next_response(head=True)
            self.assertEqual(response.status, 200)
            if "body" in path:
                self.assertEqual(response.header("content-length"), "1000")
            client.send(request("/after"))
            response = await client.next_response()
            # Had the HEAD answer carried a body, this would not parse as an answer.
            self.assertEqual(response.status, 200, response)
            self.assertEqual(response.body, b"backend b1\n")
        self.assertEqual(bytes(client.unparsed), b"")
        self.assertFalse(client.closed)

    async def test_expect_100_continue_raw(self) -> None:
        """The head alone first; the body only after dlba relays the back end's 100."""
        await self.start_one()
        client = await self.connect(self.node.http)
        client.send(
            b"POST /continue HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10\r\n\r\n"
        )
        await client.when(lambda: b"HTTP/1.1 100 " in client.data or None, "100 Continue")
        client.send(b"0123456789")
        found = await client.responses(1)
        self.assertEqual([r.status for r in found], [100, 200])
        answer = found[-1].json()
        self.assertEqual((answer["length"], answer["expect"]), (10, True))

    async def test_expect_100_continue_curl(self) -> None:
        """curl waits up to --expect100-timeout for the 100; it must come at once."""
        await self.start_one()
        path = self.write("body.bin", b"b" * 5000)
        result = await self.curl(
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            f"@{path}",
            "-w",
            "##%{http_code} %{time_total}",
            f"http://127.0.0.1:{self.node.http}/continue",
        )
        self.assertEqual(result.code, 0, result.text)
        body, _, tail = result.out.partition(b"##")
        code, seconds = tail.split()
        self.assertEqual(code, b"200")
        self.assertLess(float(seconds), 5.0)
        answer = json.loads(body)
        self.assertEqual((answer["length"], answer["expect"]), (5000, True))

    async def test_chunked_answer_to_http10_client(self) -> None:
        """An HTTP/1.0 client cannot read chunks: the answer is close-delimited and whole."""
        await self.start_one()
        client = await self.connect(self.node.http)
        client.send(b"GET /chunked?n=50000&size=1000 HTTP/1.0\r\nHost: a\r\n\r\n")
        await client.when_closed()
        response = await client.response()
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.header("transfer-encoding"))
        self.assertEqual(response.body, pattern(50000))

    async def test_http10_keepalive(self) -> None:
        """An HTTP/1.0 client asking for keep-alive gets it for a length-delimited answer."""
        await self.start_one()
        client = await self.connect(self.node.http)
        for _ in range(2):
            client.send(b"GET /body?n=10 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            response = await client.next_response()
            self.assertEqual(response.status, 200)
            self.assertEqual(response.body, pattern(10))
            self.assertEqual(response.header("connection"), "keep-alive")

    async def test_slow_upload_is_not_a_backend_timeout(self) -> None:
        """backend_response_timeout is the back end's time to answer: a client that takes
        longer than that to send its body (each gap well within body_timeout) is no 504."""
        await self.start_one(backend_response_timeout=1.0, body_timeout=5.0)
        client = await self.connect(self.node.http)
        client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        for piece in b"abcde":
            await pause(0.4)
            client.send(bytes([piece]))
        response = await client.response()
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["length"], 5)

    async def test_dripping_answer_is_not_cut(self) -> None:
        """An answer that started in time and keeps coming (a chunk every 0.3 s, 1.8 s in
        all) is not cut at backend_response_timeout (1 s)."""
        await self.start_one(backend_response_timeout=1.0)
        response, _ = await self.exchange(self.node.http, request("/drip?chunks=6&ms=300"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"".join(b"drip%d\n" % i for i in range(6)))


def pause(seconds: float) -> Deferred[None]:
    """A pause that is part of what is tested (a slow client), not a synchronisation."""
    return deferLater(reactor, seconds)
