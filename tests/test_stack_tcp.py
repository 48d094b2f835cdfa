"""The mio stack's TCP, sans-I/O: two ``Tcp`` instances wired back to back by a tiny pump.

Time is injected: the pump advances ``now`` to the next ``poll_at`` when nothing is in flight, so
retransmission timing is asserted exactly without sleeping.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet.stack.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    Tcp,
    encode_segment,
    parse_segment,
)
from atenet.wire.checksum import pseudo_header_v4, verify

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A6 = bytes(15) + b"\x01"
B6 = bytes(15) + b"\x02"


class Pump:
    """Delivers a's output to b and back; ``fault`` may drop/duplicate/reorder/corrupt."""

    def __init__(self, seed: int = 0, fault=None, **kw) -> None:
        self.a = Tcp(seed=seed * 2 + 1, **kw)
        self.b = Tcp(seed=seed * 2 + 2, **kw)
        self.now = 0.0
        self.fault = fault
        self.log: list[tuple[float, str, bytes]] = []  # (time, "a>b"/"b>a", segment)
        self.held: list[tuple[Tcp, bytes, bytes, bytes]] = []

    def _deliver(self, dst: Tcp, name: str, segs) -> None:
        for s, d, seg in segs:
            self.log.append((self.now, name, seg))
            if self.fault is None:
                dst.on_packet(s, d, seg, self.now)
            else:
                for item in self.fault(dst, s, d, seg, self):
                    item[0].on_packet(item[1], item[2], item[3], self.now)

    def step(self) -> bool:
        """One round of polls; True when anything moved."""
        pa = self.a.poll(self.now)
        pb = self.b.poll(self.now)
        self._deliver(self.b, "a>b", pa)
        self._deliver(self.a, "b>a", pb)
        held, self.held = self.held, []
        for dst, s, d, seg in held:
            dst.on_packet(s, d, seg, self.now)
        return bool(pa or pb or held)

    def settle(self, limit: int = 10_000) -> None:
        """Run rounds at the current time until nothing moves."""
        for _ in range(limit):
            if not self.step():
                return
        raise AssertionError("pump did not settle")

    def advance(self, until: float | None = None) -> bool:
        """Settle, then jump to the next timer (not past ``until``); False when none."""
        self.settle()
        times = [t for t in (self.a.poll_at(), self.b.poll_at()) if t is not None]
        if not times:
            return False
        # after a quiet round at ``now`` nothing can be due: poll_at is exact, never stale
        assert min(times) > self.now, (min(times), self.now)
        t = max(min(times), self.now)
        if until is not None and t > until:
            self.now = until
            return False
        self.now = t
        return True

    def run(self, cond, max_time: float = 600.0) -> None:
        """Advance time until ``cond()`` holds."""
        deadline = self.now + max_time
        while not cond():
            if not self.advance(deadline) and not cond():
                if self.now >= deadline:
                    raise AssertionError("condition not reached in time")
                self.settle()
                if cond():
                    return
                raise AssertionError("idle before condition held")


def open_pair(p: Pump, local=A, remote=B, port=80):
    lst = p.b.listen(None, port)
    c = p.a.connect(local, remote, port, p.now)
    p.run(lambda: lst.pending > 0 and c.state == "ESTABLISHED", max_time=60)
    s = lst.accept()
    assert s is not None
    return c, s, lst


def transfer(p: Pump, src, dst, data: bytes, max_time: float = 600.0) -> bytes:
    got = bytearray()
    view = memoryview(data)
    sent = 0

    def pump_data() -> bool:
        nonlocal sent
        if sent < len(data):
            sent += src.send(view[sent : sent + 65536])
        while dst.readable:
            got.extend(dst.recv(1 << 20))
        return len(got) >= len(data)

    deadline = p.now + max_time
    while not pump_data():
        p.step()
        if not p.held and p.now < deadline:
            t = [x for x in (p.a.poll_at(), p.b.poll_at()) if x is not None]
            if t and min(t) > p.now:
                p.now = min(t)
        assert p.now < deadline, "transfer stalled"
    return bytes(got)


# ---------------------------------------------------------------- codec


