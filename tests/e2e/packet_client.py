"""The client side of tests/e2e/test_packet_netns.py, run inside the client namespace.

connect VIP PORT SPORT...     one TCP connection from each source port; prints
                              {"sport": "what the server said" | "error: ..."}
stray-ack MAC IP PORT         an ACK of no connection, to IP:PORT through MAC;
                              prints {"rst": resets seen within 1.5 s}
junk VIP PORT                 UDP datagrams and TCP fragments to the VIP
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

CLIENT = "10.77.0.2"


def connect(vip: str, port: int, sports: list[int]) -> None:
    out = {}
    for sport in sports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(3.0)
        try:
            s.bind((CLIENT, sport))
            s.connect((vip, port))
            data = b""
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
            out[str(sport)] = data.decode().strip()
        except OSError as e:
            out[str(sport)] = f"error: {e}"
        finally:
            s.close()
    print(json.dumps(out))


def stray_ack(mac: str, ip: str, port: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import AsyncSniffer, sendp

    sport = 45678
    ready = threading.Event()
    sniffer = AsyncSniffer(
        iface="eth0",
        filter=f"tcp and src host {ip} and src port {port} and dst port {sport}",
        store=True,
        started_callback=ready.set,
    )
    sniffer.start()
    if not ready.wait(10):
        raise SystemExit("the sniffer did not start")
    frame = (
        Ether(dst=mac)
        / IP(src=CLIENT, dst=ip)
        / TCP(sport=sport, dport=port, flags="A", seq=1000, ack=2000)
    )
    sendp(frame, iface="eth0", verbose=False)
    time.sleep(1.5)  # the window a reset would come in (an absence has no event to wait for)
    got: Any = sniffer.stop() or []
    print(json.dumps({"rst": sum(1 for p in got if p[TCP].flags & 0x04)}))


def junk(vip: str, port: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.sendrecv import send

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        u.sendto(b"not tcp", (vip, 9999))
    u.close()
    for offset, flags in ((0, "MF"), (3, 0)):
        send(
            IP(src=CLIENT, dst=vip, flags=flags, frag=offset, id=77)
            / TCP(sport=5555, dport=port)
            / (b"x" * 16),
            verbose=False,
        )
    print(json.dumps({"sent": 5}))


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "connect":
        connect(rest[0], int(rest[1]), [int(p) for p in rest[2:]])
    elif command == "stray-ack":
        stray_ack(rest[0], rest[1], int(rest[2]))
    elif command == "junk":
        junk(rest[0], int(rest[1]))
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
