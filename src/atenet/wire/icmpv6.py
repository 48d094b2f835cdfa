"""ICMPv6 (RFC 4443) and the Neighbor Discovery messages a gateway needs (RFC 4861).

:class:`Icmpv6Repr` has the same shape as :class:`~atenet.wire.icmp.IcmpRepr` (type, code,
32-bit rest, payload) but its checksum covers the IPv6 pseudo header, so parsing and emitting
take the packet's source and destination addresses.

Neighbor Solicitation and Advertisement are views on top (:class:`NeighborSolicit`,
:class:`NeighborAdvert`): ``from_icmp`` / ``to_icmp`` translate. RFC 4861 §7.1 also requires a
hop limit of 255 on ND packets; that lives in the IPv6 header, so the caller checks it
(:data:`ND_HOP_LIMIT`) and the frame builders here set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address

from atenet.errors import DecodeError
from atenet.wire.checksum import pseudo_header, verify
from atenet.wire.ethernet import ETHERTYPE_IPV6, ethernet_frame
from atenet.wire.icmp import join_header, split_header
from atenet.wire.ipv6 import (
    ALL_NODES,
    NEXT_HEADER_ICMPV6,
    Ipv6Repr,
    multicast_mac_v6,
    solicited_node,
)

__all__ = [
    "ICMPV6_DEST_UNREACHABLE",
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "ICMPV6_NEIGHBOR_ADVERT",
    "ICMPV6_NEIGHBOR_SOLICIT",
    "ICMPV6_PACKET_TOO_BIG",
    "ICMPV6_ROUTER_ADVERT",
    "ICMPV6_ROUTER_SOLICIT",
    "ICMPV6_TIME_EXCEEDED",
    "ND_HOP_LIMIT",
    "Icmpv6Repr",
    "NeighborAdvert",
    "NeighborSolicit",
    "icmpv6_echo_reply",
    "icmpv6_echo_request",
    "icmpv6_frame",
    "nd_options",
    "neighbor_advertisement",
    "neighbor_solicitation",
]

ICMPV6_DEST_UNREACHABLE = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ROUTER_SOLICIT = 133
ICMPV6_ROUTER_ADVERT = 134
ICMPV6_NEIGHBOR_SOLICIT = 135
ICMPV6_NEIGHBOR_ADVERT = 136

ND_HOP_LIMIT = 255
"""Hop limit of every ND packet; a receiver drops ND with any other value (RFC 4861 §7.1)."""

_OPT_SOURCE_LLADDR = 1
_OPT_TARGET_LLADDR = 2
_FLAG_ROUTER = 1 << 31
_FLAG_SOLICITED = 1 << 30
_FLAG_OVERRIDE = 1 << 29
_UNSPECIFIED = IPv6Address("::")


@dataclass(slots=True)
class Icmpv6Repr:
    """One ICMPv6 message (the upper-layer bytes after any extension headers)."""

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    @classmethod
    def parse(
        cls,
        buf: bytes,
        src: IPv6Address,
        dst: IPv6Address,
        *,
        verify_checksum: bool = True,
    ) -> Icmpv6Repr:
        """Decode a message sent from ``src`` to ``dst``; raises :class:`DecodeError` when it
        is shorter than 8 bytes or its checksum is wrong."""
        kind, code, rest, payload = split_header(buf, "ICMPv6")
        if verify_checksum and not verify(
            buf, pseudo_header(src, dst, NEXT_HEADER_ICMPV6, len(buf))
        ):
            raise DecodeError("ICMPv6 checksum is wrong")
        return cls(kind, code, rest, payload)

    def emit(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        """Encode with the checksum over the pseudo header of ``src`` → ``dst``."""
        length = 8 + len(self.payload)
        initial = pseudo_header(src, dst, NEXT_HEADER_ICMPV6, length)
        return join_header(self.type, self.code, self.rest, self.payload, initial)

    @classmethod
    def echo_request(cls, ident: int, seq: int, payload: bytes = b"") -> Icmpv6Repr:
        """An echo request (``ping -6``)."""
        return cls(ICMPV6_ECHO_REQUEST, 0, (ident << 16) | seq, payload)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, payload: bytes = b"") -> Icmpv6Repr:
        """An echo reply, echoing the request's identifier, sequence and data."""
        return cls(ICMPV6_ECHO_REPLY, 0, (ident << 16) | seq, payload)

    @property
    def ident(self) -> int:
        """Echo identifier (the high half of ``rest``)."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number (the low half of ``rest``)."""
        return self.rest & 0xFFFF


