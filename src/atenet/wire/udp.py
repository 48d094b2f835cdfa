"""UDP datagrams (RFC 768) with the pseudo-header checksum of IPv4 or IPv6 (RFC 8200 §8.1).

The checksum needs the enclosing IP addresses, so :meth:`UdpRepr.emit` takes them and
:meth:`UdpRepr.parse` verifies against them when given. A zero checksum means "none" over
IPv4 and is accepted; over IPv6 it is forbidden and rejected. A computed checksum of 0 is sent
as 0xFFFF, as both RFCs require.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError
from atenet.wire.checksum import checksum, pseudo_header, verify

__all__ = ["UDP_HEADER_LEN", "UdpRepr"]

UDP_HEADER_LEN = 8
_PROTO_UDP = 17

IPAddress = IPv4Address | IPv6Address


@dataclass(slots=True)
class UdpRepr:
    """One UDP datagram; the length field is always recomputed from ``payload``."""

    src_port: int
    dst_port: int
    payload: bytes = b""

    @classmethod
    def parse(
        cls, buf: bytes, src: IPAddress | None = None, dst: IPAddress | None = None
    ) -> UdpRepr:
        """Decode a datagram; with ``src`` and ``dst`` also verify its checksum.

        Raises :class:`DecodeError` for a length field below 8 or beyond ``buf``, a wrong
        checksum, or a zero checksum over IPv6. Bytes after the length field's end are dropped.
        """
        if len(buf) < UDP_HEADER_LEN:
            raise DecodeError(f"UDP datagram too short: {len(buf)} bytes, header needs 8")
        length = (buf[4] << 8) | buf[5]
        if length < UDP_HEADER_LEN:
            raise DecodeError(f"UDP length field {length} is below the header size 8")
        if length > len(buf):
            raise DecodeError(f"UDP datagram truncated: length field {length}, got {len(buf)}")
        if src is not None and dst is not None:
            if buf[6] == 0 and buf[7] == 0:
                if src.version == 6:
                    raise DecodeError("UDP over IPv6 without a checksum (zero) is not allowed")
            elif not verify(buf[:length], pseudo_header(src, dst, _PROTO_UDP, length)):
                raise DecodeError("UDP checksum is wrong")
        return cls((buf[0] << 8) | buf[1], (buf[2] << 8) | buf[3], bytes(buf[8:length]))

    def emit(self, src: IPAddress, dst: IPAddress) -> bytes:
        """Encode with the checksum over the pseudo header of ``src`` → ``dst``."""
        length = UDP_HEADER_LEN + len(self.payload)
        if length > 0xFFFF:
            raise ValueError(f"UDP datagram of {length} bytes exceeds 65535")
        header = bytearray(8)
        header[0:2] = self.src_port.to_bytes(2, "big")
        header[2:4] = self.dst_port.to_bytes(2, "big")
        header[4:6] = length.to_bytes(2, "big")
        initial = pseudo_header(src, dst, _PROTO_UDP, length) + int.from_bytes(header, "big")
        csum = checksum(self.payload, initial) or 0xFFFF
        header[6:8] = csum.to_bytes(2, "big")
        return bytes(header) + self.payload
