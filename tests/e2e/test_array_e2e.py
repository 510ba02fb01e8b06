"""Three real nodes on loopback sharing one config (ips 127.0.0.11-13): the first sweeps.

A node that dies (SIGKILL: its port refuses) or hangs (SIGSTOP: the kernel still accepts,
nothing answers, every try times out) is failed within
``sweep_timeout * sweep_retries + sweep_delay + 1 s``; back, it rejoins; the summary table
adds up the nodes' hits.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from twisted.internet.defer import Deferred

from tests.e2e.harness import (
    CLIENT_DEADLINE,
    Backend,
    Dlba,
    E2ETestCase,
    reactor,
    status_lines,
    toml_table,
    within,
)

IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
SWEEP_DELAY = 0.5
SWEEP_TIMEOUT = 0.5
SWEEP_RETRIES = 2
# The bound, as the test measures it: from the signal to the sweep's log event.
FAIL_BOUND = SWEEP_TIMEOUT * SWEEP_RETRIES + SWEEP_DELAY + 1.0


def free_port_on_all(ips: tuple[str, ...]) -> int:
    """A port free on every ip (each node's status daemon listens on its own ip)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((ips[0], 0))
        port: int = probe.getsockname()[1]
        others = []
        try:
            for ip in ips[1:]:
                s = socket.socket()
                others.append(s)
                s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            probe.close()
            for s in others:
                s.close()
    raise AssertionError("no port free on all of " + ", ".join(ips))


def pause(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class ArrayTests(E2ETestCase):
    timeout = 120

    def array_config(self, status_port: int, backend: Backend) -> str:
        lines = toml_table("[node]", {"number": 1, "state_dir": self.dir})
        lines += toml_table("[listen]", {"http": "tcp:0", "status": f"tcp:{status_port}"})
        lines += toml_table("[log]", {"access_log": ""})
        lines += toml_table(
            "[array]",
            {
                "sweep_delay": SWEEP_DELAY,
                "sweep_timeout": SWEEP_TIMEOUT,
                "sweep_retries": SWEEP_RETRIES,
            },
        )
        for n, ip in enumerate(IPS, 1):
            lines += toml_table(
                "[[array.node]]", {"number": n, "mac": f"02:00:00:00:00:{n:02x}", "ip": ip}
            )
        lines += toml_table("[[pool]]", {"name": "app", "policy": "round-robin"})
        lines += toml_table("[[pool.backend]]", {"number": 1, "address": backend.address})
        return "\n".join(lines)

    async def node(self, number: int) -> Dlba:
        dlba = Dlba(self.config_path, "--node", str(number))
        self.addCleanup(self._stop_dlba, dlba)
        await dlba.started(["http", "status"])
        return dlba

    async def tables(self) -> dict[str, Any]:
        lines = await status_lines(self.status_port, b"TABLES", host=IPS[0])
        return {
            "sweep": next(x for x in lines if x["table"] == "sweep"),
            "nodes": {x["number"]: x for x in lines if x["table"] == "node_status"},
            "summary": {x["backend"]: x for x in lines if x["table"] == "summary"},
        }

    async def until_tables(self, check: Any, what: str, seconds: float = 10.0) -> dict[str, Any]:
        """Ask the sweeping node's TABLES until ``check`` holds (bounded)."""
        deadline = reactor.seconds() + seconds
        while True:
            tables = await self.tables()
            if check(tables):
                return tables
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {seconds}s waiting for {what}: {tables}")
            await pause(0.1)

    def sweep_event(self, dlba: Dlba, number: int, word: str) -> Deferred[dict[str, Any]]:
        """The sweep's next log event (from now on) that node ``number`` ``word``."""
        seen = {id(e) for e in dlba.events}
        return dlba.wait_event(
            lambda e: (
                id(e) not in seen
                and e.get("log_namespace") == "dlba.array.sweep"
                and e.get("node") == number
                and word in e.get("log_format", "")
            ),
            f"the sweep to log node {number} {word}",
            seconds=30,
        )

    async def get(self, dlba: Dlba, ip: str, count: int) -> None:
        for _ in range(count):
            result = await self.curl("-fsS", "-o", "/dev/null", f"http://{ip}:{dlba.http}/")
            self.assertEqual(result.code, 0, result.text)

    async def test_three_nodes_sweep_fail_rejoin_and_sum(self) -> None:
        backend = self.backend("b1")
        await backend.ready()
        try:
            self.status_port = free_port_on_all(IPS)
        except OSError as e:
            self.skipTest(f"cannot bind 127.0.0.11-13 here: {e}")
        self.config_path = self.write("dlba.toml", self.array_config(self.status_port, backend))
        nodes = [await self.node(n) for n in (1, 2, 3)]
        first = nodes[0]

        # Every node is seen; the summary adds up the nodes' hits.
        await self.get(nodes[0], IPS[0], 1)
        await self.get(nodes[1], IPS[1], 2)
        await self.get(nodes[2], IPS[2], 3)
        tables = await self.until_tables(
            lambda t: (
                t["summary"].get(1, {}).get("hits") == 6
                and all(n["hits"] == i for i, n in enumerate(t["nodes"].values(), 1))
            ),
            "the summary to add up 1 + 2 + 3 hits",
        )
        self.assertEqual(sorted(tables["nodes"]), [1, 2, 3])
        self.assertFalse(any(n["failed"] for n in tables["nodes"].values()))
        self.assertIsNotNone(tables["sweep"]["last_sweep"])
        self.assertLess(tables["sweep"]["sweep_age"], SWEEP_DELAY + 3 * SWEEP_TIMEOUT + 1)
        for node in (2, 3):  # the other nodes do not sweep: their tables are empty
            other = await status_lines(self.status_port, b"TABLES", host=IPS[node - 1])
            self.assertEqual([x["table"] for x in other], ["client", "sweep"])

        # Hung (SIGSTOP): the kernel accepts, nobody answers; every try times out.
        stopped = reactor.seconds()
        nodes[1].child.signal(signal.SIGSTOP)
        self.addCleanup(nodes[1].child.signal, signal.SIGCONT)
        await self.sweep_event(first, 2, "failed")
        self.assertLessEqual(reactor.seconds() - stopped, FAIL_BOUND)
        tables = await self.tables()
        self.assertTrue(tables["nodes"][2]["failed"])
        self.assertEqual(tables["nodes"][2]["last_error"], "timed out")
        nodes[1].child.signal(signal.SIGCONT)
        await self.sweep_event(first, 2, "rejoined")

        # Dead (SIGKILL): its port refuses.
        await self.get(nodes[2], IPS[2], 1)
        await self.until_tables(lambda t: t["nodes"][3]["hits"] == 4, "node 3's 4th hit")
        killed = reactor.seconds()
        await nodes[2].child.kill()
        await self.sweep_event(first, 3, "failed")
        self.assertLessEqual(reactor.seconds() - killed, FAIL_BOUND)
        tables = await self.tables()
        self.assertTrue(tables["nodes"][3]["failed"])
        self.assertFalse(tables["nodes"][2]["failed"])
        # Its hits happened: they stay in the summary.
        self.assertEqual(tables["summary"][1]["hits"], 7)

        # Restarted, it rejoins, counting from zero again.
        again = await self.node(3)
        await within(self.sweep_event(first, 3, "rejoined"), CLIENT_DEADLINE, "node 3 to rejoin")
        await self.get(again, IPS[2], 2)
        tables = await self.until_tables(
            lambda t: not t["nodes"][3]["failed"] and t["nodes"][3]["hits"] == 2,
            "node 3 back with 2 hits",
        )
        self.assertEqual(tables["summary"][1]["hits"], 1 + 2 + 2)


class OneNodeTests(E2ETestCase):
    async def test_a_lone_node_sweeps_itself_and_refuses_what_it_does_not_know(self) -> None:
        backend = self.backend("b1")
        dlba = await self.start([backend], https=False, status=True)
        port = dlba.ports["status"]
        await self.get_once(dlba)
        deadline = reactor.seconds() + 10
        while True:
            lines = await status_lines(port, b"TABLES")
            nodes = [x for x in lines if x["table"] == "node_status"]
            if nodes and nodes[0]["hits"] == 1:
                break
            self.assertLess(reactor.seconds(), deadline, f"no sweep of itself: {lines}")
            await pause(0.1)
        self.assertEqual([n["number"] for n in nodes], [1])
        [summary] = [x for x in lines if x["table"] == "summary"]
        self.assertEqual((summary["address"], summary["hits"]), (backend.address, 1))

        client = await self.connect(port)
        client.send(b"DUMP everything\r\n")
        data = await client.when_closed()
        self.assertEqual(data, b"ERR unknown command; say STATUS or TABLES\r\n")

        client = await self.connect(port)
        client.send(b"x" * 100)
        self.assertEqual(await client.when_closed(), b"ERR line too long\r\n")

    async def get_once(self, dlba: Dlba) -> None:
        result = await self.curl("-fsS", "-o", "/dev/null", f"http://127.0.0.1:{dlba.http}/")
        self.assertEqual(result.code, 0, result.text)
