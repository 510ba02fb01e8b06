"""Frame I/O on an AF_PACKET socket and a tap device: the ``IFrameIO`` the packet
scheduler uses when the kernel does not forward for it.

- The packet socket is bound to ``[array].interface`` with ``ETH_P_ALL``: such taps see a
  frame before the netdev ingress hook, so the scheduler's own ingress rule (which keeps
  its kernel off other nodes' connections) does not hide the frames from us.  A socket
  bound to ``ETH_P_IP`` would be served after that hook, and see nothing.
- A classic BPF filter keeps out everything but IPv4 to the VIP sent to this host's MAC
  (our own sends too: PACKET_IGNORE_OUTGOING where the kernel has it, Linux 4.20+, and the
  filter's packet-type check everywhere).
- A TPACKET_V2 receive ring (PACKET_RX_RING, mmap): each ``doRead`` routes up to 256
  frames where the kernel put them, with no syscall to receive and one clock read a
  batch; a forwarded frame goes out with one ``send`` of a view of its ring slot.  A
  slot holds a frame of up to about 1,950 bytes: a GRO-merged one is cut (counted as
  truncated, logged once), so GRO/LRO go off on the scheduler's interface.  Without the
  ring (``ring=False``), ``recv_into`` one preallocated 64 KiB buffer a frame, up to
  ``batch`` a ``doRead``.
  Measured (bench/RESULTS.md): the ring costs 15 µs of CPU a frame, recv_into 18.
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
import mmap
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
    interface: str,
    program: Program,
    protocol: int = ETH_P_ALL,
    *,
    vnet_header: bool = False,
    before_bind: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """A non-blocking AF_PACKET socket on ``interface`` with ``program`` attached (and a
    virtio-net header before each frame, both ways, with ``vnet_header``);
    ``before_bind`` sets up what must be there before frames come (a ring)."""
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
        if before_bind is not None:
            before_bind(sock)
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


PACKET_VERSION = 10
PACKET_RX_RING = 5
TPACKET_V2 = 1
TP_STATUS_USER = 1
RING_FRAME = 2048  # a slot: tpacket2_hdr, the virtio-net header, a frame of ~1,950 bytes
RING_BLOCK = 1 << 16
RING_BLOCKS = 64  # 2,048 slots, 4 MiB: a burst of that many frames waits for us
RESYNC_AFTER = 64  # wake-ups in a row with the next slot empty before looking past it


def rx_ring(sock: socket.socket) -> mmap.mmap:
    """A TPACKET_V2 receive ring on ``sock`` (before it is bound), mapped."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    frames = RING_BLOCK // RING_FRAME * RING_BLOCKS
    request = struct.pack("IIII", RING_BLOCK, RING_BLOCKS, RING_FRAME, frames)
    sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
    return mmap.mmap(sock.fileno(), RING_BLOCK * RING_BLOCKS)


