"""The control plane end to end: three real nodes on 127.0.0.11-13 sharing one config,
the array's certificates made by ``dlba-ctl certs init``, and ``dlba-ctl`` driving them
over mutual TLS: status, scheduler, table, a good push (all commit), a bad push (none
change, every node's errors), a push with a node down (it is named), back-end states."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.harness import (
    Dlba,
    E2ETestCase,
    ProcessResult,
    array_config,
    dlba_ctl,
    run,
    status_lines,
)
from tests.e2e.test_array_e2e import IPS, free_port_on_all


class ControlTests(E2ETestCase):
    timeout = 180

    def config_text(self, status_port: int, sync_port: int, backends: list[str]) -> str:
        return array_config(self.dir, status_port, sync_port, backends)

    async def ctl(self, *args: str) -> ProcessResult:
        argv, env = dlba_ctl(*args)
        return await run(argv, env=env, deadline=30)

    async def node(self, number: int) -> Dlba:
        dlba = Dlba(self.config_path, "--node", str(number))
        self.addCleanup(self._stop_dlba, dlba)
        await dlba.started(["http", "status", "sync"])
        return dlba

    async def backends_of(self, ip: str) -> list[str]:
        lines = await status_lines(self.status_port, b"STATUS", host=ip)
        return [x["address"] for x in lines if x["table"] == "backend"]

    async def test_push_status_scheduler_table_and_states(self) -> None:
        b1, b2 = self.backend("b1"), self.backend("b2")
        await b1.ready()
        await b2.ready()
        try:
            self.status_port = free_port_on_all(IPS)
            sync_port = free_port_on_all(IPS)
        except OSError as e:
            self.skipTest(f"cannot bind 127.0.0.11-13 here: {e}")
        self.config_path = self.write(
            "dlba.toml", self.config_text(self.status_port, sync_port, [b1.address])
        )
        made = await self.ctl("certs", "init", "--config", self.config_path)
        self.assertEqual(made.code, 0, made.text)
        self.assertEqual(len(made.stdout.split()), 6)  # CA, its key, 3 nodes, admin
        nodes = [await self.node(n) for n in (1, 2, 3)]
        cfg = ("--config", self.config_path)
        # The election runs first (a start-up grace of ping_interval * ping_misses).
        await nodes[0].wait_event(
            lambda e: "scheduler now" in e.get("log_format", ""), "node 1 to be elected"
        )

        result = await self.ctl("status", *cfg, "--json")
        self.assertEqual(result.code, 0, result.text)
        status: dict[str, Any] = json.loads(result.out)
        self.assertEqual(sorted(status), ["1", "2", "3"])
        self.assertEqual(status["1"]["node"]["role"], "scheduler")
        self.assertEqual(status["2"]["node"]["role"], "node")

        result = await self.ctl("scheduler", *cfg)
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(len(result.stdout.splitlines()), 4)  # a head and a row per node

        result = await self.ctl("table", *cfg, "--json")
        self.assertEqual(result.code, 0, result.text)
        table = json.loads(result.out)
        self.assertEqual((table["node"], table["size"], table["full"]), (1, 4093, True))
        self.assertEqual(set(table["buckets"].values()), {-1})

        # A good push: every node validates, then every node commits and reloads.
        good = self.write(
            "new.toml", self.config_text(self.status_port, sync_port, [b1.address, b2.address])
        )
        result = await self.ctl("push", *cfg, good)
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(result.stdout.count("committed serial 1"), 3, result.text)
        for ip in IPS:
            self.assertEqual(await self.backends_of(ip), [b1.address, b2.address])
        with open(self.config_path) as f:
            self.assertIn(b2.address, f.read())  # a restart comes up with it

        # A bad push: nobody changes, and each node says why.
        bad = self.write(
            "bad.toml",
            self.config_text(self.status_port, sync_port, [b1.address]).replace(
                '"round-robin"', '"fastest"'
            ),
        )
        result = await self.ctl("push", *cfg, bad)
        self.assertEqual(result.code, 1, result.text)
        self.assertEqual(result.stdout.count("refused:"), 3, result.text)
        self.assertEqual(result.stdout.count("pool[1].policy"), 3, result.text)
        for ip in IPS:
            self.assertEqual(await self.backends_of(ip), [b1.address, b2.address])

        # Back-end states go to every node.
        result = await self.ctl("backend", *cfg, "drain", "2", "--grace", "5", "--json")
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(json.loads(result.out), {str(n): {"state": "drain"} for n in (1, 2, 3)})
        for ip in IPS:
            lines = await status_lines(self.status_port, b"STATUS", host=ip)
            [row] = [x for x in lines if x["table"] == "backend" and x["number"] == 2]
            self.assertTrue(row["draining"])

        # A node down during a push is named; the others commit; the exit code says so.
        await nodes[2].child.terminate()
        result = await self.ctl(
            "push",
            *cfg,
            self.write("one.toml", self.config_text(self.status_port, sync_port, [b2.address])),
        )
        self.assertEqual(result.code, 4, result.text)
        self.assertIn("node 3: not reached", result.stdout)
        self.assertEqual(result.stdout.count("committed serial 2"), 2, result.text)
        for ip in IPS[:2]:
            self.assertEqual(await self.backends_of(ip), [b2.address])

        # Back, node 3 asks its peers and takes the newer config (serial 2) it missed.  (The
        # three nodes share one file here, so its text is already on disk; its serial file
        # still says 1, for the old text.)
        nodes[2] = await self.node(3)
        await nodes[2].wait_event(
            lambda e: e.get("log_namespace") == "dlba.array.catchup" and e.get("serial") == 2,
            "node 3 to catch up with serial 2",
        )
        self.assertEqual(await self.backends_of(IPS[2]), [b2.address])

        # Node states go to every node.
        result = await self.ctl("node", *cfg, "disable", "2", "--json")
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(json.loads(result.out), {str(n): {"state": "disabled"} for n in (1, 2, 3)})
        await nodes[1].child.terminate()
        result = await self.ctl("node", *cfg, "enable", "2")
        self.assertEqual(result.code, 4, result.text)  # node 2 is down: done elsewhere
        self.assertIn("not reached", result.stdout)
