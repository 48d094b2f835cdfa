"""The node's socket read both ways, in-process on loopback: ``atenet._fast.node_receive`` and
the pure ``UdpSocket.receive`` + ``NodeCore.datagram`` see the same datagrams — alone, as one
UDP GSO run (which the receiving socket's GRO hands over whole), as fragments — and must leave
the node's counters, drops and events the same (docs/protocol.md, "Fast path"). In ``engine``
mode a ``_fast.NodeEngine`` thread reads the socket first: none of these is a cached flow, so
it hands the first over (with the socket) and node_receive takes it and the rest, as the
daemon does. The forwarding itself is tested between real processes in tests/test_fast_node.py
and tests/test_node_engine.py."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.fast import FAST
from atenet.node.core import NodeCore
from atenet.offload import OffloadError, check
from atenet.overlay.fragment import FRAGMENT_SIZE, fragment
from atenet.overlay.seal import HEADER_LEN, TYPE_FRAME, TYPE_SUPERFRAME
from atenet.transport.udp import SOL_UDP, UDP_SEGMENT, UdpSocket

MODES = ["engine", "fast", "pure"]


def sealed_like(ptype: int, size: int, network: bytes = b"N" * 16, version: int = 1) -> bytes:
    """A datagram with a well-formed clear header and random "ciphertext" (no key opens it)."""
    header = network + bytes([version, ptype]) + struct.pack("!IIQ", 7, 9, time.time_ns())
    return header + os.urandom(size - HEADER_LEN)


def read(mode: str, sends: list[tuple[list[bytes], int]]) -> tuple[NodeCore, UdpSocket]:
    """Send each group (alone, or as one GSO run of the given segment size) to a node socket on
    loopback, then read it once the way ``mode`` does."""
    if mode != "pure" and FAST is None:
        pytest.skip("atenet._fast is not built (scripts/setup.sh)")
    sent: list[tuple[bytes, Any]] = []
    core = NodeCore("n1", lambda packet, addr: sent.append((packet, addr)), time.time_ns())
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        udp = UdpSocket(rx)
        addr = rx.getsockname()
        for datagrams, segment in sends:
            if segment:
                cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
                tx.sendmsg([b"".join(datagrams)], cmsg, 0, addr)
            else:
                for datagram in datagrams:
                    tx.sendto(datagram, addr)
        now = time.time()
        if mode == "engine":
            handover(core, udp, now)
        elif mode == "fast":
            FAST.node_receive(core, udp, 512, now)  # type: ignore[union-attr]
        else:
            udp.receive(lambda data, source: core.datagram(data, source, now), 512)
        with pytest.raises(BlockingIOError):
            rx.recv(1, socket.MSG_DONTWAIT)  # everything was read
        assert sent == []  # nothing here is answered
        return core, udp
    finally:
        rx.close()
        tx.close()


def handover(core: NodeCore, udp: UdpSocket, now: float) -> None:
    """What the daemon does with an engine: wait for its hand-over, take the datagram, run
    node_receive on it and the rest of the socket, give the socket back; then stop it."""
    engine = FAST.NodeEngine(udp.fileno(), udp)  # type: ignore[union-attr]
    engine.start()
    try:
        ready, _, _ = select.select([engine.fileno()], [], [], 10)
        assert ready, "the engine handed nothing over"
        item = engine.take()
        assert item is not None
        FAST.node_receive(core, udp, 512, now, engine, item)  # type: ignore[union-attr]
        engine.arm()
        counters = engine.counters()
        assert counters["handed"] == 1 and counters["engine"] == 0, counters
    finally:
        engine.stop()


def outcome(core: NodeCore, udp: UdpSocket) -> dict[str, Any]:
    return {
        "datagrams": core.datagrams,
        "drops": dict(core.drops),
        "events": core.take_events(),
        "reassembler_dropped": udp.reassembler.dropped,
        "pending": len(udp.reassembler),
    }


@pytest.mark.parametrize("mode", MODES)
def test_malformed_datagrams_are_dropped_and_counted_alike(mode: str) -> None:
    junk = [
        b"short",
        sealed_like(TYPE_FRAME, 120, version=9),
        sealed_like(9, 120),
        sealed_like(TYPE_FRAME, 120),  # a network this node does not serve
        sealed_like(TYPE_SUPERFRAME, 200),
    ]
    result = outcome(*read(mode, [(junk, 0)]))
    assert result == {
        "datagrams": 5,
        "drops": {"short": 1, "version": 1, "type": 1, "unknown_network": 2},
        "events": [("load", b"N" * 16)],
        "reassembler_dropped": 0,
        "pending": 0,
    }


@pytest.mark.parametrize("mode", MODES)
def test_a_gso_run_is_split_into_its_datagrams(mode: str) -> None:
    run = [sealed_like(TYPE_FRAME, 100, network=bytes([i]) * 16) for i in range(8)]
    run.append(sealed_like(TYPE_FRAME, 60, network=b"z" * 16))  # a run may end shorter
    result = outcome(*read(mode, [(run, 100)]))
    assert result["datagrams"] == 9
    assert result["drops"] == {"unknown_network": 9}
    assert sorted(r[1][0] for r in result["events"]) == sorted(d[0] for d in run)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("as_run", [False, True])
def test_fragments_are_reassembled_then_handled(mode: str, as_run: bool) -> None:
    packet = sealed_like(TYPE_SUPERFRAME, 5000)
    wire = fragment(packet)
    pieces = [wire[at : at + FRAGMENT_SIZE] for at in range(0, len(wire), FRAGMENT_SIZE)]
    bogus = bytearray(pieces[0])
    bogus[31] = 1  # "1 fragment": not a fragment anyone cut, dropped by the reassembler
    sends = [(pieces, FRAGMENT_SIZE if as_run else 0), ([bytes(bogus)], 0)]
    result = outcome(*read(mode, sends))
    assert result == {
        "datagrams": 1,  # the packet, whole once reassembled (for a network not served here)
        "drops": {"unknown_network": 1},
        "events": [("load", b"N" * 16)],
        "reassembler_dropped": 1,
        "pending": 0,
    }


def whole_fragments(packet: bytes) -> list[bytes]:
    wire = fragment(packet)
    return [wire[at : at + FRAGMENT_SIZE] for at in range(0, len(wire), FRAGMENT_SIZE)]


@pytest.mark.parametrize("mode", MODES)
def test_a_run_mixing_datagrams_and_whole_packets_keeps_its_order(mode: str) -> None:
    """One GSO run: a datagram, a super-frame's fragments, a datagram, another super-frame's
    fragments — the compiled read joins each packet in C (node_counters' ``joined``) and hands
    the four on in the order they came, as the pure Reassembler does."""
    chunk = FRAGMENT_SIZE - 32  # fragment.PREFIX_LEN: a packet of 3 chunks ends on a full one
    nets = [bytes([0x10 + i]) * 16 for i in range(4)]
    a = sealed_like(TYPE_SUPERFRAME, 3 * chunk, network=nets[1])
    b = sealed_like(TYPE_SUPERFRAME, 5000, network=nets[3])
    run = [sealed_like(TYPE_FRAME, FRAGMENT_SIZE, network=nets[0]), *whole_fragments(a)]
    run += [sealed_like(TYPE_FRAME, FRAGMENT_SIZE, network=nets[2]), *whole_fragments(b)]
    assert all(len(d) == FRAGMENT_SIZE for d in run[:-1])
    joined = FAST.node_counters()["joined"] if FAST is not None else 0
    result = outcome(*read(mode, [(run, FRAGMENT_SIZE)]))
    assert result == {
        "datagrams": 4,
        "drops": {"unknown_network": 4},
        "events": [("load", n) for n in nets],  # in arrival order
        "reassembler_dropped": 0,
        "pending": 0,
    }
    if mode != "pure":
        assert FAST.node_counters()["joined"] - joined == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
def test_a_run_cut_short_waits_for_its_last_fragment(mode: str) -> None:
    """A run that holds only the first fragments of a packet (then a datagram) leaves them to
    the pure Reassembler's pending table; the packet is handled once its last fragment comes
    alone, after the datagram that followed the cut run."""
    nets = [b"A" * 16, b"B" * 16]
    pieces = whole_fragments(sealed_like(TYPE_SUPERFRAME, 5000, network=nets[0]))
    cut = [*pieces[:-1], sealed_like(TYPE_FRAME, 200, network=nets[1])]
    result = outcome(*read(mode, [(cut, FRAGMENT_SIZE), ([pieces[-1]], 0)]))
    assert result == {
        "datagrams": 2,
        "drops": {"unknown_network": 2},
        "events": [("load", nets[1]), ("load", nets[0])],
        "reassembler_dropped": 0,
        "pending": 0,
    }


VNET = struct.Struct("<BBHHHH")


@pytest.mark.skipif(FAST is None, reason="atenet._fast is not built (scripts/setup.sh)")
@settings(max_examples=3000, deadline=None)
@given(
    flags=st.sampled_from([0, 1, 2, 3]),
    gso_type=st.sampled_from([0, 1, 3, 4, 5, 6, 0x80, 0x81, 0x84, 0x85]),
    gso_size=st.one_of(st.integers(0, 64), st.integers(0, 0xFFFF)),
    start=st.one_of(st.integers(0, 80), st.integers(0, 0xFFFF)),
    offset=st.one_of(st.integers(0, 20), st.integers(0, 0xFFFF)),
    frame_len=st.one_of(st.integers(0, 200), st.integers(0, 65000)),
)
def test_the_c_offload_check_passes_exactly_what_offload_check_passes(
    flags: int, gso_type: int, gso_size: int, start: int, offset: int, frame_len: int
) -> None:
    """node_receive forwards a super-frame in C only when its offload header passes; anything
    the C check refuses goes to the pure _valid_packet, which counts why. So the C answer must
    be offload.check's, header by header (or a refused packet would travel)."""
    packet = VNET.pack(flags, gso_type, 0, gso_size, start, offset) + bytes(frame_len)
    try:
        check(packet)
        passes = True
    except OffloadError:
        passes = False
    assert FAST.offload_check(packet) is passes  # type: ignore[union-attr]