@implementer(IReadDescriptor)
class RingFrameReader:
    """The reactor's reader of a packet socket with a receive ring: frames are read,
    routed and rewritten where the kernel put them, with no syscall to receive; each
    goes out with one ``send`` from the ring.  A slot goes back to the kernel once its
    frame is sent."""

    def __init__(
        self,
        sock: socket.socket,
        ring: mmap.mmap,
        local_fd: int,
        router: FrameRouter,
        clock: Callable[[], float],
        batch: int = 256,
        dissect: Callable[[bytes], str] | None = None,
    ) -> None:
        self.sock = sock
        self.ring = ring
        self.view = memoryview(ring)
        self.slots = len(ring) // RING_FRAME
        self.next = 0
        self.local_fd = local_fd
        self.router = router
        self.clock = clock
        self.batch = batch
        self.dissect = dissect
        self.warned = False
        self.empty_wakeups = 0  # woken in a row with nothing at the next slot
        self.skipped = 0  # slots the kernel took but never filled, passed over

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "dlba.packet"

    def _resync(self) -> None:
        """Woken again and again with nothing at the next slot: the kernel moved its head
        past a slot it never handed over (it can drop a frame after taking its slot, e.g.
        when it cannot fill the virtio-net header), so its poll says readable while this
        reader would wait at the hole for ever, spinning (seen under a flood of small
        frames).  Go on from the first slot that holds a frame."""
        ring, slots = self.ring, self.slots
        for step in range(1, slots):
            slot = (self.next + step) % slots
            if ring[slot * RING_FRAME] & TP_STATUS_USER:
                self.skipped += step
                if self.skipped == step:  # the first time
                    log.warn(
                        "the receive ring had {holes} slot(s) the kernel never filled; "
                        "reading on past them",
                        holes=step,
                    )
                self.next = slot
                return

    def doRead(self) -> None:
        ring, view, slots = self.ring, self.view, self.slots
        if not ring[self.next * RING_FRAME] & TP_STATUS_USER:
            # A slot being filled on another CPU right now is done within microseconds:
            # only a wait that lasts is a hole.
            self.empty_wakeups += 1
            if self.empty_wakeups < RESYNC_AFTER:
                return
            self._resync()
        self.empty_wakeups = 0
        send, route, local_fd, write = self.sock.send, self.router.route, self.local_fd, os.write
        unpack = struct.unpack_from
        now = self.clock()
        slot = self.next
        for _ in range(self.batch):
            at = slot * RING_FRAME
            if not ring[at] & TP_STATUS_USER:
                break
            length, snaplen, mac = unpack("=IIH", ring, at + 4)
            start = at + mac
            if length > snaplen and not self.warned:
                # Counted as truncated by the router; said once, with the likely cause.
                self.warned = True
                log.warn(
                    "a {length}-byte frame does not fit a ring slot: turn GRO/LRO off on "
                    "the interface (ethtool -K IFACE gro off lro off)",
                    length=length,
                )
            verdict = route(view[start : start + snaplen], snaplen, now)
            try:
                if verdict == FORWARD:
                    send(view[start - VNET_HDR : start + snaplen])
                elif verdict == LOCAL:
                    write(local_fd, view[start - VNET_HDR : start + snaplen])
                elif verdict == DROP and self.dissect is not None:
                    frame = bytes(view[start : start + snaplen])
                    log.debug("dropped {frame}", frame=self.dissect(frame))
            except OSError:
                self.router.counters.send_errors += 1
            view[at : at + 4] = b"\0\0\0\0"  # TP_STATUS_KERNEL: the slot is the kernel's again
            slot += 1
            if slot == slots:
                slot = 0
        self.next = slot

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
        ring: bool = True,
    ) -> None:
        self.interface = interface
        self.vip = vip
        self.reactor = reactor
        self.host = host
        self.tap = tap
        self.batch = batch
        self.dissect = dissect
        self.ring = ring  # a receive ring (no recv syscall a frame), else recv_into
        self.reader: FrameReader | RingFrameReader | None = None
        self._ring: mmap.mmap | None = None
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

            def map_ring(sock: socket.socket) -> None:
                self._ring = rx_ring(sock)

            self._sock = packet_socket(
                self.interface,
                vip_filter(self.vip),
                vnet_header=True,
                before_bind=map_ring if self.ring else None,
            )
        except BaseException:
            self.stop()
            raise
        clock = self.reactor.seconds
        if self._ring is not None:
            self.reader = RingFrameReader(
                self._sock, self._ring, self._tap_fd, router, clock, dissect=self.dissect
            )
        else:
            self.reader = FrameReader(
                self._sock, self._tap_fd, router, clock, self.batch, self.dissect
            )
        self.reactor.addReader(self.reader)

    def stop(self) -> None:
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader.view.release()  # the ring cannot be unmapped while a view holds it
            self.reader = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tap_fd is not None:
            os.close(self._tap_fd)  # the tap goes with it
            self._tap_fd = None
