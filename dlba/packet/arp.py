"""ARP for the VIP on a packet socket (the frames come from ``dlba.arpframes``).

While this node is scheduler it answers ``who-has VIP`` with its own MAC, and on taking
over it announces the VIP with gratuitous ARP a few times, spaced, so that a peer or a
switch that missed one learns from the next.  Every other node has ``arp_ignore=1`` and
the VIP on loopback, so only the scheduler ever answers.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dlba.arpframes import ETH_P_ARP, announcement, arp_reply
from dlba.packet.bpf import arp_request_filter
from dlba.packet.rawio import packet_socket

__all__ = ["ANNOUNCE_DELAYS", "ArpSpeaker", "announcement", "arp_reply"]

log = Logger(namespace="dlba.packet.arp")

# Seconds after the takeover: at once, then spaced out.  Linux ignores a neighbour update
# within locktime (1 s by default) of the last, so the later ones matter too.
ANNOUNCE_DELAYS = (0.0, 0.1, 0.3, 1.0, 2.0)


@implementer(IReadDescriptor)
class ArpSpeaker:
    """Answers ARP for the VIP and sends the announcements, on one packet socket."""

    def __init__(self, interface: str, vip: str, mac: str, reactor: Any) -> None:
        self.interface = interface
        self.vip = vip
        self.mac = mac
        self.reactor = reactor
        self.sock: socket.socket | None = None
        self.answered = 0
        self.announced = 0
        self._later: list[IDelayedCall] = []

    def start(self) -> None:
        if self.sock is not None:
            return
        self.sock = packet_socket(self.interface, arp_request_filter(self.vip), ETH_P_ARP)
        self.reactor.addReader(self)
        garp = announcement(self.vip, self.mac)
        self._later = [self.reactor.callLater(d, self._announce, garp) for d in ANNOUNCE_DELAYS]

    def stop(self) -> None:
        for call in self._later:
            if call.active():
                call.cancel()
        self._later = []
        if self.sock is not None:
            self.reactor.removeReader(self)
            self.sock.close()
            self.sock = None

    def _announce(self, garp: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(garp)
            self.announced += 1
        except OSError as e:
            log.warn("gratuitous ARP for {vip} not sent: {why}", vip=self.vip, why=str(e))

    # -- IReadDescriptor ------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "dlba.packet.arp"

    def doRead(self) -> None:
        for _ in range(16):
            if self.sock is None:
                return
            try:
                request = self.sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                return  # the link is down
            try:
                answer = arp_reply(request, self.vip, self.mac)
            except Exception:
                log.failure("cannot read an ARP frame")
                continue
            if answer is None:
                continue
            try:
                self.sock.send(answer)
                self.answered += 1
            except OSError as e:
                log.warn("ARP answer not sent: {why}", why=str(e))

    def connectionLost(self, reason: Failure) -> None:
        pass
