#!/usr/bin/env python3
"""Measuring and reporting for bench/run.sh (which starts and stops the processes).

    proxybench.py freeports N
        N free TCP ports on 127.0.0.1, below the ephemeral range, one line.
    proxybench.py bench --out RESULTS.jsonl --proxy NAME:PID:HTTP_PORT:HTTPS_PORT ...
        Runs every workload against every proxy, RUNS times each, interleaving the proxies
        (the order rotates from run to run so slow drift on a noisy machine hits all of
        them alike), and appends one JSON line per run.
    proxybench.py report RESULTS.jsonl [--skipped NAME=REASON ...] [--md FILE]
        The Markdown table of medians, ratios against the targets and the machine.
    proxybench.py profile --proxy NAME:PID:HTTP_PORT:HTTPS_PORT --workloads "K ..." --out DIR
        py-spy samples the proxy (a Python process) while each workload runs; prints and
        writes the functions with the most samples, by own time and including callees.

The figure that counts is the proxy's CPU time per request: utime + stime of the proxy
process (and any children it has) from /proc/<pid>/stat, read just before the load
generator starts and just after it exits, in clock ticks (SC_CLK_TCK), divided by the
requests the generator saw completed.  /proc/<pid>/stat counts every thread of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
X, DASH = "\u00d7", "\u2013"  # x and - for the tables, spelled so linters do not mind


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    tool: str  # "wrk" | "tlsnew" | "rate"
    scheme: str
    path: str
    cpu_target: float | None = None  # dlba/HAProxy CPU per request must be <= this
    p99_target: float | None = None  # dlba/HAProxy p99 must be <= this
    fixed: bool = False  # at a fixed offered rate (open loop), not as fast as it goes


# Two regimes of the same four loads: saturated (closed loop: wrk or tlsnew as fast as the
# proxy answers, enough connections that the proxy is the busy process) and at a fixed
# offered rate (open loop: RATE req/s, TLS_RATE handshakes/s), where every proxy does the
# same work per second and CPU per request is not flattered by bigger batches per wakeup.
WORKLOADS = [
    Workload("http-ka-100", "HTTP keep-alive, 100 B", "wrk", "http", "/100", cpu_target=2.3),
    Workload("https-ka-100", "HTTPS keep-alive, 100 B", "wrk", "https", "/100", cpu_target=2.6),
    Workload("http-ka-16k", "HTTP keep-alive, 16 KiB", "wrk", "http", "/16k", cpu_target=2.0),
    Workload("https-ka-16k", "HTTPS keep-alive, 16 KiB", "wrk", "https", "/16k"),
    Workload(
        "https-new-tls",
        "HTTPS, full TLS 1.3 handshake per request",
        "tlsnew",
        "https",
        "/100",
        cpu_target=1.25,
    ),
    Workload(
        "rate-http-ka-100",
        "HTTP keep-alive, 100 B, fixed rate",
        "rate",
        "http",
        "/100",
        cpu_target=2.3,
        p99_target=2.0,
        fixed=True,
    ),
    Workload(
        "rate-https-ka-100",
        "HTTPS keep-alive, 100 B, fixed rate",
        "rate",
        "https",
        "/100",
        cpu_target=2.6,
        fixed=True,
    ),
    Workload(
        "rate-http-ka-16k",
        "HTTP keep-alive, 16 KiB, fixed rate",
        "rate",
        "http",
        "/16k",
        cpu_target=2.0,
        fixed=True,
    ),
    Workload(
        "rate-https-new-tls",
        "HTTPS, full TLS 1.3 handshake per request, fixed rate",
        "tlsnew",
        "https",
        "/100",
        cpu_target=1.25,
        fixed=True,
    ),
]
WORKLOAD_BY_KEY = {w.key: w for w in WORKLOADS}
PROXY_ORDER = ["dlba", "dlba-base", "haproxy", "nginx"]
PROXY_TITLE = {"dlba": "dlba", "dlba-base": "dlba (base)", "haproxy": "HAProxy", "nginx": "nginx"}
SUSTAINED = 0.98  # a fixed-rate run must complete this share of the offered requests


# ---------------------------------------------------------------- CPU accounting


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def _own_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])  # utime (field 14), stime (field 15)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime, stime of pid and its descendants (nginx: master + worker), in ticks."""
    utime = stime = 0
    todo = [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            u, s = _own_ticks(p)
        except (OSError, ValueError):
            if p == pid:
                raise
            continue
        utime += u
        stime += s
        todo.extend(_children(p))
    return utime, stime


# ---------------------------------------------------------------- load generators

_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def parse_wrk(out: str) -> dict[str, float]:
    """Requests, duration, req/s, p50, p99 and error counts from `wrk --latency` output."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if not m:
        raise ValueError("no 'N requests in' line in wrk output")
    res: dict[str, float] = {
        "requests": int(m.group(1)),
        "duration_s": float(m.group(2)) * _UNIT_US[m.group(3)] / 1e6,
    }
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else res["requests"] / res["duration_s"]
    for q in ("50", "99"):
        m = re.search(rf"^\s*{q}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{q}_us"] = float(m.group(1)) * _UNIT_US[m.group(2)] if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def parse_loadgen(out: str) -> dict[str, object]:
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise ValueError("no JSON line in loadgen output")
    res: dict[str, object] = json.loads(line)
    res["errors"] = int(res.get("errors", 0)) + int(res.get("timeouts", 0))  # type: ignore[call-overload]
    return res


@dataclass
class Proxy:
    name: str
    pid: int
    http_port: int
    https_port: int


@dataclass
class Settings:
    duration: float
    warmup: float
    runs: int
    openloop_runs: int
    wrk_threads: int
    wrk_conns: int
    tls_clients: int
    rate: float
    tls_rate: float
    rate_conns: int
    client_cpus: str | None  # taskset -c list for the load generator, None: no pinning
    loadgen: str
    wrk: str


def settings(args: argparse.Namespace, *, warmup: float, runs: int, openloop_runs: int) -> Settings:
    """The load generators' settings from the command line (bench and profile share them)."""
    return Settings(
        duration=args.duration,
        warmup=warmup,
        runs=runs,
        openloop_runs=openloop_runs or runs,
        wrk_threads=args.wrk_threads,
        wrk_conns=args.wrk_conns,
        tls_clients=args.tls_clients,
        rate=args.rate,
        tls_rate=args.tls_rate,
        rate_conns=args.rate_conns,
        client_cpus=args.client_cpus or None,
        loadgen=args.loadgen,
        wrk=args.wrk,
    )


def command(w: Workload, p: Proxy, s: Settings, duration: float) -> list[str]:
    port = p.https_port if w.scheme == "https" else p.http_port
    if w.tool == "wrk":
        url = f"{w.scheme}://127.0.0.1:{port}{w.path}"
        cmd = [s.wrk, f"-t{s.wrk_threads}", f"-c{s.wrk_conns}", f"-d{duration:g}s"]
        cmd += ["--latency", "--timeout", "5s", url]
    elif w.tool == "tlsnew":
        cmd = [s.loadgen, "tlsnew", "-p", str(port), "-u", w.path]
        cmd += ["-c", str(s.tls_clients), "-d", f"{duration:g}"]
        if w.fixed:
            cmd += ["-r", f"{s.tls_rate:g}"]
    elif w.tool == "rate":
        cmd = [s.loadgen, "rate", "-p", str(port), "-u", w.path, "-r", f"{s.rate:g}"]
        cmd += ["-c", str(s.rate_conns), "-d", f"{duration:g}", "-w", "0", "-T", "5"]
        if w.scheme == "https":
            cmd += ["-s"]
    else:
        raise ValueError(w.tool)
    if s.client_cpus is not None:
        cmd = ["taskset", "-c", s.client_cpus, *cmd]
    return cmd


def measure(w: Workload, p: Proxy, s: Settings, duration: float) -> dict[str, object]:
    cmd = command(w, p, s, duration)
    u0, s0 = cpu_ticks(p.pid)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": f"load generator still running {duration + 30:g} s in: killed"}
    wall = time.monotonic() - t0
    u1, s1 = cpu_ticks(p.pid)
    rec: dict[str, object] = {"cmd": " ".join(cmd), "wall_s": round(wall, 3)}
    try:
        res = parse_wrk(proc.stdout) if w.tool == "wrk" else parse_loadgen(proc.stdout)
    except ValueError as e:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**rec, "ok": False, "why": f"{e} (exit {proc.returncode}): {' | '.join(tail)}"}
    rec.update(res)
    if w.tool != "wrk" and proc.stderr.strip():
        rec["summary"] = proc.stderr.strip().splitlines()[-1]
    requests = int(res["requests"])  # type: ignore[call-overload]
    cpu_s = (u1 - u0 + s1 - s0) / CLK_TCK
    rec.update(
        utime_s=(u1 - u0) / CLK_TCK,
        stime_s=(s1 - s0) / CLK_TCK,
        cpu_s=cpu_s,
        cpu_util=round(cpu_s / wall, 3) if wall > 0 else None,
        cpu_us_per_req=(cpu_s / requests * 1e6) if requests else None,
    )
    bad = int(res.get("errors", 0)) + int(res.get("non2xx", 0))  # type: ignore[call-overload]
    if requests == 0:
        rec.update(ok=False, why="no request completed")
    elif bad > 0.01 * (requests + bad):
        rec.update(ok=False, why=f"{bad} errors or non-2xx responses")
    elif w.tool == "tlsnew" and int(res.get("resumed", 0)):  # type: ignore[call-overload]
        rec.update(ok=False, why=f"{res['resumed']} handshakes were resumed, not full")
    else:
        rec["ok"] = True
    if w.fixed:
        offered = s.tls_rate if w.tool == "tlsnew" else s.rate
        rec["offered_rps"] = offered
        rec["sustained"] = float(res["rps"]) >= SUSTAINED * offered  # type: ignore[arg-type]
    return rec


