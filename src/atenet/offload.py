"""TAP offloads: the virtio-net header, partial checksums and software segmentation (sans-I/O).

A TAP opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (see :mod:`atenet.transport.tap`) lets
the kernel skip the two most expensive things it does per frame on our behalf: computing TCP/UDP
checksums and cutting a TCP stream into MTU-sized segments. Every read then starts with a
10-byte ``struct virtio_net_hdr`` and may return a *super-frame*: one Ethernet frame carrying up
to 64 KiB of TCP payload, with one set of headers, that stands for ``ceil(payload / gso_size)``
standard frames. Every write starts with the same header and may hand the kernel such a
super-frame, which its TCP stack takes as it is (no segmentation at all on the receiving host).

This module is the part of that which needs no kernel: parse and build the header, validate what
a peer sent, and turn a super-frame (or a frame whose checksum was left to "the hardware") into
the standard frames a receiver without offloads needs — an older ``tok``, a WebSocket port, a
userspace TCP/IP stack. The segmentation follows what Linux's own software GSO
(``tcp_gso_segment``, ``__udp_gso_segment``) produces:

* each segment gets the original headers, with the IPv4 total length / IPv6 payload length
  adjusted, the IPv4 id incremented per segment and the IPv4 header checksum recomputed;
* TCP: sequence number advanced by the payload offset; FIN and PSH only on the last segment,
  CWR only on the first; the checksum computed in full (pseudo header included);
* UDP (``UDP_L4``, i.e. UDP GSO / USO): the UDP length and checksum per segment (0 is sent as
  0xFFFF, since 0 means "no checksum").

The header layout (``<linux/virtio_net.h>``; little-endian because the TAP is put in virtio 1.0
mode with ``TUNSETVNETLE``)::

    0       1          2         4          6            8             10
    | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset |

``csum_start`` and ``hdr_len`` count from the first byte of the Ethernet header.

Everything here works on ``packet`` = header + frame, the unit a vnet TAP reads and writes and
the payload of a ``TYPE_SUPERFRAME`` overlay packet (see docs/protocol.md), so a super-frame is
never copied just to move the header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from atenet.errors import AtenetError
from atenet.wire.checksum import checksum

__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "NO_OFFLOAD",
    "VNET_HDR_LEN",
    "OffloadError",
    "VnetHeader",
    "check",
    "is_offloaded",
    "to_frames",
]

VNET_HDR_LEN = 10
"""sizeof(struct virtio_net_hdr): set on the TAP with TUNSETVNETHDRSZ."""

F_NEEDS_CSUM = 0x01
"""The L4 checksum is partial: sum bytes from ``csum_start`` to the end, store the complement at
``csum_start + csum_offset`` (the field already holds the pseudo-header sum)."""
F_DATA_VALID = 0x02
"""Kernel to us only: the checksums were already verified. Says nothing we must act on."""

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
"""Legacy UDP fragmentation offload (UFO): never enabled here, so refused if seen."""
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
"""UDP segmentation offload (USO): UDP_SEGMENT sends, split into datagrams of ``gso_size``."""
GSO_ECN = 0x80
"""Flag on a TCP gso_type: the flow uses ECN, so CWR stays on the first segment only."""

NO_OFFLOAD = bytes(VNET_HDR_LEN)
"""The header of a plain frame: complete checksums, no segmentation."""

_VNET = struct.Struct("<BBHHHH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_IPV4_LEN_ID = struct.Struct(">HH")

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TYPES = (0x8100, 0x88A8)
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80

_GSO_TYPES = frozenset({GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4})

MAX_GSO_SEGMENTS = 65535 // 48
"""Segments one super-frame may stand for: 64 KiB at Linux's smallest TCP MSS (48, the floor of
``tcp_min_snd_mss``); USO sends at most 128. Without it, one 62 KB packet with ``gso_size`` 1 made
the node cut 62,000 frames (3.4 MB, ~350 ms of CPU) for every port without offloads."""


class OffloadError(AtenetError):
    """A packet's offload header or headers do not describe a frame we can rebuild.

    ``reason`` is a short drop-counter name; nothing here is ever answered to the sender.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"bad offloaded frame: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """One ``struct virtio_net_hdr`` (the 10-byte form), as a plain record."""

    flags: int = 0
    """F_NEEDS_CSUM and/or F_DATA_VALID."""
    gso_type: int = GSO_NONE
    """GSO_NONE, GSO_TCPV4, GSO_TCPV6 or GSO_UDP_L4, possibly | GSO_ECN."""
    hdr_len: int = 0
    """Length of the headers (Ethernet to L4 included) repeated on every segment; a hint only."""
    gso_size: int = 0
    """L4 payload bytes per segment (the MSS for TCP)."""
    csum_start: int = 0
    """Offset of the L4 header from the start of the Ethernet frame."""
    csum_offset: int = 0
    """Offset of the checksum field from ``csum_start`` (16 for TCP, 6 for UDP)."""

    @classmethod
    def parse(cls, packet: bytes | bytearray | memoryview) -> VnetHeader:
        if len(packet) < VNET_HDR_LEN:
            raise OffloadError("short")
        return cls(*_VNET.unpack_from(packet))

    def pack(self) -> bytes:
        return _VNET.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


def is_offloaded(packet: bytes | bytearray | memoryview) -> bool:
    """True when ``packet`` needs work before a receiver without offloads can take its frame.

    That is a GSO super-frame or a partial checksum. A header with only F_DATA_VALID (or all
    zero) describes a plain, complete frame: ``packet[VNET_HDR_LEN:]`` is all there is to it.
    Hot path: two byte reads.
    """
    return bool(packet[1] or packet[0] & F_NEEDS_CSUM)


def _l3_offset(frame: memoryview) -> tuple[int, int]:
    """(offset of the IP header, ethertype), skipping 802.1Q / 802.1ad tags."""
    at = 12
    while True:
        if len(frame) < at + 2:
            raise OffloadError("short")
        ethertype = _U16.unpack_from(frame, at)[0]
        if ethertype not in _VLAN_TYPES:
            return at + 2, ethertype
        at += 4


def check(packet: bytes | bytearray | memoryview) -> None:
    """Refuse an offload header that no kernel would have produced; cheap, for the hot path.

    A node runs this on every super-frame a client sends before switching it, so a malformed
    header is dropped (and counted) once at the edge. The receiving kernel validates the frame
    again as untrusted input (a TAP is the same boundary as a virtual machine), and
    :func:`to_frames` re-checks every header it relies on, so this only has to catch what would
    otherwise travel.
    """
    n = len(packet)
    if n < VNET_HDR_LEN + ETH_HLEN:
        raise OffloadError("short")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(packet)
    if gso_type & ~GSO_ECN not in _GSO_TYPES:
        raise OffloadError("gso_type")
    frame_len = n - VNET_HDR_LEN
    if flags & F_NEEDS_CSUM and not (
        csum_start >= ETH_HLEN and csum_start + csum_offset + 2 <= frame_len
    ):
        raise OffloadError("csum_range")
    if gso_type != GSO_NONE and (gso_size == 0 or not flags & F_NEEDS_CSUM):
        # Linux never emits GSO without a partial checksum: csum_start is how we find L4.
        raise OffloadError("gso_header")
    if gso_type != GSO_NONE:
        # Segmenting repeats the headers once per segment: bound the count, and the repeated
        # headers to twice the packet, so no packet is amplified by more than a few times.
        segments = -(-(frame_len - csum_start) // gso_size)
        if segments > MAX_GSO_SEGMENTS or segments * csum_start > 2 * frame_len:
            raise OffloadError("gso_size")


def to_frames(packet: bytes | bytearray | memoryview) -> list[bytes]:
    """The standard frames ``packet`` (offload header + frame) stands for.

    A plain frame comes back alone (one copy, without the header); a frame with a partial
    checksum comes back with the checksum filled in; a super-frame comes back segmented, every
    segment with complete, correct checksums. Raises :class:`OffloadError` when the headers
    contradict the offload header (a receiver would otherwise get garbage).
    """
    check(packet)
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(packet)
    frame = memoryview(packet)[VNET_HDR_LEN:]
    if gso_type == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [bytes(frame)]
        out = bytearray(frame)
        _fill_checksum(out, csum_start, csum_offset)
        return [bytes(out)]
    base_type = gso_type & ~GSO_ECN
    l3, ethertype = _l3_offset(frame)
    v6 = ethertype == ETH_P_IPV6
    if ethertype != (ETH_P_IPV6 if base_type == GSO_TCPV6 else ETH_P_IP) and not (
        base_type == GSO_UDP_L4 and ethertype in (ETH_P_IP, ETH_P_IPV6)
    ):
        raise OffloadError("ethertype")
    l4 = csum_start
    if l4 < l3 + (40 if v6 else 20):
        raise OffloadError("l4_offset")
    if v6:
        if frame[l3] >> 4 != 6:
            raise OffloadError("ip_version")
    elif frame[l3] >> 4 != 4 or l3 + (frame[l3] & 0x0F) * 4 != l4:
        raise OffloadError("ip_header")
    if base_type == GSO_UDP_L4:
        return _segment_udp(frame, l3, l4, gso_size, v6)
    return _segment_tcp(frame, l3, l4, gso_size, v6)


def _fill_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a partial checksum in place, as ``skb_checksum_help`` does.

    The field already holds the folded pseudo-header sum, so summing from ``csum_start`` to the
    end (field included) gives the full sum; 0 is stored as 0xFFFF (the same value in one's
    complement, and the only legal form for UDP, where 0 means "no checksum").
    """
    at = csum_start + csum_offset
    value = checksum(memoryview(frame)[csum_start:]) or 0xFFFF
    _U16.pack_into(frame, at, value)


