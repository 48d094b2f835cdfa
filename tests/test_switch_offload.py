"""Who gets offloaded packets: the switch, the node's client ports and the tok's client core.

Frame by frame, no I/O: ports that said ``offload`` and peer nodes get the packet as it came,
every other port the standard frames it stands for, made once per flood; the tok only sends
offloaded packets to a node that said it takes them.
"""

from __future__ import annotations

import json
import os

from atenet.client.core import ClientCore
from atenet.offload import GSO_TCPV4, NO_OFFLOAD, VnetHeader, to_frames
from atenet.overlay.seal import (
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Opener,
    PacketKey,
    Sealer,
    parse_header,
)
from atenet.overlay.token import AccessToken
from atenet.switch.core import Port, Switch
from tests.test_offload import offloaded, v4_tcp


class Recorder(Port):
    """A port that records what the switch hands it."""

    def __init__(self, name: str, offload: bool = False) -> None:
        super().__init__(name, "test")
        self.offload = offload
        self.frames: list[bytes] = []
        self.packets: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def deliver_packet(self, packet: bytes) -> None:
        self.packets.append(packet)


class PlainPort(Port):
    """A port kind written without offloads in mind (like a WebSocket port): deliver only."""

    def __init__(self) -> None:
        super().__init__("plain", "ws")
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)


def super_packet(size: int = 6000) -> bytes:
    return offloaded(v4_tcp(1000, "PA", 7, os.urandom(size)), GSO_TCPV4, 1448)


def test_offload_ports_and_peers_get_the_packet_others_get_segments_made_once() -> None:
    to_peers: list[bytes] = []
    switch = Switch(lambda f: None, to_peers.append)
    src, fast = Recorder("src", offload=True), Recorder("fast", offload=True)
    slow1, slow2, ws = Recorder("slow1"), Recorder("slow2"), PlainPort()
    for port in (src, fast, slow1, slow2, ws):
        switch.add(port.name, port)
    packet = super_packet()
    switch.packet_from_local(src, packet)
    segments = to_frames(packet)
    assert len(segments) == 5
    assert fast.packets == [packet] and fast.frames == []
    assert slow1.frames == slow2.frames == ws.frames == segments
    assert slow1.frames[0] is slow2.frames[0]  # the same objects: segmented once per flood
    assert switch.segmented == 1
    assert to_peers == [packet]
    assert src.packets == src.frames == []


def test_a_packet_from_a_peer_goes_to_local_ports_only() -> None:
    to_peers: list[bytes] = []
    switch = Switch(to_peers.append, to_peers.append)
    fast, slow = Recorder("fast", offload=True), Recorder("slow")
    switch.add("f", fast)
    switch.add("s", slow)
    packet = super_packet()
    switch.packet_from_peer(packet)
    assert fast.packets == [packet] and slow.frames == to_frames(packet)
    assert to_peers == []


def test_peers_get_segments_when_the_switch_has_no_packet_sender() -> None:
    to_peers: list[bytes] = []
    switch = Switch(to_peers.append)
    src = Recorder("src", offload=True)
    switch.add("src", src)
    packet = super_packet()
    switch.packet_from_local(src, packet)
    assert to_peers == to_frames(packet)


def test_a_packet_that_cannot_be_segmented_reaches_no_plain_port_and_no_peer() -> None:
    to_peers: list[bytes] = []
    switch = Switch(lambda f: None, to_peers.append)
    src, slow = Recorder("src", offload=True), Recorder("slow")
    switch.add("src", src)
    switch.add("slow", slow)
    bad = bytearray(super_packet())
    bad[10 + 14 + 20 + 12] = 0x10  # TCP data offset of 4 bytes
    switch.packet_from_local(src, bytes(bad))
    assert slow.frames == [] and to_peers == []
    assert switch.bad_packets == 1


# ---------------------------------------------------------------------------- tok side

KEY_SECRET = bytes(range(32))
NETWORK = bytes(16)


def client(offload: bool) -> tuple[ClientCore, Opener]:
    token = AccessToken(NETWORK, 3, KEY_SECRET, ("10.0.0.1:4799",))
    return ClientCore(token, 1, sender_id=9, offload=offload), Opener(PacketKey(KEY_SECRET, 3))


def opened(opener: Opener, sealed: bytes) -> tuple[int, bytes]:
    _, ptype, _, sender, counter = parse_header(sealed)
    return ptype, opener.open(sealed, sender, counter)


def test_hello_and_ping_say_offload_only_when_the_tap_has_it() -> None:
    for offload in (True, False):
        core, opener = client(offload)
        for op in ("hello", "ping"):
            ptype, payload = opened(opener, core.control(op, 1.0))
            assert ptype == TYPE_CONTROL
            assert json.loads(payload).get("offload") == (1 if offload else None)


def test_tok_sends_packets_whole_only_to_a_node_that_takes_them() -> None:
    core, opener = client(True)
    packet = super_packet()
    plain = NO_OFFLOAD + to_frames(packet)[0]
    core.config = {"mtu": 1400}  # an older node: no "offload" in its welcome
    sent = [opened(opener, s) for s in core.seal_packet(packet)]
    assert sent == [(TYPE_FRAME, f) for f in to_frames(packet)]
    assert core.segmented == 1
    core.config = {"mtu": 1400, "offload": 1}
    assert [opened(opener, s) for s in core.seal_packet(packet)] == [(TYPE_SUPERFRAME, packet)]
    # A plain frame (all-zero header) goes as a frame, without its header, either way.
    assert [opened(opener, s) for s in core.seal_packet(plain)] == [(TYPE_FRAME, plain[10:])]


def test_tok_without_offload_drops_offloaded_packets_it_never_asked_for() -> None:
    core, _ = client(False)
    node = Sealer(NETWORK, PacketKey(KEY_SECRET, 3), 77, 1)
    assert core.receive(node.seal(super_packet(), TYPE_SUPERFRAME), 1.0) is None
    assert core.drops["type"] == 1
    with_offload, _ = client(True)
    packet = super_packet()
    got = with_offload.receive(node.seal(packet, TYPE_SUPERFRAME), 1.0)
    assert got == (TYPE_SUPERFRAME, packet)


def test_header_of_a_plain_frame_is_all_zero() -> None:
    assert VnetHeader().pack() == NO_OFFLOAD
