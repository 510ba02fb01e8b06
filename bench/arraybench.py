"""HTTPS requests/s through the array with 1, 2 and 3 nodes, against one node reached
directly (issue 12 §4), as root.

    python3 bench/arraybench.py [--runs 3] [--seconds 8] [--keep-alive-conns 64] [--tls-rate 400]

Brings up three labs side by side with ``dlba-lab`` (names ``ab1``, ``ab2``, ``ab3``: 1, 2
and 3 nodes, 2 web servers each, the real packet scheduler), replaces each lab's demo back
ends by nginx (one worker, a 100-byte answer: the back end must not be what is measured)
with a ``dlba-ctl push``, and then, from each lab's client namespace, in alternating order
within every run:

- ``tlsnew``: bench/loadgen, 16 clients, each request on a new connection with a full TLS
  1.3 handshake (new connections are what the scheduler spreads);
- ``tlsrate``: the same at a fixed offered rate (``--tls-rate``, 400/s): latency and each
  node's CPU per request at a load every target carries;
- ``keepalive``: wrk, one thread, 64 keep-alive HTTPS connections (spread when opened).

Targets: ``direct`` (the 1-node lab's node at its own address: no packet scheduler on the
path), ``1``, ``2``, ``3`` (nodes behind the VIP).  For each it reads, over the measured
window, every node's CPU (utime+stime, /proc/PID/stat), its requests (STATUS ``hits``) and
the scheduler's frame counters (STATUS ``packets``), and prints requests/s, frames per
request, each node's CPU per request and the scheduler's frames/s.  Everything it starts it
stops; every lab it made it takes down, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from proxybench import parse_loadgen, parse_wrk  # noqa: E402

VIP = "10.77.0.100"
NODE_IPS = {1: "10.77.0.11", 2: "10.77.0.12", 3: "10.77.0.13"}
WEB_IPS = {1: "10.77.0.21", 2: "10.77.0.22"}
NGINX_PORT = 8081
TICKS = os.sysconf("SC_CLK_TCK")
DASH, TIMES = "\u2013", "\u00d7"
TARGETS = ("direct", "1", "2", "3")
WORKLOADS = ("tlsnew", "tlsrate", "keepalive")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

NGINX_CONF = """\
worker_processes 1;
pid {d}/nginx-web{j}.pid;
error_log {d}/nginx-web{j}.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen {ip}:{port} reuseport backlog=4096;
        location / {{ return 200 "backend {j} answered: {filler}\\n"; }}
    }}
}}
"""


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and done.returncode:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    return done


class Lab:
    """One dlba-lab of ``nodes`` nodes, run from this tree."""

    def __init__(self, nodes: int, base: Path) -> None:
        self.nodes = nodes
        self.name = f"ab{nodes}"
        self.dir = base / self.name
        self.nginx: list[subprocess.Popen[bytes]] = []

    def lab(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        argv = [sys.executable, "-m", "dlba.lab", args[0], "--dir", str(self.dir), *args[1:]]
        return sh(*argv, check=check, timeout=timeout).stdout

    def exec_argv(self, host: str, *argv: str) -> list[str]:
        return [sys.executable, "-m", "dlba.lab", "exec", "--dir", str(self.dir), host, "--", *argv]

    def up(self) -> None:
        self.lab("up", "--nodes", str(self.nodes), "--backends", "2", "--name", self.name)
        for j, ip in WEB_IPS.items():
            conf = self.dir / f"nginx-web{j}.conf"
            text = NGINX_CONF.format(d=self.dir, j=j, ip=ip, port=NGINX_PORT, filler="x" * 64)
            conf.write_text(text)
            argv = self.exec_argv(f"web{j}", "nginx", "-c", str(conf), "-g", "daemon off;")
            self.nginx.append(subprocess.Popen(argv, env=ENV, stderr=subprocess.DEVNULL))
        config = self.dir / "dlba.toml"
        new = self.dir / "dlba-nginx.toml"
        new.write_text(config.read_text().replace(':8080"', f':{NGINX_PORT}"'))
        ctl = [sys.executable, "-m", "dlba.ctl", "push", "--config", str(config), str(new)]
        deadline = time.monotonic() + 30
        while True:  # nginx may take a moment to listen; the push's health check wants it
            done = subprocess.run(
                self.exec_argv("client", *ctl), capture_output=True, text=True, env=ENV, timeout=60
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: push failed: {done.stdout}{done.stderr}")
            time.sleep(0.5)

    def down(self) -> None:
        for p in self.nginx:
            if p.poll() is None:
                p.terminate()
        for p in self.nginx:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.lab("down", "--name", self.name, check=False)

    def pids(self) -> dict[int, int]:
        state = json.loads((self.dir / "state.json").read_text())
        return {
            int(p["host"][4:]): int(p["pid"])
            for p in state["processes"]
            if p["host"].startswith("node")
        }

    def status(self, number: int) -> dict[str, dict[str, Any]]:
        out = sh(
            *self.exec_argv("client", "sh", "-c", f"echo STATUS | nc -w2 {NODE_IPS[number]} 7701")
        ).stdout
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {line["table"]: line for line in lines if "table" in line}

    def snapshot(self) -> dict[int, dict[str, Any]]:
        pids = self.pids()
        snap = {}
        for n in range(1, self.nodes + 1):
            s = self.status(n)
            snap[n] = {
                "cpu": cpu(pids[n]),
                "hits": s["node"]["hits"],
                "role": s["node"]["role"],
                "frames_in": s.get("packets", {}).get("frames_in", 0),
                "forwarded": sum(s.get("packets", {}).get("forwarded", {}).values()),
                "local": s.get("packets", {}).get("local", 0),
                # The kernel fast path's frames (all its nodes, its own stack too).
                "kernel": sum(s.get("packets", {}).get("kernel_forwarded", {}).values()),
                "fast_path": s.get("packets", {}).get("fast_path", ""),
            }
        return snap


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load_argv(workload: str, host: str, seconds: float, args: argparse.Namespace) -> list[str]:
    if workload == "tlsnew":
        return [args.loadgen, "tlsnew", "-h", host, "-p", "443", "-u", "/", "-c", "16",
                "-d", f"{seconds:g}", "-V", "1.3"]  # fmt: skip
    if workload == "tlsrate":  # the same at a fixed offered rate: latency and CPU at a load
        return [args.loadgen, "tlsnew", "-h", host, "-p", "443", "-u", "/", "-c", "16",
                "-d", f"{seconds:g}", "-V", "1.3", "-r", f"{args.tls_rate:g}"]  # fmt: skip
    return ["wrk", "-t1", f"-c{args.keep_alive_conns}", f"-d{seconds:g}s", "--latency",
            f"https://{host}/"]  # fmt: skip


def measure(lab: Lab, target: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    host = NODE_IPS[1] if target == "direct" else VIP
    before = lab.snapshot()
    t0 = time.monotonic()
    done = subprocess.run(
        lab.exec_argv("client", *load_argv(workload, host, args.seconds, args)),
        capture_output=True, text=True, env=ENV, timeout=args.seconds + 60,
    )  # fmt: skip
    wall = time.monotonic() - t0
    after = lab.snapshot()
    if done.returncode:
        raise SystemExit(f"{workload} at {target}: exit {done.returncode}: {done.stderr[-800:]}")
    res = parse_wrk(done.stdout) if workload == "keepalive" else parse_loadgen(done.stdout)
    requests = int(res["requests"])  # type: ignore[call-overload]
    nodes = {}
    for n in before:
        hits = after[n]["hits"] - before[n]["hits"]
        used = after[n]["cpu"] - before[n]["cpu"]
        nodes[n] = {
            "hits": hits,
            "cpu_s": used,
            "cpu_use": used / wall,
            "us_per_req": used * 1e6 / hits if hits else None,
            "role": after[n]["role"],
        }
    scheduler = next((n for n in after if after[n]["role"] == "scheduler"), 1)
    frames = after[scheduler]["frames_in"] - before[scheduler]["frames_in"]
    forwarded = after[scheduler]["forwarded"] - before[scheduler]["forwarded"]
    kernel = after[scheduler]["kernel"] - before[scheduler]["kernel"]
    python_cpu = after[scheduler]["cpu"] - before[scheduler]["cpu"]
    return {
        "target": target,
        "workload": workload,
        "rps": float(res["rps"]),  # type: ignore[arg-type]
        "requests": requests,
        "errors": int(res.get("errors", 0)) + int(res.get("non2xx", 0)),  # type: ignore[call-overload]
        "p50_us": float(res.get("p50_us", float("nan"))),  # type: ignore[arg-type]
        "p99_us": float(res.get("p99_us", float("nan"))),  # type: ignore[arg-type]
        "wall_s": wall,
        "scheduler": scheduler,
        "frames_in": frames,
        "forwarded": forwarded,
        "kernel_frames": kernel,
        "fast_path": after[scheduler]["fast_path"],
        "scheduler_cpu_s": python_cpu,
        # Every inbound frame for the VIP: those the kernel forwarded and those Python read.
        "frames_per_req": (frames + kernel) / requests if requests and target != "direct" else None,
        "python_frames_per_req": frames / requests if requests and target != "direct" else None,
        "frames_per_s": (frames + kernel) / wall,
        "nodes": nodes,
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"`python3 bench/arraybench.py --runs {args.runs} --seconds {args.seconds:g}` "
        f"({time.strftime('%Y-%m-%d %H:%M')} UTC; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs)",
        "",
    ]
    for workload in WORKLOADS:
        title = {
            "tlsnew": "HTTPS, a new connection and full TLS 1.3 handshake per request (16 clients)",
            "tlsrate": f"The same at a fixed {args.tls_rate:g} requests/s (open loop)",
            "keepalive": f"HTTPS keep-alive ({args.keep_alive_conns} connections, wrk -t1)",
        }[workload]
        out += [f"### {title}", ""]
        out.append(
            "| target | req/s (median) | ÷ direct | errors | frames in / request | "
            "of them, read by Python | scheduler frames/s | node CPU µs/request (median of "
            "nodes) | nodes' CPU use | latency p50 / p99 (ms) | runs (req/s) |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
        rows = {t: [r for r in results if r["target"] == t and r["workload"] == workload]
                for t in TARGETS}  # fmt: skip
        direct = med([r["rps"] for r in rows["direct"]])
        for t in TARGETS:
            rs = rows[t]
            if not rs:
                continue
            rps = med([r["rps"] for r in rs])
            fpr = [r["frames_per_req"] for r in rs if r["frames_per_req"] is not None]
            per_req = med(
                [n["us_per_req"] for r in rs for n in r["nodes"].values() if n["us_per_req"]]
            )
            use = ", ".join(
                f"node{n} {med([r['nodes'][n]['cpu_use'] for r in rs]):.0%}"
                for n in sorted(rs[0]["nodes"])
            )
            label = "one node direct" if t == "direct" else f"{t} node{'s' if t != '1' else ''}"
            runs = ", ".join(f"{r['rps']:,.0f}" for r in rs)
            frames = f"{med(fpr):.1f}" if fpr else DASH
            py = [r["python_frames_per_req"] for r in rs if r.get("python_frames_per_req")]
            python = f"{med(py):.2f}" if py else DASH
            fps = f"{med([r['frames_per_s'] for r in rs]):,.0f}" if fpr else DASH
            errors = sum(r["errors"] for r in rs)
            p50 = med([r.get("p50_us", float("nan")) for r in rs]) / 1000
            p99 = med([r["p99_us"] for r in rs]) / 1000
            out.append(
                f"| {label} | {rps:,.0f} | {rps / direct:.2f}{TIMES} | {errors} | {frames} | "
                f"{python} | {fps} | {per_req:.0f} | {use} | {p50:.1f} / {p99:.1f} | {runs} |"
            )
        out.append("")
    return "\n".join(out)


TOOLS = {"nginx": "nginx", "wrk": "wrk", "gcc": "gcc", "nc": "netcat-openbsd"}


def install_tools(tools: dict[str, str] = TOOLS, headers: bool = True) -> None:
    """What a bench runs (command → Debian package), installed when missing; ``headers``:
    libssl-dev too, for loadgen."""
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if headers and not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if not missing:
        return
    print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(argv, env=env, check=False).returncode != 0:
            raise SystemExit(f"cannot install {' '.join(missing)}: {' '.join(argv)} failed")


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--seconds", type=float, default=8.0)
    a.add_argument("--keep-alive-conns", type=int, default=64)
    a.add_argument(
        "--tls-rate", type=float, default=400.0, help="the fixed-rate workload's requests/s"
    )
    a.add_argument("--max-nodes", type=int, default=3, choices=(1, 2, 3))
    a.add_argument("--json", help="also write every run's figures here")
    args = a.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("arraybench needs root (network namespaces); run it as root")
    install_tools()
    tmp = Path(tempfile.mkdtemp(prefix="dlba-arraybench-"))
    args.loadgen = str(tmp / "loadgen")
    sh("gcc", "-O2", "-o", args.loadgen, str(HERE / "loadgen.c"), "-lssl", "-lcrypto", "-lpthread")
    labs = {n: Lab(n, tmp) for n in range(1, args.max_nodes + 1)}
    results: list[dict[str, Any]] = []
    try:
        for lab in labs.values():
            print(f"bringing up {lab.name} ({lab.nodes} node(s))", file=sys.stderr, flush=True)
            lab.up()
        targets = ["direct", *(str(n) for n in labs)]
        for run in range(args.runs):
            order = targets[run % len(targets) :] + targets[: run % len(targets)]
            for workload in WORKLOADS:
                for t in order:
                    lab = labs[1 if t == "direct" else int(t)]
                    r = measure(lab, t, workload, args)
                    r["run"] = run
                    results.append(r)
                    nodes = r["nodes"].items()
                    print(
                        f"run {run + 1} {workload:9} {t:6}: {r['rps']:8,.0f} req/s, "
                        f"{r['errors']} errors, frames/req {r['frames_per_req']} "
                        f"(Python {r['python_frames_per_req']}, {r['fast_path']}), nodes "
                        + json.dumps({n: (v["hits"], round(v["cpu_use"], 2)) for n, v in nodes}),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for lab in labs.values():
            lab.down()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