def bench(args: argparse.Namespace) -> int:
    proxies = []
    for spec in args.proxy:
        name, pid, hp, sp = spec.split(":")
        proxies.append(Proxy(name, int(pid), int(hp), int(sp)))
    s = settings(args, warmup=args.warmup, runs=args.runs, openloop_runs=args.openloop_runs)
    wanted = [WORKLOAD_BY_KEY[k] for k in args.workloads.split()] if args.workloads else WORKLOADS
    out = Path(args.out)

    def runs_of(w: Workload) -> int:  # p99 is the noisiest figure: it gets more runs
        return s.openloop_runs if w.p99_target is not None else s.runs

    total = sum(runs_of(w) for w in wanted) * len(proxies)
    done = 0
    for w in wanted:
        if s.warmup > 0:  # unmeasured: warm caches, connection pools, lazy imports
            for p in proxies:
                try:
                    subprocess.run(
                        command(w, p, s, s.warmup), capture_output=True, timeout=s.warmup + 30
                    )
                except subprocess.TimeoutExpired:
                    print(f"warm-up of {w.key} on {p.name} timed out", flush=True)
        for run in range(1, runs_of(w) + 1):
            shift = (run - 1) % len(proxies)
            for p in proxies[shift:] + proxies[:shift]:
                time.sleep(0.5)  # let the previous run's connections close
                rec = {"workload": w.key, "proxy": p.name, "run": run, "duration": s.duration}
                rec.update(measure(w, p, s, s.duration))
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done += 1
                if rec["ok"]:
                    if rec.get("sustained") is False:
                        print(f"  {p.name} did not sustain {rec['offered_rps']:g}/s", flush=True)
                    line = (
                        f"{rec['rps']:9.0f} req/s  {rec['cpu_us_per_req']:7.1f} us CPU/req"
                        f"  p99 {float(rec['p99_us']) / 1000:7.2f} ms"  # type: ignore[arg-type]
                        f"  proxy CPU {float(rec['cpu_util']) * 100:3.0f}%"  # type: ignore[arg-type]
                    )
                else:
                    line = f"FAILED: {rec['why']}"
                print(f"[{done:3d}/{total}] {w.key:14s} {p.name:8s} run {run}: {line}", flush=True)
    return 0


