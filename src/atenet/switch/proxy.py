"""Proxy ARP / ND from the snooped IP table: answer for hosts on other nodes (a setting).

Off by default: the switch only listens to ARP and neighbour discovery (:mod:`atenet.switch.snoop`).
With the network's ``proxy_arp`` setting on, every node answers an ARP request or a neighbour
solicitation that one of its local ports floods, when the address asked for is in the snooped
table, was claimed within :data:`PROXY_FRESH` seconds, and its MAC is learned behind another
node: the answer carries the host's own MAC (as EVPN / Linux bridges' ``neigh_suppress`` do,
not the gateway's — so it is exactly the reply the host would have given) and goes to the
asking port alone; the request is not flooded, so it never crosses nodes.

Not answered (the request floods as before, and the host answers itself): a host on this node
(it hears the request anyway, and answering for it could hide that it is gone), an address
claimed longer ago (the host may have left: only it may say it is there), ARP probes and
gratuitous requests (duplicate address detection must reach the real owner), solicitations from
``::`` or without a source link-layer option, anything malformed.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError
from atenet.switch.core import Port, Switch
from atenet.switch.snoop import IpTable
from atenet.wire.arp import ARP_REQUEST, ArpRepr, arp_reply
from atenet.wire.icmpv6 import (
    ICMPV6_NEIGHBOR_SOLICIT,
    Icmpv6Repr,
    NeighborSolicit,
    neighbor_advertisement,
)
from atenet.wire.ipv6 import NEXT_HEADER_ICMPV6, Ipv6Repr

PROXY_FRESH = 60.0
"""Seconds after its last claim an address is answered for (the gateway's neighbour cache
trusts a snooped claim as long: its ``reachable`` time)."""


class NeighbourProxy:
    """The switch's :attr:`~atenet.switch.core.Switch.proxy` for one network (see the module
    doc); ``clock()`` is the time the IP table stamps claims with."""

    def __init__(self, table: IpTable, switch: Switch, clock: Callable[[], float]) -> None:
        self.table = table
        self.switch = switch
        self.clock = clock

    def __call__(self, port: Port, frame: bytes) -> bool:
        try:
            reply = self._answer(frame)
        except (DecodeError, ValueError, IndexError):
            return False  # the switch floods it; the snooping table counted it malformed
        if reply is None:
            return False
        self.table.counters["proxied"] += 1
        self.switch.from_gateway(reply, port)
        return True

    def _answer(self, frame: bytes) -> bytes | None:
        if frame[12:14] == b"\x08\x06":
            arp = ArpRepr.parse(frame[14:])
            if (
                arp.operation != ARP_REQUEST
                or arp.sender_mac != frame[6:12]
                or arp.sender_ip.is_unspecified
                or arp.sender_ip == arp.target_ip
            ):
                return None
            mac = self._remote(arp.target_ip)
            return (
                None
                if mac is None
                else arp_reply(mac, arp.target_ip, arp.sender_mac, arp.sender_ip)
            )
        packet = Ipv6Repr.parse(frame[14:])
        proto, upper = packet.upper_layer()
        if proto != NEXT_HEADER_ICMPV6 or packet.src.is_unspecified:
            return None
        icmp = Icmpv6Repr.parse(upper, packet.src, packet.dst)
        if icmp.type != ICMPV6_NEIGHBOR_SOLICIT:
            return None
        ns = NeighborSolicit.from_icmp(icmp)
        if ns.source_mac is None:
            return None
        mac = self._remote(ns.target)
        if mac is None:
            return None
        return neighbor_advertisement(mac, ns.target, ns.source_mac, packet.src)

    def _remote(self, ip: IPv4Address | IPv6Address) -> bytes | None:
        """The MAC to answer with: a fresh claim by a host the MAC table has behind a peer."""
        entry = self.table.entries.get(ip)
        if entry is None or self.clock() - entry.seen > PROXY_FRESH:
            return None
        if self.switch.fdb.get(entry.mac).__class__ is not int:
            return None
        return entry.mac
