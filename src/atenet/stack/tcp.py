"""TCP for the mio stack, sans-I/O (RFC 9293 core; smoltcp's shape: on_packet/poll/poll_at).

Why our own: see ../shared/research/stack-and-nat.md. This first cut is deliberately small:
active/passive open, data both ways with bounded buffers, retransmission with an RFC 6298 RTO
(Karn, doubling backoff, min 200 ms, max 60 s), fast retransmit on three duplicate ACKs, FIN
and RST close paths, a short bounded TIME-WAIT, MSS from the interface MTU and a keyed-hash ISN
(RFC 6528). Out-of-order segments are dropped (the peer retransmits); window scaling, delayed
ACK, NewReno recovery, SACK and persist timer are not done yet.
"""

from __future__ import annotations

import hashlib
import os
import struct

from atenet.wire.checksum import checksum, pseudo_header_v4, pseudo_header_v6, verify

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MIN_RTO, MAX_RTO, MAX_RETRIES = 0.2, 60.0, 8
TIME_WAIT = 2.0
MAX_OOO = 64
MOD = 1 << 32


def _lt(a: int, b: int) -> bool:
    """Sequence-space a < b (RFC 9293 §3.4 modular comparison)."""
    return 0 < (b - a) % MOD < 1 << 31


def _le(a: int, b: int) -> bool:
    return a == b or _lt(a, b)


class Conn:
    """One TCP connection: state, buffers and timers; the app reads/writes through it."""

    def __init__(self, tcp: Tcp, lip: bytes, lport: int, rip: bytes, rport: int, iss: int) -> None:
        self.tcp, self.lip, self.lport, self.rip, self.rport = tcp, lip, lport, rip, rport
        self.state = "CLOSED"
        self.iss = iss
        self.snd_una = self.snd_nxt = iss
        self.snd_max = iss  # highest sequence sent: snd_nxt rewinds on RTO, ACKs up to here count
        self.snd_wnd = 1
        self.rcv_nxt = 0
        self.sendbuf = bytearray()  # bytes from snd_una on
        self.recvbuf = bytearray()
        self.fin_queued = False
        self.fin_sent = False
        self.fin_received = False
        self.mss = tcp.mss
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = 1.0
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.rtx_at: float | None = None
        self.retries = 0
        self.dupacks = 0
        self.ooo: dict[int, bytes] = {}  # out-of-order segments by sequence, at most MAX_OOO
        self.cwnd = min(4 * self.mss, max(2 * self.mss, 4380))  # RFC 5681 initial window
        self.ssthresh = 1 << 30
        self.recover: int | None = None  # NewReno (RFC 6582): snd_nxt when recovery began
        self.rtx_one = False  # retransmit the segment at snd_una on the next poll
        self.ack_due = False
        self.tw_until: float | None = None
        self.error: str | None = None
        self.listener: Listener | None = None
        self.snd_ws = 0  # peer's window shift (RFC 7323), 0 unless both sides sent WS
        self.rcv_ws = 0  # our shift, likewise
        self.ws_ok = True  # may our SYN(-ACK) carry WS? (a SYN-ACK only if the SYN did)

    # --- application side ---
    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.lip, self.lport, self.rip, self.rport)

    @property
    def connected(self) -> bool:
        return self.state in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2")

    @property
    def readable(self) -> bool:
        return bool(self.recvbuf) or self.fin_received or self.error is not None

    @property
    def send_space(self) -> int:
        return max(0, self.tcp.sndbuf - len(self.sendbuf))

    def send(self, data: bytes) -> int:
        if self.fin_queued or self.state not in (
            "SYN_SENT",
            "SYN_RECEIVED",
            "ESTABLISHED",
            "CLOSE_WAIT",
        ):
            raise OSError(32, "EPIPE")
        n = min(len(data), self.send_space)
        self.sendbuf += memoryview(data)[:n]
        return n

    def recv(self, n: int) -> bytes:
        out = bytes(self.recvbuf[:n])
        del self.recvbuf[:n]
        if out and self.state != "CLOSED":
            self.ack_due = True  # window update
        return out

    def shutdown(self) -> None:
        if not self.fin_queued:
            self.fin_queued = True

    def close(self) -> None:
        if self.state in ("SYN_SENT", "LISTEN"):
            self._drop(None)
        else:
            self.shutdown()

    def abort(self) -> None:
        if self.state not in ("CLOSED", "SYN_SENT", "TIME_WAIT"):
            self.tcp._emit(self, self.snd_nxt, 0, RST | ACK, b"")
        self._drop(None)

    # --- internals ---
    def _drop(self, err: str | None) -> None:
        if err and not self.error:
            self.error = err
        self.state = "CLOSED"
        self.tcp.conns.pop(self.key, None)

    @property
    def rcv_wnd(self) -> int:
        return max(0, self.tcp.rcvbuf - len(self.recvbuf))

    def _ack_rtt(self, ack: int, now: float) -> None:
        if self.rtt_seq is not None and _le(self.rtt_seq, ack):
            r = now - self.rtt_time
            if self.srtt is None:
                self.srtt, self.rttvar = r, r / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
                self.srtt = 0.875 * self.srtt + 0.125 * r
            self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))
            self.rtt_seq = None


