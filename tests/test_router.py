"""The gateway (ethereal interface), frame by frame: answers checked by scapy, not by our parsers.

Every frame in is built with scapy and every answer is decoded with scapy; checksums are
checked by letting scapy rebuild the answer from its fields and comparing bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import select
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, Ether, IPv6, Raw
from scapy.layers.inet import UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
)
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from atenet import addressing
from atenet.ratelimit import TokenBucket
from atenet.router.forward import (
    ICMP_FRAG_NEEDED,
    decrement_hop_limit,
    decrement_ttl,
    icmp_dest_unreachable,
    icmpv6_packet_too_big,
)
from atenet.router.gateway import Gateway
from atenet.router.ra import MIN_DELAY_BETWEEN_RAS
from atenet.transport.tap import TapDevice
from atenet.wire.checksum import checksum
from tests.conftest import needs_root
from tests.support.netns import Host, Lab

NETWORK_ID = bytes(range(16))
CIDR = "10.77.5.0/24"
CIDR6 = "fd00:77:5::/64"
MTU = 1380
CLIENT_MAC = "02:11:22:33:44:55"
CLIENT_IP = "10.77.5.20"
CLIENT_IP6 = "fd00:77:5::20"
CLIENT_LL = "fe80::11:22ff:fe33:4455"


@pytest.fixture
def gw() -> Gateway:
    return Gateway(NETWORK_ID, CIDR, CIDR6, MTU, rng=random.Random(1))


def gw_mac(gw: Gateway) -> str:
    return gw.mac.hex(":")


def assert_checksums_valid(frame: bytes) -> Ether:
    """Decode ``frame`` with scapy and check that scapy computes the same checksums."""
    packet = Ether(frame)
    fresh = Ether(frame)
    for layer in fresh.layers():
        fields = fresh[layer].fields
        for name in ("chksum", "cksum"):
            if name in fields and layer not in (IPerror,):
                del fields[name]
    assert bytes(fresh) == frame, "scapy computes different checksums"
    return packet


# --- addresses ---------------------------------------------------------------------------------


def test_gateway_mac_is_the_documented_formula() -> None:
    digest = hashlib.sha256(b"atenet/v1 gateway mac" + NETWORK_ID).digest()
    expected = bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]
    assert addressing.gateway_mac(NETWORK_ID) == expected
    assert addressing.gateway_mac(bytes(16)) != addressing.gateway_mac(NETWORK_ID)


def test_gateway_mac_test_vector() -> None:
    # A fixed vector, so a formula change (which breaks every client's neighbour cache) fails.
    assert addressing.gateway_mac(NETWORK_ID).hex(":") == "16:1e:7a:d2:a5:12"
    assert addressing.gateway_link_local(NETWORK_ID) == IPv6Address("fe80::141e:7aff:fed2:a512")


def test_gateway_link_local_is_the_eui64_of_its_mac() -> None:
    mac = addressing.gateway_mac(NETWORK_ID).hex(":")
    expected = IPv6Address("fe80::" + in6_mactoifaceid(mac).lower())
    assert addressing.gateway_link_local(NETWORK_ID) == expected


@settings(max_examples=300)
@given(st.binary(min_size=6, max_size=6))
def test_hashed_addresses_never_are_the_gateways(mac: bytes) -> None:
    for cidr in ("10.1.2.0/30", "10.1.2.0/29", CIDR):
        assert addressing.ipv4_for(NETWORK_ID, mac, cidr).ip != addressing.gateway_v4(cidr).ip
    assert addressing.ipv6_for(NETWORK_ID, mac, CIDR6).ip != addressing.gateway_v6(CIDR6).ip


def test_stable_mac_steps_aside_from_the_gateway_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real collision needs ~2**46 tries; force one by making the gateway take the host's MAC.
    natural = addressing.stable_mac(NETWORK_ID, b"host-1")
    monkeypatch.setattr(addressing, "gateway_mac", lambda network_id: natural)
    moved = addressing.stable_mac(NETWORK_ID, b"host-1")
    assert moved != natural
    digest = hashlib.sha256(b"atenet/v1 mac" + NETWORK_ID + b"host-1\x00").digest()
    assert moved == bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]


def test_gateway_addresses(gw: Gateway) -> None:
    assert gw.ipv4 == IPv4Address("10.77.5.1")
    assert gw.ipv6 == IPv6Address("fd00:77:5::1")
    assert gw.link_local.is_link_local
    assert gw.mac == addressing.gateway_mac(NETWORK_ID)


# --- ARP ---------------------------------------------------------------------------------------


def arp_who_has(target: str, sender: str = CLIENT_IP, op: int = 1) -> bytes:
    return bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENT_MAC)
        / ARP(op=op, hwsrc=CLIENT_MAC, psrc=sender, pdst=target)
    )


def test_arp_for_the_gateway_is_answered_with_the_gateway_mac(gw: Gateway) -> None:
    (answer,) = gw.frame(arp_who_has("10.77.5.1"), 0.0)
    packet = Ether(answer)
    assert packet.dst == CLIENT_MAC and packet.src == gw_mac(gw)
    assert packet[ARP].op == 2
    assert packet[ARP].hwsrc == gw_mac(gw) and packet[ARP].psrc == "10.77.5.1"
    assert packet[ARP].hwdst == CLIENT_MAC and packet[ARP].pdst == CLIENT_IP
    assert gw.handled["arp"] == 1


def test_arp_for_another_host_is_ignored(gw: Gateway) -> None:
    assert gw.frame(arp_who_has("10.77.5.30"), 0.0) == []
    assert gw.handled["arp"] == 0 and not gw.drops


def test_gratuitous_arp_is_never_answered(gw: Gateway) -> None:
    # A client announcing the gateway's address (a conflict) and one announcing its own.
    assert gw.frame(arp_who_has("10.77.5.1", sender="10.77.5.1"), 0.0) == []
    assert gw.frame(arp_who_has(CLIENT_IP, sender=CLIENT_IP), 0.0) == []
    assert gw.frame(arp_who_has(CLIENT_IP, sender="10.77.5.1", op=2), 0.0) == []
    assert gw.drops["arp_conflict"] == 2


def test_arp_reply_to_the_gateway_is_not_a_conflict(gw: Gateway) -> None:
    assert gw.frame(arp_who_has("10.77.5.1", sender=CLIENT_IP, op=2), 0.0) == []
    assert not gw.drops and gw.ignored == 1


def test_arp_probe_for_the_gateway_address_is_defended(gw: Gateway) -> None:
    (answer,) = gw.frame(arp_who_has("10.77.5.1", sender="0.0.0.0"), 0.0)
    assert Ether(answer)[ARP].op == 2 and Ether(answer).dst == CLIENT_MAC


# --- ICMP echo ---------------------------------------------------------------------------------


def test_ping_to_the_gateway_is_answered_with_valid_checksums(gw: Gateway) -> None:
    request = (
        Ether(dst=gw_mac(gw), src=CLIENT_MAC)
        / IP(src=CLIENT_IP, dst="10.77.5.1", ttl=64)
        / ICMP(type=8, id=0x1234, seq=7)
        / Raw(b"payload-0123456789" * 3)
    )
    (answer,) = gw.frame(bytes(request), 0.0)
    reply = assert_checksums_valid(answer)
    assert reply.dst == CLIENT_MAC and reply.src == gw_mac(gw)
    assert reply[IP].src == "10.77.5.1" and reply[IP].dst == CLIENT_IP
    assert reply[ICMP].type == 0 and reply[ICMP].id == 0x1234 and reply[ICMP].seq == 7
    assert bytes(reply[ICMP].payload) == b"payload-0123456789" * 3


def test_ping_with_a_bad_checksum_is_dropped_and_counted(gw: Gateway) -> None:
    request = (
        Ether(dst=gw_mac(gw), src=CLIENT_MAC)
        / IP(src=CLIENT_IP, dst="10.77.5.1")
        / ICMP(type=8, id=1, seq=1, chksum=0x1111)
    )
    assert gw.frame(bytes(request), 0.0) == []
    assert gw.drops["malformed"] == 1


def test_unicast_frames_for_other_hosts_are_ignored(gw: Gateway) -> None:
    frame = (
        Ether(dst="02:99:99:99:99:99", src=CLIENT_MAC)
        / IP(src=CLIENT_IP, dst="10.77.5.1")
        / ICMP(type=8)
    )
    assert gw.frame(bytes(frame), 0.0) == []
    assert gw.ignored == 1 and not gw.drops


# --- neighbour discovery -----------------------------------------------------------------------


def ns_for(target: str, src: str = CLIENT_IP6, hlim: int = 255) -> bytes:
    group = in6_getnsma(IPv6Address(target).packed)
    dst = str(IPv6Address(group))
    packet = Ether(dst=in6_getnsmac(group), src=CLIENT_MAC) / IPv6(src=src, dst=dst, hlim=hlim)
    packet /= ICMPv6ND_NS(tgt=target)
    if src != "::":
        packet /= ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    return bytes(packet)


@pytest.mark.parametrize("which", ["global", "link-local"])
def test_neighbour_solicitation_for_the_gateway_is_answered(gw: Gateway, which: str) -> None:
    target = str(gw.ipv6 if which == "global" else gw.link_local)
    (answer,) = gw.frame(ns_for(target), 0.0)
    na = assert_checksums_valid(answer)
    assert na.dst == CLIENT_MAC and na.src == gw_mac(gw)
    assert na[IPv6].src == target and na[IPv6].dst == CLIENT_IP6 and na[IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == target
    assert na[ICMPv6ND_NA].S == 1 and na[ICMPv6ND_NA].O == 1 and na[ICMPv6ND_NA].R == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == gw_mac(gw)


def test_dad_probe_for_a_client_address_is_not_answered(gw: Gateway) -> None:
    assert gw.frame(ns_for(CLIENT_IP6, src="::"), 0.0) == []
    assert gw.frame(ns_for(CLIENT_LL, src="::"), 0.0) == []
    assert not gw.handled and not gw.drops


def test_dad_probe_for_the_gateway_address_is_defended_to_all_nodes(gw: Gateway) -> None:
    (answer,) = gw.frame(ns_for(str(gw.ipv6), src="::"), 0.0)
    na = assert_checksums_valid(answer)
    assert na[IPv6].dst == "ff02::1" and na.dst == "33:33:00:00:00:01"
    assert na[ICMPv6ND_NA].S == 0 and na[ICMPv6ND_NA].tgt == str(gw.ipv6)


def test_neighbour_solicitation_with_a_routed_hop_limit_is_dropped(gw: Gateway) -> None:
    assert gw.frame(ns_for(str(gw.ipv6), hlim=64), 0.0) == []
    assert gw.drops["nd_hop_limit"] == 1


def test_ping6_to_the_gateway_is_answered(gw: Gateway) -> None:
    for dst in (str(gw.ipv6), str(gw.link_local)):
        src = CLIENT_IP6 if dst == str(gw.ipv6) else CLIENT_LL
        request = (
            Ether(dst=gw_mac(gw), src=CLIENT_MAC)
            / IPv6(src=src, dst=dst)
            / ICMPv6EchoRequest(id=9, seq=3, data=b"abc" * 10)
        )
        (answer,) = gw.frame(bytes(request), 0.0)
        reply = assert_checksums_valid(answer)
        assert reply[IPv6].src == dst and reply[IPv6].dst == src
        assert reply[ICMPv6EchoReply].id == 9 and reply[ICMPv6EchoReply].seq == 3
        assert reply[ICMPv6EchoReply].data == b"abc" * 10


def test_unicast_neighbour_solicitation_for_reachability_is_answered(gw: Gateway) -> None:
    # NUD: the host re-checks its cached router with a unicast NS, no source link-layer option.
    frame = bytes(
        Ether(dst=GW_MAC, src=CLIENT_MAC)
        / IPv6(src=CLIENT_IP6, dst=str(gw.ipv6), hlim=255)
        / ICMPv6ND_NS(tgt=str(gw.ipv6))
    )
    (answer,) = gw.frame(frame, 0.0)
    na = assert_checksums_valid(answer)
    assert na.dst == CLIENT_MAC and na[ICMPv6ND_NA].S == 1


def test_ping_from_another_network_is_answered_but_not_a_broadcast_ping(gw: Gateway) -> None:
    def ping(src: str, eth_dst: str = GW_MAC) -> list[bytes]:
        frame = Ether(dst=eth_dst, src=CLIENT_MAC) / IP(src=src, dst="10.77.5.1") / ICMP(id=1)
        return gw.frame(bytes(frame), 0.0)

    (answer,) = ping("10.99.0.7")  # a routed source (routing arrives later)
    assert Ether(answer)[IP].dst == "10.99.0.7"
    assert ping(CLIENT_IP, eth_dst="ff:ff:ff:ff:ff:ff") == []
    assert ping("10.77.5.255") == [] and ping("0.0.0.0") == [] and ping("224.0.0.1") == []
    assert gw.drops["echo_broadcast"] == 1 and gw.drops["echo_bad_source"] == 3


def test_gateway_never_answers_as_anyone_else(gw: Gateway) -> None:
    # A spoofed frame from the gateway's own MAC (a loop, or a client faking it) is refused.
    frame = Ether(dst="ff:ff:ff:ff:ff:ff", src=GW_MAC) / ARP(
        hwsrc=GW_MAC, psrc=CLIENT_IP, pdst="10.77.5.1"
    )
    assert gw.frame(bytes(frame), 0.0) == []
    assert gw.drops["bad_source_mac"] == 1


# --- router advertisements ---------------------------------------------------------------------


def rs(src: str = CLIENT_LL) -> bytes:
    packet = Ether(dst="33:33:00:00:00:02", src=CLIENT_MAC) / IPv6(src=src, dst="ff02::2", hlim=255)
    packet /= ICMPv6ND_RS()
    if src != "::":
        packet /= ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    return bytes(packet)


def check_ra(gw: Gateway, frame: bytes, router_lifetime: int = 0) -> Ether:
    ra = assert_checksums_valid(frame)
    assert ra.src == gw_mac(gw)
    assert ra[IPv6].src == str(gw.link_local) and ra[IPv6].hlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime == router_lifetime
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert prefix.prefix == "fd00:77:5::" and prefix.prefixlen == 64
    assert prefix.L == 1 and prefix.A == 1
    assert prefix.validlifetime > prefix.preferredlifetime > 0
    assert ra[ICMPv6NDOptMTU].mtu == MTU
    assert ra[ICMPv6NDOptRDNSS].dns == ["2001:4860:4860::8888"]
    assert ra[ICMPv6NDOptRDNSS].lifetime > 0
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == gw_mac(gw)
    return ra


def test_router_solicitation_gets_an_advertisement(gw: Gateway) -> None:
    (answer,) = gw.frame(rs(), 0.0)
    ra = check_ra(gw, answer)
    assert ra.dst == CLIENT_MAC and ra[IPv6].dst == CLIENT_LL


def test_router_solicitations_are_answered_at_a_bounded_rate(gw: Gateway) -> None:
    answers = sum(len(gw.frame(rs(), 1.0)) for _ in range(30))
    assert answers == 10 and gw.drops["rs_rate_limited"] == 20
    later = [len(gw.frame(rs(), 1.25)) for _ in range(3)]
    assert later == [1, 1, 0]  # 10/s: 2.5 tokens back after 0.25 s


def test_solicitation_from_unspecified_with_a_link_layer_option_is_invalid(gw: Gateway) -> None:
    frame = (
        Ether(dst="33:33:00:00:00:02", src=CLIENT_MAC)
        / IPv6(src="::", dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    )
    assert gw.frame(bytes(frame), 0.0) == []
    assert gw.drops["nd_invalid"] == 1


def test_default_route_is_advertised_only_when_asked() -> None:
    gw = Gateway(NETWORK_ID, CIDR, CIDR6, MTU, default_route=True, dns6=())
    (answer,) = gw.frame(rs(), 0.0)
    ra = Ether(answer)
    assert ra[ICMPv6ND_RA].routerlifetime == 1800
    assert not ra.haslayer(ICMPv6NDOptRDNSS)


def test_solicitation_from_the_unspecified_address_brings_the_multicast_ra_forward(
    gw: Gateway,
) -> None:
    (first,) = gw.poll(0.0)
    assert Ether(first)[IPv6].dst == "ff02::1"
    assert gw.poll_at() is not None and gw.poll_at() > 3.0
    assert gw.frame(rs("::"), 1.0) == []
    # Due again, but not before the 3 s minimum gap between multicast advertisements.
    assert gw.poll_at() == pytest.approx(MIN_DELAY_BETWEEN_RAS)
    assert gw.poll(2.0) == []
    (again,) = gw.poll(3.0)
    check_ra(gw, again)


def test_unsolicited_advertisements_follow_rfc4861_intervals() -> None:
    gw = Gateway(NETWORK_ID, CIDR, CIDR6, MTU, ra_max_interval=60, rng=random.Random(5))
    now, times = 0.0, []
    for _ in range(20):
        due = gw.poll_at()
        assert due is not None
        assert gw.poll(due - 0.001) == [] or due <= now
        now = max(now, due)
        (frame,) = gw.poll(now)
        assert Ether(frame)[IPv6].dst == "ff02::1"
        times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(3.0 <= g <= 16.0 for g in gaps[:3]), gaps[:3]  # the initial fast ones
    assert all(19.8 - 1e-9 <= g <= 60 for g in gaps[3:]), gaps[3:]


def test_ipv4_only_network_has_no_periodic_output() -> None:
    gw = Gateway(NETWORK_ID, CIDR, None, MTU)
    assert gw.poll_at() is None and gw.poll(100.0) == []
    assert gw.frame(rs(), 0.0) == []


# --- forwarding primitives ---------------------------------------------------------------------


def full_checksum(header: bytes) -> int:
    zeroed = header[:10] + b"\0\0" + header[12:]
    return checksum(zeroed)


@settings(max_examples=500)
@given(
    st.integers(2, 255),
    st.integers(0, 255),
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 10).map(lambda n: n * 4),
    st.data(),
)
def test_ttl_decrement_equals_a_full_recomputation(
    ttl: int, proto: int, first: bytes, addrs: bytes, opt_len: int, data: st.DataObject
) -> None:
    options = data.draw(st.binary(min_size=opt_len, max_size=opt_len))
    ihl = 5 + opt_len // 4
    header = bytearray(bytes([0x40 | ihl]) + first[1:8] + bytes([ttl, proto]) + b"\0\0")
    header += addrs + options  # source and destination, then options
    header[10:12] = full_checksum(bytes(header)).to_bytes(2, "big")
    out = decrement_ttl(bytes(header) + b"payload")
    assert out[8] == ttl - 1
    assert out[10:12] == full_checksum(out[: ihl * 4]).to_bytes(2, "big")
    assert out[ihl * 4 :] == b"payload"


def test_ttl_of_one_cannot_be_decremented() -> None:
    packet = bytes(IP(src=CLIENT_IP, dst="8.8.8.8", ttl=1) / ICMP())
    with pytest.raises(ValueError, match="time-exceeded"):
        decrement_ttl(packet)
    assert decrement_hop_limit(bytes(IPv6(hlim=2) / ICMPv6EchoRequest()))[7] == 1


def routed(ttl: int = 64, dst: str = "8.8.8.8", src: str = CLIENT_IP, **kw: object) -> bytes:
    return bytes(
        Ether(dst=kw.pop("eth_dst", None) or GW_MAC, src=CLIENT_MAC)
        / IP(src=src, dst=dst, ttl=ttl, **kw)
        / UDP(sport=1234, dport=53)
        / Raw(b"x" * 40)
    )


GW_MAC = addressing.gateway_mac(NETWORK_ID).hex(":")


def test_ttl_one_gives_time_exceeded_quoting_header_and_8_bytes(gw: Gateway) -> None:
    frame = routed(ttl=1)
    (answer,) = gw.frame(frame, 0.0)
    error = assert_checksums_valid(answer)
    assert error.dst == CLIENT_MAC and error.src == GW_MAC
    assert error[IP].src == "10.77.5.1" and error[IP].dst == CLIENT_IP
    assert error[ICMP].type == 11 and error[ICMP].code == 0
    quoted = bytes(error[ICMP].payload)
    assert quoted == frame[14 : 14 + 20 + 8]
    assert gw.drops["ttl_exceeded"] == 1


def test_unroutable_destination_gives_net_unreachable(gw: Gateway) -> None:
    (answer,) = gw.frame(routed(ttl=64), 0.0)
    error = assert_checksums_valid(answer)
    assert error[ICMP].type == 3 and error[ICMP].code == 0
    assert gw.drops["no_route"] == 1


def test_hop_limit_one_gives_icmpv6_time_exceeded(gw: Gateway) -> None:
    frame = bytes(
        Ether(dst=GW_MAC, src=CLIENT_MAC)
        / IPv6(src=CLIENT_IP6, dst="2001:db8::1", hlim=1)
        / ICMPv6EchoRequest(data=b"q" * 1400)
    )
    (answer,) = gw.frame(frame, 0.0)
    error = assert_checksums_valid(answer)
    assert error[IPv6].src == str(gw.ipv6) and error[IPv6].dst == CLIENT_IP6
    assert error[ICMPv6TimeExceeded].code == 0
    assert len(error[IPv6]) == 1280  # as much of the packet as fits the minimum MTU
    frame_ok = bytes(
        Ether(dst=GW_MAC, src=CLIENT_MAC)
        / IPv6(src=CLIENT_IP6, dst="2001:db8::1", hlim=9)
        / ICMPv6EchoRequest()
    )
    (unreach,) = gw.frame(frame_ok, 0.0)
    assert Ether(unreach).haslayer(ICMPv6DestUnreach)


def test_frag_needed_and_packet_too_big_carry_the_mtu() -> None:
    packet = bytes(IP(src=CLIENT_IP, dst="10.9.9.9", flags="DF") / UDP() / Raw(b"z" * 1500))
    error = IP(icmp_dest_unreachable(packet, IPv4Address("10.77.5.1"), ICMP_FRAG_NEEDED, 1380))
    assert error[ICMP].type == 3 and error[ICMP].code == 4 and error[ICMP].nexthopmtu == 1380
    assert bytes(IP(bytes(error))) == bytes(error)
    packet6 = bytes(IPv6(src=CLIENT_IP6, dst="fd00:9::9") / UDP() / Raw(b"z" * 1500))
    error6 = IPv6(icmpv6_packet_too_big(packet6, IPv6Address("fd00:77:5::1"), 1380))
    assert error6[ICMPv6PacketTooBig].mtu == 1380
    fresh = IPv6(bytes(error6))
    del fresh[ICMPv6PacketTooBig].cksum
    assert bytes(fresh) == bytes(error6)


def test_icmp_errors_are_rate_limited(gw: Gateway) -> None:
    answers = [gw.frame(routed(ttl=1), 5.0) for _ in range(80)]
    sent = sum(len(a) for a in answers)
    assert sent == 50  # the burst
    assert gw.drops["icmp_rate_limited"] == 30
    assert len(gw.frame(routed(ttl=1), 5.1)) == 1  # 100/s refills 10 in 0.1 s


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert not bucket.take(0.05)  # a clock going backwards adds nothing
    assert bucket.refused == 3


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(routed(ttl=1, src="0.0.0.0"), id="unspecified-source"),
        pytest.param(routed(ttl=1, src="255.255.255.255"), id="broadcast-source"),
        pytest.param(routed(ttl=1, src="224.0.0.5"), id="multicast-source"),
        pytest.param(routed(ttl=1, dst="224.1.2.3"), id="multicast-destination"),
        pytest.param(routed(ttl=1, eth_dst="ff:ff:ff:ff:ff:ff"), id="link-broadcast"),
        pytest.param(routed(ttl=1, frag=100), id="non-first-fragment"),
        pytest.param(
            bytes(
                Ether(dst=GW_MAC, src=CLIENT_MAC)
                / IP(src=CLIENT_IP, dst="8.8.8.8", ttl=1)
                / ICMP(type=3, code=1)
                / IPerror(src="8.8.8.8", dst=CLIENT_IP)
            ),
            id="icmp-error",
        ),
        pytest.param(
            bytes(
                Ether(dst=GW_MAC, src=CLIENT_MAC)
                / IPv6(src=CLIENT_IP6, dst="2001:db8::1", hlim=1)
                / ICMPv6DestUnreach()
                / IPv6(src="2001:db8::1", dst=CLIENT_IP6)
            ),
            id="icmpv6-error",
        ),
        pytest.param(
            bytes(
                Ether(dst=GW_MAC, src=CLIENT_MAC)
                / IPv6(src="::", dst="2001:db8::1", hlim=1)
                / UDP()
            ),
            id="ipv6-unspecified-source",
        ),
    ],
)
def test_no_error_is_sent_about_errors_broadcasts_or_multicasts(gw: Gateway, frame: bytes) -> None:
    assert gw.frame(frame, 0.0) == []
    assert gw.errors.tokens == 50  # no error was even considered for sending


# --- robustness --------------------------------------------------------------------------------

SEEDS = [
    arp_who_has("10.77.5.1"),
    ns_for("fd00:77:5::1"),
    rs(),
    routed(ttl=1),
    bytes(Ether(dst=GW_MAC, src=CLIENT_MAC) / IP(src=CLIENT_IP, dst="10.77.5.1") / ICMP()),
    bytes(
        Ether(dst=GW_MAC, src=CLIENT_MAC)
        / IPv6(src=CLIENT_IP6, dst="fd00:77:5::1")
        / ICMPv6EchoRequest()
    ),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = draw(st.binary(max_size=8))
    return bytes(frame)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=200)), st.floats(0, 1e6))
def test_random_and_mutated_frames_never_raise(frame: bytes, now: float) -> None:
    gw = Gateway(NETWORK_ID, CIDR, CIDR6, MTU)
    out = gw.frame(frame, now)
    assert isinstance(out, list)
    assert len(out) <= 1
    for answer in out:
        assert answer[6:12] == gw.mac  # whatever it says, it says it as the gateway


def test_malformed_frames_are_counted() -> None:
    gw = Gateway(NETWORK_ID, CIDR, CIDR6, MTU)
    assert gw.frame(b"\x01" * 5, 0.0) == []
    assert gw.frame(ns_for("fd00:77:5::1")[:-10], 0.0) == []
    assert gw.drops["short_frame"] == 1 and gw.drops["malformed"] == 1


# --- the real kernel ---------------------------------------------------------------------------


def pump(tap: TapDevice, gw: Gateway, until: Callable[[], bool], seconds: float) -> None:
    """Be the wire between the kernel's TAP and the gateway until ``until()`` or timeout."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        ready, _, _ = select.select([tap], [], [], 0.05)
        now = time.monotonic()
        out = gw.poll(now)
        if ready:
            for frame in tap.read_batch():
                out += gw.frame(frame, now)
        for frame in out:
            tap.write(frame)


