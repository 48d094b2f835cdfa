"""DHCPv4 messages (RFC 2131, options RFC 2132): parse, build, and wrap in UDP/IPv4/Ethernet.

Only what a server on a virtual LAN needs. The fixed BOOTP header is decoded field by field;
``sname`` and ``file`` are ignored (we never boot anyone from them), so option overload (option
52, which moves options into those fields) is refused rather than half-understood. Options are
length-checked one by one, their number and the message size are bounded, and every malformed
input raises :class:`DecodeError` and nothing else: the server counts it as a drop.

A reply is built as a :class:`DhcpMessage` and emitted with :meth:`DhcpMessage.emit`; the
option builders below give the server's options their exact encodings.
:func:`dhcp_frame` wraps a payload in UDP/IPv4/Ethernet with correct checksums (reusing
:mod:`atenet.wire.udp` and :mod:`atenet.wire.ipv4`) and :func:`parse_dhcp_frame` takes a
client's frame apart (Ethernet → IPv4 → UDP 68 → 67 → DHCP).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from atenet.errors import DecodeError
from atenet.wire.ethernet import ETHERTYPE_IPV4, EthernetRepr, ethernet_frame
from atenet.wire.ipv4 import PROTO_UDP, Ipv4Repr
from atenet.wire.udp import UdpRepr

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "CLIENT_PORT",
    "DHCPACK",
    "DHCPDECLINE",
    "DHCPDISCOVER",
    "DHCPINFORM",
    "DHCPNAK",
    "DHCPOFFER",
    "DHCPRELEASE",
    "DHCPREQUEST",
    "FLAG_BROADCAST",
    "MAGIC_COOKIE",
    "MAX_MESSAGE_LEN",
    "MAX_OPTIONS",
    "SERVER_PORT",
    "ClientFrame",
    "DhcpMessage",
    "ReplyFrame",
    "dhcp_frame",
    "is_dhcp_reply_frame",
    "opt_addresses",
    "opt_classless_routes",
    "opt_u32",
    "parse_classless_routes",
    "parse_dhcp_frame",
    "parse_dhcp_reply",
]

BOOTREQUEST = 1
BOOTREPLY = 2
SERVER_PORT = 67
CLIENT_PORT = 68
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"

DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOST_NAME = 12
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_MESSAGE = 56
OPT_T1 = 58
OPT_T2 = 59
OPT_CLIENT_ID = 61
OPT_PARAM_REQUEST = 55
OPT_CLASSLESS_ROUTES = 121
OPT_END = 255

FIXED_LEN = 236
"""op … file: the BOOTP header before the magic cookie."""
MIN_MESSAGE_LEN = FIXED_LEN + 4
MAX_MESSAGE_LEN = 1500
"""Largest message accepted: one Ethernet MTU. RFC 2131 clients send at most 576 unless they
announce more (option 57), so anything larger is not a real client."""
MAX_OPTIONS = 64
"""Most options one message may carry; a real client sends about ten."""

_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s")  # up to chaddr (44 bytes); sname/file follow
_ZERO4 = IPv4Address(0)


@dataclass(slots=True)
class DhcpMessage:
    """One DHCP message: the BOOTP fields a server reads or writes, and the options.

    ``options`` maps an option code to its raw value; a code sent twice has its values
    concatenated (RFC 3396 "long options"). ``chaddr`` is the hardware address (``hlen``
    bytes, 6 for Ethernet).
    """

    op: int
    xid: int
    chaddr: bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO4
    yiaddr: IPv4Address = _ZERO4
    siaddr: IPv4Address = _ZERO4
    giaddr: IPv4Address = _ZERO4
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        """Option 53, or ``None`` for plain BOOTP (no type, or a value that is not one byte)."""
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None

    def ip_option(self, code: int) -> IPv4Address | None:
        """An option holding exactly one IPv4 address (50 requested IP, 54 server id)."""
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    @property
    def broadcast(self) -> bool:
        """The client asked for broadcast replies (it cannot receive unicast before config)."""
        return bool(self.flags & FLAG_BROADCAST)

    @classmethod
    def parse(cls, buf: bytes) -> DhcpMessage:
        """Decode a DHCP message; raises :class:`DecodeError` for anything malformed.

        Refused: shorter than header + cookie, longer than :data:`MAX_MESSAGE_LEN`, an op
        other than 1/2, a hardware type other than Ethernet (1) with length 6, a wrong magic
        cookie, an option running past the end, more than :data:`MAX_OPTIONS` options,
        option overload (52), and a message without an end option.
        """
        if len(buf) < MIN_MESSAGE_LEN:
            raise DecodeError(f"DHCP message too short: {len(buf)} bytes, need {MIN_MESSAGE_LEN}")
        if len(buf) > MAX_MESSAGE_LEN:
            raise DecodeError(f"DHCP message too long: {len(buf)} bytes, limit {MAX_MESSAGE_LEN}")
        (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr) = _FIXED.unpack_from(buf)
        if op not in (BOOTREQUEST, BOOTREPLY):
            raise DecodeError(f"DHCP op {op} is neither request (1) nor reply (2)")
        if htype != 1 or hlen != 6:
            raise DecodeError(f"DHCP hardware type {htype}/length {hlen} is not Ethernet (1/6)")
        if buf[FIXED_LEN:MIN_MESSAGE_LEN] != MAGIC_COOKIE:
            raise DecodeError("DHCP magic cookie is missing (plain BOOTP is not served)")
        options: dict[int, bytes] = {}
        pos, count, end = MIN_MESSAGE_LEN, 0, len(buf)
        while True:
            if pos >= end:
                raise DecodeError("DHCP options have no end option (255)")
            code = buf[pos]
            if code == OPT_PAD:
                pos += 1
                continue
            if code == OPT_END:
                break
            if pos + 1 >= end or pos + 2 + buf[pos + 1] > end:
                raise DecodeError(f"DHCP option {code} runs past the end of the message")
            length = buf[pos + 1]
            count += 1
            if count > MAX_OPTIONS:
                raise DecodeError(f"DHCP message has more than {MAX_OPTIONS} options")
            if code == OPT_OVERLOAD:
                raise DecodeError("DHCP option overload (52) is not supported")
            value = bytes(buf[pos + 2 : pos + 2 + length])
            options[code] = options.get(code, b"") + value
            pos += 2 + length
        return cls(
            op,
            xid,
            bytes(chaddr[:6]),
            htype,
            hops,
            secs,
            flags,
            IPv4Address(ci),
            IPv4Address(yi),
            IPv4Address(si),
            IPv4Address(gi),
            options,
        )

    def emit(self) -> bytes:
        """Encode: header, cookie, options (values over 255 bytes split, RFC 3396), end.

        Option 53 is written first, as clients expect; the rest in the dict's order.
        """
        if len(self.chaddr) > 16:
            raise ValueError("chaddr is at most 16 bytes")
        out = bytearray(
            _FIXED.pack(
                self.op,
                self.htype,
                len(self.chaddr),
                self.hops,
                self.xid,
                self.secs,
                self.flags,
                self.ciaddr.packed,
                self.yiaddr.packed,
                self.siaddr.packed,
                self.giaddr.packed,
                self.chaddr.ljust(16, b"\x00"),
            )
        )
        out += bytes(64 + 128)  # sname, file
        out += MAGIC_COOKIE
        codes = sorted(self.options, key=lambda c: c != OPT_MESSAGE_TYPE)
        for code in codes:
            value = self.options[code]
            chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
            for chunk in chunks:
                out += bytes((code, len(chunk))) + chunk
        out.append(OPT_END)
        if len(out) < 300:  # BOOTP minimum; some relays and old clients drop shorter
            out += bytes(300 - len(out))
        return bytes(out)


# --- option values -----------------------------------------------------------------------------


def opt_u32(value: int) -> bytes:
    """A 32-bit option (51 lease time, 58 T1, 59 T2), clamped to 0 … 2**32 - 1."""
    return max(0, min(int(value), 0xFFFFFFFF)).to_bytes(4, "big")


def opt_addresses(*addresses: IPv4Address) -> bytes:
    """A list-of-addresses option (1 mask, 3 router, 6 DNS, 28 broadcast, 54 server id)."""
    return b"".join(a.packed for a in addresses)


def opt_classless_routes(routes: list[tuple[IPv4Network, IPv4Address]]) -> bytes:
    """Option 121 (RFC 3442): each route as prefix length, the significant octets of the
    destination, then the router."""
    out = bytearray()
    for net, router in routes:
        octets = (net.prefixlen + 7) // 8
        out.append(net.prefixlen)
        out += net.network_address.packed[:octets]
        out += router.packed
    return bytes(out)


def parse_classless_routes(value: bytes) -> list[tuple[IPv4Network, IPv4Address]]:
    """Decode option 121; raises :class:`DecodeError` when malformed (a prefix length over 32,
    a route cut short, or destination bits set beyond the prefix length: RFC 3442 says such
    an option is not to be half-used, so the whole option is refused)."""
    routes: list[tuple[IPv4Network, IPv4Address]] = []
    pos = 0
    while pos < len(value):
        width = value[pos]
        if width > 32:
            raise DecodeError(f"option 121: prefix length {width} is over 32")
        octets = (width + 7) // 8
        if pos + 1 + octets + 4 > len(value):
            raise DecodeError("option 121: a route runs past the end of the option")
        dest = value[pos + 1 : pos + 1 + octets].ljust(4, b"\x00")
        try:
            net = IPv4Network((dest, width))
        except ValueError:
            raise DecodeError("option 121: destination has bits set past its prefix") from None
        router = IPv4Address(value[pos + 1 + octets : pos + 5 + octets])
        routes.append((net, router))
        pos += 5 + octets
    return routes


# --- frames ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClientFrame:
    """A DHCP message from a client with the addresses it came in: what the server needs."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: IPv4Address
    dst_ip: IPv4Address
    message: DhcpMessage


