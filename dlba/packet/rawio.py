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
  frames where the kernel put them (`FrameRouter.route_at`, no slice made of a frame),
  with no syscall to receive and one clock read a batch, and hands the slots back in one
  strided write.  A slot holds a frame of up to about 1,950 bytes: a GRO-merged one is
  cut (counted as truncated, logged once), so GRO/LRO go off on the scheduler's
  interface.  Without the ring (``ring=False``), ``recv_into`` one preallocated 64 KiB
  buffer a frame, up to ``batch`` a ``doRead``.
- A TPACKET_V2 transmit ring after it (PACKET_TX_RING, the same map): a forwarded frame
  is copied to the next transmit slot (``mmap.move``, its virtio-net header first) and
  the batch (every 64 forwards, and at its end) goes out with one ``send`` with
  MSG_DONTWAIT, the kernel walking the slots.
  PACKET_LOSS makes the kernel skip a frame it refuses rather than stop the ring on it.
  A slot still the kernel's when its turn comes is flushed again, then the frame is
  lost and counted in ``send_errors``.  If the kernel refuses a transmit ring, each
  forwarded frame goes out with one ``send`` from its receive slot.  PACKET_QDISC_BYPASS
  (``qdisc_bypass=True``) is off by default: it measured no better here, and it hides
  the forwarded frames from tcpdump and tc on the interface.
  Measured (bench/RESULTS.md, issue 12): 10.5 µs of CPU a frame, the naive loop 12.0
  (1.14 times its frames/s); 7 to 8 µs of each is the kernel's transmit of the frame.
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

import array
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
from dlba.packet.bpf import NOTHING, Program, attach, vip_filter
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
        send_sock: socket.socket | None = None,
        after_read: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        # The fast path's misses come in on the miss channel and go out of the interface.
        self.send_sock = send_sock if send_sock is not None else sock
        self.after_read = after_read
        self.local_fd = local_fd
        self.router = router
        self.clock = clock
        self.batch = batch
        self.dissect = dissect  # debug only: scapy's summary of each dropped frame
        self.buffer = bytearray(FRAME_BUFFER)
        self.view = memoryview(self.buffer)
        self.header = header  # bytes of virtio-net header before each frame (0: none)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "dlba.packet"

    def doRead(self) -> None:
        buffer, view, header = self.buffer, self.view, self.header
        recv_into, send = self.sock.recv_into, self.send_sock.send
        route, local_fd, write = self.router.route_at, self.local_fd, os.write
        now = self.clock()
        for i in range(self.batch):
            try:
                n = recv_into(buffer)
            except BlockingIOError:
                if i and self.after_read is not None:
                    self.after_read()
                return
            except OSError as e:
                if e.errno in (errno.ENETDOWN, errno.ENXIO):
                    return  # the link went down: frames come back when it does
                raise
            # The header goes back out as it came: the frame's length does not change.
            verdict = route(buffer, header, n - header, now)
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
        if self.after_read is not None:
            self.after_read()

    def release(self) -> None:
        self.view.release()

    def connectionLost(self, reason: Failure) -> None:
        pass


PACKET_VERSION = 10
PACKET_RX_RING = 5
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_USER = 1  # rx: the slot holds a frame for us
TP_STATUS_SEND_REQUEST = 1  # tx: the slot holds a frame for the kernel to send
# tx: the kernel's (send requested, sending, or refused): any of these and the slot is busy.
TP_STATUS_TX_BUSY = 0x7
RING_FRAME = 2048  # a slot: tpacket2_hdr, the virtio-net header, a frame of ~1,950 bytes
RING_BLOCK = 1 << 16
RING_BLOCKS = 64  # 2,048 slots, 4 MiB: a burst of that many frames waits for us
TX_BLOCKS = 16  # 512 slots, 1 MiB: two batches of forwards in flight
# Where a tx slot's data starts (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)): the
# virtio-net header, then the frame; tp_len counts both.
TX_DATA = 32
# Forwards queued before a flush, so the first of a full batch does not wait for the
# last: 64 forwards of about 3 µs of Python here.
TX_FLUSH = 64
RESYNC_AFTER = 64  # wake-ups in a row with the next slot empty before looking past it
_SLOT = struct.Struct("=IIH")  # tpacket2_hdr after tp_status: tp_len, tp_snaplen, tp_mac
_TX = struct.Struct("=II")  # tp_status, tp_len


