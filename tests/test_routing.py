"""Routing between two networks, frame by frame: two gateways wired by hand through their
neighbour caches (router/gateway.py route table + router/neighbours.py), as the node wires them.

Hosts' frames are built with our wire helpers; what comes out is decoded and checksum-checked
with scapy (an independent implementation), including the IPv4 header checksum the router
patches incrementally.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, Ether, IPv6
from scapy.layers.inet import IPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
)

from atenet.router.forward import fragment_v4
from atenet.router.gateway import Gateway
from atenet.router.neighbours import Neighbours
from atenet.wire.arp import arp_reply, arp_request, gratuitous_arp
from atenet.wire.checksum import checksum
from atenet.wire.ethernet import ETHERTYPE_IPV4, ethernet_frame
from atenet.wire.icmp import icmp_echo_reply, icmp_echo_request
from atenet.wire.icmpv6 import (
    icmpv6_echo_reply,
    icmpv6_echo_request,
    neighbor_advertisement,
    neighbor_solicitation,
)
from atenet.wire.ipv4 import PROTO_UDP, Ipv4Repr
from tests.support import fuzz_targets as ft

MTU = 1400
HA_MAC = bytes.fromhex("02aa00000001")
HA = IPv4Address("10.1.0.10")
HA6 = IPv6Address("fd00:1::10")
HB_MAC = bytes.fromhex("02bb00000001")
HB = IPv4Address("10.2.0.20")
HB6 = IPv6Address("fd00:2::20")
PAYLOAD = bytes(range(48))


@dataclass
class Lan:
    """One network as its gateway sees it: frames the gateway injected into it (``wire``), and
    the ICMP errors its neighbour cache reported for senders elsewhere (``unreachable``)."""

    gw: Gateway
    nb: Neighbours = field(init=False)
    wire: list[bytes] = field(default_factory=list)
    unreachable: list[bytes] = field(default_factory=list)

    def take(self) -> list[bytes]:
        out, self.wire[:] = list(self.wire), []
        return out


def make_lan(n: int, mtu: int = MTU, **nb: object) -> Lan:
    gw = Gateway(bytes([n]) * 16, f"10.{n}.0.0/24", f"fd00:{n}::/64", mtu, rng=random.Random(n))
    lan = Lan(gw)
    lan.nb = Neighbours(gw, unreachable=lambda p, now: lan.unreachable.append(p), **nb)  # type: ignore[arg-type]
    return lan


def connect(src: Lan, dst: Lan, mtu: int | None = None) -> None:
    """``src``'s gateway routes ``dst``'s networks into ``dst`` through ``dst``'s cache."""

    def forward(packet: bytes, address: IPv4Address | IPv6Address, now: float) -> None:
        dst.wire.extend(dst.nb.send(packet, address, now))

    src.gw.add_route(dst.gw.network4, forward, mtu)
    assert dst.gw.network6 is not None
    src.gw.add_route(dst.gw.network6, forward, mtu)


def pair(**nb: object) -> tuple[Lan, Lan]:
    a, b = make_lan(1, **nb), make_lan(2, **nb)
    connect(a, b)
    connect(b, a)
    return a, b


def ping(ttl: int = 64, dst: IPv4Address = HB, seq: int = 1, payload: bytes = PAYLOAD) -> bytes:
    gw_mac = Gateway(bytes([1]) * 16, "10.1.0.0/24", None, MTU).mac
    return icmp_echo_request(HA_MAC, gw_mac, HA, dst, 7, seq, payload, ttl=ttl)


def ping6(hlim: int = 64, seq: int = 1) -> bytes:
    gw_mac = Gateway(bytes([1]) * 16, "10.1.0.0/24", None, MTU).mac
    return icmpv6_echo_request(HA_MAC, gw_mac, HA6, HB6, 7, seq, PAYLOAD, hop_limit=hlim)


def checked(frame: bytes) -> Ether:
    """Decode with scapy and check that scapy computes the same checksums we sent."""
    packet = Ether(frame)
    fresh = Ether(frame)
    for layer in fresh.layers():
        if layer in (IPerror, IPerror6):
            continue
        for name in ("chksum", "cksum"):
            if name in fresh[layer].fields:
                del fresh[layer].fields[name]
    assert bytes(fresh) == frame, "scapy computes different checksums"
    return packet


