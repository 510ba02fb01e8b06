"""The packet scheduler's forwarding rate against the naive loop (issue 12 §4), as root.

    python3 bench/packetbench.py [--runs 3] [--seconds 5]

Builds its own namespaces (prefix ``dlbapkt-bench-``: a sender, the forwarder and a sink
on one bridge, in a namespace of their own), floods 60-byte TCP frames for the VIP from
256 client ports at the forwarder's MAC with bench/flood.c (sendmmsg, 64 frames a call),
and counts what the sink receives, in alternating runs of: the bridge alone (frames sent
straight to the sink's MAC: the ceiling of this topology), the naive Python loop (one
``recvfrom_into`` and one ``send`` per frame), and dlba's path (``PacketSocketIO`` with
the real ``FrameRouter``: parse, bucket hash, table lookup, rewrite).  Forwarder CPU from
/proc/PID/stat over the measured window.  Prints a Markdown table; removes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TAG = "dlbapkt-bench"
NS = {"bridge": f"{TAG}-br", "sender": f"{TAG}-s", "fwd": f"{TAG}-f", "sink": f"{TAG}-k"}
MAC = {"sender": "02:00:0a:4e:00:02", "fwd": "02:00:0a:4e:00:0b", "sink": "02:00:0a:4e:00:0c"}
IP = {"sender": "10.78.0.2", "fwd": "10.78.0.11", "sink": "10.78.0.12"}
VIP = "10.78.0.100"
SIZE = 60
TICKS = os.sysconf("SC_CLK_TCK")
# One CPU each, so the busy sender never takes the forwarder's time (2 CPUs here).
SENDER_CPU, FWD_CPU = "0", "1"
DASH = "\u2013"
TIMES = "\u00d7"
MODES = {
    "bridge": "bridge alone (ceiling)",
    "nft": "nftables netdev ingress (jhash vmap, MACs set, fwd)",
    "naive": "naive Python loop",
    "dlba-recv": "dlba PacketSocketIO, recv_into, one send a frame",
    "dlba-send": "dlba PacketSocketIO, receive ring, one send a frame",
    "dlba": "dlba PacketSocketIO, receive + transmit rings (the default)",
    "dlba-bypass": "dlba, both rings, PACKET_QDISC_BYPASS",
    "dlba-send-bypass": "dlba, receive ring, one send a frame, PACKET_QDISC_BYPASS",
    "dlba-kernel": "dlba, fast_path = nftables (the kernel forwards, Python only misses)",
}


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and done.returncode:
        raise SystemExit(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def topology() -> None:
    down()
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
    sh("ip", "-n", NS["bridge"], "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", NS["bridge"], "link", "set", "br0", "up")
    for key in ("sender", "fwd", "sink"):
        ns, port = NS[key], f"p{key}"
        sh(
            "ip",
            "-n",
            NS["bridge"],
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", NS["bridge"], "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", MAC[key])
        sh("ip", "-n", ns, "addr", "add", f"{IP[key]}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def down() -> None:
    for ns in NS.values():
        sh("ip", "netns", "del", ns, check=False)


def frames(path: Path, dst: str) -> None:
    from scapy.layers.inet import IP as IPv4
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    out = b""
    for i in range(256):
        f = bytes(
            Ether(dst=dst, src=MAC["sender"])
            / IPv4(src=IP["sender"], dst=VIP)
            / TCP(sport=20000 + i, dport=443, flags="A")
        )
        out += f.ljust(SIZE, b"\0")
    path.write_bytes(out)


def rx(ns: str) -> int:
    doc = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "eth0"))
    return int(doc[0]["stats64"]["rx"]["packets"])


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every CPU, softirq included): the kernel
    paths' work runs as softirq on whichever CPU received the frame, charged to no one."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


NFT_TABLE = "dlbabench"
NFT_BUCKETS = 4093  # as many as the forwarder's client table


def nft_ruleset() -> str:
    """The same MAC rewrite in the kernel: a netdev ingress rule on the forwarder's port,
    the (client IP, client port) hash picking a node's chain from a verdict map of every
    bucket (one live node here: the sink), which sets both MACs and sends it back out."""
    buckets = ", ".join(f"{b} : jump node2" for b in range(NFT_BUCKETS))
    pick = f"jhash ip saddr . tcp sport mod {NFT_BUCKETS} vmap {{ {buckets} }}"
    return f"""
