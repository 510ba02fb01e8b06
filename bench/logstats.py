#!/usr/bin/env python3
"""Speed of ``dlba-ctl logstats`` against GoAccess on one generated combined-format log.

    python3 bench/logstats.py                 # 1,000,000 lines, 3 runs each (median)
    python3 bench/logstats.py --runs 5        # 5 runs each
    python3 bench/logstats.py --lines 200000  # a quicker smoke run
    python3 bench/logstats.py --keep DIR      # keep (and reuse) the generated log in DIR

The log is generated from a fixed seed, so every run of this script reads the same bytes:
a day of traffic with a midday peak, Zipf-distributed URLs (some with query strings),
a realistic status mix, a few thousand client addresses and user agents, and a few
malformed lines.  GoAccess (Debian package ``goaccess``) and GNU time (``time``) are
installed with apt-get if missing.  The two tools run alternately, ``runs`` times each, so
a busy neighbour slows both alike; each run is one child process, its wall time taken
here, its CPU time (user + system) and peak RSS by ``/usr/bin/time``.  The verdict
(target: at least 5 times GoAccess's lines/s) is taken on the medians of wall time; the
CPU-time ratio is printed beside it, since on a shared machine the wall time includes
waiting for a core.  Both figures include each program's start-up.

dlba-ctl runs from this work tree (``PYTHONPATH``), not from an installed copy.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 5.0
SEED = 20250310

_AGENTS = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/17.4 Safari/605.1.15",
    b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    b"(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    b"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Mobile Safari/537.36",
    b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    b"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    b"curl/8.5.0",
    b"Wget/1.21.3",
    b"python-requests/2.31.0",
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    b"dlba-ctl/probe",
    b"-",
)
_MONTHS = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_STATUSES = (
    (b"200", 800),
    (b"304", 80),
    (b"301", 15),
    (b"302", 15),
    (b"206", 5),
    (b"404", 50),
    (b"403", 5),
    (b"400", 5),
    (b"500", 12),
    (b"502", 6),
    (b"503", 5),
    (b"504", 2),
)


def _urls(rng: random.Random) -> list[bytes]:
    urls = [b"/", b"/index.html", b"/favicon.ico", b"/robots.txt", b"/login", b"/cart"]
    urls += [b"/static/css/app.%d.css" % i for i in range(20)]
    urls += [b"/static/js/bundle.%d.js" % i for i in range(30)]
    urls += [b"/img/%d.jpg" % i for i in range(1500)]
    urls += [b"/product/%d" % rng.randrange(10**6) for _ in range(2500)]
    urls += [b"/api/v1/items?page=%d" % i for i in range(200)]
    urls += [b"/search?q=%s" % w for w in b"shoes hat coat red blue sale gift bag".split()]
    urls += [b"/blog/2024/%02d/post-%d.html" % (i % 12 + 1, i) for i in range(400)]
    # The named pages stay the most popular; the rest are popular in no particular order.
    rest = urls[6:]
    rng.shuffle(rest)
    urls[6:] = rest
    return urls


def _stamp(t: int, offset_minutes: int) -> bytes:
    g = time.gmtime(t + offset_minutes * 60)
    sign = b"+" if offset_minutes >= 0 else b"-"
    off = abs(offset_minutes)
    return b"%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d" % (
        g.tm_mday,
        _MONTHS[g.tm_mon - 1],
        g.tm_year,
        g.tm_hour,
        g.tm_min,
        g.tm_sec,
        sign,
        off // 60,
        off % 60,
    )


def generate(path: Path, lines: int, seed: int = SEED) -> int:
    """Write ``lines`` lines (a few of them malformed) to ``path``; return the malformed count."""
    rng = random.Random(seed)
    start = 1741561200  # 2025-03-10 00:00:00 +0100
    offset = 60
    day = 86400
    # A midday peak (14:00 local) and a night trough, by rejection sampling.
    times: list[int] = []
    while len(times) < lines:
        s = rng.random() * day
        if rng.random() < 0.55 + 0.45 * math.cos((s / 3600 - 14) / 24 * 2 * math.pi):
            times.append(start + int(s))
    times.sort()
    urls = _urls(rng)
    url_weights = list(itertools.accumulate(1 / (i + 1) ** 1.05 for i in range(len(urls))))
    chosen_urls = rng.choices(urls, cum_weights=url_weights, k=lines)
    clients = [b"%d.%d.%d.%d" % tuple(rng.randrange(1, 255) for _ in range(4)) for _ in range(5000)]
    client_w = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(len(clients))))
    chosen_clients = rng.choices(clients, cum_weights=client_w, k=lines)
    statuses = rng.choices([s for s, _ in _STATUSES], weights=[w for _, w in _STATUSES], k=lines)
    methods = rng.choices([b"GET", b"POST", b"HEAD"], weights=[92, 6, 2], k=lines)
    agents = rng.choices(_AGENTS, weights=[30, 15, 8, 15, 12, 5, 3, 2, 1, 2, 4, 3, 1, 1], k=lines)
    referers = rng.choices(
        [
            b"-",
            b"https://www.example.com/",
            b"https://www.google.com/",
            b"https://www.example.com/cart",
        ],
        weights=[40, 35, 20, 5],
        k=lines,
    )
    sizes = [int(rng.lognormvariate(8.5, 1.3)) for _ in range(lines)]
    bad_at = set(rng.sample(range(lines), min(20, lines)))
    bad_kinds = (
        b"\n",
        b"garbage that is no log line at all\n",
        b'192.0.2.7 - - [10/Mar/2025:99:61:00 +0100] "GET / HTTP/1.1" 200 5 "-" "-"\n',
        b'192.0.2.7 - - [10/Mar/2025:12:00:00 +0100] "GET / HTTP/1.1" abc 5 "-" "-"\n',
        b'192.0.2.7 - - [10/Mar/2025:12:00:00 +0100] "GET / HTTP/1.1" 200 5x "-" "-"\n',
        b'192.0.2.7 - - [10/Mar/2025:12:00:00 +0100] "GET / HTTP/1.1',
    )
    stamp_cache: dict[int, bytes] = {}
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(lines):
            if i in bad_at:
                f.write(bad_kinds[i % len(bad_kinds)].rstrip(b"\n") + b"\n")
                continue
            t = times[i]
            st = stamp_cache.get(t)
            if st is None:
                stamp_cache.clear()
                st = stamp_cache[t] = _stamp(t, offset)
            status = statuses[i]
            size = b"-" if status == b"304" or methods[i] == b"HEAD" else b"%d" % sizes[i]
            f.write(
                b'%s - - [%s] "%s %s HTTP/1.1" %s %s "%s" "%s"\n'
                % (
                    chosen_clients[i],
                    st,
                    methods[i],
                    chosen_urls[i],
                    status,
                    size,
                    referers[i],
                    agents[i],
                )
            )
    return len(bad_at)


def ensure(program: str, package: str) -> str:
    """The path of ``program``, installing Debian's ``package`` with apt-get if it is missing."""
    found = shutil.which(program)
    if found:
        return found
    print(f"{program} is missing: apt-get install -y {package}", flush=True)
    install = ["apt-get", "install", "-y", package]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(install, check=True)
    found = shutil.which(program)
    if not found:
        raise SystemExit(f"bench/logstats.py: {program} is still not on PATH after apt-get")
    return found