def resolve_v4(lan: Lan, mac: bytes, ip: IPv4Address, now: float) -> list[bytes]:
    """The host answers the gateway's ARP request; returns what the cache released."""
    return lan.nb.learn(arp_reply(mac, ip, lan.gw.mac, lan.gw.ipv4), now)


# --- IPv4 end to end ---------------------------------------------------------------------------


def test_ping_crosses_to_the_other_network_after_arp_and_the_reply_comes_back() -> None:
    a, b = pair()
    assert a.gw.frame(ping(), 10.0) == []  # nothing for A: the packet went to B's cache
    assert a.gw.handled["routed4"] == 1
    [request] = b.take()
    arp = checked(request)
    assert arp.dst == "ff:ff:ff:ff:ff:ff" and arp.src == b.gw.mac.hex(":")
    assert (arp[ARP].op, arp[ARP].psrc, arp[ARP].pdst) == (1, "10.2.0.1", str(HB))
    assert arp[ARP].hwsrc == b.gw.mac.hex(":")

    [delivered] = resolve_v4(b, HB_MAC, HB, 10.1)
    pkt = checked(delivered)  # includes the incrementally patched IPv4 header checksum
    assert (pkt.dst, pkt.src) == (HB_MAC.hex(":"), b.gw.mac.hex(":"))
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == (str(HA), str(HB), 63)
    assert (pkt[ICMP].type, pkt[ICMP].id, pkt[ICMP].seq) == (8, 7, 1)
    assert bytes(pkt[ICMP].payload) == PAYLOAD
    assert b.nb.counters["resolved"] == 1 and b.nb.queued == 0

    # The reply: B's host answers through B's gateway; A's cache asks for A's host.
    reply = icmp_echo_reply(HB_MAC, b.gw.mac, HB, HA, 7, 1, PAYLOAD)
    assert b.gw.frame(reply, 10.2) == []
    [request_a] = a.take()
    assert checked(request_a)[ARP].pdst == str(HA)
    [back] = resolve_v4(a, HA_MAC, HA, 10.3)
    pkt = checked(back)
    assert (pkt.dst, pkt.src) == (HA_MAC.hex(":"), a.gw.mac.hex(":"))
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[ICMP].type) == (str(HB), str(HA), 63, 0)

    # Resolved both ways: the next ping goes straight through, no ARP.
    a.gw.frame(ping(seq=2), 11.0)
    [direct] = b.take()
    assert checked(direct)[ICMP].seq == 2 and b.nb.counters["requests"] == 1


def test_forwarded_checksum_equals_a_full_recomputation() -> None:
    a, b = pair()
    resolve_v4(b, HB_MAC, HB, 0.0)  # a reply to the gateway creates the entry
    for ttl in (2, 3, 64, 128, 255):
        a.gw.frame(ping(ttl=ttl), 1.0)
        [frame] = b.take()
        header = bytearray(frame[14:34])
        assert header[8] == ttl - 1
        sent = bytes(header[10:12])
        header[10:12] = b"\x00\x00"
        assert checksum(header).to_bytes(2, "big") == sent


# --- IPv6 end to end ---------------------------------------------------------------------------


def test_ping6_crosses_after_neighbour_solicitation_and_the_reply_comes_back() -> None:
    a, b = pair()
    assert a.gw.frame(ping6(), 5.0) == []
    assert a.gw.handled["routed6"] == 1
    [ns] = b.take()
    pkt = checked(ns)
    assert pkt.dst == "33:33:ff:00:00:20"  # solicited-node group of fd00:2::20
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == ("fd00:2::1", "ff02::1:ff00:20", 255)
    assert pkt[ICMPv6ND_NS].tgt == str(HB6)
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == b.gw.mac.hex(":")

    assert b.gw.ipv6 is not None
    na = neighbor_advertisement(HB_MAC, HB6, b.gw.mac, b.gw.ipv6)
    assert b.gw.frame(na, 5.1) == [] and b.gw.drops == {}  # the gateway lets the cache read it
    [delivered] = b.nb.learn(na, 5.1)
    pkt = checked(delivered)
    assert (pkt.dst, pkt.src) == (HB_MAC.hex(":"), b.gw.mac.hex(":"))
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (str(HA6), str(HB6), 63)
    assert bytes(pkt[ICMPv6EchoRequest].data) == PAYLOAD

    reply = icmpv6_echo_reply(HB_MAC, b.gw.mac, HB6, HA6, 7, 1, PAYLOAD)
    assert b.gw.frame(reply, 5.2) == []
    [ns_a] = a.take()
    assert checked(ns_a)[ICMPv6ND_NS].tgt == str(HA6)
    assert a.gw.ipv6 is not None
    [back] = a.nb.learn(neighbor_advertisement(HA_MAC, HA6, a.gw.mac, a.gw.ipv6), 5.3)
    pkt = checked(back)
    assert pkt.dst == HA_MAC.hex(":") and pkt[IPv6].hlim == 63
    assert pkt[ICMPv6EchoReply].id == 7


