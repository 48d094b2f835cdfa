"""`tok connect`'s GIL-free engine (csrc/fast/tokengine.c, ``_fast.TokEngine``).

Part one drives a real :class:`Connection` with its engine running, on the rig of
tests/test_fast_tok.py (the TAP is a datagram socketpair, the node a UDP socket on 127.0.0.1)
inside an asyncio loop: the engine's thread carries the common case (its C counters say so),
bursts from the TAP and GRO runs from the node included; what it hands over (a sender's first
packet, a control message, a fragment run, a super-frame to fragment, a DHCP reply — alone or
with the rest of its GRO run) runs today's path and everything arrives in order (the GRO run
tests in the three modes: engine, compiled without it, pure); bad datagrams are counted under
the same names as on the pure path; stop() leaves no thread and the fds open; and 100k packets
through it leave the process's memory where it was.

Part two (root) runs real `tok connect` hosts and an `atenet run` node in namespaces in the three
modes — engine on, ``ATENET_ENGINE=0``, ``ATENET_PURE=1`` — with kernel pings (v4 and v6, with
and without offloads), a TCP transfer sha256-equal through the node, a DHCP lease, and the
state file saying which mode runs and, with the engine, that it carried the pings.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.client.connect import Connection
from atenet.client.dhcp import DhcpClient
from atenet.fast import FAST
from atenet.overlay.fragment import FRAGMENT_SIZE, fragment
from atenet.overlay.seal import (
    HEADER_LEN,
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Sealer,
)
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, UDP_PORT, Overlay
from tests.test_fast_tok import Rig, capture_sealed, dhcp_reply_frame, frame, make_rig, vnet
from tests.test_offload_e2e import transfer

pytestmark = pytest.mark.skipif(
    FAST is None or not hasattr(FAST, "TokEngine"), reason="the compiled engine is not built"
)


def engine_threads() -> list[str]:
    """Names of this process's threads called tok-engine (from /proc, not Python's view)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue
    return [n for n in names if n == "tok-engine"]


