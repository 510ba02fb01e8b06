"""Failover end to end: three real nodes on 127.0.0.11-13 with the control plane, pinging
each other every 0.1 s.  Kill the scheduler: another node is scheduler within
``ping_interval * ping_misses + 1 s``, keeping its own client connections; start the old
one again: it follows the new scheduler instead of taking over; the client tables agree."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred

from tests.e2e.harness import (
    Dlba,
    E2ETestCase,
    array_config,
    dlba_ctl,
    reactor,
    request,
    run,
    status_lines,
)
from tests.e2e.test_array_e2e import IPS, free_port_on_all, pause

PING_INTERVAL = 0.1
PING_MISSES = 3
BOUND = PING_INTERVAL * PING_MISSES + 1.0


class FailoverTests(E2ETestCase):
    timeout = 180

    def config_text(self, status_port: int, sync_port: int, backend: str) -> str:
        return array_config(
            self.dir,
            status_port,
            sync_port,
            [backend],
            array={
                "ping_interval": PING_INTERVAL,
                "ping_misses": PING_MISSES,
                "sweep_delay": 0.2,
                "sweep_timeout": 0.5,
            },
        )

    async def node(self, number: int) -> Dlba:
        dlba = Dlba(self.config_path, "--node", str(number))
        self.addCleanup(self._stop_dlba, dlba)
        await dlba.started(["http", "status", "sync"])
        return dlba

    def event(
        self, dlba: Dlba, words: str, seconds: float = 30.0, **fields: Any
    ) -> Deferred[dict[str, Any]]:
        """The failover's next log event (from now on) with ``words`` and ``fields``."""
        seen = {id(e) for e in dlba.events}
        return dlba.wait_event(
            lambda e: (
                id(e) not in seen
                and e.get("log_namespace") == "dlba.array.failover"
                and words in e.get("log_format", "")
                and all(e.get(k) == v for k, v in fields.items())
            ),
            f"the failover to log {words!r} {fields}",
            seconds=seconds,
        )

    async def roles(self, ips: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        out = {}
        for ip in ips:
            [node] = [
                x
                for x in await status_lines(self.status_port, b"STATUS", host=ip)
                if x["table"] == "node"
            ]
            out[ip] = (node["role"], node["term"])
        return out

    async def client_lines(self, ips: tuple[str, ...]) -> list[tuple[Any, Any]]:
        found = []
        for ip in ips:
            lines = await status_lines(self.status_port, b"TABLES", host=ip)
            [client] = [x for x in lines if x["table"] == "client"]
            found.append((client["version"], client["table_id"]))
        return found

    async def until(self, check: Any, what: str, seconds: float = 10.0) -> Any:
        deadline = reactor.seconds() + seconds
        while True:
            got = await check()
            if got:
                return got
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {seconds}s waiting for {what}")
            await pause(0.05)

    async def test_the_scheduler_dies_another_takes_over_and_the_old_one_follows(self) -> None:
        backend = self.backend("b1")
        await backend.ready()
        try:
            self.status_port = free_port_on_all(IPS)
            sync_port = free_port_on_all(IPS)
        except OSError as e:
            self.skipTest(f"cannot bind 127.0.0.11-13 here: {e}")
        self.config_path = self.write(
            "dlba.toml", self.config_text(self.status_port, sync_port, backend.address)
        )
        argv, env = dlba_ctl("certs", "init", "--config", self.config_path)
        made = await run(argv, env=env, deadline=30)
        self.assertEqual(made.code, 0, made.text)
        first = Dlba(self.config_path, "--node", "1")
        self.addCleanup(self._stop_dlba, first)
        elected = self.event(first, "scheduler now")
        await first.started(["http", "status", "sync"])
        second, third = await self.node(2), await self.node(3)
        await elected
        roles = await self.until(
            lambda: self._agreed(IPS), "every node to know node 1 is scheduler"
        )
        self.assertEqual(roles[IPS[0]][0], "scheduler")

        # A client connection to node 2, held across its becoming scheduler.
        held = await self.connect_to(IPS[1], second.http)
        held.send(request("/a"))
        self.assertEqual((await held.response()).status, 200)

        takeover = self.event(second, "scheduler now")
        followed = self.event(third, "following scheduler", scheduler=2)
        killed = reactor.seconds()
        first.child.signal(signal.SIGKILL)
        await takeover
        took = reactor.seconds() - killed
        print(f"failover: node 2 scheduler {took:.3f} s after SIGKILL (bound {BOUND} s)")
        self.assertLessEqual(took, BOUND)
        await followed
        held.send(request("/b"))  # its own client connections survive the role change
        self.assertEqual((await held.response()).status, 200)

        # The old scheduler comes back: it follows node 2, it does not take over.
        back = Dlba(self.config_path, "--node", "1")
        self.addCleanup(self._stop_dlba, back)
        follows = self.event(back, "following scheduler", scheduler=2)
        await back.started(["http", "status", "sync"])
        await follows
        roles = await self.roles(IPS)
        self.assertEqual(roles[IPS[0]][0], "node")
        self.assertEqual(roles[IPS[1]][0], "scheduler")
        self.assertFalse(
            [e for e in back.events if "scheduler now" in e.get("log_format", "")],
            "the old scheduler took over again",
        )

        # The tables agree: every node holds the scheduler's table, at its version.
        agreed = await self.until(lambda: self._tables_agree(IPS), "the client tables to agree")
        self.assertTrue(str(agreed[0][1]).startswith("2:"))  # node 2's table, its term

    async def _agreed(self, ips: tuple[str, ...]) -> dict[str, tuple[str, int]] | None:
        roles = await self.roles(ips)
        terms = {term for _, term in roles.values()}
        schedulers = [ip for ip, (role, _) in roles.items() if role == "scheduler"]
        return roles if len(terms) == 1 and len(schedulers) == 1 else None

    async def _tables_agree(self, ips: tuple[str, ...]) -> list[tuple[Any, Any]] | None:
        found = await self.client_lines(ips)
        return found if len(set(found)) == 1 and found[0][1] is not None else None

    async def connect_to(self, ip: str, port: int) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.e2e.harness import CLIENT_DEADLINE, RawClient, within

        client: RawClient = await within(
            connectProtocol(TCP4ClientEndpoint(reactor, ip, port, timeout=5), RawClient()),
            CLIENT_DEADLINE,
            f"a connection to {ip}:{port}",
        )
        self.addCleanup(client.close)
        return client