def parse_dhcp_frame(frame: bytes) -> ClientFrame | None:
    """Take a client's frame apart: Ethernet → IPv4 → UDP 68 → 67 → DHCP.

    Returns ``None`` for a frame that is simply not DHCP-to-a-server (another ethertype,
    protocol or port, a fragment) and raises :class:`DecodeError` for one that claims to be
    and is malformed (bad IPv4 or UDP checksum, bad DHCP message, a BOOTREPLY).
    """
    parts = _dhcp_in_udp(frame, b"\x00\x44\x00\x43", BOOTREQUEST)  # 68 -> 67
    return None if parts is None else ClientFrame(*parts)


def _dhcp_in_udp(
    frame: bytes, ports: bytes, op: int
) -> tuple[bytes, bytes, IPv4Address, IPv4Address, DhcpMessage] | None:
    """Ethernet → IPv4 → UDP with ``ports`` (source and destination, 4 bytes) → a DHCP
    message with ``op``: (src MAC, dst MAC, src IP, dst IP, message), None when the frame is
    not that kind of UDP, DecodeError when it is and is malformed or has the other op."""
    eth = EthernetRepr.parse(frame)
    if eth.ethertype != ETHERTYPE_IPV4 or eth.vlan_tci is not None:
        return None
    ip = Ipv4Repr.parse(eth.payload)
    if ip.protocol != PROTO_UDP or ip.more_fragments or ip.fragment_offset:
        return None
    if len(ip.payload) < 4 or ip.payload[0:4] != ports:
        return None
    udp = UdpRepr.parse(ip.payload, ip.src, ip.dst)
    message = DhcpMessage.parse(udp.payload)
    if message.op != op:
        raise DecodeError(
            "a DHCP reply (op 2) sent to the server port"
            if op == BOOTREQUEST
            else "a DHCP request (op 1) sent to the client port"
        )
    return eth.src, eth.dst, ip.src, ip.dst, message