# --- errors owed to the sender ------------------------------------------------------------------


def test_ttl_one_gives_time_exceeded_and_nothing_crosses() -> None:
    a, b = pair()
    [error] = a.gw.frame(ping(ttl=1), 1.0)
    pkt = checked(error)
    assert (pkt.dst, pkt[IP].src, pkt[IP].dst) == (HA_MAC.hex(":"), "10.1.0.1", str(HA))
    assert (pkt[ICMP].type, pkt[ICMP].code) == (11, 0)
    assert pkt[IPerror].dst == str(HB)
    assert b.wire == [] and a.gw.handled["routed4"] == 0

    [error6] = a.gw.frame(ping6(hlim=1), 1.0)
    pkt = checked(error6)
    assert pkt[IPv6].src == "fd00:1::1" and pkt[IPv6].dst == str(HA6)
    assert pkt[ICMPv6TimeExceeded].code == 0
    assert b.wire == [] and a.gw.drops["hop_limit_exceeded"] == 1


def big_packet(df: bool, size: int = 1300) -> bytes:
    payload = bytes(i & 0xFF for i in range(size - 28))
    udp = (4000).to_bytes(2, "big") * 2 + (len(payload) + 8).to_bytes(2, "big") + bytes(2)
    ip = Ipv4Repr(HA, HB, PROTO_UDP, udp + payload, ttl=64, ident=0x1234, dont_fragment=df)
    gw_mac = Gateway(bytes([1]) * 16, "10.1.0.0/24", None, MTU).mac
    return ethernet_frame(gw_mac, HA_MAC, ETHERTYPE_IPV4, ip.emit())


def small_mtu_pair() -> tuple[Lan, Lan]:
    a, b = make_lan(1), make_lan(2, mtu=1280)
    connect(a, b, mtu=1280)
    connect(b, a)
    return a, b


def test_too_big_with_df_gives_fragmentation_needed_with_the_mtu() -> None:
    a, b = small_mtu_pair()
    [error] = a.gw.frame(big_packet(df=True), 1.0)
    pkt = checked(error)
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, 1280)
    assert pkt[IP].dst == str(HA) and pkt[IPerror].len == 1300
    assert b.wire == [] and a.gw.drops["frag_needed"] == 1


def test_too_big_without_df_is_fragmented_and_reassembles() -> None:
    a, b = small_mtu_pair()
    resolve_v4(b, HB_MAC, HB, 0.0)
    original = big_packet(df=False)
    assert a.gw.frame(original, 1.0) == []
    frames = b.take()
    assert len(frames) == 2 and a.gw.handled["fragmented4"] == 1
    data = bytearray()
    for frame in frames:
        pkt = checked(frame)
        assert len(frame) - 14 <= 1280 and pkt[IP].ttl == 63 and pkt[IP].id == 0x1234
        assert pkt[IP].frag * 8 == len(data)
        data += bytes(pkt[IP].payload)
    assert [Ether(f)[IP].flags.MF for f in frames] == [1, 0]
    assert bytes(data) == original[14 + 20 :]


def test_fragmenting_keeps_only_copied_options_after_the_first_fragment() -> None:
    # Option 0x83 (loose source route, copied) and 0x07 (record route, not copied).
    options = bytes([0x83, 7, 4]) + bytes(4) + bytes([0x07, 7, 4]) + bytes(4) + bytes(2)
    ip = Ipv4Repr(HA, HB, PROTO_UDP, bytes(200), ident=9, options=options).emit()
    pieces = fragment_v4(ip, 100)
    assert [len(p) for p in pieces][:1] == [100] and all(len(p) <= 100 for p in pieces)
    first, second = Ipv4Repr.parse(pieces[0]), Ipv4Repr.parse(pieces[1])
    assert first.options == options and second.options == bytes([0x83, 7, 4]) + bytes(5)
    assert b"".join(Ipv4Repr.parse(p).payload for p in pieces) == bytes(200)