class Listener:
    def __init__(self, ip: bytes, port: int, backlog: int) -> None:
        self.ip, self.port, self.backlog = ip, port, max(1, backlog)
        self.pending: list[Conn] = []  # established, not yet accepted
        self.half = 0


class Tcp:
    """All TCP sockets of one interface. Feed on_packet, drain poll, wake at poll_at."""

    def __init__(
        self,
        mtu: int = 1500,
        sndbuf: int = 512 * 1024,
        rcvbuf: int = 256 * 1024,
        max_conns: int = 1024,
        secret: bytes | None = None,
    ) -> None:
        self.mss_v4 = mtu - 40
        self.mss = mtu - 60  # conservative for v6
        self.sndbuf, self.rcvbuf, self.max_conns = sndbuf, rcvbuf, max_conns
        self.wscale = 0  # smallest shift that lets the window cover rcvbuf
        while (0xFFFF << self.wscale) < rcvbuf and self.wscale < 14:
            self.wscale += 1
        self.secret = secret or os.urandom(16)
        self.conns: dict[tuple[bytes, int, bytes, int], Conn] = {}
        self.listeners: dict[tuple[bytes, int], Listener] = {}
        self.out: list[tuple[bytes, bytes, bytes]] = []
        self.counters: dict[str, int] = {
            k: 0
            for k in (
                "rx",
                "tx",
                "bad_checksum",
                "malformed",
                "rst_sent",
                "retransmits",
                "fast_retransmits",
                "backlog_full",
                "conn_limit",
                "ooo_dropped",
            )
        }
        self._eph = 49152

    def _isn(self, lip: bytes, lport: int, rip: bytes, rport: int, now: float) -> int:
        h = hashlib.blake2s(lip + rip + struct.pack("!HH", lport, rport), key=self.secret).digest()
        return (int.from_bytes(h[:4], "big") + int(now * 250_000)) % MOD

    # --- socket API ---
    def listen(self, local_ip: bytes, port: int, backlog: int = 16) -> Listener:
        lst = Listener(local_ip, port, backlog)
        self.listeners[(local_ip, port)] = lst
        return lst

    def accept(self, listener: Listener) -> Conn | None:
        return listener.pending.pop(0) if listener.pending else None

    def connect(self, local_ip: bytes, remote_ip: bytes, remote_port: int, now: float) -> Conn:
        if len(self.conns) >= self.max_conns:
            self.counters["conn_limit"] += 1
            raise OSError(24, "EMFILE")
        for _ in range(16384):
            self._eph = 49152 + (self._eph - 49152 + 1) % 16384
            if (local_ip, self._eph, remote_ip, remote_port) not in self.conns:
                break
        else:
            raise OSError(99, "EADDRNOTAVAIL")
        lport = self._eph
        c = Conn(
            self,
            local_ip,
            lport,
            remote_ip,
            remote_port,
            self._isn(local_ip, lport, remote_ip, remote_port, now),
        )
        c.state = "SYN_SENT"
        self.conns[c.key] = c
        self._emit(c, c.iss, 0, SYN, b"", mss=True)
        c.snd_nxt = (c.iss + 1) % MOD
        c.rtt_seq, c.rtt_time = c.snd_nxt, now
        c.rtx_at = now + c.rto
        return c

    # --- wire ---
    def _emit(
        self, c: Conn, seq: int, ack: int | None, flags: int, payload: bytes, mss: bool = False
    ) -> None:
        self._send(
            c.lip,
            c.lport,
            c.rip,
            c.rport,
            seq,
            c.rcv_nxt if ack is None else ack,
            flags,
            min(c.rcv_wnd, 0xFFFF) if flags & SYN else min(c.rcv_wnd >> c.rcv_ws, 0xFFFF),
            payload,
            self._mss_for(c.lip) if mss else 0,
            self.wscale if mss and c.ws_ok else -1,
        )

    def _mss_for(self, ip: bytes) -> int:
        return self.mss_v4 if len(ip) == 4 else self.mss

    def _send(
        self,
        lip: bytes,
        lport: int,
        rip: bytes,
        rport: int,
        seq: int,
        ack: int,
        flags: int,
        wnd: int,
        payload: bytes,
        mss: int = 0,
        ws: int = -1,
    ) -> None:
        opts = struct.pack("!BBH", 2, 4, mss) if mss else b""
        if ws >= 0:
            opts += struct.pack("!BBBB", 1, 3, 3, ws)
        hlen = 20 + len(opts)
        hdr = (
            bytearray(
                struct.pack(
                    "!HHIIBBHHH",
                    lport,
                    rport,
                    seq % MOD,
                    ack % MOD,
                    (hlen // 4) << 4,
                    flags,
                    wnd,
                    0,
                    0,
                )
            )
            + opts
        )
        seg = hdr + payload
        ph = (pseudo_header_v4 if len(lip) == 4 else pseudo_header_v6)(lip, rip, 6, len(seg))
        struct.pack_into("!H", seg, 16, checksum(seg, ph))
        self.out.append((lip, rip, bytes(seg)))
        self.counters["tx"] += 1
        if flags & RST:
            self.counters["rst_sent"] += 1

    def on_packet(self, src_ip: bytes, dst_ip: bytes, segment: bytes, now: float) -> None:
        """One TCP segment from IP: checksum, demux, state machine. Never raises on junk."""
        self.counters["rx"] += 1
        if len(segment) < 20 or len(src_ip) != len(dst_ip) or len(src_ip) not in (4, 16):
            self.counters["malformed"] += 1
            return
        ph = (pseudo_header_v4 if len(src_ip) == 4 else pseudo_header_v6)(
            src_ip, dst_ip, 6, len(segment)
        )
        if not verify(segment, ph):
            self.counters["bad_checksum"] += 1
            return
        sport, dport, seq, ack, off, flags, wnd = struct.unpack_from("!HHIIBBH", segment)
        hlen = (off >> 4) * 4
        if hlen < 20 or hlen > len(segment):
            self.counters["malformed"] += 1
            return
        payload = bytes(segment[hlen:])
        peer_mss = 536
        peer_ws = -1
        opts = segment[20:hlen]
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            if kind == 2 and opts[i + 1] == 4 and i + 4 <= len(opts):
                peer_mss = max(64, int.from_bytes(opts[i + 2 : i + 4], "big"))
            elif kind == 3 and opts[i + 1] == 3 and i + 3 <= len(opts):
                peer_ws = min(14, opts[i + 2])
            i += opts[i + 1]
        c = self.conns.get((dst_ip, dport, src_ip, sport))
        if c is None:
            lst = self.listeners.get((dst_ip, dport))
            if lst is not None and flags & (SYN | ACK | RST) == SYN:
                self._syn(lst, dst_ip, dport, src_ip, sport, seq, wnd, peer_mss, peer_ws, now)
                return
            self._reset_for(dst_ip, dport, src_ip, sport, seq, ack, flags, len(payload))
            return
        if c.state == "SYN_SENT" and flags & SYN and peer_ws >= 0:
            c.snd_ws, c.rcv_ws = peer_ws, self.wscale
        if not flags & SYN:
            wnd <<= c.snd_ws
        self._segment(c, seq, ack, flags, wnd, payload, peer_mss, now)

    def _reset_for(self, lip, lport, rip, rport, seq, ack, flags, plen) -> None:
        if flags & RST:
            return
        if flags & ACK:
            self._send(lip, lport, rip, rport, ack, 0, RST, 0, b"")
        else:
            ln = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            self._send(lip, lport, rip, rport, 0, seq + ln, RST | ACK, 0, b"")

    def _syn(self, lst: Listener, lip, lport, rip, rport, seq, wnd, mss, ws, now) -> None:
        if lst.half + len(lst.pending) >= lst.backlog or len(self.conns) >= self.max_conns:
            self.counters["backlog_full"] += 1
            return
        c = Conn(self, lip, lport, rip, rport, self._isn(lip, lport, rip, rport, now))
        c.state, c.listener = "SYN_RECEIVED", lst
        if ws >= 0:
            c.snd_ws, c.rcv_ws = ws, self.wscale
        else:
            c.ws_ok = False
        c.rcv_nxt = (seq + 1) % MOD
        c.snd_wnd, c.mss = wnd, min(self._mss_for(lip), mss)
        lst.half += 1
        self.conns[c.key] = c
        self._emit(c, c.iss, None, SYN | ACK, b"", mss=True)
        c.snd_nxt = (c.iss + 1) % MOD
        c.rtx_at = now + c.rto

    def _established(self, c: Conn) -> None:
        c.state = "ESTABLISHED"
        if c.listener is not None:
            c.listener.half -= 1
            c.listener.pending.append(c)
            c.listener = None

    def _segment(self, c: Conn, seq, ack, flags, wnd, payload, mss, now) -> None:
        if c.state == "SYN_SENT":
            if flags & ACK and ack != (c.iss + 1) % MOD:
                if not flags & RST:
                    self._send(c.lip, c.lport, c.rip, c.rport, ack, 0, RST, 0, b"")
                return
            if flags & RST:
                if flags & ACK:
                    c._drop("ECONNREFUSED")
                return
            if flags & SYN and flags & ACK:
                c.rcv_nxt = (seq + 1) % MOD
                c.snd_una = ack
                c.snd_wnd, c.mss = wnd, min(self._mss_for(c.lip), mss)
                c.retries, c.rtx_at = 0, None
                c._ack_rtt(ack, now)
                c.state = "ESTABLISHED"
                c.ack_due = True
            return
        # acceptability (RFC 9293 §3.10.7.4), simplified: in-window start or zero-length at rcv_nxt
        seglen = len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wend = (c.rcv_nxt + max(c.rcv_wnd, 1)) % MOD
        ok = (
            (_le(c.rcv_nxt, seq) and _lt(seq, wend))
            or (seglen > 0 and _lt(c.rcv_nxt, (seq + seglen) % MOD) and _le(seq, c.rcv_nxt))
            or (seglen == 0 and seq == c.rcv_nxt)
        )
        if flags & RST:
            if seq == c.rcv_nxt:
                if c.state == "SYN_RECEIVED" and c.listener is not None:
                    c.listener.half -= 1
                c._drop(None if c.state in ("TIME_WAIT", "LAST_ACK") else "ECONNRESET")
            elif ok:
                self._emit(c, c.snd_nxt, None, ACK, b"")  # challenge ACK (RFC 5961)
            return
        if not ok:
            self._emit(c, c.snd_nxt, None, ACK, b"")
            return
        if flags & SYN:
            if c.state == "SYN_RECEIVED" and seq == (c.rcv_nxt - 1) % MOD:
                self._emit(c, c.iss, None, SYN | ACK, b"", mss=True)  # retransmitted SYN
            else:
                self._emit(c, c.snd_nxt, None, ACK, b"")
            return
        if not flags & ACK:
            return
        if c.state == "SYN_RECEIVED":
            if ack != (c.iss + 1) % MOD:
                self._send(c.lip, c.lport, c.rip, c.rport, ack, 0, RST, 0, b"")
                return
            c.snd_una, c.snd_wnd, c.retries, c.rtx_at = ack, wnd, 0, None
            c._ack_rtt(ack, now)
            self._established(c)
        # ACK processing
        if _lt(c.snd_max, c.snd_nxt):
            c.snd_max = c.snd_nxt
        if _lt(c.snd_una, ack) and _le(ack, c.snd_max):
            if _lt(c.snd_nxt, ack):
                c.snd_nxt = ack
            n = (ack - c.snd_una) % MOD
            data_acked = min(n, len(c.sendbuf))
            del c.sendbuf[:data_acked]
            c.snd_una = ack
            c._ack_rtt(ack, now)
            c.retries, c.dupacks = 0, 0
            if c.recover is not None:
                if _le(c.recover, ack):  # full ACK: leave recovery
                    c.recover = None
                    c.cwnd = max(min(c.ssthresh, (c.snd_nxt - ack) % MOD + c.mss), c.mss)
                else:  # partial ACK: the next hole, deflate by what was acked
                    c.rtx_one = True
                    c.cwnd = max(c.cwnd - n + c.mss, c.mss)
            elif c.cwnd < c.ssthresh:
                c.cwnd += min(n, c.mss)
            else:
                c.cwnd += max(1, c.mss * c.mss // c.cwnd)
            c.rtx_at = now + c.rto if c.snd_una != c.snd_nxt else None
            if c.fin_sent and ack == c.snd_nxt:
                if c.state == "FIN_WAIT_1":
                    c.state = "FIN_WAIT_2"
                elif c.state == "CLOSING":
                    c.state, c.tw_until = "TIME_WAIT", now + TIME_WAIT
                elif c.state == "LAST_ACK":
                    c._drop(None)
                    return
        elif ack == c.snd_una and not payload and c.snd_una != c.snd_nxt and wnd == c.snd_wnd:
            c.dupacks += 1
            if c.recover is not None:
                c.cwnd += c.mss  # each dupack: a segment left the network
            elif c.dupacks == 3:
                self.counters["fast_retransmits"] += 1
                flight = (c.snd_nxt - c.snd_una) % MOD
                c.ssthresh = max(flight // 2, 2 * c.mss)
                c.cwnd = c.ssthresh + 3 * c.mss
                c.recover = c.snd_nxt
                c.rtx_one = True
                c.rtt_seq = None
        elif _lt(c.snd_max, ack):
            self._emit(c, c.snd_nxt, None, ACK, b"")
            return
        c.snd_wnd = wnd
        # data
        if payload and c.state in ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2"):
            if seq != c.rcv_nxt:
                skip = (c.rcv_nxt - seq) % MOD
                if _lt(seq, c.rcv_nxt) and skip < len(payload):
                    payload = payload[skip:]
                    seq = c.rcv_nxt
                else:
                    if len(c.ooo) < MAX_OOO and seq not in c.ooo:  # keep it for reassembly
                        ahead = (seq - c.rcv_nxt) % MOD
                        c.ooo[seq] = payload[: max(0, c.rcv_wnd - ahead)]
                    else:
                        self.counters["ooo_dropped"] += 1
                    self._emit(c, c.snd_nxt, None, ACK, b"")  # immediate dupack (RFC 5681 §4.2)
                    return
            room = c.rcv_wnd
            take = payload[:room]
            c.recvbuf += take
            c.rcv_nxt = (c.rcv_nxt + len(take)) % MOD
            c.ack_due = True
            if len(take) < len(payload):
                return
            seq = (seq + len(take)) % MOD
            if c.ooo and self._drain_ooo(c):
                return  # the FIN (if any) belongs before queued data: the peer resends it
        elif payload:
            c.ack_due = True
        if flags & FIN and seq == c.rcv_nxt and not c.fin_received:
            c.fin_received = True
            c.rcv_nxt = (c.rcv_nxt + 1) % MOD
            c.ack_due = True
            if c.state == "ESTABLISHED":
                c.state = "CLOSE_WAIT"
            elif c.state == "FIN_WAIT_1":
                c.state = "CLOSING"
            elif c.state == "FIN_WAIT_2":
                c.state, c.tw_until = "TIME_WAIT", now + TIME_WAIT

    def _drain_ooo(self, c: Conn) -> bool:
        """Move queued out-of-order segments that now fit onto the receive buffer."""
        moved = False
        progress = True
        while c.ooo and progress:
            progress = False
            for k in list(c.ooo):
                d = c.ooo[k]
                off = (c.rcv_nxt - k) % MOD
                if not _le(k, c.rcv_nxt):
                    continue
                del c.ooo[k]
                if off < len(d):
                    take = d[off : off + c.rcv_wnd]
                    c.recvbuf += take
                    c.rcv_nxt = (c.rcv_nxt + len(take)) % MOD
                    moved = progress = True
        return moved

    def poll(self, now: float) -> list[tuple[bytes, bytes, bytes]]:
        """Timers and pending output of every connection; returns segments to send."""
        for c in list(self.conns.values()):
            if c.state == "TIME_WAIT":
                if c.tw_until is not None and now >= c.tw_until:
                    c._drop(None)
                elif c.ack_due:
                    self._emit(c, c.snd_nxt, None, ACK, b"")
                    c.ack_due = False
                continue
            if c.rtx_at is not None and now >= c.rtx_at:
                c.retries += 1
                if c.retries > MAX_RETRIES:
                    c._drop("ETIMEDOUT")
                    if c.listener is not None:
                        c.listener.half -= 1
                    continue
                if c.state == "SYN_SENT":
                    c.rto = min(MAX_RTO, c.rto * 2)
                    self._emit(c, c.iss, 0, SYN, b"", mss=True)
                    c.rtt_seq = None  # Karn
                    self.counters["retransmits"] += 1
                    c.rtx_at = now + c.rto
                    continue
                if c.state == "SYN_RECEIVED":
                    c.rto = min(MAX_RTO, c.rto * 2)
                    self._emit(c, c.iss, None, SYN | ACK, b"", mss=True)
                    self.counters["retransmits"] += 1
                    c.rtx_at = now + c.rto
                    continue
                c.rto = min(MAX_RTO, c.rto * 2)  # backoff; Karn: no sample from retransmits
                c.rtt_seq = None
                flight = (c.snd_nxt - c.snd_una) % MOD
                c.ssthresh = max(flight // 2, 2 * c.mss)
                c.cwnd, c.recover, c.rtx_one = c.mss, None, False
                c.snd_nxt = c.snd_una
                if c.fin_sent:
                    c.fin_sent = False
                self.counters["retransmits"] += 1
                c.rtx_at = now + c.rto
            if c.state in ("SYN_SENT", "SYN_RECEIVED", "CLOSED"):
                continue
            self._transmit(c, now)
            if c.ack_due:
                self._emit(c, c.snd_nxt, None, ACK, b"")
                c.ack_due = False
        out, self.out = self.out, []
        return out

    def _transmit(self, c: Conn, now: float) -> None:
        if c.rtx_one and c.snd_una != c.snd_nxt:
            n = min(c.mss, len(c.sendbuf))
            fin = n == len(c.sendbuf) and c.fin_sent
            self._emit(c, c.snd_una, None, ACK | (FIN if fin else 0), bytes(c.sendbuf[:n]))
            c.rtx_at = now + c.rto
        c.rtx_one = False
        wnd_end = (c.snd_una + max(min(c.snd_wnd, c.cwnd), 0)) % MOD
        while True:
            off = (c.snd_nxt - c.snd_una) % MOD
            avail = len(c.sendbuf) - off
            room = (wnd_end - c.snd_nxt) % MOD if _le(c.snd_nxt, wnd_end) else 0
            n = min(avail, room, c.mss)
            if c.snd_wnd == 0 and avail > 0 and c.snd_una == c.snd_nxt and c.rtx_at is None:
                n = 1  # zero-window probe, paced by the retransmission timer
            flags = ACK
            if n > 0 and off + n == len(c.sendbuf):
                flags |= PSH
            fin = (
                c.fin_queued
                and not c.fin_sent
                and off + n == len(c.sendbuf)
                and c.state in ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "CLOSING", "LAST_ACK")
            )
            if n <= 0 and not fin:
                return
            if fin:
                flags |= FIN
            self._emit(c, c.snd_nxt, None, flags, bytes(c.sendbuf[off : off + n]))
            c.ack_due = False
            if c.rtt_seq is None and n > 0 and off + n > 0:
                c.rtt_seq, c.rtt_time = (c.snd_nxt + n) % MOD, now
            c.snd_nxt = (c.snd_nxt + n + (1 if fin else 0)) % MOD
            if _lt(c.snd_max, c.snd_nxt):
                c.snd_max = c.snd_nxt
            if fin:
                c.fin_sent = True
                if c.state == "ESTABLISHED":
                    c.state = "FIN_WAIT_1"
                elif c.state == "CLOSE_WAIT":
                    c.state = "LAST_ACK"
            if c.rtx_at is None:
                c.rtx_at = now + c.rto
            if fin or n == 0:
                return

    def poll_at(self) -> float | None:
        """Earliest time poll must run again (0.0 = now: output or ACK pending)."""
        best: float | None = None
        for c in self.conns.values():
            if c.ack_due or (
                c.state in ("ESTABLISHED", "CLOSE_WAIT")
                and (c.snd_nxt - c.snd_una) % MOD < len(c.sendbuf)
                and c.snd_wnd > 0
            ):
                return 0.0
            if c.fin_queued and not c.fin_sent and c.state in ("ESTABLISHED", "CLOSE_WAIT"):
                return 0.0
            for t in (c.rtx_at, c.tw_until):
                if t is not None and (best is None or t < best):
                    best = t
        return best
