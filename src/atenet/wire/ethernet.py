"""Ethernet II frames, with an optional IEEE 802.1Q VLAN tag.

Two ways in, as in smoltcp:

* hot-path helpers (:func:`dst_mac`, :func:`is_multicast_dst`, :func:`ethertype`, ...) read one
  field from a frame without building any object — forwarding decides on the first 14 bytes and
  must not allocate per frame;
* :class:`EthernetRepr` parses a whole frame into a plain record and emits it back, for code that
  looks inside (the ethereal router, the userspace stack, tests).

Frames here never carry the FCS (TAP devices, WebSocket clients and the overlay all omit it).
Frames shorter than 60 bytes are accepted: padding is the NIC's business, and upper layers trim
any padding by their own length fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from atenet.errors import DecodeError

__all__ = [
    "BROADCAST_MAC",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "ETHERTYPE_VLAN",
    "ETH_ADDR_LEN",
    "ETH_HEADER_LEN",
    "ETH_MIN_FRAME_LEN",
    "ETH_VLAN_HEADER_LEN",
    "EthernetRepr",
    "dst_mac",
    "ethernet_frame",
    "ethertype",
    "format_mac",
    "is_broadcast_dst",
    "is_multicast_dst",
    "is_multicast_mac",
    "is_unicast_mac",
    "parse_mac",
    "src_mac",
]

ETH_ADDR_LEN = 6
ETH_HEADER_LEN = 14
"""Destination MAC, source MAC, ethertype."""
ETH_VLAN_HEADER_LEN = 18
"""As :data:`ETH_HEADER_LEN` plus one 802.1Q tag (TPID 0x8100 + 16-bit TCI)."""
ETH_MIN_FRAME_LEN = 60
"""Minimum frame length on a real wire, without the 4-byte FCS."""

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD

BROADCAST_MAC = b"\xff" * 6


# --- hot path: no objects, just slices and integer reads -------------------------------------


def dst_mac(frame: bytes) -> bytes:
    """The destination MAC (6 bytes). The caller has checked ``len(frame) >= ETH_HEADER_LEN``."""
    return frame[0:6]


def src_mac(frame: bytes) -> bytes:
    """The source MAC (6 bytes). The caller has checked ``len(frame) >= ETH_HEADER_LEN``."""
    return frame[6:12]


def ethertype(frame: bytes) -> int:
    """The ethertype of the outer header (0x8100 for a VLAN-tagged frame)."""
    return (frame[12] << 8) | frame[13]


def is_multicast_dst(frame: bytes) -> bool:
    """True for multicast and broadcast destinations: the I/G bit of the first octet is set."""
    return bool(frame[0] & 1)


def is_broadcast_dst(frame: bytes) -> bool:
    """True when the destination is ff:ff:ff:ff:ff:ff."""
    return frame[0:6] == BROADCAST_MAC


def is_multicast_mac(mac: bytes) -> bool:
    """True for a group address (multicast or broadcast)."""
    return bool(mac[0] & 1)


def is_unicast_mac(mac: bytes) -> bool:
    """True for an individual address that is not all zeros (a valid source or learnable MAC)."""
    return not (mac[0] & 1) and mac != b"\x00" * 6


# --- text form -------------------------------------------------------------------------------


def format_mac(mac: bytes) -> str:
    """``02:ab:...`` — the usual lower-case colon form."""
    return mac.hex(":")


def parse_mac(text: str) -> bytes:
    """Inverse of :func:`format_mac`; accepts ``:`` or ``-`` separators.

    Raises :class:`DecodeError` when ``text`` is not six hex octets.
    """
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise DecodeError(
            f"not a MAC address: {text!r} (want six hex octets like 02:00:5e:10:00:01)"
        )
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise DecodeError(f"not a MAC address: {text!r} (octets must be hex)") from None


# --- the record ------------------------------------------------------------------------------


@dataclass(slots=True)
class EthernetRepr:
    """One Ethernet II frame.

    ``vlan_tci`` is the 802.1Q tag control information (priority, DEI, VLAN id) when the frame
    carries a tag, else ``None``; ``ethertype`` is then the inner (payload's) ethertype.
    Stacked (QinQ) tags are not unwrapped: the inner tag stays in ``payload`` with ethertype
    0x8100.
    """

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes = b""
    vlan_tci: int | None = None

    @classmethod
    def parse(cls, frame: bytes) -> EthernetRepr:
        """Decode ``frame``; raises :class:`DecodeError` when it is shorter than its header."""
        if len(frame) < ETH_HEADER_LEN:
            raise DecodeError(
                f"Ethernet frame too short: {len(frame)} bytes, header needs {ETH_HEADER_LEN}"
            )
        etype = (frame[12] << 8) | frame[13]
        if etype == ETHERTYPE_VLAN:
            if len(frame) < ETH_VLAN_HEADER_LEN:
                raise DecodeError(
                    f"VLAN-tagged frame too short: {len(frame)} bytes, "
                    f"header needs {ETH_VLAN_HEADER_LEN}"
                )
            tci = (frame[14] << 8) | frame[15]
            inner = (frame[16] << 8) | frame[17]
            return cls(bytes(frame[0:6]), bytes(frame[6:12]), inner, bytes(frame[18:]), tci)
        return cls(bytes(frame[0:6]), bytes(frame[6:12]), etype, bytes(frame[14:]))

    def emit(self) -> bytes:
        """Encode the frame (no padding to 60 bytes, no FCS)."""
        if len(self.dst) != 6 or len(self.src) != 6:
            raise ValueError("Ethernet addresses must be 6 bytes")
        if self.vlan_tci is None:
            return b"".join((self.dst, self.src, self.ethertype.to_bytes(2, "big"), self.payload))
        return b"".join(
            (
                self.dst,
                self.src,
                ETHERTYPE_VLAN.to_bytes(2, "big"),
                self.vlan_tci.to_bytes(2, "big"),
                self.ethertype.to_bytes(2, "big"),
                self.payload,
            )
        )

    @property
    def vlan_id(self) -> int | None:
        """The 12-bit VLAN id of the tag, or ``None`` for an untagged frame."""
        return None if self.vlan_tci is None else self.vlan_tci & 0x0FFF


def ethernet_frame(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    """Build an untagged frame in one join (used by the frame builders of every protocol)."""
    return b"".join((dst, src, etype.to_bytes(2, "big"), payload))