def test_ipv6_too_big_gives_packet_too_big() -> None:
    a, b = small_mtu_pair()
    gw_mac = a.gw.mac
    big = icmpv6_echo_request(HA_MAC, gw_mac, HA6, HB6, 1, 1, bytes(1300))
    [error] = a.gw.frame(big, 1.0)
    pkt = checked(error)
    assert pkt[ICMPv6PacketTooBig].mtu == 1280 and pkt[IPv6].dst == str(HA6)
    assert b.wire == []


def test_unanswered_arp_drops_the_queue_with_host_unreachable_to_the_sender() -> None:
    a, b = pair()
    a.gw.frame(ping(seq=1), 0.0)
    a.gw.frame(ping(seq=2), 0.2)
    assert len(b.take()) == 1 and b.nb.queued == 2  # 2 packets, one request
    assert b.nb.poll_at() == 1.0
    assert len(b.nb.poll(1.0)) == 1 and len(b.nb.poll(1.5)) == 0
    assert len(b.nb.poll(2.0)) == 1 and len(b.nb.poll(2.9)) == 0  # 3 requests in all
    assert b.nb.poll_at() == 3.0
    assert b.nb.poll(3.0) == [] and b.nb.queued == 0
    assert b.nb.drops["unresolved"] == 2 and b.nb.counters["failed"] == 1
    assert len(b.unreachable) == 2
    error = IP(b.unreachable[0])
    assert (error.src, error.dst, error[ICMP].type, error[ICMP].code) == ("10.2.0.1", str(HA), 3, 1)
    assert error[IPerror].dst == str(HB) and error[IPerror].ttl == 63
    # Routed back into A the way the node does it: a frame to the sender.
    a.nb.learn(arp_request(HA_MAC, HA, a.gw.ipv4), 3.0)  # A's host asked for its gateway
    [frame] = a.nb.send(b.unreachable[0], HA, 3.0)
    assert checked(frame)[ICMP].code == 1 and Ether(frame).dst == HA_MAC.hex(":")


def test_requests_are_throttled_per_destination_without_a_timer() -> None:
    a, b = pair()
    a.gw.frame(ping(seq=1), 0.0)
    a.gw.frame(ping(seq=2), 0.5)
    assert len(b.take()) == 1  # two packets in the same second: one ARP request
    a.gw.frame(ping(seq=3), 1.0)
    assert len(b.take()) == 1  # a second later: the next one
    a.gw.frame(ping(seq=4), 2.5)
    assert len(b.take()) == 1 and b.nb.counters["requests"] == 3
    assert b.nb.drops["queue_full_dst"] == 0 and b.nb.queued == 4


def test_requests_for_the_whole_gateway_are_rate_limited() -> None:
    b = make_lan(2, request_rate=1.0, request_burst=3)
    frames = [
        b.nb.send(bytes([0x45]) + bytes(19), IPv4Address(f"10.2.0.{i}"), 0.0) for i in range(10, 20)
    ]
    assert sum(map(len, frames)) == 3 and b.nb.drops["request_rate_limited"] == 7
    assert b.nb.queued == 10  # the packets still wait: the next poll asks again


# --- bounds ------------------------------------------------------------------------------------


def test_queue_bounds_per_destination_and_in_total_are_counted() -> None:
    a, b = pair(pending_per_dst=2, max_pending=3)
    for seq in range(3):
        a.gw.frame(ping(seq=seq), 0.0)
    assert b.nb.queued == 2 and b.nb.drops["queue_full_dst"] == 1
    a.gw.frame(ping(dst=IPv4Address("10.2.0.30")), 0.0)
    a.gw.frame(ping(dst=IPv4Address("10.2.0.31")), 0.0)
    assert b.nb.queued == 3 and b.nb.drops["queue_full"] == 1
    assert b.nb.status()["queued"] == 3 and b.nb.status()["resolving"] == 2
    assert len(resolve_v4(b, HB_MAC, HB, 0.1)) == 2  # the two that fit come out


