"""IPv4 headers (RFC 791): parse with options and any IHL, emit with a fresh header checksum.

The repr keeps the header's options as raw bytes (we never need to interpret them, but a
router must not choke on them) and the payload exactly as the total-length field delimits it,
so Ethernet padding after a short packet is dropped. Fragments are decoded like any packet;
reassembly, when needed, belongs to the stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from atenet.errors import DecodeError
from atenet.wire.checksum import checksum, verify

__all__ = [
    "IPV4_HEADER_LEN",
    "PROTO_ICMP",
    "PROTO_IGMP",
    "PROTO_TCP",
    "PROTO_UDP",
    "Ipv4Repr",
    "multicast_mac_v4",
]

IPV4_HEADER_LEN = 20
"""Length of a header without options (IHL 5)."""

PROTO_ICMP = 1
PROTO_IGMP = 2
PROTO_TCP = 6
PROTO_UDP = 17

_HEADER = struct.Struct("!BBHHHBBH4s4s")
_MF = 0x2000
_DF = 0x4000


@dataclass(slots=True)
class Ipv4Repr:
    """One IPv4 packet.

    ``fragment_offset`` is in units of 8 bytes, as on the wire. ``options`` are the raw option
    bytes after the fixed header; their length must be a multiple of 4 (at most 40).
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    payload: bytes = b""
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0
    options: bytes = b""

    @classmethod
    def parse(cls, buf: bytes | memoryview, *, verify_checksum: bool = True) -> Ipv4Repr:
        """Decode a packet; raises :class:`DecodeError` for anything malformed.

        Rejected: a version other than 4, IHL < 5, a total length shorter than the header or
        longer than ``buf``, and (unless ``verify_checksum`` is false, e.g. for a packet whose
        checksum a NIC offload left unfilled) a wrong header checksum.
        """
        if len(buf) < IPV4_HEADER_LEN:
            raise DecodeError(f"IPv4 packet too short: {len(buf)} bytes, header needs 20")
        (vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst) = _HEADER.unpack_from(buf)
        version, ihl = vihl >> 4, vihl & 0x0F
        if version != 4:
            raise DecodeError(f"not an IPv4 packet: version field is {version}")
        header_len = ihl * 4
        if ihl < 5:
            raise DecodeError(f"IPv4 header length {header_len} is below the minimum 20")
        if total < header_len:
            raise DecodeError(
                f"IPv4 total length {total} is shorter than its header ({header_len})"
            )
        if total > len(buf):
            raise DecodeError(f"IPv4 packet truncated: total length {total}, got {len(buf)} bytes")
        if verify_checksum and not verify(buf[:header_len]):
            raise DecodeError("IPv4 header checksum is wrong")
        return cls(
            IPv4Address(src),
            IPv4Address(dst),
            proto,
            bytes(buf[header_len:total]),
            ttl,
            tos,
            ident,
            bool(frag & _DF),
            bool(frag & _MF),
            frag & 0x1FFF,
            bytes(buf[IPV4_HEADER_LEN:header_len]),
        )

    def header(self) -> bytes:
        """The encoded header alone (with checksum), for callers that send the payload apart."""
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        header_len = IPV4_HEADER_LEN + len(self.options)
        total = header_len + len(self.payload)
        if total > 0xFFFF:
            raise ValueError(f"IPv4 packet of {total} bytes exceeds 65535")
        frag = (
            (_DF if self.dont_fragment else 0)
            | (_MF if self.more_fragments else 0)
            | self.fragment_offset
        )
        raw = bytearray(
            _HEADER.pack(
                0x40 | (header_len >> 2),
                self.tos,
                total,
                self.ident,
                frag,
                self.ttl,
                self.protocol,
                0,
                self.src.packed,
                self.dst.packed,
            )
        )
        raw += self.options
        raw[10:12] = checksum(raw).to_bytes(2, "big")
        return bytes(raw)

    def emit(self) -> bytes:
        """Encode header and payload."""
        return self.header() + self.payload


def multicast_mac_v4(group: IPv4Address) -> bytes:
    """The Ethernet address of an IPv4 multicast group (RFC 1112 §6.4): 01:00:5e + low 23 bits."""
    low = int(group) & 0x7FFFFF
    return b"\x01\x00\x5e" + low.to_bytes(3, "big")
