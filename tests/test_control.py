"""The node's side of the control plane: staging, commit, serials, states."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dlba.array import commands as c
from dlba.array.control import SERIAL_FILE, Committed, ControlPlane, digest_of, read_committed
from dlba.config import Config, parse
from dlba.report import NodeReport
from dlba.tables import BackendStatusTable, NodeState, NodeStatusTable

GOOD = """
[node]
number = 1
state_dir = "{state}"
[[array.node]]
number = 1
mac = "02:00:00:00:00:01"
ip = "127.0.0.11"
[[array.node]]
number = 2
mac = "02:00:00:00:00:02"
ip = "127.0.0.12"
[[pool]]
name = "app"
[[pool.backend]]
number = 1
address = "127.0.0.1:9001"
[[pool.backend]]
number = 2
address = "127.0.0.1:{port}"
"""


class Proxy:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def enable_backend(self, number: int) -> None:
        self.calls.append(("enable", number))

    def disable_backend(self, number: int) -> None:
        self.calls.append(("disable", number))

    def drain_backend(self, number: int, grace: float) -> None:
        self.calls.append(("drain", number, grace))


class ControlPlaneTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dlba-control-")
        self.addCleanup(shutil.rmtree, self.dir)
        self.state = os.path.join(self.dir, "state")
        self.path = os.path.join(self.dir, "dlba.toml")
        text = self.text(9002)
        with open(self.path, "w") as f:
            f.write(text)
        self.config = parse(text, self.path)
        self.applied: list[Config] = []
        self.proxy = Proxy()
        self.nodes = NodeStatusTable(
            [NodeState(1, "02:00:00:00:00:01", "127.0.0.11"), NodeState(2, "", "127.0.0.12")]
        )
        self.plane = ControlPlane(
            self.config,
            read_committed(self.path, self.state),
            NodeReport(1, 0.0, BackendStatusTable()),
            apply=self.applied.append,
            backends=self.proxy,
            nodes=self.nodes,
            clock=Clock(),
        )

    def text(self, port: int) -> str:
        return GOOD.format(state=self.state, port=port)

    def test_a_hand_written_file_has_serial_zero(self) -> None:
        self.assertEqual(self.plane.committed.serial, 0)

    def test_push_then_commit_replaces_the_file_and_applies(self) -> None:
        new = self.text(9003)
        digest = self.plane.push_config(new, 1)
        self.assertEqual(digest, digest_of(new))
        self.assertEqual(self.applied, [])  # validated only
        with open(self.path) as f:
            self.assertNotIn("9003", f.read())
        self.assertEqual(self.plane.commit_config(digest), 1)
        self.assertEqual([p.pools[0].backends[1].port for p in self.applied], [9003])
        with open(self.path) as f:
            self.assertIn("9003", f.read())
        self.assertEqual(read_committed(self.path, self.state), Committed(new, 1))
        self.assertEqual(self.plane.config_text(), (new, 1))
        self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".tmp")], [])

    def test_a_bad_config_is_refused_with_every_mistake(self) -> None:
        bad = self.text(9003).replace('name = "app"', 'name = "app"\npolicy = "fastest"')
        bad = bad.replace("[node]", "[node]\nnumbr = 1")
        with self.assertRaises(c.ConfigRefused) as caught:
            self.plane.push_config(bad, 1)
        lines = str(caught.exception).splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(f"{self.path}:3: node.numbr", lines[0])
        self.assertIn("pool[1].policy", lines[1])
        self.assertRaises(c.NothingStaged, self.plane.commit_config, digest_of(bad))

    def test_what_needs_a_restart_is_refused_at_validation(self) -> None:
        text = self.text(9003).replace("[node]", "[array]\ntable_size = 7\n[node]")
        with self.assertRaises(c.ConfigRefused) as caught:
            self.plane.push_config(text, 1)
        self.assertIn("node 1: array.table_size: needs a restart", str(caught.exception))
        self.assertRaises(c.NothingStaged, self.plane.commit_config, digest_of(text))

    def test_commit_needs_the_staged_digest(self) -> None:
        self.plane.push_config(self.text(9003), 1)
        self.assertRaises(c.NothingStaged, self.plane.commit_config, "0" * 64)
        self.assertEqual(self.applied, [])

    def test_an_older_serial_never_wins(self) -> None:
        self.plane.commit_config(self.plane.push_config(self.text(9003), 5))
        with self.assertRaises(c.ConfigRefused) as caught:
            self.plane.push_config(self.text(9004), 5)
        self.assertIn("not newer than the committed serial 5", str(caught.exception))

    def test_an_edited_file_loses_its_serial(self) -> None:
        self.plane.commit_config(self.plane.push_config(self.text(9003), 3))
        with open(self.path, "a") as f:
            f.write("# edited by hand\n")
        self.assertEqual(read_committed(self.path, self.state).serial, 0)
        with open(os.path.join(self.state, SERIAL_FILE)) as f:
            self.assertEqual(json.load(f)["serial"], 3)

    def test_backend_states(self) -> None:
        self.assertEqual(self.plane.set_backend_state("app", 2, "drain", 30.0), "drain")
        self.assertEqual(self.plane.set_backend_state("", 1, "disabled", 0.0), "disabled")
        self.assertEqual(self.proxy.calls, [("drain", 2, 30.0), ("disable", 1)])
        self.assertRaises(c.UnknownTarget, self.plane.set_backend_state, "web", 1, "enabled", 0)
        self.assertRaises(c.UnknownTarget, self.plane.set_backend_state, "app", 7, "enabled", 0)
        self.assertRaises(c.BadState, self.plane.set_backend_state, "app", 1, "off", 0)

    def test_node_states(self) -> None:
        self.assertEqual(self.plane.set_node_state(2, "disabled"), "disabled")
        row = self.nodes.get(2)
        assert row is not None
        self.assertFalse(row.enabled)
        self.assertRaises(c.UnknownTarget, self.plane.set_node_state, 9, "enabled")
        self.assertRaises(c.BadState, self.plane.set_node_state, 2, "drain")

    def test_status_is_the_report(self) -> None:
        self.assertEqual(json.loads(self.plane.status())["node"]["number"], 1)

    def test_no_client_table_yet(self) -> None:
        self.assertRaises(c.UnknownTarget, self.plane.client_table, 0, "")

    def test_a_peers_newer_config_is_adopted_and_an_older_one_refused(self) -> None:
        self.plane.adopt(self.text(9005), 3)
        self.assertEqual(self.plane.committed.serial, 3)
        self.assertEqual([p.pools[0].backends[1].port for p in self.applied], [9005])
        self.assertRaises(c.ConfigRefused, self.plane.adopt, self.text(9006), 2)


class TableSyncCostTests(SynchronousTestCase):
    def test_k_changed_buckets_cost_o_k_bytes(self) -> None:
        """GetClientTable's answer for k changes carries 8 bytes a bucket, not the table."""
        from dlba.clienttable import ClientTable
        from dlba.node import client_table_answer

        nodes = NodeStatusTable([NodeState(1, "", "127.0.0.11"), NodeState(2, "", "127.0.0.12")])
        table = ClientTable(65521, nodes, idle_timeout=300.0)
        report = NodeReport(1, 0.0, BackendStatusTable(), nodes=nodes, client_table=table)
        full = client_table_answer(report, -1, "")
        self.assertTrue(full["full"])
        self.assertEqual(len(full["buckets"]), 8 * 65521)
        since = table.version
        for bucket in (5, 900, 65000):
            table.lookup(bucket, 1.0)
        answer = client_table_answer(report, since, table.table_id)
        self.assertFalse(answer["full"])
        self.assertEqual(len(answer["buckets"]), 8 * 3)
        self.assertEqual(answer["version"], since + 3)
