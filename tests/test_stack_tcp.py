"""Sans-I/O tests of stack.tcp: two of our Tcp instances wired back to back, time injected."""

from __future__ import annotations

import hashlib
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.stack.tcp import Tcp
from atenet.wire.checksum import checksum, pseudo_header_v4, pseudo_header_v6

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A6 = bytes(15) + b"\x01"
B6 = bytes(15) + b"\x02"


def run(
    a: Tcp,
    b: Tcp,
    now: float,
    rng: random.Random | None = None,
    loss: float = 0.0,
    steps: int = 1,
    dt: float = 0.001,
) -> float:
    """Move segments both ways for ``steps`` rounds; optionally drop/duplicate/reorder/corrupt."""
    for _ in range(steps):
        for src, dst in ((a, b), (b, a)):
            segs = src.poll(now)
            if rng is not None:
                out = []
                for s in segs:
                    r = rng.random()
                    if r < loss:
                        continue
                    if r < 2 * loss:
                        out.append(s)
                    if r < 3 * loss:
                        seg = bytearray(s[2])
                        seg[rng.randrange(len(seg))] ^= 0x40
                        s = (s[0], s[1], bytes(seg))
                    out.append(s)
                if len(out) > 2 and rng.random() < loss * 5:
                    i = rng.randrange(len(out) - 1)
                    out[i], out[i + 1] = out[i + 1], out[i]
                segs = out
            for sip, dip, seg in segs:
                dst.on_packet(sip, dip, seg, now)
        now += dt
    return now


def pair(la: bytes = A, lb: bytes = B, now: float = 0.0):
    a, b = Tcp(mtu=1500), Tcp(mtu=1500)
    lst = b.listen(lb, 80, 4)
    c = a.connect(la, lb, 80, now)
    now = run(a, b, now, steps=3)
    s = b.accept(lst)
    return a, b, c, s, now


def test_handshake_v4_and_v6() -> None:
    for la, lb in ((A, B), (A6, B6)):
        _a, _b, c, s, _now = pair(la, lb)
        assert c.state == "ESTABLISHED" and s is not None and s.state == "ESTABLISHED"


def test_refused_connect_gets_rst() -> None:
    a, b = Tcp(), Tcp()
    c = a.connect(A, B, 81, 0.0)
    run(a, b, 0.0, steps=3)
    assert c.state == "CLOSED" and c.error == "ECONNREFUSED"


def test_full_close_and_time_wait_expiry() -> None:
    a, b, c, s, now = pair()
    assert c.send(b"hello") == 5
    now = run(a, b, now, steps=3)
    assert s.recv(100) == b"hello"
    c.close()
    now = run(a, b, now, steps=3)
    assert s.state == "CLOSE_WAIT" and c.state == "FIN_WAIT_2" and s.readable
    s.send(b"bye")  # half-close: the other side still sends
    s.close()
    now = run(a, b, now, steps=3)
    assert c.recv(10) == b"bye" and c.state == "TIME_WAIT" and s.state == "CLOSED"
    run(a, b, now + 3.0, steps=1)
    assert c.state == "CLOSED" and not a.conns


def test_abort_resets_peer() -> None:
    a, b, c, s, now = pair()
    c.abort()
    run(a, b, now, steps=2)
    assert s.state == "CLOSED" and s.error == "ECONNRESET"


def test_syn_retransmission_backs_off() -> None:
    a = Tcp()
    a.connect(A, B, 80, 0.0)
    times = [0.0]  # the SYN left in connect()
    assert a.poll(0.0)
    now = 0.01
    while now < 20 and len(times) < 4:
        if a.poll(now):
            times.append(now)
        now = round(now + 0.01, 2)
    gaps = [round(y - x, 1) for x, y in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0]  # first RTO 1 s, doubled per retry