def no_engine_thread() -> bool:
    """No tok-engine thread, waited for up to 2 s: a joined thread's task may still be listed
    in /proc for a moment after pthread_join returned (seen under load in the whole suite)."""
    deadline = time.monotonic() + 2
    while engine_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine_threads() == []


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run (the engine's hand-overs are its callbacks) until ``check()``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def node_receives(rig: Rig, want: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += rig.node_receives(want - len(got), timeout=0.01)
        await asyncio.sleep(0.005)
    return got


async def tap_receives(rig: Rig, want: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += rig.tap_frames()
        await asyncio.sleep(0.005)
    return got


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())  # type: ignore[arg-type]


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        if rig.conn._engine is not None:
            rig.conn._engine.stop()
        rig.close()


def started(rig: Rig) -> Connection:
    conn = rig.conn
    conn._engine_wanted = True
    assert conn._engine_start(), "the engine did not start"
    return conn


def test_the_engine_carries_both_hops_and_its_counters_say_so(rigs: list[Rig]) -> None:
    rig = make_rig(True)
    rigs.append(rig)

    async def body() -> None:
        conn = started(rig)
        engine = conn._engine
        assert engine.running and len(engine_threads()) == 1
        # The node's first packet opens the replay window on the pure path (a hand-over).
        rig.to_client(rig.sealer.seal(frame(0)))
        assert await tap_receives(rig, 1) == [frame(0)]
        await wait_for(lambda: engine.counters["udp_handovers"] == 1)
        # Now pings both ways: each request opened, and its answer sealed, in the thread.
        for i in range(1, 21):
            rig.to_client(rig.sealer.seal(frame(i)))
            assert await tap_receives(rig, 1) == [frame(i)]
            rig.from_tap(frame(100 + i))
            assert await node_receives(rig, 1) == [(TYPE_FRAME, frame(100 + i))]
        c = engine.counters
        assert c["opened"] == 20 and c["sealed"] == 20
        assert c["udp_handovers"] == 1 and c["tap_handovers"] == 0
        conn._engine_sync()  # folded into the Python objects' counters
        t = conn.tap.counters  # type: ignore[union-attr]
        assert (t.tx_frames, t.rx_frames) == (21, 20)
        assert t.tx_bytes == 21 * 98 and t.rx_bytes == 20 * 98
        assert conn.core.last_heard > time.time() - 10 and not conn.core.drops
        state = conn.state(time.time())
        assert state["engine"] == "on" and state["engine_counters"]["opened"] == 20
        conn._engine_stop(fallback=False)
        assert conn.state(time.time())["engine"] == "off"

    run(body)


def test_handed_over_items_keep_their_place_in_both_directions(rigs: list[Rig]) -> None:
    """Bursts that mix the common case with what only Python does — a control message, a
    super-frame's fragments, a GRO run, an offloaded packet that needs fragments — arrive
    complete and in order."""
    rig = make_rig(True, vnet=True)
    rigs.append(rig)

    async def body() -> None:
        conn = started(rig)
        conn.core.config = {"offload": 1}
        conn._engine_sync()  # the node takes offloaded packets now: the engine is told
        engine = conn._engine
        rig.to_client(rig.sealer.seal(frame(0)))
        assert await tap_receives(rig, 1) == [bytes(10) + frame(0)]

        big = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(7, 20000)
        pong = {"op": "pong", "instance": "n9", "offload": 1}
        sends = [
            rig.sealer.seal(frame(1)),
            rig.sealer.seal(json.dumps(pong).encode(), TYPE_CONTROL),
            rig.sealer.seal(frame(2)),
        ]
        for packet in sends:
            rig.to_client(packet)
        rig.node_udp.send(rig.sealer.seal(big, TYPE_SUPERFRAME), rig.client)  # fragments
        rig.node_udp.hold()
        for i in range(3, 13):
            rig.node_udp.send(rig.sealer.seal(frame(i)), rig.client)
        rig.node_udp.release()  # a GRO run
        rig.to_client(rig.sealer.seal(frame(13)))
        want = [bytes(10) + frame(i) for i in (1, 2)] + [big]
        want += [bytes(10) + frame(i) for i in range(3, 14)]
        assert await tap_receives(rig, len(want)) == want
        assert conn.core.instance == "n9" and not conn.core.drops

        small = vnet(flags=1, csum_start=34) + frame(1000, 120)  # fits one datagram: engine
        tap_big = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(2000, 9000)
        assert len(tap_big) + 50 > FRAGMENT_SIZE
        before = engine.counters
        packets = [vnet() + frame(i) for i in range(3)] + [small, tap_big]
        packets += [vnet() + frame(i) for i in range(3, 40)]
        for p in packets:
            rig.from_tap(p)
        expect = [(TYPE_FRAME, frame(i)) for i in range(3)]
        expect += [(TYPE_SUPERFRAME, small), (TYPE_SUPERFRAME, tap_big)]
        expect += [(TYPE_FRAME, frame(i)) for i in range(3, 40)]
        assert await node_receives(rig, len(expect)) == expect
        after = engine.counters
        assert after["tap_handovers"] > before["tap_handovers"]
        # A lone offloaded packet that fits one datagram is the engine's.
        rig.from_tap(small)
        assert await node_receives(rig, 1) == [(TYPE_SUPERFRAME, small)]
        await wait_for(lambda: engine.counters["sealed"] > after["sealed"])
        conn._engine_sync()
        t = conn.tap.counters  # type: ignore[union-attr]
        assert t.rx_frames == len(packets) + 1
        assert t.rx_bytes == sum(map(len, packets)) + len(small)

    run(body)


def test_a_burst_from_the_tap_leaves_from_the_thread_in_gso_runs_in_order(
    rigs: list[Rig],
) -> None:
    rig = make_rig(True)
    rigs.append(rig)

    async def body() -> None:
        conn = started(rig)
        engine = conn._engine
        start = conn.core.sealer.counter
        # Runs of equal sizes, shorter ones ending runs, a jumbo one alone (as test_fast_tok).
        sizes = [98] * 70 + [60, 1414, 1414, 200, 1414] + [1500] + [98] * 300 + [64] * 3
        sent = [frame(i, size) for i, size in enumerate(sizes)]
        for f in sent:
            rig.from_tap(f)
        assert await node_receives(rig, len(sent)) == [(TYPE_FRAME, f) for f in sent]
        c = engine.counters
        assert c["sealed"] == len(sent) and c["tap_handovers"] == 0
        assert c["rx_frames"] == len(sent) and c["rx_batches"] >= 2  # 256 frames a wake-up
        assert conn.core.sealer.counter == start + len(sent)
        assert c["send_errors"] == 0

    run(body)


def test_bad_datagrams_are_counted_as_on_the_pure_path(rigs: list[Rig]) -> None:
    """The same datagrams as tests/test_fast_tok.py's pure/fast test, the same drop counts."""
    rig = make_rig(True)
    rigs.append(rig)

    async def body() -> None:
        conn = started(rig)
        sealed = [rig.sealer.seal(frame(i)) for i in range(40)]
        for packet in sealed:
            rig.to_client(packet)
        assert await tap_receives(rig, 40) == [frame(i) for i in range(40)]
        tampered = bytearray(rig.sealer.seal(frame(94)))
        tampered[HEADER_LEN + 5] ^= 1
        forged = bytearray(rig.sealer.seal(frame(99)))
        forged[-1] ^= 0x80
        other_net = bytes(16) + bytes(rig.sealer.seal(frame(98)))[16:]
        other_key = bytearray(rig.sealer.seal(frame(97)))
        other_key[21] ^= 1
        version = bytearray(rig.sealer.seal(frame(96)))
        version[16] = 9
        ptype = bytearray(rig.sealer.seal(frame(95)))
        ptype[17] = 7
        for bad in (sealed[0], sealed[39], tampered, forged, other_net, other_key, version,
                    ptype, b"", b"x" * 49):  # fmt: skip
            rig.to_client(bytes(bad))
        want = {
            "replay": 2, "auth": 2, "wrong_network": 1, "key": 1, "version": 1, "type": 1,
            "short": 2,
        }  # fmt: skip
        await wait_for(lambda: sum(conn._engine.counters["drops"].values()) == 10)
        conn._engine_sync()
        assert dict(conn.core.drops) == want
        assert rig.tap_frames() == []
        assert conn._engine.counters["udp_handovers"] == 1  # the first packet only

    run(body)


def test_dhcp_replies_are_handed_to_the_dhcp_client(rigs: list[Rig]) -> None:
    rig = make_rig(True)
    rigs.append(rig)

    async def body() -> None:
        conn = started(rig)
        conn.dhcp = DhcpClient(conn.mac)
        for packet in (frame(0), frame(1), dhcp_reply_frame(), frame(2)):
            rig.to_client(rig.sealer.seal(packet))
        assert await tap_receives(rig, 3) == [frame(0), frame(1), frame(2)]
        await wait_for(lambda: conn.dhcp.counters["malformed"] == 1)  # type: ignore[union-attr]
        conn.dhcp = None  # not running: the same frame is the kernel's
        rig.to_client(rig.sealer.seal(dhcp_reply_frame()))
        assert await tap_receives(rig, 1) == [dhcp_reply_frame()]

    run(body)


# ---------------------------------------------------------------- GRO runs cut in the thread

UDP_SEGMENT = 103  # linux/udp.h: a send's segment size (UDP GSO)
RUN_MODES = ["engine", "no-engine", "pure"]
"""In process: the engine's thread; the loop reading with the compiled path (``ATENET_ENGINE=0``);
the loop reading with pure Python (``ATENET_PURE=1``)."""


def send_run(rig: Rig, datagrams: list[bytes]) -> None:
    """``datagrams`` from the node in ONE sendmsg with UDP_SEGMENT: the client's socket (UDP_GRO
    on) reads them back as one GRO run, as it does a burst the node sends."""
    size = len(datagrams[0])
    assert all(len(d) == size for d in datagrams[:-1]) and len(datagrams[-1]) <= size
    seg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    rig.node.sendmsg([b"".join(datagrams)], seg, 0, rig.client)


def carrying(rig: Rig, mode: str) -> Connection:
    """The connection reading the socket the way ``mode`` says (the loop's reader otherwise,
    as :meth:`Connection.run` installs it)."""
    if mode == "engine":
        return started(rig)
    assert (rig.conn.fast is not None) is (mode == "no-engine")
    conn, sock = rig.conn, rig.conn.sock
    assert sock is not None
    asyncio.get_running_loop().add_reader(sock.fileno(), conn._on_udp)
    return conn


def drops(conn: Connection) -> dict[str, int]:
    if conn._engine is not None:
        conn._engine_sync()
    return {k: v for k, v in conn.core.drops.items() if v}


def engine_counts(conn: Connection) -> tuple[int, int]:
    """(opened, udp_handovers) so far; (0, 0) without the engine."""
    if conn._engine is None:
        return 0, 0
    c = conn._engine.counters
    return c["opened"], c["udp_handovers"]


async def window_opened(rig: Rig, conn: Connection, pad: bytes = b"") -> None:
    """The node's first packet (a hand-over with the engine: it makes the replay window);
    ``pad``: the virtio-net header the TAP gets it with."""
    rig.to_client(rig.sealer.seal(frame(0)))
    assert await tap_receives(rig, 1) == [pad + frame(0)]


@pytest.mark.parametrize("mode", RUN_MODES)
def test_gro_runs_are_cut_and_opened_in_the_thread(mode: str, rigs: list[Rig]) -> None:
    """Runs of up to 64 datagrams (the last one shorter, a lone datagram between them), 300
    frames in all, more than one wake-up's budget: all arrive in order, and with the engine
    its thread opened every one of them — no hand-over (it used to hand every run over)."""
    rig = make_rig(mode != "pure")
    rigs.append(rig)
    sock = rig.conn.sock
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    async def body() -> None:
        conn = carrying(rig, mode)
        await window_opened(rig, conn)
        opened, handed = engine_counts(conn)
        sent: list[bytes] = []
        for count in (40, 64, 63, 1, 64, 64, 4):
            run = [frame(len(sent) + 1 + i) for i in range(count)]
            run[-1] = run[-1][:60]  # a run may end shorter
            sent += run
            send_run(rig, [rig.sealer.seal(f) for f in run])
        assert await tap_receives(rig, len(sent)) == sent
        assert drops(conn) == {}
        t = conn.tap.counters  # type: ignore[union-attr]
        assert (t.tx_frames, t.tx_bytes) == (1 + len(sent), 98 + sum(map(len, sent)))
        if mode == "engine":
            assert engine_counts(conn) == (opened + len(sent), handed)

    run(body)


@pytest.mark.parametrize("mode", RUN_MODES)
@pytest.mark.parametrize("with_client", [False, True], ids=["kernel", "dhcp-client"])
def test_a_dhcp_reply_in_a_run_goes_first_and_the_rest_follows(
    mode: str, with_client: bool, rigs: list[Rig]
) -> None:
    """A DHCP reply in the middle of a GRO run: the thread opened it (its window marked), so
    it is handed over opened, and the rest of the run unopened after it. Without a DHCP client
    the reply is the kernel's: the TAP shows the order. With one, the client gets it and the
    frames around it reach the TAP; none is dropped as a replay."""
    rig = make_rig(mode != "pure")
    rigs.append(rig)
    reply = dhcp_reply_frame()
    size = len(reply)  # a run's datagrams are one size

    async def body() -> None:
        conn = carrying(rig, mode)
        if with_client:
            conn.dhcp = DhcpClient(conn.mac)
        await window_opened(rig, conn)
        opened, handed = engine_counts(conn)
        run = [frame(1, size), frame(2, size), reply, frame(3, size), frame(4, size)]
        send_run(rig, [rig.sealer.seal(f) for f in run])
        want = [f for f in run if f != reply or not with_client]
        assert await tap_receives(rig, len(want)) == want
        if with_client:
            await wait_for(lambda: conn.dhcp.counters["malformed"] == 1)  # type: ignore[union-attr]
        # The frames of a second run go on through the thread.
        later = [frame(i, size) for i in range(5, 9)]
        send_run(rig, [rig.sealer.seal(f) for f in later])
        assert await tap_receives(rig, len(later)) == later
        assert drops(conn) == {}
        if mode == "engine":  # 1, 2 and the reply opened in the thread, 3 and 4 by Python
            assert engine_counts(conn) == (opened + 3 + 4, handed + 1)

    run(body)


@pytest.mark.parametrize("mode", RUN_MODES)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["control", "fragments", "new-sender"])
def test_what_python_does_in_a_run_keeps_its_place(
    mode: str, where: str, kind: str, rigs: list[Rig]
) -> None:
    """A control message, a super-frame's fragments, or a sender's first packet at the start,
    in the middle or at the end of a GRO run of sealed full-size frames (all 1,464 bytes):
    the frames before it are opened in the thread, the rest of the run goes to Python as a
    fresh read would: everything arrives once, in order, nothing counted as a drop."""
    rig = make_rig(mode != "pure", vnet=True)
    rigs.append(rig)
    pad = bytes(10)  # a plain frame's virtio-net header on the TAP
    full = FRAGMENT_SIZE - 50  # a frame that seals to one fragment datagram's size

    async def body() -> None:
        conn = carrying(rig, mode)
        conn.core.config = {"offload": 1}
        await window_opened(rig, conn, pad)
        opened, handed = engine_counts(conn)
        delivered: list[bytes]
        if kind == "control":
            pong = json.dumps({"op": "pong", "instance": "n9", "offload": 1}).encode()
            odd = [rig.sealer.seal(pong + b" " * (full - len(pong)), TYPE_CONTROL)]
            delivered = []
        elif kind == "fragments":
            chunk = FRAGMENT_SIZE - 32
            big = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34)
            big += frame(77, 2 * chunk - 50 - len(big))  # seals to exactly two fragments
            cut = fragment(rig.sealer.seal(big, TYPE_SUPERFRAME))
            odd = [cut[:FRAGMENT_SIZE], cut[FRAGMENT_SIZE:]]
            delivered = [big]
        else:
            other = Sealer(conn.token.network_id, rig.key, 0xB0B, time.time_ns())
            odd = [other.seal(frame(66, full))]
            delivered = [pad + frame(66, full)]
        before = [frame(i, full) for i in range({"first": 0, "middle": 2, "last": 3}[where])]
        after = [frame(10 + i, full) for i in range({"first": 3, "middle": 2, "last": 0}[where])]
        datagrams = [rig.sealer.seal(f) for f in before] + odd
        datagrams += [rig.sealer.seal(f) for f in after]
        assert {len(d) for d in datagrams} == {FRAGMENT_SIZE}
        send_run(rig, datagrams)
        want = [pad + f for f in before] + delivered + [pad + f for f in after]
        assert await tap_receives(rig, len(want)) == want
        if kind == "control":
            assert conn.core.instance == "n9"
        # The next run is the thread's again (the new sender's window included).
        later = [frame(20 + i, full) for i in range(3)]
        send_run(rig, [rig.sealer.seal(f) for f in later])
        assert await tap_receives(rig, 3) == [pad + f for f in later]
        assert drops(conn) == {}
        t = conn.tap.counters  # type: ignore[union-attr]
        assert t.tx_frames == 1 + len(want) + 3
        if mode == "engine":
            assert engine_counts(conn) == (opened + len(before) + 3, handed + 1)

    run(body)


