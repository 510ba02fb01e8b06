"""The scheduler's kernel fast path (issue 13) on real namespaced hosts: the nftables
program of `dlba.kernelpath`, installed through `dlba.packet.nft` in the scheduler's
namespace, forwards each frame to the node Python's bucket hash names.

A sender, the scheduler and two nodes on one bridge.  Frames with known (ip, port) go to the
scheduler's MAC; sinks on the nodes and on the miss channel record what reaches them, so
every frame is checked against ``bucket_of`` and the map: the kernel's jhash is Python's,
a bucket changed by a transaction moves at once, an unassigned bucket reaches only the miss
channel, a frame from a peer node is not forwarded again, and the kernel's ``active`` set
holds exactly the buckets that saw frames.

Needs root, ``ip netns`` and nft (skipped with the reason otherwise).  Every namespace
(prefix ``dlbakfp-``) and process is removed by cleanups, also on failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dlba.hashing import bucket_of_wire
from dlba.kernelpath import MISS_OUT, KernelProgram
from tests.e2e.test_packet_netns import run, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
VIP = "10.79.0.100"
SIZE = 61
MACS = {
    "sender": "02:00:0a:4f:00:02",
    1: "02:00:0a:4f:00:0b",
    2: "02:00:0a:4f:00:0c",
    3: "02:00:0a:4f:00:0d",
}
NODES = {n: MACS[n] for n in (1, 2, 3)}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Sends the frames of a JSON list of [ip, port] to DST MAC from SRC MAC on eth0, one TCP
# ACK each, and exits.
SENDER = r"""
import json, socket, struct, sys
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
dst, src, vip, pairs = sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x08\x00"
for ip, port in pairs:
    tcp = struct.pack("!HHIIBBHHH", port, 443, 1, 1, 5 << 4, 0x10, 1000, 0, 0)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton(ip),
                      socket.inet_aton(vip))
    iph = iph[:10] + struct.pack("!H", csum(iph)) + iph[12:]
    s.send(head + iph + tcp)
"""

# Applies the nftables JSON in a file with dlba.packet.nft; prints the JSON of a listing.
NFT = r"""
import json, sys
from dlba.packet.nft import Nft
nft = Nft()
doc = json.load(open(sys.argv[1]))
out = nft.run(doc)
print(json.dumps({"mechanism": nft.mechanism, "out": out}))
"""

# The service's own KernelFastPath, on the real kernel, driven through random churn of a
# real ClientTable (misses placed, nodes failed and back, a node drained, buckets going
# idle, a re-install as on a join) on a task.Clock.  After each step it lets the fast path
# flush and sync as the reactor would, lists the kernel's map and compares it with the
# table itself (busy buckets of live nodes, by their owner's chain).  Prints a JSON report.
CHURN = r"""
import json, random, sys
from twisted.internet.task import Clock
from dlba.clienttable import ClientTable
from dlba.kernelpath import FAMILY, LOCAL_CHAIN, OWNERS, TABLE, KernelProgram, node_chain
from dlba.packet.fastpath import FLUSH_DELAY, SYNC_INTERVAL, KernelFastPath
from dlba.packet.host import Host
from dlba.packet.nft import Nft
from dlba.tables import NodeState, NodeStatusTable
vip, size, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
macs = json.loads(sys.argv[5])
nodes = {int(n): m for n, m in macs.items()}
rows = NodeStatusTable(NodeState(n, m, "10.79.0.%d" % (10 + n)) for n, m in nodes.items())
idle = 8.0
table = ClientTable(size, rows, idle_timeout=idle)
clock = Clock()
clock.advance(1000)
program = KernelProgram(vip, "eth0", nodes[1], 1, nodes, size, idle)
nft = Nft()
fast = KernelFastPath(program, table, nft, Host(), clock)
table.take_over(clock.seconds())
fast.start()
rng = random.Random(seed)
def kernel_map():
    out = nft.run({"nftables": [{"list": {"map": {"family": FAMILY, "table": TABLE,
                                                   "name": OWNERS}}}]})
    got = {}
    for item in out.get("nftables", []):
        body = item.get("map") if isinstance(item, dict) else None
        for e in (body or {}).get("elem", []):
            got[e[0]] = e[1]["goto"]["target"]
    return got
def from_table():
    now = clock.seconds()
    want = {}
    for b, n in enumerate(table.owners()):
        row = rows.get(n)
        if n >= 0 and row is not None and not row.failed and now - table.last_access(b) <= idle:
            want[b] = LOCAL_CHAIN if n == 1 else node_chain(n)
    return want
