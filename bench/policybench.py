#!/usr/bin/env python3
"""What the scheduling policies cost: one dlba in front of nginx, the same load per policy.

    python3 bench/policybench.py                    # 3 runs x 10 s per case (~5 min)
    python3 bench/policybench.py --duration 3       # a quick look
    python3 bench/policybench.py --md bench/POLICIES.md

One nginx (one worker) serves a 100-byte body on three ports: dlba's pool has three back
ends.  dlba (one process, ``twistd -n dlba``, this work tree unless ``--installed``) is
started afresh per case with that case's pool policy, on its own core where there are two
(taskset: dlba on CPU 0, nginx and wrk on CPU 1), like ``bench/run.sh``.  wrk -t1 -c32,
HTTP keep-alive; per case 1 s of warm-up, then ``--runs`` runs of ``--duration`` s; the
figures are medians.  CPU is dlba's own (utime + stime from /proc) per request.

Cases:

- ``round-robin``: GET /100, no cookie: the reference.
- ``least-load``: the same.
- ``cookie``: every request carries ``Cookie: SpServer=1; JSESSIONID=x`` (a valid cookie,
  honoured: the persistence lookup, and SpServer stripped from what is forwarded).
- ``cookie+inject``: the same cookie, and every answer sets ``JSESSIONID`` (nginx
  ``add_header Set-Cookie``), so dlba parses it and injects ``SpServer`` on every answer.
- ``session``: every request carries ``Cookie: JSESSIONID=<id>``, an id dlba learned from
  an answer beforehand (a table hit per request).
- ``session+learn``: the same, and every answer sets JSESSIONID (learned again each time).
- ``url-hash``: the path varies over 1,000 values (a wrk Lua script), each hashed.

Then the Maglev build time for 1,000 back ends (``bench/hashing.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 99 + "\n"  # 100 bytes
SESSION_ID = "bench0session0id"

sys.path.insert(0, str(HERE))
from proxybench import cpu_ticks, parse_wrk  # noqa: E402  (bench/ is not a package)


@dataclass
class Case:
    key: str
    policy: str
    path: str
    cookie: str | None = None
    lua: bool = False  # vary the path
    learn_first: bool = False  # one request to /sc/ first, so dlba knows SESSION_ID


CASES = [
    Case("round-robin", "round-robin", "/100"),
    Case("least-load", "least-load", "/100"),
    Case("cookie", "cookie", "/100", cookie="SpServer=1; JSESSIONID=x"),
    Case("cookie+inject", "cookie", "/sc/100", cookie="SpServer=1; JSESSIONID=x"),
    Case("session", "session", "/100", cookie=f"JSESSIONID={SESSION_ID}", learn_first=True),
    Case(
        "session+learn", "session", "/sc/100", cookie=f"JSESSIONID={SESSION_ID}", learn_first=True
    ),
    Case("url-hash", "url-hash", "/u/", lua=True),
    # Round-robin on each policy's own workload: the fair baselines (same headers, same
    # paths, same wrk script), so a policy's cost is not confused with its workload's.
    Case("rr/cookie-workload", "round-robin", "/100", cookie="SpServer=1; JSESSIONID=x"),
    Case("rr/inject-workload", "round-robin", "/sc/100", cookie="SpServer=1; JSESSIONID=x"),
    Case("rr/varied-paths", "round-robin", "/u/", lua=True),
]

LUA = """
counter = 0
request = function()
    counter = counter + 1
    return wrk.format(nil, "/u/" .. (counter % 1000) .. ".html")
end
"""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    """Until 127.0.0.1:port accepts a connection (bounded; fails if proc exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before serving on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing served on {port} within {seconds}s")


def nginx_conf(tmp: Path, ports: list[int]) -> str:
    servers = "".join(
        f"""
    server {{
        listen 127.0.0.1:{port};
        location /sc/ {{
            add_header Set-Cookie "JSESSIONID={SESSION_ID}; Path=/; HttpOnly" always;
            return 200 "{BODY.strip()}\\n";
        }}
        location / {{ return 200 "{BODY.strip()}\\n"; }}
    }}"""
        for port in ports
    )
    return f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{servers}
}}
"""


def dlba_conf(tmp: Path, policy: str, ports: list[int]) -> str:
    backends = "".join(
        f'\n[[pool.backend]]\nnumber = {i + 1}\naddress = "127.0.0.1:{port}"\n'
        for i, port in enumerate(ports)
    )
    return f"""
[node]
number = 1
state_dir = "{tmp}/dlba-state"

[listen]
http = "tcp:0:interface=127.0.0.1"

[log]
access_log = ""

[persistence]
cookie = "SpServer"
session_cookies = ["JSESSIONID"]
session_params = ["jsessionid", "sid"]