def test_segment_roundtrip_with_options_and_checksum() -> None:
    opts = b"\x02\x04\x05\x50" + b"\x01\x03\x03\x07" + b"\x04\x02" + b"\x01\x01"
    seg = encode_segment(A, B, 1234, 80, 0xFFFFFFFF, 7, SYN | ACK, 5000, opts, b"hi")
    ph = pseudo_header_v4(A, B, 6, len(seg))
    assert verify(seg, ph)
    d = parse_segment(seg)
    assert d is not None
    assert (d.sport, d.dport, d.seq, d.ack, d.flags, d.wnd) == (1234, 80, 0xFFFFFFFF, 7, 0x12, 5000)
    assert (d.mss, d.wscale, d.sack_ok, d.payload) == (1360, 7, True, b"hi")
    assert parse_segment(seg[:19]) is None
    bad = bytearray(seg)
    bad[12] = 0xF0  # header length 60 > segment length
    assert parse_segment(bytes(bad)) is None


def test_corrupt_segment_dropped_and_counted() -> None:
    t = Tcp(seed=1)
    t.listen(None, 80)
    seg = bytearray(encode_segment(B, A, 999, 80, 1, 0, SYN, 1000))
    seg[-1] ^= 0x40
    t.on_packet(B, A, bytes(seg), 0.0)
    assert t.counters["bad_checksum"] == 1
    assert t.poll(0.0) == [] and not t.conns


# ---------------------------------------------------------------- open, data, close


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_handshake_and_data_both_ways(family: str) -> None:
    p = Pump()
    la, lb = (A, B) if family == "v4" else (A6, B6)
    c, s, _ = open_pair(p, la, lb)
    assert c.state == s.state == "ESTABLISHED"
    assert c.mss == s.mss == 1360 and c.snd_wscale == s.rcv_wscale == 3
    assert c.sack_ok and s.sack_ok  # SACK is offered by default (Tcp(sack=False): not)
    d1 = random.Random(1).randbytes(300_000)
    d2 = random.Random(2).randbytes(100_000)
    assert transfer(p, c, s, d1) == d1
    assert transfer(p, s, c, d2) == d2


def test_connect_to_closed_port_refused() -> None:
    p = Pump()
    c = p.a.connect(A, B, 81, 0.0)
    p.settle()
    assert c.state == "CLOSED" and c.error == errno.ECONNREFUSED
    assert p.b.counters["rst_sent_no_socket"] == 1
    assert not p.a.conns
    with pytest.raises(OSError):
        c.send(b"x")


def test_active_close_then_passive_close_time_wait() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    c.send(b"bye")
    c.shutdown()
    p.settle()
    assert c.state == "FIN_WAIT_2" and s.state == "CLOSE_WAIT"
    assert s.recv(10) == b"bye" and s.eof
    s.send(b"ok")  # half-close: the other direction still flows
    p.settle()
    assert c.recv(10) == b"ok" and not c.eof
    s.close()
    p.settle()
    assert s.state == "CLOSED" and s.error is None and c.state == "TIME_WAIT" and c.eof
    assert len(p.a.conns) == 1 and not p.b.conns
    p.advance()
    assert p.now == pytest.approx(2.0, abs=0.1)
    p.settle()
    assert c.state == "CLOSED" and not p.a.conns


def test_simultaneous_close() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    c.shutdown()
    s.shutdown()
    p.settle()
    assert c.state == s.state == "TIME_WAIT"
    assert c.eof and s.eof
    p.run(lambda: not p.a.conns and not p.b.conns)


def test_abort_sends_rst_peer_gets_econnreset() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    c.abort()
    assert c.state == "CLOSED"
    p.settle()
    assert s.state == "CLOSED" and s.error == errno.ECONNRESET
    assert not p.a.conns and not p.b.conns


def test_close_with_unread_data_resets() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    c.send(b"unread")
    p.settle()
    s.close()
    p.settle()
    assert c.error == errno.ECONNRESET


