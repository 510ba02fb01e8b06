"""The packet scheduler on real (namespaced) hosts: a client, a scheduler (node 1) and two
nodes on one bridge, the VIP on every node's loopback, real TCP from the client.

Checks: the scheduler answers ARP for the VIP; every connection lands on the node its
client-table bucket names (including the scheduler's own, through its tap); replies leave
each node straight to the client, never through the scheduler; fragments and non-TCP
frames are counted as dropped; the kernel guard stops resets for stray segments, and
outlives the process that installed it.

Needs root, ``ip netns``, nft and tcpdump (skipped with the reason otherwise).  Every
namespace (prefix ``dlbapkt-``) and process is removed by cleanups, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dlba.hashing import bucket_of

ROOT = Path(__file__).resolve().parent.parent.parent
VIP = "10.77.0.100"
CLIENT_IP = "10.77.0.2"
PORT = 8080
TABLE_SIZE = 61
MACS = {1: "02:00:0a:4d:00:0b", 2: "02:00:0a:4d:00:0c", 3: "02:00:0a:4d:00:0d"}
CLIENT_MAC = "02:00:0a:4d:00:02"


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET, nftables)"
    for tool in ("ip", "nft", "tcpdump"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = f"dlbapkt-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def run(*argv: str, check: bool = True, timeout: float = 20) -> str:
    done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``probe`` until it returns something true, up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class PacketArrayTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = why_not()
        if reason:
            raise SkipTest(reason)
        tag = f"dlbapkt-{os.getpid() % 100000}"
        self.ns = {
            "bridge": f"{tag}-br",
            "client": f"{tag}-c",
            1: f"{tag}-n1",
            2: f"{tag}-n2",
            3: f"{tag}-n3",
        }
        self.dir = Path(tempfile.mkdtemp(prefix="dlbapkt-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addCleanup(self._stop_processes)  # runs before the namespaces go
        for name in self.ns.values():
            run("ip", "netns", "add", name)
            self.addCleanup(run, "ip", "netns", "del", name, check=False)
        bridge = self.ns["bridge"]
        run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", bridge, "link", "set", "br0", "up")
        hosts = [("client", CLIENT_MAC, CLIENT_IP)] + [
            (n, MACS[n], f"10.77.0.{10 + n}") for n in (1, 2, 3)
        ]
        for key, mac, ip in hosts:
            ns, port = self.ns[key], f"p{key}"
            run(
                "ip", "-n", bridge, "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns
            )
            run("ip", "-n", bridge, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "address", mac)
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        nodes = ",".join(f"{n}={mac}" for n, mac in MACS.items())
        for n in (1, 2, 3):
            argv = ["--vip", VIP, "--own", str(n), "--nodes", nodes, "--status", self.status(n)]
            argv += ["--dead", "1"]  # what a takeover fails (SIGUSR1)
            self.spawn(
                self.ns[n],
                "-m",
                "tests.e2e.packet_node",
                *argv,
                *(["--schedule"] if n == 1 else []),
            )
        for n in (1, 2, 3):
            path = Path(self.status(n))
            wait_for(f"node {n}'s status", path.exists)
        wait_for("the scheduler forwarding", lambda: self.read(1)["packets"]["forwarding"])

    # -- helpers ---------------------------------------------------------------------------

    def status(self, n: int) -> str:
        return str(self.dir / f"node{n}.json")

    def read(self, n: int) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(Path(self.status(n)).read_text())
        return doc

    def spawn(self, ns: str, *argv: str, python: bool = True) -> subprocess.Popen[bytes]:
        command = ["ip", "netns", "exec", ns, *([sys.executable] if python else []), *argv]
        log = open(self.dir / f"{len(self.procs)}.log", "wb")
        self.addCleanup(log.close)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def _stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def client(self, *argv: str, timeout: float = 60) -> Any:
        out = run(
            "ip", "netns", "exec", self.ns["client"], sys.executable,
            str(ROOT / "tests" / "e2e" / "packet_client.py"), *argv, timeout=timeout,
        )  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    # -- the tests -------------------------------------------------------------------------

    def test_connections_land_on_their_buckets_node_and_replies_bypass_the_scheduler(
        self,
    ) -> None:
        capture = self.dir / "scheduler.pcap"
        client_capture = self.dir / "client.pcap"
        for ns, path in ((self.ns[1], capture), (self.ns["client"], client_capture)):
            # Immediate mode: a frame is written as it comes, not when a ring block fills.
            tcpdump = ["tcpdump", "-i", "eth0", "-n", "--immediate-mode", "-U", "-w", str(path)]
            self.spawn(ns, *tcpdump, f"src host {VIP}", python=False)
        wait_for("tcpdump", lambda: capture.exists() and client_capture.exists())
        wait_for("tcpdump listening", lambda: self.logs().count("listening on eth0") >= 2)

        sports = list(range(41000, 41060))
        answers = self.client("connect", VIP, str(PORT), *map(str, sports))
        buckets = [bucket_of(CLIENT_IP, sport, TABLE_SIZE) for sport in sports]
        # The status file is rewritten every 0.1 s: wait until it has the last buckets.
        owners = wait_for(
            "the table in the status file",
            lambda: o if all((o := self.read(1)["owners"])[b] >= 0 for b in buckets) else None,
        )
        landed: Counter[int] = Counter()
        for sport in sports:
            owner = owners[bucket_of(CLIENT_IP, sport, TABLE_SIZE)]
            self.assertEqual(answers[str(sport)], f"node {owner}", f"port {sport}: {self.logs()}")
            landed[owner] += 1
        self.assertEqual(set(landed), {1, 2, 3}, landed)  # the scheduler's own too (its tap)

        neighbours = run("ip", "-n", self.ns["client"], "neigh", "show", VIP)
        self.assertIn(MACS[1], neighbours)  # the scheduler answered ARP for the VIP

        packets = self.read(1)["packets"]
        self.assertEqual(
            packets["local"] + sum(packets["forwarded"].values()),
            packets["frames_in"] - sum(packets["dropped"].values()),
        )
        self.assertGreater(packets["forwarded"]["2"], 0)
        self.assertGreater(packets["arp_answered"], 0)

        for proc in self.procs[-2:]:
            proc.send_signal(signal.SIGINT)  # tcpdump writes out its buffer and stops
            proc.wait(10)
        from scapy.layers.l2 import Ether
        from scapy.utils import rdpcap

        at_scheduler = Counter(p[Ether].src.lower() for p in rdpcap(str(capture)))
        # Its own replies (the buckets it keeps) and nothing else.
        self.assertEqual(set(at_scheduler), {MACS[1]}, "frames from the VIP of other nodes")
        at_client = Counter(p[Ether].src.lower() for p in rdpcap(str(client_capture)))
        self.assertGreater(at_client[MACS[2]], 0, at_client)  # straight from node 2
        self.assertGreater(at_client[MACS[3]], 0, at_client)

    def test_fragments_and_non_tcp_are_dropped_and_counted(self) -> None:
        self.client("connect", VIP, str(PORT), "42000")  # the client learns the VIP's MAC
        self.client("junk", VIP, str(PORT))
        dropped = wait_for(
            "the drops counted",
            lambda: (
                d
                if (d := self.read(1)["packets"]["dropped"])["not_tcp"] >= 3 and d["fragment"] >= 2
                else None
            ),
        )
        self.assertEqual(dropped["no_node"], 0)
        # and the scheduler goes on forwarding
        self.assertNotIn("error", self.client("connect", VIP, str(PORT), "42001")["42001"])

    def test_the_kernel_guard_drops_stray_segments_without_a_reset(self) -> None:
        # Control: a stray ACK to node 2's own address, which no guard covers, is reset.
        self.assertGreater(self.client("stray-ack", MACS[2], "10.77.0.12", str(PORT))["rst"], 0)
        # To the VIP, straight at node 2 (a client with a stale ARP entry) or through the
        # scheduler (which forwards it to the bucket's node): no reset from anyone.
        self.assertEqual(self.client("stray-ack", MACS[2], VIP, str(PORT))["rst"], 0)
        self.assertEqual(self.client("stray-ack", MACS[1], VIP, str(PORT))["rst"], 0)

    def test_the_guard_outlives_the_process_and_a_clean_stop_removes_it(self) -> None:
        node3, node2 = self.procs[2], self.procs[1]
        node3.kill()
        node3.wait(10)
        self.assertIn("dlba_guard", run("ip", "netns", "exec", self.ns[3], "nft", "list", "tables"))
        self.assertIn(VIP, run("ip", "-n", self.ns[3], "addr", "show", "dev", "lo"))
        node2.send_signal(signal.SIGTERM)
        node2.wait(10)
        self.assertNotIn(
            "dlba_guard", run("ip", "netns", "exec", self.ns[2], "nft", "list", "tables")
        )
        self.assertNotIn(VIP, run("ip", "-n", self.ns[2], "addr", "show", "dev", "lo"))

    def test_a_dead_schedulers_kernel_resets_nothing_and_a_new_one_takes_over(self) -> None:
        self.client("connect", VIP, str(PORT), "43000")  # the client's ARP names node 1
        scheduler, node2 = self.procs[0], self.procs[1]
        scheduler.kill()  # the process only: its kernel, VIP and rules stay
        scheduler.wait(10)
        tables = run("ip", "netns", "exec", self.ns[1], "nft", "list", "tables")
        self.assertIn("netdev dlba", tables)
        self.assertIn("inet dlba_guard", tables)
        # Frames still sent to the dead scheduler's MAC: its kernel must not reset them.
        self.assertEqual(self.client("stray-ack", MACS[1], VIP, str(PORT))["rst"], 0)

        node2.send_signal(signal.SIGUSR1)
        wait_for("node 2 forwarding", lambda: self.read(2)["packets"]["forwarding"])
        wait_for(
            "the client to learn the VIP's new MAC",
            lambda: MACS[2] in run("ip", "-n", self.ns["client"], "neigh", "show", VIP),
        )
        # (the status file is rewritten every 0.1 s: it may not have the count yet)
        wait_for("node 2's announcements counted", lambda: self.read(2)["packets"]["arp_announced"])
        sports = list(range(43100, 43130))
        answers = self.client("connect", VIP, str(PORT), *map(str, sports))
        buckets = [bucket_of(CLIENT_IP, sport, TABLE_SIZE) for sport in sports]
        owners = wait_for(
            "node 2's table in its status file",
            lambda: o if all((o := self.read(2)["owners"])[b] >= 0 for b in buckets) else None,
        )
        landed: Counter[int] = Counter()
        for sport, bucket in zip(sports, buckets, strict=True):
            self.assertEqual(answers[str(sport)], f"node {owners[bucket]}", self.logs())
            landed[owners[bucket]] += 1
        self.assertEqual(set(landed), {2, 3})  # node 1 failed: none of its buckets
