"""The ethereal interface: one network's gateway on one node, as a sans-I/O core.

The node gives it every frame that arrives from a **local** port (never one from a peer node:
that is what keeps N nodes from giving N answers and keeps its output from looping) and sends
what it returns to the local ports. It holds the gateway's addresses — the first host of the
IPv4 CIDR, ``…::1`` of the /64 and a link-local address — behind one MAC derived from the
network id, identical on every node (``docs/router.md``).

What it does today: answers ARP, neighbour solicitations and pings for its own addresses,
answers router solicitations and sends periodic router advertisements (:meth:`poll`), and
routes packets for other networks through its route table (:meth:`Gateway.add_route`: longest
prefix wins, TTL / hop limit decremented, too-big packets fragmented or refused with the ICMP
error, handed to the route's ``forward`` callable — the other network's
:class:`~atenet.router.neighbours.Neighbours` resolves the MAC), and answers the rest with the
ICMP error a router owes (time exceeded when the TTL runs out, destination unreachable without
a route). DHCP sits beside it (:mod:`atenet.router.dhcp`); the primitives are in
:mod:`atenet.router.forward`.

Everything it cannot use is dropped and counted in :attr:`Gateway.drops` by reason — it never
raises on input, never answers a malformed packet.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from atenet import addressing
from atenet.errors import DecodeError
from atenet.ratelimit import TokenBucket
from atenet.router.forward import (
    ERROR_BURST,
    ERROR_RATE,
    ICMP_FRAG_NEEDED,
    ICMPV6_MIN_MTU,
    decrement_hop_limit,
    decrement_ttl,
    fragment_v4,
    icmp_dest_unreachable,
    icmp_time_exceeded,
    icmpv6_dest_unreachable,
    icmpv6_packet_too_big,
    icmpv6_time_exceeded,
    is_unicast_v4,
    may_send_error_v4,
    may_send_error_v6,
)
from atenet.router.ra import MAX_ROUTE_INFO, RaConfig, RaSchedule, router_advert
from atenet.wire.arp import ARP_REQUEST, ArpRepr, arp_reply
from atenet.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    ethernet_frame,
    is_unicast_mac,
)
from atenet.wire.icmp import ICMP_ECHO_REQUEST, IcmpRepr, icmp_echo_reply
from atenet.wire.icmpv6 import (
    ICMPV6_ECHO_REQUEST,
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    ICMPV6_PACKET_TOO_BIG,
    ICMPV6_ROUTER_SOLICIT,
    ICMPV6_TIME_EXCEEDED,
    ND_HOP_LIMIT,
    Icmpv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    icmpv6_echo_reply,
    icmpv6_frame,
    nd_options,
)
from atenet.wire.ipv4 import IPV4_HEADER_LEN, PROTO_ICMP, PROTO_TCP, Ipv4Repr
from atenet.wire.ipv6 import (
    ALL_NODES,
    IPV6_HEADER_LEN,
    NEXT_HEADER_ICMPV6,
    Ipv6Repr,
    multicast_mac_v6,
)

__all__ = ["DEFAULT_DNS6", "Forward", "Gateway", "Route"]

Forward = Callable[[bytes, "IPv4Address | IPv6Address", float], None]
"""Where a routed packet goes: ``forward(packet, dst, now)`` with the TTL already lowered."""

DEFAULT_DNS6 = (IPv6Address("2001:4860:4860::8888"),)
_ALL_NODES_MAC = multicast_mac_v6(ALL_NODES)
_UNSPECIFIED6 = IPv6Address("::")
_OPT_SOURCE_LLADDR = 1
_RS_ANSWER_RATE = 10.0
_RS_ANSWER_BURST = 10
_MIN_MTU4 = 68
"""The smallest MTU an IPv4 link may have (RFC 791): what every fragment must fit."""

_NEVER_ROUTED = (
    IPv4Network("0.0.0.0/8"),
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("224.0.0.0/3"),  # multicast, class E and the limited broadcast
    IPv6Network("::/127"),  # unspecified and loopback
    IPv6Network("fe80::/10"),
    IPv6Network("ff00::/8"),
)
"""Ranges a route may not cover: they are never forwarded between links (RFC 1812 §5.3.7,
RFC 4291 §2.5.6), so a route through them could only ever be a mistake."""


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of a gateway's route table: packets for ``network`` go to ``forward``.

    ``mtu`` is the other side's MTU (``None``: the same as ours or larger, nothing to check).
    ``prefix``/``mask`` are the network as integers, so the per-packet lookup is two integer
    operations per route instead of an ``ipaddress`` containment test.
    """

    network: IPv4Network | IPv6Network
    forward: Forward
    mtu: int | None
    prefix: int
    mask: int
    broadcasts: tuple[IPv4Address, ...]
    """The network and broadcast addresses of an IPv4 route (empty for /31, /32 and IPv6):
    directed broadcasts are never forwarded (RFC 2644)."""
    address: IPv4Address | IPv6Address | None
    """The other network's gateway address: answered here, as one router's other interface."""


