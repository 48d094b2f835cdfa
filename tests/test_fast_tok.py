"""`tok connect`'s two hops, compiled (csrc/fast/tok.c) and pure, with the same outcomes.

Part one drives :class:`Connection`'s reader callbacks on real sockets without root: the TAP is
a datagram socketpair (one read or write is one frame, like a TAP fd) and the node is a UDP
socket on 127.0.0.1 that seals and opens with the token's key. Every scenario runs twice, with
the fast path (``conn.fast = atenet._fast``) and without it (``conn.fast = None``: the pure
code), and asserts what arrived where, in which order, and what was counted.

Part two (root) runs the real thing in namespaces: `tok connect` hosts and an `atenet run`
node, all of them compiled (the hosts with their GIL-free engine, or with ``ATENET_ENGINE=0``)
or all of them with ``ATENET_PURE=1``: pings answered, a burst of
small UDP datagrams counted, TCP transfers sha256-equal with and without offloads, and sealed
datagrams replayed or tampered with at a host's socket dropped, counted and never delivered.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atenet.client.connect import Connection
from atenet.client.dhcp import DhcpClient
from atenet.fast import FAST
from atenet.overlay.fragment import FRAGMENT_SIZE, fragment_parts
from atenet.overlay.seal import (
    HEADER_LEN,
    OVERHEAD,
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Opener,
    PacketKey,
    Sealer,
    parse_header,
)
from atenet.overlay.token import AccessToken
from atenet.transport.tap import TapDevice
from atenet.transport.udp import UdpSocket
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import UDP_PORT, Overlay
from tests.test_offload_e2e import transfer

WAYS = [
    pytest.param(True, id="fast", marks=pytest.mark.skipif(FAST is None, reason="not built")),
    pytest.param(False, id="pure"),
]

MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02aa00000002")


def frame(n: int, size: int = 98) -> bytes:
    """An Ethernet frame of ``size`` bytes numbered ``n`` (IPv4 ethertype, not DHCP)."""
    body = n.to_bytes(4, "big") * (size // 4)
    return (MAC_A + MAC_B + b"\x08\x00" + body)[:size]


@dataclass
class Rig:
    conn: Connection
    kernel: socket.socket
    """The kernel's end of the "TAP"."""
    node: socket.socket
    node_udp: UdpSocket
    key: PacketKey
    sealer: Sealer
    """The node's sealer for packets to the client."""
    opener: Opener
    """The node's opener for packets from the client."""

    @property
    def client(self) -> tuple[str, int]:
        return self.conn.sock.getsockname()  # type: ignore[union-attr]

    def from_tap(self, data: bytes) -> None:
        self.kernel.send(data)

    def to_client(self, packet: bytes | bytearray) -> None:
        self.node.sendto(packet, self.client)

    def node_receives(self, want: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """(type, payload) of the whole packets the node gets, opened, until ``want`` came."""
        got: list[tuple[int, bytes]] = []

        def handle(packet: bytes, _addr: object) -> None:
            _net, ptype, _key, sender, counter = parse_header(packet)
            got.append((ptype, self.opener.open(packet, sender, counter)))

        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            self.node_udp.receive(handle, 1000)
            time.sleep(0.005)
        return got

    def tap_frames(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.kernel.recv(70000))
            except BlockingIOError:
                return out

    def pump(self) -> None:
        """Let the client's UDP callback run until the socket is empty (as the loop would)."""
        time.sleep(0.05)
        self.conn._on_udp()

    def close(self) -> None:
        for s in (self.kernel, self.node):
            s.close()
        if self.conn.tap is not None:
            self.conn.tap.close()
        if self.conn.sock is not None:
            self.conn.sock.close()


def make_rig(fast: bool, *, vnet: bool = False) -> Rig:
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.bind(("127.0.0.1", 0))
    port = node.getsockname()[1]
    token = AccessToken(os.urandom(16), 7, os.urandom(32), (f"127.0.0.1:{port}",))
    conn = Connection(token, "fake0", offload=vnet)
    conn.fast = FAST if fast else None
    tap_end, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (tap_end, kernel):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    conn.tap = TapDevice(tap_end.detach(), "fake0", vnet_hdr=vnet)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    conn.sock = sock
    conn.udp = UdpSocket(sock)
    key = PacketKey(token.secret, token.key_id)
    sealer = Sealer(token.network_id, key, 0x5EED, time.time_ns())
    node_udp = UdpSocket(node)
    node_udp.gro = False
    return Rig(conn, kernel, node, node_udp, key, sealer, Opener(key))


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


# ---------------------------------------------------------------- TAP -> seal -> UDP


@pytest.mark.parametrize("fast", WAYS)
def test_frames_from_the_tap_reach_the_node_sealed_in_order(fast: bool, rigs: list[Rig]) -> None:
    rig = make_rig(fast)
    rigs.append(rig)
    conn = rig.conn
    start = conn.core.sealer.counter

    rig.from_tap(frame(0))  # a lone frame (an idle ping): one datagram
    conn._on_tap()
    assert rig.node_receives(1) == [(TYPE_FRAME, frame(0))]

    # A burst: runs of equal sizes, shorter ones ending runs, a jumbo one alone.
    sizes = [98] * 70 + [60, 1414, 1414, 200, 1414] + [1500] + [98] * 30 + [64] * 3
    sent = [frame(i + 1, size) for i, size in enumerate(sizes)]
    for f in sent:
        rig.from_tap(f)
    conn._on_tap()
    got = rig.node_receives(len(sent))
    assert got == [(TYPE_FRAME, f) for f in sent]
    assert conn.core.sealer.counter == start + 1 + len(sent)  # one counter per packet
    c = conn.tap.counters  # type: ignore[union-attr]
    assert (c.rx_frames, c.rx_batches) == (1 + len(sent), 2)
    assert c.rx_bytes == len(frame(0)) + sum(sizes)
    assert conn.send_errors == 0

    conn._on_tap()  # nothing waiting: nothing counted
    assert c.rx_batches == 2


@pytest.mark.parametrize("fast", WAYS)
def test_the_kernels_answer_leaves_in_the_callback_that_wrote_the_request(
    fast: bool, rigs: list[Rig]
) -> None:
    """The kernel answers a frame (a ping's reply, a TCP ACK) inside the TAP write, so the
    client reads the TAP right after writing, without a trip through the event loop; a
    datagram that wrote nothing (dropped) leaves the TAP alone."""
    rig = make_rig(fast)
    rigs.append(rig)
    answer = frame(7)
    rig.from_tap(answer)  # stands for what the kernel queued while taking the request

    tampered = bytearray(rig.sealer.seal(frame(1)))
    tampered[-1] ^= 1
    rig.to_client(tampered)
    rig.pump()
    assert rig.tap_frames() == []
    assert rig.node_receives(1, timeout=0.3) == []  # nothing written: the TAP not read

    rig.to_client(rig.sealer.seal(frame(1)))
    rig.pump()  # one UDP callback, no _on_tap call
    assert rig.tap_frames() == [frame(1)]
    assert rig.node_receives(1) == [(TYPE_FRAME, answer)]


@pytest.mark.parametrize("fast", WAYS)
def test_a_batch_larger_than_the_read_budget_is_read_in_turns(fast: bool, rigs: list[Rig]) -> None:
    rig = make_rig(fast)
    rigs.append(rig)
    sent = [frame(i, 80 + i % 3) for i in range(300)]
    for f in sent:
        rig.from_tap(f)
    rig.conn._on_tap()  # READ_BATCH (256) frames, then the loop's next turn
    rig.conn._on_tap()
    assert rig.node_receives(len(sent)) == [(TYPE_FRAME, f) for f in sent]
    assert rig.conn.tap.counters.rx_batches == 2  # type: ignore[union-attr]


def vnet(flags: int = 0, gso_type: int = 0, gso_size: int = 0, csum_start: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, 14 + 20 + 20, gso_size, csum_start, 16)


@pytest.mark.parametrize("fast", WAYS)
def test_offloaded_packets_keep_their_place_on_the_wire(fast: bool, rigs: list[Rig]) -> None:
    rig = make_rig(fast, vnet=True)
    rigs.append(rig)
    conn = rig.conn
    conn.core.config = {"offload": 1}  # the node takes offloaded packets
    small = vnet(flags=1, csum_start=34) + frame(1000, 120)  # partial checksum, one datagram
    big = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(2000, 9000)
    packets = (
        [vnet() + frame(i) for i in range(5)]
        + [small, vnet() + frame(5), big]
        + [vnet() + frame(i) for i in range(6, 10)]
    )
    for p in packets:
        rig.from_tap(p)
    conn._on_tap()
    want = (
        [(TYPE_FRAME, frame(i)) for i in range(5)]
        + [(TYPE_SUPERFRAME, small), (TYPE_FRAME, frame(5)), (TYPE_SUPERFRAME, big)]
        + [(TYPE_FRAME, frame(i)) for i in range(6, 10)]
    )
    assert len(big) + 50 > FRAGMENT_SIZE  # it leaves as fragments, reassembled by the node
    assert rig.node_receives(len(want)) == want
    c = conn.tap.counters  # type: ignore[union-attr]
    assert (c.rx_frames, c.rx_batches) == (len(packets), 1)
    assert c.rx_bytes == sum(map(len, packets))


# ---------------------------------------------------------------- UDP -> open -> TAP


def control(rig: Rig, message: dict[str, Any]) -> bytes:
    return rig.sealer.seal(json.dumps(message).encode(), TYPE_CONTROL)


@pytest.mark.parametrize("fast", WAYS)
def test_frames_from_the_node_reach_the_tap_and_bad_ones_are_counted(
    fast: bool, rigs: list[Rig]
) -> None:
    rig = make_rig(fast)
    rigs.append(rig)
    conn, core = rig.conn, rig.conn.core
    pure_calls = []
    receive = core.receive
    core.receive = lambda data, now: pure_calls.append(1) or receive(data, now)  # type: ignore[method-assign]
    sealed = [rig.sealer.seal(frame(i, 90 + i % 5)) for i in range(40)]
    for packet in sealed:  # the first (no replay window yet) takes the pure path
        rig.to_client(packet)
    rig.pump()
    assert rig.tap_frames() == [frame(i, 90 + i % 5) for i in range(40)]
    assert core.last_heard > 0 and not core.drops
    # Compiled, only the sender's first packet needed the pure path (no silent fallback).
    assert len(pure_calls) == (1 if fast else 40)

    tampered = bytearray(rig.sealer.seal(frame(94)))
    tampered[HEADER_LEN + 5] ^= 1  # fresh counter, altered ciphertext
    forged = bytearray(rig.sealer.seal(frame(99)))
    forged[-1] ^= 0x80
    other_net = bytes(16) + bytes(rig.sealer.seal(frame(98)))[16:]
    other_key = bytearray(rig.sealer.seal(frame(97)))
    other_key[21] ^= 1
    version = bytearray(rig.sealer.seal(frame(96)))
    version[16] = 9
    ptype = bytearray(rig.sealer.seal(frame(95)))
    ptype[17] = 7
    for bad in (sealed[0], sealed[39], tampered, forged, other_net, other_key, version, ptype,
                b"", b"x" * 49):  # fmt: skip
        rig.to_client(bytes(bad))
    rig.pump()
    assert rig.tap_frames() == []
    assert dict(core.drops) == {
        "replay": 2, "auth": 2, "wrong_network": 1, "key": 1, "version": 1, "type": 1, "short": 2
    }  # fmt: skip
    c = conn.tap.counters  # type: ignore[union-attr]
    assert (c.tx_frames, c.tx_bytes) == (40, sum(90 + i % 5 for i in range(40)))

    # A pong (control: the pure path) between frames: handled, and the frames around it go on.
    rig.to_client(rig.sealer.seal(frame(100)))
    rig.to_client(control(rig, {"op": "pong", "mtu": 1400, "instance": "n1"}))
    rig.to_client(rig.sealer.seal(frame(101)))
    rig.pump()
    assert rig.tap_frames() == [frame(100), frame(101)]
    assert core.config is not None and core.instance == "n1"


@pytest.mark.parametrize("fast", WAYS)
def test_gro_runs_and_fragments_from_the_node(fast: bool, rigs: list[Rig]) -> None:
    """A run of equal datagrams (one GSO send, one GRO read) with a super-frame's fragments in
    the middle of the stream: every frame and the super-frame arrive, in order."""
    rig = make_rig(fast, vnet=True)
    rigs.append(rig)
    assert rig.conn.udp.gro  # type: ignore[union-attr]
    rig.to_client(rig.sealer.seal(frame(0)))  # opens the replay window (pure path)
    rig.pump()
    assert rig.tap_frames() == [bytes(10) + frame(0)]
    packet = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(7, 20000)
    rig.node_udp.hold()
    for i in range(1, 21):
        rig.node_udp.send(rig.sealer.seal(frame(i)), rig.client)
    rig.node_udp.release()  # one sendmsg with UDP_SEGMENT
    joined = FAST.tok_joined() if FAST is not None else 0
    rig.node_udp.send(rig.sealer.seal(packet, TYPE_SUPERFRAME), rig.client)  # fragments
    rig.node_udp.hold()
    for i in range(21, 31):
        rig.node_udp.send(rig.sealer.seal(frame(i)), rig.client)
    rig.node_udp.release()
    rig.pump()
    want = [bytes(10) + frame(i) for i in range(1, 21)] + [packet]
    want += [bytes(10) + frame(i) for i in range(21, 31)]
    assert rig.tap_frames() == want
    assert not rig.conn.core.drops
    c = rig.conn.tap.counters  # type: ignore[union-attr]
    assert c.tx_frames == 32 and c.tx_bytes == 31 * 98 + len(packet) - 10
    if fast:  # the fragments' GRO run was joined in C (tok.c), not by the pure Reassembler
        assert FAST is not None and FAST.tok_joined() == joined + 1
        assert len(rig.conn.udp.reassembler) == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("fast", WAYS)
def test_a_tampered_fragment_drops_the_joined_super_frame_once(fast: bool, rigs: list[Rig]) -> None:
    """One flipped byte in one fragment of a super-frame's GSO send: the joined packet fails
    its tag, counted ``auth`` once; nothing reaches the TAP, and the frames after it still do."""
    rig = make_rig(fast, vnet=True)
    rigs.append(rig)
    rig.to_client(rig.sealer.seal(frame(0)))  # opens the replay window (pure path)
    rig.pump()
    assert rig.tap_frames() == [bytes(10) + frame(0)]
    packet = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(7, 20000)
    sealed = rig.sealer.seal(packet, TYPE_SUPERFRAME)
    wire = b"".join(fragment_parts(sealed))  # the fragments back to back (a GSO buffer)
    parts = [wire[i : i + FRAGMENT_SIZE] for i in range(0, len(wire), FRAGMENT_SIZE)]
    bad = bytearray(parts[3])
    bad[-5] ^= 1
    parts[3] = bytes(bad)
    rig.node_udp.hold()
    for part in parts:
        rig.node_udp.send(part, rig.client)
    rig.node_udp.release()  # one sendmsg with UDP_SEGMENT: one GRO run
    rig.to_client(rig.sealer.seal(frame(1)))
    rig.pump()
    assert rig.tap_frames() == [bytes(10) + frame(1)]
    assert dict(rig.conn.core.drops) == {"auth": 1}


def dhcp_reply_frame() -> bytes:
    """IPv4/UDP 67 -> 68 whose DHCP message is garbage: the client counts it ``malformed``."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 20, 0, 0, 64, 17, 0, bytes(4), bytes(4))
    udp = struct.pack("!HHHH", 67, 68, 8 + 20, 0)
    return MAC_A + MAC_B + b"\x08\x00" + ip + udp + b"\x02" * 20


@pytest.mark.parametrize("fast", WAYS)
def test_dhcp_replies_go_to_the_dhcp_client_not_the_tap(fast: bool, rigs: list[Rig]) -> None:
    rig = make_rig(fast)
    rigs.append(rig)
    conn = rig.conn
    conn.dhcp = DhcpClient(conn.mac)
    for packet in (frame(0), dhcp_reply_frame(), frame(1)):
        rig.to_client(rig.sealer.seal(packet))
    rig.pump()
    assert rig.tap_frames() == [frame(0), frame(1)]
    assert conn.dhcp.counters["malformed"] == 1
    conn.dhcp = None  # not running: the same frame is the kernel's
    rig.to_client(rig.sealer.seal(dhcp_reply_frame()))
    rig.pump()
    assert rig.tap_frames() == [dhcp_reply_frame()]


@pytest.mark.skipif(FAST is None, reason="not built")
def test_tok_sockaddr_takes_ipv4_only() -> None:
    assert FAST is not None
    sa = FAST.tok_sockaddr(("127.0.0.1", 4799))
    assert (
        sa is not None and sa[2:4] == (4799).to_bytes(2, "big") and sa[4:8] == bytes([127, 0, 0, 1])
    )
    assert FAST.tok_sockaddr(("::1", 4799)) is None
    assert FAST.tok_sockaddr(("1.2.3", 4799)) is None


# ---------------------------------------------------------------- real processes (root)

LAB_WAYS = [
    pytest.param({}, id="fast", marks=pytest.mark.skipif(FAST is None, reason="not built")),
    pytest.param(
        {"ATENET_ENGINE": "0"},
        id="no-engine",
        marks=pytest.mark.skipif(FAST is None, reason="not built"),
    ),
    pytest.param({"ATENET_PURE": "1"}, id="pure"),
]
"""Compiled with its GIL-free engine (the default), compiled without it, pure Python."""


@pytest.fixture(scope="module", params=LAB_WAYS)
def lab_net(request: pytest.FixtureRequest) -> Iterator[Overlay]:
    """One node; hosts a, b with offloads, c, d with ``--no-offload``; every process compiled
    (with the hosts' engine, or ``ATENET_ENGINE=0``), or every process with ``ATENET_PURE=1``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    pure = "ATENET_PURE" in request.param
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-fast-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        env = {k: v for k, v in overlay.env.items() if k not in ("ATENET_PURE", "ATENET_ENGINE")}
        overlay.env = env | request.param
        overlay.add_node("n1")
        for name in ("a", "b"):
            overlay.add_client(name, ["n1"])
        for name in ("c", "d"):
            overlay.add_client(name, ["n1"], args=("--no-offload",))
        overlay.pure = pure  # type: ignore[attr-defined]
        yield overlay


def state(net: Overlay, name: str) -> dict[str, Any]:
    return json.loads((net.root / name / "run" / "atenet0.json").read_text())


@needs_root
def test_lab_hosts_run_the_path_asked_for_and_pings_are_answered(lab_net: Overlay) -> None:
    c = lab_net.clients
    pure: bool = lab_net.pure  # type: ignore[attr-defined]
    engine = "off" if pure or lab_net.env.get("ATENET_ENGINE") == "0" else "on"
    for name in c:
        assert (state(lab_net, name)["fastpath"] == "on") is not pure
        assert state(lab_net, name)["engine"] == engine
    for src, dst in (("a", "b"), ("c", "d"), ("a", "c"), ("d", "b")):
        for addr in (c[dst].ip4, c[dst].ip6):
            out = c[src].host.run(["ping", "-n", "-c", "5", "-i", "0.1", "-w", "10", addr])
            assert " 5 received" in out.stdout, (src, dst, out.stdout)


UDP_SINK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((sys.argv[1], 9000)); s.settimeout(3)
    print("ready", flush=True)
    seen = set(); bad = 0
    try:
        while True:
            data = s.recv(2048)
            n = int.from_bytes(data[:4], "big")
            if len(data) != 64 or data[4:] != bytes([n % 251]) * 60: bad += 1
            else: seen.add(n)
    except TimeoutError:
        pass
    print(len(seen), bad, flush=True)
    """
)

UDP_BURST = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for n in range(int(sys.argv[2])):
        s.sendto(n.to_bytes(4, "big") + bytes([n % 251]) * 60, (sys.argv[1], 9000))
        if n % 16 == 15: time.sleep(0.002)
    """
)


@needs_root
@pytest.mark.parametrize("src,dst", [("a", "b"), ("c", "d")])
def test_lab_a_burst_of_small_udp_datagrams_arrives(lab_net: Overlay, src: str, dst: str) -> None:
    c = lab_net.clients
    count = 2000
    sink = c[dst].host.popen(["python3", "-c", UDP_SINK, c[dst].ip4], stdout=-1, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        before = state(lab_net, src)["tap"]["rx_frames"]
        c[src].host.run(["python3", "-c", UDP_BURST, c[dst].ip4, str(count)], timeout=60)
        out, _ = sink.communicate(timeout=30)
    finally:
        lab_net.lab.stop_process(sink)
    got, bad = map(int, out.split())
    assert bad == 0
    # Paced bursts of 16: none should be lost; a loaded 2-core machine may drop a few.
    assert got >= count * 0.98, f"{got} of {count} arrived"
    deadline = time.monotonic() + 12
    while state(lab_net, src)["tap"]["rx_frames"] - before < got:
        assert time.monotonic() < deadline, "the TAP counters never showed the burst"
        time.sleep(0.5)


@needs_root
@pytest.mark.parametrize("src,dst,size", [("a", "b", 64 << 20), ("c", "d", 16 << 20)])
def test_lab_tcp_arrives_intact(lab_net: Overlay, src: str, dst: str, size: int) -> None:
    c = lab_net.clients
    transfer(lab_net.lab, c[src], c[dst], c[dst].ip4, size)


def capture_sealed(sniffer: socket.socket, node_ip: str, sizes: set[int]) -> tuple[bytes, int]:
    """The first sealed datagram from the node of one of ``sizes`` bytes, and its UDP port."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pkt = sniffer.recv(70000)
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 17 or socket.inet_ntoa(pkt[12:16]) != node_ip:
            continue
        sport, dport = struct.unpack_from("!HH", pkt, ihl)
        payload = pkt[ihl + 8 :]
        if sport == UDP_PORT and len(payload) in sizes:
            return payload, dport
    raise AssertionError("no sealed datagram seen")


@needs_root
@pytest.mark.parametrize("dst", ["b", "d"])
def test_lab_replayed_and_tampered_datagrams_are_dropped_and_counted(
    lab_net: Overlay, dst: str
) -> None:
    c, node = lab_net.clients, lab_net.nodes["n1"]
    host = c[dst].host

    def sockets() -> tuple[socket.socket, socket.socket, socket.socket]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind((c[dst].ip4, 7777))
        listener.settimeout(5)
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        sniffer.bind(("eth0", 0))
        sniffer.settimeout(5)
        return listener, sniffer, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    listener, sniffer, injector = host.call(sockets)
    sender = c["a" if dst == "b" else "c"].host.call(
        socket.socket, socket.AF_INET, socket.SOCK_DGRAM
    )
    try:
        marker = b"M" * 333
        sender.sendto(marker, (c[dst].ip4, 7777))
        assert listener.recv(2048) == marker
        frame_len = 14 + 20 + 8 + len(marker)
        # A frame, or (offloaded, its checksum left partial) a packet with its vnet header.
        sealed, port = capture_sealed(sniffer, node.host.ip, {frame_len + 50, frame_len + 60})
        before = state(lab_net, dst)["drops"]
        tok = (host.ip, port)
        injector.sendto(sealed, tok)  # a replay
        bumped = bytearray(sealed)
        counter = int.from_bytes(sealed[26:34], "big")
        bumped[26:34] = (counter + 1000).to_bytes(8, "big")  # fresh for the window, not the AEAD
        injector.sendto(bytes(bumped), tok)
        bumped[26:34] = (counter + 2000).to_bytes(8, "big")
        bumped[60] ^= 1
        injector.sendto(bytes(bumped), tok)
        listener.settimeout(1.5)
        with pytest.raises(TimeoutError):
            listener.recv(2048)  # none of them reached the TAP
        deadline = time.monotonic() + 12
        while True:
            drops = state(lab_net, dst)["drops"]
            delta = {k: drops.get(k, 0) - before.get(k, 0) for k in ("replay", "auth")}
            if delta == {"replay": 1, "auth": 2} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert delta == {"replay": 1, "auth": 2}
        # The link still works.
        sender.sendto(marker, (c[dst].ip4, 7777))
        listener.settimeout(5)
        assert listener.recv(2048) == marker
    finally:
        for s in (listener, sniffer, injector, sender):
            s.close()


@pytest.mark.parametrize("fast", WAYS)
def test_a_whole_packet_inside_a_run_keeps_its_place_and_a_cut_run_reassembles(
    fast: bool, rigs: list[Rig]
) -> None:
    """One GRO run: two datagrams, a whole super-frame's fragments (all full size, so the run
    goes on), two more datagrams — all arrive in that order. Then a run of a second
    super-frame's fragments without its last (cut short): nothing yet; the last one alone
    completes it through the pure Reassembler."""
    rig = make_rig(fast, vnet=True)
    rigs.append(rig)
    rig.to_client(rig.sealer.seal(frame(0)))  # opens the replay window (pure path)
    rig.pump()
    assert rig.tap_frames() == [bytes(10) + frame(0)]
    chunk = FRAGMENT_SIZE - 32
    size = 10 * chunk - OVERHEAD - 10  # sealed: exactly 10 full fragments
    packet = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(7, size)
    big = FRAGMENT_SIZE - OVERHEAD  # a datagram as long as a fragment: the same run
    wire = b"".join(fragment_parts(rig.sealer.seal(packet, TYPE_SUPERFRAME)))
    assert len(wire) == 10 * FRAGMENT_SIZE
    joined = FAST.tok_joined() if FAST is not None else 0
    rig.node_udp.hold()
    for i in (1, 2):
        rig.node_udp.send(rig.sealer.seal(frame(i, big)), rig.client)
    for at in range(0, len(wire), FRAGMENT_SIZE):
        rig.node_udp.send(wire[at : at + FRAGMENT_SIZE], rig.client)
    for i in (3, 4):
        rig.node_udp.send(rig.sealer.seal(frame(i, big)), rig.client)
    rig.node_udp.release()
    rig.pump()
    want = [bytes(10) + frame(i, big) for i in (1, 2)] + [packet]
    want += [bytes(10) + frame(i, big) for i in (3, 4)]
    assert rig.tap_frames() == want
    if fast:  # joined in C, in its place in the run
        assert FAST is not None and FAST.tok_joined() == joined + 1

    packet2 = vnet(flags=1, gso_type=1, gso_size=1400, csum_start=34) + frame(9, 9000)
    wire2 = b"".join(fragment_parts(rig.sealer.seal(packet2, TYPE_SUPERFRAME)))
    parts = [wire2[at : at + FRAGMENT_SIZE] for at in range(0, len(wire2), FRAGMENT_SIZE)]
    rig.node_udp.hold()
    for part in parts[:-1]:
        rig.node_udp.send(part, rig.client)
    rig.node_udp.release()
    rig.pump()
    assert rig.tap_frames() == []
    rig.node_udp.send(parts[-1], rig.client)
    rig.pump()
    assert rig.tap_frames() == [packet2]
    assert not rig.conn.core.drops
    if fast:  # the cut run and the lone fragment: the pure Reassembler, not C
        assert FAST is not None and FAST.tok_joined() == joined + 1