def test_backlog_limit() -> None:
    a, b = Tcp(), Tcp()
    lst = b.listen(B, 80, 2)
    conns = [a.connect(A, B, 80, 0.0) for _ in range(4)]
    run(a, b, 0.0, steps=3)
    assert len(lst.pending) == 2 and b.counters["backlog_full"] >= 2
    assert sum(c.state == "ESTABLISHED" for c in conns) >= 2


def test_faulty_link_transfer_is_byte_identical() -> None:
    rng = random.Random(12)
    data = rng.randbytes(3_000_000)
    a, b, c, s, now = pair()
    got = bytearray()
    sent = 0
    for _ in range(200_000):
        if sent < len(data):
            sent += c.send(data[sent : sent + 65536])
        elif c.state == "ESTABLISHED":
            c.close()
        now = run(a, b, now, rng=rng, loss=0.02, dt=0.002)
        got += s.recv(1 << 20)
        if s.state == "CLOSE_WAIT":
            break
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert a.counters["retransmits"] + a.counters["fast_retransmits"] > 0
    assert b.counters["bad_checksum"] > 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20), st.booleans())
def test_fuzz_on_packet_never_raises_and_stays_bounded(segs: list[bytes], v6: bool) -> None:
    """Junk, including junk with a valid checksum, never raises and never grows tables."""
    t = Tcp(max_conns=8)
    lst = t.listen(B6 if v6 else B, 80, 2)
    src, dst = (A6, B6) if v6 else (A, B)
    now = 0.0
    for raw in segs:
        seg = bytearray(raw)
        if len(seg) >= 20:
            seg[2:4] = (80).to_bytes(2, "big")
            seg[16:18] = b"\0\0"
            ph = (pseudo_header_v6 if v6 else pseudo_header_v4)(src, dst, 6, len(seg))
            seg[16:18] = checksum(seg, ph).to_bytes(2, "big")
        t.on_packet(src, dst, bytes(seg), now)
        t.poll(now)
        now += 0.5
    assert len(t.conns) <= 8 and len(lst.pending) <= 2


def test_window_scaling_opens_window_beyond_64k() -> None:
    a, b, c, s, now = pair()
    assert c.snd_ws == s.rcv_ws == b.wscale > 0
    c.send(b"x" * 400_000)
    run(a, b, now, steps=40)
    # the receiver took its whole 256 KB buffer unread: only possible with a window > 64 KB
    assert len(s.recvbuf) == b.rcvbuf


def test_zero_window_then_probe_reopens() -> None:
    a, b = Tcp(), Tcp(rcvbuf=8192)
    lst = b.listen(B, 80, 4)
    c = a.connect(A, B, 80, 0.0)
    now = run(a, b, 0.0, steps=3)
    s = b.accept(lst)
    c.send(b"y" * 20000)
    now = run(a, b, now, steps=5)
    assert c.snd_wnd == 0 and len(s.recvbuf) == 8192
    got = s.recv(100_000)
    for _ in range(100):  # the window update or the sender's probe reopens the flow
        now = run(a, b, now, steps=1, dt=0.05)
        got += s.recv(100_000)
    assert got == b"y" * 20000


def test_fast_retransmit_before_rto() -> None:
    """One lost segment among many is resent on three duplicate ACKs, long before the RTO."""
    a, b, c, s, now = pair()
    c.send(bytes(range(256)) * 100)  # 25600 B: ~18 segments, the window allows them
    now = run(a, b, now, steps=20)  # grow cwnd first
    s.recv(1 << 20)
    c.send(b"z" * 20 * 1460)
    segs = a.poll(now)
    assert len(segs) >= 6
    for sip, dip, seg in segs[1:]:  # the first one is lost
        b.on_packet(sip, dip, seg, now)
    for sip, dip, seg in b.poll(now):
        a.on_packet(sip, dip, seg, now)
    assert a.counters["fast_retransmits"] == 1
    now = run(a, b, now, steps=60)  # one hole per round trip (1 ms); the RTO is >= 200 ms
    assert s.recv(1 << 20) == b"z" * 20 * 1460
    assert a.counters["retransmits"] == 0
