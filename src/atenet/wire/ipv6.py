"""IPv6 headers (RFC 8200) and the walk over extension headers to the upper layer.

:class:`Ipv6Repr` keeps ``next_header`` and ``payload`` as on the wire (extension headers
included), so ``parse(emit(x)) == x`` and nothing is lost when a packet is forwarded.
:meth:`Ipv6Repr.upper_layer` skips Hop-by-Hop, Routing and Destination Options headers — MLD
reports, for one, always arrive behind a Hop-by-Hop Router Alert — and stops at a Fragment
header, since reassembly is the stack's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from atenet.errors import DecodeError

__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "IPV6_HEADER_LEN",
    "NEXT_HEADER_DEST_OPTS",
    "NEXT_HEADER_FRAGMENT",
    "NEXT_HEADER_HOP_BY_HOP",
    "NEXT_HEADER_ICMPV6",
    "NEXT_HEADER_NONE",
    "NEXT_HEADER_ROUTING",
    "NEXT_HEADER_TCP",
    "NEXT_HEADER_UDP",
    "Ipv6Repr",
    "multicast_mac_v6",
    "skip_extension_headers",
    "solicited_node",
]

IPV6_HEADER_LEN = 40

NEXT_HEADER_HOP_BY_HOP = 0
NEXT_HEADER_TCP = 6
NEXT_HEADER_UDP = 17
NEXT_HEADER_ROUTING = 43
NEXT_HEADER_FRAGMENT = 44
NEXT_HEADER_ICMPV6 = 58
NEXT_HEADER_NONE = 59
NEXT_HEADER_DEST_OPTS = 60

ALL_NODES = IPv6Address("ff02::1")
ALL_ROUTERS = IPv6Address("ff02::2")

_HEADER = struct.Struct("!IHBB16s16s")
_SKIPPABLE = frozenset((NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ROUTING, NEXT_HEADER_DEST_OPTS))
_SOLICITED_NODE_PREFIX = int(IPv6Address("ff02::1:ff00:0"))


@dataclass(slots=True)
class Ipv6Repr:
    """One IPv6 packet; ``payload`` starts with the header named by ``next_header``."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload: bytes = b""
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> Ipv6Repr:
        """Decode a packet; raises :class:`DecodeError` for a wrong version or a truncation.

        Bytes after ``payload length`` (Ethernet padding) are dropped. Jumbograms (payload
        length 0 with a Jumbo option) are not supported and decode as an empty payload.
        """
        if len(buf) < IPV6_HEADER_LEN:
            raise DecodeError(f"IPv6 packet too short: {len(buf)} bytes, header needs 40")
        word, plen, nh, hlim, src, dst = _HEADER.unpack_from(buf)
        if word >> 28 != 6:
            raise DecodeError(f"not an IPv6 packet: version field is {word >> 28}")
        if IPV6_HEADER_LEN + plen > len(buf):
            raise DecodeError(
                f"IPv6 packet truncated: payload length {plen}, got {len(buf) - 40} bytes"
            )
        return cls(
            IPv6Address(src),
            IPv6Address(dst),
            nh,
            bytes(buf[IPV6_HEADER_LEN : IPV6_HEADER_LEN + plen]),
            hlim,
            (word >> 20) & 0xFF,
            word & 0xFFFFF,
        )

    def emit(self) -> bytes:
        """Encode header and payload."""
        if len(self.payload) > 0xFFFF:
            raise ValueError(f"IPv6 payload of {len(self.payload)} bytes needs a jumbogram")
        word = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return (
            _HEADER.pack(
                word,
                len(self.payload),
                self.next_header,
                self.hop_limit,
                self.src.packed,
                self.dst.packed,
            )
            + self.payload
        )

    def upper_layer(self) -> tuple[int, bytes]:
        """(protocol, bytes) after the extension headers; see :func:`skip_extension_headers`."""
        return skip_extension_headers(self.next_header, self.payload)


def skip_extension_headers(next_header: int, payload: bytes) -> tuple[int, bytes]:
    """Follow the next-header chain past Hop-by-Hop, Routing and Destination Options headers.

    Returns the first other protocol number and the bytes that start with it: e.g.
    ``(58, icmpv6_message)``, or ``(44, fragment_header...)`` for a fragment, or
    ``(59, b"")`` for No Next Header. Raises :class:`DecodeError` when an extension header
    runs past the end of the packet.
    """
    offset = 0
    end = len(payload)
    while next_header in _SKIPPABLE:
        if offset + 2 > end:
            raise DecodeError(f"IPv6 extension header {next_header} truncated")
        length = (payload[offset + 1] + 1) * 8
        if offset + length > end:
            raise DecodeError(
                f"IPv6 extension header {next_header} of {length} bytes runs past the packet"
            )
        next_header = payload[offset]
        offset += length
    if next_header == NEXT_HEADER_NONE:
        return next_header, b""
    return next_header, payload[offset:]


def solicited_node(address: IPv6Address) -> IPv6Address:
    """The solicited-node multicast group of ``address`` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX."""
    return IPv6Address(_SOLICITED_NODE_PREFIX | (int(address) & 0xFFFFFF))


def multicast_mac_v6(group: IPv6Address) -> bytes:
    """The Ethernet address of an IPv6 multicast group (RFC 2464 §7): 33:33 + low 32 bits."""
    return b"\x33\x33" + group.packed[12:16]
