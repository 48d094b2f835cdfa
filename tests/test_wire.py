"""Wire formats: known values, round trips, builders cross-checked with scapy, and fuzzing.

scapy is an independent encoder: when our bytes equal scapy's for the same packet, both the
layout and the checksums are right (scapy is in the test extras).
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from atenet.errors import DecodeError
from atenet.wire import arp, checksum, ethernet, icmp, icmpv6, ipv4, ipv6
from atenet.wire.arp import ArpRepr
from atenet.wire.ethernet import EthernetRepr
from atenet.wire.icmp import IcmpRepr
from atenet.wire.icmpv6 import Icmpv6Repr, NeighborAdvert, NeighborSolicit
from atenet.wire.ipv4 import Ipv4Repr
from atenet.wire.ipv6 import Ipv6Repr
from atenet.wire.udp import UdpRepr

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("02000000000b")
V4_A = IPv4Address("10.0.0.2")
V4_B = IPv4Address("10.0.0.1")
V6_A = IPv6Address("fd00:1:2:3::a")
V6_B = IPv6Address("fd00:1:2:3::1")

FUZZ = settings(max_examples=300, deadline=None)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1 done the slow, obvious way: 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- checksum --------------------------------------------------------------------------------


def test_checksum_matches_rfc1071_worked_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert checksum.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_checksum_of_all_zero_words_is_ffff() -> None:
    assert checksum.checksum(b"\x00" * 20) == 0xFFFF


def test_checksum_of_words_summing_to_negative_zero_is_zero() -> None:
    # ff ff alone sums to "negative zero" (0xffff): the checksum is 0, not 0xffff.
    assert checksum.checksum(b"\xff\xff") == 0
    assert checksum.checksum(b"\x12\x34\xed\xcb") == 0


@given(st.binary(max_size=300))
def test_checksum_equals_the_word_by_word_reference(data: bytes) -> None:
    assert checksum.checksum(data) == reference_checksum(data)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_partial_sums_combine_like_concatenation(head: bytes, tail: bytes) -> None:
    if len(head) % 2:
        head += b"\x00"  # partial sums only compose at word boundaries
    assert checksum.checksum(tail, checksum.ones_sum(head)) == reference_checksum(head + tail)


@given(st.binary(min_size=2, max_size=100))
def test_data_with_its_checksum_inserted_verifies(data: bytes) -> None:
    if len(data) % 2:
        data += b"\x00"
    filled = data + checksum.checksum(data).to_bytes(2, "big")
    assert checksum.verify(filled)
    corrupted = bytes([filled[0] ^ 0x01]) + filled[1:]
    assert not checksum.verify(corrupted)


def test_pseudo_header_refuses_mixed_families() -> None:
    with pytest.raises(ValueError, match="mixes"):
        checksum.pseudo_header(V4_A, V6_B, 17, 8)


# --- ethernet --------------------------------------------------------------------------------


def test_hot_path_helpers_read_fields_in_place() -> None:
    frame = arp.arp_request(MAC_A, V4_A, V4_B)
    assert ethernet.dst_mac(frame) == ethernet.BROADCAST_MAC
    assert ethernet.src_mac(frame) == MAC_A
    assert ethernet.ethertype(frame) == ethernet.ETHERTYPE_ARP
    assert ethernet.is_multicast_dst(frame)
    assert ethernet.is_broadcast_dst(frame)
    unicast = arp.arp_reply(MAC_A, V4_A, MAC_B, V4_B)
    assert not ethernet.is_multicast_dst(unicast)
    assert not ethernet.is_broadcast_dst(unicast)


def test_multicast_group_macs_count_as_multicast() -> None:
    assert ethernet.is_multicast_mac(ipv6.multicast_mac_v6(ipv6.ALL_NODES))
    assert ethernet.is_multicast_mac(ipv4.multicast_mac_v4(IPv4Address("224.0.0.251")))
    assert ethernet.is_unicast_mac(MAC_A)
    assert not ethernet.is_unicast_mac(b"\x00" * 6)


def test_mac_text_round_trip_and_errors() -> None:
    assert ethernet.format_mac(MAC_A) == "02:00:00:00:00:01"
    assert ethernet.parse_mac("02-00-00-00-00-0B") == MAC_B
    for bad in ("02:00:00:00:00", "02:00:00:00:00:zz", "0200.0000.0001"):
        with pytest.raises(DecodeError, match="not a MAC"):
            ethernet.parse_mac(bad)


def test_ethernet_matches_scapy_untagged_and_vlan() -> None:
    plain = EthernetRepr(MAC_B, MAC_A, 0x88B5, b"hello")
    assert plain.emit() == bytes(
        Ether(dst="02:00:00:00:00:0b", src="02:00:00:00:00:01", type=0x88B5) / b"hello"
    )
    tagged = EthernetRepr(MAC_B, MAC_A, 0x88B5, b"hello", vlan_tci=(5 << 13) | 42)
    expected = bytes(
        Ether(dst="02:00:00:00:00:0b", src="02:00:00:00:00:01")
        / Dot1Q(prio=5, vlan=42, type=0x88B5)
        / b"hello"
    )
    assert tagged.emit() == expected
    parsed = EthernetRepr.parse(expected)
    assert parsed == tagged
    assert parsed.vlan_id == 42


def test_ethernet_rejects_short_frames() -> None:
    with pytest.raises(DecodeError, match="too short"):
        EthernetRepr.parse(b"\x00" * 13)
    with pytest.raises(DecodeError, match="VLAN"):
        EthernetRepr.parse(b"\x00" * 12 + b"\x81\x00\x00")


# --- ARP -------------------------------------------------------------------------------------


def test_arp_request_matches_scapy() -> None:
    expected = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(
        op=1, hwsrc="02:00:00:00:00:01", psrc="10.0.0.2", hwdst="00:00:00:00:00:00", pdst="10.0.0.1"
    )
    assert arp.arp_request(MAC_A, V4_A, V4_B) == bytes(expected)


def test_arp_reply_is_unicast_and_parses_back() -> None:
    frame = arp.arp_reply(MAC_B, V4_B, MAC_A, V4_A)
    eth = EthernetRepr.parse(frame)
    assert (eth.dst, eth.src, eth.ethertype) == (MAC_A, MAC_B, ethernet.ETHERTYPE_ARP)
    assert ArpRepr.parse(eth.payload) == ArpRepr(arp.ARP_REPLY, MAC_B, V4_B, MAC_A, V4_A)


def test_gratuitous_arp_announces_own_address() -> None:
    body = ArpRepr.parse(EthernetRepr.parse(arp.gratuitous_arp(MAC_A, V4_A)).payload)
    assert body.operation == arp.ARP_REQUEST
    assert body.sender_ip == body.target_ip == V4_A
    assert body.sender_mac == MAC_A
    assert body.target_mac == b"\x00" * 6


def test_arp_tolerates_ethernet_padding() -> None:
    body = ArpRepr(arp.ARP_REQUEST, MAC_A, V4_A, b"\x00" * 6, V4_B)
    assert ArpRepr.parse(body.emit() + b"\x00" * 18) == body


def test_arp_rejects_other_hardware_types_and_truncation() -> None:
    raw = bytearray(ArpRepr(arp.ARP_REQUEST, MAC_A, V4_A, b"\x00" * 6, V4_B).emit())
    raw[1] = 6  # IEEE 802 networks
    with pytest.raises(DecodeError, match="hardware type 6"):
        ArpRepr.parse(bytes(raw))
    with pytest.raises(DecodeError, match="too short"):
        ArpRepr.parse(bytes(raw[:27]))


# --- IPv4 ------------------------------------------------------------------------------------


WIKIPEDIA_HEADER = bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7".replace(" ", ""))


def test_ipv4_header_checksum_matches_wikipedia_example() -> None:
    # https://en.wikipedia.org/wiki/Internet_checksum: header checksum b861.
    packet = Ipv4Repr(
        IPv4Address("192.168.0.1"),
        IPv4Address("192.168.0.199"),
        ipv4.PROTO_UDP,
        b"\x00" * (0x73 - 20),
        dont_fragment=True,
    )
    assert packet.header() == WIKIPEDIA_HEADER
    assert Ipv4Repr.parse(packet.emit()) == packet


def test_ipv4_with_options_parses_and_round_trips() -> None:
    # Router Alert option (RFC 2113): IHL 6, as IGMP reports carry it.
    packet = Ipv4Repr(
        V4_A, IPv4Address("224.0.0.22"), 2, b"igmp", ttl=1, options=b"\x94\x04\x00\x00"
    )
    raw = packet.emit()
    assert raw[0] == 0x46
    assert raw == bytes(
        IP(src="10.0.0.2", dst="224.0.0.22", proto=2, ttl=1, options=b"\x94\x04\x00\x00", id=0)
        / b"igmp"
    )
    assert Ipv4Repr.parse(raw) == packet


def test_ipv4_parse_drops_ethernet_padding() -> None:
    packet = Ipv4Repr(V4_A, V4_B, ipv4.PROTO_ICMP, b"abc")
    assert Ipv4Repr.parse(packet.emit() + b"\x00" * 23).payload == b"abc"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:19], "too short"),
        (lambda b: b"\x65" + b[1:], "version field is 6"),
        (lambda b: b"\x44" + b[1:], "below the minimum"),
        (lambda b: b[:2] + b"\x00\x10" + b[4:], "shorter than its header"),
        (lambda b: b[:2] + b"\x04\x00" + b[4:], "truncated"),
        (lambda b: b[:8] + b"\x3f" + b[9:], "checksum"),
    ],
)
def test_ipv4_rejects_malformed(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = Ipv4Repr(V4_A, V4_B, ipv4.PROTO_UDP, b"x" * 12).emit()
    with pytest.raises(DecodeError, match=message):
        Ipv4Repr.parse(mutate(raw))


def test_ipv4_checksum_check_can_be_skipped_for_offloaded_packets() -> None:
    raw = bytearray(Ipv4Repr(V4_A, V4_B, ipv4.PROTO_UDP).emit())
    raw[10:12] = b"\x00\x00"
    assert Ipv4Repr.parse(bytes(raw), verify_checksum=False).dst == V4_B


def test_ipv4_fragment_fields_round_trip() -> None:
    packet = Ipv4Repr(
        V4_A, V4_B, 17, b"f" * 8, ident=0x1234, more_fragments=True, fragment_offset=185
    )
    assert packet.emit() == bytes(
        IP(src="10.0.0.2", dst="10.0.0.1", proto=17, id=0x1234, flags="MF", frag=185) / (b"f" * 8)
    )
    assert Ipv4Repr.parse(packet.emit()) == packet


def test_multicast_mac_v4_keeps_low_23_bits() -> None:
    assert ipv4.multicast_mac_v4(IPv4Address("239.129.2.3")) == bytes.fromhex("01005e010203")


# --- ICMPv4 ----------------------------------------------------------------------------------


def test_icmp_echo_request_frame_matches_scapy() -> None:
    ours = icmp.icmp_echo_request(MAC_A, MAC_B, V4_A, V4_B, ident=0x1D, seq=7, payload=b"ping!")
    theirs = (
        Ether(dst="02:00:00:00:00:0b", src="02:00:00:00:00:01")
        / IP(src="10.0.0.2", dst="10.0.0.1", id=0)
        / ICMP(type=8, id=0x1D, seq=7)
        / b"ping!"
    )
    assert ours == bytes(theirs)


def test_icmp_echo_reply_frame_parses_to_matching_reply() -> None:
    frame = icmp.icmp_echo_reply(MAC_B, MAC_A, V4_B, V4_A, ident=99, seq=3, payload=b"data")
    packet = Ipv4Repr.parse(EthernetRepr.parse(frame).payload)
    assert (packet.src, packet.dst, packet.protocol) == (V4_B, V4_A, ipv4.PROTO_ICMP)
    message = IcmpRepr.parse(packet.payload)
    assert (message.type, message.ident, message.seq, message.payload) == (0, 99, 3, b"data")


def test_icmp_rejects_bad_checksum_and_truncation() -> None:
    raw = IcmpRepr.echo_request(1, 1, b"abcd").emit()
    with pytest.raises(DecodeError, match="checksum"):
        IcmpRepr.parse(raw[:-1] + b"e")
    with pytest.raises(DecodeError, match="too short"):
        IcmpRepr.parse(raw[:7])


# --- IPv6 ------------------------------------------------------------------------------------


def test_ipv6_round_trip_matches_scapy() -> None:
    packet = Ipv6Repr(V6_A, V6_B, 253, b"exp", hop_limit=7, traffic_class=0xB8, flow_label=0xABCDE)
    assert packet.emit() == bytes(
        IPv6(src=str(V6_A), dst=str(V6_B), nh=253, hlim=7, tc=0xB8, fl=0xABCDE) / b"exp"
    )
    assert Ipv6Repr.parse(packet.emit() + b"\x00\x00") == packet


def test_ipv6_rejects_wrong_version_and_truncation() -> None:
    raw = Ipv6Repr(V6_A, V6_B, 59, b"abcd").emit()
    with pytest.raises(DecodeError, match="version field is 4"):
        Ipv6Repr.parse(b"\x45" + raw[1:])
    with pytest.raises(DecodeError, match="truncated"):
        Ipv6Repr.parse(raw[:-1])
    with pytest.raises(DecodeError, match="too short"):
        Ipv6Repr.parse(raw[:39])


def test_upper_layer_skips_hop_by_hop_and_destination_options() -> None:
    message = b"\x8f\x00\x00\x00icmp"
    hop_by_hop = bytes([60, 0]) + b"\x05\x02\x00\x00\x01\x00"  # router alert + PadN, 8 bytes
    dest_opts = bytes([58, 1]) + b"\x01\x0c" + b"\x00" * 12  # PadN, 16 bytes
    packet = Ipv6Repr(V6_A, ipv6.ALL_NODES, 0, hop_by_hop + dest_opts + message)
    assert packet.upper_layer() == (58, message)


def test_upper_layer_stops_at_fragment_and_no_next_header() -> None:
    fragment = bytes([17, 0, 0, 1, 0, 0, 0, 9])
    assert ipv6.skip_extension_headers(44, fragment) == (44, fragment)
    assert ipv6.skip_extension_headers(0, bytes([59, 0]) + b"\x01\x04" + b"\x00" * 4 + b"junk") == (
        59,
        b"",
    )


def test_upper_layer_rejects_extension_header_past_the_end() -> None:
    with pytest.raises(DecodeError, match="runs past"):
        ipv6.skip_extension_headers(0, bytes([58, 1]) + b"\x00" * 6)
    with pytest.raises(DecodeError, match="truncated"):
        ipv6.skip_extension_headers(60, b"\x3a")


def test_solicited_node_group_and_its_mac() -> None:
    group = ipv6.solicited_node(IPv6Address("fd00::1234:5678"))
    assert group == IPv6Address("ff02::1:ff34:5678")
    assert ipv6.multicast_mac_v6(group) == bytes.fromhex("3333ff345678")


# --- ICMPv6 and ND ---------------------------------------------------------------------------


def test_icmpv6_echo_frames_match_scapy() -> None:
    ours = icmpv6.icmpv6_echo_request(MAC_A, MAC_B, V6_A, V6_B, ident=5, seq=6, payload=b"hi")
    theirs = (
        Ether(dst="02:00:00:00:00:0b", src="02:00:00:00:00:01")
        / IPv6(src=str(V6_A), dst=str(V6_B), hlim=64)
        / ICMPv6EchoRequest(id=5, seq=6, data=b"hi")
    )
    assert ours == bytes(theirs)
    reply = icmpv6.icmpv6_echo_reply(MAC_B, MAC_A, V6_B, V6_A, ident=5, seq=6, payload=b"hi")
    assert reply == bytes(
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:0b")
        / IPv6(src=str(V6_B), dst=str(V6_A), hlim=64)
        / ICMPv6EchoReply(id=5, seq=6, data=b"hi")
    )


def test_icmpv6_checksum_covers_the_pseudo_header() -> None:
    raw = Icmpv6Repr.echo_request(1, 2, b"x").emit(V6_A, V6_B)
    assert Icmpv6Repr.parse(raw, V6_A, V6_B).seq == 2
    with pytest.raises(DecodeError, match="checksum"):
        Icmpv6Repr.parse(raw, V6_A, IPv6Address("fd00:1:2:3::2"))


def test_neighbor_solicitation_matches_scapy() -> None:
    ours = icmpv6.neighbor_solicitation(MAC_A, V6_A, V6_B)
    group = "ff02::1:ff00:1"
    theirs = (
        Ether(dst="33:33:ff:00:00:01", src="02:00:00:00:00:01")
        / IPv6(src=str(V6_A), dst=group, hlim=255)
        / ICMPv6ND_NS(tgt=str(V6_B))
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
    )
    assert ours == bytes(theirs)
    packet = Ipv6Repr.parse(EthernetRepr.parse(ours).payload)
    assert packet.hop_limit == icmpv6.ND_HOP_LIMIT
    solicit = NeighborSolicit.from_icmp(Icmpv6Repr.parse(packet.payload, packet.src, packet.dst))
    assert solicit == NeighborSolicit(V6_B, MAC_A)


def test_duplicate_address_probe_has_no_source_mac_option() -> None:
    unspecified = IPv6Address("::")
    frame = icmpv6.neighbor_solicitation(MAC_A, unspecified, V6_A)
    packet = Ipv6Repr.parse(EthernetRepr.parse(frame).payload)
    message = Icmpv6Repr.parse(packet.payload, packet.src, packet.dst)
    assert NeighborSolicit.from_icmp(message) == NeighborSolicit(V6_A, None)


def test_solicited_neighbor_advertisement_matches_scapy() -> None:
    ours = icmpv6.neighbor_advertisement(MAC_B, V6_B, MAC_A, V6_A, router=True)
    theirs = (
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:0b")
        / IPv6(src=str(V6_B), dst=str(V6_A), hlim=255)
        / ICMPv6ND_NA(tgt=str(V6_B), R=1, S=1, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:0b")
    )
    assert ours == bytes(theirs)
    packet = Ipv6Repr.parse(EthernetRepr.parse(ours).payload)
    advert = NeighborAdvert.from_icmp(Icmpv6Repr.parse(packet.payload, packet.src, packet.dst))
    assert advert == NeighborAdvert(V6_B, MAC_B, router=True, solicited=True, override=True)


def test_unsolicited_advertisement_goes_to_all_nodes_without_s_flag() -> None:
    frame = icmpv6.neighbor_advertisement(MAC_B, V6_B)
    eth = EthernetRepr.parse(frame)
    packet = Ipv6Repr.parse(eth.payload)
    assert eth.dst == bytes.fromhex("333300000001")
    assert packet.dst == ipv6.ALL_NODES
    advert = NeighborAdvert.from_icmp(Icmpv6Repr.parse(packet.payload, packet.src, packet.dst))
    assert not advert.solicited


def test_nd_builders_refuse_unicast_destination_without_mac() -> None:
    with pytest.raises(ValueError, match="needs its dst_mac"):
        icmpv6.neighbor_advertisement(MAC_B, V6_B, dst_ip=V6_A)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Icmpv6Repr(135, 1, 0, V6_B.packed), "code 1"),
        (Icmpv6Repr(135, 0, 0, b"\x00" * 15), "too short"),
        (Icmpv6Repr(135, 0, 0, ipv6.ALL_NODES.packed), "multicast target"),
        (Icmpv6Repr(135, 0, 0, V6_B.packed + b"\x01\x00" + b"\x00" * 6), "length 0"),
        (Icmpv6Repr(135, 0, 0, V6_B.packed + b"\x01\x02" + b"\x00" * 6), "runs past"),
        (Icmpv6Repr(135, 0, 0, V6_B.packed + b"\x01\x02" + b"\x00" * 14), "14 bytes"),
        (Icmpv6Repr(128, 0, 0, V6_B.packed), "not a neighbor solicitation"),
    ],
)
def test_neighbor_solicitation_rejects_malformed(message: Icmpv6Repr, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        NeighborSolicit.from_icmp(message)


# --- UDP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(V4_A, V4_B), (V6_A, V6_B)])
def test_udp_matches_scapy_for_both_families(src, dst) -> None:  # type: ignore[no-untyped-def]
    datagram = UdpRepr(68, 67, b"dhcp-ish payload, odd length")
    ip_layer = (
        IP(src=str(src), dst=str(dst)) if src.version == 4 else IPv6(src=str(src), dst=str(dst))
    )
    theirs = bytes(ip_layer / UDP(sport=68, dport=67) / datagram.payload)
    header_len = 20 if src.version == 4 else 40
    assert datagram.emit(src, dst) == theirs[header_len:]
    assert UdpRepr.parse(datagram.emit(src, dst), src, dst) == datagram


def test_udp_sends_computed_zero_checksum_as_ffff() -> None:
    probe = UdpRepr(1, 2, b"\x00\x00").emit(V4_A, V4_B)
    filler = probe[6:8]  # adding the checksum as a payload word makes the sum negative zero
    raw = UdpRepr(1, 2, filler).emit(V4_A, V4_B)
    assert raw[6:8] == b"\xff\xff"
    assert UdpRepr.parse(raw, V4_A, V4_B).payload == filler


def test_udp_zero_checksum_is_none_over_ipv4_but_invalid_over_ipv6() -> None:
    raw = bytearray(UdpRepr(1, 2, b"abc").emit(V4_A, V4_B))
    raw[6:8] = b"\x00\x00"
    assert UdpRepr.parse(bytes(raw), V4_A, V4_B).payload == b"abc"
    with pytest.raises(DecodeError, match="IPv6"):
        UdpRepr.parse(bytes(raw), V6_A, V6_B)


def test_udp_rejects_bad_length_and_checksum() -> None:
    raw = UdpRepr(1, 2, b"abcd").emit(V4_A, V4_B)
    with pytest.raises(DecodeError, match="below the header"):
        UdpRepr.parse(raw[:4] + b"\x00\x07" + raw[6:])
    with pytest.raises(DecodeError, match="truncated"):
        UdpRepr.parse(raw[:-1])
    with pytest.raises(DecodeError, match="checksum"):
        UdpRepr.parse(raw[:-1] + b"e", V4_A, V4_B)
    assert UdpRepr.parse(raw + b"pad").payload == b"abcd"


# --- property tests: round trips -------------------------------------------------------------

macs = st.binary(min_size=6, max_size=6)
v4s = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6s = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
data = st.binary(max_size=200)


@given(macs, macs, u16.filter(lambda t: t != ethernet.ETHERTYPE_VLAN), data, st.none() | u16)
def test_ethernet_round_trip(dst: bytes, src: bytes, etype: int, payload: bytes, tci) -> None:  # type: ignore[no-untyped-def]
    frame = EthernetRepr(dst, src, etype, payload, tci)
    assert EthernetRepr.parse(frame.emit()) == frame


@given(st.builds(ArpRepr, u16, macs, v4s, macs, v4s))
def test_arp_round_trip(packet: ArpRepr) -> None:
    assert ArpRepr.parse(packet.emit()) == packet


ipv4_packets = st.builds(
    Ipv4Repr,
    v4s,
    v4s,
    u8,
    data,
    ttl=u8,
    tos=u8,
    ident=u16,
    dont_fragment=st.booleans(),
    more_fragments=st.booleans(),
    fragment_offset=st.integers(0, 0x1FFF),
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)


@given(ipv4_packets)
def test_ipv4_round_trip(packet: Ipv4Repr) -> None:
    assert Ipv4Repr.parse(packet.emit()) == packet


@given(st.builds(Ipv6Repr, v6s, v6s, u8, data, u8, u8, st.integers(0, 0xFFFFF)))
def test_ipv6_round_trip(packet: Ipv6Repr) -> None:
    assert Ipv6Repr.parse(packet.emit()) == packet


@given(st.builds(IcmpRepr, u8, u8, u32, data))
def test_icmp_round_trip(message: IcmpRepr) -> None:
    assert IcmpRepr.parse(message.emit()) == message


@given(st.builds(Icmpv6Repr, u8, u8, u32, data), v6s, v6s)
def test_icmpv6_round_trip(message: Icmpv6Repr, src: IPv6Address, dst: IPv6Address) -> None:
    assert Icmpv6Repr.parse(message.emit(src, dst), src, dst) == message


unicast_v6 = v6s.filter(lambda a: not a.is_multicast)


@given(st.builds(NeighborSolicit, unicast_v6, st.none() | macs))
def test_neighbor_solicit_round_trip(solicit: NeighborSolicit) -> None:
    assert NeighborSolicit.from_icmp(solicit.to_icmp()) == solicit


@given(
    st.builds(
        NeighborAdvert, unicast_v6, st.none() | macs, st.booleans(), st.booleans(), st.booleans()
    )
)
def test_neighbor_advert_round_trip(advert: NeighborAdvert) -> None:
    assert NeighborAdvert.from_icmp(advert.to_icmp()) == advert


@given(st.builds(UdpRepr, u16, u16, data), st.one_of(st.tuples(v4s, v4s), st.tuples(v6s, v6s)))
def test_udp_round_trip(datagram: UdpRepr, addresses) -> None:  # type: ignore[no-untyped-def]
    src, dst = addresses
    assert UdpRepr.parse(datagram.emit(src, dst), src, dst) == datagram


# --- property tests: garbage in, DecodeError out ---------------------------------------------


def only_decode_errors(parse, buf: bytes) -> None:  # type: ignore[no-untyped-def]
    """Parsing may succeed or raise DecodeError; anything else (IndexError, ...) fails the test."""
    with contextlib.suppress(DecodeError):
        parse(buf)


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_ethernet_and_arp(buf: bytes) -> None:
    only_decode_errors(EthernetRepr.parse, buf)
    only_decode_errors(ArpRepr.parse, buf)
    only_decode_errors(ArpRepr.parse, bytes.fromhex("000108000604") + buf)


@FUZZ
@given(st.binary(max_size=80), st.booleans())
def test_fuzz_ipv4(buf: bytes, verify_checksum: bool) -> None:
    only_decode_errors(lambda b: Ipv4Repr.parse(b, verify_checksum=verify_checksum), buf)
    # force the version nibble so the fuzzer reaches the length checks
    forced = bytes([0x40 | (buf[0] & 0x0F)]) + buf[1:] if buf else buf
    only_decode_errors(lambda b: Ipv4Repr.parse(b, verify_checksum=False), forced)


@FUZZ
@given(st.binary(max_size=120), st.sampled_from([0, 43, 44, 58, 59, 60]))
def test_fuzz_ipv6_and_extension_headers(buf: bytes, next_header: int) -> None:
    only_decode_errors(Ipv6Repr.parse, buf)
    only_decode_errors(Ipv6Repr.parse, b"\x60" + buf)
    only_decode_errors(lambda b: ipv6.skip_extension_headers(next_header, b), buf)


@FUZZ
@given(st.binary(max_size=80), v6s, v6s)
def test_fuzz_icmp_and_nd(buf: bytes, src: IPv6Address, dst: IPv6Address) -> None:
    only_decode_errors(IcmpRepr.parse, buf)
    only_decode_errors(lambda b: Icmpv6Repr.parse(b, src, dst), buf)

    def nd(b: bytes) -> None:
        message = Icmpv6Repr.parse(b, src, dst, verify_checksum=False)
        NeighborSolicit.from_icmp(message)

    def na(b: bytes) -> None:
        message = Icmpv6Repr.parse(b, src, dst, verify_checksum=False)
        NeighborAdvert.from_icmp(message)

    only_decode_errors(nd, bytes([135, 0]) + buf)
    only_decode_errors(na, bytes([136, 0]) + buf)


@FUZZ
@given(st.binary(max_size=60), st.one_of(st.none(), st.tuples(v4s, v4s), st.tuples(v6s, v6s)))
def test_fuzz_udp(buf: bytes, addresses) -> None:  # type: ignore[no-untyped-def]
    src, dst = addresses if addresses else (None, None)
    only_decode_errors(lambda b: UdpRepr.parse(b, src, dst), buf)
