#!/usr/bin/env python3
"""Controlled loading against a back end that thrashes: dlba's limits vs none vs HAProxy.

    python3 bench/loadbench.py                       # 3 runs x 60 s per mode (~20 min)
    python3 bench/loadbench.py --duration 10 --runs 1   # a quick look
    python3 bench/loadbench.py --md out.md --raw runs.jsonl   # report; every run's samples

The back end is ``bench/contended_backend.py``: a real HTTP server (processor sharing in
real time) whose completions/s climb to a peak at ``--knee`` requests in flight and fall as
knee²/c beyond it. First its curve is measured directly (wrk at each concurrency, no
proxy), and its best concurrency taken from that measurement. Then, with wrk offering
``--offer`` (4) times that concurrency (closed loop, HTTP keep-alive), each mode runs
``--runs`` times for ``--duration`` seconds, interleaved and in rotating order, each run
in a freshly started proxy (so the adaptive controller starts from its ceiling every time
and its search is inside the measurement):

- ``dlba no limit``: ``max_concurrent = 10000``, ``adaptive = false``;
- ``dlba fixed best``: ``max_concurrent`` = the measured best concurrency;
- ``dlba adaptive latency`` / ``dlba adaptive throughput``: ``adaptive = true`` from
  ``max_concurrent = --ceiling`` (256: 32 times too high);
- ``HAProxy maxconn best``: ``server ... maxconn`` = the measured best, ``nbthread 1``;
- ``HAProxy no maxconn``: the same HAProxy with no limit, for reference.

Each mode's figures are the medians of its runs: completions/s and p50/p99 as wrk saw
them (queue waits included), completions/s after the first ``--settle`` seconds (from the
back end's own counter, sampled twice a second), the most requests the back end ever had
in flight, and errors. Then the issue's targets, and the adaptive limit over time (dlba's
status daemon polled twice a second) as an ASCII chart. Everything listens on 127.0.0.1;
every process is stopped by PID and the temporary directory removed on exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from controller_sim import chart  # noqa: E402  (bench/ is not a package)
from policybench import (  # noqa: E402
    free_ports,
    install_missing,
    revision,
    stop_process,
    taskset,
    wait_port,
)
from proxybench import X, parse_wrk  # noqa: E402

from tests.loadsim import SimResult  # noqa: E402


@dataclass(frozen=True)
class Mode:
    key: str
    title: str
    proxy: str  # "dlba" | "haproxy"
    limit: str  # "none" | "best" | "adaptive"
    target: str = ""


MODES = [
    Mode("dlba-none", "dlba no limit", "dlba", "none"),
    Mode("dlba-best", "dlba fixed best", "dlba", "best"),
    Mode("dlba-latency", "dlba adaptive latency", "dlba", "adaptive", "latency"),
    Mode("dlba-throughput", "dlba adaptive throughput", "dlba", "adaptive", "throughput"),
    Mode("haproxy-best", "HAProxy maxconn best", "haproxy", "best"),
    Mode("haproxy-none", "HAProxy no maxconn", "haproxy", "none"),
]


# ---------------------------------------------------------------- small HTTP helpers


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def backend_stats(port: int, reset: bool = False) -> dict[str, object]:
    raw = http_get(port, "/_stats?reset" if reset else "/_stats")
    stats: dict[str, object] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return stats


def dlba_limit(status_port: int) -> int | None:
    """The back end's current limit, from dlba's status daemon."""
    with socket.create_connection(("127.0.0.1", status_port), timeout=2) as s:
        raw = read_all(s)
    for line in raw.splitlines():
        row = json.loads(line)
        if row.get("table") == "backend":
            return int(row["limit"])
    return None


# ---------------------------------------------------------------- processes


class Process:
    """A child process stopped by PID, whatever happens; what it prints goes to ``log``."""

    def __init__(
        self, cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        stop_process(self.proc)


def start_backend(tmp: Path, args: argparse.Namespace) -> tuple[Process, int]:
    cmd = [*taskset(args.client_cpu), sys.executable, str(HERE / "contended_backend.py")]
    cmd += ["--t0", str(args.t0), "--knee", str(args.knee)]
    backend = Process(cmd, tmp, tmp / "backend.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and backend.proc.poll() is None:
        first = backend.log.read_text().partition("\n")
        if first[1]:
            return backend, int(json.loads(first[0])["listening"])
        time.sleep(0.05)
    backend.stop()
    raise RuntimeError(f"back end did not start:\n{backend.tail()}")


def dlba_conf(tmp: Path, mode: Mode, backend: int, best: int, args: argparse.Namespace) -> str:
    limit = {"none": 10000, "best": best, "adaptive": args.ceiling}[mode.limit]
    return f"""