def test_rst_out_of_window_ignored_in_window_challenged() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    # forged RST with a sequence number far from rcv_nxt: ignored
    bad = encode_segment(
        B, A, s.local_port, c.local_port, (c.rcv_nxt + 10**6) & 0xFFFFFFFF, 0, RST, 0
    )
    p.a.on_packet(B, A, bad, p.now)
    assert c.state == "ESTABLISHED"
    # in window but not exact: challenge ACK, still established
    near = encode_segment(B, A, s.local_port, c.local_port, (c.rcv_nxt + 5) & 0xFFFFFFFF, 0, RST, 0)
    p.a.on_packet(B, A, near, p.now)
    out = p.a.poll(p.now)
    assert c.state == "ESTABLISHED" and len(out) == 1
    assert parse_segment(out[0][2]).flags == ACK
    exact = encode_segment(B, A, s.local_port, c.local_port, c.rcv_nxt & 0xFFFFFFFF, 0, RST, 0)
    p.a.on_packet(B, A, exact, p.now)
    assert c.error == errno.ECONNRESET


def test_stray_segments_get_rfc_resets() -> None:
    t = Tcp(seed=3)
    t.on_packet(B, A, encode_segment(B, A, 5, 6, 100, 777, ACK, 10, payload=b"x"), 0.0)
    t.on_packet(B, A, encode_segment(B, A, 5, 6, 100, 0, SYN | FIN, 10, payload=b"xy"), 0.0)
    t.on_packet(B, A, encode_segment(B, A, 5, 6, 100, 0, RST, 10), 0.0)
    out = [parse_segment(seg) for _, _, seg in t.poll(0.0)]
    assert len(out) == 2
    assert (out[0].flags, out[0].seq) == (RST, 777)
    assert (out[1].flags, out[1].seq, out[1].ack) == (RST | ACK, 0, 104)


def test_backlog_limit() -> None:
    p = Pump()
    lst = p.b.listen(B, 80, backlog=2)
    conns = [p.a.connect(A, B, 80, 0.0) for _ in range(3)]
    p.settle()
    assert sum(c.state == "ESTABLISHED" for c in conns) == 2
    assert p.b.counters["backlog_full"] == 1
    assert lst.accept() and lst.accept() and lst.accept() is None
    # the third SYN is retried after the RTO and now fits
    (late,) = [c for c in conns if c.state == "SYN_SENT"]
    p.run(lambda: late.state == "ESTABLISHED", max_time=5)
    assert p.now == pytest.approx(1.0)  # its SYN's first retransmission
    assert lst.accept() is not None


# ---------------------------------------------------------------- retransmission


def test_rto_retransmission_timing_with_dropped_segment() -> None:
    dropped = []

    def drop_first_data(dst, s, d, seg, pump):
        ps = parse_segment(seg)
        if ps.payload and not dropped:
            dropped.append(pump.now)
            return []
        return [(dst, s, d, seg)]

    p = Pump(fault=drop_first_data)
    c, s, _ = open_pair(p)
    c.send(b"hello")
    p.run(lambda: s.readable == 5, max_time=5)
    assert s.recv(5) == b"hello"
    sends = [t for t, name, seg in p.log if name == "a>b" and parse_segment(seg).payload]
    assert sends[0] == 0.0 and len(sends) == 2
    # RTT sample on the handshake was 0 → RTO clamps to the 200 ms minimum
    assert sends[1] == pytest.approx(0.2)


def test_syn_backoff_and_give_up_etimedout() -> None:
    p = Pump(fault=lambda dst, s, d, seg, pump: [])  # black hole
    c = p.a.connect(A, B, 80, 0.0)
    p.run(lambda: c.state == "CLOSED", max_time=1000)
    syns = [t for t, name, _ in p.log if name == "a>b"]
    assert syns == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0]  # 1 s initial RTO, doubled each time
    assert c.error == errno.ETIMEDOUT and p.now == 123.0  # the last wait is capped at 60 s


def test_data_give_up_etimedout_with_backoff_capped() -> None:
    cut = {"on": False}
    p = Pump(fault=lambda dst, s, d, seg, pump: [] if cut["on"] else [(dst, s, d, seg)])
    c, _s, _ = open_pair(p)
    cut["on"] = True
    c.send(b"into the void")
    p.run(lambda: c.state == "CLOSED", max_time=2000)
    sends = [t for t, name, seg in p.log if name == "a>b" and parse_segment(seg).payload]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(sends)]
    assert len(sends) == 11  # first + 10 retries
    # RTO 200 ms (the handshake's RTT sample was 0), doubled per timeout, capped at 60 s
    assert gaps == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0]
    assert c.error == errno.ETIMEDOUT


