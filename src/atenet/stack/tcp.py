"""TCP (RFC 9293) for the mio stack, sans-I/O: segments and ``now`` in, segments out.

Why this shape: the interface layer (``atenet.stack.iface``) hands every TCP segment addressed to
us to :meth:`Tcp.on_packet` and sends whatever :meth:`Tcp.poll` returns; :meth:`Tcp.poll_at` says
when the timers next need a call. Nothing here reads a clock or touches a socket, so tests drive
two instances back to back with an injected ``now`` and a fault injector.

Internals worth knowing before changing anything:

- Sequence numbers are kept *unwrapped* (plain Python ints that only grow): an incoming 32-bit
  value is unwrapped relative to the nearest reference (``rcv_nxt`` or ``snd_una``), so every
  comparison is an ordinary ``<``; they are masked to 32 bits only when a segment is encoded.
- The send buffer is one ``bytearray`` holding the bytes from ``snd_una`` on (sent-unacked and
  unsent alike); an ACK deletes its front. The receive buffer is a ``bytearray`` of in-order bytes
  the program has not read; the advertised window is its free space, so a program that stops
  reading closes the window instead of growing memory. Out-of-order segments wait in a small
  dict (bounded by count and by the window) until the hole fills.
- Retransmission: RFC 6298 RTO (SRTT/RTTVAR, Karn's rule, exponential backoff, 200 ms .. 60 s),
  go-back-N from ``snd_una`` on a timeout, fast retransmit on three duplicate ACKs and NewReno
  recovery (RFC 6582) with cwnd/ssthresh per RFC 5681; delayed ACKs (every second segment or
  40 ms); zero-window persist probes; window scaling (RFC 7323). SACK (RFC 2018) is offered and
  our pure ACKs carry blocks while data waits out of order; received blocks are parsed and not
  acted on; timestamps are not used.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import random
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from atenet.wire.checksum import checksum, pseudo_header_v4, pseudo_header_v6, verify

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "Connection",
    "Listener",
    "Segment",
    "Tcp",
    "encode_segment",
    "parse_segment",
]

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
PROTO_TCP = 6
_M32 = 0xFFFFFFFF
_HALF = 1 << 31
_HDR = struct.Struct("!HHIIBBHHH")
EPHEMERAL = range(49152, 65536)

CLOSED = "CLOSED"
LISTEN = "LISTEN"
SYN_SENT = "SYN_SENT"
SYN_RECEIVED = "SYN_RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN_WAIT_1"
FIN_WAIT_2 = "FIN_WAIT_2"
CLOSE_WAIT = "CLOSE_WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST_ACK"
TIME_WAIT = "TIME_WAIT"

_SEND_DATA_STATES = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK})
_RECV_DATA_STATES = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
_FIN_STATES = frozenset({FIN_WAIT_1, CLOSING, LAST_ACK})

RTO_INITIAL = 1.0
RTO_MIN = 0.2
RTO_MAX = 60.0
DELAYED_ACK = 0.04


def _unwrap(value: int, ref: int) -> int:
    """The unwrapped sequence number nearest ``ref`` whose low 32 bits are ``value``."""
    return ref + ((value - ref + _HALF) & _M32) - _HALF


@dataclass(slots=True)
class Segment:
    """A decoded TCP segment (options reduced to the ones we act on)."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    wnd: int
    payload: bytes
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    sack: list[tuple[int, int]] | None = None  # SACK blocks (32-bit edges), parsed, not used


def parse_segment(data: bytes | bytearray | memoryview) -> Segment | None:
    """Decode a segment (checksum already verified); None when the header is malformed.

    Unknown options are skipped; a malformed option list ends option parsing but keeps the
    segment (what Linux does), since the header length itself was sane.
    """
    if len(data) < 20:
        return None
    sport, dport, seq, ack, off, flags, wnd, _csum, _urg = _HDR.unpack_from(data)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > len(data):
        return None
    seg = Segment(sport, dport, seq, ack, flags & 0x3F, wnd, bytes(data[hlen:]))
    i = 20
    while i < hlen:
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= hlen:
            break
        olen = data[i + 1]
        if olen < 2 or i + olen > hlen:
            break
        if kind == 2 and olen == 4:
            seg.mss = int.from_bytes(data[i + 2 : i + 4], "big")
        elif kind == 3 and olen == 3:
            seg.wscale = min(data[i + 2], 14)  # RFC 7323 §2.3: larger shifts are treated as 14
        elif kind == 4 and olen == 2:
            seg.sack_ok = True
        elif kind == 5 and olen >= 10 and (olen - 2) % 8 == 0:
            seg.sack = [
                (int.from_bytes(data[j : j + 4], "big"), int.from_bytes(data[j + 4 : j + 8], "big"))
                for j in range(i + 2, i + olen, 8)
            ]
        i += olen
    return seg