report = {"steps": 0, "mismatches": [], "sizes": [], "moves": 0, "ops": {}}
for step in range(steps):
    op = rng.choice(["miss"] * 6 + ["fail", "back", "drain", "idle", "reinstall"])
    report["ops"][op] = report["ops"].get(op, 0) + 1
    before = table.owners()
    if op == "miss":
        for _ in range(rng.randrange(1, 40)):
            table.lookup(rng.randrange(size), clock.seconds())
            fast.poke()
    elif op == "fail":
        n = rng.choice([2, 3])
        rows.get(n).failed = True
        table.node_failed(n)
    elif op == "back":
        for n in (2, 3):
            rows.get(n).failed = False
            rows.get(n).enabled = True
    elif op == "drain":
        n = rng.choice([2, 3])
        rows.get(n).enabled = False
        table.node_drained(n)
    elif op == "idle":
        clock.advance(rng.uniform(0, idle * 1.5))
    else:
        fast.replace_program(program)
    report["moves"] += sum(1 for a, b in zip(before, table.owners()) if a != b)
    clock.advance(FLUSH_DELAY)  # the poke's flush
    clock.advance(SYNC_INTERVAL)  # a tick: table changes (and idle ones) reach the kernel
    fast.sync()
    got, want = kernel_map(), from_table()
    report["steps"] += 1
    report["sizes"].append(len(got))
    if got != want or fast.installed != {b: n for b, n in enumerate(table.owners())
                                         if b in want}:
        report["mismatches"].append({"step": step, "op": op,
            "extra": sorted(set(got) - set(want))[:10],
            "missing": sorted(set(want) - set(got))[:10],
            "wrong": sorted(b for b in set(got) & set(want) if got[b] != want[b])[:10]})
