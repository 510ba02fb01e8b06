"""dlba-lab's pure parts: the addressing plan, the config it writes, the state file, the
status table; and the one-line answers to a person's mistakes (no root needed here: the
namespaces themselves are tests/e2e/test_lab_e2e.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from dlba import labplan
from dlba.config import parse, with_node
from dlba.lab import cli, netns, ops, wait
from dlba.labplan import (
    VIP,
    HostStatus,
    LabError,
    Process,
    State,
    config_text,
    is_lab_namespace,
    mac_of,
    make_plan,
    overall,
    parse_proc_stat,
    parse_state,
    prefix_for,
    render_status,
)


class PlanTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        plan = make_plan(3, 2)
        self.assertEqual(
            [(h.name, h.ip) for h in plan.attached],
            [
                ("client", "10.77.0.2"),
                ("node1", "10.77.0.11"),
                ("node2", "10.77.0.12"),
                ("node3", "10.77.0.13"),
                ("web1", "10.77.0.21"),
                ("web2", "10.77.0.22"),
            ],
        )
        self.assertEqual(plan.bridge.ip, None)
        self.assertEqual(plan.hosts[0].name, "bridge")

    def test_mac_is_02_00_and_the_ip(self) -> None:
        self.assertEqual(mac_of("10.77.0.11"), "02:00:0a:4d:00:0b")
        self.assertEqual(make_plan(1, 1).node(1).mac, "02:00:0a:4d:00:0b")
        self.assertEqual(make_plan(1, 1).client.mac, "02:00:0a:4d:00:02")

    def test_namespaces_carry_the_prefix(self) -> None:
        self.assertEqual(make_plan(1, 1).node(1).namespace, "dlbalab-node1")
        named = make_plan(2, 1, "t1")
        self.assertEqual(
            [h.namespace for h in named.hosts][:2], ["dlbalab-t1-bridge", "dlbalab-t1-client"]
        )
        # The bridge port facing a host is named after it (unique inside the bridge's namespace).
        self.assertEqual(named.node(2).port, "node2")

    def test_limits(self) -> None:
        # Node ips stop below the web servers', web ips below the VIP.
        self.assertEqual(make_plan(9, 79).web(79).ip, "10.77.0.99")
        for nodes, backends in ((0, 1), (10, 1), (1, 0), (1, 80)):
            with self.assertRaises(LabError) as caught:
                make_plan(nodes, backends)
            self.assertEqual(caught.exception.status, 2)

    def test_names(self) -> None:
        self.assertEqual(prefix_for(""), "dlbalab-")
        self.assertEqual(prefix_for("e2e1"), "dlbalab-e2e1-")
        for bad in ("Upper", "with-dash", "x" * 13, "a b"):
            self.assertRaises(LabError, prefix_for, bad)

    def test_host_lookup_names_the_choices(self) -> None:
        plan = make_plan(2, 1)
        self.assertEqual(plan.host("web1").ip, "10.77.0.21")
        with self.assertRaises(LabError) as caught:
            plan.host("node3")
        self.assertIn("bridge, client, node1, node2, web1", str(caught.exception))

    def test_which_namespaces_are_the_labs(self) -> None:
        self.assertTrue(is_lab_namespace("dlbalab-client", "dlbalab-"))
        self.assertTrue(is_lab_namespace("dlbalab-web79", "dlbalab-"))
        self.assertTrue(is_lab_namespace("dlbalab-t1-node3", "dlbalab-t1-"))
        # Another lab's, and names the lab never makes, are not.
        self.assertFalse(is_lab_namespace("dlbalab-t1-node3", "dlbalab-"))
        self.assertFalse(is_lab_namespace("dlbalab-client", "dlbalab-t1-"))
        self.assertFalse(is_lab_namespace("dlbalab-node10", "dlbalab-"))
        self.assertFalse(is_lab_namespace("dlbalab-other", "dlbalab-"))
        self.assertFalse(is_lab_namespace("client", "dlbalab-"))


class ConfigTextTests(SynchronousTestCase):
    def config(self, nodes: int = 3, backends: int = 2):
        return parse(config_text(make_plan(nodes, backends), "/lab"), "/lab/dlba.toml")

    def test_dlba_reads_it(self) -> None:
        config = self.config()
        self.assertEqual(config.array.vip, VIP)
        self.assertEqual(config.array.interface, "eth0")
        self.assertEqual(
            [(n.number, n.mac, n.ip) for n in config.array.nodes],
            [
                (1, "02:00:0a:4d:00:0b", "10.77.0.11"),
                (2, "02:00:0a:4d:00:0c", "10.77.0.12"),
                (3, "02:00:0a:4d:00:0d", "10.77.0.13"),
            ],
        )
        (pool,) = config.pools
        self.assertEqual([b.address for b in pool.backends], ["10.77.0.21:8080", "10.77.0.22:8080"])
        self.assertEqual([b.number for b in pool.backends], [1, 2])

    def test_every_node_gets_its_own_files(self) -> None:
        node2 = with_node(self.config(), 2)
        self.assertEqual(node2.node.state_dir, "/lab/state2")
        self.assertEqual(node2.tls.node_certificate, "/lab/tls/node2.pem")
        self.assertEqual(node2.log.access_log, "/lab/node2-access.log")
        self.assertEqual(node2.tls.ca, "/lab/tls/ca.pem")
        self.assertEqual(node2.tls.admin_certificate, "/lab/tls/admin.pem")
        self.assertEqual(node2.tls.certificates, ("/lab/tls/www.pem",))

    def test_listeners(self) -> None:
        listen = self.config().listen
        # Clients' listeners on every address of the node's namespace: its ip and the VIP.
        self.assertEqual(listen.http, "tcp:80:interface=0.0.0.0")
        self.assertEqual(listen.https, "tcp:443:interface=0.0.0.0")
        # The rest bind to the node's own ip (no interface=), where peers reach them.
        self.assertEqual(
            (listen.status, listen.sync, listen.admin), ("tcp:7701", "tcp:7702", "tcp:7780")
        )

    def test_the_fast_path_setting(self) -> None:
        self.assertEqual(self.config().array.fast_path, "auto")
        for mode in ("nftables", "off"):
            text = config_text(make_plan(2, 1, fast_path=mode), "/lab")
            self.assertEqual(parse(text, "/lab/dlba.toml").array.fast_path, mode)
        with self.assertRaises(LabError) as caught:
            make_plan(2, 1, fast_path="xdp")
        self.assertEqual(caught.exception.status, 2)
        self.assertIn("auto, nftables, off", str(caught.exception))

    def test_one_node_one_backend(self) -> None:
        config = self.config(1, 1)
        self.assertEqual(len(config.array.nodes), 1)
        self.assertEqual(len(config.pools[0].backends), 1)


def a_state() -> State:
    return State(
        directory="/lab",
        prefix="dlbalab-",
        nodes=1,
        backends=1,
        phase="up",
        namespaces=["dlbalab-bridge", "dlbalab-client", "dlbalab-node1", "dlbalab-web1"],
        processes=[
            Process("web1", "demo back end", 101, 5000, "/lab/web1.log"),
            Process("node1", "twistd dlba", 102, 5001, "/lab/node1.log"),
        ],
    )


class StateTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        state = a_state()
        again = parse_state(state.dumps(), "/lab/state.json")
        self.assertEqual(again, state)
        self.assertEqual(
            again.process("node1"), Process("node1", "twistd dlba", 102, 5001, "/lab/node1.log")
        )
        self.assertIsNone(again.process("node2"))
        self.assertEqual(again.plan, make_plan(1, 1))

    def assertRefused(self, text: str, words: str) -> None:
        with self.assertRaises(LabError) as caught:
            parse_state(text, "/lab/state.json")
        message = str(caught.exception)
        self.assertIn("/lab/state.json", message)
        self.assertIn(words, message)
        self.assertNotIn("\n", message)

    def test_not_json(self) -> None:
        self.assertRefused("{", "not JSON")
        self.assertRefused("[]", "not a JSON object")

    def test_other_version(self) -> None:
        raw = json.loads(a_state().dumps())
        raw["version"] = 99
        self.assertRefused(json.dumps(raw), "version 99")

    def test_wrong_fields(self) -> None:
        raw = json.loads(a_state().dumps())
        del raw["prefix"]
        self.assertRefused(json.dumps(raw), "missing or wrong field")
        raw = json.loads(a_state().dumps())
        raw["processes"][0]["pid"] = "101"
        self.assertRefused(json.dumps(raw), "missing or wrong field")
        raw = json.loads(a_state().dumps())
        raw["processes"][0]["extra"] = 1
        self.assertRefused(json.dumps(raw), "missing or wrong field")

    def test_namespaces_that_are_not_the_labs(self) -> None:
        # A state file is what down removes by: it must never name the machine's others.
        raw = json.loads(a_state().dumps())
        raw["namespaces"].append("production")
        self.assertRefused(json.dumps(raw), "not the lab's")
        raw = json.loads(a_state().dumps())
        raw["prefix"] = ""
        self.assertRefused(json.dumps(raw), "prefix")


class GrowTests(SynchronousTestCase):
    def test_the_next_node_is_appended(self) -> None:
        plan, host = labplan.grown(a_state())
        self.assertEqual((plan.nodes, plan.backends, host.name), (2, 1, "node2"))
        self.assertEqual((host.ip, host.namespace), ("10.77.0.12", "dlbalab-node2"))
        text = labplan.config_text(plan, "/lab")
        before = labplan.config_text(a_state().plan, "/lab")
        # The grown config is the old one with node 2 appended to [[array.node]].
        self.assertEqual(text.count("[[array.node]]"), 2)
        self.assertLess(text.index("number = 1\nmac"), text.index("number = 2\nmac"))
        old, new = parse(before, "dlba.toml"), parse(text, "dlba.toml")
        self.assertEqual(new.array.nodes[:1], old.array.nodes)
        self.assertEqual(new.array.nodes[1].ip, "10.77.0.12")
        self.assertEqual(dataclasses.replace(new.array, nodes=old.array.nodes), old.array)
        self.assertEqual(new.pools, old.pools)

    def test_a_pushed_config_keeps_its_changes_when_a_node_is_appended(self) -> None:
        plan, host = labplan.grown(a_state())
        pushed = labplan.config_text(a_state().plan, "/lab").replace(
            "[array]\n", "[array]\nbucket_idle_timeout = 4.0\n"
        )
        text = labplan.append_node(pushed, host)
        self.assertTrue(text.startswith(pushed.rstrip("\n")))
        config = parse(text, "dlba.toml")
        self.assertEqual(config.array.bucket_idle_timeout, 4.0)
        self.assertEqual(
            [(n.number, n.ip, n.mac) for n in config.array.nodes],
            [(1, "10.77.0.11", "02:00:0a:4d:00:0b"), (2, "10.77.0.12", "02:00:0a:4d:00:0c")],
        )
        self.assertEqual(
            parse(labplan.config_text(plan, "/lab"), "d").array.nodes, config.array.nodes
        )

    def test_not_when_full_or_not_up(self) -> None:
        full = a_state()
        full.nodes = labplan.MAX_NODES
        with self.assertRaises(LabError) as caught:
            labplan.grown(full)
        self.assertIn("the most it can hold", str(caught.exception))
        building = a_state()
        building.phase = "building"
        with self.assertRaises(LabError) as caught:
            labplan.grown(building)
        self.assertIn("not up", str(caught.exception))

    def test_push_reports(self) -> None:
        ok = {"committed": True, "errors": {}, "down": {"2": "refused"}, "serial": 3}
        self.assertIsNone(labplan.push_problem(ok))
        self.assertEqual(labplan.not_reached(ok, 2), [])
        self.assertEqual(labplan.not_reached({**ok, "down": {"1": "x", "2": "y"}}, 2), [1])
        refused = {"committed": False, "errors": {"1": "array.node: the order\nmore"}}
        self.assertEqual(
            labplan.push_problem(refused), "node 1 refused the new config: array.node: the order"
        )
        self.assertEqual(
            labplan.push_problem({"committed": False, "errors": {}}),
            "no node committed the new config",
        )


class ProcStatTests(SynchronousTestCase):
    def test_fields(self) -> None:
        line = "4242 (python3) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 0"
        self.assertEqual(parse_proc_stat(line), ("S", 987654))

    def test_a_name_with_spaces_and_parentheses(self) -> None:
        line = "7 (a (b) c) Z 1 7 7 0 -1 0 " + " ".join(["0"] * 12) + " 31337 0"
        self.assertEqual(parse_proc_stat(line), ("Z", 31337))

    def test_this_process(self) -> None:
        with open("/proc/self/stat") as f:
            state, start = parse_proc_stat(f.read())
        self.assertEqual(state, "R")
        self.assertGreater(start, 0)


def host(
    name: str, exists: bool = True, pid: int | None = None, alive: bool | None = None
) -> HostStatus:
    return HostStatus(
        name,
        f"dlbalab-{name}",
        exists,
        "10.77.0.2",
        "02:00:0a:4d:00:02",
        pid=pid,
        alive=alive,
        what="x" if pid else None,
    )


class StatusTests(SynchronousTestCase):
    def test_overall(self) -> None:
        self.assertEqual(overall([host("client"), host("node1", pid=1, alive=True)]), "up")
        self.assertEqual(overall([host("client"), host("node1", pid=1, alive=False)]), "degraded")
        self.assertEqual(
            overall([host("client", exists=False), host("node1", pid=1, alive=True)]), "degraded"
        )
        self.assertEqual(
            overall(
                [host("client", exists=False), host("node1", exists=False, pid=1, alive=False)]
            ),
            "down",
        )

    def test_table_is_aligned(self) -> None:
        text = render_status(
            [host("client"), host("node1", pid=12345, alive=True), host("web1", exists=False)],
            ["up: header"],
        )
        lines = text.splitlines()
        self.assertEqual(lines[:2], ["up: header", ""])
        table = lines[2:]
        self.assertTrue(table[0].startswith("NAME"))
        # Every column starts at the same offset on every row.
        at = table[0].index("NAMESPACE")
        self.assertTrue(all(row[at - 2 : at] == "  " and row[at] != " " for row in table))
        self.assertTrue(table[2].endswith("running"))
        self.assertTrue(table[3].endswith("namespace missing"))


class PreflightTests(SynchronousTestCase):
    def test_not_root(self) -> None:
        with self.assertRaises(LabError) as caught:
            netns.preflight(geteuid=lambda: 1000, which=lambda _: "/sbin/ip")
        self.assertIn("needs root", str(caught.exception))

    def test_no_ip(self) -> None:
        with self.assertRaises(LabError) as caught:
            netns.preflight(geteuid=lambda: 0, which=lambda _: None)
        self.assertIn("iproute2", str(caught.exception))


class CommandLineTests(SynchronousTestCase):
    def main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def assertOneLine(self, text: str, *words: str) -> None:
        self.assertEqual(len(text.splitlines()), 1, text)
        self.assertNotIn("Traceback", text)
        for w in words:
            self.assertIn(w, text)

    def test_bad_usage(self) -> None:
        code, _, err = self.main("up", "--nodes", "many")
        self.assertEqual(code, 2)
        self.assertOneLine(err, "--nodes", "dlba-lab")
        code, _, err = self.main("add-node", "--timeout", "soon")
        self.assertEqual(code, 2)
        self.assertOneLine(err, "--timeout", "dlba-lab")
        code, _, err = self.main("frobnicate")
        self.assertEqual(code, 2)
        self.assertOneLine(err)

    def test_no_lab_there(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        code, _, err = self.main("kill", "node1", "--dir", d)
        self.assertNotEqual(code, 0)
        # As root: there is no lab; otherwise: root is needed.  One line either way.
        self.assertOneLine(err, "dlba-lab: kill:")
        if os.geteuid() == 0:
            self.assertIn(f"no lab in {d}", err)


class WaitTests(SynchronousTestCase):
    def test_gives_up_at_the_deadline_naming_each_url(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            code = wait.main(["--deadline", "0", "http://127.0.0.1:1/"])
        self.assertEqual(code, wait.NOT_ANSWERED)
        (line,) = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(event["url"], "http://127.0.0.1:1/")
        self.assertIn("refused", event["error"])


class DirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_one_up_or_down_at_a_time(self) -> None:
        d = os.path.join(self.tmp, "lab")
        with ops.exclusive(d):
            self.assertEqual(os.stat(d).st_mode & 0o777, 0o700)
            with self.assertRaises(LabError) as caught:
                with ops.exclusive(d):
                    pass
            self.assertIn("another dlba-lab up or down", str(caught.exception))
        with ops.exclusive(d):  # free again
            pass

    def test_a_planted_symlink_is_refused(self) -> None:
        link = os.path.join(self.tmp, "link")
        os.symlink(os.path.join(self.tmp, "elsewhere"), link)
        with self.assertRaises(LabError) as caught:
            with ops.exclusive(link):
                pass
        self.assertIn("symlink", str(caught.exception))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "elsewhere")))

    def test_hints_name_the_directory_only_when_not_the_default(self) -> None:
        self.assertEqual(ops.hint_args(ops.DEFAULT_DIR), "")
        self.assertEqual(ops.hint_args("/x", "t1"), " --dir /x --name t1")

    def test_urls_the_readiness_check_waits_for(self) -> None:
        urls = ops.array_urls(make_plan(2, 1))
        self.assertEqual(
            urls,
            {
                "http://10.77.0.21:8080/": "web1",
                "http://10.77.0.11/": "node1",
                "https://10.77.0.11/": "node1",
                "http://10.77.0.12/": "node2",
                "https://10.77.0.12/": "node2",
            },
        )