def dhcp_frame(
    payload: bytes,
    *,
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: IPv4Address,
    dst_ip: IPv4Address,
    src_port: int = SERVER_PORT,
    dst_port: int = CLIENT_PORT,
    ttl: int = 64,
) -> bytes:
    """Wrap a DHCP payload in UDP (checksummed), IPv4 (checksummed) and Ethernet."""
    udp = UdpRepr(src_port, dst_port, payload).emit(src_ip, dst_ip)
    ip = Ipv4Repr(src_ip, dst_ip, PROTO_UDP, udp, ttl=ttl).emit()
    return ethernet_frame(dst_mac, src_mac, ETHERTYPE_IPV4, ip)


@dataclass(slots=True)
class ReplyFrame:
    """A DHCP message from a server with the addresses it came in: what a client needs (the
    server's MAC, to unicast its renewals to)."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: IPv4Address
    dst_ip: IPv4Address
    message: DhcpMessage


def is_dhcp_reply_frame(frame: bytes) -> bool:
    """Cheap test, per frame on a client's receive path: IPv4 (untagged), UDP, 67 → 68.

    Looks at fixed offsets only (ethertype, protocol, IHL, ports); a true answer is then
    checked properly by :func:`parse_dhcp_reply`.
    """
    return _udp_ports_are(frame, b"\x00\x43\x00\x44")


def is_dhcp_request_frame(frame: bytes) -> bool:
    """The server side's twin: IPv4 (untagged), UDP, 68 → 67, at fixed offsets (the gateway
    sees every local broadcast; :func:`parse_dhcp_frame` checks a true answer properly)."""
    return _udp_ports_are(frame, b"\x00\x44\x00\x43")


def _udp_ports_are(frame: bytes, ports: bytes) -> bool:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    return frame[14 + ihl : 18 + ihl] == ports


def parse_dhcp_reply(frame: bytes) -> ReplyFrame | None:
    """Take a server's frame apart: Ethernet → IPv4 → UDP 67 → 68 → DHCP (a BOOTREPLY).

    Returns ``None`` for a frame that is not DHCP-to-a-client and raises :class:`DecodeError`
    for one that claims to be and is malformed (bad checksum, bad message, a BOOTREQUEST).
    """
    parts = _dhcp_in_udp(frame, b"\x00\x43\x00\x44", BOOTREPLY)  # 67 -> 68
    return None if parts is None else ReplyFrame(*parts)
