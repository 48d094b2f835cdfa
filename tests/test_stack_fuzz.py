"""Hypothesis fuzzing of every parser of the userspace stack (quick by default).

Targets: ``Interface.receive`` (any frame), ``Interface.receive_packet`` (any virtio-net header
in front of any frame: the TSO/GRO fast paths and ``to_frames``), ``Tcp.on_packet`` (with and
without a trusted checksum, against a listener and an established connection), the fragment
``Reassembler`` and the ``NeighborCache``. Inputs are real frames the stack itself sends (ARP,
ping, UDP, TCP SYN and data, IPv4 and IPv6 fragments, ND) with random edits, plus plain random
bytes. The shared invariant: no exception escapes, every frame is counted once in
``rx_frames``, malformed input is never answered with more than the stack's bounded replies, and
every table stays within its bound.

Quick mode runs ``EXAMPLES`` inputs per target (200). The long mode is
``ATENET_STACK_FUZZ=100000 pytest tests/test_stack_fuzz.py`` (any count per target; 1,500
per target took 90 s on the shared 2-core VM).
"""

from __future__ import annotations

import os
import random
from ipaddress import IPv4Interface, IPv6Interface

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet.offload import F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VnetHeader
from atenet.stack import Interface
from atenet.stack.frag import Reassembler
from atenet.stack.neighbor import NeighborCache
from atenet.stack.tcp import Tcp

