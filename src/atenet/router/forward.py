"""Router primitives: TTL / hop-limit decrement, ICMP and ICMPv6 errors, and their rate limit.

These are the pieces a router needs on every forwarded packet, kept free of any routing table
so the later inter-network routing and NAT can reuse them as they are:

* :func:`decrement_ttl` lowers an IPv4 TTL and patches the header checksum incrementally
  (RFC 1624 eqn. 3) instead of re-summing the header: two 16-bit additions, whatever the
  header length, and a packet whose checksum was already wrong stays wrong (a router must not
  launder a corrupt header into a valid one);
* :func:`decrement_hop_limit` does the same for IPv6, which has no header checksum;
* :func:`fragment_v4` cuts an IPv4 packet without DF for a smaller next-hop MTU (RFC 791),
  the one case where an IPv4 router must not just drop a too-big packet;
* the ``icmp_*`` / ``icmpv6_*`` builders make the error messages a router must send, quoting
  the offending packet the way the RFCs ask;
* :func:`may_send_error_v4` / :func:`may_send_error_v6` are the "never send an error about…"
  rules of RFC 1812 §4.3.2.7 and RFC 4443 §2.4 (e): no error about an error, about a packet
  sent to a broadcast or multicast address, about a packet whose source is not one unicast
  host, nor about a non-first fragment — each of these would let one packet trigger many
  answers or an error storm;
* :class:`~atenet.ratelimit.TokenBucket` caps how many errors leave per second (RFC 1812
  §4.3.2.8, RFC 4443 §2.4 (f)), so a flood of expiring packets cannot be turned into a flood of
  ICMP.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError
from atenet.wire.checksum import checksum
from atenet.wire.icmp import ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED, IcmpRepr
from atenet.wire.icmpv6 import (
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_PACKET_TOO_BIG,
    ICMPV6_TIME_EXCEEDED,
    Icmpv6Repr,
)
from atenet.wire.ipv4 import IPV4_HEADER_LEN, PROTO_ICMP, Ipv4Repr
from atenet.wire.ipv6 import (
    IPV6_HEADER_LEN,
    NEXT_HEADER_FRAGMENT,
    NEXT_HEADER_ICMPV6,
    Ipv6Repr,
    skip_extension_headers,
)

__all__ = [
    "ERROR_BURST",
    "ERROR_RATE",
    "ICMPV6_ADDR_UNREACHABLE",
    "ICMPV6_MIN_MTU",
    "ICMPV6_NO_ROUTE",
    "ICMP_FRAG_NEEDED",
    "ICMP_HOST_UNREACHABLE",
    "ICMP_NET_UNREACHABLE",
    "decrement_hop_limit",
    "decrement_ttl",
    "fragment_v4",
    "icmp_dest_unreachable",
    "icmp_time_exceeded",
    "icmpv6_dest_unreachable",
    "icmpv6_packet_too_big",
    "icmpv6_time_exceeded",
    "is_unicast_v4",
    "may_send_error_v4",
    "may_send_error_v6",
]

ICMP_NET_UNREACHABLE = 0
ICMP_HOST_UNREACHABLE = 1
ICMP_FRAG_NEEDED = 4
"""Destination-unreachable codes (RFC 792; code 4 carries the next-hop MTU, RFC 1191)."""

ICMPV6_NO_ROUTE = 0
ICMPV6_ADDR_UNREACHABLE = 3
"""Destination-unreachable codes of ICMPv6 (RFC 4443 §3.1)."""

ICMPV6_MIN_MTU = 1280
"""An ICMPv6 error must fit the IPv6 minimum MTU (RFC 4443 §2.4 (c))."""

ERROR_RATE = 100.0
ERROR_BURST = 50
"""Default ICMP error budget per gateway: 100 errors/s sustained, bursts of 50."""

_ICMP_ERROR_TYPES_V4 = frozenset((3, 4, 5, 11, 12))
"""Destination unreachable, source quench, redirect, time exceeded, parameter problem."""

_V4_LIMITED = IPv4Address("255.255.255.255")


# --- TTL and hop limit ------------------------------------------------------------------------


def decrement_ttl(packet: bytes | bytearray) -> bytes:
    """``packet`` with its TTL lowered by one and the header checksum updated (RFC 1624).

    The TTL shares a 16-bit word with the protocol number, so the word changes from
    ``m = TTL<<8 | proto`` to ``m' = m - 0x100`` and the new checksum is
    ``HC' = ~(~HC + ~m + m')`` in one's-complement arithmetic (eqn. 3, which unlike eqn. 2
    never produces the ``-0`` checksum 0x0000 that a full recomputation cannot produce).

    The caller has checked the packet is IPv4 with TTL >= 2: a router never forwards a
    packet whose TTL reaches 0, it answers time-exceeded instead.
    """
    ttl = packet[8]
    if ttl < 2:
        raise ValueError(f"TTL {ttl} cannot be forwarded: answer time-exceeded instead")
    old_word = (ttl << 8) | packet[9]
    new_word = old_word - 0x100
    old_csum = (packet[10] << 8) | packet[11]
    total = (~old_csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    new_csum = ~total & 0xFFFF
    out = bytearray(packet)
    out[8] = ttl - 1
    out[10] = new_csum >> 8
    out[11] = new_csum & 0xFF
    return bytes(out)


def decrement_hop_limit(packet: bytes | bytearray) -> bytes:
    """``packet`` (IPv6) with its hop limit lowered by one; IPv6 has no header checksum.

    Like :func:`decrement_ttl`, the caller has checked the hop limit is at least 2.
    """
    hop_limit = packet[7]
    if hop_limit < 2:
        raise ValueError(f"hop limit {hop_limit} cannot be forwarded: answer time-exceeded")
    out = bytearray(packet)
    out[7] = hop_limit - 1
    return bytes(out)


def _copied_options(options: bytes) -> bytes:
    """The options with the "copied" flag (RFC 791: security, source routes), for the
    fragments after the first, padded to a multiple of 4. A malformed option list stops the
    walk: what came before it is kept, the rest is not repeated."""
    out = bytearray()
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation, never copied
            at += 1
            continue
        if at + 1 >= len(options) or options[at + 1] < 2 or at + options[at + 1] > len(options):
            break
        length = options[at + 1]
        if kind & 0x80:
            out += options[at : at + length]
        at += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_v4(packet: bytes | bytearray, mtu: int) -> list[bytes]:
    """Cut ``packet`` (IPv4, DF clear, header already valid) into fragments of at most ``mtu``
    bytes, each with a fresh header checksum (RFC 791 §3.2, RFC 1812 §5.2.6).

    The first fragment keeps every option, the others only the copied ones; offsets and MF
    continue those of ``packet`` when it is itself a fragment, so fragmenting a fragment gives
    pieces the receiver reassembles like any others. A packet that fits is returned as it is.
    """
    header_len = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if total <= mtu:
        return [bytes(packet[:total])]
    payload = bytes(packet[header_len:total])
    flags = (packet[6] << 8) | packet[7]
    if flags & 0x4000:
        raise ValueError("packet has DF set: answer fragmentation-needed instead")
    base_offset, more = flags & 0x1FFF, flags & 0x2000
    if base_offset * 8 + len(payload) > 0xFFFF:
        raise ValueError("fragment runs past the 65535-byte datagram limit")
    first = bytes(packet[:header_len])
    later = bytes(packet[:20]) + _copied_options(bytes(packet[20:header_len]))
    out: list[bytes] = []
    done = 0
    while done < len(payload):
        header = bytearray(first if not out else later)
        room = (mtu - len(header)) // 8 * 8
        if room <= 0:
            raise ValueError(f"MTU {mtu} leaves no room for data after a {len(header)}-byte header")
        piece = payload[done : done + room]
        last = done + len(piece) >= len(payload)
        header[0] = 0x40 | (len(header) >> 2)
        header[2:4] = (len(header) + len(piece)).to_bytes(2, "big")
        word = (0 if last and not more else 0x2000) | (base_offset + done // 8)
        header[6:8] = word.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = checksum(header).to_bytes(2, "big")
        out.append(bytes(header) + piece)
        done += len(piece)
    return out


# --- when an error may be sent ---------------------------------------------------------------


def is_unicast_v4(address: IPv4Address) -> bool:
    """True for an address that names one host: not 0.0.0.0, multicast, loopback, class E."""
    return not (
        address.is_unspecified
        or address.is_multicast
        or address.is_loopback
        or address == _V4_LIMITED
        or int(address) >= 0xF0000000  # class E (reserved) and the limited broadcast
    )


def may_send_error_v4(
    packet: Ipv4Repr, link_multicast: bool, directed_broadcasts: tuple[IPv4Address, ...] = ()
) -> bool:
    """RFC 1812 §4.3.2.7: may a router answer ``packet`` with an ICMP error?

    No when the packet is itself an ICMP error (errors about errors loop), when it was sent to
    a link-layer multicast/broadcast (``link_multicast``) or to an IP multicast, the limited
    broadcast or one of ``directed_broadcasts`` (one packet would draw one error per router),
    when its source is not a single unicast host (the error would go to nobody or to many), and
    when it is a fragment other than the first (only the first names the upper layer).
    """
    if link_multicast:
        return False
    dst = packet.dst
    if dst.is_multicast or dst == _V4_LIMITED or dst in directed_broadcasts:
        return False
    if not is_unicast_v4(packet.src):
        return False
    if packet.fragment_offset:
        return False
    return not (
        packet.protocol == PROTO_ICMP
        and packet.payload
        and packet.payload[0] in _ICMP_ERROR_TYPES_V4
    )


def may_send_error_v6(packet: Ipv6Repr, link_multicast: bool, kind: int) -> bool:
    """RFC 4443 §2.4 (e): may a router answer ``packet`` with an ICMPv6 error of type ``kind``?

    No about an ICMPv6 error (types < 128) or a redirect, nor about a packet whose source is not
    a unicast address (``::`` or multicast). A packet sent to an IPv6 multicast or a link-layer
    multicast/broadcast gets no error either, except Packet Too Big — which path MTU discovery
    for multicast needs — as the RFC allows.
    """
    src = packet.src
    if src.is_unspecified or src.is_multicast:
        return False
    if (link_multicast or packet.dst.is_multicast) and kind != ICMPV6_PACKET_TOO_BIG:
        return False
    try:
        proto, upper = skip_extension_headers(packet.next_header, packet.payload)
    except DecodeError:  # a broken extension chain: still not an ICMPv6 error
        return True
    if proto == NEXT_HEADER_FRAGMENT:
        # Only the first fragment (offset 0) names the upper layer; later ones get no error.
        return len(upper) >= 4 and ((upper[2] << 8) | upper[3]) & 0xFFF8 == 0
    if proto == NEXT_HEADER_ICMPV6 and upper:
        return upper[0] >= 128 and upper[0] != 137  # informational, and not a redirect
    return True


# --- error builders --------------------------------------------------------------------------


def _quote_v4(packet: bytes) -> bytes:
    """The offending packet's IP header and first 8 payload bytes (RFC 792)."""
    header_len = (packet[0] & 0x0F) * 4 if packet else IPV4_HEADER_LEN
    return bytes(packet[: header_len + 8])


