"""The array in dlba-lab, as root (issue 12 §3): the packet scheduler under load, direct
return, sticky sessions across nodes, and the failover gap a client sees.

Each test brings up a lab of its own name (three nodes, two web servers) and takes it
down in a cleanup that runs whatever the outcome; every capture it starts is stopped
there too.  All traffic stays inside the lab's namespaces: the client's requests go
through ``dlba-lab exec client``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from dlba.config import ArraySection
from dlba.labplan import VIP, prefix_for
from tests.e2e.harness import CLIENT_DEADLINE, Child, ProcessResult, need, run, spawn, within
from tests.e2e.test_lab_e2e import lab_argv, namespaces, need_namespaces

LAB_DEADLINE = 45.0  # one dlba-lab command, up included
LOAD_DEADLINE = 60.0  # one curl process of the load, all its requests
NODES = {1: "10.77.0.11", 2: "10.77.0.12", 3: "10.77.0.13"}
MACS = {1: "02:00:0a:4d:00:0b", 2: "02:00:0a:4d:00:0c", 3: "02:00:0a:4d:00:0d"}
REQUESTS = 2000
CURLS = 4  # curl processes at once, REQUESTS / CURLS requests each, one after the other

# The client's probe for the failover gap: a new HTTPS connection every 10 ms, each
# given 0.8 s (less than TCP's first SYN retransmission, so an attempt started while the
# array is gone fails rather than succeeding late).  It prints "ready" after its first
# success, notes when the MARKER file appears (the test has killed the scheduler), ends
# 2 s after both the marker and the last failure, and prints its attempts as JSON.
PROBE = r"""
import asyncio, json, os, ssl, sys, time
vip, ca, marker, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
results = []
async def exchange():
    r, w = await asyncio.open_connection(vip, 443, ssl=ctx, server_hostname=vip)
    try:
        w.write(b"GET / HTTP/1.1\r\nHost: " + vip.encode() + b"\r\nConnection: close\r\n\r\n")
        return (await r.readline()).startswith(b"HTTP/1.1 200")
    finally:
        w.transport.abort()
async def attempt(t0):
    try:
        ok = await asyncio.wait_for(exchange(), 0.8)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        ok = False
    results.append((t0, ok))
async def main():
    start = time.monotonic()
    pending = set()
    ready = False
    marked = None
    while True:
        now = time.monotonic()
        task = asyncio.ensure_future(attempt(now))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if not ready and any(ok for _, ok in results):
            ready = True
            print("ready", flush=True)
        if marked is None and os.path.exists(marker):
            marked = now
        if marked is not None:
            last_failure = max((t for t, ok in results if not ok), default=marked)
            if now - max(marked, last_failure) >= 2.0:
                break
        if now - start > limit:
            break
        await asyncio.sleep(0.01)
    await asyncio.gather(*pending)
    print(json.dumps({"marked": marked, "attempts": sorted(results)}), flush=True)
