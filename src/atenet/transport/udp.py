"""The overlay's UDP socket: sealed packets out and in, with Linux's UDP GSO and GRO.

Both the node daemon and ``tok connect`` move sealed packets through one non-blocking UDP
socket. This wrapper keeps the OS tricks in one place (as wireguard-go's ``conn/`` does):

* **Out.** A packet goes out with one ``sendto``, except a sealed super-frame larger than a
  path-MTU datagram: that is cut into fragments (:mod:`atenet.overlay.fragment`), joined in one
  buffer, which leaves in one ``sendmsg`` with ``UDP_SEGMENT`` (the kernel or the NIC splits
  it). Without UDP GSO (kernels before 4.18) the fragments go one ``sendto`` each. Flooding
  sends the same packet to several peers, so the fragment buffer of the last packet is kept.
* **Runs.** While held (:meth:`UdpSocket.hold`; :meth:`UdpSocket.receive` holds once a batch
  shows, ``tok connect`` while it drains more than one frame from its TAP) small packets wait in
  a list, and :meth:`flush` sends each destination's packets of one size as one ``sendmsg`` with
  ``UDP_SEGMENT`` too: one syscall and one trip of one buffer through the kernel for up to 64
  datagrams, which the receiver's GRO hands over as one run (or the kernel splits back into
  datagrams for a socket without GRO). Each packet is still its own sealed datagram on the
  wire; only the syscalls and the kernel's per-packet work are shared. A lone packet (an idle
  ping) still goes at once with ``sendto``.
* **In.** ``UDP_GRO`` lets the kernel hand over a run of datagrams of one flow in one
  ``recvmsg`` (with their size in a control message); :meth:`UdpSocket.receive` splits runs,
  reassembles fragments and passes whole sealed packets on, reading until the socket is empty.

Errors on send are counted, never raised: one unreachable peer must not stop a flood.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from atenet.overlay.fragment import FRAGMENT_SIZE, Reassembler, fragment
from atenet.overlay.seal import TYPE_SUPERFRAME

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

SOCKET_BUFFER = 256 << 10
"""SO_RCVBUF / SO_SNDBUF asked for (Linux doubles it: 512 KiB). Small on purpose: when the
reader is the bottleneck, this buffer is the queue a TCP flow through the overlay fills, and its
size is the latency everyone else's packets wait behind. Measured on the bench (1 node, one TCP
stream at ~1.7 Gbit/s): 8 MiB gave a loaded rtt p99 of 20 ms, 2 MiB 16 ms, 512 KiB 7 ms, at the
same throughput; TCP loses a super-frame more often and recovers (the retransmits column)."""

RECV_SIZE = 65535
_CMSG_SPACE = socket.CMSG_SPACE(4)
_GSO_CMSG = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", FRAGMENT_SIZE))]
_TYPE_AT = 17

GSO_SEGMENTS = 64
"""Most datagrams in one UDP GSO send (the kernel's UDP_MAX_SEGMENTS before 5.3)."""
GSO_BYTES = 65000
"""Most bytes in one UDP GSO send (an IPv4 datagram's payload is at most 65,507)."""
HOLD_MAX = 64
"""Held packets that make :meth:`UdpSocket.send` flush at once: the first of them waits for
at most this many others to be processed (tens of microseconds each), not a whole read batch."""

Addr = tuple[str, int]


class UdpSocket:
    """A bound or unbound non-blocking UDP socket carrying sealed packets (see module doc)."""

    __slots__ = (
        "_held",
        "_last",
        "_last_wire",
        "gro",
        "gso",
        "reassembler",
        "send_errors",
        "sock",
    )

    def __init__(self, sock: socket.socket, buffer: int = SOCKET_BUFFER) -> None:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, buffer)
        sock.setblocking(False)
        self.sock = sock
        self.gso = True
        """UDP_SEGMENT works here (turned off after the first send the kernel refuses)."""
        self.gro = False
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        self.reassembler = Reassembler()
        self.send_errors = 0
        self._last: bytes | bytearray | None = None
        self._last_wire: list[bytes] = []
        """The fragments of ``_last`` joined, as a one-buffer ``sendmsg`` list."""
        self._held: list[tuple[bytes | bytearray, Any]] | None = None
        """Small packets waiting for :meth:`flush` while held (None: not held)."""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, packet: bytes | bytearray, addr: Addr) -> None:
        """Send one sealed packet; fragment it if it is a super-frame above a path-MTU datagram."""
        if len(packet) <= FRAGMENT_SIZE or packet[_TYPE_AT] != TYPE_SUPERFRAME:
            held = self._held
            if held is not None:
                held.append((packet, addr))
                if len(held) >= HOLD_MAX:
                    self.flush()
                return
            try:
                self.sock.sendto(packet, addr)
            except OSError:
                self.send_errors += 1
            return
        if self._held:
            self.flush()  # what was held for this peer goes first
        if packet is not self._last:  # a flood sends the same bytes to every peer
            self._last_wire = [fragment(packet)]
            self._last = packet
        wire = self._last_wire
        if self.gso:
            try:
                self.sock.sendmsg(wire, _GSO_CMSG, 0, addr)
                return
            except OSError as err:
                if err.errno not in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.send_errors += 1
                    return
                self.gso = False  # no UDP GSO here (or on this route): one datagram each
        sendto = self.sock.sendto
        view = memoryview(wire[0])
        for at in range(0, len(view), FRAGMENT_SIZE):
            try:
                sendto(view[at : at + FRAGMENT_SIZE], addr)
            except OSError:
                self.send_errors += 1
                return

    def hold(self) -> bool:
        """Keep small packets from :meth:`send` until :meth:`flush` (or :meth:`release`).

        Returns whether this call started holding (False: already held by a caller further up,
        who releases)."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def release(self) -> None:
        """Flush and stop holding: packets go at once again."""
        self.flush()
        self._held = None

    def flush(self) -> None:
        """Send the held packets: per destination in order, runs of one size as one GSO send."""
        held = self._held
        if not held:
            return
        self._held = []
        if len(held) == 1:
            self._sendto(*held[0])
            return
        runs: dict[Any, list[bytes | bytearray]] = {}
        for packet, addr in held:
            run = runs.get(addr)
            if run is None:
                runs[addr] = [packet]
            else:
                run.append(packet)
        for addr, packets in runs.items():
            if len(packets) == 1 or not self.gso:
                for packet in packets:
                    self._sendto(packet, addr)
            else:
                self._send_runs(packets, addr)

    def _sendto(self, packet: bytes | bytearray, addr: Any) -> None:
        try:
            self.sock.sendto(packet, addr)
        except OSError:
            self.send_errors += 1

    def _send_runs(self, packets: list[bytes | bytearray], addr: Any) -> None:
        """Send ``packets`` to ``addr`` in order, each run of equal sizes (the last of a run
        may be shorter, as UDP GSO allows) as one ``sendmsg`` with ``UDP_SEGMENT``."""
        count = len(packets)
        at = 0
        while at < count:
            first = packets[at]
            size = len(first)
            end = at + 1
            if size <= FRAGMENT_SIZE:  # a bigger one (an old peer's jumbo frame) goes alone
                total = size
                limit = min(count, at + GSO_SEGMENTS)
                while end < limit:
                    length = len(packets[end])
                    if length > size or total + length > GSO_BYTES:
                        break
                    total += length
                    end += 1
                    if length < size:  # a shorter datagram ends a run
                        break
            if end - at == 1:
                self._sendto(first, addr)
            elif self.gso:
                try:
                    self.sock.sendmsg(
                        packets[at:end], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, addr
                    )
                except OSError as err:
                    if err.errno not in (
                        errno.EIO,
                        errno.EINVAL,
                        errno.ENOPROTOOPT,
                        errno.EOPNOTSUPP,
                    ):
                        self.send_errors += end - at
                    else:
                        self.gso = False  # no UDP GSO here: one datagram each, from now on
                        for packet in packets[at:end]:
                            self._sendto(packet, addr)
            else:
                for packet in packets[at:end]:
                    self._sendto(packet, addr)
            at = end

    def receive(self, handle: Callable[[bytes, Any], None], max_reads: int) -> None:
        """Call ``handle(packet, addr)`` for each whole sealed packet waiting, until empty.

        At most ``max_reads`` ``recvmsg`` calls, so other sockets get their turn (a level-
        triggered reader fires again if more is waiting). Once a second datagram (or a GRO run)
        shows that a batch is under way, what ``handle`` sends is held and leaves in runs (see
        :meth:`flush`), at the latest when the reading stops. The first datagram's answers are
        not held: a lone packet (an idle ping) must not wait for the read that finds the socket
        empty, which costs a failed syscall and an exception (measured: +0.1 ms ping RTT through
        one node when it waited).
        """
        recvmsg = self.sock.recvmsg
        feed = self.reassembler.feed
        holding = False
        try:
            for reads in range(max_reads):
                try:
                    data, ancillary, _flags, addr = recvmsg(RECV_SIZE, _CMSG_SPACE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # e.g. ICMP errors reported on the socket: not ours to stop on
                    continue
                if reads and not holding:
                    holding = self.hold()
                if not ancillary and (len(data) <= _TYPE_AT or data[_TYPE_AT] != 4):
                    handle(data, addr)  # the common case: one whole packet
                    continue
                segment = 0
                for level, kind, value in ancillary:
                    if level == SOL_UDP and kind == UDP_GRO:
                        segment = int.from_bytes(value[:4], sys.byteorder)
                if segment and not holding:
                    holding = self.hold()
                for packet in feed(data, segment, addr):
                    handle(packet, addr)
        finally:
            if holding:
                self.release()

    def close(self) -> None:
        self.sock.close()