def _icmp_error_v4(
    kind: int, code: int, rest: int, offending: bytes, src: IPv4Address, dst: IPv4Address
) -> bytes:
    message = IcmpRepr(kind, code, rest, _quote_v4(offending)).emit()
    return Ipv4Repr(src, dst, PROTO_ICMP, message, ttl=64).emit()


def icmp_time_exceeded(offending: bytes, src: IPv4Address) -> bytes:
    """An IPv4 packet from router address ``src`` telling the sender of ``offending`` (a raw
    IPv4 packet) that its TTL ran out in transit (type 11, code 0)."""
    return _icmp_error_v4(ICMP_TIME_EXCEEDED, 0, 0, offending, src, _src_v4(offending))


def icmp_dest_unreachable(
    offending: bytes, src: IPv4Address, code: int = ICMP_NET_UNREACHABLE, mtu: int = 0
) -> bytes:
    """Destination unreachable (type 3) about ``offending``: net (0), host (1), or
    fragmentation needed (4) with the next-hop ``mtu`` in the low 16 bits (RFC 1191)."""
    rest = mtu & 0xFFFF if code == ICMP_FRAG_NEEDED else 0
    return _icmp_error_v4(ICMP_DEST_UNREACHABLE, code, rest, offending, src, _src_v4(offending))