EXAMPLES = int(os.environ.get("ATENET_STACK_FUZZ", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAC_A = bytes.fromhex("02a7e00000a1")
MAC_B = bytes.fromhex("02a7e00000b1")


def _pair(tso: bool = False) -> tuple[Interface, Tcp, Interface, Tcp]:
    ta, tb = Tcp(seed=1, mss=1400), Tcp(seed=2, mss=1400)
    a = Interface(MAC_A, ipv4=IPv4Interface("10.9.0.1/24"), tcp=ta, tso=tso)
    b = Interface(MAC_B, ipv4=IPv4Interface("10.9.0.2/24"), tcp=tb, tso=tso)
    a.add_ipv6(IPv6Interface("fd00:9::1/64"))
    b.add_ipv6(IPv6Interface("fd00:9::2/64"))
    return a, ta, b, tb


def _seeds() -> tuple[list[bytes], list[bytes]]:
    """Frames and virtio-net packets that A sends B in a short, busy conversation."""
    a, ta, b, tb = _pair(tso=True)
    tb.listen(None, 80)
    frames: list[bytes] = []
    packets: list[bytes] = []
    now = 0.0
    conn4 = ta.connect(a.ipv4.ip.packed, b.ipv4.ip.packed, 80, now)  # type: ignore[union-attr]
    conn6 = ta.connect(a.ipv6[1].ip.packed, b.ipv6[1].ip.packed, 80, now)
    a.ping("10.9.0.2", now, b"x" * 3000)  # fragmented
    a.ping("fd00:9::2", now, b"y" * 3000)
    sock = a.udp_bind(5000)
    for step in range(40):
        now += 0.01
        if step == 3:
            sock.sendto(b"z" * 2000, ("10.9.0.2", 53), now)
            sock.sendto(b"w" * 100, ("fd00:9::2", 53), now)
        for conn in (conn4, conn6):
            if conn.state == "ESTABLISHED":
                conn.send(bytes(200_000))
        for packet in a.poll_packets(now):
            packets.append(packet)
            b.receive_packet(packet, now)
        for packet in b.poll_packets(now):
            a.receive_packet(packet, now)
    frames = [p[10:] for p in packets if p[1] == 0 and len(p) < 2000]
    return frames[:60], [p[:3000] for p in packets][:60]


FRAMES, PACKETS = _seeds()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        if out:
            out[at % len(out)] = value
    if cut is not None:
        del out[cut % (len(out) + 1) :]
    return bytes(out)


edits_st = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
cut_st = st.one_of(st.none(), st.integers(0, 1 << 16))


def _bounded(iface: Interface) -> None:
    assert len(iface.arp.entries) <= iface.arp.capacity
    assert len(iface.nd.entries) <= iface.nd.capacity
    assert len(iface.arp.pending) <= iface.arp.max_waiting
    assert len(iface.reassembly.partial) <= iface.reassembly.max_datagrams
    assert iface.reassembly.held <= iface.reassembly.max_bytes
    assert len(iface._events) <= iface._max_events


@pytest.fixture(scope="module")
def victim() -> tuple[Interface, Tcp]:
    _a, _ta, b, tb = _pair(tso=True)
    tb.listen(None, 80)
    return b, tb


@FUZZ
@given(
    which=st.integers(0, 10_000),
    edits=edits_st,
    cut=cut_st,
    raw=st.one_of(st.none(), st.binary(max_size=1600)),
)
def test_fuzz_receive_any_frame(victim, which: int, edits, cut, raw: bytes | None) -> None:
    iface, tcp = victim
    frame = raw if raw is not None else _mutate(FRAMES[which % len(FRAMES)], edits, cut)
    before = iface.counters["rx_frames"]
    iface.receive(frame, 1.0)
    assert iface.counters["rx_frames"] == before + 1
    out = iface.poll(1.0)
    assert len(out) <= 64  # answers are bounded (and rate-limited)
    _bounded(iface)
    assert len(tcp.conns) <= tcp.max_connections


@FUZZ
@given(
    which=st.integers(0, 10_000),
    edits=edits_st,
    cut=cut_st,
    head=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from([0, F_NEEDS_CSUM, F_DATA_VALID, F_NEEDS_CSUM | F_DATA_VALID, 0xFF]),
            st.sampled_from([0, GSO_TCPV4, GSO_TCPV6, 3, 5, 0x81, 0xFF]),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
        ),
    ),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_fuzz_receive_packet_any_offload_header(
    victim, which: int, edits, cut, head, raw: bytes | None
) -> None:
    iface, _tcp = victim
    if raw is not None:
        packet = raw
    else:
        packet = _mutate(PACKETS[which % len(PACKETS)], edits, cut)
        if head is not None and len(packet) >= 10:
            packet = VnetHeader(*head).pack() + packet[10:]
    iface.receive_packet(packet, 1.0)
    for out in iface.poll_packets(1.0):
        assert len(out) >= 10 + 14
    _bounded(iface)


@FUZZ
@given(
    which=st.integers(0, 10_000),
    edits=edits_st,
    cut=cut_st,
    checked=st.booleans(),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_fuzz_tcp_on_packet(which: int, edits, cut, checked: bool, raw: bytes | None) -> None:
    """Segments near a listener and an open connection, checksum trusted or not."""
    frames = [f for f in FRAMES if f[12:14] == b"\x08\x00" and f[23] == 6]
    tcp = Tcp(seed=3, mss=1400, ooo_segments=16)
    tcp.listen(None, 80)
    if raw is not None:
        seg = raw
    else:
        frame = frames[which % len(frames)]
        seg = _mutate(frame[34:], edits, cut)
    src, dst = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    tcp.on_packet(src, dst, seg, 1.0, checked=checked)
    tcp.on_packet(src, dst, seg, 1.1, checked=checked)
    out = tcp.poll(1.2)
    assert len(out) <= 4
    at = tcp.poll_at()
    assert at is None or at >= 0
    for conn in tcp.conns.values():
        assert len(conn.rbuf) <= tcp.recv_buffer
        assert conn.ooo_bytes <= tcp.recv_buffer and len(conn.ooo) <= tcp.ooo_segments


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # datagram key
            st.integers(0, 70_000),  # offset
            st.booleans(),  # more fragments
            st.integers(0, 3000),  # length
            st.floats(0, 100),  # time step
        ),
        max_size=40,
    )
)
def test_fuzz_reassembly(pieces) -> None:
    r = Reassembler(max_datagrams=3, max_bytes=20_000, timeout=30.0)
    now = 0.0
    for key, offset, more, length, dt in pieces:
        now += dt
        whole = r.add((key,), offset, more, bytes([key]) * length, now)
        if whole is not None:
            assert len(whole) <= 65535 and set(whole) <= {key}
        assert len(r.partial) <= 3 and 0 <= r.held <= 20_000
        assert r.held == sum(e.size for e in r.partial.values())


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["learn", "learn_nc", "queue", "due", "lookup"]),
            st.integers(0, 400),
            st.floats(0, 5),
        ),
        max_size=200,
    )
)
def test_fuzz_neighbor_cache(ops) -> None:
    from ipaddress import IPv4Address

    cache = NeighborCache(capacity=16, max_waiting=8, per_destination=3)
    now = 0.0
    rng = random.Random(len(ops))
    for op, n, dt in ops:
        now += dt
        ip = IPv4Address(0x0A000000 + n)
        if op == "learn":
            cache.learn(ip, rng.randbytes(6), now)
        elif op == "learn_nc":
            cache.learn(ip, rng.randbytes(6), now, create=False)
        elif op == "queue":
            cache.queue(ip, b"p", now)
        elif op == "due":
            cache.due(now)
        else:
            cache.lookup(ip, now)
        assert len(cache.entries) <= 16 and len(cache.pending) <= 8
        assert all(len(w.packets) <= 3 for w in cache.pending.values())
