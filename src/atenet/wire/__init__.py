"""Packet formats as bytes: parse and emit, checksums, and frame builders.

One module per protocol (``ethernet``, ``arp``, ``ipv4``, ``ipv6``, ``icmp``, ``icmpv6``,
``udp``, ``checksum``). Each has a ``*Repr`` record with ``parse(buf)`` — which raises
:class:`atenet.errors.DecodeError` and nothing else on malformed input — and ``emit()``.
Ethernet also has allocation-free field readers for the forwarding hot path.

The most used names are re-exported here so callers can write ``from atenet.wire import ...``;
the checksum helpers stay in :mod:`atenet.wire.checksum`, whose module name they would shadow.
"""

from atenet.wire.arp import ARP_REPLY, ARP_REQUEST, ArpRepr, arp_reply, arp_request, gratuitous_arp
from atenet.wire.ethernet import (
    BROADCAST_MAC,
    ETH_HEADER_LEN,
    ETH_VLAN_HEADER_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    EthernetRepr,
    dst_mac,
    ethertype,
    format_mac,
    is_broadcast_dst,
    is_multicast_dst,
    parse_mac,
    src_mac,
)
from atenet.wire.icmp import IcmpRepr, icmp_echo_reply, icmp_echo_request
from atenet.wire.icmpv6 import (
    Icmpv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    icmpv6_echo_reply,
    icmpv6_echo_request,
    neighbor_advertisement,
    neighbor_solicitation,
)
from atenet.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr
from atenet.wire.ipv6 import NEXT_HEADER_ICMPV6, Ipv6Repr, solicited_node
from atenet.wire.udp import UdpRepr

__all__ = [
    "ARP_REPLY",
    "ARP_REQUEST",
    "BROADCAST_MAC",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "ETHERTYPE_VLAN",
    "ETH_HEADER_LEN",
    "ETH_VLAN_HEADER_LEN",
    "NEXT_HEADER_ICMPV6",
    "PROTO_ICMP",
    "PROTO_TCP",
    "PROTO_UDP",
    "ArpRepr",
    "EthernetRepr",
    "IcmpRepr",
    "Icmpv6Repr",
    "Ipv4Repr",
    "Ipv6Repr",
    "NeighborAdvert",
    "NeighborSolicit",
    "UdpRepr",
    "arp_reply",
    "arp_request",
    "dst_mac",
    "ethertype",
    "format_mac",
    "gratuitous_arp",
    "icmp_echo_reply",
    "icmp_echo_request",
    "icmpv6_echo_reply",
    "icmpv6_echo_request",
    "is_broadcast_dst",
    "is_multicast_dst",
    "neighbor_advertisement",
    "neighbor_solicitation",
    "parse_mac",
    "solicited_node",
    "src_mac",
]
