"""Plain requests through a real dlba with curl: HTTP, HTTPS, keep-alive, scheduling."""

from __future__ import annotations

from tests.e2e.harness import E2ETestCase, curl_responses

# One line per transfer: curl prints it after each URL of a command line (a leading
# "@" would make curl read the format from a file).
WRITE_OUT = "##%{http_code} %{num_connects} %header{x-backend}##\n"


def write_outs(out: str) -> list[tuple[int, int, str]]:
    found = []
    for part in out.split("##")[1::2]:
        code, connects, backend = [*part.split(" "), "", ""][:3]
        found.append((int(code), int(connects), backend))
    return found


class BasicTests(E2ETestCase):
    async def test_http_and_https_get_round_robin(self) -> None:
        """GET over HTTP and HTTPS; round-robin spreads separate requests over 3 back ends."""
        backends = [self.backend(f"b{i}") for i in (1, 2, 3)]
        dlba = await self.start(backends, pool={"policy": "round-robin"})
        seen = []
        for _ in range(3):
            result = await self.curl("-i", f"http://127.0.0.1:{dlba.http}/hello")
            self.assertEqual(result.code, 0, result.text)
            (response,) = curl_responses(result.out)
            self.assertEqual(response.status, 200)
            name = response.header("x-backend")
            self.assertEqual(response.body, f"backend {name}\n".encode())
            seen.append(name)
        self.assertEqual(sorted(seen), ["b1", "b2", "b3"])

        url = f"https://a.example:{dlba.https}/secure"
        result = await self.curl("-i", "-k", "--resolve", f"a.example:{dlba.https}:127.0.0.1", url)
        self.assertEqual(result.code, 0, result.text)
        (response,) = curl_responses(result.out)
        self.assertEqual(response.status, 200)
        self.assertIn(response.header("x-backend"), ["b1", "b2", "b3"])
        for b in backends:
            stats = await b.stats()
            self.assertIn(stats["requests"], (1, 2))

    async def test_node_runs_on_the_lean_reactor(self) -> None:
        """twistd without --reactor runs a node on dlba's LeanEPollReactor, and it serves."""
        dlba = await self.start([self.backend("b1")])
        result = await self.curl("-i", f"http://127.0.0.1:{dlba.http}/lean")
        self.assertEqual(result.code, 0, result.text)
        (response,) = curl_responses(result.out)
        self.assertEqual(response.status, 200)
        node_events = [e for e in dlba.events if e.get("log_namespace") == "dlba.node"]
        reactors = [e["reactor"] for e in node_events if "reactor" in e]
        self.assertEqual(reactors, ["LeanEPollReactor"])

    async def test_keepalive_client_each_request_scheduled(self) -> None:
        """Three URLs on one curl command line share one client connection, yet go to
        three different back ends (each request is scheduled on its own)."""
        backends = [self.backend(f"b{i}") for i in (1, 2, 3)]
        dlba = await self.start(backends)
        for port, scheme, extra in (
            (dlba.http, "http", []),
            (dlba.https, "https", ["-k", "--resolve", f"a.example:{dlba.https}:127.0.0.1"]),
        ):
            host = "127.0.0.1" if scheme == "http" else "a.example"
            urls = [f"{scheme}://{host}:{port}/n{i}" for i in range(3)]
            args = [*extra, "-w", WRITE_OUT]
            for url in urls:
                args += ["-o", "/dev/null", url]
            result = await self.curl(*args)
            self.assertEqual(result.code, 0, result.text)
            outs = write_outs(result.stdout)
            self.assertEqual([code for code, _, _ in outs], [200, 200, 200], result.text)
            # One connection made for the first transfer, none for the others.
            self.assertEqual([c for _, c, _ in outs], [1, 0, 0], result.text)
            self.assertEqual(sorted(b for _, _, b in outs), ["b1", "b2", "b3"], result.text)

    async def test_backend_keepalive_false_one_connection_per_request(self) -> None:
        """backend_keepalive = false: every request reaches the back end on a new connection."""
        backend = self.backend("b1")
        dlba = await self.start([backend], pool={"backend_keepalive": False})
        args = ["-w", WRITE_OUT]
        for i in range(5):
            args += ["-o", "/dev/null", f"http://127.0.0.1:{dlba.http}/r{i}"]
        result = await self.curl(*args)
        self.assertEqual(result.code, 0, result.text)
        outs = write_outs(result.stdout)
        self.assertEqual([(c, n) for c, n, _ in outs], [(200, 1)] + [(200, 0)] * 4)
        stats = await backend.stats()
        self.assertEqual(stats["requests"], 5)
        self.assertEqual(stats["connections"], 5)

    async def test_backend_keepalive_true_reuses_connection(self) -> None:
        """The counterpart: with backend_keepalive = true, five requests use one connection."""
        backend = self.backend("b1")
        dlba = await self.start([backend], pool={"backend_keepalive": True})
        args = ["-w", WRITE_OUT]
        for i in range(5):
            args += ["-o", "/dev/null", f"http://127.0.0.1:{dlba.http}/r{i}"]
        result = await self.curl(*args)
        self.assertEqual(result.code, 0, result.text)
        stats = await backend.stats()
        self.assertEqual(stats["requests"], 5)
        self.assertEqual(stats["connections"], 1)