def test_out_of_order_buffered_and_delivered_when_hole_fills() -> None:
    hold: list = []

    def reorder(dst, s, d, seg, pump):
        ps = parse_segment(seg)
        if ps.payload and not hold and dst is pump.b:
            hold.append((dst, s, d, seg))
            return []
        return [(dst, s, d, seg)]

    p = Pump(fault=reorder, sack=True)
    c, s, _ = open_pair(p)
    data = random.Random(3).randbytes(1360 * 5)
    assert c.send(data) == len(data)
    p.a_out = p.a.poll(p.now)
    p._deliver(p.b, "a>b", p.a_out)
    assert s.readable == 0 and len(s.ooo) == 4
    dups = p.b.poll(p.now)
    assert len(dups) == 4 and all(
        parse_segment(x[2]).ack == parse_segment(dups[0][2]).ack for x in dups
    )
    # each duplicate ACK names what arrived beyond the hole (SACK, RFC 2018)
    first = s.rcv_nxt
    assert c.sack_ok and s.sack_ok
    blocks = [parse_segment(x[2]).sack for x in dups]
    # (the four arrived before the poll, so every ACK names all four)
    assert blocks == [[((first + 1360) & 0xFFFFFFFF, (first + 1360 * 5) & 0xFFFFFFFF)]] * 4
    # the held first segment arrives: everything is delivered at once
    p.b.on_packet(*hold[0][1:], p.now)
    assert s.recv(10**6) == data and not s.ooo


def test_every_out_of_order_arrival_gets_a_sack_while_data_flows_back() -> None:
    """An echo: segments arrive beyond a hole while our program sends data in every poll.
    Each arrival must be answered by a pure ACK whose first SACK block covers it (RFC 2018):
    a SACK sender such as Linux detects losses only from SACKed data, and a duplicate ACK
    riding on our data carries no blocks. (One did ride before, so behind a `tok connect
    --no-offload` TAP that dropped runs of Linux's segments, Linux saw no blocks.)"""
    hold: list = []

    def drop_first(dst, s, d, seg, pump):
        if parse_segment(seg).payload and not hold and dst is pump.b:
            hold.append((dst, s, d, seg))
            return []
        return [(dst, s, d, seg)]

    p = Pump(fault=drop_first)
    c, s, _ = open_pair(p)
    assert c.sack_ok and s.sack_ok
    data = random.Random(4).randbytes(1360 * 5)
    assert c.send(data) == len(data)
    segs = p.a.poll(p.now)
    assert [len(parse_segment(x[2]).payload) for x in segs] == [1360] * 5
    p._deliver(p.b, "a>b", segs[:1])  # the hole
    first = s.rcv_nxt
    for i, seg in enumerate(segs[1:], 1):
        p._deliver(p.b, "a>b", [seg])
        assert s.send(b"echo %d " % i * 100) > 0  # the program answers at once
        out = [parse_segment(x[2]) for x in p.b.poll(p.now)]
        assert any(o.payload for o in out)  # our data left in this poll...
        pure = [o for o in out if not o.payload]
        assert pure, f"arrival {i}: no pure ACK, so no SACK block"  # ...and a pure ACK
        start, end = pure[0].sack[0]  # the block with the newest arrival comes first
        assert start == (first + 1360) & 0xFFFFFFFF and end == (first + 1360 * (i + 1)) & 0xFFFFFFFF
        assert all(o.ack == first & 0xFFFFFFFF for o in out)
    p.b.on_packet(*hold[0][1:], p.now)
    assert s.recv(10**6) == data and not s.ooo


