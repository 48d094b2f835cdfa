"""The compiled fragment code (csrc/fast/frag.c) against the pure path, and end to end both ways.

* Differential: ``_fast.fragment`` gives the same bytes as the pure ``fragment_py`` for random
  packets; ``_fast.reassemble`` gives the same packets out, the same ``dropped`` count and the
  same pending table as the pure ``Reassembler.feed_py`` for random GRO runs of fragments with
  loss, duplication, reordering, mangled prefixes and garbage, and the table stays bounded.
* End to end: TCP through a real ``atenet run`` node between two ``tok connect`` hosts
  arrives sha256-equal with the fast path on and with ``ATENET_PURE=1``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.overlay.fragment import (
    FRAGMENT_SIZE,
    MAX_PACKET,
    PREFIX_LEN,
    Reassembler,
    fragment_py,
)
from atenet.overlay.seal import TYPE_SUPERFRAME
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import Overlay
from tests.test_offload_e2e import transfer

_fast = pytest.importorskip("atenet._fast", reason="the compiled fast path is not built")

NETWORK = bytes(range(16))
CHUNK = FRAGMENT_SIZE - PREFIX_LEN


def packet(size: int, sender: int, counter: int, rng: random.Random) -> bytes:
    """Bytes shaped like a sealed super-frame (header fields set, the rest random)."""
    header = NETWORK + bytes((1, TYPE_SUPERFRAME)) + (7).to_bytes(4, "big")
    header += sender.to_bytes(4, "big") + counter.to_bytes(8, "big")
    return (header + rng.randbytes(max(size - len(header), 0)))[:size]


def datagrams(buffer: bytes) -> list[bytes]:
    return [buffer[i : i + FRAGMENT_SIZE] for i in range(0, len(buffer), FRAGMENT_SIZE)]


@settings(max_examples=300)
@given(size=st.integers(0, MAX_PACKET + 3 * CHUNK), seed=st.integers(0, 2**32))
def test_fragment_gives_the_pure_paths_bytes(size: int, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    if size > MAX_PACKET:
        with pytest.raises(ValueError) as pure:
            fragment_py(data)
        with pytest.raises(ValueError) as fast:
            _fast.fragment(data)
        assert str(fast.value) == str(pure.value)
        return
    assert _fast.fragment(data) == fragment_py(data)
    assert _fast.fragment(bytearray(data)) == fragment_py(bytearray(data))


def runs(stream: list[bytes], rng: random.Random) -> list[tuple[bytes, int]]:
    """``stream`` cut into what ``recvmsg`` with UDP_GRO hands over: a lone datagram (segment 0
    or its own size), or a run of equal-size datagrams whose last may be shorter."""
    out: list[tuple[bytes, int]] = []
    at = 0
    while at < len(stream):
        first = stream[at]
        size = len(first)
        end = at + 1
        while end < len(stream) and rng.random() < 0.9 and len(stream[end - 1]) == size:
            if len(stream[end]) > size:
                break
            end += 1
        data = b"".join(stream[at:end])
        lone = end - at == 1
        out.append((data, rng.choice((0, size)) if lone else size))
        at = end
    return out


def mangle(piece: bytes, rng: random.Random) -> bytes:
    """A datagram with one byte changed where it matters most: the prefix, or anywhere."""
    if not piece:
        return rng.randbytes(rng.randrange(1, 40))
    at = rng.choice((17, 30, 31, rng.randrange(16, 30), rng.randrange(len(piece))))
    at = min(at, len(piece) - 1)
    return piece[:at] + bytes((rng.randrange(256),)) + piece[at + 1 :]


@settings(max_examples=300)
@given(seed=st.integers(0, 2**32), max_pending=st.integers(1, 6))
def test_reassembly_of_gro_runs_gives_the_pure_paths_packets_and_counts(
    seed: int, max_pending: int
) -> None:
    rng = random.Random(seed)
    stream: list[bytes] = []
    for n in range(rng.randrange(1, 7)):
        size = rng.choice((rng.randrange(1, 4 * CHUNK), rng.randrange(MAX_PACKET // 2, MAX_PACKET)))
        if rng.random() < 0.5:
            size = size // CHUNK * CHUNK or CHUNK  # exact multiples: runs may go on past them
        sealed = packet(size, rng.randrange(3), n + rng.randrange(3), rng)
        stream += datagrams(fragment_py(sealed)) if size > FRAGMENT_SIZE else [sealed]
    for _ in range(rng.randrange(4)):  # whole packets and garbage between the fragments
        stream.insert(rng.randrange(len(stream) + 1), rng.randbytes(rng.randrange(0, 1500)))
    # loss, duplication, reordering, mangling
    stream = [d for d in stream if rng.random() > 0.1]
    for _ in range(rng.randrange(3)):
        if stream:
            stream.insert(rng.randrange(len(stream) + 1), rng.choice(stream))
    if rng.random() < 0.3:
        rng.shuffle(stream)
    stream = [mangle(d, rng) if rng.random() < 0.05 else d for d in stream]

    pure, fast = Reassembler(max_pending), Reassembler(max_pending)
    for data, segment in runs(stream, rng):
        addr = ("10.0.0.1", 4799 + rng.randrange(2))
        want = pure.feed_py(data, segment, addr)
        got = _fast.reassemble(fast, data, segment, addr)
        assert got == want
        assert fast.dropped == pure.dropped
        assert list(fast._pending.items()) == list(pure._pending.items())
        assert len(fast) <= max_pending


@settings(max_examples=300)
@given(data=st.binary(max_size=3000), segment=st.integers(0, 3100), seed=st.integers(0, 255))
def test_garbage_runs_give_the_pure_paths_answer(data: bytes, segment: int, seed: int) -> None:
    # Prefix bytes that make garbage look like fragments more often than chance.
    if len(data) > 31 and seed & 1:
        data = data[:17] + b"\x04" + data[18:30] + bytes((seed >> 4, seed & 7)) + data[32:]
    pure, fast = Reassembler(2), Reassembler(2)
    assert _fast.reassemble(fast, data, segment, "a") == pure.feed_py(data, segment, "a")
    assert (fast.dropped, list(fast._pending.items())) == (
        pure.dropped,
        list(pure._pending.items()),
    )


def test_a_run_ending_in_30_bytes_is_not_an_error() -> None:
    # A first fragment (index 0 of 2) and a 30-byte datagram with the same sender and counter:
    # the pure path read the tail's index byte before checking it was there (IndexError).
    first = bytearray(os.urandom(100))
    first[17], first[30], first[31] = 4, 0, 2
    data = bytes(first) + bytes(first[:30])
    for feed in (Reassembler().feed_py, lambda *a: _fast.reassemble(Reassembler(), *a)):
        assert feed(data, 100, "a") == [data[100:]]


def test_stray_fragments_keep_the_table_bounded_and_counted() -> None:
    reassembler = Reassembler(max_pending=8)
    rng = random.Random(1)
    for counter in range(1000):  # first fragments of packets that never complete
        first = datagrams(fragment_py(packet(5000, 1, counter, rng)))[0]
        assert _fast.reassemble(reassembler, first, 0, "a") == []
    assert len(reassembler) == 8
    assert reassembler.dropped == 1000 - 8


def test_a_whole_run_is_one_packet_and_plain_datagrams_pass() -> None:
    rng = random.Random(2)
    big = packet(MAX_PACKET, 1, 1, rng)
    plain = packet(FRAGMENT_SIZE, 1, 2, rng)
    run = _fast.fragment(big)
    assert _fast.reassemble(Reassembler(), run, FRAGMENT_SIZE, "a") == [big]
    assert _fast.reassemble(Reassembler(), plain, 0, "a") == [plain]
    assert _fast.reassemble(Reassembler(), run + plain, FRAGMENT_SIZE, "a") == [big, plain]


# --- end to end: a real node, both ways ------------------------------------------------------


@needs_root
@pytest.mark.parametrize("pure", [False, True], ids=["fast", "pure"])
def test_tcp_through_a_node_arrives_byte_identical_both_ways(
    pure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pure:
        monkeypatch.setenv("ATENET_PURE", "1")
    else:
        monkeypatch.delenv("ATENET_PURE", raising=False)
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-ffrag-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        node = overlay.add_node("n1")
        a = overlay.add_client("a", ["n1"])
        b = overlay.add_client("b", ["n1"])
        assert a.host.ping(b.ip4, count=3, timeout=5)
        # The node really runs the way asked: the compiled module is mapped in it, or not.
        maps = Path(f"/proc/{node.proc.pid}/maps").read_text()  # type: ignore[union-attr]
        assert ("_fast.cpython" in maps) is not pure
        before = node.network("lan")
        transfer(lab, a, b, b.ip4, 64 << 20)
        transfer(lab, b, a, a.ip4, 16 << 20, port=5202)
        after = node.network("lan")
        frames_in = sum(p["frames_in"] for p in after["ports"]) - sum(
            p["frames_in"] for p in before["ports"]
        )
        assert frames_in < (80 << 20) // 1400 // 4, "the transfer did not go as super-frames"
