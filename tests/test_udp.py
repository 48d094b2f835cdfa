"""The overlay UDP socket on loopback: super-frames leave as one GSO send and come back whole."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest

from atenet.overlay.fragment import FRAGMENT_SIZE, MAX_PACKET
from atenet.overlay.seal import TYPE_FRAME, TYPE_SUPERFRAME, PacketKey, Sealer, open_packet
from atenet.transport.udp import HOLD_MAX, UdpSocket

KEY = PacketKey(bytes(32), 1)


@pytest.fixture
def pair() -> Iterator[tuple[UdpSocket, UdpSocket, tuple[str, int]]]:
    a = UdpSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    raw.bind(("127.0.0.1", 0))
    b = UdpSocket(raw)
    try:
        yield a, b, raw.getsockname()
    finally:
        a.close()
        b.close()


def drain(sock: UdpSocket, want: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < want:
        if not select.select([sock.fileno()], [], [], 2)[0]:
            break
        sock.receive(lambda data, _addr: got.append(bytes(data)), 64)
    return got


def test_super_frames_small_packets_and_floods_arrive_whole(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    a, b, addr = pair
    sealer = Sealer(bytes(16), KEY, 5, 1)
    big = [sealer.seal(os.urandom(n), TYPE_SUPERFRAME) for n in (MAX_PACKET - 50, 20_000, 3000)]
    small = [sealer.seal(os.urandom(100), TYPE_FRAME) for _ in range(5)]
    # A frame bigger than a fragment but not a super-frame goes whole (an older receiver).
    jumbo = sealer.seal(os.urandom(4000), TYPE_FRAME)
    sent = [big[0], small[0], big[1], big[1], *small[1:], big[2], jumbo]
    for packet in sent:
        a.send(packet, addr)
    got = drain(b, len(sent))
    assert got == sent
    assert a.send_errors == 0 and b.reassembler.dropped == 0
    for packet in got:
        open_packet(KEY, packet)


def test_without_udp_gso_the_fragments_go_one_by_one(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    a, b, addr = pair
    a.gso = False
    packet = Sealer(bytes(16), KEY, 5, 1).seal(os.urandom(30_000), TYPE_SUPERFRAME)
    a.send(packet, addr)
    assert drain(b, 1) == [packet]
    assert len(packet) > FRAGMENT_SIZE


def raw_receiver() -> socket.socket:
    """A plain socket without UDP_GRO: the kernel must split a GSO run back into datagrams."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    raw.bind(("127.0.0.1", 0))
    return raw


def raw_drain(sock: socket.socket, want: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < want and select.select([sock], [], [], 2)[0]:
        got.append(sock.recv(65536))
    return got


def test_held_runs_arrive_as_the_same_datagrams_in_order(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    """Held packets leave as UDP GSO runs (one sendmsg per run of one size and destination);
    a GRO receiver and a plain socket both get every datagram, whole and in order per peer,
    as if each had been sent alone."""
    a, b, addr = pair
    other = raw_receiver()
    try:
        sealer = Sealer(bytes(16), KEY, 5, 1)
        # Runs of one size, a shorter one ending a run, a longer one starting the next, a
        # super-frame in the middle (fragmented, sent after what was held before it) and a
        # second destination interleaved.
        sizes = [100] * 10 + [60] + [100] * 3 + [200] * 70 + [100]
        to_b = [sealer.seal(os.urandom(n), TYPE_FRAME) for n in sizes]
        superframe = sealer.seal(os.urandom(20_000), TYPE_SUPERFRAME)
        to_other = [sealer.seal(os.urandom(80), TYPE_FRAME) for _ in range(5)]
        assert a.hold()
        assert not a.hold()  # already held: the caller further up releases
        for i, packet in enumerate(to_b):
            a.send(packet, addr)
            if i < len(to_other):
                a.send(to_other[i], other.getsockname())
            if i == 12:
                a.send(superframe, addr)
        a.release()
        expect_b = [*to_b[:13], superframe, *to_b[13:]]
        assert drain(b, len(expect_b)) == expect_b
        assert raw_drain(other, len(to_other)) == to_other
        assert a.send_errors == 0 and a.gso
    finally:
        other.close()


def test_held_runs_without_udp_gso_go_one_by_one(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    """The fallback where the kernel has no UDP GSO: the same datagrams, one sendto each."""
    a, _b, _addr = pair
    plain = raw_receiver()
    try:
        a.gso = False
        sealer = Sealer(bytes(16), KEY, 5, 1)
        packets = [sealer.seal(os.urandom(100), TYPE_FRAME) for _ in range(20)]
        a.hold()
        for packet in packets:
            a.send(packet, plain.getsockname())
        a.release()
        assert raw_drain(plain, len(packets)) == packets
    finally:
        plain.close()


def test_a_lone_packet_is_not_held_back_and_many_flush_early(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    """Not held, a packet leaves at once; held, at most HOLD_MAX wait (the first packet of a
    long read batch is not delayed until the batch ends)."""
    a, b, addr = pair
    sealer = Sealer(bytes(16), KEY, 5, 1)
    one = sealer.seal(b"x" * 60, TYPE_FRAME)
    a.send(one, addr)
    assert drain(b, 1) == [one]
    a.hold()
    packets = [sealer.seal(os.urandom(100), TYPE_FRAME) for _ in range(HOLD_MAX)]
    for packet in packets:
        a.send(packet, addr)
    assert drain(b, HOLD_MAX) == packets  # flushed when the HOLD_MAX-th came, still held
    a.send(one, addr)
    assert not select.select([b.fileno()], [], [], 0.2)[0]
    a.release()
    assert drain(b, 1) == [one]


def test_what_a_receive_handler_sends_leaves_in_runs(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    """receive() holds while it reads: a forwarder (the node) answering each datagram sends
    them on in runs, and every one arrives."""
    a, b, addr = pair
    out = raw_receiver()
    try:
        sealer = Sealer(bytes(16), KEY, 5, 1)
        packets = [sealer.seal(os.urandom(100), TYPE_FRAME) for _ in range(40)]
        for packet in packets:
            a.send(packet, addr)
        forwarded: list[bytes] = []
        dest = out.getsockname()

        def forward(data: bytes, _addr: object) -> None:
            forwarded.append(data)
            b.send(data, dest)

        while len(forwarded) < len(packets) and select.select([b.fileno()], [], [], 2)[0]:
            b.receive(forward, 64)
        assert forwarded == packets
        assert raw_drain(out, len(packets)) == packets
    finally:
        out.close()


def test_the_answer_to_a_lone_datagram_is_not_held(
    pair: tuple[UdpSocket, UdpSocket, tuple[str, int]],
) -> None:
    """An idle ping through a node: the first datagram's answer leaves while it is handled,
    not after the read that finds the socket empty."""
    a, b, addr = pair
    out = raw_receiver()
    try:
        sealer = Sealer(bytes(16), KEY, 5, 1)
        packet = sealer.seal(os.urandom(80), TYPE_FRAME)
        a.send(packet, addr)
        seen: list[bool] = []

        def forward(data: bytes, _addr: object) -> None:
            b.send(data, out.getsockname())
            seen.append(bool(select.select([out], [], [], 0.5)[0]))

        assert select.select([b.fileno()], [], [], 2)[0]
        b.receive(forward, 64)
        assert seen == [True]
        assert raw_drain(out, 1) == [packet]
    finally:
        out.close()
