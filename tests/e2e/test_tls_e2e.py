"""dlba's HTTPS listener from outside with ``openssl s_client`` and curl."""

from __future__ import annotations

import os
import re

from tests.e2e.harness import (
    CHILD_ENV,
    Child,
    E2ETestCase,
    ProcessResult,
    curl_responses,
    need,
    request,
    spawn,
)

# s_client sends this; its stdin is closed (so it ends the session) once the whole answer
# is on its stdout, by then with any TLS 1.3 tickets, which come before application data.
# Not "-ign_eof and wait for dlba to close", so that these tests do not hang on how dlba
# closes TLS connections (test_bad_input_e2e checks that).
REQUEST = b"GET /tls HTTP/1.1\r\nHost: a.example\r\n\r\n"


def answered(out: bytes) -> bool:
    return b"\r\n\r\nbackend b1\n" in out


def subject_cn(text: str) -> str:
    # OpenSSL 3.0 prints "subject=CN = a.example", 3.2 and later "subject=CN=a.example".
    match = re.search(r"^subject=.*?CN ?= ?([^,\s/]+)", text, re.MULTILINE)
    return match.group(1) if match else ""


class TLSTests(E2ETestCase):
    async def start_tls(self) -> None:
        self.b1 = self.backend("b1")
        certificates = [
            self.certificate("a.pem", "a.example"),
            self.certificate("b.pem", "b.example"),
        ]
        self.node = await self.start([self.b1], certificates=certificates)

    async def s_client(self, *args: str) -> ProcessResult:
        argv = ["s_client", "-connect", f"127.0.0.1:{self.node.https}", *args]
        return await self.openssl(*argv, stdin=REQUEST, close_stdin_when=answered)

    def assertAnswered(self, result: ProcessResult, version: str) -> None:
        self.assertIn(f", {version}, Cipher is ", result.text)
        self.assertIn("HTTP/1.1 200 OK", result.stdout)
        self.assertIn("X-Backend: b1", result.stdout)

    async def test_tls13(self) -> None:
        await self.start_tls()
        result = await self.s_client("-tls1_3", "-servername", "a.example")
        self.assertAnswered(result, "TLSv1.3")

    async def test_tls12(self) -> None:
        await self.start_tls()
        result = await self.s_client("-tls1_2", "-servername", "a.example")
        self.assertAnswered(result, "TLSv1.2")

    async def test_tls11_refused(self) -> None:
        await self.start_tls()
        # SECLEVEL=0 so that the refusal comes from dlba, not the client's own policy.
        result = await self.s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(result.code, 0, result.text)
        self.assertIn("alert protocol version", result.text)
        self.assertNotIn("HTTP/1.1", result.stdout)
        self.assertEqual((await self.b1.stats())["requests"], 0)

    async def assertResumes(self, version: str, *args: str) -> ProcessResult:
        session = self.path(f"session-{version}.pem")
        first = await self.s_client(*args, "-sess_out", session)
        self.assertIn(f"New, {version}", first.text)
        self.assertAnswered(first, version)
        self.assertTrue(os.path.exists(session), first.text)
        second = await self.s_client(*args, "-sess_in", session)
        self.assertIn(f"Reused, {version}", second.text)
        self.assertAnswered(second, version)
        return second

    async def test_resumption(self) -> None:
        await self.start_tls()
        await self.assertResumes("TLSv1.3", "-tls1_3", "-servername", "a.example")
        await self.assertResumes("TLSv1.2", "-tls1_2", "-servername", "b.example")

    async def test_tls12_tickets_resume(self) -> None:
        """A TLS 1.2 client that takes a session ticket resumes with it."""
        await self.start_tls()
        for sni in (["-servername", "a.example"], ["-servername", "b.example"], ["-noservername"]):
            second = await self.assertResumes("TLSv1.2", "-tls1_2", *sni)
            self.assertIn("TLS session ticket:", second.text)

    async def test_tls12_session_id_resumption_without_tickets(self) -> None:
        """-no_ticket: no ticket is issued, the session id alone resumes, through the
        server's session cache; with SNI on the default certificate, on a switched one and
        without SNI."""
        await self.start_tls()
        for sni in (["-servername", "a.example"], ["-servername", "b.example"], ["-noservername"]):
            second = await self.assertResumes("TLSv1.2", "-tls1_2", "-no_ticket", *sni)
            self.assertNotIn("TLS session ticket:", second.text)
            session_id = re.search(r"Session-ID: ([0-9A-F]*)", second.text)
            self.assertTrue(session_id and len(session_id.group(1)) == 64, second.text)

    async def test_tls12_session_id_survives_a_close_without_close_notify(self) -> None:
        """A client that just drops the connection (as browsers and scanners often do: FIN,
        no close_notify) leaves its session resumable by id: s_client is killed once it
        has its answer, and the next one, with -no_ticket, resumes."""
        await self.start_tls()
        need("openssl")
        session = self.path("session-killed.pem")
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.node.https}", "-tls1_2"]
        argv += ["-no_ticket", "-servername", "a.example"]
        first = spawn(
            [*argv, "-sess_out", session],
            Child("openssl", stdin=REQUEST, close_stdin_when=lambda out: False),
            env=CHILD_ENV,
        )
        self.addCleanup(first.terminate)
        await first.when_printed(answered, "the answer")
        await first.kill()
        self.assertIn("New, TLSv1.2", first.output())
        second = await self.s_client(
            "-tls1_2", "-no_ticket", "-servername", "a.example", "-sess_in", session
        )
        self.assertIn("Reused, TLSv1.2", second.text)
        self.assertAnswered(second, "TLSv1.2")

    async def test_sni_picks_the_certificate(self) -> None:
        await self.start_tls()
        for sni, cn in [("a.example", "a.example"), ("b.example", "b.example")]:
            result = await self.s_client("-servername", sni)
            self.assertEqual(subject_cn(result.text), cn, result.text)
            self.assertAnswered(result, "TLSv1.3")
        result = await self.s_client("-noservername")
        self.assertEqual(subject_cn(result.text), "a.example", result.text)
        self.assertAnswered(result, "TLSv1.3")

    async def test_alpn_http11(self) -> None:
        await self.start_tls()
        result = await self.s_client("-alpn", "h2,http/1.1", "-servername", "a.example")
        self.assertIn("ALPN protocol: http/1.1", result.text)
        self.assertAnswered(result, "TLSv1.3")

    async def test_curl_http2_falls_back_to_http11(self) -> None:
        await self.start_tls()
        port = self.node.https
        result = await self.curl(
            "-i",
            "-k",
            "--http2",
            "--resolve",
            f"b.example:{port}:127.0.0.1",
            "-w",
            "##%{http_version}",
            f"https://b.example:{port}/h",
        )
        self.assertEqual(result.code, 0, result.text)
        out, _, version = result.out.partition(b"##")
        self.assertEqual(version, b"1.1")
        (response,) = curl_responses(out)
        self.assertEqual(response.status, 200)


