"""Classic BPF programs for the packet sockets, assembled by hand (``tcpdump -dd`` shows
the same shapes), and how to attach one.

The kernel runs the filter before a frame is queued to the socket, so Python never wakes
for traffic that is not for the VIP: on a busy segment that is most of it.
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["NOTHING", "arp_request_filter", "attach", "vip_filter"]

SO_ATTACH_FILTER = 26
# The ancillary "load" offsets (linux/filter.h): SKF_AD_OFF + SKF_AD_PKTTYPE.
_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF
PACKET_HOST = 0  # to this host's MAC: not broadcast, not another host's, not our own sends

# Opcodes: BPF_LD|BPF_H|BPF_ABS, BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
_LDH, _LDW, _JEQ, _RET = 0x28, 0x20, 0x15, 0x06
# Everything the interface can carry: a forwarded frame must never be cut.
_WHOLE = 0x40000

Program = list[tuple[int, int, int, int]]


# "ret #0": a socket that only sends (bound with protocol 0 it gets nothing anyway).
NOTHING: Program = [(0x06, 0, 0, 0)]


def vip_filter(vip: str, *, any_host: bool = False) -> Program:
    """IPv4 to ``vip``, sent to this host's MAC (``ip dst VIP`` plus a packet-type check,
    which keeps out our own sends and frames flooded for other hosts).  ``any_host``: no
    packet-type check, for the fast path's miss channel, whose frames still carry the
    interface's MAC (so the channel's own stack drops them as for another host)."""
    (address,) = struct.unpack("!I", socket.inet_aton(vip))
    if any_host:
        return [
            (_LDH, 0, 0, 12),
            (_JEQ, 0, 3, 0x0800),
            (_LDW, 0, 0, 30),
            (_JEQ, 0, 1, address),
            (_RET, 0, 0, _WHOLE),
            (_RET, 0, 0, 0),
        ]
    return [
        (_LDH, 0, 0, 12),  # ethertype
        (_JEQ, 0, 5, 0x0800),
        (_LDW, 0, 0, 30),  # IPv4 destination (no VLAN tag: the kernel strips it first)
        (_JEQ, 0, 3, address),
        (_LDW, 0, 0, _PKTTYPE),
        (_JEQ, 0, 1, PACKET_HOST),
        (_RET, 0, 0, _WHOLE),
        (_RET, 0, 0, 0),
    ]


def arp_request_filter(vip: str) -> Program:
    """ARP who-has ``vip`` (``arp and arp[6:2] = 1 and arp[24:4] = VIP``)."""
    (address,) = struct.unpack("!I", socket.inet_aton(vip))
    return [
        (_LDH, 0, 0, 12),
        (_JEQ, 0, 5, 0x0806),
        (_LDH, 0, 0, 20),  # operation
        (_JEQ, 0, 3, 1),
        (_LDW, 0, 0, 38),  # target protocol address
        (_JEQ, 0, 1, address),
        (_RET, 0, 0, _WHOLE),
        (_RET, 0, 0, 0),
    ]


def attach(sock: socket.socket, program: Program) -> None:
    """SO_ATTACH_FILTER: ``struct sock_fprog {u16 len; struct sock_filter *filter}``."""
    code = b"".join(struct.pack("HBBI", op, jt, jf, k) for op, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    # The kernel copies the program during the call: the buffer may go after it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