def ping_while_pumping(host: Host, tap: TapDevice, gw: Gateway, addr: str) -> bool:
    """``ping addr`` from ``host`` while this thread answers for the gateway."""
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(host.ping(addr, 3, 6)), daemon=True)
    worker.start()
    pump(tap, gw, lambda: not worker.is_alive(), 15)
    worker.join(5)
    return bool(result and result[0])


def slaac_address(host: Host) -> str | None:
    out = host.run(["ip", "-6", "-o", "addr", "show", "dev", "tap0", "scope", "global"]).stdout
    for line in out.splitlines():
        if "fd00:77:5:" in line and "tentative" not in line:
            return line.split()[3]
    return None


@needs_root
def test_kernel_pings_the_gateway_and_takes_a_slaac_address(lab: Lab) -> None:
    host = lab.add_host("client")
    mac = addressing.stable_mac(NETWORK_ID, b"kernel-test")
    ip4 = addressing.ipv4_for(NETWORK_ID, mac, CIDR)
    tap = host.call(TapDevice.open, "tap0", MTU, mac)
    gw = Gateway(NETWORK_ID, CIDR, CIDR6, MTU, rng=random.Random(3))
    try:
        host.run(["ip", "addr", "add", str(ip4), "dev", "tap0"])
        # Default sysctls: DAD on, accept_ra on, the kernel sends router solicitations.
        host.run(["ip", "link", "set", "tap0", "up"])
        ping4 = ping_while_pumping(host, tap, gw, "10.77.5.1")
        found: list[str] = []
        pump(
            tap,
            gw,
            lambda: bool(found) or bool(found.extend(filter(None, [slaac_address(host)]))),
            20,
        )
        ping6 = ping_while_pumping(host, tap, gw, "fd00:77:5::1")
        routes = host.run(["ip", "-6", "route", "show", "dev", "tap0"]).stdout
    finally:
        tap.close()
    assert ping4, f"IPv4 ping of the gateway failed; gateway drops {dict(gw.drops)}"
    assert found, f"no SLAAC address; gateway handled {dict(gw.handled)}"
    assert found[0].endswith("/64")
    assert ping6, f"IPv6 ping of the gateway failed; gateway handled {dict(gw.handled)}"
    assert "fd00:77:5::/64" in routes
    assert "default" not in routes  # router lifetime 0: not a default router
    assert gw.handled["echo4"] >= 1 and gw.handled["echo6"] >= 1