# --- Neighbor Discovery ----------------------------------------------------------------------


def _nd_options(buf: bytes) -> dict[int, bytes]:
    """Type → value of the ND options in ``buf`` (RFC 4861 §4.6); the first of a type wins.

    A zero length is malformed (RFC 4861 says to discard such a packet), as is an option that
    runs past the end.
    """
    options: dict[int, bytes] = {}
    offset = 0
    while offset < len(buf):
        if offset + 2 > len(buf):
            raise DecodeError("ND option truncated")
        kind, units = buf[offset], buf[offset + 1]
        if units == 0:
            raise DecodeError("ND option with length 0")
        end = offset + units * 8
        if end > len(buf):
            raise DecodeError(f"ND option {kind} of {units * 8} bytes runs past the message")
        options.setdefault(kind, bytes(buf[offset + 2 : end]))
        offset = end
    return options


def nd_options(buf: bytes) -> dict[int, bytes]:
    """Public form of the ND option walk, for messages this module has no view of (RS, RA)."""
    return _nd_options(buf)


def _lladdr_option(kind: int, mac: bytes) -> bytes:
    """A link-layer address option for Ethernet: 8 bytes, no padding needed."""
    return bytes((kind, 1)) + mac


def _lladdr(options: dict[int, bytes], kind: int) -> bytes | None:
    value = options.get(kind)
    if value is None:
        return None
    if len(value) != 6:
        raise DecodeError(f"ND link-layer address option of {len(value)} bytes (want 6)")
    return value


def _nd_target(icmp: Icmpv6Repr, kind: int, name: str) -> IPv6Address:
    """Shared checks of NS and NA: type, code 0, room for a target, target not multicast."""
    if icmp.type != kind:
        raise DecodeError(f"not a {name}: ICMPv6 type {icmp.type}")
    if icmp.code != 0:
        raise DecodeError(f"{name} with code {icmp.code} (must be 0)")
    if len(icmp.payload) < 16:
        raise DecodeError(f"{name} too short: no room for the target address")
    target = IPv6Address(icmp.payload[:16])
    if target.is_multicast:
        raise DecodeError(f"{name} for a multicast target {target}")
    return target


@dataclass(slots=True)
class NeighborSolicit:
    """Who has ``target``? ``source_mac`` is omitted in duplicate address detection."""

    target: IPv6Address
    source_mac: bytes | None = None

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> NeighborSolicit:
        """Interpret a parsed ICMPv6 message; :class:`DecodeError` if it is not a valid NS."""
        target = _nd_target(icmp, ICMPV6_NEIGHBOR_SOLICIT, "neighbor solicitation")
        options = _nd_options(icmp.payload[16:])
        return cls(target, _lladdr(options, _OPT_SOURCE_LLADDR))

    def to_icmp(self) -> Icmpv6Repr:
        """The ICMPv6 message carrying this solicitation."""
        body = self.target.packed
        if self.source_mac is not None:
            body += _lladdr_option(_OPT_SOURCE_LLADDR, self.source_mac)
        return Icmpv6Repr(ICMPV6_NEIGHBOR_SOLICIT, 0, 0, body)


@dataclass(slots=True)
class NeighborAdvert:
    """``target`` is at ``target_mac``; flags as in RFC 4861 §4.4."""

    target: IPv6Address
    target_mac: bytes | None = None
    router: bool = False
    solicited: bool = False
    override: bool = True

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> NeighborAdvert:
        """Interpret a parsed ICMPv6 message; :class:`DecodeError` if it is not a valid NA."""
        target = _nd_target(icmp, ICMPV6_NEIGHBOR_ADVERT, "neighbor advertisement")
        options = _nd_options(icmp.payload[16:])
        return cls(
            target,
            _lladdr(options, _OPT_TARGET_LLADDR),
            bool(icmp.rest & _FLAG_ROUTER),
            bool(icmp.rest & _FLAG_SOLICITED),
            bool(icmp.rest & _FLAG_OVERRIDE),
        )

    def to_icmp(self) -> Icmpv6Repr:
        """The ICMPv6 message carrying this advertisement."""
        flags = (
            (_FLAG_ROUTER if self.router else 0)
            | (_FLAG_SOLICITED if self.solicited else 0)
            | (_FLAG_OVERRIDE if self.override else 0)
        )
        body = self.target.packed
        if self.target_mac is not None:
            body += _lladdr_option(_OPT_TARGET_LLADDR, self.target_mac)
        return Icmpv6Repr(ICMPV6_NEIGHBOR_ADVERT, 0, flags, body)


