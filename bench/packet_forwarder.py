"""The forwarder under test in bench/packetbench.py, run in the forwarder's namespace.

    python3 bench/packet_forwarder.py MODE IFACE VIP SINK_MAC

MODE naive: the baseline of issue 12 §4, one ``recvfrom_into`` and one ``send`` per frame on a
blocking socket with the same BPF filter, both MACs rewritten, no decision.  dlba: the
real path, ``PacketSocketIO`` (the receive ring read in the reactor, virtio-net header, tap,
forwards through the transmit ring, one ``send`` a batch; dlba-send: one ``send`` a
forwarded frame instead of the transmit ring; dlba-bypass: the transmit ring with
PACKET_QDISC_BYPASS; dlba-send-bypass: one ``send`` a frame with PACKET_QDISC_BYPASS;
dlba-recv: one ``recv_into`` and one ``send`` a frame, no ring) with a
``FrameRouter`` over a ``ClientTable`` whose only live node is the sink, behind the
scheduler's ingress rule as the service installs it.  Prints "ready",
then runs until SIGTERM and prints the frames it handled as JSON.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


def naive(interface: str, vip: str, sink_mac: str) -> None:
    from dlba.frames import mac_bytes
    from dlba.packet.bpf import vip_filter
    from dlba.packet.rawio import packet_socket

    sock = packet_socket(interface, vip_filter(vip))
    sock.setblocking(True)
    own = mac_bytes(open(f"/sys/class/net/{interface}/address").read().strip())
    dst = mac_bytes(sink_mac)
    buffer = bytearray(2048)
    view = memoryview(buffer)
    count = 0

    def stop(*_: Any) -> None:
        print(json.dumps({"frames": count}), flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        n, _ = sock.recvfrom_into(buffer)
        buffer[0:6] = dst
        buffer[6:12] = own
        sock.send(view[:n])
        count += 1


def dlba(
    interface: str,
    vip: str,
    sink_mac: str,
    ring: bool = True,
    tx_ring: bool = True,
    qdisc_bypass: bool = False,
) -> None:
    from twisted.internet import reactor

    from dlba.clienttable import ClientTable
    from dlba.frames import FrameRouter
    from dlba.packet.host import Host
    from dlba.packet.rawio import PacketSocketIO
    from dlba.tables import NodeState, NodeStatusTable

    r: Any = reactor
    host = Host()
    own = host.mac_of(interface)
    nodes = NodeStatusTable(
        [NodeState(1, own, "10.78.0.11", enabled=False), NodeState(2, sink_mac, "10.78.0.12")]
    )
    table = ClientTable(4093, nodes, idle_timeout=300.0)
    router = FrameRouter(table, vip, 1, own, {1: own, 2: sink_mac})
    io = PacketSocketIO(
        interface, vip, r, host, ring=ring, tx_ring=tx_ring, qdisc_bypass=qdisc_bypass
    )
    # As PacketSchedulerService.start does: the VIP goes on the tap, so without the
    # scheduler's ingress rule this namespace's kernel would answer every flood frame with
    # a reset (work on the sender's CPU the real scheduler never does).
    host.install_scheduler_rule(vip, interface, [own, sink_mac])
    io.start(router)

    def stop() -> None:
        c = router.counters
        print(json.dumps({"frames": c.frames_in, **c.row()}), flush=True)
        io.stop()
        host.remove_scheduler_rule()
        r.stop()

    signal.signal(signal.SIGTERM, lambda *_: r.callFromThread(stop))
    r.callWhenRunning(print, "ready", flush=True)
    r.run(installSignalHandlers=False)


def kernel(interface: str, vip: str, sink_mac: str) -> None:
    """dlba-kernel: the kernel fast path as the service runs it (issue 13): KernelFastPath
    installs the program, Python reads only the miss channel.  The flood's 256 buckets
    miss once each (placed on the sink, then forwarded by the kernel)."""
    from twisted.internet import reactor

    from dlba.clienttable import ClientTable
    from dlba.frames import FrameRouter
    from dlba.kernelpath import MISS_OUT, KernelProgram
    from dlba.packet.fastpath import KernelFastPath
    from dlba.packet.host import Host
    from dlba.packet.nft import Nft
    from dlba.packet.rawio import PacketSocketIO
    from dlba.tables import NodeState, NodeStatusTable

    r: Any = reactor
    host = Host()
    own = host.mac_of(interface)
    nodes = NodeStatusTable(
        [NodeState(1, own, "10.78.0.11", enabled=False), NodeState(2, sink_mac, "10.78.0.12")]
    )
    table = ClientTable(4093, nodes, idle_timeout=300.0)
    router = FrameRouter(table, vip, 1, own, {1: own, 2: sink_mac})
    program = KernelProgram(vip, interface, own, 1, {1: own, 2: sink_mac}, 4093, 300.0)
    fast = KernelFastPath(program, table, Nft(), host, r)
    fast.start()
    io = PacketSocketIO(interface, vip, r, host, read_interface=MISS_OUT, after_read=fast.poke)
    io.start(router)

    def stop() -> None:
        c = router.counters
        fast.sync()
        print(json.dumps({"frames": c.frames_in, **c.row(), **fast.row()}), flush=True)
        io.stop()
        fast.stop()
        r.stop()

    signal.signal(signal.SIGTERM, lambda *_: r.callFromThread(stop))
    r.callWhenRunning(print, "ready", flush=True)
    r.run(installSignalHandlers=False)


if __name__ == "__main__":
    mode, interface, vip, sink = sys.argv[1:5]
    modes: dict[str, Any] = {
        "naive": naive,
        "dlba": dlba,
        "dlba-recv": lambda *a: dlba(*a, ring=False),
        "dlba-send": lambda *a: dlba(*a, tx_ring=False),
        "dlba-bypass": lambda *a: dlba(*a, qdisc_bypass=True),
        "dlba-send-bypass": lambda *a: dlba(*a, tx_ring=False, qdisc_bypass=True),
        "dlba-kernel": kernel,
    }
    modes[mode](interface, vip, sink)
