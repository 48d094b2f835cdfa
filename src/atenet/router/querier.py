"""The gateway as IGMP/MLD querier: general queries, so listeners report again and the
switches' memberships (:mod:`atenet.switch.mcast`) stay true.

Each node's gateway queries its own local ports (never peers: every node queries its own hosts,
and their reports flood to all nodes, refreshing everyone's table). Queries go out soon after
start, once more after :data:`STARTUP_INTERVAL` (RFC 3376 §8.6: startup queries at a quarter of
the interval), then every :data:`QUERY_INTERVAL` seconds:

* an IGMPv3 general query (12 bytes: Linux answers it in the IGMP version it runs) from the
  gateway's IPv4 address to 224.0.0.1, TTL 1, with the Router Alert option (RFC 2113);
* an MLDv2 general query (RFC 3810 §5.1) from the gateway's link-local address (hosts ignore
  queries from other sources) to ff02::1, hop limit 1, behind a hop-by-hop header with Router
  Alert (RFC 2711).

Max response time 10 s; the membership timeout is 2 × 125 + 10 = 260 s (robustness 2).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from atenet.wire.checksum import checksum, pseudo_header_v6
from atenet.wire.ethernet import ETHERTYPE_IPV4, ETHERTYPE_IPV6, ethernet_frame

__all__ = ["QUERY_INTERVAL", "Querier", "igmp_query", "mld_query"]

QUERY_INTERVAL = 125.0
"""Seconds between general queries (RFC 3376 / RFC 3810 default)."""

STARTUP_INTERVAL = QUERY_INTERVAL / 4
FIRST_QUERY = 10.0
"""Seconds after the first poll before the first query: late enough that a client that just
connected has settled (and its own unsolicited reports usually came first), soon enough that
hosts which joined before this node started are registered within seconds."""

RESPONSE_MS = 10_000
ROBUSTNESS = 2

_ALL_SYSTEMS = IPv4Address("224.0.0.1")
_ALL_SYSTEMS_MAC = bytes.fromhex("01005e000001")
_ALL_NODES = IPv6Address("ff02::1")
_ALL_NODES_MAC = bytes.fromhex("333300000001")


def igmp_query(src_mac: bytes, src_ip: IPv4Address) -> bytes:
    """An IGMPv3 general query frame from the gateway."""
    qqic = int(QUERY_INTERVAL)
    igmp = bytearray(struct.pack("!BBH4sBBH", 0x11, 100, 0, bytes(4), ROBUSTNESS, qqic, 0))
    struct.pack_into("!H", igmp, 2, checksum(igmp))
    options = b"\x94\x04\x00\x00"  # Router Alert
    # IPv4, IHL 6 (the Router Alert option), DSCP CS6, don't fragment, TTL 1, protocol IGMP.
    fields = (0x46, 0xC0, 24 + len(igmp), 0, 0x4000, 1, 2, 0, src_ip.packed, _ALL_SYSTEMS.packed)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", *fields) + options)
    struct.pack_into("!H", header, 10, checksum(header))
    return ethernet_frame(_ALL_SYSTEMS_MAC, src_mac, ETHERTYPE_IPV4, bytes(header + igmp))


def mld_query(src_mac: bytes, link_local: IPv6Address) -> bytes:
    """An MLDv2 general query frame from the gateway's link-local address."""
    mld = bytearray(
        struct.pack("!BBHHH16sBBH", 130, 0, 0, RESPONSE_MS, 0, bytes(16), ROBUSTNESS, 125, 0)
    )
    initial = pseudo_header_v6(link_local.packed, _ALL_NODES.packed, 58, len(mld))
    struct.pack_into("!H", mld, 2, checksum(mld, initial))
    hop_by_hop = bytes([58, 0, 5, 2, 0, 0, 1, 0])  # next ICMPv6; Router Alert (MLD); PadN
    payload = hop_by_hop + bytes(mld)
    header = struct.pack(
        "!IHBB16s16s", 0x60000000, len(payload), 0, 1, link_local.packed, _ALL_NODES.packed
    )
    return ethernet_frame(_ALL_NODES_MAC, src_mac, ETHERTYPE_IPV6, header + payload)


class Querier:
    """When to send general queries, and the frames (sans-I/O: the caller passes ``now``)."""

    __slots__ = ("_frames", "_startup_left", "next_at", "sent")

    def __init__(self, src_mac: bytes, ipv4: IPv4Address, link_local: IPv6Address, now: float):
        self._frames = (igmp_query(src_mac, ipv4), mld_query(src_mac, link_local))
        self.next_at = now + FIRST_QUERY
        self._startup_left = 1  # one more query at the startup interval after the first
        self.sent = 0

    def poll(self, now: float) -> list[bytes]:
        """The queries due at ``now`` (none before :attr:`next_at`)."""
        if now < self.next_at:
            return []
        if self._startup_left:
            self._startup_left -= 1
            self.next_at = now + STARTUP_INTERVAL
        else:
            self.next_at = now + QUERY_INTERVAL
        self.sent += 1
        return list(self._frames)
