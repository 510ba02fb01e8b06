"""The ARP frames for the VIP, packed by hand: the same bytes scapy builds, and the
``who-has`` requests that get no answer."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from dlba.arpframes import announcement, arp_reply

VIP = "10.77.0.100"
MAC = "02:00:0a:4d:00:0c"
CLIENT_MAC = "02:00:0a:4d:00:02"
CLIENT_IP = "10.77.0.2"


def request(target: str = VIP, op: int = 1, vlan: bool = False) -> bytes:
    """A ``who-has target tell CLIENT_IP`` from the client, broadcast."""
    client = bytes.fromhex(CLIENT_MAC.replace(":", ""))
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        op,
        client,
        bytes(int(o) for o in CLIENT_IP.split(".")),
        b"\0" * 6,
        bytes(int(o) for o in target.split(".")),
    )
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return b"\xff" * 6 + client + tag + b"\x08\x06" + arp + b"\0" * 18  # padded to 60


class ArpFrameTests(SynchronousTestCase):
    def test_announcement(self) -> None:
        frame = announcement(VIP, MAC)
        self.assertEqual(len(frame), 42)
        self.assertEqual(frame[:6], b"\xff" * 6)  # broadcast
        self.assertEqual(frame[6:12].hex(":"), MAC)
        self.assertEqual(frame[12:14], b"\x08\x06")
        self.assertEqual(frame[20:22], b"\x00\x01")  # a request
        self.assertEqual(frame[22:28].hex(":"), MAC)
        self.assertEqual(frame[28:32], bytes([10, 77, 0, 100]))  # sender: the VIP
        self.assertEqual(frame[32:38], b"\0" * 6)
        self.assertEqual(frame[38:42], bytes([10, 77, 0, 100]))  # target: the VIP

    def test_reply(self) -> None:
        answer = arp_reply(request(), VIP, MAC)
        assert answer is not None
        self.assertEqual(answer[:6].hex(":"), CLIENT_MAC)
        self.assertEqual(answer[6:12].hex(":"), MAC)
        self.assertEqual(answer[20:22], b"\x00\x02")  # is-at
        self.assertEqual(answer[22:28].hex(":"), MAC)
        self.assertEqual(answer[28:32], bytes([10, 77, 0, 100]))
        self.assertEqual(answer[32:38].hex(":"), CLIENT_MAC)
        self.assertEqual(answer[38:42], bytes([10, 77, 0, 2]))

    def test_tagged_request_gets_the_same_untagged_reply(self) -> None:
        self.assertEqual(arp_reply(request(vlan=True), VIP, MAC), arp_reply(request(), VIP, MAC))

    def test_no_answer(self) -> None:
        for frame in [
            request(target="10.77.0.99"),  # another address
            request(op=2),  # a reply, not a question
            request()[:30],  # cut short
            b"",
            request()[:12] + b"\x08\x00" + request()[14:],  # IPv4, not ARP
            request()[:14] + b"\x00\x06" + request()[16:],  # not Ethernet hardware
        ]:
            self.assertIsNone(arp_reply(frame, VIP, MAC), frame.hex())

    def test_the_bytes_scapy_builds(self) -> None:
        try:
            from scapy.layers.l2 import ARP, Ether
        except ImportError:
            self.skipTest("scapy is not installed")
        garp = Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC) / ARP(
            op=1, hwsrc=MAC, psrc=VIP, hwdst="00:00:00:00:00:00", pdst=VIP
        )
        self.assertEqual(announcement(VIP, MAC), bytes(garp))
        reply = Ether(dst=CLIENT_MAC, src=MAC) / ARP(
            op=2, hwsrc=MAC, psrc=VIP, hwdst=CLIENT_MAC, pdst=CLIENT_IP
        )
        self.assertEqual(arp_reply(request(), VIP, MAC), bytes(reply))
        # And scapy reads the question the same way.
        self.assertEqual(Ether(request())[ARP].pdst, VIP)