[[pool]]
name = "bench"
policy = "{policy}"
max_concurrent = 10000
adaptive = false
backend_keepalive = true
{backends}"""


def install_missing(tools: dict[str, str]) -> list[str]:
    """Install the Debian package of each missing tool (``{tool: package}``) when we can
    (root, apt-get); return the tools still missing."""
    missing = {tool: pkg for tool, pkg in tools.items() if shutil.which(tool) is None}
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing Debian packages: {' '.join(missing.values())}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing.values()], env=env, check=False)
    return [tool for tool in tools if shutil.which(tool) is None]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our child by PID, SIGKILL if it has not gone within 15 s; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def taskset(cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] if cpu is not None and shutil.which("taskset") else []


class Dlba:
    def __init__(self, tmp: Path, policy: str, ports: list[int], args: argparse.Namespace):
        conf = tmp / f"dlba-{policy}.toml"
        conf.write_text(dlba_conf(tmp, policy, ports))
        (tmp / "dlba-state").mkdir(exist_ok=True)
        env = dict(os.environ)
        if not args.installed:
            env["PYTHONPATH"] = str(REPO)
        cmd = [*taskset(args.proxy_cpu), sys.executable, "-c"]
        cmd += ["from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        cmd += ["--logger=dlba.logs.json_observer", "dlba", "--config", str(conf)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp
        )
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            try:
                event = json.loads(line.lstrip(b"\x1e"))
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("listener") == "http":
                # Keep draining the log so dlba never blocks on a full pipe.
                subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)
                return int(event["port"])
        self.stop()
        raise RuntimeError("dlba did not start:\n" + b"".join(lines[-20:]).decode(errors="replace"))

    def stop(self) -> None:
        stop_process(self.proc)


def wrk(case: Case, port: int, duration: float, args: argparse.Namespace, lua: Path) -> str:
    cmd = [*taskset(args.client_cpu), args.wrk, "-t1", "-c32", f"-d{duration:g}s", "--latency"]
    if case.cookie:
        cmd += ["-H", f"Cookie: {case.cookie}"]
    if case.lua:
        cmd += ["-s", str(lua)]
    cmd.append(f"http://127.0.0.1:{port}{case.path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    return out.stdout


def measure(case: Case, dlba: Dlba, args: argparse.Namespace, lua: Path) -> dict[str, float]:
    u0, s0 = cpu_ticks(dlba.proc.pid)
    out = wrk(case, dlba.port, args.duration, args, lua)
    u1, s1 = cpu_ticks(dlba.proc.pid)
    res = parse_wrk(out)
    cpu = (u1 - u0 + s1 - s0) / CLK_TCK
    res["cpu_us"] = cpu / res["requests"] * 1e6 if res["requests"] else float("nan")
    return res


def run_case(
    case: Case, tmp: Path, ports: list[int], args: argparse.Namespace, lua: Path
) -> dict[str, object]:
    dlba = Dlba(tmp, case.policy, ports, args)
    try:
        if case.learn_first:
            url = f"http://127.0.0.1:{dlba.port}/sc/learn"
            subprocess.run(["curl", "-s", "-o", os.devnull, url], check=True, timeout=10)
        wrk(case, dlba.port, args.warmup, args, lua)
        runs = [measure(case, dlba, args, lua) for _ in range(args.runs)]
    finally:
        dlba.stop()
    bad = sum(r["errors"] + r["non2xx"] for r in runs)
    return {
        "case": case.key,
        "rps": statistics.median(r["rps"] for r in runs),
        "cpu_us": statistics.median(r["cpu_us"] for r in runs),
        "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
        "bad": bad,
        "runs": [round(r["rps"]) for r in runs],
    }


def maglev() -> list[str]:
    out = subprocess.run(
        [sys.executable, str(HERE / "hashing.py")], capture_output=True, text=True, timeout=600
    ).stdout.splitlines()
    return [ln for ln in out if ln.strip().startswith("N=1000") or ln.startswith("build")]


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        rev = "?"
    return rev or "?"


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--duration", type=float, default=10.0)
    a.add_argument("--warmup", type=float, default=1.0)
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--cases", default=",".join(c.key for c in CASES))
    a.add_argument("--installed", action="store_true", help="the installed dlba, not the tree")
    a.add_argument("--wrk", default="wrk")
    a.add_argument("--md", help="also write the report (markdown) to this file")
    args = a.parse_args()
    two = (os.cpu_count() or 1) >= 2
    args.proxy_cpu, args.client_cpu = ("0", "1") if two else (None, None)
    missing = install_missing({"nginx": "nginx-light", args.wrk: "wrk", "curl": "curl"})
    if missing:
        print(f"not installed and could not install: {', '.join(missing)}", file=sys.stderr)
        return 2
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.key in wanted]

    tmp = Path(tempfile.mkdtemp(prefix="dlba-policybench-"))
    lua = tmp / "paths.lua"
    lua.write_text(LUA)
    ports = free_ports(3)
    (tmp / "nginx.conf").write_text(nginx_conf(tmp, ports))
    nginx = subprocess.Popen(
        [*taskset(args.client_cpu), "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        for port in ports:
            wait_port(port, nginx, 15)
        for case in cases:
            r = run_case(case, tmp, ports, args, lua)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    finally:
        nginx.terminate()
        nginx.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)

    ref = next((r for r in results if r["case"] == "round-robin"), None)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"dlba {revision()} ({'installed' if args.installed else 'work tree'}), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}; "
        + ("dlba on CPU 0, nginx and wrk on CPU 1; " if two else "")
        + f"wrk -t1 -c32, HTTP keep-alive, 100-byte body, 3 nginx back ends; "
        f"median of {args.runs} runs x {args.duration:g} s",
        "",
        "| policy (case) | req/s | vs round-robin | dlba CPU µs/req | vs round-robin "
        "| p99 ms | errors | runs (req/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rps, cpu = float(r["rps"]), float(r["cpu_us"])  # type: ignore[arg-type]
        rr = f"{rps / float(ref['rps']):.3f}" if ref else "-"  # type: ignore[arg-type]
        rc = f"{cpu / float(ref['cpu_us']):.3f}" if ref else "-"  # type: ignore[arg-type]
        lines.append(
            f"| {r['case']} | {rps:,.0f} | {rr} | {cpu:.1f} | {rc} | {float(r['p99_ms']):.2f} "  # type: ignore[arg-type]
            f"| {r['bad']} | {', '.join(f'{x:,}' for x in r['runs'])} |"  # type: ignore[attr-defined]
        )
    lines += ["", "Maglev build, 1,000 back ends (`python3 bench/hashing.py`):", "", "```"]
    lines += maglev()
    lines += ["```"]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.md:
        Path(args.md).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