def test_queue_is_bounded_in_bytes() -> None:
    b = make_lan(2, max_pending_bytes=3000)
    packet = bytes([0x45]) + bytes(1399)
    for i in range(3):
        b.nb.send(packet, IPv4Address(f"10.2.0.{i + 10}"), 0.0)
    assert b.nb.queued == 2 and b.nb.drops["queue_full"] == 1


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    b = make_lan(2, max_entries=2)
    hosts = [(bytes.fromhex(f"02bb000000{i:02x}"), IPv4Address(f"10.2.0.{i}")) for i in (5, 6, 7)]
    b.nb.learn(arp_request(hosts[0][0], hosts[0][1], b.gw.ipv4), 0.0)
    b.nb.learn(arp_request(hosts[1][0], hosts[1][1], b.gw.ipv4), 0.0)
    b.nb.send(bytes([0x45]) + bytes(19), hosts[0][1], 0.1)  # 10.2.0.5 used: .6 is the LRU
    b.nb.learn(arp_request(hosts[2][0], hosts[2][1], b.gw.ipv4), 0.2)
    assert len(b.nb) == 2 and b.nb.counters["evicted"] == 1
    assert b.nb.lookup(hosts[1][1]) is None
    assert b.nb.lookup(hosts[0][1]) == hosts[0][0] and b.nb.lookup(hosts[2][1]) == hosts[2][0]


# --- expiry ------------------------------------------------------------------------------------


def test_stale_entry_keeps_delivering_while_a_unicast_request_refreshes_it() -> None:
    a, b = pair()
    resolve_v4(b, HB_MAC, HB, 0.0)
    a.gw.frame(ping(seq=1), 30.0)
    assert len(b.take()) == 1  # fresh: just the packet
    a.gw.frame(ping(seq=2), 61.0)
    packet, refresh = b.take()
    assert Ether(packet).dst == HB_MAC.hex(":") and Ether(packet)[ICMP].seq == 2
    arp = checked(refresh)
    assert arp.dst == HB_MAC.hex(":") and (arp[ARP].op, arp[ARP].pdst) == (1, str(HB))
    a.gw.frame(ping(seq=3), 61.5)
    assert len(b.take()) == 1  # throttled: no second refresh within a second
    resolve_v4(b, HB_MAC, HB, 61.6)
    a.gw.frame(ping(seq=4), 62.0)
    assert len(b.take()) == 1 and b.nb.counters["refresh_requests"] == 1


def test_unanswered_refreshes_forget_the_entry_and_resolve_again() -> None:
    a, b = pair()
    resolve_v4(b, HB_MAC, HB, 0.0)
    for t in (61.0, 62.0, 63.0):
        a.gw.frame(ping(), t)
        assert len(b.take()) == 2  # packet + refresh
    a.gw.frame(ping(), 64.0)  # three refreshes unanswered: the host is gone
    [request] = b.take()
    assert Ether(request).dst == "ff:ff:ff:ff:ff:ff" and b.nb.counters["lost"] == 1
    assert b.nb.lookup(HB) is None and b.nb.queued == 1
    [frame] = resolve_v4(b, bytes.fromhex("02bb000000ff"), HB, 64.1)  # back, with a new MAC
    assert Ether(frame).dst == "02:bb:00:00:00:ff"


def test_entry_unconfirmed_past_the_stale_time_is_forgotten() -> None:
    a, b = pair()
    resolve_v4(b, HB_MAC, HB, 0.0)
    a.gw.frame(ping(), 601.0)
    [request] = b.take()
    assert Ether(request).dst == "ff:ff:ff:ff:ff:ff" and b.nb.counters["expired"] == 1


# --- what the cache learns from --------------------------------------------------------------


