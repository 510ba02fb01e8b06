"""Records the TCP frames for a VIP that reach an interface: ``python -m tests.e2e.frame_sink
IFACE VIP``.  Prints "ready" once bound; on SIGTERM drains what is queued and prints one JSON
line: [[source ip, source port, source MAC, destination MAC], ...]."""

from __future__ import annotations

import json
import select
import signal
import socket
import sys

ETH_P_ALL = 0x0003


def main() -> int:
    iface, vip = sys.argv[1], socket.inet_aton(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    seen: list[list[object]] = []
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([s], [], [], 0.05)
        if not ready:
            if stop[0]:
                break
            continue
        frame, (_, _, kind, _, _) = s.recvfrom(2048)
        if kind == socket.PACKET_OUTGOING or len(frame) < 38 or frame[12:14] != b"\x08\x00":
            continue
        if frame[30:34] != vip or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        port = int.from_bytes(frame[14 + ihl : 16 + ihl], "big")
        seen.append(
            [socket.inet_ntoa(frame[26:30]), port, frame[6:12].hex(":"), frame[0:6].hex(":")]
        )
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