def encode_segment(
    src_ip: bytes,
    dst_ip: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    wnd: int,
    options: bytes = b"",
    payload: bytes | bytearray | memoryview = b"",
    *,
    partial: bool = False,
) -> bytes:
    """A TCP segment with its checksum filled in (pseudo header from the address lengths).

    ``partial``: store only the folded pseudo-header sum, as Linux does for a segment whose
    checksum "the hardware" completes (virtio-net ``F_NEEDS_CSUM``): a TSO super-segment is
    never summed here, the kernel or ``atenet.offload.to_frames`` sums each real segment.
    """
    hlen = 20 + len(options)
    seg = bytearray(
        _HDR.pack(sport, dport, seq & _M32, ack & _M32, (hlen // 4) << 4, flags, wnd, 0, 0)
    )
    seg += options
    seg += payload
    if len(src_ip) == 4:
        ph = pseudo_header_v4(src_ip, dst_ip, PROTO_TCP, len(seg))
    else:
        ph = pseudo_header_v6(src_ip, dst_ip, PROTO_TCP, len(seg))
    if partial:
        struct.pack_into("!H", seg, 16, ~checksum(b"", ph) & 0xFFFF)
    else:
        struct.pack_into("!H", seg, 16, checksum(seg, ph))
    return bytes(seg)


def _syn_options(mss: int, wscale: int | None, sack: bool) -> bytes:
    opts = struct.pack("!BBH", 2, 4, mss)
    if wscale is not None:
        opts += struct.pack("!BBBB", 1, 3, 3, wscale)  # NOP + window scale
    if sack:
        opts += b"\x01\x01\x04\x02"  # NOP NOP SACK-permitted
    return opts


class Listener:
    """A passive socket: SYNs to its address and port become connections, up to ``backlog``."""

    def __init__(self, tcp: Tcp, local_ip: bytes | None, port: int, backlog: int) -> None:
        self._tcp = tcp
        self.local_ip = local_ip
        self.port = port
        self.backlog = backlog
        self.open = True
        self._queue: deque[Connection] = deque()
        # not yet accepted (SYN_RECEIVED or queued): what the backlog bounds
        self._children: set[Connection] = set()

    def accept(self) -> Connection | None:
        """The next established connection, or None."""
        while self._queue:
            conn = self._queue.popleft()
            self._children.discard(conn)
            conn._listener = None
            return conn
        return None

    @property
    def pending(self) -> int:
        """Connections waiting for :meth:`accept` (established ones only)."""
        return len(self._queue)

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        self.open = False
        for conn in list(self._children):
            conn.abort()
        self._children.clear()
        self._queue.clear()
        self._tcp.listeners.pop((self.local_ip, self.port), None)


class Connection:
    """One TCP connection; the program's side is send/recv/shutdown/close/abort.

    ``state`` is the RFC 9293 state name; ``error`` is None or an errno (ECONNREFUSED,
    ETIMEDOUT, ECONNRESET) once the connection failed.
    """

    def __init__(
        self,
        tcp: Tcp,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        listener: Listener | None = None,
    ) -> None:
        self._tcp = tcp
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self._listener = listener
        self.state = CLOSED
        self.error: int | None = None
        self.iss = tcp._rng.getrandbits(32)
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self._mss_limit = tcp.mss if len(local_ip) == 4 or tcp.mss6 is None else tcp.mss6
        """The MSS we announce and the most we send (IPv6 headers are 20 bytes longer)."""
        self.mss = min(self._mss_limit, 536 if len(local_ip) == 4 else 1220)  # until the peer says
        self.sbuf = bytearray()
        self.sbuf_seq = self.iss + 1
        self.fin_pending = False
        self.fin_seq = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rbuf = bytearray()
        self.ooo: dict[int, tuple[bytes, bool]] = {}
        self.ooo_bytes = 0  # payload bytes held in ooo (bounded by the receive buffer)
        self.last_ooo_seq = 0
        self.sack_ok = False
        self.fin_received = False
        self.closed_by_app = False
        # acknowledgements owed
        self.ack_now = False
        self.dupacks_to_send = 0
        self.unacked_segs = 0
        self.ack_at: float | None = None
        self.last_adv_edge = 0
        # retransmission (RFC 6298)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.rtx_at: float | None = None
        self.retries = 0
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.rexmit_one = False
        # zero-window probing
        self.persist_at: float | None = None
        self.persist_backoff = 0
        self.probe = False
        # congestion control (RFC 5681 / 6582)
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.recover: int | None = None
        self.time_wait_at: float | None = None
        self.fin_wait2_at: float | None = None
        self._heap_time: float | None = None  # the time of this connection's Tcp heap entry

    def __repr__(self) -> str:
        return (
            f"<Connection {self.local_port}->{self.remote_port} {self.state}"
            f" err={self.error} una={self.snd_una - self.iss} rcv={len(self.rbuf)}>"
        )

    # ------------------------------------------------------------------ program side

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.local_ip, self.local_port, self.remote_ip, self.remote_port)

    @property
    def readable(self) -> int:
        """Bytes waiting for :meth:`recv`."""
        return len(self.rbuf)

    @property
    def send_space(self) -> int:
        """Bytes :meth:`send` would take now (0 once shut down or failed)."""
        if self.fin_pending or self.error is not None:
            return 0
        if self.state not in (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT):
            return 0
        return max(0, self._tcp.send_buffer - len(self.sbuf))

    @property
    def eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self.fin_received and not self.rbuf

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the send buffer takes; returns the count taken.

        Raises OSError with the connection's errno after a failure, BrokenPipeError (EPIPE)
        after shutdown/close.
        """
        if self.error is not None:
            raise OSError(self.error, f"connection failed: {errno.errorcode[self.error]}")
        if self.fin_pending or self.state not in (
            SYN_SENT,
            SYN_RECEIVED,
            ESTABLISHED,
            CLOSE_WAIT,
        ):
            raise BrokenPipeError(errno.EPIPE, "connection is shut down for sending")
        n = min(len(data), self._tcp.send_buffer - len(self.sbuf))
        self._tcp._dirty.add(self)
        if n > 0:
            self.sbuf += memoryview(data)[:n]
        return max(n, 0)

    def recv(self, n: int) -> bytes:
        """Up to ``n`` in-order bytes (b"" when none: check :attr:`eof` and :attr:`error`)."""
        if not self.rbuf or n <= 0:
            return b""
        if n >= len(self.rbuf):  # the usual case: one copy, no slice and no memmove
            out = bytes(self.rbuf)
            self.rbuf = bytearray()
        else:
            with memoryview(self.rbuf) as view:
                out = bytes(view[:n])
            del self.rbuf[:n]
        self._tcp._dirty.add(self)
        # Window update when the right edge moved enough (receiver SWS avoidance, RFC 1122).
        if self.state in _RECV_DATA_STATES:
            grown = self._adv_edge() - self.last_adv_edge
            if grown >= min(self._tcp.recv_buffer // 2, 2 * self.mss):
                self.ack_now = True
        return out

    def shutdown(self) -> None:
        """Send FIN after every queued byte (half-close: receiving goes on)."""
        if self.fin_pending or self.state in (CLOSED, LISTEN, TIME_WAIT):
            return
        self.fin_pending = True
        self.fin_seq = self.sbuf_seq + len(self.sbuf)
        self._tcp._dirty.add(self)
        if self.state == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        # SYN_SENT / SYN_RECEIVED: the FIN waits for the handshake (see _established)

    def close(self) -> None:
        """The program is done: FIN after queued data, or RST when unread data is discarded."""
        self.closed_by_app = True
        if self.state == CLOSED:
            self._tcp._forget(self)
            return
        if self.rbuf or self.ooo:
            self.abort()  # RFC 2525 §2.17: data would be lost, tell the peer
        elif self.state == SYN_SENT:
            self.state = CLOSED
            self._tcp._forget(self)
        else:
            self.shutdown()

    def abort(self) -> None:
        """Reset the connection now (RST to the peer when it knows us) and forget it."""
        if self.state not in (CLOSED, SYN_SENT, TIME_WAIT, LISTEN):
            self._tcp._queue_out(self.local_ip, self.remote_ip, self._rst(self.snd_nxt))
        self._die(None)

    # ------------------------------------------------------------------ internals

    def _rst(self, seq: int) -> bytes:
        return encode_segment(
            self.local_ip, self.remote_ip, self.local_port, self.remote_port, seq, 0, RST, 0
        )

    def _die(self, err: int | None) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.state = CLOSED
        self.rtx_at = self.persist_at = self.ack_at = self.time_wait_at = None
        self.fin_wait2_at = None
        self.ooo.clear()
        self.ooo_bytes = 0
        self._tcp._forget(self)

    def _rcv_free(self) -> int:
        return max(0, self._tcp.recv_buffer - len(self.rbuf))

    def _adv_wnd(self) -> int:
        return min(self._rcv_free() >> self.rcv_wscale, 0xFFFF)

    def _adv_edge(self) -> int:
        return self.rcv_nxt + (self._adv_wnd() << self.rcv_wscale)

    def _established(self, now: float) -> None:
        self.state = FIN_WAIT_1 if self.fin_pending else ESTABLISHED
        self.cwnd = 10 * self.mss if self.retries == 0 else self.mss  # RFC 6928 / 5681 §3.1
        self.retries = 0
        if self._listener is not None:
            self._listener._queue.append(self)

    def _peer_options(self, seg: Segment) -> None:
        self.sack_ok = seg.sack_ok and self._tcp.sack
        if seg.mss is not None:
            self.mss = max(64, min(self._mss_limit, seg.mss))
        if seg.wscale is not None:
            self.snd_wscale = seg.wscale
            self.rcv_wscale = self._tcp.wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0

    def _rtt_sample(self, r: float) -> None:
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(RTO_MAX, max(RTO_MIN, self.srtt + max(0.001, 4 * self.rttvar)))

    def _on_segment(self, seg: Segment, now: float) -> None:
        if self.state == SYN_SENT:
            self._on_syn_sent(seg, now)
            return
        flags = seg.flags
        seq = _unwrap(seg.seq, self.rcv_nxt)
        payload = seg.payload
        fin = bool(flags & FIN)
        if self.state == SYN_RECEIVED and flags & SYN and not flags & ACK:
            if seq == self.irs:
                self.snd_nxt = self.iss  # our SYN-ACK was lost: send it again
            return
        seg_len = len(payload) + (1 if flags & SYN else 0) + (1 if fin else 0)
        wnd = self._rcv_free()
        nxt = self.rcv_nxt
        if seg_len == 0:
            ok = seq == nxt if wnd == 0 else nxt <= seq < nxt + wnd
        elif wnd == 0:
            ok = False
        else:
            end = seq + seg_len - 1
            ok = nxt <= seq < nxt + wnd or nxt <= end < nxt + wnd
        if not ok:
            if wnd == 0 and seq == nxt and not flags & RST:
                # a zero-window probe: take its ACK (and a FIN, which needs no buffer), drop
                # its data, answer with our window
                if payload:
                    payload = b""
                    fin = False
                self.ack_now = True
            else:
                if not flags & RST:
                    self.ack_now = True
                    if self.state == TIME_WAIT and fin:
                        self.time_wait_at = now + self._tcp.time_wait
                self._tcp.counters["out_of_window"] += 1
                return
        if flags & RST:
            if seq == nxt:
                if self.state == SYN_RECEIVED or self.state in (CLOSING, LAST_ACK, TIME_WAIT):
                    self._die(None)
                else:
                    self._die(errno.ECONNRESET)
                self._tcp.counters["rst_received"] += 1
            else:
                self.ack_now = True  # RFC 5961 §3.2 challenge ACK
                self._tcp.counters["rst_challenged"] += 1
            return
        if flags & SYN:
            self.ack_now = True  # RFC 5961 §4: challenge ACK, drop
            return
        if not flags & ACK:
            return
        # trim what we already have and what does not fit the window
        if seq < nxt:
            cut = nxt - seq
            if cut > len(payload):
                fin = False  # even the FIN is old (it sat at seq + len(payload) < nxt)
                payload = b""
            else:
                payload = payload[cut:]
            seq = nxt
        room = nxt + wnd - seq
        if len(payload) > room:
            payload = payload[: max(room, 0)]
            fin = False
        if self.state == SYN_RECEIVED:
            ack = _unwrap(seg.ack, self.snd_una)
            if not self.snd_una < ack <= self.snd_max:
                self._tcp._queue_out(self.local_ip, self.remote_ip, self._rst(ack))
                return
            self._established(now)
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = seq, ack
        if not self._on_ack(seg, seq, bool(payload) or fin, now):
            return
        if self.state == CLOSED:
            return
        if self.state in _RECV_DATA_STATES and (payload or fin):
            if self.closed_by_app and payload:
                self.abort()  # the program will never read this
                return
            self._receive(seq, payload, fin, now)

    def _on_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = _unwrap(seg.ack, self.iss)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._tcp._queue_out(self.local_ip, self.remote_ip, self._rst(ack))
                return
        if flags & RST:
            if flags & ACK:
                self._die(errno.ECONNREFUSED)
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = seg.seq + 1
        self._peer_options(seg)
        self.ack_now = True
        if flags & ACK:
            self.snd_una = ack
            self.snd_nxt = max(self.snd_nxt, ack)
            if self.rtt_seq is not None and ack >= self.rtt_seq:
                self._rtt_sample(now - self.rtt_time)
                self.rtt_seq = None
            self.rtx_at = None
            self._established(now)
            self.snd_wnd = seg.wnd  # never scaled in a SYN
            self.snd_wl1, self.snd_wl2 = self.rcv_nxt - 1, ack
            self.last_adv_edge = self._adv_edge()
            payload = seg.payload
            if payload or flags & FIN:
                self._receive(self.rcv_nxt, payload[: self._rcv_free()], bool(flags & FIN), now)
        else:
            self.state = SYN_RECEIVED  # simultaneous open: answer with SYN-ACK
            self.snd_wnd = seg.wnd
            self.snd_nxt = self.iss

    def _on_ack(self, seg: Segment, seq: int, has_data: bool, now: float) -> bool:
        """ACK processing (RFC 9293 §3.10.7.4 fifth check); False: drop the segment."""
        ack = _unwrap(seg.ack, self.snd_una)
        if ack == self.snd_max + 1 and self.persist_backoff and self.snd_wnd == 0:
            self.snd_max = ack  # the peer took our window probe's byte
        if ack > self.snd_max:
            self.ack_now = True
            self._tcp.counters["ack_beyond_sent"] += 1
            return False
        new_wnd = seg.wnd << self.snd_wscale
        mss = self.mss
        if ack > self.snd_una:
            acked = ack - self.snd_una
            data_end = self.sbuf_seq + len(self.sbuf)
            upto = min(ack, data_end)
            if upto > self.sbuf_seq:
                del self.sbuf[: upto - self.sbuf_seq]
                self.sbuf_seq = upto
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            if self.rtt_seq is not None and ack >= self.rtt_seq:
                self._rtt_sample(now - self.rtt_time)
                self.rtt_seq = None
            self.retries = 0
            self.rtx_at = None if ack == self.snd_max else now + self.rto
            if self.recover is not None:
                if ack >= self.recover:  # full ACK: leave recovery (RFC 6582 §3.2 step 3)
                    self.cwnd = min(self.ssthresh, (self.snd_max - ack) + mss)
                    self.recover = None
                else:  # partial ACK: retransmit the next hole, deflate
                    self.rexmit_one = True
                    self.rtt_seq = None
                    self.cwnd = max(self.cwnd - acked + mss, mss)
            elif self.cwnd < self.ssthresh:
                # with TSO a peer acks whole super-segments (one ACK per 64 KB), so every acked
                # byte counts, as Linux counts acked packets (RFC 3465 ABC would allow only 2 SMSS)
                self.cwnd += acked if self._tcp.tso else min(acked, mss)
            else:
                self.cwnd += max(1, mss * mss // self.cwnd)
            self.dupacks = 0
        elif (
            ack == self.snd_una
            and not has_data
            and self.snd_max > self.snd_una
            and new_wnd == self.snd_wnd
        ):
            self.dupacks += 1
            if self.dupacks == 3 and self.recover is None:
                flight = self.snd_max - self.snd_una
                self.ssthresh = max(flight // 2, 2 * mss)
                self.cwnd = self.ssthresh + 3 * mss
                self.recover = self.snd_max
                self.rexmit_one = True
                self.rtt_seq = None
                self._tcp.counters["fast_retransmits"] += 1
            elif self.dupacks > 3 and self.recover is not None:
                self.cwnd += mss
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = new_wnd
            self.snd_wl1, self.snd_wl2 = seq, ack
            if new_wnd > 0:
                self.persist_at = None
                self.persist_backoff = 0
        if self.fin_pending and self.snd_una > self.fin_seq:  # our FIN is acknowledged
            if self.state == FIN_WAIT_1:
                self.state = FIN_WAIT_2
                if self.closed_by_app:
                    self.fin_wait2_at = now + self._tcp.fin_wait2
            elif self.state == CLOSING:
                self._time_wait(now)
            elif self.state == LAST_ACK:
                self._die(None)
                return False
        return True

    def _receive(self, seq: int, payload: bytes, fin: bool, now: float) -> None:
        if seq > self.rcv_nxt:
            if self.ooo_bytes + len(payload) > self._tcp.recv_buffer:
                self._tcp.counters["ooo_dropped"] += 1
            elif seq in self.ooo or len(self.ooo) < self._tcp.ooo_segments:
                old = self.ooo.get(seq)
                if old is None or len(old[0]) < len(payload) or fin:
                    self.ooo[seq] = (payload, fin)
                    self.ooo_bytes += len(payload) - (len(old[0]) if old else 0)
            else:
                self._tcp.counters["ooo_dropped"] += 1
            self.last_ooo_seq = seq
            self.dupacks_to_send = min(self.dupacks_to_send + 1, 8)  # RFC 5681 §4.2
            return
        if payload:
            self.rbuf += payload
            self.rcv_nxt += len(payload)
        filled = False
        if self.ooo:
            filled = True
            for s in sorted(self.ooo):
                if s > self.rcv_nxt:
                    break
                data, ofin = self.ooo.pop(s)
                self.ooo_bytes -= len(data)
                end = s + len(data)
                if end > self.rcv_nxt:
                    self.rbuf += data[self.rcv_nxt - s :]
                    self.rcv_nxt = end
                if ofin and end == self.rcv_nxt:
                    fin = True
        if fin:
            self._receive_fin(now)
            return
        self.unacked_segs += 1
        if self.unacked_segs >= 2 or filled or len(payload) > self.mss:  # > 1 MSS: GRO
            self.ack_now = True
        elif self.ack_at is None:
            self.ack_at = now + DELAYED_ACK

    def _receive_fin(self, now: float) -> None:
        self.rcv_nxt += 1
        self.fin_received = True
        self.ack_now = True
        self.ooo.clear()
        self.ooo_bytes = 0
        if self.state == ESTABLISHED:
            self.state = CLOSE_WAIT
        elif self.state == FIN_WAIT_1:
            if self.snd_una > self.fin_seq:
                self._time_wait(now)
            else:
                self.state = CLOSING
        elif self.state == FIN_WAIT_2:
            self._time_wait(now)

    def _time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self.rtx_at = self.persist_at = self.fin_wait2_at = None
        self.time_wait_at = now + self._tcp.time_wait
        self._tcp._entered_time_wait(self)

    def _on_timers(self, now: float) -> None:
        if self.time_wait_at is not None and now >= self.time_wait_at:
            self._die(None)
            return
        if self.fin_wait2_at is not None and now >= self.fin_wait2_at:
            if self.state == FIN_WAIT_2:
                self._die(None)
                return
            self.fin_wait2_at = None
        if self.rtx_at is not None and now >= self.rtx_at:
            self._on_rto(now)
            if self.state == CLOSED:
                return
        if self.persist_at is not None and now >= self.persist_at:
            self.probe = True
            self.persist_backoff += 1
            self.persist_at = now + min(RTO_MAX, self.rto * (1 << min(self.persist_backoff, 16)))
        if self.ack_at is not None and now >= self.ack_at:
            self.ack_now = True

    def _on_rto(self, now: float) -> None:
        self.retries += 1
        syn = self.state in (SYN_SENT, SYN_RECEIVED)
        limit = self._tcp.syn_retries if syn else self._tcp.max_retries
        if self.retries > limit:
            self._tcp.counters["timeouts"] += 1
            if self.state != SYN_SENT:
                self._tcp._queue_out(self.local_ip, self.remote_ip, self._rst(self.snd_nxt))
            self._die(errno.ETIMEDOUT)
            return
        self._tcp.counters["rto_retransmits"] += 1
        if not syn:
            self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * self.mss)
            self.cwnd = self.mss
            self.recover = None
            self.dupacks = 0
        self.rto = min(RTO_MAX, self.rto * 2)
        self.snd_nxt = self.snd_una  # go back N
        self.rtt_seq = None  # Karn: no sample from a retransmitted segment
        self.rtx_at = None

    def _wants_output(self) -> bool:
        if self.state in (CLOSED, LISTEN):
            return False
        if self.ack_now or self.dupacks_to_send or self.rexmit_one or self.probe:
            return True
        if self.state in (SYN_SENT, SYN_RECEIVED):
            return self.snd_nxt == self.iss
        if self.state not in _SEND_DATA_STATES:
            return False
        data_end = self.sbuf_seq + len(self.sbuf)
        if self.snd_nxt < data_end:
            room = self.snd_una + min(self.snd_wnd, self.cwnd) - self.snd_nxt
            if room <= 0:
                return False
            left = data_end - self.snd_nxt
            # mirrors _output's sender SWS avoidance so poll_at never promises work it won't do
            return not (room < self.mss and room < left and self.snd_nxt > self.snd_una)
        return self.fin_pending and self.snd_nxt == data_end and self.state in _FIN_STATES

    def _next_timer(self) -> float | None:
        ts = [
            t
            for t in (
                self.rtx_at,
                self.persist_at,
                self.ack_at,
                self.time_wait_at,
                self.fin_wait2_at,
            )
            if t is not None
        ]
        return min(ts) if ts else None

    def _emit(
        self,
        out: list[tuple[bytes, bytes, bytes]],
        seq: int,
        flags: int,
        payload: bytes | bytearray | memoryview = b"",
        options: bytes = b"",
        gso: int = 0,
    ) -> None:
        """Encode one segment into ``out``; ``gso`` (the MSS) marks a TSO super-segment, which
        goes out as ``(src, dst, segment, gso)`` with a partial checksum (see :class:`Tcp`)."""
        if flags & SYN:
            wnd = min(self._rcv_free(), 0xFFFF)
            self.last_adv_edge = self.rcv_nxt + wnd
        else:
            wnd = self._adv_wnd()
            self.last_adv_edge = self.rcv_nxt + (wnd << self.rcv_wscale)
        ack = self.rcv_nxt if flags & ACK else 0
        if self.ooo and self.sack_ok and not payload and flags == ACK:
            options = self._sack_option()
        if flags & ACK:
            self.ack_now = False
            self.unacked_segs = 0
            self.ack_at = None
        seg = encode_segment(
            self.local_ip,
            self.remote_ip,
            self.local_port,
            self.remote_port,
            seq,
            ack,
            flags,
            wnd,
            options,
            payload,
            partial=bool(gso),
        )
        if gso:
            out.append((self.local_ip, self.remote_ip, seg, gso))  # type: ignore[arg-type]
            self._tcp.counters["tso_segments_out"] += 1
        else:
            out.append((self.local_ip, self.remote_ip, seg))

    def _sack_option(self) -> bytes:
        """Up to 3 SACK blocks for a pure ACK (RFC 2018), the most recent arrival's first.

        Why only on pure ACKs: on data segments the blocks would eat into the MSS (and into
        every segment cut from a super-segment); ``_output`` therefore sends a pure ACK for
        every out-of-order arrival while SACK is on, even when data leaves in the same poll.
        Receiving SACK blocks is parsed but not acted on. On by default (``Tcp(sack=False)``
        turns it off): a Linux sender losing runs of segments at a full queue (a `tok connect
        --no-offload` TAP) recovers them within a round trip or two with SACK, and only by
        NewReno and RTOs without (docs/stack.md, "TCP").
        """
        blocks: list[list[int]] = []
        for k in sorted(self.ooo):
            end = k + len(self.ooo[k][0])
            if end == k:
                continue
            if blocks and k <= blocks[-1][1]:
                blocks[-1][1] = max(blocks[-1][1], end)
            else:
                blocks.append([k, end])
        if not blocks:
            return b""
        recent = self.last_ooo_seq
        blocks.sort(key=lambda b: (not b[0] <= recent < b[1], -b[0]))
        blocks = blocks[:3]
        opt = bytearray(b"\x01\x01")
        opt += bytes((5, 2 + 8 * len(blocks)))
        for start, end in blocks:
            opt += struct.pack("!II", start & _M32, end & _M32)
        return bytes(opt)

    def _segment_at(self, out: list[tuple[bytes, bytes, bytes]], seq: int, limit: int) -> int:
        """Send the data (and FIN) that starts at ``seq``, at most ``limit`` data bytes."""
        data_end = self.sbuf_seq + len(self.sbuf)
        n = max(0, min(limit, data_end - seq))
        flags = ACK
        if n:
            off = seq - self.sbuf_seq
            payload: bytes | memoryview = memoryview(self.sbuf)[off : off + n]
            if seq + n == data_end:
                flags |= PSH
        else:
            payload = b""
        if self.fin_pending and seq + n == self.fin_seq and self.state in _FIN_STATES:
            flags |= FIN
        if not n and not flags & FIN:
            return 0
        self._emit(out, seq, flags, payload, gso=self.mss if n > self.mss else 0)
        if isinstance(payload, memoryview):
            payload.release()
        return n + (1 if flags & FIN else 0)

    def _output(self, now: float, out: list[tuple[bytes, bytes, bytes]]) -> None:
        st = self.state
        if st in (CLOSED, LISTEN):
            return
        if st in (SYN_SENT, SYN_RECEIVED):
            if self.snd_nxt == self.iss:
                if st == SYN_SENT:
                    opts = _syn_options(self._mss_limit, self._tcp.wscale, self._tcp.sack)
                    self._emit(out, self.iss, SYN, b"", opts)
                else:
                    ws = self.rcv_wscale if self.snd_wscale or self.rcv_wscale else None
                    opts = _syn_options(self._mss_limit, ws, self.sack_ok)
                    self._emit(out, self.iss, SYN | ACK, b"", opts)
                if self.snd_max == self.iss:
                    self.rtt_seq, self.rtt_time = self.iss + 1, now
                self.snd_nxt = self.snd_max = self.iss + 1
                if self.rtx_at is None:
                    self.rtx_at = now + self.rto
            self.ack_now = False
            self.dupacks_to_send = 0
            return
        sent = False
        if self.rexmit_one:
            self.rexmit_one = False
            if self.snd_una < self.snd_max:
                self._segment_at(out, self.snd_una, self.mss)
                self._tcp.counters["segments_retransmitted"] += 1
                sent = True
        if st in _SEND_DATA_STATES:
            data_end = self.sbuf_seq + len(self.sbuf)
            if self.probe:
                self.probe = False
                if self.snd_wnd == 0 and self.snd_una < data_end:
                    self._segment_at(out, self.snd_una, 1)
                    self._tcp.counters["window_probes"] += 1
                    sent = True
            edge = self.snd_una + min(self.snd_wnd, self.cwnd)
            mss = self.mss
            # TSO: one super-segment of up to ``tso`` bytes (whole MSS multiples) per pass; not
            # below the classic 536-byte MSS, where a peer's kernel may refuse the gso_size
            size = self._tcp.tso // mss * mss if self._tcp.tso > mss >= 536 else mss
            if size > mss:
                # ... and at most a quarter of the peer's window: a receiver with a small
                # buffer (a slow reader behind a TAP) drops a 64 KB skb it has no memory for
                # as a whole, where it would take MSS-sized ones as the reader frees room; the
                # NAT's slow-reader test stalled on RTO backoff without this. Windows of
                # 256 KB and more (any bulk flow) keep full-size super-segments.
                size = max(mss, min(size, self.snd_wnd // 4 // mss * mss))
            while self.snd_nxt < data_end:
                room = edge - self.snd_nxt
                if room <= 0:
                    break
                left = data_end - self.snd_nxt
                n = min(size, left, room)
                if n < mss and n < left and self.snd_nxt > self.snd_una:
                    break  # sender SWS avoidance: wait for a full segment's room
                if self.rtt_seq is None and self.snd_nxt == self.snd_max:
                    self.rtt_seq, self.rtt_time = self.snd_nxt + n, now
                used = self._segment_at(out, self.snd_nxt, n)
                self.snd_nxt += used
                sent = True
            if self.fin_pending and self.snd_nxt == self.fin_seq and st in _FIN_STATES:
                self.snd_nxt += self._segment_at(out, self.snd_nxt, 0)
                sent = True
            if self.snd_nxt > self.snd_max:
                self.snd_max = self.snd_nxt
            if self.snd_max > self.snd_una:
                if self.rtx_at is None:
                    self.rtx_at = now + self.rto
            elif self.snd_wnd == 0 and self.snd_una < data_end and self.persist_at is None:
                self.persist_at = now + self.rto
        if self.dupacks_to_send:
            # one duplicate ACK rides on the data we just sent, unless SACK is on: a SACK
            # sender (Linux) detects a loss from SACKed data, not from counting duplicate
            # ACKs, and only pure ACKs carry our blocks; so then every out-of-order arrival
            # gets its own pure ACK, also while the program's data flows back (an echo)
            ride = 1 if sent and not (self.sack_ok and self.ooo) else 0
            for _ in range(self.dupacks_to_send - ride):
                self._emit(out, self.snd_nxt, ACK)
            self.dupacks_to_send = 0
            sent = True
        if self.ack_now and not sent:
            self._emit(out, self.snd_nxt, ACK)


class Tcp:
    """Every TCP socket of one stack interface: demux, listeners, timers, RSTs for strays.

    Bounds (each with a counter when hit): ``max_connections`` sockets, ``backlog`` per
    listener, ``max_time_wait`` connections in TIME-WAIT (the oldest is dropped early),
    ``ooo_segments`` out-of-order segments per connection, ``max_pending_rst`` queued RSTs.
    """

    def __init__(
        self,
        mss: int = 1360,
        *,
        recv_buffer: int = 256 * 1024,
        send_buffer: int = 256 * 1024,
        max_connections: int = 4096,
        time_wait: float = 2.0,
        max_time_wait: int = 512,
        fin_wait2: float = 60.0,
        ooo_segments: int = 512,
        max_retries: int = 10,
        syn_retries: int = 6,
        max_pending_rst: int = 256,
        sack: bool = True,
        seed: int | None = None,
        mss6: int | None = None,
    ) -> None:
        self.mss = mss
        self.mss6 = mss6
        """The MSS of IPv6 connections (None: ``mss`` for both families). A stack bound to
        one link MTU sets it 20 below ``mss``, as IPv6's header is 20 bytes longer."""
        self.recv_buffer = recv_buffer
        self.send_buffer = send_buffer
        self.max_connections = max_connections
        self.time_wait = time_wait
        self.max_time_wait = max_time_wait
        self.fin_wait2 = fin_wait2
        self.ooo_segments = ooo_segments
        self.max_retries = max_retries
        self.syn_retries = syn_retries
        self.max_pending_rst = max_pending_rst
        self.sack = sack
        self.tso = 0
        """Bytes per TSO super-segment (0: off). Set by ``Interface(tso=True)``; then ``poll``
        may return ``(src, dst, segment, mss)`` 4-tuples whose checksum is partial."""
        self._rng = random.Random(seed) if seed is not None else random.SystemRandom()
        # smallest shift that lets the whole receive buffer be advertised (RFC 7323 §2.2)
        shift = 0
        while (recv_buffer >> shift) > 0xFFFF and shift < 14:
            shift += 1
        self.wscale = shift
        self.conns: dict[tuple[bytes, int, bytes, int], Connection] = {}
        self.listeners: dict[tuple[bytes | None, int], Listener] = {}
        self._time_wait: set[Connection] = set()
        self._out: list[tuple[bytes, bytes, bytes]] = []
        # poll() visits only the connections touched since the last poll (``_dirty``) and those
        # whose timer is due (a heap of (time, n, conn); an entry is current while the
        # connection is alive and its ``_heap_time`` is that time, stale ones are skipped).
        self._dirty: set[Connection] = set()
        self._changed: set[Connection] = set()
        self._heap: list[tuple[float, int, Connection]] = []
        self._heap_n = itertools.count()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ socket API

    def listen(self, local_ip: bytes | None, port: int, backlog: int = 128) -> Listener:
        """Accept connections to ``port`` on ``local_ip`` (None: any of our addresses)."""
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        if (local_ip, port) in self.listeners:
            raise OSError(errno.EADDRINUSE, f"port {port} already has a listener")
        lst = Listener(self, local_ip, port, max(1, backlog))
        self.listeners[(local_ip, port)] = lst
        return lst

    def listen_any(self, backlog: int = 128) -> Listener:
        """Accept SYNs to *any* address and port no other listener takes, answering from the
        address and port the peer asked for: the NAT forwarder's "accept any destination"
        mode (``atenet.router.nat``), which decides which SYNs reach this stack."""
        if (None, 0) in self.listeners:
            raise OSError(errno.EADDRINUSE, "an any-destination listener exists")
        lst = Listener(self, None, 0, max(1, backlog))
        self.listeners[(None, 0)] = lst
        return lst

    def connect(
        self, local_ip: bytes, remote_ip: bytes, remote_port: int, now: float
    ) -> Connection:
        """Start an active open from an ephemeral port; the SYN leaves on the next poll."""
        if len(local_ip) != len(remote_ip) or len(local_ip) not in (4, 16):
            raise ValueError("local and remote address must both be IPv4 or both IPv6")
        if not 0 < remote_port < 65536:
            raise ValueError(f"port {remote_port} out of range")
        if len(self.conns) >= self.max_connections:
            self.counters["connection_limit"] += 1
            raise OSError(errno.EMFILE, "too many TCP connections")
        start = self._rng.randrange(len(EPHEMERAL))
        for i in range(len(EPHEMERAL)):
            port = EPHEMERAL[(start + i) % len(EPHEMERAL)]
            key = (local_ip, port, remote_ip, remote_port)
            if key not in self.conns:
                break
        else:
            raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port")
        conn = Connection(self, local_ip, port, remote_ip, remote_port)
        conn.state = SYN_SENT
        conn.snd_wscale = 0
        self.conns[key] = conn
        self._dirty.add(conn)
        return conn

    # ------------------------------------------------------------------ shell interface

    def on_packet(
        self, src_ip: bytes, dst_ip: bytes, segment: bytes, now: float, checked: bool = False
    ) -> None:
        """One TCP segment addressed to us (IP header already removed).

        ``checked``: the sender left the checksum to "the hardware" (a virtio-net packet with
        ``F_NEEDS_CSUM``/``F_DATA_VALID``, e.g. a GRO super-segment from the local kernel), so
        it is not verified here — as Linux trusts ``CHECKSUM_PARTIAL`` / ``UNNECESSARY``.
        """
        n = len(segment)
        if len(src_ip) == 4 and len(dst_ip) == 4:
            ph = pseudo_header_v4(src_ip, dst_ip, PROTO_TCP, n)
        elif len(src_ip) == 16 and len(dst_ip) == 16:
            ph = pseudo_header_v6(src_ip, dst_ip, PROTO_TCP, n)
        else:
            self.counters["bad_address"] += 1
            return
        if n < 20:
            self.counters["malformed"] += 1
            return
        if not checked and not verify(segment, ph):
            self.counters["bad_checksum"] += 1
            return
        seg = parse_segment(segment)
        if seg is None:
            self.counters["malformed"] += 1
            return
        self.counters["segments_in"] += 1
        conn = self.conns.get((dst_ip, seg.dport, src_ip, seg.sport))
        if (
            conn is not None
            and conn.state == TIME_WAIT
            and seg.flags & (SYN | ACK | RST) == SYN
            and _unwrap(seg.seq, conn.rcv_nxt) > conn.rcv_nxt
        ):
            # RFC 9293 §3.6.1: a new SYN above the old sequence space may reopen the 4-tuple
            self.counters["time_wait_reused"] += 1
            conn._die(None)
            conn = None
        if conn is not None:
            conn._on_segment(seg, now)
            self._dirty.add(conn)
            self._changed.add(conn)
            return
        lst = (
            self.listeners.get((dst_ip, seg.dport))
            or self.listeners.get((None, seg.dport))
            or self.listeners.get((None, 0))  # listen_any()
        )
        if lst is not None and lst.open:
            self._on_listener(lst, src_ip, dst_ip, seg, now)
        else:
            self._reset_stray(src_ip, dst_ip, seg)

    def poll(self, now: float) -> list[tuple[bytes, bytes, bytes]]:
        """Run due timers; every segment to send as (src_ip, dst_ip, segment)."""
        out: list[tuple[bytes, bytes, bytes]] = []
        todo = {c for c in self._dirty if self.conns.get(c.key) is c}
        self._dirty.clear()
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, conn = heapq.heappop(heap)
            if conn._heap_time == t and self.conns.get(conn.key) is conn:
                conn._heap_time = None
                todo.add(conn)
        self._changed |= todo
        for conn in todo:
            conn._on_timers(now)
            conn._output(now, out)
            if conn.state != CLOSED:
                t = conn._next_timer()
                if t != conn._heap_time:
                    conn._heap_time = t  # None: any entry left in the heap is stale
                    if t is not None:
                        heapq.heappush(heap, (t, next(self._heap_n), conn))
        if len(heap) > 4 * len(self.conns) + 1024:  # too many stale entries: rebuild
            self._heap = [e for e in heap if e[2]._heap_time == e[0] and e[2].state != CLOSED]
            heapq.heapify(self._heap)
        if self._out:  # RSTs queued by on_packet, abort() and the timers above
            out = self._out + out
            self._out = []
        self.counters["segments_out"] += len(out)
        return out

    def poll_at(self) -> float | None:
        """When :meth:`poll` next has work (0.0: now; None: only new input creates work)."""
        if self._out:
            return 0.0
        best: float | None = None
        for conn in self._dirty:
            if conn.state == CLOSED:
                continue
            if conn._wants_output():
                return 0.0
            t = conn._next_timer()
            if t is not None and (best is None or t < best):
                best = t
        heap = self._heap
        while heap:
            t, _, conn = heap[0]
            if conn._heap_time == t and self.conns.get(conn.key) is conn:
                return t if best is None else min(t, best)
            heapq.heappop(heap)
        return best

    def host_unreachable(self, through: Callable[[bytes], bool]) -> int:
        """The link layer gave up reaching some next hops: every connection still opening
        (SYN_SENT) to a remote address for which ``through(remote_ip)`` is true fails with
        EHOSTUNREACH; the shell hears of it through :meth:`take_changed`. How many failed."""
        failed = [c for c in self.conns.values() if c.state == SYN_SENT and through(c.remote_ip)]
        for conn in failed:
            conn._die(errno.EHOSTUNREACH)
            self._changed.add(conn)
        self.counters["host_unreachable"] += len(failed)
        return len(failed)

    def take_changed(self) -> set[Connection]:
        """Connections whose state, buffers or error may have changed since the last call.

        Why: the shell (the mio bus) wakes only the sockets named here instead of scanning
        every socket after each frame. A connection is named when a segment reached it or a
        poll ran its timers or output; new connections show up through their listener.
        """
        changed, self._changed = self._changed, set()
        return changed

    # ------------------------------------------------------------------ internals

    def _queue_out(self, src: bytes, dst: bytes, seg: bytes) -> None:
        if len(self._out) >= self.max_pending_rst:
            self.counters["rst_dropped"] += 1
            return
        self._out.append((src, dst, seg))

    def _forget(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        self._time_wait.discard(conn)
        self._dirty.discard(conn)
        lst = conn._listener
        if lst is not None:
            lst._children.discard(conn)
            if conn in lst._queue and conn.state == CLOSED and conn.error is None:
                lst._queue.remove(conn)  # died quietly before accept: nothing to hand out

    def _entered_time_wait(self, conn: Connection) -> None:
        self._time_wait.add(conn)
        if len(self._time_wait) > self.max_time_wait:
            oldest = min(self._time_wait, key=lambda c: c.time_wait_at or 0.0)
            self.counters["time_wait_evicted"] += 1
            oldest._die(None)

    def _reset_stray(self, src_ip: bytes, dst_ip: bytes, seg: Segment) -> None:
        """RFC 9293 §3.10.7.1: a segment for no socket gets an RST (never one for an RST)."""
        if seg.flags & RST:
            return
        self.counters["rst_sent_no_socket"] += 1
        if seg.flags & ACK:
            rst = encode_segment(dst_ip, src_ip, seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            seg_len = len(seg.payload) + (1 if seg.flags & SYN else 0) + (seg.flags & FIN)
            rst = encode_segment(
                dst_ip, src_ip, seg.dport, seg.sport, 0, seg.seq + seg_len, RST | ACK, 0
            )
        self._queue_out(dst_ip, src_ip, rst)

    def _on_listener(
        self, lst: Listener, src_ip: bytes, dst_ip: bytes, seg: Segment, now: float
    ) -> None:
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            self._reset_stray(src_ip, dst_ip, seg)
            return
        if not seg.flags & SYN:
            return
        if len(lst._children) >= lst.backlog:
            self.counters["backlog_full"] += 1
            return
        if len(self.conns) >= self.max_connections:
            self.counters["connection_limit"] += 1
            return
        conn = Connection(self, dst_ip, seg.dport, src_ip, seg.sport, listener=lst)
        conn.irs = seg.seq
        conn.rcv_nxt = seg.seq + 1
        conn._peer_options(seg)
        conn.state = SYN_RECEIVED
        conn.snd_wnd = seg.wnd
        lst._children.add(conn)
        self.conns[conn.key] = conn
        self._dirty.add(conn)
