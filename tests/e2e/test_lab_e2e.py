"""dlba-lab end to end, as root: real namespaces, a real bridge, real twistd nodes and web
servers, curl from the client namespace.

Each test builds a lab of its own name (``--name``), so its namespaces
(``dlbalab-<name>-*``) cannot meet a lab someone runs on this machine, and takes it
down in a cleanup that runs whatever the outcome (then removes, by that exact prefix,
anything still left).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from dlba.lab import ops
from dlba.labplan import VIP, is_lab_namespace, parse_proc_stat, prefix_for
from tests.e2e.harness import CHILD_ENV, FROM_TREE, REPO, ProcessResult, need, run

LAB_DEADLINE = 45.0  # one dlba-lab command, up included (its own --timeout is less)


def lab_argv(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``dlba-lab``: the installed one, or this tree's with DLBA_E2E_TREE."""
    if FROM_TREE:
        return [sys.executable, "-m", "dlba.lab", *args], dict(CHILD_ENV, PYTHONPATH=REPO)
    found = shutil.which("dlba-lab")
    if found is None:
        raise SkipTest("dlba-lab is not installed (pip install . first, or DLBA_E2E_TREE=1)")
    return [found, *args], CHILD_ENV


def need_namespaces() -> None:
    if os.geteuid() != 0:
        raise SkipTest("dlba-lab needs root (network namespaces); run the lab tests as root")
    if shutil.which("ip") is None:
        raise SkipTest("ip (iproute2) is not installed")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if listed.returncode != 0 or not os.path.exists("/proc/self/ns/net"):
        raise SkipTest(f"ip netns is unavailable here: {listed.stderr.decode().strip()}")


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [n.split()[0] for n in out.stdout.splitlines() if is_lab_namespace(n.split()[0], prefix)]


def running(pid: int, starttime: int) -> bool:
    try:
        state, start = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return False
    return start == starttime and state not in ("Z", "X")


def marked(prefix: str) -> list[int]:
    """Live processes some dlba-lab up of this lab started (their environment's mark)."""
    mark = f"DLBA_LAB={prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state, _ = parse_proc_stat((entry / "stat").read_text())
        except OSError:
            continue
        if mark in environ and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


class LabTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        need_namespaces()
        need("curl")
        lab_argv()  # skips now, not in the cleanup, when there is no dlba-lab to run
        self.dir = tempfile.mkdtemp(prefix="dlba-lab-e2e-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        # Unique per test run: two runs at once, or a lab someone has up, never clash.
        self.name = f"t{os.getpid() % 100000}{len(self._testMethodName) % 10}"
        self.prefix = prefix_for(self.name)
        self.addCleanup(self.clean_up)

    async def clean_up(self) -> None:
        await self.lab("down", "--name", self.name)
        # Should down have failed: remove what is left by this test's exact prefix.
        for ns in namespaces(self.prefix):
            subprocess.run(["ip", "netns", "delete", ns], timeout=10, check=False)

    async def lab(self, *args: str) -> ProcessResult:
        # --dir right after the command: after exec's "--" it would be the command's.
        argv, env = lab_argv(args[0], "--dir", self.dir, *args[1:])
        return await run(argv, env=env, deadline=LAB_DEADLINE)

    async def up(self, nodes: int, backends: int) -> ProcessResult:
        result = await self.lab(
            "up", "--nodes", str(nodes), "--backends", str(backends), "--name", self.name
        )
        self.assertEqual(result.code, 0, result.text)
        return result

    async def status(self) -> tuple[int | None, dict[str, Any]]:
        result = await self.lab("status", "--json", "--name", self.name)
        return result.code, json.loads(result.out)

    def recorded(self) -> dict[str, dict[str, Any]]:
        state = json.loads(Path(self.dir, "state.json").read_text())
        return {p["host"]: p for p in state["processes"]}

    async def curl_all(self, urls: list[str]) -> list[tuple[str, str]]:
        """(url, body) for each, each on a connection of its own, from the client."""
        ca = os.path.join(self.dir, "tls", "web-ca.pem")
        args = ["exec", "client", "--", "curl", "-sS", "--noproxy", "*", "--max-time", "10"]
        args += ["--cacert", ca, "-H", "Connection: close", "-w", "\\n@@%{url_effective}\\n"]
        result = await self.lab(*args, *urls)
        self.assertEqual(result.code, 0, result.text)
        answers = []
        body: list[str] = []
        for line in result.stdout.splitlines():
            if line.startswith("@@"):
                answers.append((line[2:], "\n".join(body)))
                body = []
            elif line:
                body.append(line)
        return answers

    async def test_the_whole_lab(self) -> None:
        await self.up(3, 2)
        again = await self.lab("up", "--nodes", "3", "--backends", "2", "--name", self.name)
        self.assertEqual(again.code, 0, again.text)
        self.assertIn("already up", again.text)

        # Every node answers on its own ip, HTTPS (the lab's CA) and HTTP, and spreads the
        # requests over both web servers.
        nodes = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
        urls = [f"https://{ip}/" for ip in nodes for _ in range(4)]
        urls += [f"http://{ip}/" for ip in nodes]
        answers = await self.curl_all(urls)
        self.assertEqual([u for u, _ in answers], urls)
        for ip in nodes:
            served = {body.split()[1] for u, body in answers if u == f"https://{ip}/"}
            self.assertEqual(served, {"1", "2"}, f"node {ip} answered {answers}")
        self.assertTrue(all(body.startswith("backend ") for _, body in answers), answers)

        code, report = await self.status()
        self.assertEqual((code, report["state"]), (0, "up"), report)
        hosts = {h["name"]: h for h in report["hosts"]}
        self.assertEqual(
            sorted(hosts), ["bridge", "client", "node1", "node2", "node3", "web1", "web2"]
        )
        self.assertTrue(all(h["exists"] for h in hosts.values()))
        self.assertEqual(hosts["node2"]["ip"], "10.77.0.12")
        self.assertEqual(hosts["node2"]["mac"], "02:00:0a:4d:00:0c")
        self.assertEqual(hosts["web1"]["ip"], "10.77.0.21")
        for name in ("node1", "node2", "node3", "web1", "web2"):
            self.assertTrue(hosts[name]["alive"], hosts[name])
        self.assertEqual(hosts["node1"]["namespace"], f"{self.prefix}node1")

        # kill node1: that twistd only; its namespace stays, everything else runs on.
        # (A web server is not for killing: kill takes nodes.)
        refused = await self.lab("kill", "web1")
        self.assertEqual(refused.code, 2, refused.text)
        procs = self.recorded()
        killed = await self.lab("kill", "node1")
        self.assertEqual(killed.code, 0, killed.text)
        self.assertFalse(running(procs["node1"]["pid"], procs["node1"]["starttime"]))
        for name in ("node2", "node3", "web1", "web2"):
            self.assertTrue(running(procs[name]["pid"], procs[name]["starttime"]), name)
        code, report = await self.status()
        self.assertEqual((code, report["state"]), (1, "degraded"))
        hosts = {h["name"]: h for h in report["hosts"]}
        self.assertFalse(hosts["node1"]["alive"])
        self.assertTrue(hosts["node1"]["exists"])
        self.assertTrue(hosts["node2"]["alive"])
        answers = await self.curl_all(["https://10.77.0.12/"])
        self.assertTrue(answers[0][1].startswith("backend "))

        # start node1: a new twistd, answering, the lab whole again.
        started = await self.lab("start", "node1")
        self.assertEqual(started.code, 0, started.text)
        again = await self.lab("start", "node1")
        self.assertIn("runs already", again.text)
        code, report = await self.status()
        self.assertEqual((code, report["state"]), (0, "up"), report)
        restarted = self.recorded()["node1"]
        self.assertNotEqual(restarted["pid"], procs["node1"]["pid"])
        procs["node1 again"] = restarted
        answers = await self.curl_all(["https://10.77.0.11/"])
        self.assertTrue(answers[0][1].startswith("backend "))

        # The packet scheduler makes the VIP answer: the array, reached as clients reach it.
        state = ops.load_state(self.dir)
        assert state is not None
        ops.wait_for_vip(state, ops.Started(), 10.0)
        answers = await self.curl_all([f"https://{VIP}/"])
        self.assertTrue(answers[0][1].startswith("backend "))

        # down: every process and namespace gone; again: nothing to do, and it says so.
        result = await self.lab("down")
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(namespaces(self.prefix), [])
        self.assertEqual(marked(self.prefix), [])
        for name, p in procs.items():
            self.assertFalse(running(p["pid"], p["starttime"]), f"{name} still runs")
        self.assertFalse(Path(self.dir, "state.json").exists())
        # The logs stay, and no process of the lab logged a traceback, stopping included.
        for log in sorted(Path(self.dir).glob("*.log")):
            self.assertNotIn("Traceback", log.read_text(), f"{log} holds a traceback")
        self.assertEqual(len(list(Path(self.dir).glob("node*.log"))), 6)  # and the access logs
        result = await self.lab("down", "--name", self.name)
        self.assertEqual(result.code, 0, result.text)
        self.assertIn("already down", result.text)
        code, report = await self.status()
        self.assertEqual((code, report["state"]), (3, "down"))

    async def test_down_after_a_crash(self) -> None:
        # Everything the lab started died with it (a crash), its record is still there.
        await self.up(1, 1)
        procs = self.recorded()
        for p in procs.values():
            os.kill(p["pid"], signal.SIGKILL)
        code, report = await self.status()
        self.assertEqual(report["state"], "degraded")
        self.assertEqual(code, 1)
        refused = await self.lab("up", "--nodes", "1", "--backends", "1", "--name", self.name)
        self.assertEqual(refused.code, 1, refused.text)
        self.assertIn("down", refused.err.decode())
        result = await self.lab("down")
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(namespaces(self.prefix), [])
        self.assertEqual(marked(self.prefix), [])

    async def test_down_without_the_state_file(self) -> None:
        # The record is lost and the processes run on: down finds the namespaces by name
        # and, in them, the processes some up started (they carry its mark).
        await self.up(1, 1)
        procs = self.recorded()
        os.unlink(os.path.join(self.dir, "state.json"))
        code, report = await self.status()
        self.assertEqual((code, report["state"]), (1, "degraded"))
        self.assertEqual(len(report["leftovers"]), 4)
        result = await self.lab("down", "--name", self.name)
        self.assertEqual(result.code, 0, result.text)
        self.assertEqual(namespaces(self.prefix), [])
        self.assertEqual(marked(self.prefix), [])
        for name, p in procs.items():
            self.assertFalse(running(p["pid"], p["starttime"]), f"{name} still runs")

    async def test_mistakes_get_one_line(self) -> None:
        for args, status in (
            (("exec", "client", "--", "true"), 1),  # no lab yet
            (("up", "--nodes", "0", "--name", self.name), 2),
            (("kill", "web1"), 1),
        ):
            result = await self.lab(*args)
            self.assertEqual(result.code, status, result.text)
            self.assertEqual(len(result.err.splitlines()), 1, result.text)
            self.assertNotIn(b"Traceback", result.err)

    async def test_up_that_times_out_names_the_log_and_leaves_nothing(self) -> None:
        # Nothing can answer within 0.1 s of its start (twistd alone takes longer to load).
        result = await self.lab(
            "up", "--nodes", "1", "--backends", "1", "--name", self.name, "--timeout", "0.1"
        )
        self.assertEqual(result.code, 1, result.text)
        err = result.err.decode()
        self.assertIn("did not answer", err)
        self.assertIn(f"see {self.dir}/", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(namespaces(self.prefix), [])
        self.assertEqual(marked(self.prefix), [])
        self.assertFalse(Path(self.dir, "state.json").exists())
