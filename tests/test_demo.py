"""The demo back end: its usual answer, and the slow download (``/download?bytes=N&rate=R``),
served by a real ``Site`` over a memory transport with a fake clock."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dlba.demo import (
    DOWNLOAD_MAX_BYTES,
    DOWNLOAD_MAX_SECONDS,
    DOWNLOAD_TICK,
    demo_site,
    download_body,
    download_request,
)


def split(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class DownloadBodyTests(SynchronousTestCase):
    def test_lines_hold_their_offsets(self) -> None:
        self.assertEqual(download_body(0, 32), b"000000000000000\n000000000000016\n")

    def test_any_slice_is_the_same_bytes(self) -> None:
        whole = download_body(0, 1000)
        self.assertEqual(len(whole), 1000)
        for offset, length in [(0, 1), (5, 30), (15, 2), (16, 16), (999, 1), (333, 444)]:
            self.assertEqual(download_body(offset, length), whole[offset : offset + length])
        self.assertEqual(download_body(10, 0), b"")


class DownloadRequestTests(SynchronousTestCase):
    def test_size_and_rate(self) -> None:
        self.assertEqual(download_request({b"bytes": [b"1000"], b"rate": [b"500"]}), (1000, 500.0))

    def test_refused(self) -> None:
        for args in [
            {},
            {b"bytes": [b"x"]},
            {b"bytes": [b"-1"]},
            {b"bytes": [b"%d" % (DOWNLOAD_MAX_BYTES + 1)]},
            {b"bytes": [b"10"], b"rate": [b"0"]},
            {b"bytes": [b"10"], b"rate": [b"nan"]},
            {b"bytes": [b"10"], b"rate": [b"inf"]},
            {b"bytes": [b"%d" % (DOWNLOAD_MAX_SECONDS * 100 + 100)], b"rate": [b"100"]},
        ]:
            self.assertIsInstance(download_request(args), str, args)


class DemoSiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = demo_site(2, self.clock)
        self.transport = StringTransport()
        self.channel = self.site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        self.lost = False

    def tearDown(self) -> None:
        self.lose()
        self.clock.advance(DOWNLOAD_MAX_SECONDS)  # any timer left would fire into nothing

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.channel.connectionLost(Failure(ConnectionDone()))

    def get(self, path: bytes) -> None:
        self.channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: web\r\n\r\n")

    def test_other_paths_answer_as_before(self) -> None:
        self.get(b"/a?b=1")
        status, headers, body = split(self.transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"x-backend"], b"2")
        self.assertIn(b"jsessionid=", headers[b"set-cookie"].lower())
        self.assertTrue(body.startswith(b"backend 2 answered GET /a?b=1 (JSESSIONID="), body)

    def test_download_is_paced_and_whole(self) -> None:
        self.get(b"/download?bytes=1000&rate=2000")
        status, headers, body = split(self.transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-length"], b"1000")
        self.assertEqual(headers[b"x-backend"], b"2")
        self.assertEqual(len(body), 100)  # 2000 B/s, a write every 50 ms: 100 bytes now
        self.clock.advance(DOWNLOAD_TICK)
        self.assertEqual(len(split(self.transport.value())[2]), 200)
        for _ in range(20):
            self.clock.advance(DOWNLOAD_TICK)
        status, _, body = split(self.transport.value())
        self.assertEqual(body, download_body(0, 1000))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The connection is still usable: the answer was complete.
        self.transport.clear()
        self.get(b"/x")
        self.assertTrue(split(self.transport.value())[2].startswith(b"backend 2 answered"))

    def test_backpressure_pauses_it(self) -> None:
        self.get(b"/download?bytes=1000&rate=2000")
        channel = self.transport.producer  # the HTTP channel, which pauses the download
        assert channel is not None
        channel.pauseProducing()  # what the transport does when its buffer is full
        sent = len(self.transport.value())
        for _ in range(5):
            self.clock.advance(DOWNLOAD_TICK)
        self.assertEqual(len(self.transport.value()), sent)
        channel.resumeProducing()
        for _ in range(20):
            self.clock.advance(DOWNLOAD_TICK)
        self.assertEqual(split(self.transport.value())[2], download_body(0, 1000))

    def test_lost_connection_stops_it(self) -> None:
        self.get(b"/download?bytes=100000&rate=10000")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the next write
        self.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_download_is_a_400(self) -> None:
        self.get(b"/download?bytes=lots")
        status, _, body = split(self.transport.value())
        self.assertEqual(status, b"HTTP/1.1 400 Bad Request")
        self.assertIn(b"bytes must be", body)