def ring_request(blocks: int) -> bytes:
    """A ``struct tpacket_req`` for ``blocks`` blocks of RING_FRAME slots."""
    return struct.pack("IIII", RING_BLOCK, blocks, RING_FRAME, RING_BLOCK // RING_FRAME * blocks)


def request_rings(sock: socket.socket, *, tx: bool = True) -> tuple[int, int]:
    """Ask for a TPACKET_V2 receive ring on ``sock`` (before it is bound) and, with
    ``tx``, a transmit ring after it: (receive bytes, transmit bytes), the second 0 if the
    kernel refuses a transmit ring (forwards then go out one ``send`` each)."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    sock.setsockopt(SOL_PACKET, PACKET_RX_RING, ring_request(RING_BLOCKS))
    if not tx:
        return RING_BLOCK * RING_BLOCKS, 0
    try:
        # A frame the kernel refuses is skipped, not left in the ring to stop every
        # later one (TP_STATUS_WRONG_FORMAT holds the ring's head without PACKET_LOSS).
        sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_TX_RING, ring_request(TX_BLOCKS))
    except OSError as e:
        log.info("no transmit ring ({why}): one send a forwarded frame", why=str(e))
        return RING_BLOCK * RING_BLOCKS, 0
    return RING_BLOCK * RING_BLOCKS, RING_BLOCK * TX_BLOCKS


def rx_ring(sock: socket.socket, *, tx: bool = False) -> tuple[mmap.mmap, int | None]:
    """The rings of `request_rings`, mapped as the kernel wants them (one map, the receive
    ring first): (the map, the transmit ring's offset in it, or None without one)."""
    rx_bytes, tx_bytes = request_rings(sock, tx=tx)
    return mmap.mmap(sock.fileno(), rx_bytes + tx_bytes), (rx_bytes if tx_bytes else None)


def bypass_qdisc(sock: socket.socket) -> bool:
    """PACKET_QDISC_BYPASS: our sends go straight to the driver (no qdisc, no egress hooks,
    and taps such as tcpdump on the interface no longer see them).  False if refused."""
    try:
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    except OSError:
        return False
    return True


@implementer(IReadDescriptor)
class RingFrameReader:
    """The reactor's reader of a packet socket with a receive ring: frames are read,
    routed and rewritten where the kernel put them, with no syscall to receive.  With a
    transmit ring (``tx_offset``: where it starts in ``ring``), each forwarded frame is
    copied to the next transmit slot and the batch goes out with one ``send`` (the kernel
    walks the slots); without one, each goes out with a ``send`` from the receive ring.
    A receive slot goes back to the kernel once its frame is handled."""

    def __init__(
        self,
        sock: socket.socket,
        ring: mmap.mmap,
        local_fd: int,
        router: FrameRouter,
        clock: Callable[[], float],
        batch: int = 256,
        dissect: Callable[[bytes], str] | None = None,
        tx_offset: int | None = None,
    ) -> None:
        self.sock = sock
        self.ring = ring
        self.view = memoryview(ring)
        self.slots = (len(ring) if tx_offset is None else tx_offset) // RING_FRAME
        # Each receive slot's tp_status, as one strided array of u32.
        self.status = self.view[: self.slots * RING_FRAME].cast("I")[:: RING_FRAME // 4]
        self.zeros = memoryview(array.array("I", bytes(4 * batch)))
        self.next = 0
        self.tx_offset = tx_offset
        # The transmit ring, in bytes from its start: the next slot, and the ring's size.
        self.tx_slots = 0 if tx_offset is None else len(ring) - tx_offset
        self.tx_next = 0
        self.local_fd = local_fd
        self.router = router
        self.clock = clock
        self.batch = batch
        self.dissect = dissect
        self.warned = False
        self.empty_wakeups = 0  # in a row, with the next slot still the kernel's
        self.skipped = 0  # slots the kernel took and never filled, passed over

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
        status, slots = self.status, self.slots
        for step in range(1, slots):
            slot = (self.next + step) % slots
            if status[slot] & TP_STATUS_USER:
                self.skipped += step
                if self.skipped == step:  # the first time
                    log.warn(
                        "the receive ring had {holes} slot(s) the kernel never filled; "
                        "reading on past them",
                        holes=step,
                    )
                self.next = slot
                return

    def flush(self) -> None:
        """Hand the transmit ring's waiting frames to the kernel (one syscall)."""
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError:
            # A full queue or a link going down: the frames wait in their slots for the
            # next flush; a frame finding its slot still taken is lost, as on a wire.
            self.router.counters.send_errors += 1

    def doRead(self) -> None:
        if not self.status[self.next] & TP_STATUS_USER:
            # A slot being filled on another CPU right now is done within microseconds:
            # only a wait that lasts is a hole.
            self.empty_wakeups += 1
            if self.empty_wakeups < RESYNC_AFTER:
                return
            self._resync()
        self.empty_wakeups = 0
        ring, view, status, slots = self.ring, self.view, self.status, self.slots
        send, route, local_fd, write = self.sock.send, self.router.route_at, self.local_fd, os.write
        head, queue, move = _SLOT.unpack_from, _TX.pack_into, ring.move
        tx_base, tx_slots, tx_next = self.tx_offset, self.tx_slots, self.tx_next
        tx_room = RING_FRAME - TX_DATA - VNET_HDR if tx_base is not None else -1
        pending = 0
        now = self.clock()
        first = slot = self.next
        for _ in range(min(self.batch, slots - first)):
            if not status[slot] & TP_STATUS_USER:
                break
            at = slot * RING_FRAME
            length, snaplen, mac = head(ring, at + 4)
            start = at + mac
            if length > snaplen and not self.warned:
                # Counted as truncated by the router; said once, with the likely cause.
                self.warned = True
                log.warn(
                    "a {length}-byte frame does not fit a ring slot: turn GRO/LRO off on "
                    "the interface (ethtool -K IFACE gro off lro off)",
                    length=length,
                )
            verdict = route(view, start, snaplen, now)
            if verdict == FORWARD and snaplen <= tx_room:
                to = tx_base + tx_next  # type: ignore[operator]
                if ring[to] & TP_STATUS_TX_BUSY:
                    self.flush()  # the kernel may have held back some (ENOBUFS): again
                    pending = 0
                if ring[to] & TP_STATUS_TX_BUSY:
                    self.router.counters.send_errors += 1  # the kernel has them all
                else:
                    # The header goes out as it came: the frame's length does not change.
                    move(to + TX_DATA, start - VNET_HDR, snaplen + VNET_HDR)
                    queue(ring, to, TP_STATUS_SEND_REQUEST, snaplen + VNET_HDR)
                    tx_next += RING_FRAME
                    if tx_next == tx_slots:
                        tx_next = 0
                    pending += 1
                    if pending == TX_FLUSH:
                        self.flush()
                        pending = 0
            elif verdict != DROP:
                try:
                    if verdict == FORWARD:
                        send(view[start - VNET_HDR : start + snaplen])
                    else:
                        write(local_fd, view[start - VNET_HDR : start + snaplen])
                except OSError:
                    # A full queue or a link going down: the frame is lost, as on a wire.
                    self.router.counters.send_errors += 1
            elif self.dissect is not None:
                frame = bytes(view[start : start + snaplen])
                log.debug("dropped {frame}", frame=self.dissect(frame))
            slot += 1
        # TP_STATUS_KERNEL: the slots are the kernel's again, in one strided write.
        status[first:slot] = self.zeros[: slot - first]
        self.next = 0 if slot == slots else slot
        self.tx_next = tx_next
        if pending:
            self.flush()
        # A batch stops at the ring's end; the socket is still readable, so the reactor's
        # next turn goes on from the ring's start.

    def release(self) -> None:
        """Let go of the ring (it cannot be unmapped while a view holds it)."""
        self.status.release()
        self.zeros.release()
        self.view.release()

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
        tx_ring: bool = True,
        qdisc_bypass: bool = False,
        read_interface: str | None = None,
        after_read: Callable[[], None] | None = None,
    ) -> None:
        self.interface = interface
        # With the kernel fast path Python reads only the misses, from the miss channel
        # (a socket on the interface would see every frame the kernel forwards), and
        # sends on the interface from a socket that receives nothing.
        self.read_interface = read_interface
        self.after_read = after_read
        self._send_sock: socket.socket | None = None
        self.vip = vip
        self.reactor = reactor
        self.host = host
        self.tap = tap
        self.batch = batch
        self.dissect = dissect
        self.ring = ring  # a receive ring (no recv syscall a frame), else recv_into
        # With the receive ring, a transmit ring (one send a batch), if the kernel has one.
        self.tx_ring = tx_ring
        self.qdisc_bypass = qdisc_bypass
        self._tx_offset: int | None = None
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
                self._ring, self._tx_offset = rx_ring(sock, tx=self.tx_ring)

            ring = self.ring and self.read_interface is None
            self._sock = packet_socket(
                self.read_interface or self.interface,
                vip_filter(self.vip, any_host=self.read_interface is not None),
                vnet_header=True,
                before_bind=map_ring if ring else None,
            )
            if self.read_interface is not None:
                self._send_sock = packet_socket(self.interface, NOTHING, 0, vnet_header=True)
            if self.qdisc_bypass and not bypass_qdisc(self._sock):
                log.info("the kernel refused PACKET_QDISC_BYPASS: sends go by the qdisc")
        except BaseException:
            self.stop()
            raise
        clock = self.reactor.seconds
        if self._ring is not None:
            self.reader = RingFrameReader(
                self._sock,
                self._ring,
                self._tap_fd,
                router,
                clock,
                dissect=self.dissect,
                tx_offset=self._tx_offset,
            )
        else:
            self.reader = FrameReader(
                self._sock,
                self._tap_fd,
                router,
                clock,
                self.batch,
                self.dissect,
                send_sock=self._send_sock,
                after_read=self.after_read,
            )
        self.reactor.addReader(self.reader)

    def stop(self) -> None:
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader.release()  # the ring cannot be unmapped while a view holds it
            self.reader = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            self._tx_offset = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._send_sock is not None:
            self._send_sock.close()
            self._send_sock = None
        if self._tap_fd is not None:
            os.close(self._tap_fd)  # the tap goes with it
            self._tap_fd = None
