"""ICMP for IPv4 (RFC 792): every message as type, code, 32-bit "rest of header" and payload.

One generic record covers all types because they share this shape: echo keeps identifier and
sequence number in ``rest`` (see :attr:`IcmpRepr.ident`, :attr:`IcmpRepr.seq`), destination
unreachable keeps the next-hop MTU there and the offending packet's header in ``payload``. The
checksum covers the ICMP message only (no pseudo header, unlike ICMPv6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from atenet.errors import DecodeError
from atenet.wire.checksum import checksum, verify
from atenet.wire.ethernet import ETHERTYPE_IPV4, ethernet_frame
from atenet.wire.ipv4 import PROTO_ICMP, Ipv4Repr

__all__ = [
    "ICMP_DEST_UNREACHABLE",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_HEADER_LEN",
    "ICMP_TIME_EXCEEDED",
    "IcmpRepr",
    "icmp_echo_reply",
    "icmp_echo_request",
]

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11

ICMP_HEADER_LEN = 8
"""Type, code, checksum, and the 4 bytes of "rest of header"."""

_HEADER = struct.Struct("!BBHI")


def split_header(buf: bytes, family: str) -> tuple[int, int, int, bytes]:
    """(type, code, rest, payload) of an ICMP or ICMPv6 message; shared by both families."""
    if len(buf) < ICMP_HEADER_LEN:
        raise DecodeError(f"{family} message too short: {len(buf)} bytes, header needs 8")
    kind, code, _csum, rest = _HEADER.unpack_from(buf)
    return kind, code, rest, bytes(buf[ICMP_HEADER_LEN:])


def join_header(kind: int, code: int, rest: int, payload: bytes, initial: int) -> bytes:
    """Encode an ICMP or ICMPv6 message; ``initial`` is the pseudo-header sum (0 for ICMPv4)."""
    header = bytearray(_HEADER.pack(kind, code, 0, rest))
    csum = checksum(payload, initial + int.from_bytes(header, "big"))
    header[2:4] = csum.to_bytes(2, "big")
    return bytes(header) + payload


@dataclass(slots=True)
class IcmpRepr:
    """One ICMPv4 message."""

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    @classmethod
    def parse(cls, buf: bytes, *, verify_checksum: bool = True) -> IcmpRepr:
        """Decode a message (the whole IPv4 payload); raises :class:`DecodeError` when it is
        shorter than 8 bytes or its checksum is wrong."""
        kind, code, rest, payload = split_header(buf, "ICMP")
        if verify_checksum and not verify(buf):
            raise DecodeError("ICMP checksum is wrong")
        return cls(kind, code, rest, payload)

    def emit(self) -> bytes:
        """Encode with a fresh checksum."""
        return join_header(self.type, self.code, self.rest, self.payload, 0)

    @classmethod
    def echo_request(cls, ident: int, seq: int, payload: bytes = b"") -> IcmpRepr:
        """An echo request (``ping``)."""
        return cls(ICMP_ECHO_REQUEST, 0, (ident << 16) | seq, payload)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, payload: bytes = b"") -> IcmpRepr:
        """An echo reply; a reply must echo the request's identifier, sequence and data."""
        return cls(ICMP_ECHO_REPLY, 0, (ident << 16) | seq, payload)

    @property
    def ident(self) -> int:
        """Echo identifier (the high half of ``rest``)."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number (the low half of ``rest``)."""
        return self.rest & 0xFFFF


def _echo_frame(
    message: IcmpRepr,
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv4Address,
    dst_ip: IPv4Address,
    ttl: int,
) -> bytes:
    packet = Ipv4Repr(src_ip, dst_ip, PROTO_ICMP, message.emit(), ttl=ttl).emit()
    return ethernet_frame(dst_mac, src_mac, ETHERTYPE_IPV4, packet)


def icmp_echo_request(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv4Address,
    dst_ip: IPv4Address,
    ident: int,
    seq: int,
    payload: bytes = b"",
    ttl: int = 64,
) -> bytes:
    """A whole Ethernet frame carrying a ping from ``src_ip`` to ``dst_ip``."""
    message = IcmpRepr.echo_request(ident, seq, payload)
    return _echo_frame(message, src_mac, dst_mac, src_ip, dst_ip, ttl)


def icmp_echo_reply(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv4Address,
    dst_ip: IPv4Address,
    ident: int,
    seq: int,
    payload: bytes = b"",
    ttl: int = 64,
) -> bytes:
    """A whole Ethernet frame answering a ping: same ``ident``, ``seq`` and ``payload``."""
    message = IcmpRepr.echo_reply(ident, seq, payload)
    return _echo_frame(message, src_mac, dst_mac, src_ip, dst_ip, ttl)
