"""The overlay UDP socket on loopback: super-frames leave as one GSO send and come back whole."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest

from atenet.overlay.fragment import FRAGMENT_SIZE, MAX_PACKET
from atenet.overlay.seal import TYPE_FRAME, TYPE_SUPERFRAME, PacketKey, Sealer, open_packet
from atenet.transport.udp import UdpSocket

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
