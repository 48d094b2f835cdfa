"""The few DNS messages a mio session needs for ``RESOLVE``: an A/AAAA query and its answer.

The node resolves names for its programs through the network's own DNS servers, as a host on
that network would (a UDP query from the session's address, through the stack), so a program
sees what the network sees. Only what that takes is here (RFC 1035 §4): build one question,
read the A and AAAA records of an answer. Anything malformed raises DecodeError — a DNS reply
is input from the network.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError

__all__ = ["QTYPE_A", "QTYPE_AAAA", "answer_addresses", "encode_name", "query"]

QTYPE_A = 1
QTYPE_AAAA = 28
CLASS_IN = 1
RCODE_NXDOMAIN = 3
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


def encode_name(name: str) -> bytes:
    """``name`` in wire form; ValueError for names DNS cannot carry."""
    try:
        raw = name.rstrip(".").encode("idna")
    except UnicodeError:
        raise ValueError(f"{name!r} is not a valid host name") from None
    labels = raw.split(b".")
    if not raw or any(not 0 < len(label) <= 63 for label in labels) or len(raw) > 253:
        raise ValueError(f"{name!r} is not a valid host name")
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def query(txid: int, wire_name: bytes, qtype: int) -> bytes:
    """One recursive question for ``wire_name`` (from :func:`encode_name`)."""
    return _HEADER.pack(txid, 0x0100, 1, 0, 0, 0) + wire_name + struct.pack("!HH", qtype, CLASS_IN)


def _skip_name(data: bytes, at: int) -> int:
    for _ in range(128):
        if at >= len(data):
            raise DecodeError("DNS name runs past the message")
        n = data[at]
        if n == 0:
            return at + 1
        if n & 0xC0 == 0xC0:
            if at + 2 > len(data):
                raise DecodeError("DNS pointer runs past the message")
            return at + 2
        if n & 0xC0:
            raise DecodeError("DNS label with reserved bits")
        at += 1 + n
    raise DecodeError("DNS name with too many labels")


def answer_addresses(data: bytes, txid: int) -> tuple[int, list[IPv4Address | IPv6Address]]:
    """The rcode and the A/AAAA addresses of a response to query ``txid``."""
    if len(data) < _HEADER.size:
        raise DecodeError("DNS message shorter than its header")
    ident, flags, qd, an, _ns, _ar = _HEADER.unpack_from(data)
    if ident != txid or not flags & 0x8000:
        raise DecodeError("not an answer to our query")
    at = _HEADER.size
    for _ in range(qd):
        at = _skip_name(data, at) + 4
    found: list[IPv4Address | IPv6Address] = []
    for _ in range(min(an, 256)):
        at = _skip_name(data, at)
        if at + _RR.size > len(data):
            raise DecodeError("DNS record runs past the message")
        rtype, rclass, _ttl, rdlen = _RR.unpack_from(data, at)
        at += _RR.size
        rdata = data[at : at + rdlen]
        if len(rdata) != rdlen:
            raise DecodeError("DNS record data runs past the message")
        at += rdlen
        if rclass == CLASS_IN and rtype == QTYPE_A and rdlen == 4:
            found.append(IPv4Address(rdata))
        elif rclass == CLASS_IN and rtype == QTYPE_AAAA and rdlen == 16:
            found.append(IPv6Address(rdata))
    return flags & 0x000F, found