@pytest.mark.parametrize("mode", RUN_MODES)
def test_a_tampered_or_replayed_datagram_in_a_run_is_counted_once(
    mode: str, rigs: list[Rig]
) -> None:
    """A run with a tampered datagram and a replayed one in it: each counted once (auth,
    replay), the others delivered in order, with the engine without a hand-over."""
    rig = make_rig(mode != "pure")
    rigs.append(rig)

    async def body() -> None:
        conn = carrying(rig, mode)
        await window_opened(rig, conn)
        opened, handed = engine_counts(conn)
        sealed = [rig.sealer.seal(frame(i)) for i in range(1, 7)]
        tampered = bytearray(sealed[2])
        tampered[HEADER_LEN + 5] ^= 1
        send_run(rig, [*sealed[:2], bytes(tampered), sealed[0], *sealed[3:]])
        want = [frame(i) for i in (1, 2, 4, 5, 6)]
        assert await tap_receives(rig, len(want)) == want
        await asyncio.sleep(0.05)
        assert drops(conn) == {"auth": 1, "replay": 1}
        assert rig.tap_frames() == []
        if mode == "engine":
            assert engine_counts(conn) == (opened + 5, handed)
            assert conn._engine.counters["drops"] == {"auth": 1, "replay": 1}

    run(body)