report["transactions"] = fast.transactions
report["errors"] = fast.errors
fast.stop()
print(json.dumps(report))
"""


def run_python(namespace: str, *argv: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, *argv],
        capture_output=True, timeout=30, check=False, env=ENV, cwd=ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"python {argv[0]} in {namespace}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = f"dlbakfp-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


class KernelFastPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = why_not()
        if reason:
            raise SkipTest(reason)
        tag = f"dlbakfp-{os.getpid() % 100000}"
        self.ns: dict[Any, str] = {
            "bridge": f"{tag}-br",
            "sender": f"{tag}-s",
            1: f"{tag}-n1",
            2: f"{tag}-n2",
            3: f"{tag}-n3",
        }
        self.dir = Path(tempfile.mkdtemp(prefix="dlbakfp-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        for name in self.ns.values():
            run("ip", "netns", "add", name)
            self.addCleanup(run, "ip", "netns", "del", name, check=False)
        bridge = self.ns["bridge"]
        run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", bridge, "link", "set", "br0", "up")
        for key in ("sender", 1, 2, 3):
            ns, port = self.ns[key], f"p{key}"
            run(
                "ip", "-n", bridge, "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns
            )
            run("ip", "-n", bridge, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "address", MACS[key])
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        sched = self.ns[1]
        run("ip", "-n", sched, "link", "add", "dlbamiss0", "type", "veth", "peer", MISS_OUT)
        run("ip", "-n", sched, "link", "set", "dlbamiss0", "up")
        run("ip", "-n", sched, "link", "set", MISS_OUT, "up")
        self.program = KernelProgram(
            vip=VIP, interface="eth0", mac=NODES[1], own=1, nodes=NODES, size=SIZE,
            idle_timeout=30,
        )  # fmt: skip
        self.steps = 0

    # -- helpers -----------------------------------------------------------------------

    def nft(self, document: dict[str, Any]) -> dict[str, Any]:
        self.steps += 1
        path = self.dir / f"nft{self.steps}.json"
        path.write_text(json.dumps(document))
        out = run_python(self.ns[1], "-c", NFT, str(path))
        result: dict[str, Any] = json.loads(out)
        self.assertEqual(result["mechanism"], "libnftables")
        return dict(result["out"])

    def counters(self) -> dict[str, int]:
        from dlba.kernelpath import counters, list_counters

        return counters(self.nft(list_counters()))

    def sink(self, key: Any, iface: str = "eth0") -> subprocess.Popen[bytes]:
        argv = ["ip", "netns", "exec", self.ns[key], sys.executable, "-m", "tests.e2e.frame_sink"]
        p = subprocess.Popen(
            [*argv, iface, VIP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT
        )
        self.addCleanup(stop, p)
        assert p.stdout is not None and p.stderr is not None
        line = p.stdout.readline().strip()
        self.assertEqual(line, b"ready", p.stderr.read() if p.poll() is not None else "")
        return p

    def send(
        self, pairs: list[tuple[str, int]], src: str = MACS["sender"], key: Any = "sender"
    ) -> None:
        self.steps += 1
        path = self.dir / f"pairs{self.steps}.json"
        path.write_text(json.dumps(pairs))
        run_python(
            self.ns[key],
            "-c",
            SENDER,
            NODES[1],
            src,
            VIP,
            str(path),
        )

    def collect(
        self, sinks: dict[Any, subprocess.Popen[bytes]], expected: int
    ) -> dict[Any, list[tuple[str, int]]]:
        """Wait until the kernel's counters account for ``expected`` frames, then stop the
        sinks and read what each got."""
        wait_for(
            f"the kernel to count {expected} frames",
            lambda: sum(self.counters().values()) >= expected,
        )
        got = {}
        for key, p in sinks.items():
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=15)
            self.assertEqual(p.returncode, 0, err)
            got[key] = [(ip, port) for ip, port, _, _ in json.loads(out.splitlines()[-1])]
        return got

    def pairs(self, n: int, seed: int) -> list[tuple[str, int]]:
        rng = random.Random(seed)
        return list(
            {
                (socket.inet_ntoa(rng.getrandbits(32).to_bytes(4, "big")), rng.randrange(1, 65536))
                for _ in range(n)
            }
        )

    @staticmethod
    def bucket(pair: tuple[str, int]) -> int:
        return bucket_of_wire(socket.inet_aton(pair[0]), pair[1].to_bytes(2, "big"), SIZE)

    def expect(
        self, pairs: list[tuple[str, int]], owners: dict[int, int]
    ) -> dict[Any, list[tuple[str, int]]]:
        where: dict[Any, list[tuple[str, int]]] = {2: [], 3: [], "miss": []}
        for pair in pairs:
            owner = owners.get(self.bucket(pair))
            if owner in (2, 3):
                where[owner].append(pair)
            elif owner is None:
                where["miss"].append(pair)
        return where

    # -- tests -------------------------------------------------------------------------

    def test_every_frame_lands_where_python_predicts(self) -> None:
        rng = random.Random(7)
        owners = {b: rng.choice((1, 2, 3)) for b in range(SIZE) if b % 10 != 3}  # some unassigned
        self.nft(self.program.install(owners))
        sinks = {2: self.sink(2), 3: self.sink(3), "miss": self.sink(1, MISS_OUT)}
        pairs = self.pairs(1500, 1)
        self.send(pairs)
        got = self.collect(sinks, len(pairs))
        want = self.expect(pairs, owners)
        for key in want:
            self.assertEqual(sorted(got[key]), sorted(want[key]), f"frames at {key}")
        counted = self.counters()
        local = sum(1 for p in pairs if owners.get(self.bucket(p)) == 1)
        self.assertEqual(counted["local"], local)
        self.assertEqual(counted["misses"], len(want["miss"]))
        self.assertEqual(counted["to_node2"], len(want[2]))
        print(
            f"\nkernel path: {len(pairs)} frames; "
            + ", ".join(f"{k} {len(v)}" for k, v in got.items())
            + f", local {local}"
        )

        # The active set holds exactly the buckets that saw frames.
        from dlba.kernelpath import ACTIVE, FAMILY, TABLE, active_buckets

        listing = self.nft(
            {"nftables": [{"list": {"set": {"family": FAMILY, "table": TABLE, "name": ACTIVE}}}]}
        )
        self.assertEqual(set(active_buckets(listing)), {self.bucket(p) for p in pairs})

    def test_a_transaction_moves_only_the_changed_buckets(self) -> None:
        owners = {b: 2 for b in range(SIZE)}
        self.nft(self.program.install(owners))
        moved = dict(owners)
        for b in range(0, SIZE, 3):
            moved[b] = 3
        del moved[1]  # unassigned again: a miss
        changes = self.program.changes(owners, moved)
        self.assertEqual(len(changes["nftables"]), 2)  # one delete, one add
        self.nft(changes)
        sinks = {2: self.sink(2), 3: self.sink(3), "miss": self.sink(1, MISS_OUT)}
        pairs = self.pairs(600, 2)
        self.send(pairs)
        got = self.collect(sinks, len(pairs))
        want = self.expect(pairs, moved)
        for key in want:
            self.assertEqual(sorted(got[key]), sorted(want[key]), f"frames at {key}")
        self.assertTrue(want["miss"] and want[3] and want[2], want)

    def test_a_peers_frames_are_not_forwarded_again(self) -> None:
        # A frame the old scheduler forwarded to us after a takeover is ours: it goes up our
        # stack, never back out to another node, so two schedulers cannot bounce it.
        self.nft(self.program.install({b: 2 for b in range(SIZE)}))
        sinks = {2: self.sink(2), 3: self.sink(3), "miss": self.sink(1, MISS_OUT)}
        pairs = self.pairs(100, 3)
        self.send(pairs, src=NODES[3], key=3)
        for p in sinks.values():
            p.send_signal(signal.SIGTERM)
        got = {
            k: json.loads(p.communicate(timeout=15)[0].splitlines()[-1]) for k, p in sinks.items()
        }
        self.assertEqual(got, {2: [], 3: [], "miss": []})
        self.assertEqual(sum(self.counters().values()), 0)

    def test_the_map_after_churn_equals_the_client_table(self) -> None:
        macs = json.dumps({str(n): m for n, m in NODES.items()})
        out = run_python(self.ns[1], "-c", CHURN, VIP, str(SIZE), "160", "11", macs)
        report = json.loads(out.splitlines()[-1])
        print(
            f"\nchurn: {report['steps']} steps {report['ops']}, {report['moves']} owner "
            f"changes, {report['transactions']} transactions, map sizes "
            f"{min(report['sizes'])}-{max(report['sizes'])}"
        )
        self.assertEqual(report["mismatches"], [])
        self.assertEqual(report["errors"], 0)
        self.assertGreater(report["moves"], 100)  # the churn did churn
        self.assertGreater(max(report["sizes"]), SIZE // 2)
        self.assertLess(min(report["sizes"]), max(report["sizes"]))