def test_learning_rules() -> None:
    b = make_lan(2)
    other = IPv4Address("10.2.0.99")
    # A host asking for another host: not for us, nothing created.
    assert b.nb.learn(arp_request(HB_MAC, HB, other), 0.0) == []
    assert b.nb.lookup(HB) is None and b.nb.counters["ignored"] == 1
    # Asking for the gateway: the host talks to us, remember it.
    b.nb.learn(arp_request(HB_MAC, HB, b.gw.ipv4), 0.0)
    assert b.nb.lookup(HB) == HB_MAC
    # A gratuitous ARP from the host with a new MAC updates the entry.
    b.nb.learn(gratuitous_arp(bytes.fromhex("02bb000000aa"), HB), 1.0)
    assert b.nb.lookup(HB) == bytes.fromhex("02bb000000aa") and b.nb.counters["changed"] == 1
    # An ARP whose sender MAC is not the frame's source, or claiming the gateway: dropped.
    forged = bytearray(arp_reply(HB_MAC, HB, b.gw.mac, b.gw.ipv4))
    forged[6:12] = bytes.fromhex("02cc00000001")
    assert b.nb.learn(bytes(forged), 2.0) == [] and b.nb.drops["bad_mac"] == 1
    assert b.nb.learn(gratuitous_arp(HB_MAC, b.gw.ipv4), 2.0) == []
    assert b.nb.drops["arp_conflict"] == 1
    # Our own requests coming back are not learnt from.
    own = b.nb.send(bytes([0x45]) + bytes(19), other, 3.0)
    assert b.nb.learn(own[0], 3.0) == [] and b.nb.lookup(other) is None
    # IPv6: an unsolicited NA without override never replaces a MAC; with it, it does.
    assert b.gw.ipv6 is not None
    b.nb.learn(neighbor_solicitation(HB_MAC, HB6, b.gw.ipv6), 4.0)
    assert b.nb.lookup(HB6) == HB_MAC
    new_mac = bytes.fromhex("02bb000000bb")
    b.nb.learn(neighbor_advertisement(new_mac, HB6, override=False), 5.0)
    assert b.nb.lookup(HB6) == HB_MAC
    b.nb.learn(neighbor_advertisement(new_mac, HB6), 5.0)
    assert b.nb.lookup(HB6) == new_mac
    # A DAD probe (source ::) names no address to learn.
    b.nb.learn(neighbor_solicitation(new_mac, IPv6Address("::"), IPv6Address("fd00:2::77")), 6.0)
    assert b.nb.lookup(IPv6Address("fd00:2::77")) is None


def test_send_refuses_destinations_outside_the_network() -> None:
    b = make_lan(2)
    packet = bytes([0x45]) + bytes(19)
    for dst in ("10.3.0.5", "10.2.0.1", "10.2.0.255", "10.2.0.0"):
        assert b.nb.send(packet, IPv4Address(dst), 0.0) == []
    assert b.nb.send(bytes([0x60]) + bytes(39), IPv6Address("fd00:2::1"), 0.0) == []
    assert b.nb.send(packet, IPv6Address("fd00:2::5"), 0.0) == []  # v4 bytes, v6 address
    assert b.nb.drops == {"not_on_link": 5, "malformed": 1} and b.nb.queued == 0


def test_ipv4_only_network_resolves_no_ipv6() -> None:
    gw = Gateway(bytes(16), "10.9.0.0/24", None, MTU)
    nb = Neighbours(gw)
    assert nb.send(bytes([0x60]) + bytes(39), IPv6Address("fd00::5"), 0.0) == []
    na = neighbor_advertisement(HB_MAC, IPv6Address("fd00::5"), gw.mac, IPv6Address("fd00::1"))
    assert nb.learn(na, 0.0) == [] and len(nb) == 0


# --- the route table ---------------------------------------------------------------------------


def test_longest_prefix_wins_and_removal_gives_unreachable() -> None:
    a = make_lan(1)
    got: list[tuple[str, IPv4Address | IPv6Address]] = []

    def into(name: str) -> Callable[[bytes, IPv4Address | IPv6Address, float], None]:
        return lambda packet, dst, now: got.append((name, dst))

    a.gw.add_route(IPv4Network("10.2.0.0/16"), into("wide"))
    a.gw.add_route(IPv4Network("10.2.0.0/24"), into("narrow"))
    a.gw.frame(ping(dst=IPv4Address("10.2.0.5")), 0.0)
    a.gw.frame(ping(dst=IPv4Address("10.2.1.5")), 0.0)
    assert got == [("narrow", IPv4Address("10.2.0.5")), ("wide", IPv4Address("10.2.1.5"))]
    assert a.gw.remove_route(IPv4Network("10.2.0.0/24"))
    assert a.gw.remove_route(IPv4Network("10.2.0.0/16"))
    assert not a.gw.remove_route(IPv4Network("10.2.0.0/16"))
    [error] = a.gw.frame(ping(), 1.0)
    assert (Ether(error)[ICMP].type, Ether(error)[ICMP].code) == (3, 0)  # net unreachable