[node]
number = 1
state_dir = "{tmp}/dlba-state"

[listen]
http = "tcp:{args.ports[0]}:interface=127.0.0.1"
status = "tcp:{args.ports[1]}:interface=127.0.0.1"

[limits]
backend_response_timeout = 60.0

[log]
access_log = ""

[[pool]]
name = "bench"
policy = "round-robin"
max_concurrent = {limit}
adaptive = {"true" if mode.limit == "adaptive" else "false"}
target = "{mode.target or "latency"}"
queue_limit = 10000
queue_timeout = 60.0
backend_keepalive = true

[[pool.backend]]
number = 1
address = "127.0.0.1:{backend}"
"""


def haproxy_conf(mode: Mode, backend: int, best: int, args: argparse.Namespace) -> str:
    maxconn = f" maxconn {best}" if mode.limit == "best" else ""
    return f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout queue 60s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{args.ports[0]}
    default_backend be

backend be
    server s1 127.0.0.1:{backend}{maxconn}
"""


def start_proxy(
    tmp: Path, mode: Mode, backend: int, best: int, args: argparse.Namespace
) -> Process:
    if mode.proxy == "dlba":
        conf = tmp / f"{mode.key}.toml"
        conf.write_text(dlba_conf(tmp, mode, backend, best, args))
        (tmp / "dlba-state").mkdir(exist_ok=True)
        env = dict(os.environ)
        if not args.installed:
            env["PYTHONPATH"] = str(REPO)
        cmd = [*taskset(args.proxy_cpu), sys.executable, "-c"]
        cmd += ["from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        cmd += ["dlba", "--config", str(conf)]
        proc = Process(cmd, tmp, tmp / f"{mode.key}.log", env)
    else:
        conf = tmp / f"{mode.key}.cfg"
        conf.write_text(haproxy_conf(mode, backend, best, args))
        cmd = [*taskset(args.proxy_cpu), "haproxy", "-db", "-f", str(conf)]
        proc = Process(cmd, tmp, tmp / f"{mode.key}.log")
    try:
        wait_port(args.ports[0], proc.proc, 20)
        if mode.proxy == "dlba":
            wait_port(args.ports[1], proc.proc, 20)
    except RuntimeError as e:
        proc.stop()
        raise RuntimeError(f"{mode.title} did not start: {e}\n{proc.tail()}") from None
    return proc


# ---------------------------------------------------------------- one run


@dataclass
class Run:
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    settled_rps: float
    max_inflight: int
    errors: int
    samples: list[tuple[float, int, int | None]] = field(default_factory=list)


def wrk(port: int, conns: int, duration: float, args: argparse.Namespace) -> dict[str, float]:
    cmd = [*taskset(args.client_cpu), args.wrk, "-t1", f"-c{conns}", f"-d{duration:g}s"]
    cmd += ["--timeout", "60s", "--latency", f"http://127.0.0.1:{port}/work"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90).stdout
    return parse_wrk(out)


def quiet(backend: int, seconds: float = 10.0) -> None:
    """Until the back end has nothing in flight (the previous run's leftovers are gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if backend_stats(backend)["inflight"] == 0:
            return
        time.sleep(0.05)


def one_run(tmp: Path, mode: Mode, backend: int, best: int, args: argparse.Namespace) -> Run:
    quiet(backend)
    proxy = start_proxy(tmp, mode, backend, best, args)
    try:
        backend_stats(backend, reset=True)
        samples: list[tuple[float, int, int | None]] = []
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.is_set():
                done = int(backend_stats(backend)["completions"])  # type: ignore[call-overload]
                limit = dlba_limit(args.ports[1]) if mode.proxy == "dlba" else None
                samples.append((time.monotonic() - start, done, limit))
                stop.wait(0.5)

        poller = threading.Thread(target=sample, daemon=True)
        poller.start()
        res = wrk(args.ports[0], args.offer * best, args.duration, args)
        stop.set()
        poller.join(10)
        stats = backend_stats(backend)
    finally:
        proxy.stop()
    late = [(t, n) for t, n, _ in samples if t >= args.settle]
    settled = (late[-1][1] - late[0][1]) / (late[-1][0] - late[0][0]) if len(late) > 1 else math.nan
    return Run(
        mode=mode.key,
        rps=res["rps"],
        p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000,
        settled_rps=settled,
        max_inflight=int(stats["max_inflight"]),  # type: ignore[call-overload]
        errors=int(res["errors"] + res["non2xx"]),
        samples=samples,
    )


def sweep(backend: int, args: argparse.Namespace) -> dict[int, float]:
    """The back end's own completions/s at each concurrency, wrk straight at it."""
    curve = {}
    for c in args.sweep:
        quiet(backend)
        curve[c] = wrk(backend, c, args.sweep_duration, args)["rps"]
        print(f"sweep: {c} in flight: {curve[c]:.0f}/s", file=sys.stderr)
    return curve


# ---------------------------------------------------------------- report


def ratio_check(name: str, value: float, limit: float, wanted: str) -> str:
    ok = value >= limit if wanted == ">=" else value <= limit
    return f"| {name} | {value:.2f}{X} | {wanted} {limit:g}{X} | {'met' if ok else 'MISSED'} |"


def limit_chart(run: Run, args: argparse.Namespace, title: str) -> str:
    points = [(t, n) for t, _, n in run.samples if n is not None]
    if not points:
        return title + "\n(no samples)"
    fake = SimResult(duration=0.0, completions=0, errors=0, latencies=[], rtts=[], limits=points)
    return chart(fake, args.width, args.ceiling, title)


def stability(run: Run, tail: float = 20.0) -> tuple[float, float, float, float]:
    """When the limit settled (entered ±20 % of its final median for good), that median over
    the last ``tail`` seconds, the largest swing from it there, and the share of those
    samples within ±20 %."""
    points = [(t, n) for t, _, n in run.samples if n is not None]
    if not points:
        return math.nan, math.nan, math.nan, math.nan
    end = points[-1][0]
    last = [n for t, n in points if t >= end - tail]
    median = statistics.median(last)
    swing = max(abs(n / median - 1) for n in last)
    within = sum(1 for n in last if abs(n / median - 1) <= 0.2) / len(last)
    fake = SimResult(duration=0.0, completions=0, errors=0, latencies=[], rtts=[], limits=points)
    return fake.settling_time(0.2, tail), median, swing, within


def report(curve: dict[int, float], best: int, runs: list[Run], args: argparse.Namespace) -> str:
    by_mode = {m.key: [r for r in runs if r.mode == m.key] for m in MODES if m.key in args.modes}

    def med(key: str, attr: str) -> float:
        return statistics.median(float(getattr(r, attr)) for r in by_mode[key])

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    two = args.proxy_cpu is not None
    lines = [
        f"dlba {revision()} ({'installed' if args.installed else 'work tree'}), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}"
        + ("; proxy on CPU 0, back end and wrk on CPU 1" if two else ""),
        "",
        f"Back end: `bench/contended_backend.py`, T(c) = {args.t0 * 1000:g} ms · "
        f"max(1, c/{args.knee})² (exponential work)"
        + (
            f", measured straight with wrk ({args.sweep_duration:g} s per point):"
            if curve
            else f"; best concurrency given: **{best}** (no sweep)."
        ),
        "",
    ]
    if curve:
        lines += [
            "| in flight | " + " | ".join(str(c) for c in curve) + " |",
            "| --- |" + " ---: |" * len(curve),
            "| completions/s | " + " | ".join(f"{v:.0f}" for v in curve.values()) + " |",
            "",
            f"Best concurrency measured: **{best}**.",
            "",
        ]
    lines += [
        f"Offered: wrk -t1 -c{args.offer * best} "
        f"(closed loop, keep-alive), {args.runs} runs {X} {args.duration:g} s per mode, "
        f"interleaved, a fresh proxy per run; medians. Adaptive starts at "
        f"max_concurrent = {args.ceiling}.",
        "",
        "| mode | completions/s | vs no limit | vs HAProxy best | after "
        f"{args.settle:g} s | p50 ms | p99 ms | back end max in flight | errors | runs (compl/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    none = med("dlba-none", "rps") if "dlba-none" in by_mode else float("nan")
    hap = med("haproxy-best", "rps") if "haproxy-best" in by_mode else float("nan")
    for mode in MODES:
        if mode.key not in by_mode:
            continue
        rps = med(mode.key, "rps")
        lines.append(
            f"| {mode.title} | {rps:.1f} | {rps / none:.2f}{X} | {rps / hap:.2f}{X} "
            f"| {med(mode.key, 'settled_rps'):.1f} | {med(mode.key, 'p50_ms'):.1f} "
            f"| {med(mode.key, 'p99_ms'):.1f} "
            f"| {max(r.max_inflight for r in by_mode[mode.key])} "
            f"| {sum(r.errors for r in by_mode[mode.key])} "
            f"| {', '.join(f'{r.rps:.0f}' for r in by_mode[mode.key])} |"
        )
    lines += ["", "| target | measured | wanted | |", "| --- | ---: | ---: | --- |"]
    none_p99 = med("dlba-none", "p99_ms") if "dlba-none" in by_mode else float("nan")
    for key in ("dlba-latency", "dlba-throughput"):
        if key not in by_mode:
            continue
        name = key.split("-")[1]
        lines.append(
            ratio_check(f"{name}: completions/s ÷ no limit", med(key, "rps") / none, 2, ">=")
        )
        p99 = med(key, "p99_ms") / none_p99
        lines.append(ratio_check(f"{name}: p99 ÷ no limit", p99, 0.5, "<="))
        lines.append(
            ratio_check(f"{name}: completions/s ÷ HAProxy best", med(key, "rps") / hap, 0.9, ">=")
        )
    adaptive = [k for k in ("dlba-latency", "dlba-throughput") if k in by_mode]
    if adaptive:
        lines += [
            "",
            "| adaptive | settled after s | limit, last 20 s (median) | swing, last 20 s "
            "| share of last 20 s within ±20 % | per run (settled s / limit / swing) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
    for key in adaptive:
        stab = [stability(r) for r in by_mode[key]]
        lines.append(
            f"| {key} | {statistics.median(x[0] for x in stab):.1f} "
            f"| {statistics.median(x[1] for x in stab):g} "
            f"| ±{statistics.median(x[2] for x in stab):.0%} "
            f"| {statistics.median(x[3] for x in stab):.0%} "
            f"| {'; '.join(f'{a:.1f} / {b:g} / ±{c:.0%}' for a, b, c, _ in stab)} |"
        )
    for key in adaptive:
        runs_of = sorted(by_mode[key], key=lambda r: r.rps)
        middle = runs_of[len(runs_of) // 2]
        tail = [n for t, _, n in middle.samples if n is not None and t >= args.settle]
        settled = f"median {statistics.median(tail):g} after {args.settle:g} s" if tail else ""
        lines += ["", "```"]
        lines.append(
            limit_chart(
                middle,
                args,
                f"{key}: limit over time, the median run ({middle.rps:.0f}/s; {settled}); "
                "log scale, * median per column, . other values held",
            )
        )
        lines.append("```")
    return "\n".join(lines) + "\n"


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--settle", type=float, default=10.0, help="s before 'after' figures")
    a.add_argument("--t0", type=float, default=0.02, help="back end: work per request, s")
    a.add_argument("--knee", type=int, default=8, help="back end: best concurrency")
    a.add_argument("--offer", type=int, default=4, help="clients = offer x best")
    a.add_argument("--ceiling", type=int, default=256, help="adaptive max_concurrent")
    a.add_argument("--sweep", default="2,4,6,8,10,12,16,32", help="concurrencies to measure")
    a.add_argument("--sweep-duration", type=float, default=4.0)
    a.add_argument("--best", type=int, default=0, help="skip the sweep, use this")
    a.add_argument("--modes", default=",".join(m.key for m in MODES))
    a.add_argument("--installed", action="store_true", help="the installed dlba, not the tree")
    a.add_argument("--wrk", default="wrk")
    a.add_argument("--width", type=int, default=60, help="chart columns")
    a.add_argument("--md", help="also write the report (markdown) to this file")
    a.add_argument("--raw", help="also write every run, samples included, as JSON lines here")
    args = a.parse_args()
    args.sweep = [int(c) for c in args.sweep.split(",")]
    args.modes = args.modes.split(",")
    two = (os.cpu_count() or 1) >= 2
    args.proxy_cpu, args.client_cpu = ("0", "1") if two else (None, None)
    missing = install_missing({args.wrk: "wrk", "haproxy": "haproxy", "taskset": "util-linux"})
    if missing:
        print(f"not installed and could not install: {', '.join(missing)}", file=sys.stderr)
        return 2
    modes = [m for m in MODES if m.key in args.modes]

    tmp = Path(tempfile.mkdtemp(prefix="dlba-loadbench-"))
    args.ports = free_ports(2)
    backend_proc, backend = start_backend(tmp, args)
    runs: list[Run] = []
    try:
        curve = sweep(backend, args) if not args.best else {}
        best = args.best or max(curve, key=lambda c: curve[c])
        for i in range(args.runs):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for mode in order:
                run = one_run(tmp, mode, backend, best, args)
                runs.append(run)
                brief = {k: v for k, v in run.__dict__.items() if k != "samples"}
                print(json.dumps(brief), file=sys.stderr)
    finally:
        backend_proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.raw:
        with open(args.raw, "w") as raw:
            for run in runs:
                raw.write(json.dumps(run.__dict__) + "\n")
    text = report(curve, best, runs, args)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