def test_fast_retransmit_before_rto() -> None:
    dropped = []

    def drop_one(dst, s, d, seg, pump):
        ps = parse_segment(seg)
        if dst is pump.b and ps.payload and len(dropped) == 0 and pump.t_armed:
            dropped.append(seg)
            return []
        return [(dst, s, d, seg)]

    p = Pump(fault=drop_one)
    p.t_armed = False
    c, s, _ = open_pair(p)
    p.t_armed = True
    data = random.Random(4).randbytes(1360 * 8)
    c.send(data)
    p.settle()  # no time passes: only fast retransmit can repair the hole
    assert s.recv(10**6) == data
    assert p.a.counters["fast_retransmits"] == 1 and p.a.counters["rto_retransmits"] == 0


# ---------------------------------------------------------------- windows, delayed ACK


def test_zero_window_persist_and_reopen() -> None:
    p = Pump(recv_buffer=8192, send_buffer=65536)
    c, s, _ = open_pair(p)
    data = random.Random(5).randbytes(40_000)
    taken = c.send(data)
    p.advance(p.now + 0.05)  # the delayed ACK carrying window 0
    p.settle()
    assert s.readable == 8192 and c.snd_wnd == 0
    p.advance()  # persist timer fires: a 1-byte probe, answered with window 0
    p.settle()
    assert p.a.counters["window_probes"] >= 1 and c.state == "ESTABLISHED"
    got = bytearray()
    while len(got) < taken:
        got += s.recv(1 << 20)
        p.settle()
        p.advance(p.now + 100)
    assert bytes(got) == data[:taken]


def test_delayed_ack_single_segment_waits_40ms() -> None:
    p = Pump()
    c, _s, _ = open_pair(p)
    c.send(b"x")
    p.step()  # data a>b
    assert p.b.poll(p.now) == []  # no immediate ACK for one segment
    assert p.b.poll_at() == pytest.approx(p.now + 0.04)
    out = p.b.poll(p.now + 0.04)
    assert len(out) == 1 and parse_segment(out[0][2]).flags == ACK


# ---------------------------------------------------------------- loss, reorder, corruption


@pytest.mark.parametrize(("seed", "loss"), [(42, 0.02), (43, 0.05)])
def test_fault_injected_2mb_transfer_both_ways_byte_identical(seed: int, loss: float) -> None:
    rng = random.Random(seed)
    stats = {"drop": 0, "dup": 0, "reorder": 0, "corrupt": 0}

    def fault(dst, s, d, seg, pump):
        r = rng.random()
        if r < loss:
            stats["drop"] += 1
            return []
        if r < loss + 0.01:
            stats["dup"] += 1
            return [(dst, s, d, seg), (dst, s, d, seg)]
        if r < loss + 0.03:
            stats["reorder"] += 1
            pump.held.append((dst, s, d, seg))
            return []
        if r < loss + 0.04:
            stats["corrupt"] += 1
            bad = bytearray(seg)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            return [(dst, s, d, bytes(bad))]
        return [(dst, s, d, seg)]

    p = Pump(seed=seed, fault=fault)
    c, s, _ = open_pair(p)
    up = random.Random(8).randbytes(2 * 1024 * 1024)
    down = random.Random(9).randbytes(512 * 1024)
    got_up = transfer(p, c, s, up, max_time=3000)
    got_down = transfer(p, s, c, down, max_time=3000)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert all(v > 10 for v in stats.values()), stats
    assert p.a.counters["bad_checksum"] + p.b.counters["bad_checksum"] > 0
    c.close()
    s.close()
    p.run(lambda: not p.a.conns and not p.b.conns, max_time=3000)


