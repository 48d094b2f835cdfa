"""ARP and IPv6 neighbour discovery snooping: which IP lives at which MAC, per network.

The switch hands this table every ARP packet and every neighbour solicitation/advertisement it
switches, from local ports and from peers alike (a cheap ethertype test on the hot path; the
parse happens only for those frames). It only listens; answering on a host's behalf is the
network's ``proxy_arp`` setting (:mod:`atenet.switch.proxy`, off by default), and the gateway
reads it before asking by ARP/ND (:mod:`atenet.router.neighbours`). What it knows is shown
by ``tok fdb`` and the node's ``/api/fdb``.

What counts as a claim: an ARP packet's sender (IP, MAC) when the MAC is the frame's source
and the IP is not 0.0.0.0 (probes say nothing); a solicitation's source address with its
source link-layer option (not from ``::``, duplicate address detection); an advertisement's
target with its target link-layer option. Multicast MACs and addresses are never learned.

Bounded: at most :data:`IP_TABLE_MAX` addresses; past that, new ones are not learned (counted
``full``) — existing entries are never evicted by newcomers, so a host spraying claims cannot
push out the others. Entries age out :data:`IP_TABLE_AGE` seconds after their last claim.
Malformed frames are counted and ignored; nothing here raises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError
from atenet.wire.arp import ArpRepr
from atenet.wire.icmpv6 import (
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    Icmpv6Repr,
    NeighborAdvert,
    NeighborSolicit,
)
from atenet.wire.ipv6 import NEXT_HEADER_ICMPV6, Ipv6Repr

IP_TABLE_MAX = 4096
"""Addresses one network's table holds on one node."""
IP_TABLE_AGE = 300.0
"""Seconds an address stays after its last claim (the MAC table's default age too)."""


def is_neighbour_frame(frame: bytes, at: int = 0) -> bool:
    """ARP, or IPv6 whose next header is ICMPv6 of type 135/136 — fixed offsets, no parse
    (called per frame: integer compares only)."""
    if len(frame) < at + 56:
        return len(frame) >= at + 42 and frame[at + 12] == 8 and frame[at + 13] == 6
    kind = frame[at + 12]
    if kind == 8:
        return frame[at + 13] == 6
    return (
        kind == 0x86
        and frame[at + 13] == 0xDD
        and frame[at + 20] == NEXT_HEADER_ICMPV6
        and frame[at + 54] in (ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_NEIGHBOR_ADVERT)
    )


@dataclass(slots=True)
class Entry:
    mac: bytes
    where: str
    """The local port's name, or ``node <id>`` for a host behind a peer node."""
    seen: float


class IpTable:
    """IP → MAC of one network on one node (see the module doc)."""

    def __init__(self, max_entries: int = IP_TABLE_MAX, age: float = IP_TABLE_AGE) -> None:
        self.max_entries = max_entries
        self.age_limit = age
        self.entries: dict[IPv4Address | IPv6Address, Entry] = {}
        self.counters: Counter[str] = Counter()
        """``learned``, ``moved``, ``full``, ``aged``, ``malformed``."""

    def __len__(self) -> int:
        return len(self.entries)

    def observe(self, frame: bytes, where: str, now: float) -> None:
        """Learn from one ARP / ND frame (see :func:`is_neighbour_frame`)."""
        try:
            for ip, mac in self._claims(frame):
                self._learn(ip, mac, where, now)
        except (DecodeError, ValueError, IndexError):
            self.counters["malformed"] += 1

    def _claims(self, frame: bytes) -> list[tuple[IPv4Address | IPv6Address, bytes]]:
        src = frame[6:12]
        if frame[12:14] == b"\x08\x06":
            arp = ArpRepr.parse(frame[14:])
            if arp.sender_mac != src or arp.sender_ip.is_unspecified:
                return []
            return [(arp.sender_ip, arp.sender_mac)]
        packet = Ipv6Repr.parse(frame[14:])
        proto, upper = packet.upper_layer()
        if proto != NEXT_HEADER_ICMPV6:
            return []
        icmp = Icmpv6Repr.parse(upper, packet.src, packet.dst)
        if icmp.type == ICMPV6_NEIGHBOR_SOLICIT:
            ns = NeighborSolicit.from_icmp(icmp)
            if packet.src.is_unspecified or ns.source_mac is None:
                return []
            return [(packet.src, ns.source_mac)]
        if icmp.type == ICMPV6_NEIGHBOR_ADVERT:
            na = NeighborAdvert.from_icmp(icmp)
            return [] if na.target_mac is None else [(na.target, na.target_mac)]
        return []

    def _learn(self, ip: IPv4Address | IPv6Address, mac: bytes, where: str, now: float) -> None:
        if mac[0] & 1 or ip.is_multicast or len(mac) != 6:
            return
        entry = self.entries.get(ip)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                self.counters["full"] += 1
                return
            self.entries[ip] = Entry(mac, where, now)
            self.counters["learned"] += 1
            return
        if entry.mac != mac or entry.where != where:
            self.counters["moved"] += 1
            entry.mac, entry.where = mac, where
        entry.seen = now

    def age(self, now: float) -> None:
        """Forget addresses not claimed for :attr:`age_limit` seconds."""
        stale = [ip for ip, e in self.entries.items() if now - e.seen > self.age_limit]
        for ip in stale:
            del self.entries[ip]
        self.counters["aged"] += len(stale)

    def view(self, now: float) -> list[dict[str, object]]:
        """The table for ``tok fdb``: IPv4 first, then IPv6, by address."""
        return [
            {"ip": str(ip), "mac": e.mac.hex(":"), "where": e.where, "age": round(now - e.seen, 1)}
            for ip, e in sorted(self.entries.items(), key=lambda kv: (kv[0].version, kv[0]))
        ]