def test_stop_leaves_no_thread_and_the_fds_open(rigs: list[Rig]) -> None:
    rig = make_rig(True)
    rigs.append(rig)
    before = threading.active_count()

    async def body() -> None:
        conn = started(rig)
        assert len(engine_threads()) == 1
        engine = conn._engine
        conn._engine_stop(fallback=True)  # the loop's readers take over
        engine.stop()  # idempotent
        assert no_engine_thread() and not engine.running
        for fd in (conn.tap.fileno(), conn.sock.fileno()):  # type: ignore[union-attr]
            os.fstat(fd)
        rig.to_client(rig.sealer.seal(frame(5)))
        assert await tap_receives(rig, 1) == [frame(5)]  # by today's reader
        assert conn._engine_start()  # and again
        rig.from_tap(frame(6))
        assert await node_receives(rig, 1) == [(TYPE_FRAME, frame(6))]
        conn._engine_stop(fallback=False)
        assert no_engine_thread()

    run(body)
    assert no_engine_thread() and threading.active_count() == before


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100k_packets_leak_no_memory(rigs: list[Rig]) -> None:
    """100k datagrams opened and 100k frames sealed in the thread (and some hand-overs): the
    resident size after is where it was after the first 10k (a leak of one allocation per
    packet would be megabytes)."""
    rig = make_rig(True)
    rigs.append(rig)
    rig.kernel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    async def body() -> None:
        conn = started(rig)
        engine = conn._engine
        sealed = [rig.sealer.seal(frame(i % 7)) for i in range(100_000)]
        rig.to_client(sealed[0])
        assert await tap_receives(rig, 1) == [frame(0)]
        base = 0
        to_node = 0
        for at in range(1, 100_000, 500):
            batch = sealed[at : at + 500]
            for packet in batch:
                rig.to_client(packet)
                rig.from_tap(frame(at % 5))
            await wait_for(lambda at=at: engine.counters["opened"] >= min(at + 499, 99_999))
            got = await node_receives(rig, len(batch))
            assert got == [(TYPE_FRAME, frame(at % 5))] * len(batch)
            to_node += len(got)
            rig.tap_frames()
            if at == 10_001:
                base = rss_kib()
        c = engine.counters
        assert c["opened"] == 99_999 and not c["drops"] and to_node == 99_999
        assert c["sealed"] > 1000  # the rest came in bursts: handed over, sealed by Python
        assert rss_kib() - base < 4096, (base, rss_kib())

    run(body)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