# ---------------------------------------------------------------- report


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0].strip() if text else "not available"


def machine(python: str) -> list[tuple[str, str]]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    twisted = _first_line(
        [
            python,
            "-c",
            "import twisted, sys; print(twisted.__version__, 'on Python', sys.version.split()[0])",
        ]
    )
    dlba_openssl = _first_line(
        [
            python,
            "-c",
            "from OpenSSL import SSL; print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())",
        ]
    )
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", model),
        ("kernel", platform.release()),
        ("HAProxy", _first_line(["haproxy", "-v"])),
        ("nginx", _first_line(["nginx", "-v"])),
        ("wrk", _first_line(["wrk", "-v"])),
        ("OpenSSL (HAProxy, nginx, wrk, loadgen)", _first_line(["openssl", "version"])),
        ("OpenSSL (dlba, via pyOpenSSL/cryptography)", dlba_openssl),
        ("Python (dlba)", _first_line([python, "--version"])),
        ("Twisted", twisted),
    ]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str) -> str:
    return DASH if x is None else format(x, spec)


def report(args: argparse.Namespace) -> int:
    recs = [json.loads(ln) for ln in Path(args.results).read_text().splitlines() if ln.strip()]
    skipped = dict(s.split("=", 1) for s in (args.skipped or []))
    present = {r["proxy"] for r in recs}
    proxies = [p for p in PROXY_ORDER if p in present or p in skipped]
    meta0 = json.loads(args.meta) if args.meta else {}
    if meta0.get("base"):
        PROXY_TITLE["dlba-base"] = f"dlba at {meta0['base']}"
    workloads = [w for w in WORKLOADS if any(r["workload"] == w.key for r in recs)]
    meta = json.loads(args.meta) if args.meta else {}

    med: dict[tuple[str, str], dict[str, float | None]] = {}
    lines = [f"# dlba proxy benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    if meta:
        lines += [
            "Each cell is the median of the runs "
            f"({meta.get('runs', '?')} {X} {meta.get('duration', '?')} s; open loop "
            f"{meta.get('openloop_runs', '?')} runs; each after a "
            f"{meta.get('warmup', '?')} s unmeasured warm-up). {meta.get('setup', '')}",
            "",
        ]
    lines += [
        "| workload | proxy | req/s | CPU µs/request | p99 ms | proxy CPU use | runs ok "
        "| CPU µs/req per run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for w in workloads:
        for p in proxies:
            if p in skipped and p not in present:
                lines.append(f"| {w.title} | {PROXY_TITLE[p]} | skipped | | | | | |")
                continue
            runs = [r for r in recs if r["workload"] == w.key and r["proxy"] == p]
            ok = [r for r in runs if r.get("ok")]
            m = {
                "rps": _median([r["rps"] for r in ok]),
                "cpu": _median([r["cpu_us_per_req"] for r in ok]),
                "p99": _median([r["p99_us"] for r in ok]),
                "util": _median([r["cpu_util"] for r in ok]),
            }
            med[(w.key, p)] = m
            per_run = ", ".join(
                f"{r['cpu_us_per_req']:.1f}" if r.get("ok") else "fail" for r in runs
            )
            p99 = None if m["p99"] is None else m["p99"] / 1000
            util = None if m["util"] is None else m["util"] * 100
            lines.append(
                f"| {w.title} | {PROXY_TITLE[p]} | {_fmt(m['rps'], ',.0f')} "
                f"| {_fmt(m['cpu'], '.1f')} | {_fmt(p99, '.2f')} | {_fmt(util, '.0f')}% "
                f"| {len(ok)}/{len(runs)} | {per_run} |"
            )

    def ratio(wk: str, metric: str, ref: str, of: str = "dlba") -> float | None:
        a, b = med.get((wk, of)), med.get((wk, ref))
        if not a or not b or a[metric] is None or not b[metric]:
            return None
        return a[metric] / b[metric]  # type: ignore[operator]

    def judged(got: float | None, target: float, what: str) -> str:
        if got is None:
            return f"{what}: not measured" + (
                f" (dlba: {skipped['dlba']})" if "dlba" in skipped else ""
            )
        met = round(got, 2) <= target  # judged on the ratio as printed
        return f"{what} {'MET' if met else 'MISSED'}"

    base = "dlba-base" in present
    lines += [
        "",
        "## dlba against the others",
        "",
        "| workload | CPU/req dlba/HAProxy | target | p99 dlba/HAProxy | target "
        "| CPU/req dlba/nginx | p99 dlba/nginx "
        + ("| CPU/req dlba/base " if base else "")
        + "| verdict |",
        "| --- " + "| ---: " * (7 if base else 6) + "| --- |",
    ]
    for w in workloads:
        cpu_h, cpu_n = ratio(w.key, "cpu", "haproxy"), ratio(w.key, "cpu", "nginx")
        p99_h, p99_n = ratio(w.key, "p99", "haproxy"), ratio(w.key, "p99", "nginx")
        verdicts = []
        if w.cpu_target is not None:
            verdicts.append(judged(cpu_h, w.cpu_target, "CPU/req"))
        if w.p99_target is not None:
            verdicts.append(judged(p99_h, w.p99_target, "p99"))
        unsustained = sorted(
            {
                PROXY_TITLE.get(r["proxy"], r["proxy"])
                for r in recs
                if r["workload"] == w.key and r.get("ok") and r.get("sustained") is False
            }
        )
        if unsustained:
            verdicts.append(f"not sustained by {', '.join(unsustained)}")
        cpu_t = f"≤ {w.cpu_target:g}{X}" if w.cpu_target is not None else DASH
        p99_t = f"≤ {w.p99_target:g}{X}" if w.p99_target is not None else DASH
        base_cell = f"| {_fmt(ratio(w.key, 'cpu', 'dlba-base'), '.2f')}{X} " if base else ""
        lines.append(
            f"| {w.title} | {_fmt(cpu_h, '.2f')}{X} | {cpu_t} | {_fmt(p99_h, '.2f')}{X} "
            f"| {p99_t} | {_fmt(cpu_n, '.2f')}{X} | {_fmt(p99_n, '.2f')}{X} "
            f"{base_cell}| {'; '.join(verdicts) or 'no target'} |"
        )

    tls = {r["proxy"]: r for r in recs if r["workload"] == "https-new-tls" and r.get("protocol")}
    if tls:
        lines += [
            "",
            "Negotiated in the handshake workload (every handshake full: resumed = 0):",
            "",
        ]
        for p in proxies:
            if p in tls:
                r = tls[p]
                lines.append(f"- {PROXY_TITLE[p]}: {r['protocol']}, {r['cipher']}, {r['group']}")
    ol = [r for r in recs if r["workload"].startswith("rate-") and r.get("send_lag_p99_us")]
    if ol:
        lags = [r.get("send_lag_p99_us", 0) for r in ol]
        lines += [
            "",
            "Open loop: latency counts from each request's scheduled send time; the generator's "
            f"own send lag p99 was {min(lags):.0f}{DASH}{max(lags):.0f} µs over the runs "
            "(a noise floor under the p99).",
        ]
    failed = [r for r in recs if not r.get("ok")]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [
            f"- {r['workload']} / {r['proxy']} run {r['run']}: {r.get('why')}" for r in failed
        ]
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {PROXY_TITLE.get(k, k)}: {v}" for k, v in skipped.items()]
    lines += ["", "## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine(args.python)]
    for k in ("pinning", "load", "dlba code", "base"):
        if k in meta:
            lines.append(f"| {k} | {meta[k]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
    return 0


# ---------------------------------------------------------------- profile

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    """``fn (path/to/file.py:12)`` as ``fn (file-within-its-package)``, line left out, so
    the samples of one function add up."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3", "/dlba/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            elif marker == "/dlba/":
                path = "dlba/" + path
            break
    return f"{m.group('fn')} ({path})"


def summarise(collapsed: str, top: int = 30) -> str:
    """The functions with the most samples in py-spy's raw (collapsed-stack) output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for ln in collapsed.splitlines():
        stack, _, count_text = ln.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "own time (the function itself):"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out += ["", "including what it calls:"]
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out) + "\n"


def profile(args: argparse.Namespace) -> int:
    name, pid, hp, sp = args.proxy.split(":")
    p = Proxy(name, int(pid), int(hp), int(sp))
    s = settings(args, warmup=0, runs=1, openloop_runs=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key in args.workloads.split():
        w = WORKLOAD_BY_KEY[key]
        raw = out / f"{name}-{key}.collapsed"
        spy_cmd = ["py-spy", "record", "--pid", str(p.pid), "--rate", "250", "--nonblocking"]
        spy_cmd += ["--duration", f"{args.duration + 1:g}", "--format", "raw", "-o", str(raw)]
        spy = subprocess.Popen(
            spy_cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # py-spy attaches before the load starts
        rec = measure(w, p, s, args.duration)
        try:
            _, err = spy.communicate(timeout=args.duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not raw.exists():
            print(f"py-spy wrote nothing for {key}: {err.strip()[-300:]}", flush=True)
            continue
        head = (
            f"# py-spy profile of {name} under {key} ({w.title}): "
            f"{rec.get('rps', 0):.0f} req/s while sampled"
        )
        text = head + "\n\n" + summarise(raw.read_text(), args.top)
        (out / f"{name}-{key}.txt").write_text(text)
        print(text, flush=True)
    return 0


# ---------------------------------------------------------------- misc


def freeports(args: argparse.Namespace) -> int:
    ports: list[int] = []
    rng = random.Random()
    for _ in range(10000):
        if len(ports) == args.n:
            break
        port = rng.randrange(20000, 32000)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < args.n:
        print("no free ports", file=sys.stderr)
        return 1
    print(" ".join(map(str, ports)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("freeports")
    a.add_argument("n", type=int)
    a.set_defaults(fn=freeports)
    a = sub.add_parser("bench")
    a.add_argument("--out", required=True)
    a.add_argument("--proxy", action="append", required=True, help="NAME:PID:HTTP_PORT:HTTPS_PORT")
    a.add_argument("--duration", type=float, default=10)
    a.add_argument("--warmup", type=float, default=1)
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--openloop-runs", type=int, default=0, help="runs of open-loop; 0: --runs")
    a.add_argument("--wrk-threads", type=int, default=1)
    a.add_argument("--wrk-conns", type=int, default=32)
    a.add_argument("--tls-clients", type=int, default=8)
    a.add_argument("--rate", type=float, default=2000)
    a.add_argument("--tls-rate", type=float, default=200, help="handshakes/s, fixed-rate TLS")
    a.add_argument("--rate-conns", type=int, default=32)
    a.add_argument("--client-cpus", default="", help="taskset -c list for wrk/loadgen; empty: none")
    a.add_argument("--workloads", default="", help="space-separated keys; empty: all")
    a.add_argument("--loadgen", required=True)
    a.add_argument("--wrk", default="wrk")
    a.set_defaults(fn=bench)
    a = sub.add_parser("profile")
    a.add_argument("--proxy", required=True, help="NAME:PID:HTTP_PORT:HTTPS_PORT")
    a.add_argument("--workloads", required=True)
    a.add_argument("--out", required=True, help="directory for the raw and summary files")
    a.add_argument("--duration", type=float, default=10)
    a.add_argument("--top", type=int, default=30)
    a.add_argument("--wrk-threads", type=int, default=2)
    a.add_argument("--wrk-conns", type=int, default=64)
    a.add_argument("--tls-clients", type=int, default=8)
    a.add_argument("--rate", type=float, default=2000)
    a.add_argument("--rate-conns", type=int, default=32)
    a.add_argument("--tls-rate", type=float, default=200)
    a.add_argument("--client-cpus", default="")
    a.add_argument("--loadgen", required=True)
    a.add_argument("--wrk", default="wrk")
    a.set_defaults(fn=profile)
    a = sub.add_parser("report")
    a.add_argument("results")
    a.add_argument("--skipped", action="append", help="NAME=REASON")
    a.add_argument("--md", help="also write the Markdown here")
    a.add_argument("--meta", help="JSON: runs, duration, warmup, setup, pinning, load")
    a.add_argument("--python", default=sys.executable, help="the Python that runs dlba")
    a.set_defaults(fn=report)
    args = ap.parse_args()
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