# ---------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0x3F),
            st.integers(0, 0xFFFF),
            st.binary(max_size=64),
            st.binary(max_size=12),
            st.sampled_from([80, 81]),
        ),
        max_size=20,
    ),
    st.binary(max_size=80),
)
def test_fuzz_on_packet_never_raises_state_bounded(segs, raw) -> None:
    t = Tcp(seed=1, max_connections=8, ooo_segments=4, recv_buffer=4096)
    t.listen(None, 80, backlog=4)
    c = t.connect(A, B, 80, 0.0)
    now = 0.0
    t.on_packet(B, A, raw, now)
    for seq, ack, flags, wnd, payload, opts, dport in segs:
        opts = opts + b"\x00" * (-len(opts) % 4)
        port = c.local_port if dport == 81 else 80
        seg = encode_segment(
            B, A, 80 if dport == 81 else 4000, port, seq, ack, flags, wnd, opts, payload
        )
        t.on_packet(B, A, seg, now)
        now += 0.05
        t.poll(now)
        assert len(t.conns) <= 8
        for conn in t.conns.values():
            assert len(conn.ooo) <= 4 and len(conn.rbuf) <= 4096
        at = t.poll_at()
        assert at is None or at > now  # nothing left to do right now: no busy loop
    # bogus option lengths and truncated headers are tolerated too
    bad = bytearray(encode_segment(B, A, 1, 80, 0, 0, SYN, 0, b"\x02\x09\x00\x00"))
    t.on_packet(B, A, bytes(bad), now)
    struct.pack_into("!H", bad, 16, 0)
    t.on_packet(B, A, bytes(bad), now)
    assert t.counters["bad_checksum"] >= 1
    _ = FIN


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(-3000, 70000),
            st.integers(-3000, 9000),
            st.integers(0, 0x3F),
            st.integers(0, 0xFFFF),
            st.binary(max_size=1500),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_fuzz_established_connection_near_its_window(segs) -> None:
    """Segments whose seq/ack sit near the real ones reach the deep paths (trim, OOO, FIN)."""
    p = Pump(recv_buffer=16384, ooo_segments=4)
    c, s, _ = open_pair(p)
    c.send(random.Random(1).randbytes(8000))
    p.a.poll(p.now)  # in flight, never delivered: a has outstanding data for the ACKs to hit
    for dseq, dack, flags, wnd, payload, read in segs:
        seq = (c.rcv_nxt + dseq) & 0xFFFFFFFF
        ack = (c.snd_una + dack) & 0xFFFFFFFF
        seg = encode_segment(B, A, s.local_port, c.local_port, seq, ack, flags, wnd, b"", payload)
        p.a.on_packet(B, A, seg, p.now)
        if read:
            c.recv(5000)
        p.now += 0.01
        p.a.poll(p.now)
        assert len(c.ooo) <= 4 and len(c.rbuf) <= 16384
        assert sum(len(d) for d, _ in c.ooo.values()) == c.ooo_bytes <= 16384
        assert c.snd_una <= c.snd_nxt <= c.snd_max or c.state == "CLOSED"
        at = p.a.poll_at()
        assert at is None or at > p.now


# ---------------------------------------------------------------- edges and bounds


class _FixedRng(random.Random):
    def getrandbits(self, k: int) -> int:
        if k == 32:
            return 0xFFFFFF00  # every ISN 256 bytes before the 32-bit wrap
        return super().getrandbits(k)


def test_sequence_numbers_wrap_around() -> None:
    p = Pump()
    p.a._rng = _FixedRng(1)
    p.b._rng = _FixedRng(2)
    c, s, _ = open_pair(p)
    assert c.iss == s.iss == 0xFFFFFF00
    d1 = random.Random(11).randbytes(50_000)
    d2 = random.Random(12).randbytes(50_000)
    assert transfer(p, c, s, d1) == d1
    assert transfer(p, s, c, d2) == d2
    c.close()
    s.close()
    p.run(lambda: not p.a.conns and not p.b.conns)


def test_mss_is_the_smaller_of_both_sides() -> None:
    p = Pump()
    p.b.mss = 536
    c, s, _ = open_pair(p)
    assert c.mss == s.mss == 536
    c.send(bytes(5000))
    p.step()
    assert max(len(parse_segment(seg).payload) for _, _, seg in p.log[-20:]) == 536


def test_fin_wait_2_times_out_after_close() -> None:
    p = Pump(fin_wait2=5.0)
    c, s, _ = open_pair(p)
    c.close()
    p.settle()
    assert c.state == "FIN_WAIT_2" and s.state == "CLOSE_WAIT"
    p.run(lambda: c.state == "CLOSED", max_time=10)
    assert p.now == pytest.approx(5.0, abs=0.05) and not p.a.conns


