"""The pure HTTP head functions: request checks, the forwarded head, answer framing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dlba.http.framing import Framing, chunk
from dlba.http.request import Request, RequestHead, accept_request, forward_head
from dlba.http.response import (
    ResponseHead,
    answer_framing,
    client_head,
    informational_head,
    keepalive_timeout,
    upgrade_head,
)
from dlba.http.rules import RequestRejected


def head_of(url: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    head = RequestHead()
    head.add_url(url)
    for name, value in headers:
        head.add_header(name, value)
    return head


def accept(
    head: RequestHead,
    method: bytes = b"GET",
    version: str = "1.1",
    keep_alive: bool = True,
    max_header_bytes: int = 8192,
    max_body_bytes: int = 1000,
) -> Request:
    return accept_request(
        head,
        method,
        version,
        keep_alive,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        cookie_name=b"SpServer",
    )


def rejected(
    head: RequestHead,
    method: bytes = b"GET",
    version: str = "1.1",
    max_header_bytes: int = 8192,
) -> int:
    try:
        accept(head, method, version, max_header_bytes=max_header_bytes)
    except RequestRejected as e:
        return e.status
    raise AssertionError("accepted")


def lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n"), head
    return head[:-4].split(b"\r\n")


HOST = (b"Host", b"example.com")


class RequestChecksTests(SynchronousTestCase):
    def test_plain_get(self) -> None:
        r = accept(head_of(b"/a", HOST, (b"Accept", b"*/*")))
        self.assertEqual((r.method, r.target, r.host, r.body), (b"GET", b"/a", b"example.com", 0))
        self.assertEqual(r.headers, [(b"Accept", b"*/*")])
        self.assertTrue(r.http11)
        self.assertEqual(r.request_line, b"GET /a HTTP/1.1")

    def test_host_rules(self) -> None:
        self.assertEqual(rejected(head_of(b"/")), 400)  # 1.1 without Host
        self.assertEqual(rejected(head_of(b"/", HOST, HOST)), 400)
        self.assertEqual(rejected(head_of(b"/", (b"Host", b"a b"))), 400)
        self.assertIsNone(accept(head_of(b"/"), version="1.0").host)
        absolute = accept(head_of(b"http://other.example:81/x?q", HOST))
        self.assertEqual((absolute.target, absolute.host), (b"/x?q", b"other.example:81"))

    def test_versions_and_methods(self) -> None:
        self.assertEqual(rejected(head_of(b"/", HOST), version="2.0"), 505)
        self.assertEqual(rejected(head_of(b"/", HOST), version="1.2"), 505)
        self.assertEqual(rejected(head_of(b"/", HOST), version="0.9"), 400)
        self.assertEqual(rejected(head_of(b"example.com:443", HOST), method=b"CONNECT"), 501)
        self.assertEqual(rejected(head_of(b"*", HOST)), 400)
        self.assertEqual(accept(head_of(b"*", HOST), method=b"OPTIONS").target, b"*")

    def test_body_framing(self) -> None:
        chunked = accept(head_of(b"/", HOST, (b"Transfer-Encoding", b"chunked")), b"POST")
        self.assertEqual((chunked.body, chunked.length), (Framing.CHUNKED, None))
        length = accept(head_of(b"/", HOST, (b"Content-Length", b"12")), b"POST")
        self.assertEqual((length.body, length.length), (Framing.LENGTH, 12))
        empty = accept(head_of(b"/", HOST, (b"Content-Length", b"0")), b"POST")
        self.assertEqual((empty.body, empty.length), (Framing.NONE, 0))
        te10 = head_of(b"/", (b"Transfer-Encoding", b"chunked"))
        self.assertEqual(rejected(te10, b"POST", "1.0"), 400)
        gzip = head_of(b"/", HOST, (b"Transfer-Encoding", b"gzip, chunked"))
        self.assertEqual(rejected(gzip, b"POST"), 501)
        big = head_of(b"/", HOST, (b"Content-Length", b"1001"))
        self.assertEqual(rejected(big, b"POST"), 413)

    def test_head_size(self) -> None:
        head = head_of(b"/", HOST, (b"X-Big", b"x" * 100))
        self.assertEqual(rejected(head, max_header_bytes=100), 431)

    def test_expect(self) -> None:
        body = (b"Content-Length", b"3")
        ok = accept(head_of(b"/", HOST, body, (b"Expect", b"100-Continue")), b"POST")
        self.assertTrue(ok.expect_continue)
        no_body = accept(head_of(b"/", HOST, (b"Expect", b"100-continue")))
        self.assertFalse(no_body.expect_continue)
        self.assertEqual(rejected(head_of(b"/", HOST, body, (b"Expect", b"magic")), b"POST"), 417)
        # HTTP/1.0 knows no Expect: ignored, not refused.
        old = accept(head_of(b"/", body, (b"Expect", b"magic")), b"POST", "1.0")
        self.assertFalse(old.expect_continue)

    def test_upgrade_only_websocket_get(self) -> None:
        ws = (b"Upgrade", b"websocket")
        conn = (b"Connection", b"Upgrade")
        self.assertEqual(accept(head_of(b"/", HOST, ws, conn)).upgrade, b"websocket")
        self.assertIsNone(accept(head_of(b"/", HOST, ws)).upgrade)  # not in Connection
        self.assertIsNone(accept(head_of(b"/", HOST, (b"Upgrade", b"h2c"), conn)).upgrade)
        self.assertIsNone(accept(head_of(b"/", HOST, ws, conn), b"POST").upgrade)
        self.assertIsNone(accept(head_of(b"/", ws, conn), version="1.0").upgrade)

    def test_hop_by_hop_and_connection_named_headers_go(self) -> None:
        r = accept(
            head_of(
                b"/",
                HOST,
                (b"Connection", b"keep-alive, X-Secret"),
                (b"X-Secret", b"1"),
                (b"Keep-Alive", b"5"),
                (b"TE", b"trailers"),
                (b"Trailer", b"x"),
                (b"Proxy-Connection", b"x"),
                (b"X-Forwarded-Proto", b"https"),
                (b"Accept", b"*/*"),
            )
        )
        self.assertEqual(r.headers, [(b"Accept", b"*/*")])

    def test_cookies_ours_stripped_and_joined(self) -> None:
        r = accept(head_of(b"/", HOST, (b"Cookie", b"a=1; SpServer=2"), (b"Cookie", b"b=3")))
        self.assertEqual(r.cookies, [(b"a", b"1"), (b"SpServer", b"2"), (b"b", b"3")])
        self.assertEqual(r.cookie_line, b"a=1; b=3")
        only_ours = accept(head_of(b"/", HOST, (b"Cookie", b"SpServer=2")))
        self.assertIsNone(only_ours.cookie_line)


class ForwardHeadTests(SynchronousTestCase):
    def test_forwarded_headers(self) -> None:
        r = accept(
            head_of(b"/a", HOST, (b"X-Forwarded-For", b"10.1.1.1"), (b"User-Agent", b"curl"))
        )
        out = lines(forward_head(r, "192.0.2.7", True, close=False))
        self.assertEqual(out[0], b"GET /a HTTP/1.1")
        self.assertEqual(out[1], b"Host: example.com")
        self.assertIn(b"User-Agent: curl", out)
        self.assertIn(b"X-Forwarded-For: 10.1.1.1, 192.0.2.7", out)
        self.assertIn(b"X-Forwarded-Proto: https", out)
        self.assertIn(b'Forwarded: for=192.0.2.7;proto=https;host="example.com"', out)
        self.assertIn(b"Via: 1.1 dlba", out)
        self.assertNotIn(b"Connection: close", out)

    def test_ipv6_client_and_no_host(self) -> None:
        r = accept(head_of(b"/"), version="1.0")
        out = lines(forward_head(r, "::1", False, close=True))
        self.assertEqual(out[0], b"GET / HTTP/1.1")
        self.assertIn(b"Host: ", out)  # HTTP/1.1 to the back end needs one
        self.assertIn(b'Forwarded: for="[::1]";proto=http', out)
        self.assertEqual(out[-1], b"Connection: close")

    def test_body_framing_set_by_us(self) -> None:
        chunked = accept(head_of(b"/", HOST, (b"Transfer-Encoding", b"chunked")), b"POST")
        self.assertIn(
            b"Transfer-Encoding: chunked", lines(forward_head(chunked, "h", False, False))
        )
        empty_post = accept(head_of(b"/", HOST, (b"Content-Length", b"0")), b"POST")
        self.assertIn(b"Content-Length: 0", lines(forward_head(empty_post, "h", False, False)))
        empty_get = accept(head_of(b"/", HOST, (b"Content-Length", b"0")))
        out = lines(forward_head(empty_get, "h", False, False))
        self.assertFalse(any(line.startswith(b"Content-Length") for line in out))

    def test_upgrade_wins_over_close(self) -> None:
        ws = accept(head_of(b"/", HOST, (b"Upgrade", b"websocket"), (b"Connection", b"upgrade")))
        out = lines(forward_head(ws, "h", False, close=True))
        self.assertIn(b"Connection: upgrade", out)
        self.assertIn(b"Upgrade: websocket", out)
        self.assertNotIn(b"Connection: close", out)


def response(*headers: tuple[bytes, bytes]) -> ResponseHead:
    head = ResponseHead()
    for name, value in headers:
        head.add_header(name, value)
    return head


class ResponseTests(SynchronousTestCase):
    def test_framing(self) -> None:
        self.assertEqual(answer_framing(response((b"Content-Length", b"5")), 200, False), 1)
        chunked = response((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5"))
        self.assertEqual(answer_framing(chunked, 200, False), Framing.CHUNKED)
        self.assertEqual(answer_framing(response(), 200, False), Framing.UNTIL_CLOSE)
        for code in (204, 304, 101):
            self.assertEqual(answer_framing(response(), code, False), Framing.NONE)
        self.assertEqual(answer_framing(response((b"Content-Length", b"5")), 200, True), 0)

    def test_connection_named_headers_and_trailers_go(self) -> None:
        head = response((b"Connection", b"close, X-Internal"), (b"X-Internal", b"1"), (b"A", b"b"))
        head.final = True
        head.add_header(b"X-Trailer", b"t")
        self.assertEqual(head.forwarded_headers(), [(b"A", b"b")])

    def test_keepalive_timeout(self) -> None:
        self.assertEqual(keepalive_timeout(b"timeout=5, max=100"), 5.0)
        self.assertIsNone(keepalive_timeout(b"max=100"))
        self.assertIsNone(keepalive_timeout(b"timeout=soon"))
        self.assertIsNone(keepalive_timeout(b"timeout=inf"))

    def test_client_head_keep_alive_decisions(self) -> None:
        def run(framing: Framing, http11: bool = True, keep: bool = True) -> tuple[bool, bool]:
            _, chunk_out, kept = client_head(
                200,
                b"OK",
                [],
                [],
                framing,
                b"5",
                head_request=False,
                http11=http11,
                keep_alive=keep,
            )
            return chunk_out, kept

        self.assertEqual(run(Framing.LENGTH), (False, True))
        self.assertEqual(run(Framing.CHUNKED), (True, True))
        self.assertEqual(run(Framing.UNTIL_CLOSE), (True, True))  # re-framed as chunked
        self.assertEqual(run(Framing.UNTIL_CLOSE, http11=False), (False, False))
        self.assertEqual(run(Framing.LENGTH, keep=False), (False, False))

    def test_client_head_lines(self) -> None:
        head, _, _ = client_head(
            200,
            b"OK",
            [(b"Content-Type", b"text/plain")],
            [(b"Set-Cookie", b"SpServer=1")],
            Framing.LENGTH,
            b"5",
            head_request=False,
            http11=False,
            keep_alive=True,
        )
        self.assertEqual(
            lines(head),
            [
                b"HTTP/1.1 200 OK",
                b"Content-Type: text/plain",
                b"Set-Cookie: SpServer=1",
                b"Content-Length: 5",
                b"Via: 1.1 dlba",
                b"Connection: keep-alive",
            ],
        )
        closing, _, _ = client_head(
            200,
            b"OK",
            [],
            [],
            Framing.LENGTH,
            b"5",
            head_request=False,
            http11=True,
            keep_alive=False,
        )
        self.assertEqual(lines(closing)[-1], b"Connection: close")

    def test_head_and_304_keep_their_length(self) -> None:
        for code, head_request in ((200, True), (304, False)):
            head, _, _ = client_head(
                code,
                b"",
                [],
                [],
                Framing.NONE,
                b"42",
                head_request=head_request,
                http11=True,
                keep_alive=True,
            )
            self.assertIn(b"Content-Length: 42", lines(head))
        no_content, _, _ = client_head(
            204, b"", [], [], Framing.NONE, b"42", head_request=False, http11=True, keep_alive=True
        )
        self.assertNotIn(b"Content-Length: 42", lines(no_content))

    def test_other_heads(self) -> None:
        self.assertEqual(lines(informational_head(103, [(b"Link", b"</a>")]))[1], b"Link: </a>")
        up = lines(upgrade_head(b"Switching Protocols", [], [], b"websocket"))
        self.assertEqual(up[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertIn(b"Upgrade: websocket", up)
        self.assertEqual(chunk(b"abc"), b"3\r\nabc\r\n")
