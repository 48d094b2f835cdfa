"""ARP for IPv4 over Ethernet (RFC 826), plus the frames a gateway and tests need.

Only hardware type 1 (Ethernet) with protocol type 0x0800 (IPv4) is decoded: that is the only
combination on a virtual Ethernet carrying IPv4, and anything else is rejected with a
:class:`DecodeError` rather than half-understood. Bytes after the 28-byte body (Ethernet
padding to 60 bytes) are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from atenet.errors import DecodeError
from atenet.wire.ethernet import BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, ethernet_frame

__all__ = [
    "ARP_LEN",
    "ARP_REPLY",
    "ARP_REQUEST",
    "ArpRepr",
    "arp_reply",
    "arp_request",
    "gratuitous_arp",
]

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28
"""Length of an Ethernet/IPv4 ARP body."""

_HTYPE_ETHERNET = 1
_ZERO_MAC = b"\x00" * 6
_FIXED = struct.pack("!HHBB", _HTYPE_ETHERNET, ETHERTYPE_IPV4, 6, 4)


@dataclass(slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP packet (the payload of an ethertype 0x0806 frame)."""

    operation: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    @classmethod
    def parse(cls, buf: bytes) -> ArpRepr:
        """Decode an ARP body; raises :class:`DecodeError` when truncated or not Ethernet/IPv4."""
        if len(buf) < ARP_LEN:
            raise DecodeError(f"ARP packet too short: {len(buf)} bytes, need {ARP_LEN}")
        if buf[0:6] != _FIXED:
            htype, ptype, hlen, plen = struct.unpack_from("!HHBB", buf)
            raise DecodeError(
                f"unsupported ARP: hardware type {htype} / protocol 0x{ptype:04x} / "
                f"lengths {hlen},{plen} (only Ethernet/IPv4 is handled)"
            )
        operation = (buf[6] << 8) | buf[7]
        return cls(
            operation,
            bytes(buf[8:14]),
            IPv4Address(bytes(buf[14:18])),
            bytes(buf[18:24]),
            IPv4Address(bytes(buf[24:28])),
        )

    def emit(self) -> bytes:
        """Encode the 28-byte ARP body."""
        if len(self.sender_mac) != 6 or len(self.target_mac) != 6:
            raise ValueError("ARP hardware addresses must be 6 bytes")
        return b"".join(
            (
                _FIXED,
                self.operation.to_bytes(2, "big"),
                self.sender_mac,
                self.sender_ip.packed,
                self.target_mac,
                self.target_ip.packed,
            )
        )


def arp_request(src_mac: bytes, src_ip: IPv4Address, target_ip: IPv4Address) -> bytes:
    """A broadcast frame asking who has ``target_ip``; the target MAC field is all zeros."""
    body = ArpRepr(ARP_REQUEST, src_mac, src_ip, _ZERO_MAC, target_ip).emit()
    return ethernet_frame(BROADCAST_MAC, src_mac, ETHERTYPE_ARP, body)


def arp_reply(src_mac: bytes, src_ip: IPv4Address, dst_mac: bytes, dst_ip: IPv4Address) -> bytes:
    """A unicast frame telling ``dst_mac``/``dst_ip`` that ``src_ip`` is at ``src_mac``."""
    body = ArpRepr(ARP_REPLY, src_mac, src_ip, dst_mac, dst_ip).emit()
    return ethernet_frame(dst_mac, src_mac, ETHERTYPE_ARP, body)


def gratuitous_arp(mac: bytes, ip: IPv4Address) -> bytes:
    """An ARP announcement (RFC 5227 §2.3): a broadcast request with sender IP = target IP.

    Neighbours refresh their caches and switches learn ``mac``; it is also what ``tok`` can send
    as its keep-alive. The request form is used (not a reply) because RFC 5227 recommends it.
    """
    body = ArpRepr(ARP_REQUEST, mac, ip, _ZERO_MAC, ip).emit()
    return ethernet_frame(BROADCAST_MAC, mac, ETHERTYPE_ARP, body)