def _pseudo_addresses(frame: memoryview, l3: int, v6: bool) -> int:
    """Unfolded sum of the source and destination addresses (the pseudo header's bulk).

    Read as one big integer: modulo 0xFFFF that equals the sum of its 16-bit words.
    """
    if v6:
        return int.from_bytes(frame[l3 + 8 : l3 + 40], "big")
    return int.from_bytes(frame[l3 + 12 : l3 + 20], "big")


def _segment_tcp(frame: memoryview, l3: int, l4: int, mss: int, v6: bool) -> list[bytes]:
    if len(frame) < l4 + 20:
        raise OffloadError("short")
    tcp_hlen = (frame[l4 + 12] >> 4) * 4
    data_at = l4 + tcp_hlen
    if tcp_hlen < 20 or data_at > len(frame):
        raise OffloadError("tcp_header")
    template = bytearray(frame[:data_at])
    seq0 = _U32.unpack_from(template, l4 + 4)[0]
    flags0 = template[l4 + 13]
    ip_id0 = 0 if v6 else _U16.unpack_from(template, l3 + 4)[0]
    template[l4 + 16 : l4 + 18] = b"\0\0"  # TCP checksum: recomputed per segment
    if not v6:
        template[l3 + 10 : l3 + 12] = b"\0\0"  # IPv4 header checksum: likewise
    pseudo = _pseudo_addresses(frame, l3, v6) + IPPROTO_TCP
    l3_head = l4 - l3  # IP header (+ IPv6 extension headers) length
    data = frame[data_at:]
    total = len(data)
    out: list[bytes] = []
    append = out.append
    pack_u16 = _U16.pack_into
    pack_u32 = _U32.pack_into
    last_start = max(0, (total - 1) // mss * mss)
    for index, offset in enumerate(range(0, max(total, 1), mss)):
        chunk = data[offset : offset + mss]
        seg = bytearray(template)
        flags = flags0
        if offset != last_start:
            flags &= ~(TCP_FIN | TCP_PSH)
        if index:
            flags &= ~TCP_CWR
        seg[l4 + 13] = flags
        pack_u32(seg, l4 + 4, (seq0 + offset) & 0xFFFFFFFF)
        tcp_len = tcp_hlen + len(chunk)
        if v6:
            pack_u16(seg, l3 + 4, l3_head - 40 + tcp_len)
        else:
            _IPV4_LEN_ID.pack_into(seg, l3 + 2, l3_head + tcp_len, (ip_id0 + index) & 0xFFFF)
            pack_u16(seg, l3 + 10, checksum(memoryview(seg)[l3:l4]))
        # The TCP header is a whole number of 32-bit words, so the payload's words line up.
        partial = pseudo + tcp_len + int.from_bytes(memoryview(seg)[l4:data_at], "big")
        pack_u16(seg, l4 + 16, checksum(chunk, partial))
        seg += chunk
        append(bytes(seg))
    return out


def _segment_udp(frame: memoryview, l3: int, l4: int, size: int, v6: bool) -> list[bytes]:
    data_at = l4 + 8
    if data_at > len(frame):
        raise OffloadError("udp_header")
    template = bytearray(frame[:data_at])
    ip_id0 = 0 if v6 else _U16.unpack_from(template, l3 + 4)[0]
    if not v6:
        template[l3 + 10 : l3 + 12] = b"\0\0"
    pseudo = _pseudo_addresses(frame, l3, v6) + IPPROTO_UDP
    ports = int.from_bytes(template[l4 : l4 + 4], "big")
    l3_head = l4 - l3
    data = frame[data_at:]
    out: list[bytes] = []
    for index, offset in enumerate(range(0, max(len(data), 1), size)):
        chunk = data[offset : offset + size]
        seg = bytearray(template)
        udp_len = 8 + len(chunk)
        _U16.pack_into(seg, l4 + 4, udp_len)
        if v6:
            _U16.pack_into(seg, l3 + 4, l3_head - 40 + udp_len)
        else:
            _IPV4_LEN_ID.pack_into(seg, l3 + 2, l3_head + udp_len, (ip_id0 + index) & 0xFFFF)
            _U16.pack_into(seg, l3 + 10, checksum(memoryview(seg)[l3:l4]))
        # UDP length appears twice in the sum: in the pseudo header and in the UDP header.
        partial = pseudo + udp_len + (ports << 32) + (udp_len << 16)
        _U16.pack_into(seg, l4 + 6, checksum(chunk, partial) or 0xFFFF)
        seg += chunk
        out.append(bytes(seg))
    return out