class HSTSTests(E2ETestCase):
    """``[tls] hsts``: HTTPS answers carry Strict-Transport-Security, plain HTTP ones do
    not, and a back end's own value is passed on as it is, not doubled or replaced."""

    async def test_hsts_on_https_answers_only(self) -> None:
        b1 = self.backend("b1")
        # Written loosely on purpose: dlba sends the usual spelling.
        node = await self.start([b1], tls={"hsts": "max-age=31536000 ;includesubdomains"})
        sent = "max-age=31536000; includeSubDomains"

        response, _ = await self.exchange(node.https, request("/"), tls=True)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.headers_named("Strict-Transport-Security"), [sent])

        response, _ = await self.exchange(node.http, request("/"))
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.headers_named("Strict-Transport-Security"), [])

        own = request("/setcookie?sts=max-age%3D60")
        response, _ = await self.exchange(node.https, own, tls=True)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.headers_named("Strict-Transport-Security"), ["max-age=60"])

        # dlba's own answers: 502 for a broken back-end answer, 400 for a broken request.
        for target, status in [("/garbage", 502), ("/bad\x01", 400)]:
            response, _ = await self.exchange(node.https, request(target), tls=True)
            self.assertEqual(response.status, status, response)
            self.assertEqual(response.headers_named("Strict-Transport-Security"), [sent])
            response, _ = await self.exchange(node.http, request(target))
            self.assertEqual(response.status, status, response)
            self.assertEqual(response.headers_named("Strict-Transport-Security"), [])
