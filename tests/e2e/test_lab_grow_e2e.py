"""Growing, draining and flooding a running array in dlba-lab, as root (issue 12 §3).

- A node added to a running array (``dlba-lab add-node``: the config with it appended,
  pushed with dlba-ctl) gets only buckets no live connection uses: keep-alive HTTPS
  connections held open across the push all go on, and new connections reach node 3.
- A node disabled with ``dlba-ctl node disable`` drains: its live connections go on to
  their end, new ones go elsewhere, and its bucket count falls to 0 once they end.
- A bounded flood of small frames at the VIP (5 s, from the client) does not stop the
  array from serving, and the scheduler counts it.
- A flood over 2,048 client ports while buckets are placed and moved (node disable /
  enable cycles, new connections, a 2 s idle timeout) breaks no held connection: the
  kernel fast path judges a bucket idle only on activity it has read (issue 13).

Each test brings up a lab of its own name (two nodes, two web servers) and takes it down
in a cleanup whatever the outcome; every process it starts is stopped there too.  All
traffic stays inside the lab's namespaces.  Waits are on events or polls of the array's
own state, each bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from dlba.hashing import bucket_of
from dlba.labplan import CLIENT_IP, VIP, mac_of, prefix_for
from tests.e2e.harness import Child, ProcessResult, need, run, spawn
from tests.e2e.test_array_lab_e2e import LAB_DEADLINE, MACS, NODES
from tests.e2e.test_lab_e2e import lab_argv, namespaces, need_namespaces

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELD = 8  # keep-alive connections held open across the change
POLL = 0.25  # seconds between two looks at the array's state

# Holds N keep-alive HTTPS connections to the VIP and sends a request on each every
# 100 ms.  Prints "ready PORTS" (the client ports, JSON) once every connection has had
# an answer, stops when the MARKER file appears (or at the limit), closes each connection
# cleanly and prints a JSON report: requests answered per connection, and each
# connection that broke (an error, or an answer other than 200), with why.
HOLD = r"""
import asyncio, json, os, ssl, sys, time
vip, ca, n, marker, limit = sys.argv[1:6]
n, limit = int(n), float(limit)
ctx = ssl.create_default_context(cafile=ca)
request = b"GET / HTTP/1.1\r\nHost: " + vip.encode() + b"\r\n\r\n"
stop = asyncio.Event()
answered, broken, ports = {}, {}, {}
async def exchange(r, w):
    w.write(request)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await r.readline()).split(b";")[0], 16)
            await r.readexactly(size + 2)
            if size == 0:
                break
    else:
        await r.readexactly(length)
    if head.split(b" ", 2)[1] != b"200":
        raise ValueError(head.split(b"\r\n")[0].decode())
async def hold(i, ready):
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(vip, 443, ssl=ctx, server_hostname=vip), 5)
    except Exception as e:
        broken[i] = f"connect: {type(e).__name__}: {e}"
        ready.set_result(None) if not ready.done() else None
        return
    ports[i] = w.get_extra_info("sockname")[1]
    answered[i] = 0
    try:
        while not stop.is_set():
            await asyncio.wait_for(exchange(r, w), 5)
            answered[i] += 1
            if not ready.done():
                ready.set_result(None)
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
    except Exception as e:
        broken[i] = f"after {answered[i]} answers: {type(e).__name__}: {e}"
    finally:
        w.close()
async def main():
    loop = asyncio.get_running_loop()
    readies = [loop.create_future() for _ in range(n)]
    tasks = [asyncio.ensure_future(hold(i, readies[i])) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*readies), 20)
    print("ready " + json.dumps([ports.get(i) for i in range(n)]), flush=True)
    start = time.monotonic()
    while not os.path.exists(marker) and time.monotonic() - start < limit:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"ports": [ports.get(i) for i in range(n)],
                      "answered": [answered.get(i, 0) for i in range(n)],
                      "broken": {str(ports.get(i)): why for i, why in broken.items()}}),
          flush=True)