# ---------------------------------------------------------------- real processes (root)

MODES = {
    "engine": {},
    "no-engine": {"ATENET_ENGINE": "0"},
    "pure": {"ATENET_PURE": "1"},
}


@pytest.fixture(scope="module", params=list(MODES))
def lab_net(request: pytest.FixtureRequest) -> Iterator[Overlay]:
    """One node; hosts a, b with offloads, c, d with ``--no-offload``, all in one mode."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    mode = request.param
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-eng-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        env = {k: v for k, v in overlay.env.items() if k not in ("ATENET_PURE", "ATENET_ENGINE")}
        overlay.env = env | MODES[mode]
        overlay.add_node("n1")
        for name in ("a", "b"):
            overlay.add_client(name, ["n1"])
        for name in ("c", "d"):
            overlay.add_client(name, ["n1"], args=("--no-offload",))
        overlay.mode = mode  # type: ignore[attr-defined]
        yield overlay


def state(net: Overlay, name: str) -> dict[str, Any]:
    return json.loads((net.root / name / "run" / "atenet0.json").read_text())


def fresh_state(net: Overlay, name: str, after: float) -> dict[str, Any]:
    """The state file once written after ``after`` (every 5 s)."""
    deadline = time.monotonic() + 12
    while True:
        s = state(net, name)
        if s["updated"] > after or time.monotonic() > deadline:
            return s
        time.sleep(0.3)


@needs_root
def test_lab_pings_in_each_mode_and_the_engine_carries_them(lab_net: Overlay) -> None:
    mode = lab_net.mode  # type: ignore[attr-defined]
    c = lab_net.clients
    for name in c:
        s = state(lab_net, name)
        assert s["engine"] == ("on" if mode == "engine" else "off"), (name, s)
        assert (s["fastpath"] == "on") is (mode != "pure")
    before = {name: state(lab_net, name)["engine_counters"] for name in c}
    for src, dst in (("a", "b"), ("c", "d"), ("a", "c"), ("d", "b")):
        for addr in (c[dst].ip4, c[dst].ip6):
            out = c[src].host.run(["ping", "-n", "-c", "5", "-i", "0.1", "-w", "10", addr])
            assert " 5 received" in out.stdout, (src, dst, out.stdout)
    if mode != "engine":
        return
    now = time.time()
    for name in c:
        counters = fresh_state(lab_net, name, now)["engine_counters"]
        # Every host sent and answered at least 10 pings; the thread sealed and opened them.
        assert counters["sealed"] - before[name]["sealed"] >= 10, (name, counters)
        assert counters["opened"] - before[name]["opened"] >= 10, (name, counters)


@needs_root
def test_lab_tcp_through_the_node_arrives_intact(lab_net: Overlay) -> None:
    c = lab_net.clients
    transfer(lab_net.lab, c["a"], c["b"], c["b"].ip4, 32 << 20)
    transfer(lab_net.lab, c["c"], c["d"], c["d"].ip6, 8 << 20)


@needs_root
def test_lab_hosts_got_their_address_by_dhcp(lab_net: Overlay) -> None:
    """The DHCP exchange (replies handed from the engine to the DHCP client) bound a lease."""
    for name in lab_net.clients:
        s = state(lab_net, name)
        assert s["address_source"] == "dhcp" and s["lease"], (name, s.get("address_note"))


def drop_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in ("replay", "auth")}


@needs_root
@pytest.mark.parametrize("dst", ["b", "d"])
def test_lab_replayed_and_tampered_datagrams_from_the_node_are_counted(
    lab_net: Overlay, dst: str
) -> None:
    """A sealed datagram captured on its way to a host, sent again from the node's address and
    port (a raw socket in the node's namespace: what the engine opens), and two altered copies:
    none reaches the TAP, and the state file counts them as the pure path does — with the
    engine, in its own counters too."""
    mode = lab_net.mode  # type: ignore[attr-defined]
    c, node = lab_net.clients, lab_net.nodes["n1"]
    host = c[dst].host

    def sockets() -> tuple[socket.socket, socket.socket]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind((c[dst].ip4, 7778))
        listener.settimeout(5)
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        sniffer.bind(("eth0", 0))
        sniffer.settimeout(5)
        return listener, sniffer

    listener, sniffer = host.call(sockets)
    raw = node.host.call(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sender = c["a" if dst == "b" else "c"].host.call(
        socket.socket, socket.AF_INET, socket.SOCK_DGRAM
    )

    def from_node(payload: bytes, port: int) -> None:
        header = struct.pack("!HHHH", UDP_PORT, port, 8 + len(payload), 0)  # no checksum
        raw.sendto(header + payload, (host.ip, 0))

    try:
        before = state(lab_net, dst)  # no drops come but ours: an older file will do
        marker = b"E" * 321
        sender.sendto(marker, (c[dst].ip4, 7778))
        assert listener.recv(2048) == marker
        frame_len = 14 + 20 + 8 + len(marker)
        sealed, port = capture_sealed(sniffer, node.host.ip, {frame_len + 50, frame_len + 60})
        from_node(sealed, port)  # a replay, at once: the node's counter follows its clock
        bumped = bytearray(sealed)
        counter = int.from_bytes(sealed[26:34], "big")
        bumped[26:34] = (counter + 1000).to_bytes(8, "big")  # fresh for the window, not the AEAD
        from_node(bytes(bumped), port)
        bumped[26:34] = (counter + 2000).to_bytes(8, "big")
        bumped[60] ^= 1
        from_node(bytes(bumped), port)
        listener.settimeout(1.5)
        with pytest.raises(TimeoutError):
            listener.recv(2048)
        after = fresh_state(lab_net, dst, time.time())
        assert drop_delta(after["drops"], before["drops"]) == {"replay": 1, "auth": 2}
        if mode == "engine":
            got = drop_delta(after["engine_counters"]["drops"], before["engine_counters"]["drops"])
            assert got == {"replay": 1, "auth": 2}
        sender.sendto(marker, (c[dst].ip4, 7778))
        listener.settimeout(5)
        assert listener.recv(2048) == marker
    finally:
        for s in (listener, sniffer, raw, sender):
            s.close()


@needs_root
def test_lab_tok_status_says_whether_the_engine_runs(lab_net: Overlay) -> None:
    mode = lab_net.mode  # type: ignore[attr-defined]
    a = lab_net.clients["a"]
    out = a.host.run(
        [BIN / "tok", "status"], env=lab_net.env | {"ATENET_HOME": str(lab_net.root / "a")}
    )
    assert f"engine {'on' if mode == 'engine' else 'off'}" in out.stdout, out.stdout


def test_the_engine_follows_a_fail_over_and_steps_aside_for_a_node_it_cannot_reach(
    rigs: list[Rig],
) -> None:
    """The core moves to another endpoint (fail-over): frames go there from the engine. A node
    that is not IPv4 stops it and the loop's readers carry on; back on IPv4, it runs again."""
    rig = make_rig(True)
    rigs.append(rig)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(5)

    async def body() -> None:
        conn = started(rig)
        core = conn.core
        core.endpoints += [other.getsockname(), ("::1", 4799)]
        core.index = 1
        conn._engine_sync()
        rig.from_tap(frame(1))
        await wait_for(lambda: conn._engine.counters["sealed"] == 1)
        data = other.recv(2048)
        assert len(data) == len(frame(1)) + 50 and data[34:-16] != frame(1)  # sealed
        core.index = 2
        conn._engine_sync()
        assert conn._engine is None and conn.state(time.time())["engine"] == "off"
        core.index = 1
        conn._engine_sync()
        assert conn._engine is not None
        rig.from_tap(frame(2))
        await wait_for(lambda: conn._engine.counters["sealed"] == 1)
        assert len(other.recv(2048)) == len(frame(2)) + 50

    try:
        run(body)
    finally:
        other.close()
