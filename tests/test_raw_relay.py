"""The v86 relay protocol end to end: a raw WebSocket client resolves and pings a TAP host.

Topology: node n1 (``atenet run``) and host h1 (``tok connect`` via n1), each in its own
namespace of a Lab. The client runs in n1's namespace against ``ws://127.0.0.1:8080/net/<token>``
and speaks what v86's network relay speaks: one binary WebSocket message = one Ethernet frame,
no prefix, both ways. It is a host on the LAN with its own MAC and IPv4: it ARPs for h1, answers
h1's kernel's ARP for its own address, and pings h1. Everything it checks comes from h1's kernel
through the switch.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import aiohttp
import pytest

from atenet.errors import DecodeError
from atenet.wire import (
    ARP_REPLY,
    ARP_REQUEST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    PROTO_ICMP,
    ArpRepr,
    EthernetRepr,
    IcmpRepr,
    Ipv4Repr,
    arp_reply,
    arp_request,
    icmp_echo_request,
)
from atenet.wire.icmp import ICMP_ECHO_REPLY
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import HTTP_PORT, Client, Node, Overlay

pytestmark = [needs_root]

CIDR = IPv4Network("10.77.0.0/24")  # the Overlay's network
RELAY_MAC = bytes([0x02, 0x76, 0x38, 0x36]) + os.urandom(2)  # locally administered, unicast
PINGS = 5


@pytest.fixture(scope="module")
def net() -> Iterator[tuple[Overlay, Node, Client]]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-relay-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1 = overlay.add_node("n1")
        h1 = overlay.add_client("h1", ["n1"])
        yield overlay, n1, h1


def relay_ip(avoid: IPv4Address) -> IPv4Address:
    """An address in the network's CIDR that is not h1's."""
    for candidate in (CIDR[250], CIDR[251]):
        if candidate != avoid:
            return candidate
    raise AssertionError("unreachable")


class RelayHost:
    """A tiny LAN host behind a raw-relay WebSocket: ARP both ways, ICMP echo out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, mac: bytes, ip: IPv4Address) -> None:
        self.ws = ws
        self.mac = mac
        self.ip = ip
        self.arp_answered = 0
        self.frames_in = 0

    async def send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def next_frame(self, deadline: float) -> EthernetRepr:
        """The next frame for us; answers ARP requests for our address on the way."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            msg = await self.ws.receive(timeout=left)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"relay sent a non-binary message: {msg!r}")
            self.frames_in += 1
            try:
                eth = EthernetRepr.parse(msg.data)
            except DecodeError:
                continue
            if eth.ethertype == ETHERTYPE_ARP:
                try:
                    arp = ArpRepr.parse(eth.payload)
                except DecodeError:
                    continue
                if arp.operation == ARP_REQUEST and arp.target_ip == self.ip:
                    self.arp_answered += 1
                    await self.send(arp_reply(self.mac, self.ip, arp.sender_mac, arp.sender_ip))
                    continue
            return eth

    async def resolve(self, target: IPv4Address, timeout: float = 5) -> bytes:
        """ARP for ``target`` (re-asking every second); return the MAC from its reply."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.send(arp_request(self.mac, self.ip, target))
            ask_again = min(deadline, time.monotonic() + 1)
            try:
                while True:
                    eth = await self.next_frame(ask_again)
                    if eth.ethertype != ETHERTYPE_ARP or eth.dst != self.mac:
                        continue
                    arp = ArpRepr.parse(eth.payload)
                    if arp.operation == ARP_REPLY and arp.sender_ip == target:
                        assert arp.target_mac == self.mac and arp.target_ip == self.ip, arp
                        assert eth.src == arp.sender_mac, (eth, arp)
                        return arp.sender_mac
            except TimeoutError:
                continue
        raise AssertionError(f"no ARP reply from {target} in {timeout} s")

    async def ping(
        self, dst_mac: bytes, dst: IPv4Address, ident: int, seq: int, payload: bytes, timeout: float
    ) -> float:
        """One echo request; return the RTT of the matching reply (checks id, seq and payload)."""
        start = time.monotonic()
        await self.send(icmp_echo_request(self.mac, dst_mac, self.ip, dst, ident, seq, payload))
        deadline = start + timeout
        while True:
            eth = await self.next_frame(deadline)
            if eth.ethertype != ETHERTYPE_IPV4 or eth.dst != self.mac:
                continue
            ip = Ipv4Repr.parse(eth.payload)
            if ip.protocol != PROTO_ICMP or ip.src != dst or ip.dst != self.ip:
                continue
            icmp = IcmpRepr.parse(ip.payload)  # verifies the checksum
            if icmp.type == ICMP_ECHO_REPLY and (icmp.ident, icmp.seq) == (ident, seq):
                assert icmp.payload == payload
                assert eth.src == dst_mac
                return time.monotonic() - start


async def relay_session(
    url: str, peer: IPv4Address, me: IPv4Address, forget: Callable[[], object]
) -> dict[str, object]:
    """Run in n1's namespace: join over the raw relay, ARP for ``peer``, ping it.

    ``forget`` flushes the peer's neighbour entry for us after the ARP exchange, so its kernel
    has to ARP for our address before it can answer the pings (and we must answer)."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, max_msg_size=0) as ws,
    ):
        host = RelayHost(ws, RELAY_MAC, me)
        peer_mac = await host.resolve(peer)
        await asyncio.to_thread(forget)
        ident = int.from_bytes(os.urandom(2), "big")
        rtts = []
        for seq in range(1, PINGS + 1):
            payload = os.urandom(48) + f"atenet raw relay {seq}".encode()
            rtts.append(await host.ping(peer_mac, peer, ident, seq, payload, timeout=3))
        return {"peer_mac": peer_mac, "rtts": rtts, "arp_answered": host.arp_answered}


def test_v86_style_raw_client_gets_arp_and_ping_answered_by_a_tap_host(
    net: tuple[Overlay, Node, Client],
) -> None:
    overlay, n1, h1 = net
    _, token = overlay.export_key("relay", ["n1"])
    peer = IPv4Address(h1.ip4)
    me = relay_ip(peer)
    url = f"ws://127.0.0.1:{HTTP_PORT}/net/{token}"

    def forget() -> None:
        h1.host.run(["ip", "neigh", "flush", "to", str(me)])

    result = n1.host.call(asyncio.run, relay_session(url, peer, me, forget))

    assert result["peer_mac"] == bytes.fromhex(h1.mac.replace(":", ""))
    rtts = result["rtts"]
    assert isinstance(rtts, list) and len(rtts) == PINGS
    assert all(0 < rtt < 3 for rtt in rtts), rtts
    assert result["arp_answered"] >= 1, "h1's kernel never ARPed for the relay host"
    # h1's kernel now knows the relay host: its neighbour table has our MAC for our IP.
    neigh = h1.host.run(["ip", "neigh", "show", str(me)]).stdout
    assert RELAY_MAC.hex(":") in neigh.lower(), neigh
    # The node counted the WebSocket port's frames (it is gone again once the socket closed).
    lan = n1.network("lan")
    assert all(p["kind"] != "ws" for p in lan["ports"]), lan["ports"]


def test_raw_relay_refuses_a_bad_token_with_403(net: tuple[Overlay, Node, Client]) -> None:
    _, n1, _ = net

    async def attempt() -> int:
        async with aiohttp.ClientSession() as http:
            try:
                await http.ws_connect(f"ws://127.0.0.1:{HTTP_PORT}/net/atn1.AAAA")
            except aiohttp.WSServerHandshakeError as err:
                return err.status
        return 101

    assert n1.host.call(asyncio.run, attempt()) == 403