def _src_v4(packet: bytes) -> IPv4Address:
    return IPv4Address(bytes(packet[12:16]))


def _icmpv6_error(kind: int, code: int, rest: int, offending: bytes, src: IPv6Address) -> bytes:
    dst = IPv6Address(bytes(offending[8:24]))
    room = ICMPV6_MIN_MTU - IPV6_HEADER_LEN - 8
    message = Icmpv6Repr(kind, code, rest, bytes(offending[:room])).emit(src, dst)
    return Ipv6Repr(src, dst, NEXT_HEADER_ICMPV6, message, 64).emit()


def icmpv6_time_exceeded(offending: bytes, src: IPv6Address) -> bytes:
    """Time exceeded (type 3, code 0: hop limit) about ``offending``, a raw IPv6 packet,
    quoting as much of it as fits in 1280 bytes (RFC 4443 §3.3)."""
    return _icmpv6_error(ICMPV6_TIME_EXCEEDED, 0, 0, offending, src)


def icmpv6_packet_too_big(offending: bytes, src: IPv6Address, mtu: int) -> bytes:
    """Packet Too Big (type 2) with the next-hop ``mtu`` (RFC 4443 §3.2)."""
    return _icmpv6_error(ICMPV6_PACKET_TOO_BIG, 0, mtu, offending, src)


def icmpv6_dest_unreachable(
    offending: bytes, src: IPv6Address, code: int = ICMPV6_NO_ROUTE
) -> bytes:
    """Destination unreachable (type 1): no route (0) or address unreachable (3)."""
    return _icmpv6_error(ICMPV6_DEST_UNREACHABLE, code, 0, offending, src)
