"""Fragments: a sealed super-frame cut into path-MTU datagrams and put back together."""

from __future__ import annotations

import os

import pytest

from atenet.overlay.fragment import (
    FRAGMENT_SIZE,
    MAX_FRAGMENTS,
    MAX_PACKET,
    PREFIX_LEN,
    Reassembler,
    fragment,
    is_fragment,
)
from atenet.overlay.seal import TYPE_SUPERFRAME, PacketKey, Sealer, open_packet

KEY = PacketKey(bytes(range(32)), 7)
NETWORK = bytes(range(16))
ADDR = ("10.0.0.1", 4799)


def sealed(size: int, counter: int = 1) -> bytes:
    return Sealer(NETWORK, KEY, 42, counter).seal(os.urandom(size), TYPE_SUPERFRAME)


def pieces(buffer: bytes) -> list[bytes]:
    """The datagrams a UDP GSO send of ``buffer`` puts on the wire."""
    return [buffer[i : i + FRAGMENT_SIZE] for i in range(0, len(buffer), FRAGMENT_SIZE)]


def test_fragments_are_path_mtu_datagrams_with_the_network_id_in_clear() -> None:
    packet = sealed(60_000)
    datagrams = pieces(fragment(packet))
    assert len(datagrams) == -(-len(packet) // (FRAGMENT_SIZE - PREFIX_LEN))
    assert all(len(d) == FRAGMENT_SIZE for d in datagrams[:-1])
    assert all(d[:16] == NETWORK and is_fragment(d) for d in datagrams)
    assert [d[30] for d in datagrams] == list(range(len(datagrams)))
    assert not is_fragment(packet)


def test_one_gro_run_gives_the_packet_back_and_it_opens() -> None:
    packet = sealed(MAX_PACKET - 50)
    assert len(fragment(packet)) <= 65507  # fits one UDP GSO send
    (got,) = Reassembler().feed(fragment(packet), FRAGMENT_SIZE, ADDR)
    assert got == packet
    open_packet(KEY, got)  # authenticates: nothing was lost or reordered


def test_fragments_one_by_one_and_out_of_order_are_reassembled() -> None:
    packet = sealed(20_000)
    datagrams = pieces(fragment(packet))
    reassembler = Reassembler()
    out = [reassembler.feed(d, 0, ADDR) for d in reversed(datagrams)]
    assert out[:-1] == [[]] * (len(datagrams) - 1)
    assert out[-1] == [packet]
    assert len(reassembler) == 0


def test_a_run_can_hold_two_packets_and_plain_datagrams() -> None:
    # Two packets whose sizes are exact multiples of a chunk: a GRO run need not end between.
    a = sealed(3 * (FRAGMENT_SIZE - PREFIX_LEN) - 50, counter=1)
    b = sealed(2 * (FRAGMENT_SIZE - PREFIX_LEN) - 50, counter=2)
    plain = sealed(FRAGMENT_SIZE - 50, counter=3)  # a whole packet of exactly one segment
    run = fragment(a) + plain + fragment(b)
    assert Reassembler().feed(run, FRAGMENT_SIZE, ADDR) == [a, plain, b]


def test_a_run_missing_a_fragment_waits_and_a_stray_cannot_grow_the_table() -> None:
    packet = sealed(10_000)
    datagrams = pieces(fragment(packet))
    reassembler = Reassembler(max_pending=4)
    assert reassembler.feed(b"".join(datagrams[:-1]), FRAGMENT_SIZE, ADDR) == []
    assert reassembler.feed(datagrams[-1], 0, ADDR) == [packet]
    for counter in range(10):  # first fragments of packets that never complete
        reassembler.feed(pieces(fragment(sealed(5000, counter + 100)))[0], 0, ADDR)
    assert len(reassembler) == 4


def test_same_counter_from_another_address_is_another_packet() -> None:
    packet = sealed(5000)
    first, *rest = pieces(fragment(packet))
    reassembler = Reassembler()
    reassembler.feed(first, 0, ("10.0.0.9", 1))
    assert [reassembler.feed(d, 0, ADDR) for d in rest] == [[]] * len(rest)
    assert reassembler.feed(first, 0, ADDR) == [packet]


@pytest.mark.parametrize("index_count", [(0, 1), (5, 5), (0, 0)])
def test_impossible_index_or_count_is_dropped(index_count: tuple[int, int]) -> None:
    datagram = bytearray(pieces(fragment(sealed(5000)))[0])
    datagram[30:32] = bytes(index_count)
    reassembler = Reassembler()
    assert reassembler.feed(bytes(datagram), 0, ADDR) == []
    assert reassembler.dropped == 1


def test_a_packet_too_big_for_one_gso_send_is_refused() -> None:
    assert MAX_FRAGMENTS * FRAGMENT_SIZE <= 65507
    with pytest.raises(ValueError, match="cannot fragment"):
        fragment(bytes(MAX_PACKET + 1))
