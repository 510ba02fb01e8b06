"""Failover in dlba-lab, as root (issue 12 §3): the scheduler's machine gone, and long
downloads that outlive the scheduler.

- The scheduler's link to the bridge goes down (its machine is gone: its process still
  runs, cut off): another node answers ARP for the VIP and forwards within
  ``ping_interval * ping_misses + 1 s``, probed with a new HTTPS connection every 10 ms.
- Downloads of several seconds run from the client through every node; the scheduler is
  killed (kill -9) or cut off mid-way.  Every download through a surviving node completes,
  whole and byte for byte, and the client sees no reset from the VIP on its connection.
  Those through the lost node fail, as they must: they are counted and printed.

Which node serves a download is read from a capture in the client's namespace: replies
come straight from the serving node (direct return), so the source MAC of the frames to
the download's client port names it.  Each test brings up a lab of its own name and takes
it down in a cleanup (``LabTestCase``).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from dlba.config import ArraySection
from dlba.demo import download_body
from dlba.labplan import VIP
from tests.e2e.harness import Child, spawn
from tests.e2e.test_array_lab_e2e import MACS, NODES, PROBE, LabTestCase, pcap_records
from tests.e2e.test_lab_e2e import lab_argv

DOWNLOADS = 6  # at once, from the client: the table spreads new buckets, about 2 a node
DOWNLOAD_BYTES = 600_000
DOWNLOAD_RATE = 100_000  # bytes a second: 6 s a download, the failover well inside it
DOWNLOAD_MAX_TIME = 30  # curl's --max-time: a download stuck on a lost node ends by then
FIRST_PORT = 20001  # the downloads' client ports, below the ephemeral range
SYNC_DEADLINE = 10.0  # every node holding the scheduler's client table version
DOWNLOAD_DEADLINE = 40.0  # the surviving downloads, from the failure
POLL = 0.1  # seconds between two looks at the nodes' tables while waiting for the sync
NODE_OF_MAC = {mac: n for n, mac in MACS.items()}

RST = 0x04

# ip link set PORT down, bracketed by the monotonic clock (one clock for every namespace).
CUT = (
    "import subprocess, sys, time; t = time.monotonic(); "
    "subprocess.run(['ip', 'link', 'set', sys.argv[1], 'down'], check=True); "
    "print(t, time.monotonic())"
)


@dataclass(frozen=True)
class Segment:
    """A TCP segment of a capture: the Ethernet source, the addresses, ports and flags."""

    mac: str
    src: str
    dst: str
    sport: int
    dport: int
    flags: int


def pcap_segments(path: str) -> list[Segment]:
    """Every IPv4 TCP segment of a classic pcap file (Ethernet), from its first 64 bytes."""
    found = []
    for frame in pcap_records(path):
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        tcp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < tcp + 14:
            continue
        sport, dport = struct.unpack("!HH", frame[tcp : tcp + 4])
        found.append(
            Segment(
                mac=":".join(f"{b:02x}" for b in frame[6:12]),
                src=".".join(str(b) for b in frame[26:30]),
                dst=".".join(str(b) for b in frame[30:34]),
                sport=sport,
                dport=dport,
                flags=frame[tcp + 13],
            )
        )
    return found


@dataclass
class Download:
    """One curl of a slow download, on its own client port, its body into ``path``."""

    number: int
    port: int
    path: str
    child: Child
    node: int | None = None  # who serves it, from the capture

    def head_printed(self, out: bytes) -> bool:
        """curl has printed the answer's head (-D -): the download is under way."""
        return b"\r\n\r\n" in out