asyncio.run(main())
"""


# One HTTPS request on a new connection from each given client port, one after the other
# (SO_REUSEADDR: the port may be in TIME_WAIT from the last pass); prints the statuses
# as JSON, 0 for a failure.  The same ports again hit the same buckets.
FROM_PORTS = r"""
import json, socket, ssl, sys
vip, ca, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")]
ctx = ssl.create_default_context(cafile=ca)
out = []
for port in ports:
    try:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.settimeout(10)
        raw.bind(("", port))
        raw.connect((vip, 443))
        with ctx.wrap_socket(raw, server_hostname=vip) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + vip.encode() + b"\r\nConnection: close\r\n\r\n")
            out.append(int(s.recv(64).split(b" ")[1]))
    except (OSError, ValueError, IndexError):
        out.append(0)
print(json.dumps(out), flush=True)
"""
# Below the ephemeral range (32768-60999), so no other connection of the client takes them.
PORTS = list(range(30000, 30012))
IDLE = 4.0  # the grow test's bucket_idle_timeout, pushed before the node is added


def flood_frames(path: str, dst: str, count: int = 256, size: int = 60) -> None:
    """``count`` bare TCP ACKs from the client to the VIP's port 443, one client port
    each (20000 + i), ``size`` bytes a frame, for bench/flood.c to send round robin."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    out = b""
    for i in range(count):
        frame = bytes(
            Ether(dst=dst, src=mac_of(CLIENT_IP))
            / IP(src=CLIENT_IP, dst=VIP)
            / TCP(sport=20000 + i, dport=443, flags="A")
        )
        out += frame.ljust(size, b"\0")
    Path(path).write_bytes(out)


class GrowLabTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        need_namespaces()
        need("curl", "nc")
        lab_argv()  # skips now, not in the cleanup, when there is no dlba-lab to run
        self.dir = tempfile.mkdtemp(prefix="dlba-grow-lab-e2e-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        # Unique per test and run: never the name of another test's or someone's lab.
        tests = sorted(n for n in dir(self) if n.startswith("test_"))
        self.name = f"g{os.getpid() % 100000}{tests.index(self._testMethodName) % 10}"
        self.prefix = prefix_for(self.name)
        self.addCleanup(self.clean_up)
        self.ca = os.path.join(self.dir, "tls", "web-ca.pem")
        self.config = os.path.join(self.dir, "dlba.toml")

    async def clean_up(self) -> None:
        await self.lab("down", "--name", self.name)
        for ns in namespaces(self.prefix):
            subprocess.run(["ip", "netns", "delete", ns], timeout=10, check=False)

    # -- the lab and the array --------------------------------------------------------------

    async def lab(self, *args: str, deadline: float = LAB_DEADLINE) -> ProcessResult:
        argv, env = lab_argv(args[0], "--dir", self.dir, *args[1:])
        return await run(argv, env=env, deadline=deadline)

    async def in_client(self, *argv: str, deadline: float = LAB_DEADLINE) -> ProcessResult:
        return await self.lab("exec", "client", "--", *argv, deadline=deadline)

    async def up(self, nodes: int = 2) -> None:
        result = await self.lab(
            "up", "--nodes", str(nodes), "--backends", "2", "--name", self.name,
            "--fast-path", "nftables",
        )  # fmt: skip
        self.assertEqual(result.code, 0, result.text)

    async def ask(self, number: int, command: str) -> list[dict[str, Any]]:
        """A node's status daemon's answer to ``command``, asked from the client."""
        result = await self.in_client("sh", "-c", f"echo {command} | nc -w2 {NODES[number]} 7701")
        self.assertEqual(result.code, 0, result.text)
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    async def node_line(self, number: int) -> dict[str, Any]:
        [line] = [x for x in await self.ask(number, "STATUS") if x.get("table") == "node"]
        return line

    async def packets(self, number: int) -> dict[str, Any]:
        [line] = [x for x in await self.ask(number, "STATUS") if x.get("table") == "packets"]
        return line

    async def node_rows(self, scheduler: int) -> dict[int, dict[str, Any]]:
        """The scheduler's node status table, by node."""
        rows = [x for x in await self.ask(scheduler, "TABLES") if x.get("table") == "node_status"]
        return {row["number"]: row for row in rows}

    async def scheduler(self, nodes: int) -> int:
        roles = {n: (await self.node_line(n))["role"] for n in range(1, nodes + 1)}
        found = [n for n, role in roles.items() if role == "scheduler"]
        self.assertEqual(len(found), 1, roles)
        return found[0]

    async def ctl(self, *args: str) -> ProcessResult:
        """dlba-ctl from the client namespace (the nodes' control plane is on their ips)."""
        python = [sys.executable, "-m", "dlba.ctl"]
        return await self.in_client(*python, args[0], "--config", self.config, *args[1:])

    async def owners(self, scheduler: int) -> tuple[int, dict[int, int]]:
        """(table size, bucket -> node) of the scheduler's whole client table."""
        result = await self.ctl("table", "--node", str(scheduler), "--json")
        self.assertEqual(result.code, 0, result.text)
        data = json.loads(result.stdout)
        self.assertTrue(data["full"], data)
        return data["size"], {int(b): n for b, n in data["buckets"].items()}

    async def until(self, check: Any, what: str, seconds: float = 30.0) -> Any:
        """Poll ``await check()`` every POLL s until it is truthy; fail after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            got = await check()
            if got:
                return got
            if time.monotonic() > deadline:
                self.fail(f"{what}: not within {seconds:g} s (last: {got!r})")
            await deferLater(reactor, POLL, lambda: None)

    async def curl(self, count: int, max_time: float = 10.0) -> list[tuple[str, int, float]]:
        """(status, client port, seconds) of ``count`` HTTPS requests to the VIP, each on
        a new connection (status 000: failed); curl goes on after a failure."""
        args = ["curl", "-sS", "--noproxy", "*", "--max-time", str(max_time)]
        args += ["--cacert", self.ca, "-H", "Connection: close"]
        args += ["-w", "\\n@@%{http_code} %{local_port} %{time_total}\\n"]
        for _ in range(count):
            args += ["-o", "/dev/null", f"https://{VIP}/"]
        result = await self.in_client(*args, deadline=count * 12)
        answers = []
        for line in result.stdout.splitlines():
            if line.startswith("@@"):
                status, port, seconds = line[2:].split()
                answers.append((status, int(port or 0), float(seconds)))
        self.assertEqual(len(answers), count, result.text[-2000:])
        return answers

    async def hold(self, count: int = HELD) -> tuple[Child, list[int], str]:
        """The holder in the client namespace, once each connection had an answer."""
        marker = os.path.join(self.dir, "stop-holding")
        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        argv += [sys.executable, "-c", HOLD, VIP, self.ca, str(count), marker, "150"]
        child = spawn(argv, Child("the holder"), env=env)
        self.addCleanup(child.terminate)
        await child.when_printed(lambda out: b"ready" in out, "the holder's connections")
        line = next(x for x in b"".join(child.out).decode().splitlines() if x.startswith("ready"))
        ports = json.loads(line.split(" ", 1)[1])
        self.assertNotIn(None, ports, child.output())
        return child, ports, marker

    async def release(self, child: Child, marker: str) -> dict[str, Any]:
        """Stop the holder; its report."""
        Path(marker).touch()
        ended = await child.when_ended(20.0)
        self.assertEqual(ended.code, 0, child.output())
        report: dict[str, Any] = json.loads(ended.stdout.splitlines()[-1])
        return report

    def assert_none_broke(self, report: dict[str, Any]) -> None:
        """The holder's report: every held connection went on answering to its end."""
        self.assertEqual(report["broken"], {}, report)
        self.assertTrue(all(n > 0 for n in report["answered"]), report)

    async def from_ports(self, ports: list[int]) -> list[int]:
        """FROM_PORTS in the client namespace: each port's status."""
        ports_arg = ",".join(str(p) for p in ports)
        result = await self.in_client(sys.executable, "-c", FROM_PORTS, VIP, self.ca, ports_arg)
        self.assertEqual(result.code, 0, result.text)
        statuses: list[int] = json.loads(result.stdout.splitlines()[-1])
        return statuses

    def build_flood(self) -> str:
        """bench/flood.c compiled into the test's folder (skips without a C compiler)."""
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            self.skipTest("no C compiler for bench/flood.c")
        flood = os.path.join(self.dir, "flood")
        built = subprocess.run(
            [cc, "-O2", "-o", flood, os.path.join(REPO, "bench", "flood.c")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(built.returncode, 0, built.stderr)
        return flood

    async def push_idle_timeout(self, seconds: float) -> None:
        """Push the lab's config with ``[array] bucket_idle_timeout = seconds``."""
        text = Path(self.config).read_text()
        pushed = os.path.join(self.dir, "pushed.toml")
        Path(pushed).write_text(
            text.replace("[array]\n", f"[array]\nbucket_idle_timeout = {seconds}\n", 1)
        )
        result = await self.ctl("push", pushed)
        self.assertEqual(result.code, 0, result.text)

    # -- the tests ----------------------------------------------------------------------------

    async def test_a_node_added_gets_only_idle_buckets_and_no_connection_breaks(self) -> None:
        await self.up(2)
        scheduler = await self.scheduler(2)
        # Buckets go idle after IDLE s here (add-node keeps what was pushed), so the
        # buckets of the first requests from PORTS are idle by the time node 3 is up.
        await self.push_idle_timeout(IDLE)
        self.assertEqual(await self.from_ports(PORTS), [200] * len(PORTS))
        holder, ports, marker = await self.hold()
        size, before = await self.owners(scheduler)
        held = {bucket_of(CLIENT_IP, port, size): port for port in ports}
        warm = {bucket_of(CLIENT_IP, port, size) for port in PORTS} - set(held)
        self.assertTrue(all(before.get(b, -1) in (1, 2) for b in held), held)
        self.assertTrue(all(before.get(b, -1) in (1, 2) for b in warm), warm)

        added = await self.lab("add-node", deadline=90.0)
        self.assertEqual(added.code, 0, added.text)
        self.assertIn("node3", added.stdout, added.text)
        grown = tomllib.loads(Path(self.config).read_text())["array"]
        self.assertEqual(grown["bucket_idle_timeout"], IDLE, "add-node undid a push")

        # Once the sweep has heard node 3, requests from PORTS again: their buckets are
        # idle, and node 3 holds the fewest, so they move there (a pass that comes too
        # early only touches them: the next one moves them).  The kernel fast path judges
        # a bucket idle up to 2 s late (the listing's 1 s grain, a reading a second), never
        # early: the passes are IDLE + 2 s apart.
        async def node3_heard() -> bool:
            return not (await self.node_rows(scheduler))[3]["failed"]

        await self.until(node3_heard, "the scheduler's sweep to hear node 3")
        again: list[int] = []

        async def idle_ones_moved() -> int:
            again.extend(await self.from_ports(PORTS))
            _, now = await self.owners(scheduler)
            if not any(now.get(b) == 3 for b in warm):
                await deferLater(reactor, IDLE + 2, lambda: None)  # let them go idle again
                return 0
            return 1

        await self.until(idle_ones_moved, "an idle bucket to move to node 3", 40.0)

        # New connections reach node 3 once the scheduler's sweep has heard it (add-node's
        # own readiness check went to node 3's ip: that is the baseline).
        baseline = int((await self.node_line(3))["connections_total"])
        answers: list[tuple[str, int, float]] = []

        async def node3_serves() -> int:
            answers.extend(await self.curl(10))
            return int((await self.node_line(3))["connections_total"]) - baseline

        served = await self.until(node3_serves, "a new connection through the VIP on node 3")
        size, after = await self.owners(scheduler)
        report = await self.release(holder, marker)

        got = sorted(b for b, n in after.items() if n == 3)
        new = [b for b in got if before.get(b, -1) == -1]
        idle = [b for b in got if before.get(b, -1) != -1]
        self.assertEqual(set(again), {200}, again)
        # Every bucket node 3 took from another node was idle: no held one (below), and
        # some of the PORTS' ones.
        self.assertTrue(set(idle) & warm, "no idle bucket moved to node 3")
        moved = {b: (before.get(b, -1), after.get(b, -1)) for b in held}
        failed = Counter(status for status, *_ in answers if status != "200")
        print(
            f"\ngrow: {len(ports)} held connections, {sum(report['answered'])} answers on "
            f"them, broken {report['broken']}; node 3: {served} connections, {len(got)} "
            f"buckets ({len(new)} unassigned before, {len(idle)} idle ones moved, of "
            f"{len(warm)} idle); held "
            f"buckets before -> after {sorted(set(moved.values()))}; {len(answers)} new "
            f"connections, failures {dict(failed)}"
        )
        self.assert_none_broke(report)
        self.assertEqual(failed, Counter(), answers)
        self.assertGreater(served, 0)
        self.assertTrue(got, "node 3 holds no bucket")
        for bucket, (was, now) in moved.items():
            self.assertEqual(was, now, f"bucket {bucket} of held port {held[bucket]} moved")
        self.assertFalse(set(got) & set(held), "node 3 got a live connection's bucket")
        rows = await self.node_rows(scheduler)
        self.assertFalse(rows[3]["failed"], rows[3])
        self.assertEqual(rows[3]["buckets"], len(got), rows[3])

    async def test_a_disabled_node_drains(self) -> None:
        await self.up(2)
        scheduler = await self.scheduler(2)
        target = 3 - scheduler
        holder, ports, marker = await self.hold(12)
        size, owners = await self.owners(scheduler)
        held_there = {bucket_of(CLIENT_IP, p, size) for p in ports} & {
            b for b, n in owners.items() if n == target
        }
        self.assertTrue(held_there, f"none of the held connections is on node {target}")

        result = await self.ctl("node", "disable", str(target))
        self.assertEqual(result.code, 0, result.text)
        total_before = (await self.node_line(target))["connections_total"]
        answers = await self.curl(30)
        line = await self.node_line(target)
        # Only a new connection whose bucket is busy there lands: a held one's, or one
        # of an earlier connection within the idle timeout (dlba-lab up's own requests,
        # 300 s: every bucket the target owned before is still busy).
        busy_there = {b for b, n in owners.items() if n == target}
        collide = [p for _, p, _ in answers if bucket_of(CLIENT_IP, p, size) in busy_there]
        rows = await self.node_rows(scheduler)
        buckets_while_held = rows[target]["buckets"]
        report = await self.release(holder, marker)
        on_target = [port for port in ports if bucket_of(CLIENT_IP, port, size) in held_there]

        async def drained() -> bool:
            return bool((await self.node_rows(scheduler))[target]["buckets"] == 0)

        t0 = time.monotonic()
        await self.until(drained, f"node {target}'s buckets to fall to 0")
        took = time.monotonic() - t0
        failed = Counter(status for status, *_ in answers if status != "200")
        print(
            f"\ndrain: node {target} disabled holding {len(on_target)} of {len(ports)} "
            f"connections; they answered {sum(report['answered'])} requests in all, broken "
            f"{report['broken']}; {len(answers)} new connections, failures {dict(failed)}, "
            f"{line['connections_total'] - total_before} reached node {target} "
            f"({len(collide)} shared a busy bucket there); its buckets {buckets_while_held} "
            f"while held, 0 {took:.1f} s after they closed"
        )
        self.assert_none_broke(report)
        self.assertEqual(failed, Counter(), answers)
        self.assertEqual(line["connections_total"] - total_before, len(collide), line)
        # Its held connections' buckets stay while they live (and any other still busy:
        # dlba-lab up's own first requests through the VIP, say).
        self.assertGreaterEqual(buckets_while_held, len(held_there), rows[target])

    async def test_a_bounded_flood_at_the_vip_does_not_stop_the_array(self) -> None:
        flood = self.build_flood()
        await self.up(2)
        scheduler = await self.scheduler(2)
        frames = os.path.join(self.dir, "frames.bin")
        flood_frames(frames, MACS[scheduler])
        before = await self.packets(scheduler)

        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        sender = spawn([*argv, flood, "eth0", frames, "60", "5"], Child("flood"), env=env)
        self.addCleanup(sender.terminate)
        during: list[tuple[str, int, float]] = []
        started = time.monotonic()
        # Clients retransmit a SYN the flood crowded out (after 1 s, then 2 s more): each
        # request may take 10 s, as a browser's would.  Two curls at once, 4 each a round.
        while sender.running and time.monotonic() - started < 20:
            rounds = await gatherResults([ensureDeferred(self.curl(4)) for _ in range(2)])
            during += [answer for one in rounds for answer in one]
        ended = await sender.when_ended(20.0)
        self.assertEqual(ended.code, 0, sender.output())
        sent = int(ended.stdout.strip() or 0)
        after_flood = await self.curl(10, max_time=5.0)
        after = await self.packets(scheduler)

        frames_in = after["frames_in"] - before["frames_in"]
        forwarded = {
            n: after["forwarded"].get(n, 0) - before["forwarded"].get(n, 0)
            for n in after["forwarded"]
        }
        dropped = {
            why: after["dropped"].get(why, 0) - before["dropped"].get(why, 0)
            for why in after["dropped"]
        }
        local = after["local"] - before["local"]
        kernel = sum(after.get("kernel_forwarded", {}).values()) - sum(
            before.get("kernel_forwarded", {}).values()
        )
        log = Path(self.dir, f"node{scheduler}.log").read_text(errors="replace")
        holes = [line for line in log.splitlines() if "never filled" in line]
        good = sum(1 for status, *_ in during if status == "200")
        took = sorted(t for status, _, t in during if status == "200")
        slow = f"median {took[len(took) // 2]:.2f} s, slowest {took[-1]:.2f} s" if took else "-"
        rate = good / len(during) if during else 0.0
        print(
            f"\nflood: {sent} frames sent in 5 s ({sent / 5:,.0f}/s); the scheduler counted "
            f"{frames_in} in, forwarded {forwarded}, local {local}, dropped {dropped}; the "
            f"kernel forwarded {kernel}; "
            f"during it {good}/{len(during)} new HTTPS connections succeeded ({rate:.1%}; "
            f"{slow}), "
            f"after it {sum(1 for s, *_ in after_flood if s == '200')}/{len(after_flood)}; "
            f"receive ring holes passed over: {holes or 'none'}"
        )
        self.assertTrue(during, "no request ran during the flood")
        self.assertGreaterEqual(rate, 0.95, Counter(s for s, *_ in during))
        self.assertEqual([s for s, *_ in after_flood], ["200"] * len(after_flood), after_flood)
        self.assertGreater(sent, 0)
        # The flood was counted: by the kernel fast path (read once a second) and by
        # Python, each frame Python read forwarded, delivered or dropped.
        self.assertGreater(frames_in + kernel, min(sent // 10, 10000), after)
        accounted = sum(forwarded.values()) + local + sum(dropped.values())
        self.assertEqual(accounted, frames_in, after)

    async def test_a_flood_while_buckets_are_reassigned_breaks_no_connection(self) -> None:
        # Held keep-alive connections on both nodes; a 6 s flood over 2,048 client ports
        # (most buckets of the table busy); meanwhile node disable / enable cycles and new
        # connections, so buckets are placed, and idle ones (2 s here) move, in kernel
        # transactions while the flood runs.  No held connection may break.
        flood = self.build_flood()
        await self.up(2)
        scheduler = await self.scheduler(2)
        target = 3 - scheduler
        await self.push_idle_timeout(2.0)
        holder, ports, marker = await self.hold(12)
        size, owners = await self.owners(scheduler)
        on = Counter(owners.get(bucket_of(CLIENT_IP, p, size)) for p in ports)
        self.assertTrue(on[1] and on[2], f"the held connections are not on both nodes: {on}")
        frames = os.path.join(self.dir, "frames.bin")
        flood_frames(frames, MACS[scheduler], count=2048)
        before = await self.packets(scheduler)

        argv, env = lab_argv("exec", "--dir", self.dir, "client", "--")
        sender = spawn([*argv, flood, "eth0", frames, "60", "6"], Child("flood"), env=env)
        self.addCleanup(sender.terminate)
        during: list[tuple[str, int, float]] = []
        cycles = 0
        started = time.monotonic()
        while sender.running and time.monotonic() - started < 20:
            for verb in ("disable", "enable"):
                result = await self.ctl("node", verb, str(target))
                self.assertEqual(result.code, 0, result.text)
                during += await self.curl(4)
            cycles += 1
        ended = await sender.when_ended(20.0)
        self.assertEqual(ended.code, 0, sender.output())
        sent = int(ended.stdout.strip() or 0)
        after = await self.packets(scheduler)
        _, owners_after = await self.owners(scheduler)
        report = await self.release(holder, marker)

        moved = sum(1 for b, n in owners_after.items() if owners.get(b, -1) != n)
        changes = after["kernel_transactions"] - before["kernel_transactions"]
        good = sum(1 for status, *_ in during if status == "200")
        print(
            f"\nflood while reassigning: {sent} frames in 6 s, {cycles} disable/enable "
            f"cycles of node {target}, {changes} kernel transactions, {moved} buckets "
            f"placed or moved; {good}/{len(during)} new connections; held {len(ports)} "
            f"(on nodes {dict(on)}): {sum(report['answered'])} answers, broken "
            f"{report['broken']}"
        )
        self.assert_none_broke(report)
        self.assertGreater(sent, 0)
        self.assertGreaterEqual(cycles, 1)
        self.assertGreater(changes, cycles, "the kernel's map did not change during the flood")
        self.assertGreater(moved, 0)
        self.assertGreaterEqual(good / max(1, len(during)), 0.95, during)
        self.assertEqual(after["fast_path"], "nftables", after)
