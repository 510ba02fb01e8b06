"""The failover gap of dlba's array against keepalived's VRRP, measured in the same run,
as root (the comparison issue 12's packet path owes keepalived).

    python3 bench/failoverbench.py [--runs 3]

Both on the same kind of topology, in network namespaces of their own on one Linux bridge,
with the same probe: a client opening a new HTTP connection to the VIP every 10 ms (each
attempt given 0.8 s), recording each one's outcome on the monotonic clock the bench uses
to time the failure.  The outage is from the failure to the first success after the last
failed attempt; the longest gap between two successes is printed too.

- ``dlba``: ``dlba-lab up --nodes 3 --backends 2`` (defaults: ping_interval 0.5 s,
  ping_misses 3, so a bound of 2.5 s), a fresh lab each run; the scheduler's link is cut at
  the bridge (the machine gone), or its ``twistd`` is killed with SIGKILL (``dlba-lab
  kill``: the kernel stays up with the VIP on its loopback).
- ``keepalived``: two routers running keepalived (VRRPv3, priorities 150 and 100, the
  VIP on eth0) and nginx answering on port 80; the master's link cut at the bridge, or its
  keepalived and nginx killed with SIGKILL (the software gone, the kernel up with the VIP:
  what ``dlba-lab kill`` does to a node's twistd).  ``advert_int`` 0.5 s (the same failure
  detection as dlba's 3 x 0.5 s) and 1 s (keepalived's default).

Installs keepalived and nginx from Debian when missing.  Everything it starts it stops by
PID; every namespace it made it removes, also on failure or Ctrl-C.  Traffic stays inside
the namespaces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
sys.path.insert(0, str(HERE))

from arraybench import install_tools, sh  # noqa: E402

DASH = "\u2013"

# The dlba lab's addresses (dlba.labplan): client .2, node i .10+i, VIP .100.
DLBA_VIP = "10.77.0.100"
DLBA_NODES = {1: "10.77.0.11", 2: "10.77.0.12", 3: "10.77.0.13"}
# keepalived's own subnet and namespaces (prefix dlbakad-).
KA_NET = "10.78.0"
KA_VIP = f"{KA_NET}.100"
KA_PREFIX = "dlbakad"
KA_HOSTS = {"client": f"{KA_NET}.2", "r1": f"{KA_NET}.11", "r2": f"{KA_NET}.12"}
KA_PRIORITY = {"r1": 150, "r2": 100}

# Every 10 ms a new TCP connection to VIP:80 and one GET; prints "ready" after the first
# success; once the MARKER file exists, stops 2 s after the last failure (or at LIMIT s).
PROBE = r"""
import asyncio, json, os, sys, time
vip, marker, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
results = []
async def exchange():
    r, w = await asyncio.open_connection(vip, 80)
    try:
        w.write(b"GET / HTTP/1.1\r\nHost: " + vip.encode() + b"\r\nConnection: close\r\n\r\n")
        return (await r.readline()).startswith(b"HTTP/1.1 200")
    finally:
        w.transport.abort()
async def attempt(t0):
    try:
        ok = await asyncio.wait_for(exchange(), 0.8)
    except (OSError, asyncio.TimeoutError):
        ok = False
    results.append((t0, ok))
async def main():
    start = time.monotonic()
    pending, ready, marked = set(), False, None
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

KEEPALIVED_CONF = """\
global_defs {{
    vrrp_version 3
    router_id {name}
}}
vrrp_instance dlbabench {{
    state BACKUP
    interface eth0
    virtual_router_id 77
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"""

NGINX_CONF = """\
worker_processes 1;
pid {d}/nginx-{name}.pid;
error_log {d}/nginx-{name}.err;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server {{
        listen 80 reuseport;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""


def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def wait_until(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {seconds:g} s")
        time.sleep(0.1)


# -- the probe and the outage ----------------------------------------------------------------


class Probe:
    """PROBE in a namespace (argv prefix ``run_in``), until ``marked`` and recovered."""

    def __init__(self, run_in: list[str], vip: str, tmp: Path) -> None:
        self.marker = tmp / f"marker-{time.monotonic_ns()}"
        self.p = subprocess.Popen(
            [*run_in, sys.executable, "-c", PROBE, vip, str(self.marker), "40"],
            stdout=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            stop(self.p)
            raise SystemExit(f"the probe to {vip} never succeeded")

    def result(self, failed_at: float) -> dict[str, float]:
        self.marker.touch()
        out, _ = self.p.communicate(timeout=60)
        report = json.loads(out.splitlines()[-1])
        attempts = [(t, ok) for t, ok in report["attempts"]]
        successes = [t for t, ok in attempts if ok]
        failures = [t for t, ok in attempts if not ok and t >= failed_at - 0.8]
        last_failure = max(failures, default=failed_at)
        back = min((t for t in successes if t > last_failure), default=float("nan"))
        gaps = [b - a for a, b in itertools.pairwise(successes)]
        return {
            "outage": back - failed_at,
            "longest_gap": max(gaps, default=0.0),
            "failed": float(len(failures)),
            "attempts": float(len(attempts)),
        }


def cut_link(bridge_ns: str, port: str) -> float:
    """The bridge's port to a host set down; the monotonic time just before."""
    t = time.monotonic()
    sh("ip", "-n", bridge_ns, "link", "set", port, "down")
    return t


