"""TSO super-segments out of the stack and offloaded packets into it, frame by frame.

Two Interfaces with ``tso=True`` are wired packet to packet (``poll_packets`` →
``receive_packet``), as two offload-taking switch ports would be; a third wiring cuts every
super-segment into standard frames with ``atenet.offload.to_frames`` first, which is what the
switch does for a port that does not take offloads. Data must arrive byte-identical through
loss, duplication and reordering of whole super-segments.
"""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Interface, IPv6Interface

import pytest

from atenet.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    VNET_HDR_LEN,
    VnetHeader,
    is_offloaded,
    to_frames,
)
from atenet.stack import Interface
from atenet.stack.tcp import Tcp

MAC_A = bytes.fromhex("02a7e00000a1")
MAC_B = bytes.fromhex("02a7e00000b1")


def pair(tso_a: bool = True, tso_b: bool = True) -> tuple[Interface, Tcp, Interface, Tcp]:
    ta, tb = Tcp(seed=1, mss=1460), Tcp(seed=2, mss=1460)
    a = Interface(MAC_A, ipv4=IPv4Interface("10.9.0.1/24"), tcp=ta, tso=tso_a)
    b = Interface(MAC_B, ipv4=IPv4Interface("10.9.0.2/24"), tcp=tb, tso=tso_b)
    a.add_ipv6(IPv6Interface("fd00:9::1/64"))
    b.add_ipv6(IPv6Interface("fd00:9::2/64"))
    return a, ta, b, tb


class Wire:
    """Moves every packet between ``a`` and ``b``; ``segment`` makes b a port without
    offloads (super-segments cut by ``to_frames``); ``fault`` may drop/duplicate/hold."""

    def __init__(self, a: Interface, b: Interface, segment: bool = False, fault=None) -> None:
        self.a, self.b = a, b
        self.segment = segment
        self.fault = fault
        self.now = 0.0
        self.held: list[tuple[Interface, bytes]] = []
        self.super_packets = 0

    def _to(self, dst: Interface, packet: bytes) -> None:
        if is_offloaded(packet):
            self.super_packets += packet[1] != 0
        if dst is self.b and self.segment:
            for frame in to_frames(packet):
                dst.receive(frame, self.now)
        else:
            dst.receive_packet(packet, self.now)

    def step(self) -> bool:
        moved = False
        held, self.held = self.held, []
        for dst, packet in held:
            self._to(dst, packet)
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for packet in src.poll_packets(self.now):
                moved = True
                for item in self.fault(dst, packet, self) if self.fault else [packet]:
                    self._to(dst, item)
        return moved or bool(held)

    def run(self, done, max_time: float = 300.0) -> None:
        deadline = self.now + max_time
        while not done():
            if not self.step() and not self.held:
                t = [x for x in (self.a.poll_at(), self.b.poll_at()) if x is not None]
                self.now = max(self.now + 0.001, min(t)) if t else self.now + 0.01
            assert self.now < deadline, "stalled"


def transfer(w: Wire, src_tcp: Tcp, dst_tcp: Tcp, src_ip: bytes, dst_ip: bytes, size: int,
             seed: int) -> tuple[bytes, bytes]:  # fmt: skip
    lst = dst_tcp.listen(None, 7000)
    conn = src_tcp.connect(src_ip, dst_ip, 7000, w.now)
    accepted: list = []
    w.run(lambda: accepted.append(lst.accept()) or accepted[-1] is not None)
    peer = accepted[-1]
    data = random.Random(seed).randbytes(size)
    got = bytearray()
    sent = 0

    def done() -> bool:
        nonlocal sent
        if sent < size and conn.state == "ESTABLISHED":
            sent += conn.send(memoryview(data)[sent:])
            if sent == size:
                conn.shutdown()
        got.extend(peer.recv(1 << 20))
        return peer.eof

    w.run(done)
    lst.close()
    return data, bytes(got)


@pytest.mark.parametrize("v6", [False, True])
def test_super_segments_between_offload_ports(v6: bool) -> None:
    a, ta, b, tb = pair()
    w = Wire(a, b)
    src, dst = (a.ipv6[1].ip.packed, b.ipv6[1].ip.packed) if v6 else (
        a.ipv4.ip.packed, b.ipv4.ip.packed)  # fmt: skip
    data, got = transfer(w, ta, tb, src, dst, 4 * 1024 * 1024, seed=1)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # the bulk left as super-segments and went in whole: far fewer packets than MSS frames
    assert ta.counters["tso_segments_out"] > 20
    assert w.super_packets == ta.counters["tso_segments_out"]
    assert b.counters["rx_offloaded"] >= w.super_packets
    assert ta.counters["segments_out"] < 4 * 1024 * 1024 // 1460 // 4