@pytest.mark.parametrize(
    "network",
    [
        IPv4Network("10.1.0.0/16"),  # contains A's own /24
        IPv4Network("10.1.0.128/25"),  # inside it
        IPv6Network("fd00:1::/48"),
        IPv4Network("127.0.0.0/8"),
        IPv4Network("224.0.0.0/4"),
        IPv6Network("fe80::/64"),
        IPv4Network("0.0.0.0/0"),
    ],
)
def test_routes_overlapping_the_own_network_or_never_routed_ranges_are_refused(
    network: IPv4Network | IPv6Network,
) -> None:
    a = make_lan(1)
    with pytest.raises(ValueError):
        a.gw.add_route(network, lambda p, d, n: None)
    assert a.gw.routes() == []


def test_only_the_networks_own_hosts_are_routed() -> None:
    a, b = pair()
    gw_mac = a.gw.mac
    spoofed = icmp_echo_request(HA_MAC, gw_mac, IPv4Address("10.9.9.9"), HB, 1, 1)
    broadcast = icmp_echo_request(HA_MAC, gw_mac, HA, IPv4Address("10.2.0.255"), 1, 1)
    link_local = icmpv6_echo_request(HA_MAC, gw_mac, IPv6Address("fe80::5"), HB6, 1, 1)
    for frame in (spoofed, broadcast, link_local):
        assert a.gw.frame(frame, 0.0) == []
    assert b.wire == [] and a.gw.handled["routed4"] == 0
    assert a.gw.drops == {"foreign_source": 2, "directed_broadcast": 1}


def test_the_other_gateways_address_answers_pings_as_one_router() -> None:
    a, b = pair()
    [reply] = a.gw.frame(ping(dst=b.gw.ipv4), 0.0)
    pkt = checked(reply)
    assert (pkt.dst, pkt.src) == (HA_MAC.hex(":"), a.gw.mac.hex(":"))
    assert (pkt[IP].src, pkt[IP].dst, pkt[ICMP].type) == ("10.2.0.1", str(HA), 0)
    assert bytes(pkt[ICMP].payload) == PAYLOAD
    assert b.gw.ipv6 is not None
    ping_b6 = icmpv6_echo_request(HA_MAC, a.gw.mac, HA6, b.gw.ipv6, 7, 1, PAYLOAD)
    [reply6] = a.gw.frame(ping_b6, 0.0)
    pkt = checked(reply6)
    assert (pkt[IPv6].src, pkt[IPv6].dst) == ("fd00:2::1", str(HA6))
    assert pkt[ICMPv6EchoReply].id == 7
    assert b.wire == [] and a.gw.handled["echo4"] == a.gw.handled["echo6"] == 1


def test_a_route_names_its_gateway_inside_its_network() -> None:
    a = make_lan(1)
    with pytest.raises(ValueError):
        a.gw.add_route(
            IPv4Network("10.2.0.0/24"), lambda p, d, n: None, address=IPv4Address("10.3.0.1")
        )
    a.gw.add_route(
        IPv4Network("10.2.0.0/24"), lambda p, d, n: None, address=IPv4Address("10.2.0.254")
    )
    assert a.gw.routes()[0].address == IPv4Address("10.2.0.254")


def test_a_route_replaced_takes_the_new_forward() -> None:
    a = make_lan(1)
    got: list[str] = []
    a.gw.add_route(IPv4Network("10.2.0.0/24"), lambda p, d, n: got.append("old"))
    a.gw.add_route(IPv4Network("10.2.0.0/24"), lambda p, d, n: got.append("new"))
    a.gw.frame(ping(), 0.0)
    assert got == ["new"] and len(a.gw.routes()) == 1


# --- fuzz: the router's inputs never raise, junk is counted and never answered -----------------

FUZZ = settings(
    max_examples=800,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "set", "cut", "insert")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0, 0xFF, 0x7F, 0x80, 1, 58, 135, 136)))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.parametrize("name", [t.name for t in ft.router_targets()])
def test_router_inputs_never_raise_and_junk_is_never_answered(name: str) -> None:
    target = next(t for t in ft.router_targets() if t.name == name)

    @FUZZ
    @given(st.one_of(mutated(target.seeds), st.binary(max_size=300)))
    @example(b"")
    @example(bytes(13))
    def run(data: bytes) -> None:
        target.run(data)

    for seed in target.seeds:
        run = example(seed)(run)
    run()
    assert "malformed" in target.reasons, target.reasons  # junk reached the parsers
    assert target.reasons - {"malformed", "ignored"}, target.reasons  # and so did valid input