# -- dlba ------------------------------------------------------------------------------------


class DlbaLab:
    def __init__(self, tmp: Path, run: int) -> None:
        self.name = f"fb{run}"
        self.dir = tmp / self.name

    def lab(self, *args: str, check: bool = True) -> str:
        argv = [sys.executable, "-m", "dlba.lab", args[0], "--dir", str(self.dir), *args[1:]]
        return sh(*argv, check=check, timeout=180).stdout

    def exec_argv(self, host: str) -> list[str]:
        return [sys.executable, "-m", "dlba.lab", "exec", "--dir", str(self.dir), host, "--"]

    def scheduler(self) -> int:
        for n, ip in DLBA_NODES.items():
            argv = [*self.exec_argv("client"), "sh", "-c", f"echo STATUS | nc -w2 {ip} 7701"]
            out = sh(*argv).stdout
            for line in out.splitlines():
                if line.startswith("{") and json.loads(line).get("role") == "scheduler":
                    return n
        raise SystemExit(f"{self.name}: no scheduler")

    def bridge_ns(self) -> str:
        state = json.loads((self.dir / "state.json").read_text())
        names: list[str] = state.get("namespaces", [])
        found = [n for n in names if n.endswith("-bridge")]
        if not found:
            raise SystemExit(f"{self.name}: no bridge namespace in {self.dir}/state.json")
        return found[0]


def dlba_run(tmp: Path, run: int, how: str) -> dict[str, float]:
    lab = DlbaLab(tmp, run)
    try:
        lab.lab("up", "--nodes", "3", "--backends", "2", "--name", lab.name)
        scheduler = lab.scheduler()
        probe = Probe(lab.exec_argv("client"), DLBA_VIP, tmp)
        time.sleep(1.0)  # a second of successes before the failure: a window, not a sync
        if how == "link down":
            failed_at = cut_link(lab.bridge_ns(), f"node{scheduler}")
        else:
            failed_at = time.monotonic()
            lab.lab("kill", f"node{scheduler}")
        return probe.result(failed_at)
    finally:
        lab.lab("down", "--name", lab.name, check=False)


# -- keepalived ------------------------------------------------------------------------------