class LabFailoverTests(LabTestCase):
    tag = "f"

    def bound(self) -> float:
        """ping_interval * ping_misses + 1 s, as the lab's config has them."""
        config = tomllib.loads(Path(self.dir, "dlba.toml").read_text()).get("array", {})
        interval = float(config.get("ping_interval", ArraySection.ping_interval))
        misses = int(config.get("ping_misses", ArraySection.ping_misses))
        return interval * misses + 1.0

    async def cut(self, node: int) -> tuple[float, float]:
        """Take ``node``'s link down at the bridge (``ip link set nodeN down`` there): to
        the others its machine is gone.  The monotonic clock just before and just after
        ``ip`` ran, in the same clock as the probe's."""
        result = await self.lab("exec", "bridge", "--", sys.executable, "-c", CUT, f"node{node}")
        self.assertEqual(result.code, 0, result.text)
        before, after = (float(t) for t in result.stdout.split())
        return before, after

    async def kill(self, node: int) -> None:
        result = await self.lab("kill", f"node{node}")
        self.assertEqual(result.code, 0, result.text)

    async def one_scheduler_but(self, lost: int) -> int:
        """The one scheduler the surviving nodes agree on (not ``lost``)."""
        after = await self.statuses_without(lost)
        found = [n for n, s in after.items() if s["node"]["role"] == "scheduler"]
        self.assertEqual(len(found), 1, f"not one scheduler among the survivors: {after}")
        self.assertNotEqual(found[0], lost)
        return found[0]

    # -- 1. the machine gone: the failover gap ---------------------------------------------

    async def test_failover_gap_after_the_schedulers_link_goes_down(self) -> None:
        await self.up()
        bound = self.bound()
        scheduler = self.scheduler(await self.statuses())

        marker = os.path.join(self.dir, "cut")
        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        argv += [sys.executable, "-c", PROBE, VIP, self.ca, marker, "25"]
        probe = spawn(argv, Child("the probe"), env=env)
        self.addCleanup(probe.terminate)
        await probe.when_printed(lambda out: b"ready" in out, "the probe's first success")
        cut_at, cut_done = await self.cut(scheduler)
        Path(marker).touch()
        ended = await probe.when_ended(40.0)
        self.assertEqual(ended.code, 0, probe.output())
        report = json.loads(ended.stdout.splitlines()[-1])
        attempts = report["attempts"]
        successes = [t for t, ok in attempts if ok]
        failures = [t for t, ok in attempts if not ok]
        gaps = [(b - a, a) for a, b in itertools.pairwise(successes)]
        gap, since = max(gaps) if gaps else (0.0, 0.0)
        # The outage as the array made it: from the cut to the first success after the last
        # failure (the gap above also holds how long the last success before it took).
        last_failure = max((t for t in failures if t >= cut_at), default=cut_done)
        back = min((t for t in successes if t > last_failure), default=float("nan"))
        print(
            f"\nlink down: {len(attempts)} probes, {len(failures)} failed; longest gap between "
            f"successful new connections {gap:.3f} s (bound {bound:.1f} s); from the cut "
            f"(ip took {cut_done - cut_at:.3f} s) to new connections succeeding again "
            f"{back - cut_at:.3f} s"
        )
        self.assertTrue(successes, "no probe succeeded")
        self.assertGreater(successes[-1], report["marked"], "nothing succeeded after the cut")
        self.assertLessEqual(gap, bound, f"gap {gap:.3f} s from t={since}")

        new = await self.one_scheduler_but(scheduler)
        packets = (await self.node_status(new))["packets"]
        self.assertTrue(packets["forwarding"], packets)
        self.assertGreater(packets["arp_announced"], 0, packets)
        # The client's ARP entry for the VIP follows the new scheduler (its announcements).
        neigh = await self.lab("exec", "client", "--", "ip", "-j", "neigh", "show", VIP)
        self.assertEqual(neigh.code, 0, neigh.text)
        macs = [e.get("lladdr") for e in json.loads(neigh.stdout or "[]")]
        print(
            f"new scheduler node{new} (announced the VIP {packets['arp_announced']} times, "
            f"answered {packets['arp_answered']} ARP requests); the client's ARP entry for "
            f"the VIP: {macs}"
        )
        self.assertEqual(macs, [MACS[new]], neigh.text)

    # -- 2. long downloads across the failover -------------------------------------------

    async def test_downloads_through_survivors_outlive_kill_9_of_the_scheduler(self) -> None:
        await self.downloads_across("kill -9", self.kill)

    async def test_downloads_through_survivors_outlive_the_schedulers_link_down(self) -> None:
        await self.downloads_across("link down", self.cut)

    def download(self, number: int) -> Download:
        port = FIRST_PORT + number
        path = os.path.join(self.dir, f"download{number}")
        url = f"https://{VIP}/download?bytes={DOWNLOAD_BYTES}&rate={DOWNLOAD_RATE}"
        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        argv += ["curl", "-sS", "--noproxy", "*", "--max-time", str(DOWNLOAD_MAX_TIME)]
        argv += ["--cacert", self.ca, "--local-port", str(port), "-D", "-", "-o", path]
        argv += ["-w", "\\n@@%{http_code} %{size_download}\\n", url]
        child = spawn(argv, Child(f"download {number} (client port {port})"), env=env)
        self.addCleanup(child.terminate)
        return Download(number, port, path, child)

    async def tables(self) -> dict[int, tuple[Any, Any]]:
        """(version, table_id) of the client table each node holds (TABLES)."""
        got = {}
        for n, address in NODES.items():
            result = await self.lab(
                "exec", "client", "--", "sh", "-c", f"echo TABLES | nc -w2 {address} 7701"
            )
            self.assertEqual(result.code, 0, result.text)
            for line in result.stdout.splitlines():
                if line.startswith("{") and json.loads(line).get("table") == "client":
                    row = json.loads(line)
                    got[n] = (row.get("version"), row.get("table_id"))
        return got

    async def synced(self) -> dict[int, tuple[Any, Any]]:
        """Until every node holds the same version of the client table (the syncs pull it
        every ping_interval), polled; the versions."""
        deadline = time.monotonic() + SYNC_DEADLINE
        while True:
            tables = await self.tables()
            if len(tables) == len(NODES) and len(set(tables.values())) == 1:
                return tables
            if time.monotonic() > deadline:
                self.fail(f"the nodes' client tables did not agree in {SYNC_DEADLINE} s: {tables}")
            await deferLater(reactor, POLL, lambda: None)

    async def owners(self, downloads: list[Download], pcap: str) -> None:
        """Each download's node: the one MAC its frames come from, once the capture has some
        for every download (tcpdump may hold frames back a little), polled."""
        deadline = time.monotonic() + SYNC_DEADLINE
        while True:
            seen = pcap_segments(pcap)
            owners: dict[int, set[str]] = {}
            for s in seen:
                owners.setdefault(s.dport, set()).add(s.mac)
            if all(d.port in owners for d in downloads):
                break
            if time.monotonic() > deadline:
                self.fail(f"frames: {Counter((s.mac, s.dport) for s in seen)}")
            await deferLater(reactor, POLL, lambda: None)
        for d in downloads:
            macs = owners[d.port]
            self.assertEqual(len(macs), 1, f"{d.child.name}: frames from {macs}")
            d.node = NODE_OF_MAC[macs.pop()]

    async def downloads_across(self, how: str, fail: Any) -> None:
        await self.up()
        scheduler = self.scheduler(await self.statuses())
        vip_frames = f"ip src host {VIP} and tcp"
        at_client, frames_pcap = await self.capture("client", "frames", vip_frames)
        any_reset = "tcp[tcpflags] & tcp-rst != 0"
        resets, resets_pcap = await self.capture("client", "resets", any_reset)

        downloads = [self.download(i) for i in range(DOWNLOADS)]
        for d in downloads:
            await d.child.when_printed(d.head_printed, f"{d.child.name}'s head")
            self.assertIn(b"HTTP/1.1 200", b"".join(d.child.out), d.child.output())
        # "Already running": under way, and in every node's copy of the client table (the
        # nodes pull it from the scheduler every ping_interval; a connection younger than
        # that may be unknown to the next scheduler, which is not what this test is about).
        versions = await self.synced()
        await self.owners(downloads, frames_pcap)
        survivors = [d for d in downloads if d.node != scheduler]
        lost = [d for d in downloads if d.node == scheduler]
        self.assertTrue(survivors, "every download went through the scheduler")

        failed_at = time.monotonic()
        await fail(scheduler)
        for d in survivors:
            left = max(1.0, DOWNLOAD_DEADLINE - (time.monotonic() - failed_at))
            await d.child.when_ended(left)
        took = time.monotonic() - failed_at
        lost_ends = []
        for d in lost:  # through the lost node: they fail (a kill closes them; a cut stalls)
            if d.child.running:
                lost_ends.append(f"port {d.port} stalled")
                await d.child.terminate()
            else:
                assert d.child.result is not None
                lost_ends.append(f"port {d.port} ended, curl exit {d.child.result.code}")
        new = await self.one_scheduler_but(scheduler)
        for child in (at_client, resets):
            ended = await child.terminate()
            self.assertEqual(ended.code, 0, child.output())

        reset = Counter(
            (s.src, s.dport if s.src == VIP else s.sport)
            for s in pcap_segments(resets_pcap)
            if s.flags & RST
        )
        whole = []
        for d in survivors:
            result = d.child.result
            assert result is not None
            body = Path(d.path).read_bytes() if os.path.exists(d.path) else b""
            if (
                result.code == 0
                and f"@@200 {DOWNLOAD_BYTES}" in result.stdout
                and body == download_body(0, DOWNLOAD_BYTES)
            ):
                whole.append(d)
        lost_whole = [
            d
            for d in lost
            if os.path.exists(d.path) and Path(d.path).stat().st_size == DOWNLOAD_BYTES
        ]
        from_vip = {port: n for (src, port), n in reset.items() if src == VIP}
        from_client = {port: n for (src, port), n in reset.items() if src != VIP}
        per_node = dict(sorted(Counter(d.node for d in downloads).items()))
        print(
            f"\n{how} of scheduler node{scheduler} (every node's table at "
            f"{set(versions.values())}); new scheduler node{new}; downloads per node {per_node}"
            f"\n  through survivors: {len(whole)}/{len(survivors)} whole (ports "
            f"{[d.port for d in survivors]}), the last {took:.1f} s after the failure"
            f"\n  through the lost node: {len(lost)} ({'; '.join(lost_ends) or 'none'}), "
            f"{len(lost_whole)} whole"
            f"\n  resets from the VIP by client port {from_vip}; from the client {from_client}"
        )
        for d in survivors:
            self.assertEqual(reset[(VIP, d.port)], 0, f"{d.child.name}: reset from the VIP")
        for d in survivors:
            self.assertIn(d, whole, f"node{d.node}: {d.child.output()[-1500:]}")