table netdev {NFT_TABLE} {{
    chain node2 {{
        ether saddr set {MAC["fwd"]} ether daddr set {MAC["sink"]} fwd to "eth0"
    }}
    chain ingress {{
        type filter hook ingress device "eth0" priority 0; policy accept;
        ip daddr {VIP} ip protocol tcp {pick}
    }}
}}
"""


def one(mode: str, flood: Path, tmp: Path, seconds: float) -> dict[str, Any]:
    dst = MAC["sink"] if mode == "bridge" else MAC["fwd"]
    data = tmp / f"frames-{mode}.bin"
    frames(data, dst)
    proc = None
    if mode == "nft":
        rules = tmp / "nft.rules"
        rules.write_text(nft_ruleset())
        sh("ip", "netns", "exec", NS["fwd"], "nft", "-f", str(rules))
    elif mode != "bridge":
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, str(HERE / "packet_forwarder.py"), mode, "eth0", VIP, MAC["sink"]]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NS["fwd"], "taskset", "-c", FWD_CPU, *argv],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        ready = threading.Event()
        out = proc.stdout

        def wait_ready() -> None:
            out.readline()
            ready.set()

        threading.Thread(target=wait_ready, daemon=True).start()
        if not ready.wait(20):
            proc.kill()
            raise SystemExit(f"{mode}: the forwarder never said ready")
    warm = 1.0
    sender = subprocess.Popen(
        ["ip", "netns", "exec", NS["sender"], "taskset", "-c", SENDER_CPU, str(flood),
         "eth0", str(data), str(SIZE), str(warm + seconds + 0.5)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(warm)  # a measurement window, not a synchronisation
    r0, c0, t0 = rx(NS["sink"]), cpu(proc.pid) if proc else 0.0, time.monotonic()
    m0 = machine_busy()
    time.sleep(seconds)
    m1 = machine_busy()
    r1, c1, t1 = rx(NS["sink"]), cpu(proc.pid) if proc else 0.0, time.monotonic()
    sent = int((sender.communicate(timeout=30)[0] or "0").strip() or 0)
    if mode == "nft":
        sh("ip", "netns", "exec", NS["fwd"], "nft", "delete", "table", "netdev", NFT_TABLE)
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    forwarded = r1 - r0
    return {
        "mode": mode,
        "fps": forwarded / (t1 - t0),
        "cpu_us": (c1 - c0) / forwarded * 1e6 if forwarded and proc else None,
        "cpu_use": (c1 - c0) / (t1 - t0) if proc else None,
        "sent_fps": sent / (warm + seconds + 0.5),
        # Sender, bridge, forwarder and sink together, per frame that reached the sink.
        "machine_us": (m1 - m0) / forwarded * 1e6 if forwarded else None,
        "load": os.getloadavg()[0],  # the machine's, at the end of the window
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, run in this order each run (default: {','.join(MODES)})",
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="print the tables again from the JSON lines a run wrote to stderr",
    )
    args = parser.parse_args()
    if args.report:
        results: dict[str, list[dict[str, Any]]] = {}
        for line in Path(args.report).read_text().splitlines():
            if line.startswith("{"):
                got = json.loads(line)
                results.setdefault(got["mode"], []).append(got)
        report(results)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}: {', '.join(MODES)}")
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tmp = Path(tempfile.mkdtemp(prefix="dlbapkt-bench-"))
    flood = tmp / "flood"
    sh("cc", "-O2", "-o", str(flood), str(HERE / "flood.c"))
    results = {}
    try:
        topology()
        for _ in range(args.runs):
            for mode in modes:
                got = one(mode, flood, tmp, args.seconds)
                results.setdefault(mode, []).append(got)
                print(json.dumps(got), file=sys.stderr, flush=True)
    finally:
        down()
    report(results)
    return 0


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    print(
        "| path | frames/s forwarded (median) | CPU µs/frame | forwarder CPU use "
        "| sender frames/s | runs (frames/s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for mode, runs in results.items():
        fps = statistics.median(r["fps"] for r in runs)
        us = [r["cpu_us"] for r in runs if r["cpu_us"] is not None]
        use = [r["cpu_use"] for r in runs if r["cpu_use"] is not None]
        if us:
            cells = f"{statistics.median(us):.1f} | {statistics.median(use):.0%}"
        else:
            cells = f"{DASH} | {DASH}"
        print(f"| {MODES[mode]} | {fps:,.0f} | {cells} | ", end="")
        each = ", ".join(f"{r['fps']:,.0f}" for r in runs)
        print(f"{statistics.median(r['sent_fps'] for r in runs):,.0f} | {each} |")
    loads = [r["load"] for runs in results.values() for r in runs]
    if loads:
        print(f"\nload average (1 min) at the end of each window: {min(loads):.2f}{DASH}", end="")
        print(f"{max(loads):.2f}, median {statistics.median(loads):.2f}")
    machine = {
        mode: statistics.median(r["machine_us"] for r in runs)
        for mode, runs in results.items()
        if runs and all(r.get("machine_us") for r in runs)
    }
    if machine:
        print("\n| path | machine CPU µs a frame forwarded (all CPUs, median) | over the bridge |")
        print("| --- | ---: | ---: |")
        for mode, us in machine.items():
            over = f"{us - machine['bridge']:+.1f}" if "bridge" in machine else DASH
            print(f"| {MODES[mode]} | {us:.1f} | {over} |")
    if "dlba-kernel" in results:
        kernel = results["dlba-kernel"]
        print("\n| dlba's kernel path against | frames/s, medians | frames/s, run by run |")
        print("| --- | ---: | ---: |")
        for other in ("nft", "dlba", "naive", "bridge"):
            if other not in results or len(results[other]) != len(kernel):
                continue
            ratio = statistics.median(r["fps"] for r in kernel) / statistics.median(
                r["fps"] for r in results[other]
            )
            paired = statistics.median(
                k["fps"] / o["fps"] for k, o in zip(kernel, results[other], strict=True)
            )
            print(f"| {MODES[other]} | {ratio:.2f}{TIMES} | {paired:.2f}{TIMES} |")
    if "naive" in results:
        naive = results["naive"]
        naive_fps = statistics.median(r["fps"] for r in naive)
        print("\n| against the naive loop | frames/s, medians | frames/s, run by run (median) "
              "| CPU µs/frame, naive ÷ this |")  # fmt: skip
        print("| --- | ---: | ---: | ---: |")
        naive_us = statistics.median(r["cpu_us"] for r in naive if r["cpu_us"] is not None)
        for mode, runs in results.items():
            if mode == "naive":
                continue
            ratio = statistics.median(r["fps"] for r in runs) / naive_fps
            pairs = zip(runs, naive, strict=True)
            paired = statistics.median(r["fps"] / n["fps"] for r, n in pairs)
            us = [r["cpu_us"] for r in runs if r["cpu_us"] is not None]
            cpu = f"{naive_us / statistics.median(us):.2f}{TIMES}" if us else DASH
            print(f"| {MODES[mode]} | {ratio:.2f}{TIMES} | {paired:.2f}{TIMES} | {cpu} |")


if __name__ == "__main__":
    sys.exit(main())
