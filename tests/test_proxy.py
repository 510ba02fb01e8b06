"""The proxy's protocols over memory transports: framing, scheduling, timeouts, reuse."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.proxy_harness import ProxyHarness

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def head_of(data: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    head = data.split(b"\r\n\r\n", 1)[0]
    first, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return first, headers


class ForwardingTests(SynchronousTestCase):
    def test_request_forwarded_with_proxy_headers(self) -> None:
        h = ProxyHarness(1)
        h_front, client = h.client()
        h_front.dataReceived(
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 10.1.1.1\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
            b"Keep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nAccept: */*\r\n\r\n"
        )
        self.assertEqual(h.pending_connects(), [("127.0.0.1", 9001)])
        _, backend, _ = h.accept_backend()
        first, headers = head_of(backend.value())
        self.assertEqual(first, b"GET /a?b=1 HTTP/1.1")
        self.assertEqual(headers[b"host"], [b"example.com"])
        self.assertEqual(headers[b"x-forwarded-for"], [b"10.1.1.1, 192.0.2.7"])
        self.assertEqual(headers[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(headers[b"forwarded"], [b'for=192.0.2.7;proto=http;host="example.com"'])
        self.assertEqual(headers[b"via"], [b"1.1 dlba"])
        self.assertEqual(headers[b"accept"], [b"*/*"])
        for hop in (b"connection", b"keep-alive", b"te", b"proxy-connection", b"x-secret"):
            self.assertNotIn(hop, headers)
        self.assertEqual(client.value(), b"")

    def test_answer_relayed_with_via(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _backend, _ = h.accept_backend()
        conn.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nServer: x\r\n\r\nhi"
        )
        first, headers = head_of(client.value())
        self.assertEqual(first, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-length"], [b"2"])
        self.assertEqual(headers[b"server"], [b"x"])
        self.assertEqual(headers[b"via"], [b"1.1 dlba"])
        self.assertNotIn(b"connection", headers)
        self.assertNotIn(b"keep-alive", headers)
        self.assertTrue(client.value().endswith(b"\r\n\r\nhi"))
        self.assertFalse(client.disconnecting)
        self.assertEqual(h.table.get(1).hits, 1)  # type: ignore[union-attr]
        self.assertEqual(h.table.get(1).open_connections, 0)  # type: ignore[union-attr]

    def test_absolute_form_target_becomes_origin_form(self) -> None:
        h = ProxyHarness(1)
        front, _ = h.client()
        front.dataReceived(b"GET http://other.example:8080/x?y HTTP/1.1\r\nHost: ignored\r\n\r\n")
        _, backend, _ = h.accept_backend()
        first, headers = head_of(backend.value())
        self.assertEqual(first, b"GET /x?y HTTP/1.1")
        self.assertEqual(headers[b"host"], [b"other.example:8080"])

    def test_https_listener_says_https(self) -> None:
        h = ProxyHarness(1, secure=True)
        front, _ = h.client()
        front.dataReceived(GET)
        _, backend, _ = h.accept_backend()
        _, headers = head_of(backend.value())
        self.assertEqual(headers[b"x-forwarded-proto"], [b"https"])

    def test_ipv6_client_quoted_in_forwarded(self) -> None:
        from twisted.internet.address import IPv6Address
        from twisted.internet.testing import StringTransport

        h = ProxyHarness(1)
        front = h.factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1))
        assert front is not None
        front.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", 1)))
        front.dataReceived(GET)
        _, backend, _ = h.accept_backend()
        _, headers = head_of(backend.value())
        self.assertEqual(headers[b"x-forwarded-for"], [b"2001:db8::1"])
        self.assertEqual(
            headers[b"forwarded"], [b'for="[2001:db8::1]";proto=http;host="example.com"']
        )


class HSTSTests(SynchronousTestCase):
    """``[tls] hsts``: on every HTTPS answer, ours too; never on HTTP; never doubled."""

    STS = b"max-age=600; includeSubDomains"

    def answer(self, secure: bool, backend_answer: bytes | None) -> dict[bytes, list[bytes]]:
        h = ProxyHarness(1, secure=secure, hsts=self.STS.decode())
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        if backend_answer is not None:
            conn.dataReceived(backend_answer)
        else:
            conn.dataReceived(b"not http at all\r\n\r\n")  # dlba answers 502 itself
        _, headers = head_of(client.value())
        return headers

    def test_added_to_https_answers(self) -> None:
        headers = self.answer(True, OK)
        self.assertEqual(headers[b"strict-transport-security"], [self.STS])

    def test_not_on_http(self) -> None:
        self.assertNotIn(b"strict-transport-security", self.answer(False, OK))

    def test_backend_value_kept(self) -> None:
        own = (
            b"HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=5\r\nContent-Length: 0\r\n\r\n"
        )
        headers = self.answer(True, own)
        self.assertEqual(headers[b"strict-transport-security"], [b"max-age=5"])

    def test_on_our_own_errors_over_https(self) -> None:
        self.assertEqual(self.answer(True, None)[b"strict-transport-security"], [self.STS])
        self.assertNotIn(b"strict-transport-security", self.answer(False, None))
        for secure in (True, False):
            h = ProxyHarness(1, secure=secure, hsts=self.STS.decode())
            front, client = h.client()
            front.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n")  # 400
            first, headers = head_of(client.value())
            self.assertEqual(first, b"HTTP/1.1 400 Bad Request")
            self.assertEqual(
                headers.get(b"strict-transport-security"), [self.STS] if secure else None
            )

    def test_off(self) -> None:
        h = ProxyHarness(1, secure=True)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        self.assertNotIn(b"strict-transport-security", head_of(client.value())[1])


class KeepAliveTests(SynchronousTestCase):
    def test_backend_connection_reused_and_requests_scheduled_each(self) -> None:
        h = ProxyHarness(2)
        front, client = h.client()
        front.dataReceived(GET)
        conn1, be1, port1 = h.accept_backend()
        conn1.dataReceived(OK)
        front.dataReceived(GET)
        conn2, _be2, port2 = h.accept_backend()
        self.assertNotEqual(port1, port2)  # round-robin: the second request went elsewhere
        conn2.dataReceived(OK)
        front.dataReceived(GET)
        # Back to the first back end, over its pooled connection: no new connect.
        self.assertEqual(h.pending_connects(), [])
        self.assertEqual(be1.value().count(b"GET /a"), 2)
        conn1.dataReceived(OK)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(h.core.upstream(h.table.get(1), True).reused, 1)  # type: ignore[arg-type]

    def test_backend_close_means_no_reuse(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, be, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(be.disconnecting)
        self.assertFalse(client.disconnecting)  # the client keeps its connection
        front.dataReceived(GET)
        self.assertEqual(len(h.pending_connects()), 1)

    def test_extra_bytes_after_answer_mean_no_reuse(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, be, _ = h.accept_backend()
        conn.dataReceived(OK + OK)
        self.assertEqual(client.value().count(b"200 OK"), 1)
        self.assertFalse(client.disconnecting)
        self.assertTrue(be.disconnecting)

    def test_idle_pooled_connection_expires(self) -> None:
        h = ProxyHarness(1, backend_idle_timeout=2.0)
        front, _ = h.client()
        front.dataReceived(GET)
        conn, be, _ = h.accept_backend()
        conn.dataReceived(OK)
        h.reactor.advance(1.0)
        self.assertFalse(be.disconnecting)
        h.core.sweeper.check()
        h.reactor.advance(1.5)
        h.core.sweeper.check()
        self.assertTrue(be.disconnecting)

    def test_keepalive_hint_shortens_idle_time(self) -> None:
        h = ProxyHarness(1, backend_idle_timeout=30.0)
        front, _ = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=3\r\n\r\n")
        self.assertEqual(h.core.upstream(h.table.get(1), True).idle_timeout, 2.0)  # type: ignore[arg-type]

    def test_retry_on_fresh_connection_when_pooled_one_closed_unanswered(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        front.dataReceived(GET)  # goes out on the pooled connection...
        conn.connectionLost(Failure(ConnectionDone()))  # ...which the back end had closed
        conn2, be2, _ = h.accept_backend()
        self.assertIn(b"GET /a", be2.value())
        conn2.dataReceived(OK)
        self.assertEqual(client.value().count(b"200 OK"), 2)

    def test_no_retry_for_post(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        front.dataReceived(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.pending_connects(), [])
        self.assertIn(b"502 Bad Gateway", client.value())

    def test_one_connection_per_request_when_keepalive_off(self) -> None:
        h = ProxyHarness(1, keepalive=False)
        front, _ = h.client()
        front.dataReceived(GET)
        conn, be, _ = h.accept_backend()
        _, headers = head_of(be.value())
        self.assertEqual(headers[b"connection"], [b"close"])
        conn.dataReceived(OK)
        self.assertTrue(be.disconnecting)
        front.dataReceived(GET)
        self.assertEqual(len(h.pending_connects()), 1)

    def test_http10_keepalive_when_asked(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        _, headers = head_of(client.value())
        self.assertEqual(headers[b"connection"], [b"keep-alive"])
        self.assertFalse(client.disconnecting)

    def test_http10_closes_by_default(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        _, headers = head_of(client.value())
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertTrue(client.disconnecting)


class PipeliningTests(SynchronousTestCase):
    def test_answers_in_order_each_scheduled(self) -> None:
        h = ProxyHarness(2)
        front, client = h.client()
        front.dataReceived(GET.replace(b"/a", b"/1") + GET.replace(b"/a", b"/2"))
        self.assertEqual(len(h.pending_connects()), 1)  # one at a time
        conn1, be1, _ = h.accept_backend()
        self.assertIn(b"GET /1", be1.value())
        conn1.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        conn2, be2, _ = h.accept_backend()
        self.assertIn(b"GET /2", be2.value())
        conn2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        out = client.value()
        self.assertLess(out.index(b"one"), out.index(b"two"))


class BodyTests(SynchronousTestCase):
    def test_chunked_request_rechunked(self) -> None:
        h = ProxyHarness(1)
        front, _ = h.client()
        front.dataReceived(
            b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        _, be, _ = h.accept_backend()
        data = be.value()
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    def test_length_body_streamed_after_connect(self) -> None:
        h = ProxyHarness(1)
        front, _ = h.client()
        front.dataReceived(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
        _conn, be, _ = h.accept_backend()
        front.dataReceived(b"def")
        self.assertTrue(be.value().endswith(b"Content-Length: 6\r\n\r\nabcdef"))

    def test_chunked_answer_to_http10_client_is_close_delimited(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        conn, _, _ = h.accept_backend()
        conn.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        out = client.value()
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(body, b"hello")
        self.assertTrue(client.disconnecting)

    def test_close_delimited_answer_chunked_for_http11_client(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
        conn.dataReceived(b"thing")
        conn.connectionLost(Failure(ConnectionDone()))
        out = client.value()
        self.assertIn(b"Transfer-Encoding: chunked", out)
        self.assertTrue(out.endswith(b"4\r\nsome\r\n5\r\nthing\r\n0\r\n\r\n"))
        self.assertFalse(client.disconnecting)

    def test_head_answer_has_no_body_and_connection_is_reused(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        conn, _be, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertTrue(client.value().endswith(b"Content-Length: 1234\r\nVia: 1.1 dlba\r\n\r\n"))
        front.dataReceived(GET)
        self.assertEqual(h.pending_connects(), [])
        conn.dataReceived(OK)
        self.assertTrue(client.value().endswith(b"hi"))

    def test_100_continue_relayed(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(
            b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        conn, be, _ = h.accept_backend()
        self.assertIn(b"Expect: 100-continue", be.value())
        conn.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        front.dataReceived(b"ok")
        self.assertTrue(be.value().endswith(b"ok"))
        conn.dataReceived(OK)
        self.assertIn(b"200 OK", client.value())

    def test_backpressure_both_ways(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        _conn, be, _ = h.accept_backend()
        assert be.producer is not None and client.producer is not None
        be.producer.pauseProducing()  # the back end's send buffer is full
        self.assertEqual(client.producerState, "paused")
        be.producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")
        client.producer.pauseProducing()  # the client stops reading
        self.assertEqual(be.producerState, "paused")
        client.producer.resumeProducing()
        self.assertEqual(be.producerState, "producing")


class FailureTests(SynchronousTestCase):
    def test_refused_backend_marked_failed_and_request_rerouted(self) -> None:
        h = ProxyHarness(2, backend_failure_backoff=5.0)
        front, client = h.client()
        front.dataReceived(GET)
        port = h.refuse_backend(ConnectionRefusedError())
        failed = h.table.get(port - 9000)
        assert failed is not None
        self.assertTrue(failed.failed(h.reactor.seconds()))
        self.assertIn("connect", failed.last_error)
        conn, _, port2 = h.accept_backend()
        self.assertNotEqual(port, port2)
        conn.dataReceived(OK)
        self.assertIn(b"200 OK", client.value())

    def test_log_namespaces_are_stable(self) -> None:
        """Operators filter on these: they must not follow the module's name."""
        h = ProxyHarness(2)
        front, _ = h.client()
        with capturedLogs() as events:
            front.dataReceived(GET)
            h.refuse_backend(ConnectionRefusedError())
            front.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
        self.assertEqual(
            [(e["log_namespace"], e["log_format"].split(" ")[0]) for e in events],
            [("dlba.proxy", "back"), ("dlba.proxy", "refused")],
        )

    def test_none_live_gives_503_with_retry_after(self) -> None:
        h = ProxyHarness(2, backend_failure_backoff=7.0)
        front, client = h.client()
        front.dataReceived(GET)
        h.refuse_backend(ConnectionRefusedError())
        h.refuse_backend(ConnectionRefusedError())
        first, headers = head_of(client.value())
        self.assertEqual(first, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(headers[b"retry-after"], [b"7"])
        # After the back-off, back ends are tried again.
        h.reactor.advance(7.5)
        front.dataReceived(GET)
        self.assertEqual(len(h.pending_connects()), 1)

    def test_hanging_backend_gives_504(self) -> None:
        h = ProxyHarness(1, backend_response_timeout=2.0)
        front, client = h.client()
        front.dataReceived(GET)
        _, be, _ = h.accept_backend()
        h.reactor.advance(2.5)
        h.core.sweeper.check()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 "))
        self.assertTrue(be.disconnecting)

    def test_malformed_answer_gives_502(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 2x0 OK\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "))

    def test_truncated_answer_aborts_client(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(client.disconnected)  # aborted: the client must not think it whole

    def test_client_gone_aborts_backend_exchange(self) -> None:
        h = ProxyHarness(1)
        front, _ = h.client()
        front.dataReceived(GET)
        _, be, _ = h.accept_backend()
        front.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(be.disconnecting)
        self.assertEqual(h.table.get(1).open_connections, 0)  # type: ignore[union-attr]


class TimeoutTests(SynchronousTestCase):
    def test_slow_head_gets_408(self) -> None:
        h = ProxyHarness(1, header_timeout=3.0)
        front, client = h.client()
        front.dataReceived(b"GET / HTTP/1.1\r\nHo")
        h.reactor.advance(3.5)
        h.core.sweeper.check()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.pending_connects(), [])

    def test_slow_body_gets_408(self) -> None:
        h = ProxyHarness(1, body_timeout=2.0)
        front, client = h.client()
        front.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        _, be, _ = h.accept_backend()
        h.reactor.advance(2.5)
        h.core.sweeper.check()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(be.disconnecting)

    def trickle(self, h: ProxyHarness, seconds: float, every: float = 0.5) -> bytes:
        """Send a 100-byte body one byte every ``every`` s; what the client got back."""
        front, client = h.client()
        front.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        h.accept_backend()
        t = 0.0
        while t < seconds and not client.disconnecting:
            h.reactor.advance(every)
            t += every
            if not client.disconnecting:
                front.dataReceived(b"x")
            h.core.sweeper.check()
        return client.value() if client.disconnecting else b"(still open)"

    def test_trickled_body_cut_by_min_body_rate(self) -> None:
        """A byte every 0.5 s never leaves body_timeout of silence, but averages 2 B/s."""
        h = ProxyHarness(1, body_timeout=2.0, min_body_rate=100.0)
        answer = self.trickle(h, 60.0)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        # Cut once its credit (2 s + 1/100 s per byte received) ran out, not minutes later.
        self.assertLess(h.reactor.seconds(), 3.0)

    def test_trickled_body_goes_on_without_min_body_rate(self) -> None:
        h = ProxyHarness(1, body_timeout=2.0, min_body_rate=0.0)
        self.assertEqual(self.trickle(h, 40.0), b"(still open)")

    def test_fast_enough_body_is_not_cut(self) -> None:
        """100 bytes at 4 B/s, with a minimum of 2 B/s: well within its credit."""
        h = ProxyHarness(1, body_timeout=2.0, min_body_rate=2.0)
        self.assertEqual(self.trickle(h, 20.0, every=0.25), b"(still open)")

    def test_idle_keepalive_connection_closed(self) -> None:
        h = ProxyHarness(1, idle_timeout=5.0)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        h.reactor.advance(4.0)
        h.core.sweeper.check()
        self.assertFalse(client.disconnecting)
        h.reactor.advance(1.5)
        h.core.sweeper.check()
        self.assertTrue(client.disconnecting)
        self.assertNotIn(b"408", client.value())


class BadInputTests(SynchronousTestCase):
    """Each request is refused with its status, nothing reaches a back end, the connection ends."""

    cases = {
        "cl+te": (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        "duplicate cl": (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            400,
        ),
        "non-numeric cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400),
        "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        "bare lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        "bad name": (b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n", 400),
        "space before colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX : z\r\n\r\n", 400),
        "control in value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        "no host": (b"GET / HTTP/1.1\r\n\r\n", 400),
        "two hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        "bad host": (b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
        "bad host port": (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400),
        "http/2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        "http/1.2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
        "http/0.9": (b"GET /\r\n\r\n", 400),
        "te on 1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        "te gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
        "unknown method": (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        "fragment": (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        "relative target": (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        "asterisk not options": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        "bad chunk size": (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        "expectation": (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
        "body too large": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n", 413),
        "head too large": (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 3000 + b"\r\n\r\n", 431),
    }

    def test_each_refused(self) -> None:
        for name, (request, status) in self.cases.items():
            h = ProxyHarness(1, max_header_bytes=1024, max_body_bytes=1000)
            front, client = h.client()
            front.dataReceived(request)
            self.assertTrue(
                client.value().startswith(b"HTTP/1.1 %d " % status),
                f"{name}: got {client.value()[:40]!r}",
            )
            self.assertTrue(client.disconnecting, name)
            if name != "bad chunk size":
                self.assertEqual(h.pending_connects(), [], name)

    def test_head_too_large_across_reads(self) -> None:
        h = ProxyHarness(1, max_header_bytes=1024)
        front, client = h.client()
        front.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
        for _ in range(10):
            front.dataReceived(b"a" * 200)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 431 "))

    def test_chunked_body_over_limit(self) -> None:
        h = ProxyHarness(1, max_body_bytes=10)
        front, client = h.client()
        front.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        _conn, be, _ = h.accept_backend()
        front.dataReceived(b"8\r\n12345678\r\n8\r\n12345678\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(be.disconnecting)

    def test_options_asterisk_allowed(self) -> None:
        h = ProxyHarness(1)
        front, _ = h.client()
        front.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        _, be, _ = h.accept_backend()
        self.assertTrue(be.value().startswith(b"OPTIONS * HTTP/1.1\r\n"))

    def test_pipelined_bad_request_answered_after_good_one(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET + b"GET / HTTP/1.1\r\n\r\n")
        conn, _, _ = h.accept_backend()
        self.assertEqual(client.value(), b"")
        conn.dataReceived(OK)
        out = client.value()
        self.assertLess(out.index(b"200 OK"), out.index(b"400 Bad Request"))
        self.assertTrue(client.disconnecting)


class UpgradeTests(SynchronousTestCase):
    REQ = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: x\r\n\r\n"
    )

    def test_websocket_relayed_after_101(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(self.REQ + b"early")
        conn, be, _ = h.accept_backend()
        self.assertIn(b"Upgrade: websocket", be.value())
        self.assertNotIn(b"early", be.value())
        conn.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nhello"
        )
        self.assertIn(b"101 Switching Protocols", client.value())
        self.assertTrue(client.value().endswith(b"hello"))
        self.assertTrue(be.value().endswith(b"early"))
        front.dataReceived(b"ping")
        self.assertTrue(be.value().endswith(b"ping"))
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(client.disconnecting)

    def test_upgrade_refused_by_backend_closes_after_answer(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(self.REQ)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        self.assertIn(b"200 OK", client.value())
        self.assertTrue(client.disconnecting)

    def test_other_upgrades_are_not_honoured(self) -> None:
        h = ProxyHarness(1)
        front, _client = h.client()
        front.dataReceived(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        conn, be, _ = h.accept_backend()
        self.assertNotIn(b"Upgrade", be.value())
        conn.dataReceived(OK)
        front.dataReceived(GET)
        self.assertIn(b"GET /a", be.value())

    def test_unasked_101_is_502(self) -> None:
        h = ProxyHarness(1)
        front, client = h.client()
        front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "))


class DrainTests(SynchronousTestCase):
    def test_drain_closes_idle_and_finishes_active(self) -> None:
        h = ProxyHarness(1)
        _idle_front, idle = h.client()
        busy_front, busy = h.client()
        busy_front.dataReceived(GET)
        conn, _, _ = h.accept_backend()
        h.core.drain()
        self.assertTrue(idle.disconnecting)
        self.assertFalse(busy.disconnecting)
        conn.dataReceived(OK)
        self.assertIn(b"Connection: close", busy.value())
        self.assertTrue(busy.disconnecting)

    def test_draining_factory_refuses_new_connections(self) -> None:
        from twisted.internet.address import IPv4Address

        h = ProxyHarness(1)
        h.core.drain()
        self.assertIsNone(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_connection_limit(self) -> None:
        from twisted.internet.address import IPv4Address

        h = ProxyHarness(1, max_client_connections=2)
        h.client()
        h.client()
        self.assertIsNone(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))


class PersistenceTests(SynchronousTestCase):
    def harness(self) -> ProxyHarness:
        from dlba.policy import CookiePolicy, RoundRobin

        h = ProxyHarness(3, secure=True)
        pool = h.core.router.default
        pool.policy = CookiePolicy(RoundRobin(), "SpServer", ["JSESSIONID"])
        pool.looks_at_answers = True
        return h

    def test_cookie_injected_and_stripped_and_sticky(self) -> None:
        h = self.harness()
        front, client = h.client()
        front.dataReceived(GET)
        conn, be, port = h.accept_backend()
        conn.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=s1; Path=/; Secure\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        _, headers = head_of(client.value())
        number = port - 9000
        self.assertEqual(
            headers[b"set-cookie"],
            [b"JSESSIONID=s1; Path=/; Secure", b"SpServer=%d; Path=/; Secure" % number],
        )
        self.assertEqual(headers[b"cache-control"], [b"private"])
        # The client comes back with the cookie, split over two headers as HTTP/2 would.
        for _ in range(3):
            front.dataReceived(
                b"GET /b HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=s1\r\n"
                b"Cookie: SpServer=%d; x=y\r\n\r\n" % number
            )
            self.assertEqual(h.pending_connects(), [])  # the pooled connection to that back end
            forwarded = be.value().rsplit(b"GET /b", 1)[1]
            self.assertIn(b"\r\nCookie: JSESSIONID=s1; x=y\r\n", forwarded)
            self.assertNotIn(b"SpServer", forwarded)
            conn.dataReceived(OK)

    def test_dead_backend_session_moves_with_new_number(self) -> None:
        h = self.harness()
        front, client = h.client()
        h.table.get(2).mark_failed(0.0, 60.0, "refused")  # type: ignore[union-attr]
        front.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: SpServer=2\r\n\r\n")
        conn, _, port = h.accept_backend()
        self.assertNotEqual(port, 9002)
        conn.dataReceived(OK)
        _, headers = head_of(client.value())
        self.assertEqual(
            headers[b"set-cookie"], [b"SpServer=%d; Path=/; HttpOnly; Secure" % (port - 9000)]
        )


class ControlledLoadingTests(SynchronousTestCase):
    def test_limit_holds_and_freed_slot_goes_to_queue_head(self) -> None:
        h = ProxyHarness(1, max_concurrent=2)
        clients = [h.client() for _ in range(5)]
        for i, (front, _) in enumerate(clients):
            front.dataReceived(GET.replace(b"/a", b"/%d" % i))
        self.assertEqual(len(h.pending_connects()), 2)
        self.assertEqual(len(h.pool.queue), 3)
        backend = h.table.get(1)
        assert backend is not None
        self.assertEqual(backend.open_connections, 2)
        conn0, be0, _ = h.accept_backend()
        h.accept_backend()
        conn0.dataReceived(OK)  # frees a slot: request 2, the oldest waiting, goes out
        self.assertIn(b"GET /2 ", be0.value())
        self.assertEqual(h.pending_connects(), [])  # on the connection just freed
        self.assertEqual(backend.open_connections, 2)
        self.assertEqual(len(h.pool.queue), 2)
        self.assertIn(b"200 OK", clients[0][1].value())

    def test_queue_full_gets_503_at_once(self) -> None:
        h = ProxyHarness(1, max_concurrent=1, queue_limit=1)
        clients = [h.client() for _ in range(3)]
        for front, _ in clients:
            front.dataReceived(GET)
        self.assertEqual(clients[0][1].value(), b"")
        self.assertEqual(clients[1][1].value(), b"")
        first, headers = head_of(clients[2][1].value())
        self.assertEqual(first, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(headers[b"retry-after"], [b"1"])

    def test_queue_timeout(self) -> None:
        h = ProxyHarness(1, max_concurrent=1, queue_timeout=2.0)
        (f1, _), (f2, c2) = h.client(), h.client()
        f1.dataReceived(GET)
        f2.dataReceived(GET)
        h.reactor.advance(1.0)
        h.core.sweeper.check()
        self.assertEqual(c2.value(), b"")
        h.reactor.advance(1.5)
        h.core.sweeper.check()
        self.assertTrue(c2.value().startswith(b"HTTP/1.1 503 "))
        self.assertEqual(len(h.pool.queue), 0)

    def test_client_gone_while_queued_leaves_queue(self) -> None:
        h = ProxyHarness(1, max_concurrent=1)
        (f1, _), (f2, _) = h.client(), h.client()
        f1.dataReceived(GET)
        f2.dataReceived(GET)
        self.assertEqual(len(h.pool.queue), 1)
        f2.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.pool.queue), 0)
        conn, _, _ = h.accept_backend()
        conn.dataReceived(OK)
        self.assertEqual(h.table.get(1).open_connections, 0)  # type: ignore[union-attr]

    def test_aborted_client_frees_its_slot(self) -> None:
        h = ProxyHarness(1, max_concurrent=1)
        (f1, _), (f2, _) = h.client(), h.client()
        f1.dataReceived(GET)
        f2.dataReceived(GET)
        h.accept_backend()
        f1.connectionLost(Failure(ConnectionDone()))  # in flight, then gone
        self.assertEqual(len(h.pool.queue), 0)
        self.assertEqual(len(h.pending_connects()), 1)  # the waiting request went out
        self.assertEqual(h.table.get(1).open_connections, 1)  # type: ignore[union-attr]

    def test_connections_refused_while_queue_stays_long(self) -> None:
        from twisted.internet.address import IPv4Address

        h = ProxyHarness(1, max_concurrent=1, queue_limit=4)
        clients = [h.client() for _ in range(5)]
        for front, _ in clients:
            front.dataReceived(GET)
        self.assertEqual(len(h.pool.queue), 4)
        addr = IPv4Address("TCP", "127.0.0.1", 1)
        self.assertIsNone(h.factory.buildProtocol(addr))
        self.assertEqual(h.core.refused_connections, 1)
        for front, _ in clients[1:]:
            front.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(h.factory.buildProtocol(addr))  # recovered by itself

    def test_idle_pool_never_larger_than_limit(self) -> None:
        h = ProxyHarness(1, max_concurrent=2)
        clients = [h.client() for _ in range(2)]
        for front, _ in clients:
            front.dataReceived(GET)
        conns = [h.accept_backend() for _ in range(2)]
        h.table.get(1).limit = 1  # type: ignore[union-attr]
        for conn, _, _ in conns:
            conn.dataReceived(OK)
        upstream = h.core.upstream(h.table.get(1), True)  # type: ignore[arg-type]
        self.assertEqual(len(upstream.idle), 1)
        self.assertTrue(conns[1][1].disconnecting)