# --- whole frames ----------------------------------------------------------------------------


def icmpv6_frame(
    message: Icmpv6Repr,
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv6Address,
    dst_ip: IPv6Address,
    hop_limit: int,
) -> bytes:
    """``message`` in an IPv6 packet (checksum over the pseudo-header) in an Ethernet frame."""
    packet = Ipv6Repr(
        src_ip, dst_ip, NEXT_HEADER_ICMPV6, message.emit(src_ip, dst_ip), hop_limit
    ).emit()
    return ethernet_frame(dst_mac, src_mac, ETHERTYPE_IPV6, packet)


def icmpv6_echo_request(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv6Address,
    dst_ip: IPv6Address,
    ident: int,
    seq: int,
    payload: bytes = b"",
    hop_limit: int = 64,
) -> bytes:
    """A whole Ethernet frame carrying an ICMPv6 ping."""
    message = Icmpv6Repr.echo_request(ident, seq, payload)
    return icmpv6_frame(message, src_mac, dst_mac, src_ip, dst_ip, hop_limit)


def icmpv6_echo_reply(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv6Address,
    dst_ip: IPv6Address,
    ident: int,
    seq: int,
    payload: bytes = b"",
    hop_limit: int = 64,
) -> bytes:
    """A whole Ethernet frame answering an ICMPv6 ping: same ``ident``, ``seq``, ``payload``."""
    message = Icmpv6Repr.echo_reply(ident, seq, payload)
    return icmpv6_frame(message, src_mac, dst_mac, src_ip, dst_ip, hop_limit)


def neighbor_solicitation(
    src_mac: bytes,
    src_ip: IPv6Address,
    target_ip: IPv6Address,
    dst_mac: bytes | None = None,
    dst_ip: IPv6Address | None = None,
) -> bytes:
    """A frame asking who has ``target_ip``.

    By default it goes to the target's solicited-node group (address resolution); pass a
    unicast ``dst_mac``/``dst_ip`` to probe reachability of a cached neighbour. With
    ``src_ip`` ``::`` it is a duplicate-address-detection probe and carries no source MAC
    option, as RFC 4861 §4.3 requires.
    """
    if dst_ip is None:
        dst_ip = solicited_node(target_ip)
    if dst_mac is None:
        if not dst_ip.is_multicast:
            raise ValueError(f"unicast destination {dst_ip} needs its dst_mac")
        dst_mac = multicast_mac_v6(dst_ip)
    source_mac = None if src_ip == _UNSPECIFIED else src_mac
    message = NeighborSolicit(target_ip, source_mac).to_icmp()
    return icmpv6_frame(message, src_mac, dst_mac, src_ip, dst_ip, ND_HOP_LIMIT)


def neighbor_advertisement(
    src_mac: bytes,
    target_ip: IPv6Address,
    dst_mac: bytes | None = None,
    dst_ip: IPv6Address | None = None,
    *,
    router: bool = False,
    solicited: bool = True,
    override: bool = True,
) -> bytes:
    """A frame telling that ``target_ip`` is at ``src_mac``, sent from ``target_ip``.

    As an answer, pass the soliciting host's ``dst_mac``/``dst_ip``. With neither, it is an
    unsolicited advertisement to all nodes (ff02::1) and ``solicited`` is forced to false
    (RFC 4861 §7.2.6).
    """
    if dst_ip is None:
        dst_ip = ALL_NODES
        solicited = False
    if dst_mac is None:
        if not dst_ip.is_multicast:
            raise ValueError(f"unicast destination {dst_ip} needs its dst_mac")
        dst_mac = multicast_mac_v6(dst_ip)
    message = NeighborAdvert(target_ip, src_mac, router, solicited, override).to_icmp()
    return icmpv6_frame(message, src_mac, dst_mac, target_ip, dst_ip, ND_HOP_LIMIT)