def test_super_segments_stay_within_a_quarter_of_a_small_peer_window() -> None:
    """A receiver with a small buffer gets super-segments of at most a quarter of its window
    (a kernel drops a 64 KB skb it has no memory for as a whole; the NAT's slow reader
    stalled), and the bytes still arrive sha256-equal."""
    a, ta, b, tb = pair()
    tb.recv_buffer = 32 * 1024
    w = Wire(a, b)
    sizes: list[int] = []
    to = w._to

    def spy(dst: Interface, packet: bytes) -> None:
        if dst is b and packet[1]:  # a super-segment to the small-window receiver
            sizes.append(len(packet) - 10 - 54)
        to(dst, packet)

    w._to = spy  # type: ignore[method-assign]
    data, got = transfer(w, ta, tb, a.ipv4.ip.packed, b.ipv4.ip.packed, 512 * 1024, seed=4)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert sizes and max(sizes) <= 32 * 1024 // 4


def test_super_segments_cut_for_a_port_without_offloads() -> None:
    a, ta, b, tb = pair(tso_b=False)
    w = Wire(a, b, segment=True)
    data, got = transfer(w, ta, tb, a.ipv4.ip.packed, b.ipv4.ip.packed, 2 * 1024 * 1024, seed=2)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert ta.counters["tso_segments_out"] > 10
    assert tb.counters["bad_checksum"] == 0  # to_frames filled every checksum in full


def test_poll_without_packets_segments_in_python() -> None:
    """A shell that calls poll() on a tso interface still gets standard, correct frames."""
    a, ta, b, tb = pair(tso_b=False)
    lst = tb.listen(None, 7001)
    conn = ta.connect(a.ipv4.ip.packed, b.ipv4.ip.packed, 7001, 0.0)
    now = 0.0
    peer = None
    data = random.Random(3).randbytes(300_000)
    got = bytearray()
    sent = 0
    for _ in range(5000):
        now += 0.001
        if conn.state == "ESTABLISHED" and sent < len(data):
            sent += conn.send(data[sent:])
        for frame in a.poll(now):
            assert len(frame) <= 1514
            b.receive(frame, now)
        for frame in b.poll(now):
            a.receive(frame, now)
        peer = peer or lst.accept()
        if peer is not None:
            got += peer.recv(1 << 20)
        if len(got) == len(data):
            break
    assert bytes(got) == data
    assert ta.counters["tso_segments_out"] > 0 and tb.counters["bad_checksum"] == 0


@pytest.mark.parametrize("seed", [3, 4])
def test_super_segments_through_loss_duplicates_and_reordering(seed: int) -> None:
    rng = random.Random(seed)
    stats = {"drop": 0, "dup": 0, "hold": 0}

    def fault(dst, packet, wire):
        r = rng.random()
        if r < 0.05:
            stats["drop"] += 1
            return []
        if r < 0.06:
            stats["dup"] += 1
            return [packet, packet]
        if r < 0.08:
            stats["hold"] += 1
            wire.held.append((dst, packet))
            return []
        return [packet]

    a, ta, b, tb = pair()
    w = Wire(a, b, fault=fault)
    data, got = transfer(w, ta, tb, a.ipv4.ip.packed, b.ipv4.ip.packed, 3 * 1024 * 1024, seed)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert stats["drop"] >= 2 and ta.counters["tso_segments_out"] > 20


def test_corrupt_plain_frame_still_dropped_in_the_fast_path() -> None:
    """Only offloaded packets skip the TCP checksum; a plain frame with a bad one is dropped."""
    a, ta, b, tb = pair(tso_a=False, tso_b=False)
    tb.listen(None, 7002)
    ta.connect(a.ipv4.ip.packed, b.ipv4.ip.packed, 7002, 0.0)
    frames = a.poll(0.0)  # ARP request first
    for frame in frames:
        b.receive(frame, 0.0)
    for frame in b.poll(0.0):
        a.receive(frame, 0.0)
    syn = [f for f in a.poll(0.0) if f[12:14] == b"\x08\x00"]
    assert len(syn) == 1
    bad = bytearray(syn[0])
    bad[-1] ^= 0xFF  # inside the TCP options: only the TCP checksum notices
    b.receive(bytes(bad), 0.0)
    assert tb.counters["bad_checksum"] == 1 and tb.counters["segments_in"] == 0
    b.receive(syn[0], 0.0)
    assert tb.counters["segments_in"] == 1


def test_offloaded_packet_that_lies_is_dropped_and_counted() -> None:
    _a, _ta, b, _tb = pair()
    frame = MAC_B + MAC_A + b"\x08\x00" + bytes(40)
    # GSO TCPv4 claimed on a frame whose IP header is garbage: not ours, cannot be segmented
    head = VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 54, 1460, 34, 16).pack()
    b.receive_packet(head + frame, 0.0)
    b.receive_packet(b"\x01" * (VNET_HDR_LEN - 1), 0.0)
    assert b.counters["rx_malformed"] == 2
    assert not b.poll_packets(0.0) or all(p[1] == 0 for p in b.poll_packets(0.0))