def test_listener_close_resets_unaccepted() -> None:
    p = Pump()
    lst = p.b.listen(None, 80)
    c = p.a.connect(A, B, 80, 0.0)
    p.settle()
    assert c.state == "ESTABLISHED" and lst.pending == 1
    lst.close()
    p.settle()
    assert c.error == errno.ECONNRESET and not p.b.conns
    d = p.a.connect(A, B, 80, p.now)
    p.settle()
    assert d.error == errno.ECONNREFUSED


def test_reader_that_stops_reading_bounds_memory() -> None:
    p = Pump(recv_buffer=32768, send_buffer=65536)
    c, s, _ = open_pair(p)
    total = 0
    for _ in range(200):
        total += c.send(bytes(65536))
        p.advance(p.now + 1)
    assert s.readable == 32768  # the window closed; nothing more was taken in
    assert len(c.sbuf) <= 65536 and c.send_space == 65536 - len(c.sbuf)
    assert c.state == s.state == "ESTABLISHED"  # persist probes keep it alive, no timeout
    assert total <= 32768 + 65536


def test_time_wait_count_is_bounded() -> None:
    p = Pump(max_time_wait=3)
    lst = p.b.listen(None, 80)
    for _ in range(6):
        c = p.a.connect(A, B, 80, p.now)
        p.settle()
        s = lst.accept()
        c.close()
        p.settle()
        s.close()
        p.settle()
    states = [x.state for x in p.a.conns.values()]
    assert states == ["TIME_WAIT"] * 3 and p.a.counters["time_wait_evicted"] == 3


def test_hundreds_of_concurrent_connections() -> None:
    p = Pump()
    lst = p.b.listen(None, 80, backlog=512)
    clients = [p.a.connect(A, B, 80, 0.0) for _ in range(300)]
    p.settle()
    servers = []
    while (s := lst.accept()) is not None:
        servers.append(s)
    assert len(servers) == 300 and all(c.state == "ESTABLISHED" for c in clients)
    for i, c in enumerate(clients):
        assert c.send(i.to_bytes(2, "big") * 500) == 1000
        c.shutdown()
    p.run(lambda: all(s.eof or s.readable == 1000 for s in servers), max_time=5)
    p.settle()
    by_port = {c.local_port: i for i, c in enumerate(clients)}
    for s in servers:
        i = by_port[s.remote_port]
        assert s.recv(2000) == i.to_bytes(2, "big") * 500 and s.eof
        s.close()
    p.run(lambda: not p.a.conns and not p.b.conns, max_time=10)
    assert all(c.state == "CLOSED" and c.error is None for c in clients + servers)


def test_syn_above_time_wait_reopens_the_same_four_tuple() -> None:
    p = Pump()
    c, s, _ = open_pair(p)
    s.close()  # the server closes first: it holds TIME-WAIT
    p.settle()
    c.close()
    p.settle()
    assert s.state == "TIME_WAIT"
    # an old SYN (below rcv_nxt) only gets the challenge ACK; TIME-WAIT holds
    old = encode_segment(A, B, c.local_port, 80, (s.rcv_nxt - 10) & 0xFFFFFFFF, 0, SYN, 100)
    p.b.on_packet(A, B, old, p.now)
    (reply,) = [parse_segment(x[2]) for x in p.b.poll(p.now)]
    assert reply.flags == ACK and s.state == "TIME_WAIT"
    syn = encode_segment(A, B, c.local_port, 80, (s.rcv_nxt + 1000) & 0xFFFFFFFF, 0, SYN, 65535)
    p.b.on_packet(A, B, syn, p.now)
    (reply,) = [parse_segment(x[2]) for x in p.b.poll(p.now)]
    assert reply.flags == SYN | ACK and p.b.counters["time_wait_reused"] == 1
    assert s.state == "CLOSED" and len(p.b.conns) == 1


def test_take_changed_names_the_touched_connections() -> None:
    p = Pump()
    c1, s1, lst = open_pair(p)
    c2 = p.a.connect(A, B, 80, p.now)
    p.settle()
    s2 = lst.accept()
    p.a.take_changed()
    p.b.take_changed()
    c1.send(b"only one")
    p.settle()
    assert p.b.take_changed() == {s1} and s1.readable == 8
    assert p.a.take_changed() == {c1}  # c2 was not touched
    assert s2.readable == 0 and c2.state == "ESTABLISHED"
