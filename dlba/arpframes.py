"""ARP frames for the VIP (DESIGN.md §1 step 1, §7): the gratuitous announcement a new
scheduler sends and its ``is-at`` answer to a ``who-has VIP``.  Pure: bytes in, bytes out,
packed at fixed offsets (``dlba.packet.arp`` sends them).

They used to be built with scapy, imported on first use: the first takeover of a node's
process paid scapy's import (0.5 to 0.7 s on the lab machine, more under load) between
winning the election and its first announcement, so a client's traffic went to the lost
scheduler that much longer.
"""

from __future__ import annotations

import socket
import struct

from dlba.frames import mac_bytes

__all__ = ["ETH_P_ARP", "announcement", "arp_reply"]

ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800
_ETH_P_8021Q = 0x8100
_BROADCAST = b"\xff" * 6
_ZERO_MAC = b"\x00" * 6
# htype (Ethernet), ptype (IPv4), hlen, plen, op; then sender MAC, IP, target MAC, IP.
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_REQUEST = 1
_REPLY = 2


def _frame(
    dst: bytes, src: bytes, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes
) -> bytes:
    return (
        dst
        + src
        + struct.pack("!H", ETH_P_ARP)
        + _ARP.pack(1, _ETH_P_IP, 6, 4, op, sha, spa, tha, tpa)
    )


def announcement(vip: str, mac: str) -> bytes:
    """A gratuitous ARP request (sender = target = VIP), broadcast: what Linux and most
    switches take to update an existing entry."""
    own = mac_bytes(mac)
    ip = socket.inet_aton(vip)
    return _frame(_BROADCAST, own, _REQUEST, own, ip, _ZERO_MAC, ip)


def arp_reply(request: bytes, vip: str, mac: str) -> bytes | None:
    """The ``is-at`` answer to ``request`` if it is an Ethernet/IPv4 ``who-has vip`` (one
    802.1Q tag allowed; the answer is untagged), else None."""
    at = 12
    (ethertype,) = struct.unpack_from("!H", request, at) if len(request) >= 14 else (None,)
    if ethertype == _ETH_P_8021Q:
        at += 4
        if len(request) < at + 2:
            return None
        (ethertype,) = struct.unpack_from("!H", request, at)
    if ethertype != ETH_P_ARP or len(request) < at + 2 + _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _, tpa = _ARP.unpack_from(request, at + 2)
    if (htype, ptype, hlen, plen, op) != (1, _ETH_P_IP, 6, 4, _REQUEST):
        return None
    ip = socket.inet_aton(vip)
    if tpa != ip:
        return None
    own = mac_bytes(mac)
    return _frame(request[6:12], own, _REPLY, own, ip, sha, spa)