class Gateway:
    """The gateway of network ``network_id`` on this node.

    ``frame(frame, now)`` takes one Ethernet frame from a local port and returns the frames to
    send to the local ports; ``poll_at()`` says when ``poll(now)`` has periodic output (router
    advertisements). ``cidr6`` may be ``None`` for an IPv4-only network. ``default_route``
    makes the router advertisements offer this gateway as the IPv6 default router (router
    lifetime > 0); without it hosts only learn the prefix, which is right until the network
    has internet access. ``rng`` draws the RA intervals (seed it in tests).
    """

    def __init__(
        self,
        network_id: bytes,
        cidr: str,
        cidr6: str | None,
        mtu: int,
        *,
        dns6: tuple[IPv6Address, ...] = DEFAULT_DNS6,
        default_route: bool = False,
        ra_max_interval: float = 600.0,
        ra_min_interval: float | None = None,
        error_rate: float = ERROR_RATE,
        error_burst: int = ERROR_BURST,
        rng: random.Random | None = None,
    ) -> None:
        self.network_id = network_id
        self.mac = addressing.gateway_mac(network_id)
        gw4 = addressing.gateway_v4(cidr)
        self.ipv4: IPv4Address = gw4.ip
        self.network4: IPv4Network = gw4.network
        self.mtu = mtu
        self.ipv6: IPv6Address | None = None
        self.network6: IPv6Network | None = None
        self.link_local = addressing.gateway_link_local(network_id)
        self.schedule: RaSchedule | None = None
        if cidr6 is not None:
            gw6 = addressing.gateway_v6(cidr6)
            self.ipv6, self.network6 = gw6.ip, gw6.network
            min_interval = (
                ra_min_interval if ra_min_interval is not None else 0.33 * ra_max_interval
            )
            config = RaConfig(
                self.network6,
                mtu,
                self.mac,
                dns6,
                default_route,
                ra_max_interval,
                max(3.0, min_interval),
            )
            self.schedule = RaSchedule(config, rng or random.Random())
        self._own6 = frozenset(a for a in (self.ipv6, self.link_local) if a is not None)
        self._broadcasts4 = (self.network4.broadcast_address, self.network4.network_address)
        self._mask4, self._net4 = int(self.network4.netmask), int(self.network4.network_address)
        self._mask6 = self._net6 = 0
        if self.network6 is not None:
            self._mask6 = int(self.network6.netmask)
            self._net6 = int(self.network6.network_address)
        self.errors = TokenBucket(error_rate, error_burst)
        """Budget of ICMP errors; its ``refused`` count is also ``drops['icmp_rate_limited']``."""
        self._rs_answers = TokenBucket(_RS_ANSWER_RATE, _RS_ANSWER_BURST)
        self.handled: Counter[str] = Counter()
        """Frames answered, by kind (``arp``, ``echo4``, ``ns``, ``rs``, ``echo6``, …)."""
        self.drops: Counter[str] = Counter()
        """Frames meant for the gateway that it refused, by reason."""
        self.ignored = 0
        """Frames not addressed to the gateway (the other local traffic it sees)."""
        self._routes4: list[Route] = []
        self._routes6: list[Route] = []
        self.internet: Callable[[bytes, Ipv4Repr, bytes, float], None] | None = None
        """Where IPv4 packets for addresses outside every route go when the network has
        internet access: ``internet(raw, packet, src_mac, now)`` (the NAT forwarder,
        :meth:`atenet.router.nat.Nat.packet`, whose output leaves through its own poll)."""
        self.internet6: Callable[[bytes, Ipv6Repr, bytes, float], None] | None = None
        """The same for IPv6 packets (:meth:`atenet.router.nat.Nat.packet6`)."""

    # --- route table --------------------------------------------------------------------------

    def add_route(
        self,
        network: IPv4Network | IPv6Network,
        forward: Forward,
        mtu: int | None = None,
        *,
        address: IPv4Address | IPv6Address | None = None,
    ) -> None:
        """Route packets sent to the gateway for addresses in ``network`` to ``forward``.

        ``mtu`` is the MTU of the network on the other side: a packet over it is fragmented
        (IPv4 without DF) or refused with fragmentation-needed / packet-too-big carrying it.
        Adding a network again replaces its route; overlapping routes are allowed and the
        longest prefix wins.

        Pings to the other network's gateway address (its first host, where
        :mod:`atenet.addressing` puts every gateway; ``address`` names another) are answered
        here, the way a router answers on any of its interfaces' addresses: the two gateways
        are one router with a leg in each network.

        Raises :class:`ValueError` for a route that overlaps the gateway's own network (those
        addresses are on the link: routing them away would black-hole the LAN) or a range that
        is never routed (loopback, link-local, multicast, ``0/8``), and :class:`TypeError` for
        anything but an ``IPv4Network`` / ``IPv6Network``. An IPv6 route of a gateway without
        IPv6 is accepted and never used: its hosts have no address to send from.
        """
        if isinstance(network, IPv4Network):
            own: IPv4Network | IPv6Network | None = self.network4
            table, floor = self._routes4, _MIN_MTU4
        elif isinstance(network, IPv6Network):
            own, table, floor = self.network6, self._routes6, ICMPV6_MIN_MTU
        else:
            raise TypeError(f"a route needs an IPv4Network or IPv6Network, not {network!r}")
        if own is not None and network.overlaps(own):
            raise ValueError(f"route to {network} overlaps this gateway's own network {own}")
        for reserved in _NEVER_ROUTED:
            if reserved.version == network.version and network.overlaps(reserved):
                raise ValueError(f"route to {network} covers {reserved}, which is never routed")
        if mtu is not None and mtu < floor:
            raise ValueError(f"MTU {mtu} of the route to {network} is below the minimum {floor}")
        broadcasts: tuple[IPv4Address, ...] = ()
        if isinstance(network, IPv4Network) and network.prefixlen <= 30:
            broadcasts = (network.network_address, network.broadcast_address)
        if address is None and (network.version == 6 or network.prefixlen <= 30):
            address = network.network_address + 1
        if address is not None and (address.version != network.version or address not in network):
            raise ValueError(f"gateway address {address} is not in {network}")
        route = Route(
            network,
            forward,
            mtu,
            int(network.network_address),
            int(network.netmask),
            broadcasts,
            address,
        )
        table[:] = [r for r in table if r.network != network] + [route]
        table.sort(key=lambda r: r.network.prefixlen, reverse=True)

    def remove_route(self, network: IPv4Network | IPv6Network) -> bool:
        """Forget the route to exactly ``network``; True if there was one."""
        for table in (self._routes4, self._routes6):
            for i, route in enumerate(table):
                if route.network == network:
                    del table[i]
                    return True
        return False

    def routes(self) -> list[Route]:
        """The route table, IPv4 then IPv6, longest prefix first within each."""
        return [*self._routes4, *self._routes6]

    @staticmethod
    def _lookup(table: list[Route], address: IPv4Address | IPv6Address) -> Route | None:
        value = int(address)
        for route in table:  # longest prefix first: the first match wins
            if value & route.mask == route.prefix:
                return route
        return None

    # --- periodic output ----------------------------------------------------------------------

    def poll_at(self) -> float | None:
        """When :meth:`poll` has something to send (``None``: never, an IPv4-only network)."""
        return None if self.schedule is None else self.schedule.next_at

    def poll(self, now: float) -> list[bytes]:
        """Frames due at ``now``: an unsolicited router advertisement to all nodes."""
        if self.schedule is None or not self.schedule.due(now):
            return []
        self.schedule.sent_at(now)
        self.handled["ra_multicast"] += 1
        return [self._ra_frame(_ALL_NODES_MAC, ALL_NODES)]

    # --- input --------------------------------------------------------------------------------

    def nat_tcp(self, data: bytes, at: int) -> bool:
        """Whether the frame at ``data[at:]`` is a TCP packet this gateway sends to the
        internet forwarder, decided on raw bytes (the forwarder's fast path,
        :meth:`atenet.router.nat.Nat.tcp_frame`): to the gateway's MAC from a unicast MAC,
        IPv4 without options and not a fragment, or IPv6 with TCP as its first next header,
        not a SYN (those may create a flow), TTL / hop limit above 1, for an address outside
        this network and every route (and not multicast, IPv4 0/8, IPv6 link-local).
        Counted as ``nat4`` / ``nat6`` like :meth:`frame`'s path. False: anything else,
        which :meth:`frame` handles as always. Why: :meth:`frame` parses the packet into
        objects first; for the bytes of a bulk flow through the NAT that parse (and the
        forwarder's second one) cost most of the node's time."""
        if data[at : at + 6] != self.mac or data[at + 6] & 1 or data[at + 6 : at + 12] == self.mac:
            return False
        etype = data[at + 12 : at + 14]
        if etype == b"\x08\x00":
            if self.internet is None or len(data) < at + 54 or data[at + 14] != 0x45:
                return False
            if data[at + 23] != PROTO_TCP or data[at + 22] <= 1 or data[at + 20] & 0x3F:
                return False
            if data[at + 21] or data[at + 30] >= 224 or data[at + 30] == 0 or data[at + 47] & 2:
                return False  # ... or a SYN, which may create a flow: the general path
            dst = int.from_bytes(data[at + 30 : at + 34], "big")
            if dst & self._mask4 == self._net4:
                return False
            for route in self._routes4:
                if dst & route.mask == route.prefix:
                    return False
            self.handled["nat4"] += 1
            return True
        if etype == b"\x86\xdd":
            if self.internet6 is None or self.network6 is None or len(data) < at + 74:
                return False
            if data[at + 14] >> 4 != 6 or data[at + 20] != PROTO_TCP or data[at + 21] <= 1:
                return False
            if data[at + 67] & 2:  # a SYN
                return False
            if data[at + 38] == 0xFF or (data[at + 38] == 0xFE and data[at + 39] & 0xC0 == 0x80):
                return False
            dst6 = int.from_bytes(data[at + 38 : at + 54], "big")
            if dst6 & self._mask6 == self._net6:
                return False
            for route in self._routes6:
                if dst6 & route.mask == route.prefix:
                    return False
            self.handled["nat6"] += 1
            return True
        return False

    def frame(self, frame: bytes, now: float) -> list[bytes]:
        """Answer one frame from a local port; returns the frames to send to local ports."""
        if len(frame) < 14:
            self.drops["short_frame"] += 1
            return []
        dst = frame[0:6]
        if dst != self.mac and not dst[0] & 1:
            self.ignored += 1  # unicast to someone else: the common case, decided on 6 bytes
            return []
        src = frame[6:12]
        etype = (frame[12] << 8) | frame[13]
        if etype == ETHERTYPE_VLAN:
            self.drops["vlan_tagged"] += 1
            return []
        if not is_unicast_mac(src) or src == self.mac:
            self.drops["bad_source_mac"] += 1
            return []
        link_multicast = dst != self.mac
        try:
            if etype == ETHERTYPE_ARP:
                return self._arp(frame[14:], src)
            if etype == ETHERTYPE_IPV4:
                return self._ipv4(frame[14:], src, link_multicast, now)
            if etype == ETHERTYPE_IPV6:
                return self._ipv6(frame[14:], src, link_multicast, now)
        except (DecodeError, ValueError):  # ValueError: a field no builder can re-encode
            self.drops["malformed"] += 1
            return []
        if link_multicast:
            self.ignored += 1
        else:
            self.drops["ethertype"] += 1
        return []

    # --- ARP ----------------------------------------------------------------------------------

    def _arp(self, body: bytes, src: bytes) -> list[bytes]:
        arp = ArpRepr.parse(body)
        if arp.sender_ip == self.ipv4:
            # A request, announcement or reply from someone claiming our address: a conflict,
            # never answered (answering a gratuitous ARP would just repeat the fight).
            self.drops["arp_conflict"] += 1
            return []
        if arp.target_ip != self.ipv4:
            self.ignored += 1
            return []
        if arp.operation != ARP_REQUEST:
            # A reply to the gateway: an answer to the neighbour cache's request, which reads
            # it there (router/neighbours.py); nothing for the gateway itself to say.
            self.ignored += 1
            return []
        if arp.sender_mac != src:
            self.drops["arp_mac_mismatch"] += 1
            return []
        sender_ip = arp.sender_ip
        if not sender_ip.is_unspecified and sender_ip not in self.network4:
            self.drops["arp_foreign_sender"] += 1
            return []
        # A probe (sender 0.0.0.0, RFC 5227) for our address is answered too: that defends it.
        self.handled["arp"] += 1
        return [arp_reply(self.mac, self.ipv4, src, sender_ip)]

    # --- IPv4 ---------------------------------------------------------------------------------

    def _ipv4(self, raw: bytes, src: bytes, link_multicast: bool, now: float) -> list[bytes]:
        packet = Ipv4Repr.parse(raw)
        if packet.dst == self.ipv4:
            return self._to_gateway4(packet, src, link_multicast)
        if link_multicast:
            self.ignored += 1  # broadcast / multicast traffic of the LAN, not ours to route
            return []
        return self._route4(raw, packet, src, now)

    def _to_gateway4(
        self,
        packet: Ipv4Repr,
        src: bytes,
        link_multicast: bool,
        address: IPv4Address | None = None,
    ) -> list[bytes]:
        """A packet for the gateway: ping answered (from ``address``, default its own)."""
        if packet.protocol != PROTO_ICMP:
            self.drops["ipv4_unhandled"] += 1  # DHCP (UDP) is served by its own module
            return []
        if packet.more_fragments or packet.fragment_offset:
            self.drops["fragment"] += 1
            return []
        icmp = IcmpRepr.parse(packet.payload)
        if icmp.type != ICMP_ECHO_REQUEST or icmp.code != 0:
            self.drops["icmp_unhandled"] += 1
            return []
        # Not to a broadcast (no smurf amplifier), and only to a source that is one host. Any
        # unicast source is fine: pings routed from other networks will arrive here too.
        if link_multicast:
            self.drops["echo_broadcast"] += 1
            return []
        if not is_unicast_v4(packet.src) or packet.src in self._broadcasts4:
            self.drops["echo_bad_source"] += 1
            return []
        self.handled["echo4"] += 1
        return [
            icmp_echo_reply(
                self.mac, src, address or self.ipv4, packet.src, icmp.ident, icmp.seq, icmp.payload
            )
        ]

    def _route4(self, raw: bytes, packet: Ipv4Repr, src: bytes, now: float) -> list[bytes]:
        """A packet sent to the gateway's MAC for another address: what a router owes it.

        A destination in a route's network is forwarded (:meth:`_forward4`). Without a route:
        TTL exhausted → time exceeded, otherwise → network unreachable. Packets for the LAN
        itself are dropped (the sender should have used ARP; a router has nothing to add).
        """
        if packet.dst in self.network4:
            self.drops["ipv4_to_own_network"] += 1
            return []
        route = self._lookup(self._routes4, packet.dst) if self._routes4 else None
        if route is not None:
            return self._forward4(raw, packet, src, route, now)
        if self.internet is not None and packet.ttl > 1:
            self.handled["nat4"] += 1
            self.internet(raw, packet, src, now)
            return []
        if not may_send_error_v4(packet, False, self._broadcasts4):
            self.drops["no_route_silent"] += 1
            return []
        if packet.ttl <= 1:
            reason, error = "ttl_exceeded", icmp_time_exceeded(raw, self.ipv4)
        else:
            reason, error = "no_route", icmp_dest_unreachable(raw, self.ipv4)
        self.drops[reason] += 1
        if not self.errors.take(now):
            self.drops["icmp_rate_limited"] += 1
            return []
        self.handled["icmp_error4"] += 1
        return [ethernet_frame(src, self.mac, ETHERTYPE_IPV4, error)]

    def _forward4(
        self, raw: bytes, packet: Ipv4Repr, src: bytes, route: Route, now: float
    ) -> list[bytes]:
        """Hand ``packet`` to ``route`` with its TTL lowered, or answer why not.

        Only packets from this network's own hosts are routed: the return route covers only
        this CIDR, and a forged source would make the other network's hosts answer (or
        attack) someone who never asked.
        """
        if packet.src not in self.network4 or packet.src in self._broadcasts4:
            self.drops["foreign_source"] += 1
            return []
        if packet.dst == route.address:
            assert isinstance(route.address, IPv4Address)
            return self._to_gateway4(packet, src, False, route.address)
        if packet.dst in route.broadcasts:
            self.drops["directed_broadcast"] += 1
            return []
        if packet.ttl <= 1:
            return self._error4(
                packet, src, now, "ttl_exceeded", lambda: icmp_time_exceeded(raw, self.ipv4)
            )
        total = IPV4_HEADER_LEN + len(packet.options) + len(packet.payload)
        body = raw[:total]  # without the Ethernet padding of a short frame
        if route.mtu is not None and total > route.mtu:
            if packet.dont_fragment:
                mtu = route.mtu
                return self._error4(
                    packet,
                    src,
                    now,
                    "frag_needed",
                    lambda: icmp_dest_unreachable(raw, self.ipv4, ICMP_FRAG_NEEDED, mtu),
                )
            pieces = fragment_v4(decrement_ttl(body), route.mtu)
            self.handled["fragmented4"] += 1
        else:
            pieces = [decrement_ttl(body)]
        for piece in pieces:
            route.forward(piece, packet.dst, now)
        self.handled["routed4"] += 1
        return []

    def _error4(
        self, packet: Ipv4Repr, src: bytes, now: float, reason: str, error: Callable[[], bytes]
    ) -> list[bytes]:
        """Send ``error`` about a packet we would have routed, if RFC 1812 and the budget
        allow; ``reason`` counts the packet either way."""
        self.drops[reason] += 1
        if not may_send_error_v4(packet, False, self._broadcasts4):
            self.drops["error_suppressed"] += 1
            return []
        if not self.errors.take(now):
            self.drops["icmp_rate_limited"] += 1
            return []
        self.handled["icmp_error4"] += 1
        return [ethernet_frame(src, self.mac, ETHERTYPE_IPV4, error())]

    # --- IPv6 ---------------------------------------------------------------------------------

    def _ipv6(self, raw: bytes, src: bytes, link_multicast: bool, now: float) -> list[bytes]:
        if self.network6 is None:
            self.ignored += 1
            return []
        packet = Ipv6Repr.parse(raw)
        proto, upper = packet.upper_layer()
        dst = packet.dst
        if dst in self._own6 or dst.is_multicast:
            if proto != NEXT_HEADER_ICMPV6:
                if dst.is_multicast:
                    self.ignored += 1
                else:
                    self.drops["ipv6_unhandled"] += 1
                return []
            icmp = Icmpv6Repr.parse(upper, packet.src, dst)
            if icmp.type == ICMPV6_NEIGHBOR_SOLICIT:
                return self._ns(packet, icmp, src)
            if icmp.type == ICMPV6_ROUTER_SOLICIT:
                return self._rs(packet, icmp, src, now)
            if icmp.type == ICMPV6_ECHO_REQUEST and dst in self._own6:
                return self._echo6(packet, icmp, src, link_multicast)
            if icmp.type == ICMPV6_NEIGHBOR_ADVERT:
                # An answer to the neighbour cache's solicitation (router/neighbours.py reads
                # it): nothing for the gateway to say, and not a fault of the sender.
                self.ignored += 1
                return []
            if dst.is_multicast:
                self.ignored += 1
            else:
                self.drops["icmpv6_unhandled"] += 1
            return []
        if link_multicast:
            self.ignored += 1
            return []
        return self._route6(raw, packet, src, now)

    def _ns(self, packet: Ipv6Repr, icmp: Icmpv6Repr, src: bytes) -> list[bytes]:
        ns = NeighborSolicit.from_icmp(icmp)
        if ns.target not in self._own6:
            self.ignored += 1  # someone else's address, DAD probes of clients included
            return []
        if packet.hop_limit != ND_HOP_LIMIT:
            self.drops["nd_hop_limit"] += 1
            return []
        if packet.src == _UNSPECIFIED6:
            if ns.source_mac is not None or not packet.dst.is_multicast:
                self.drops["nd_invalid"] += 1
                return []
            # Someone probes (DAD) for OUR address: defend it to all nodes (RFC 4861 §7.2.4).
            self.handled["ns_dad_defended"] += 1
            return [self._na(ns.target, _ALL_NODES_MAC, ALL_NODES, solicited=False)]
        if packet.src.is_multicast:
            self.drops["nd_invalid"] += 1
            return []
        reply_mac = ns.source_mac or src
        self.handled["ns"] += 1
        return [self._na(ns.target, reply_mac, packet.src, solicited=True)]

    def _na(
        self, target: IPv6Address, dst_mac: bytes, dst_ip: IPv6Address, *, solicited: bool
    ) -> bytes:
        message = NeighborAdvert(target, self.mac, True, solicited, True).to_icmp()
        return icmpv6_frame(message, self.mac, dst_mac, target, dst_ip, ND_HOP_LIMIT)

    def _rs(self, packet: Ipv6Repr, icmp: Icmpv6Repr, src: bytes, now: float) -> list[bytes]:
        if packet.hop_limit != ND_HOP_LIMIT or icmp.code != 0:
            self.drops["nd_invalid"] += 1
            return []
        options = nd_options(icmp.payload)  # RS: reserved word in ``rest``, then options
        source_mac = options.get(_OPT_SOURCE_LLADDR)
        assert self.schedule is not None
        if packet.src == _UNSPECIFIED6:
            if source_mac is not None:
                self.drops["nd_invalid"] += 1  # RFC 4861 §6.1.1
                return []
            # No address to answer to: bring the next multicast advertisement forward.
            self.handled["rs_multicast"] += 1
            self.schedule.solicit(now)
            return []
        if source_mac is not None and len(source_mac) != 6:
            self.drops["nd_invalid"] += 1
            return []
        if not self._rs_answers.take(now):
            self.drops["rs_rate_limited"] += 1
            return []
        self.handled["rs"] += 1
        return [self._ra_frame(source_mac or src, packet.src)]

    def _ra_frame(self, dst_mac: bytes, dst_ip: IPv6Address) -> bytes:
        assert self.schedule is not None
        routes = tuple(r.network for r in self._routes6 if isinstance(r.network, IPv6Network))
        if len(routes) > MAX_ROUTE_INFO:
            self.drops["ra_routes_left_out"] += len(routes) - MAX_ROUTE_INFO
        message = router_advert(self.schedule.config, routes)
        return icmpv6_frame(message, self.mac, dst_mac, self.link_local, dst_ip, ND_HOP_LIMIT)

    def _echo6(
        self, packet: Ipv6Repr, icmp: Icmpv6Repr, src: bytes, link_multicast: bool
    ) -> list[bytes]:
        if link_multicast or icmp.code != 0:
            self.drops["icmpv6_unhandled"] += 1
            return []
        if packet.src.is_unspecified or packet.src.is_multicast:
            self.drops["echo_bad_source"] += 1
            return []
        self.handled["echo6"] += 1
        return [
            icmpv6_echo_reply(
                self.mac, src, packet.dst, packet.src, icmp.ident, icmp.seq, icmp.payload
            )
        ]

    def _route6(self, raw: bytes, packet: Ipv6Repr, src: bytes, now: float) -> list[bytes]:
        """As :meth:`_route4` for IPv6: a route's destination is forwarded
        (:meth:`_forward6`); else hop limit exhausted → time exceeded, otherwise no route."""
        assert self.network6 is not None
        if packet.dst in self.network6 or packet.dst.is_link_local:
            self.drops["ipv6_to_own_network"] += 1
            return []
        route = self._lookup(self._routes6, packet.dst) if self._routes6 else None
        if route is not None:
            return self._forward6(raw, packet, src, route, now)
        if self.internet6 is not None and packet.hop_limit > 1:
            self.handled["nat6"] += 1
            self.internet6(raw, packet, src, now)
            return []
        expired = packet.hop_limit <= 1
        kind = ICMPV6_TIME_EXCEEDED if expired else 1
        if not may_send_error_v6(packet, False, kind):
            self.drops["no_route_silent"] += 1
            return []
        source = self.link_local if packet.src.is_link_local else self.ipv6
        assert source is not None
        if expired:
            reason, error = "hop_limit_exceeded", icmpv6_time_exceeded(raw, source)
        else:
            reason, error = "no_route", icmpv6_dest_unreachable(raw, source)
        self.drops[reason] += 1
        if not self.errors.take(now):
            self.drops["icmp_rate_limited"] += 1
            return []
        self.handled["icmp_error6"] += 1
        return [ethernet_frame(src, self.mac, ETHERTYPE_IPV6, error)]

    def _forward6(
        self, raw: bytes, packet: Ipv6Repr, src: bytes, route: Route, now: float
    ) -> list[bytes]:
        """As :meth:`_forward4`; IPv6 routers never fragment, a packet over the other side's
        MTU gets packet-too-big (RFC 8200 §5). A link-local source is never forwarded
        (RFC 4291 §2.5.6) and counts as ``foreign_source`` like any address off this /64."""
        assert self.network6 is not None and self.ipv6 is not None
        if packet.src not in self.network6:
            self.drops["foreign_source"] += 1
            return []
        if packet.dst == route.address:
            proto, upper = packet.upper_layer()
            if proto == NEXT_HEADER_ICMPV6:
                icmp = Icmpv6Repr.parse(upper, packet.src, packet.dst)
                if icmp.type == ICMPV6_ECHO_REQUEST:
                    return self._echo6(packet, icmp, src, False)  # from the address pinged
            self.drops["ipv6_unhandled"] += 1
            return []
        body = raw[: IPV6_HEADER_LEN + len(packet.payload)]  # without Ethernet padding
        source = self.ipv6
        if packet.hop_limit <= 1:
            return self._error6(
                packet,
                src,
                now,
                "hop_limit_exceeded",
                ICMPV6_TIME_EXCEEDED,
                lambda: icmpv6_time_exceeded(body, source),
            )
        if route.mtu is not None and len(body) > route.mtu:
            mtu = route.mtu
            return self._error6(
                packet,
                src,
                now,
                "packet_too_big",
                ICMPV6_PACKET_TOO_BIG,
                lambda: icmpv6_packet_too_big(body, source, mtu),
            )
        route.forward(decrement_hop_limit(body), packet.dst, now)
        self.handled["routed6"] += 1
        return []

    def _error6(
        self,
        packet: Ipv6Repr,
        src: bytes,
        now: float,
        reason: str,
        kind: int,
        error: Callable[[], bytes],
    ) -> list[bytes]:
        """As :meth:`_error4` with RFC 4443's rules."""
        self.drops[reason] += 1
        if not may_send_error_v6(packet, False, kind):
            self.drops["error_suppressed"] += 1
            return []
        if not self.errors.take(now):
            self.drops["icmp_rate_limited"] += 1
            return []
        self.handled["icmp_error6"] += 1
        return [ethernet_frame(src, self.mac, ETHERTYPE_IPV6, error())]
