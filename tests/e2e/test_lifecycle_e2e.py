"""The process: graceful stop on SIGTERM, the access log, the JSON log on stdout."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater

from tests.e2e.harness import (
    Dlba,
    E2ETestCase,
    ProcessResult,
    connect,
    listening_ports,
    request,
)

# host ident authuser [date] "request" status bytes "referer" "user-agent"
COMBINED = re.compile(
    r"^(?P<host>\S+) - - \[(?P<date>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


def port_closed(port: int) -> Callable[[dict[str, Any]], bool]:
    """Twisted's "(TCP Port N Closed)": the listening socket is gone."""
    return lambda e: e.get("log_text") == f"(TCP Port {port} Closed)"


class StopTestCase(E2ETestCase):
    def assertCleanExit(self, node: Dlba, result: ProcessResult) -> None:
        """Exit 0, or by SIGTERM after a whole shutdown: twistd re-raises the signal it
        stopped on, after cleaning up, so that the exit status tells it."""
        log = node.log_text()
        self.assertTrue(
            result.code == 0 or (result.code is None and result.signal == signal.SIGTERM),
            (result.code, result.signal, log),
        )
        formats = [e.get("log_format") for e in node.events]
        self.assertIn("Server Shut Down.", formats, log)


class GracefulStopTests(StopTestCase):
    async def test_in_flight_request_finishes_after_sigterm(self) -> None:
        b1 = self.backend("b1")
        node = await self.start([b1], limits={"shutdown_grace": 5.0})
        slow = await self.connect(node.http)
        slow.send(request("/slow?ms=1500"))
        idle = await self.connect(node.http)
        idle.send(request("/quick"))
        await idle.response()
        await b1.wait_event("request", 2)  # the slow request is at the back end
        assert node.child.pid is not None
        self.assertLessEqual({node.http, node.https}, listening_ports(node.child.pid))

        node.child.signal("TERM")
        await node.wait_event(
            lambda e: e.get("log_format", "").startswith("stopping:"), "dlba to start draining"
        )
        # The idle keep-alive connection is closed at once, not after the grace.
        await idle.when_closed(2)
        # New connections are refused: the listeners are closed.
        for port in (node.http, node.https):
            await node.wait_event(port_closed(port), f"port {port} to close")
            # Twisted logs "Port Closed" just before it closes the socket: a moment more.
            for _ in range(50):
                if port not in listening_ports(node.child.pid):
                    break
                await deferLater(reactor, 0.02, lambda: None)
            self.assertNotIn(port, listening_ports(node.child.pid))
            try:
                client = await connect(port)
            except ConnectionRefusedError:
                pass
            else:
                # Another process took the freed port already (the suite runs in
                # parallel); dlba, shown above not to listen there, is not who accepted.
                await client.close()
        response = await slow.response(seconds=5)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"slow b1")
        self.assertEqual(response.header("connection"), "close")
        await slow.when_closed(2)
        result = await node.child.when_ended(5)
        self.assertCleanExit(node, result)

    async def test_grace_over_cuts_the_rest(self) -> None:
        """A request still in flight when shutdown_grace (1 s) ends is cut; dlba exits 0."""
        b1 = self.backend("b1")
        node = await self.start([b1], limits={"shutdown_grace": 1.0})
        client = await self.connect(node.http)
        client.send(request("/hang"))
        await b1.wait_event("request", 1)
        node.child.signal("TERM")
        await client.when_closed(5)
        self.assertEqual(client.data, b"")
        result = await node.child.when_ended(5)
        self.assertCleanExit(node, result)

    async def test_idle_stop_is_quick(self) -> None:
        """Nothing in flight: no waiting for the 10 s grace."""
        node = await self.start([self.backend("b1")], limits={"shutdown_grace": 10.0})
        await self.exchange(node.http, request("/"))
        node.child.signal("TERM")
        result = await node.child.when_ended(3)
        self.assertCleanExit(node, result)


class AccessLogTests(StopTestCase):
    async def run_and_stop(self, *requests: bytes) -> list[dict[str, str]]:
        b1 = self.backend("b1")
        path = self.path("access.log")
        node = await self.start([b1], access_log=path)
        for data in requests:
            await self.exchange(node.http, data, head=data.startswith(b"HEAD"))
        node.child.signal("TERM")
        result = await node.child.when_ended(10)
        self.assertCleanExit(node, result)
        with open(path) as f:
            lines = f.read().splitlines()
        found = []
        for line in lines:
            match = COMBINED.match(line)
            self.assertIsNotNone(match, line)
            assert match is not None
            found.append(match.groupdict())
        return found

    async def test_combined_format(self) -> None:
        agent = [("User-Agent", "e2e-agent/1.0"), ("Referer", "http://ref.example/p")]
        lines = await self.run_and_stop(
            request("/body?n=1234", headers=agent),
            request("/status?code=404"),
            request("/body?n=50", method="HEAD"),
            request("/chunked?n=3000&size=1000"),
            request("/upload", method="POST", body=b"x" * 99),
        )
        got = [(x["request"], x["status"], x["bytes"]) for x in lines]
        self.assertEqual(
            got,
            [
                ("GET /body?n=1234 HTTP/1.1", "200", "1234"),
                ("GET /status?code=404 HTTP/1.1", "404", "7"),
                ("HEAD /body?n=50 HTTP/1.1", "200", "-"),
                ("GET /chunked?n=3000&size=1000 HTTP/1.1", "200", "3000"),
                ("POST /upload HTTP/1.1", "200", lines[4]["bytes"]),
            ],
        )
        self.assertGreater(int(lines[4]["bytes"]), 99)
        self.assertEqual(lines[0]["host"], "127.0.0.1")
        self.assertEqual(lines[0]["referer"], "http://ref.example/p")
        self.assertEqual(lines[0]["agent"], "e2e-agent/1.0")
        self.assertEqual((lines[1]["referer"], lines[1]["agent"]), ("-", "-"))

    async def test_hostile_header_cannot_forge_a_field(self) -> None:
        lines = await self.run_and_stop(request("/x", headers=[("User-Agent", 'a" 200 "b\\')]))
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["status"], "200")
        self.assertNotIn('"', lines[0]["agent"])

    async def test_own_answers_logged_with_their_size(self) -> None:
        """Answers dlba makes itself are logged with the size of the body it sent."""
        lines = await self.run_and_stop(
            b"GET / HTTP/1.1\r\n\r\n",  # no Host: dlba's own 400
        )
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["status"], "400")
        self.assertEqual(lines[0]["bytes"], str(len(b"400 Bad Request\n")))


class JSONLogTests(E2ETestCase):
    async def test_every_stdout_line_is_one_json_object(self) -> None:
        """[log] JSON lines, as a log shipper reads them: one object per line, nothing else."""
        node = await self.start([self.backend("b1")])
        await self.exchange(node.http, request("/"))
        node.child.signal("TERM")
        await node.child.when_ended(10)
        lines = [line for line in node.lines if line.strip()]
        self.assertGreater(len(lines), 3)
        for line in lines:
            try:
                event = json.loads(line.decode("utf-8"))
            except ValueError:
                self.fail(f"not a JSON line: {line[:200]!r}")
            self.assertIsInstance(event, dict)
