#!/usr/bin/env python3
"""The proxy's own per-request cost, without sockets: an A/B tool for hot-path changes.

    python3 bench/hotpath.py                       # this tree: µs of CPU per request
    python3 bench/hotpath.py --base 8c0c0b2        # this tree against that commit
    python3 bench/hotpath.py --base 8c0c0b2 --instructions
                                                   # the same in instructions (callgrind)

One client connection and one pooled back-end connection, both Twisted StringTransports
on a memory reactor (tests/proxy_harness.py of the tree measured): each request is fed to
the front protocol, the head it forwards is read off the back-end transport, a 100-byte
answer is fed back and read off the client transport.  What it measures is everything dlba's
own Python code and httptools do per request (parse, checks, routing, scheduling, the
forwarded head, the answer's head, the exchange's bookkeeping) and nothing of the kernel,
the reactor's polling or TLS: the part a refactor of the glue can make dearer.

Timing: process CPU time over ``--requests`` requests, the minimum of ``--repeat`` runs in
fresh processes, the trees alternating so drift hits both.  ``--instructions``: Valgrind's
callgrind counts the instructions of two runs of different lengths; their difference divided
by the difference in requests is instructions per request, startup excluded, and the same
every time on the same machine (CPU time on a shared machine is not).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

REQUEST = b"GET /100 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: hotpath\r\nAccept: */*\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 09:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Connection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 100
)


def drive(requests: int) -> float:
    """Run ``requests`` keep-alive requests through the proxy; CPU seconds they took."""
    from tests.proxy_harness import ProxyHarness

    h = ProxyHarness(backends=1, keepalive=True)
    proto, client = h.client()
    proto.dataReceived(REQUEST)  # the first request opens the back-end connection
    conn, upstream, _port = h.accept_backend()

    def one() -> None:
        sent = upstream.value()
        if not sent.endswith(b"\r\n\r\n"):
            raise SystemExit(f"the back end did not get a whole head: {sent[:200]!r}")
        upstream.clear()
        conn.dataReceived(ANSWER)
        got = client.value()
        if not got.startswith(b"HTTP/1.1 200 ") or not got.endswith(b"x" * 100):
            raise SystemExit(f"the client did not get the answer: {got[:200]!r}")
        client.clear()

    one()
    start = time.process_time()
    for _ in range(requests):
        proto.dataReceived(REQUEST)
        one()
    return time.process_time() - start


def tree_of(rev: str, scratch: Path) -> Path:
    out = scratch / rev
    if not out.exists():
        out.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def child(tree: Path, requests: int, *, callgrind: Path | None = None) -> float:
    """CPU µs per request in a fresh interpreter on ``tree`` (or, with ``callgrind``, the
    instruction count of the whole run, written by valgrind)."""
    cmd = [sys.executable, str(HERE / "hotpath.py"), "--child", str(requests)]
    if callgrind is not None:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={callgrind}",
            "--dump-instr=no",
            *cmd,
        ]
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"hotpath on {tree} failed:\n{proc.stderr[-2000:]}")
    if callgrind is not None:
        return float(_instructions(callgrind))
    return float(proc.stdout.strip()) / requests * 1e6


def _instructions(path: Path) -> int:
    m = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
    if not m:
        raise SystemExit(f"no instruction total in {path}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", help="a git revision to compare this tree with")
    ap.add_argument("--rev", help="measure this revision instead of the work tree")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--instructions", action="store_true", help="count with callgrind")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(drive(args.child))
        return 0
    if args.instructions and not shutil.which("valgrind"):
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="dlba-hotpath.") as tmp:
        scratch = Path(tmp)
        trees = {args.rev or "work tree": tree_of(args.rev, scratch) if args.rev else REPO}
        if args.base:
            trees[args.base] = tree_of(args.base, scratch)
        results: dict[str, list[float]] = {name: [] for name in trees}
        if args.instructions:
            small, large = 200, 200 + max(200, args.requests // 10)
            for name, tree in trees.items():
                a = child(tree, small, callgrind=scratch / "a.out")
                b = child(tree, large, callgrind=scratch / "b.out")
                results[name].append((b - a) / (large - small))
            unit, fmt = "instructions/request", ",.0f"
        else:
            for _ in range(args.repeat):
                for name, tree in trees.items():
                    results[name].append(child(tree, args.requests))
            unit, fmt = "µs CPU/request (min of runs)", ".2f"
        print(f"{unit}, {args.requests} keep-alive requests through memory transports")
        figures = {}
        for name, xs in results.items():
            figures[name] = min(xs)
            spread = ", ".join(format(x, fmt) for x in xs)
            extra = (
                f"  (runs: {spread}; median {statistics.median(xs):{fmt}})" if len(xs) > 1 else ""
            )
            print(f"  {name:12s} {figures[name]:{fmt}}{extra}")
        if args.base:
            first = next(iter(figures))
            print(f"  ratio {first} / {args.base}: {figures[first] / figures[args.base]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