class KeepalivedPair:
    """Two routers with keepalived and nginx, and a client, on a bridge of their own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = {h: f"{KA_PREFIX}-{os.getpid() % 100000}-{h}" for h in (*KA_HOSTS, "bridge")}
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.nginx: dict[str, subprocess.Popen[Any]] = {}

    def build(self) -> None:
        bridge = self.ns["bridge"]
        sh("ip", "netns", "add", bridge)
        sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", bridge, "link", "set", "br0", "up")
        for i, (host, ip) in enumerate(KA_HOSTS.items()):
            ns = self.ns[host]
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", bridge, "link", "add", host, "type", "veth", "peer", "eth0", "netns", ns)
            sh("ip", "-n", bridge, "link", "set", host, "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", f"02:00:0a:4e:00:{10 + i:02x}")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for host in ("r1", "r2"):
            self.start_nginx(host)

    def start_nginx(self, host: str) -> None:
        conf = self.tmp / f"nginx-{host}.conf"
        conf.write_text(NGINX_CONF.format(d=self.tmp, name=host))
        argv = ["ip", "netns", "exec", self.ns[host], "nginx", "-c", str(conf)]
        self.nginx[host] = subprocess.Popen(
            [*argv, "-g", "daemon off;"], stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(f"nginx on {host}", lambda: self.listens(host))

    def listens(self, host: str) -> bool:
        out = sh("ip", "netns", "exec", self.ns[host], "ss", "-Hltn", "sport", "= :80").stdout
        return bool(out.strip())

    def start(self, advert: float) -> None:
        for host in ("r1", "r2"):
            conf = self.tmp / f"keepalived-{host}.conf"
            conf.write_text(
                KEEPALIVED_CONF.format(
                    name=host, priority=KA_PRIORITY[host], advert=f"{advert:g}", vip=KA_VIP
                )
            )
            pids = [f"{self.tmp}/ka-{host}-{w}.pid" for w in ("main", "vrrp", "checkers")]
            argv = ["ip", "netns", "exec", self.ns[host], "keepalived", "--dont-fork",
                    "--vrrp", "--log-console", "-f", str(conf), "-p", pids[0], "-r", pids[1],
                    "-c", pids[2]]  # fmt: skip
            log = (self.tmp / f"keepalived-{host}.log").open("a")
            # A session of its own: kill -9 takes keepalived and its VRRP child at once
            # (the child alone would be restarted; SIGTERM sends a priority-0 advert).
            self.procs[host] = subprocess.Popen(
                argv, stdout=log, stderr=log, start_new_session=True
            )
        wait_until("r1 to hold the VIP", lambda: self.holds("r1") and not self.holds("r2"))

    def holds(self, host: str) -> bool:
        out = sh("ip", "-n", self.ns[host], "-j", "addr", "show", "eth0").stdout
        return any(
            a.get("local") == KA_VIP for link in json.loads(out) for a in link.get("addr_info", [])
        )

    def stop_keepalived(self) -> None:
        for p in self.procs.values():
            stop(p)
        self.procs = {}
        for host in ("r1", "r2"):
            # A keepalived killed with SIGKILL leaves its VIP: the next run starts clean.
            sh("ip", "-n", self.ns[host], "addr", "del", f"{KA_VIP}/24", "dev", "eth0", check=False)
            sh("ip", "-n", self.ns[host], "link", "set", "eth0", "up", check=False)
        sh("ip", "-n", self.ns["bridge"], "link", "set", "r1", "up", check=False)
        sh("ip", "-n", self.ns["client"], "neigh", "flush", "all", check=False)
        for host, p in list(self.nginx.items()):
            if p.poll() is not None:
                self.start_nginx(host)

    def run(self, advert: float, how: str) -> dict[str, float]:
        self.start(advert)
        try:
            probe = Probe(["ip", "netns", "exec", self.ns["client"]], KA_VIP, self.tmp)
            time.sleep(1.0)  # a second of successes before the failure
            if how == "link down":
                failed_at = cut_link(self.ns["bridge"], "r1")
            else:
                # The balancer's software gone, its kernel up with the VIP (as dlba-lab
                # kill does to a node's twistd): keepalived and the server it fronts.
                failed_at = time.monotonic()
                os.killpg(self.procs["r1"].pid, signal.SIGKILL)
                os.killpg(self.nginx["r1"].pid, signal.SIGKILL)
            got = probe.result(failed_at)
            wait_until("r2 to hold the VIP", lambda: self.holds("r2"), 10.0)
            return got
        finally:
            self.stop_keepalived()

    def down(self) -> None:
        for p in [*self.procs.values(), *self.nginx.values()]:
            stop(p)
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)


# -- the report ------------------------------------------------------------------------------


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        f"`python3 bench/failoverbench.py --runs {args.runs}` "
        f"({time.strftime('%Y-%m-%d %H:%M')} UTC; load average at the end {load}; "
        f"{os.cpu_count()} CPUs)",
        "",
        "| what fails | array | outage: failure to new connections again (median) | "
        "longest gap between successes (median) | failed probes (median) | runs (outage, s) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for key, runs in results.items():
        how, who = key.split(" | ")
        outage = statistics.median(r["outage"] for r in runs)
        gap = statistics.median(r["longest_gap"] for r in runs)
        failed = statistics.median(r["failed"] for r in runs)
        each = ", ".join(f"{r['outage']:.2f}" for r in runs)
        out.append(f"| {how} | {who} | {outage:.2f} s | {gap:.2f} s | {failed:.0f} | {each} |")
    dlba = {k.split(" | ")[0]: v for k, v in results.items() if "dlba" in k}
    lines = []
    for key, runs in results.items():
        how, who = key.split(" | ")
        if "keepalived" in who and how in dlba:
            ratio = statistics.median(r["outage"] for r in dlba[how]) / statistics.median(
                r["outage"] for r in runs
            )
            lines.append(f"- {how}: dlba's outage ÷ {who}'s = {ratio:.2f}")
    return "\n".join([*out, "", *lines])


def main() -> int:
    a = argparse.ArgumentParser()
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--json", help="also write every run's figures here")
    args = a.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("failoverbench needs root (network namespaces); run it as root")
    install_tools({"keepalived": "keepalived", "nginx": "nginx"}, headers=False)
    tmp = Path(tempfile.mkdtemp(prefix="dlba-failoverbench-"))
    results: dict[str, list[dict[str, float]]] = {}
    pair = KeepalivedPair(tmp)
    try:
        pair.build()
        cases = (("dlba (ping 0.5 s \u00d7 3)", None), ("keepalived (advert_int 0.5 s)", 0.5),
                 ("keepalived (advert_int 1 s)", 1.0))  # fmt: skip
        for run in range(args.runs):
            for how in ("link down", "kill -9"):
                for who, advert in cases:
                    got = dlba_run(tmp, run, how) if advert is None else pair.run(advert, how)
                    results.setdefault(f"{how} | {who}", []).append(got)
                    print(
                        f"run {run + 1} {how:9} {who:30}: outage {got['outage']:.3f} s, "
                        f"longest gap {got['longest_gap']:.3f} s, {got['failed']:.0f} of "
                        f"{got['attempts']:.0f} probes failed",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        pair.down()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
