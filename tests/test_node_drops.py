"""A real node on loopback, attacked with bad packets: every one dropped, counted by reason,
and never answered."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from atenet.overlay.seal import (
    TYPE_CONTROL,
    TYPE_FRAME,
    PacketKey,
    Sealer,
    SealError,
    open_packet,
    parse_header,
)
from atenet.wire.ethernet import ethernet_frame
from tests.support.chains import serving_node


@pytest.fixture
async def node(tmp_path: Path):
    async with serving_node(tmp_path, (1, 2), revoked=(2,)) as served:
        yield served


async def exchange(sock: socket.socket, packet: bytes, addr, wait: float = 0.3) -> list[bytes]:
    """Send one packet; return whatever came back within ``wait`` seconds."""
    sock.sendto(packet, addr)
    await asyncio.sleep(wait)
    answers = []
    while True:
        try:
            answers.append(sock.recv(65535))
        except BlockingIOError:
            return answers


def router_advertisement(key: PacketKey, packet: bytes) -> bool:
    """The gateway's IPv6 router advertisement to all nodes, which a port gets unasked about a
    second after it joins: not an answer to anything (on a busy machine it lands amid the bad
    packets' short windows)."""
    try:
        ptype = parse_header(packet)[1]
        frame = open_packet(key, packet)
    except SealError:
        return False
    return (
        ptype == TYPE_FRAME
        and frame[:6] == bytes.fromhex("333300000001")
        and frame[12:14] == b"\x86\xdd"
        and frame[54:55] == b"\x86"  # ICMPv6 type 134
    )


async def test_bad_packets_are_dropped_counted_and_never_answered(node):
    daemon, world, secrets = node
    net = world.chain.network_id
    addr = ("127.0.0.1", daemon.udp_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    key = PacketKey(secrets[1], 1)
    good = Sealer(net, key, 77, time.time_ns())
    hello = json.dumps({"op": "hello", "instance": daemon.instance}).encode()
    try:
        # A valid hello makes the node load the network (first packet: unknown, then loaded).
        for _ in range(50):
            answers = await exchange(sock, good.seal(hello, TYPE_CONTROL), addr, 0.1)
            if answers:
                break
        assert answers, "a valid hello was never answered"
        frame = ethernet_frame(b"\xff" * 6, b"\x02" + bytes(5), 0x88B5, b"x" * 50)
        legit = good.seal(frame, TYPE_FRAME)
        answers = await exchange(sock, legit, addr)
        assert [a for a in answers if not router_advertisement(key, a)] == []  # nothing to answer
        forged = bytearray(good.seal(frame, TYPE_FRAME))
        forged[-1] ^= 1
        bad = {
            "short": b"\x00" * 20,
            "version": net + b"\x09" + bytes(40),
            "unknown_network": os.urandom(16) + b"\x01\x01" + bytes(40),
            "auth": bytes(forged),
            "replay": legit,
            "truncated": good.seal(frame, TYPE_FRAME)[:-5],
            "revoked_key": Sealer(net, PacketKey(secrets[2], 2), 78, 1).seal(frame),
            "unknown_key": Sealer(net, PacketKey(os.urandom(32), 9), 79, 1).seal(frame),
            "wrong_network_key": Sealer(net, PacketKey(os.urandom(32), 1), 80, time.time_ns()).seal(
                frame
            ),
        }
        for name, packet in bad.items():
            answers = await exchange(sock, packet, addr, 0.05)
            answers = [a for a in answers if not router_advertisement(key, a)]
            assert answers == [], f"{name} was answered"
    finally:
        sock.close()
    status = daemon.status()
    network = next(n for n in status["networks"] if n["id"] == net.hex())
    drops = {**status["drops"], **network["drops"]}
    assert drops["short"] == 1
    assert drops["version"] == 1
    assert drops["unknown_network"] >= 2  # the junk id, and the first hello before loading
    assert drops["auth"] == 3  # forged tag, truncated, right key id with the wrong secret
    assert drops["replay"] == 1
    assert drops["revoked_key"] == 1
    assert drops["unknown_key"] == 1
