"""Frame I/O on an AF_PACKET socket and a tap device: the ``IFrameIO`` the packet
scheduler uses when the kernel does not forward for it.

- The packet socket is bound to ``[array].interface`` with ``ETH_P_ALL``: such taps see a
  frame before the netdev ingress hook, so the scheduler's own ingress rule (which keeps
  its kernel off other nodes' connections) does not hide the frames from us.  A socket
  bound to ``ETH_P_IP`` would be served after that hook, and see nothing.
- A classic BPF filter keeps out everything but IPv4 to the VIP sent to this host's MAC
  (our own sends too: PACKET_IGNORE_OUTGOING where the kernel has it, Linux 4.20+, and the
  filter's packet-type check everywhere).
- Each ``doRead`` drains up to ``batch`` frames into one preallocated buffer, one clock
  read a batch; a forwarded frame goes out with one ``send`` of a view of that buffer.
- Frames for this node's own buckets are written to a tap (``dlba0``), which the kernel
  takes as ingress: the proxy listening on the VIP gets them as from the wire, and its
  replies leave by routing, from the VIP, straight to the client.
- Both carry a virtio-net header before each frame (PACKET_VNET_HDR, IFF_VNET_HDR): a
  frame from a local sender (a veth peer, a VM) may still have its TCP checksum to be
  filled in by the hardware, and a GRO-merged frame may be larger than the link.  Read
  bare and re-sent bare, the first arrives with a wrong checksum and is dropped (seen in
  the netns test: every connection timed out), the second does not fit; with the header
  handed back on send the kernel completes the checksum and segments, as it would when
  bridging.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dlba.frames import DROP, FORWARD, LOCAL, FrameRouter, mac_bytes
from dlba.interfaces import IFrameIO
from dlba.packet.bpf import Program, attach, vip_filter
from dlba.packet.host import Host

__all__ = ["PacketSocketIO", "open_tap", "packet_socket"]

log = Logger(namespace="dlba.packet.rawio")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_VNET_HDR = 15
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR = 10  # sizeof(struct virtio_net_hdr): the tap's default header size too
# Big enough for any frame the interface hands up (jumbo frames; GRO is a note in README).
FRAME_BUFFER = 65536 + 64
RECEIVE_BUFFER = 4 << 20  # room for a burst between two reactor turns


def packet_socket(
    interface: str, program: Program, protocol: int = ETH_P_ALL, *, vnet_header: bool = False
) -> socket.socket:
    """A non-blocking AF_PACKET socket on ``interface`` with ``program`` attached (and a
    virtio-net header before each frame, both ways, with ``vnet_header``)."""
    # Protocol 0 receives nothing until bound: the filter is in place before any frame.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        attach(sock, program)
        if vnet_header:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # before Linux 4.20: the filter's packet-type check keeps our sends out
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        sock.bind((interface, protocol))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_tap(name: str, *, vnet_header: bool = False) -> int:
    """A tap device ``name`` (no packet-info header; a virtio-net header with
    ``vnet_header``), non-blocking; the device goes with the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_header else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


@implementer(IReadDescriptor)
class FrameReader:
    """The reactor's reader of the packet socket: a batch of frames per ``doRead``."""

    def __init__(
        self,
        sock: socket.socket,
        local_fd: int,
        router: FrameRouter,
        clock: Callable[[], float],
        batch: int = 64,
        dissect: Callable[[bytes], str] | None = None,
        header: int = VNET_HDR,
    ) -> None:
        self.sock = sock
        self.local_fd = local_fd
        self.router = router
        self.clock = clock
        self.batch = batch
        self.dissect = dissect  # debug only: scapy's summary of each dropped frame
        self.buffer = bytearray(FRAME_BUFFER)
        self.view = memoryview(self.buffer)
        self.header = header  # bytes of virtio-net header before each frame (0: none)
        self.frame = self.view[header:]

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "dlba.packet"

    def doRead(self) -> None:
        buffer, view, frame, header = self.buffer, self.view, self.frame, self.header
        recv_into, send = self.sock.recv_into, self.sock.send
        route, local_fd, write = self.router.route, self.local_fd, os.write
        now = self.clock()
        for _ in range(self.batch):
            try:
                n = recv_into(buffer)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.ENETDOWN, errno.ENXIO):
                    return  # the link went down: frames come back when it does
                raise
            # The header goes back out as it came: the frame's length does not change.
            verdict = route(frame, n - header, now)
            try:
                if verdict == FORWARD:
                    send(view[:n])
                elif verdict == LOCAL:
                    write(local_fd, view[:n])
                elif verdict == DROP and self.dissect is not None:
                    log.debug("dropped {frame}", frame=self.dissect(bytes(view[header:n])))
            except OSError:
                # A full queue or a link going down: the frame is lost, as on a wire;
                # TCP sends it again.
                self.router.counters.send_errors += 1

    def connectionLost(self, reason: Failure) -> None:
        pass


@implementer(IFrameIO)
class PacketSocketIO:
    """AF_PACKET in, AF_PACKET out (other nodes), a tap in the kernel (this node)."""

    path = "af_packet"

    def __init__(
        self,
        interface: str,
        vip: str,
        reactor: Any,
        host: Host,
        *,
        tap: str = "dlba0",
        batch: int = 64,
        dissect: Callable[[bytes], str] | None = None,
    ) -> None:
        self.interface = interface
        self.vip = vip
        self.reactor = reactor
        self.host = host
        self.tap = tap
        self.batch = batch
        self.dissect = dissect
        self.reader: FrameReader | None = None
        self._sock: socket.socket | None = None
        self._tap_fd: int | None = None

    def start(self, router: FrameRouter) -> None:
        if self.reader is not None:
            return
        try:
            self._tap_fd = open_tap(self.tap, vnet_header=True)
            self.host.link_up(self.tap)
            # Loose reverse-path check: the client is reached through the interface, not
            # the tap its frames now come in by.  The check also refuses every packet on
            # a device with no IPv4 address at all (seen: TcpExtIPReversePathFilter), so
            # the tap holds the VIP too; it goes with the tap.
            self.host.sysctl(f"net.ipv4.conf.{self.tap}.rp_filter", "2")
            self.host.add_address(self.vip, self.tap)
            try:
                self.host.sysctl(f"net.ipv6.conf.{self.tap}.disable_ipv6", "1")
            except Exception:
                pass  # no IPv6 here: nothing to keep quiet
            router.local_mac = mac_bytes(self.host.mac_of(self.tap))
            self._sock = packet_socket(self.interface, vip_filter(self.vip), vnet_header=True)
        except BaseException:
            self.stop()
            raise
        self.reader = FrameReader(
            self._sock, self._tap_fd, router, self.reactor.seconds, self.batch, self.dissect
        )
        self.reactor.addReader(self.reader)

    def stop(self) -> None:
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tap_fd is not None:
            os.close(self._tap_fd)  # the tap goes with it
            self._tap_fd = None