asyncio.run(main())
"""


async def gather(runs: list[Deferred[list[tuple[str, str]]]]) -> list[list[tuple[str, str]]]:
    """Every run's result once all have ended; the first failure, if one failed."""
    try:
        return await gatherResults(runs, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
        raise


class StderrChild(Child):
    """A child whose waiters are poked on stderr too (tcpdump says it is ready there)."""

    def errReceived(self, data: bytes) -> None:
        super().errReceived(data)
        self.printed.poke()


def pcap_records(path: str) -> list[bytes]:
    """Every frame (as captured, maybe cut short) of a classic pcap file of Ethernet."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise AssertionError(f"{path} is no pcap file ({len(data)} bytes)")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise AssertionError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    if linktype != 1:
        raise AssertionError(f"{path}: link type {linktype}, not Ethernet")
    frames = []
    at = 24
    while at + 16 <= len(data):
        _, _, length, _ = struct.unpack(endian + "IIII", data[at : at + 16])
        if at + 16 + length > len(data):
            break  # the last record, half written (tcpdump still runs)
        frames.append(data[at + 16 : at + 16 + length])
        at += 16 + length
    return frames


def pcap_frames(path: str) -> list[tuple[str, str]]:
    """(source MAC, source IPv4) of every IPv4 frame in a classic pcap file (Ethernet)."""
    frames = []
    for frame in pcap_records(path):
        if len(frame) >= 30 and frame[12:14] == b"\x08\x00":
            mac = ":".join(f"{b:02x}" for b in frame[6:12])
            frames.append((mac, ".".join(str(b) for b in frame[26:30])))
    return frames


class LabTestCase(TestCase):
    """A test with a lab of its own: ``up`` brings it up, a cleanup takes it down, and the
    helpers reach its nodes from the client (tests/e2e/test_lab_failover_e2e.py uses it)."""

    timeout = 120
    tag = "a"  # the first letter of the lab's name: each TestCase class its own

    def setUp(self) -> None:
        need_namespaces()
        need("curl", "nc", "tcpdump")
        lab_argv()  # skips now, not in the cleanup, when there is no dlba-lab to run
        self.dir = tempfile.mkdtemp(prefix="dlba-array-lab-e2e-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        # Unique per test and run: never the name of another test's or someone's lab.
        tests = sorted(n for n in dir(self) if n.startswith("test_"))
        self.name = f"{self.tag}{os.getpid() % 100000}{tests.index(self._testMethodName) % 10}"
        self.prefix = prefix_for(self.name)
        self.addCleanup(self.clean_up)
        self.ca = os.path.join(self.dir, "tls", "web-ca.pem")

    async def clean_up(self) -> None:
        await self.lab("down", "--name", self.name)
        for ns in namespaces(self.prefix):
            subprocess.run(["ip", "netns", "delete", ns], timeout=10, check=False)

    async def lab(self, *args: str, deadline: float = LAB_DEADLINE) -> ProcessResult:
        argv, env = lab_argv(args[0], "--dir", self.dir, *args[1:])
        return await run(argv, env=env, deadline=deadline)

    # Issue 13: the packet issue's lab tests with the kernel fast path, named, not "auto".
    fast_path = "nftables"

    async def up(self) -> None:
        result = await self.lab(
            "up", "--nodes", "3", "--backends", "2", "--name", self.name,
            "--fast-path", self.fast_path,
        )  # fmt: skip
        self.assertEqual(result.code, 0, result.text)

    async def node_status(self, number: int) -> dict[str, dict[str, Any]]:
        """A node's STATUS, as its ``node`` and ``packets`` lines, asked from the client."""
        result = await self.lab(
            "exec", "client", "--", "sh", "-c", f"echo STATUS | nc -w2 {NODES[number]} 7701"
        )
        self.assertEqual(result.code, 0, result.text)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        tables = {line["table"]: line for line in lines if line.get("table") in ("node", "packets")}
        self.assertEqual(set(tables), {"node", "packets"}, result.text)
        return tables

    async def statuses(self) -> dict[int, dict[str, dict[str, Any]]]:
        return {n: await self.node_status(n) for n in NODES}

    def scheduler(self, statuses: dict[int, dict[str, dict[str, Any]]]) -> int:
        found = [n for n, s in statuses.items() if s["node"]["role"] == "scheduler"]
        self.assertEqual(len(found), 1, f"not one scheduler: {statuses}")
        return found[0]

    async def hits(self) -> dict[int, int]:
        return {n: s["node"]["hits"] for n, s in (await self.statuses()).items()}

    async def curl(
        self, urls: list[str], *options: str, deadline: float = LOAD_DEADLINE
    ) -> list[tuple[str, str]]:
        """(status, body) for each url, each on a new connection, from the client (a failed
        request has status 000); curl goes on after a failure."""
        args = ["exec", "client", "--", "curl", "-sS", "--noproxy", "*", "--max-time", "10"]
        args += ["--cacert", self.ca, "-H", "Connection: close", *options]
        args += ["-w", "\\n@@%{http_code}\\n"]
        result = await self.lab(*args, *urls, deadline=deadline)
        answers = []
        body: list[str] = []
        for line in result.stdout.splitlines():
            if line.startswith("@@"):
                answers.append((line[2:], "\n".join(body)))
                body = []
            elif line:
                body.append(line)
        self.assertEqual(len(answers), len(urls), result.text[-2000:])
        return answers

    async def capture(
        self, host: str, name: str, expression: str = f"ip src host {VIP}"
    ) -> tuple[StderrChild, str]:
        """tcpdump in ``host``'s namespace of the frames ``expression`` picks (those from
        the VIP unless told), once it listens; the first 64 bytes of each, written as they
        come (--immediate-mode -U: the file can be read while tcpdump runs)."""
        path = os.path.join(self.dir, f"{name}.pcap")
        argv, env = lab_argv("exec", "--dir", self.dir, host, "--")
        # -Z root: writes into this test's directory (root's, 0700), no privilege drop.
        argv += ["tcpdump", "-i", "eth0", "-n", "-s", "64", "-U", "--immediate-mode"]
        argv += ["-Z", "root", "-w", path]
        argv += [expression]
        child = StderrChild(f"tcpdump in {host}")
        spawn(argv, child, env=env)
        self.addCleanup(child.terminate)  # the PID is tcpdump's: exec execs ip, ip execs it
        await within(
            child.printed.add(
                lambda: True if b"listening on" in b"".join(child.err) else None,
                f"tcpdump in {host} to listen",
            ),
            CLIENT_DEADLINE,
            lambda: f"tcpdump in {host} to listen: {child.output()}",
        )
        return child, path

    async def statuses_without(self, dead: int) -> dict[int, dict[str, dict[str, Any]]]:
        return {n: await self.node_status(n) for n in NODES if n != dead}


class ArrayLabTests(LabTestCase):
    async def test_load_spreads_and_replies_bypass_the_scheduler(self) -> None:
        await self.up()
        before = await self.statuses()
        scheduler = self.scheduler(before)
        others = [n for n in NODES if n != scheduler]
        at_scheduler, scheduler_pcap = await self.capture(f"node{scheduler}", "scheduler")
        at_client, client_pcap = await self.capture("client", "client")

        url = f"https://{VIP}/"
        share = REQUESTS // CURLS
        runs = [ensureDeferred(self.curl([url] * share)) for _ in range(CURLS)]
        answers = [answer for run_ in await gather(runs) for answer in run_]
        after = await self.statuses()
        for child in (at_scheduler, at_client):
            ended = await child.terminate()
            self.assertEqual(ended.code, 0, child.output())

        # 1. At least 99.9 % succeed, each node serves a third of them, ±20 %.
        good = sum(1 for status, body in answers if status == "200" and body.startswith("backend "))
        rate = good / REQUESTS
        served = {n: after[n]["node"]["hits"] - before[n]["node"]["hits"] for n in NODES}
        total = sum(served.values())
        shares = {n: served[n] / total for n in NODES} if total else {}
        print(f"\nload: {good}/{REQUESTS} succeeded ({rate:.2%}); per node {served}")
        print("shares: " + ", ".join(f"node{n} {s:.1%}" for n, s in shares.items()))
        failed = Counter(status for status, _ in answers if status != "200")
        self.assertGreaterEqual(rate, 0.999, f"failures by status: {failed}")
        self.assertGreaterEqual(total, good, served)
        for n in NODES:
            self.assertLessEqual(abs(shares[n] - 1 / 3), (1 / 3) * 0.2, f"node{n}: {shares}")
        packets, was = after[scheduler]["packets"], before[scheduler]["packets"]
        python = {
            n: packets["forwarded"].get(str(n), 0) - was["forwarded"].get(str(n), 0) for n in NODES
        }
        if self.fast_path == "nftables":  # the kernel forwards, Python sees the misses
            self.assertEqual(packets["fast_path"], "nftables", packets)
            kernel = {n: packets["kernel_forwarded"].get(str(n), 0) for n in NODES}
            misses = packets["kernel_misses"]
        else:  # every frame through Python, the fallback and the reference
            self.assertEqual(packets["fast_path"], "python", packets)
            self.assertNotIn("kernel_forwarded", packets)
            kernel, misses = dict.fromkeys(NODES, 0), 0
        frames = sum(kernel.values()) + packets["frames_in"] - was["frames_in"]
        print(
            f"scheduler node{scheduler} ({packets['fast_path']}): the kernel forwarded "
            f"{kernel}, Python {python} (misses {misses}); {frames / REQUESTS:.1f} frames in "
            "a request"
        )
        for n in others:
            if self.fast_path == "nftables":
                self.assertGreater(kernel[n], python[n], packets)
            else:
                self.assertGreater(python[n], REQUESTS // 3, packets)

        # 2. Replies bypass the scheduler: no frame from the VIP with another node's MAC in
        # its namespace (its own replies there prove the capture saw something), while the
        # client gets such frames from each of the other nodes.
        at_sched = Counter(mac for mac, ip in pcap_frames(scheduler_pcap) if ip == VIP)
        at_cli = Counter(mac for mac, ip in pcap_frames(client_pcap) if ip == VIP)
        print(
            f"frames from the VIP: at the scheduler {dict(at_sched)}, at the client {dict(at_cli)}"
        )
        print(
            "tcpdump: "
            + "; ".join(
                b"".join(c.err).decode(errors="replace").strip().replace("\n", ", ")
                for c in (at_scheduler, at_client)
            )
        )
        self.assertGreater(at_sched[MACS[scheduler]], 0, at_sched)
        self.assertEqual(set(at_sched), {MACS[scheduler]}, at_sched)
        for n in others:
            self.assertGreater(at_cli[MACS[n]], 0, at_cli)

    async def test_sticky_sessions_hold_across_nodes(self) -> None:
        await self.up()
        jar = os.path.join(self.dir, "cookies.txt")
        before = await self.hits()
        answers = await self.curl([f"https://{VIP}/"] * 30, "-c", jar, "-b", jar)
        after = await self.hits()
        self.assertEqual([s for s, _ in answers], ["200"] * 30, answers)
        backends = Counter(body.split()[1] for _, body in answers)
        spread = {n: after[n] - before[n] for n in NODES}
        print(f"\nsticky: back ends {dict(backends)}, connections per node {spread}")
        self.assertEqual(len(backends), 1, answers)
        self.assertGreater(sum(1 for hits in spread.values() if hits > 0), 1, spread)
        self.assertEqual(sum(spread.values()), 30, spread)

    async def test_failover_gap_after_kill_9_of_the_scheduler(self) -> None:
        await self.up()
        config = tomllib.loads(Path(self.dir, "dlba.toml").read_text()).get("array", {})
        interval = float(config.get("ping_interval", ArraySection.ping_interval))
        misses = int(config.get("ping_misses", ArraySection.ping_misses))
        bound = interval * misses + 1.0
        scheduler = self.scheduler(await self.statuses())

        marker = os.path.join(self.dir, "killed")
        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        argv += [sys.executable, "-c", PROBE, VIP, self.ca, marker, "25"]
        probe = spawn(argv, Child("the probe"), env=env)
        self.addCleanup(probe.terminate)
        await probe.when_printed(lambda out: b"ready" in out, "the probe's first success")
        killed = await self.lab("kill", f"node{scheduler}")
        self.assertEqual(killed.code, 0, killed.text)
        Path(marker).touch()
        ended = await probe.when_ended(40.0)
        self.assertEqual(ended.code, 0, probe.output())
        report = json.loads(ended.stdout.splitlines()[-1])
        attempts = report["attempts"]
        successes = [t for t, ok in attempts if ok]
        failures = [t for t, ok in attempts if not ok]
        gaps = [(b - a, a) for a, b in itertools.pairwise(successes)]
        gap, since = max(gaps) if gaps else (0.0, 0.0)
        print(
            f"\nfailover: {len(attempts)} probes, {len(failures)} failed; longest gap between "
            f"successful new connections {gap:.3f} s (bound {bound:.1f} s)"
        )
        self.assertTrue(successes, "no probe succeeded")
        self.assertGreater(successes[-1], report["marked"], "nothing succeeded after the kill")
        self.assertLessEqual(gap, bound, f"gap {gap:.3f} s from t={since}")
        after = await self.statuses_without(scheduler)
        self.assertEqual(
            len([n for n, s in after.items() if s["node"]["role"] == "scheduler"]), 1, after
        )

        # Its kernel kept the ingress program (it forwarded busy buckets meanwhile); the
        # node started again follows, and first removes what it left.
        table = "dlba_fast" if self.fast_path == "nftables" else "dlba"
        self.assertIn(f"netdev {table}", await self.tables_of(scheduler))
        started = await self.lab("start", f"node{scheduler}")
        self.assertEqual(started.code, 0, started.text)
        back = await self.node_status(scheduler)
        self.assertEqual(back["node"]["role"], "node", back)
        self.assertFalse(back["packets"]["forwarding"], back)
        self.assertNotIn(f"netdev {table}", await self.tables_of(scheduler))
        links = await self.lab("exec", f"node{scheduler}", "--", "ip", "-o", "link", "show")
        self.assertNotIn("dlbamiss", links.stdout)

    async def tables_of(self, node: int) -> str:
        """``nft list tables`` in ``node``'s namespace."""
        result = await self.lab("exec", f"node{node}", "--", "nft", "list", "tables")
        self.assertEqual(result.code, 0, result.text)
        return result.stdout


class ArrayLabPythonPathTests(ArrayLabTests):
    """The same, with ``fast_path = "off"``: Python forwards every frame (the path auto
    falls back to, and the reference the kernel path is checked against)."""

    fast_path = "off"