@dataclass
class Run:
    wall: float
    cpu: float
    max_rss_kib: int


def measure(
    time_program: str, argv: Sequence[str], cwd: str, env: dict[str, str] | None = None
) -> Run:
    """One child, its output discarded: wall seconds, user+system seconds, peak RSS (KiB).

    CPU and RSS come from GNU time, not from our own wait4(): a child's ru_maxrss counts
    the pages it had between fork() and exec(), which are this (large) bench process's.
    """
    with tempfile.NamedTemporaryFile("r", prefix="dlba-time-") as report:
        command = [time_program, "-f", "%U %S %M", "-o", report.name, *argv]
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-500:]
            raise SystemExit(f"{argv[0]} exited with {done.returncode}: {tail}")
        user, system, rss = report.read().split()[-3:]
    return Run(wall, float(user) + float(system), int(rss))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the log")
    parser.add_argument("--runs", type=int, default=3, help="runs of each tool (median)")
    parser.add_argument("--keep", metavar="DIR", help="generate the log into DIR and reuse it")
    args = parser.parse_args(argv)
    goaccess = ensure("goaccess", "goaccess")
    time_program = ensure("/usr/bin/time", "time")
    version = subprocess.run([goaccess, "--version"], capture_output=True, text=True).stdout
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"Python {sys.version.split()[0]}; {version.splitlines()[0].strip()}; "
        f"{os.cpu_count()} CPUs, load average {load}"
    )

    with tempfile.TemporaryDirectory(prefix="dlba-logstats-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        log = where / f"access-{args.lines}-{SEED}.log"
        if not log.exists():
            t = time.perf_counter()
            generate(log.with_suffix(".tmp"), args.lines)
            log.with_suffix(".tmp").rename(log)
            print(f"generated {log} in {time.perf_counter() - t:.1f} s")
        size = log.stat().st_size
        print(f"log: {args.lines:,} lines, {size / 1e6:.0f} MB (seed {SEED})")
        ours = [sys.executable, "-m", "dlba.ctl", "logstats", str(log), "--json"]
        theirs = [goaccess, str(log), "--log-format=COMBINED", "-o", str(Path(tmp) / "out.json")]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        print(f"dlba-ctl: PYTHONPATH={ROOT} python3 " + " ".join(ours[1:]))
        print("goaccess: " + " ".join(theirs))
        runs: dict[str, list[Run]] = {"dlba-ctl logstats": [], "goaccess": []}
        for i in range(args.runs):
            # Alternated, so a neighbour's burst of load slows both alike.
            runs["dlba-ctl logstats"].append(measure(time_program, ours, str(ROOT), env))
            runs["goaccess"].append(measure(time_program, theirs, tmp))
            print(
                f"run {i + 1}: dlba-ctl {runs['dlba-ctl logstats'][-1].wall:.2f} s, "
                f"goaccess {runs['goaccess'][-1].wall:.2f} s",
                flush=True,
            )

    print()
    print("| tool | lines/s (median wall) | lines/s (median CPU) | median wall s | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rates: dict[str, tuple[float, float]] = {}
    for name, rs in runs.items():
        wall = statistics.median(r.wall for r in rs)
        cpu = statistics.median(r.cpu for r in rs)
        rss = max(r.max_rss_kib for r in rs) / 1024
        rates[name] = (args.lines / wall, args.lines / cpu)
        print(
            f"| {name} | {args.lines / wall:,.0f} | {args.lines / cpu:,.0f} | {wall:.2f} "
            f"| {rss:.0f} |"
        )
    ours_rate, theirs_rate = rates["dlba-ctl logstats"], rates["goaccess"]
    ratio, cpu_ratio = ours_rate[0] / theirs_rate[0], ours_rate[1] / theirs_rate[1]
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print()
    print(
        f"ratio dlba-ctl/goaccess: {ratio:.1f}x by wall time, {cpu_ratio:.1f}x by CPU time "
        f"(target >= {TARGET_RATIO:g}x by wall time: {verdict})"
    )
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
