"""IPv6 router advertisements (RFC 4861 §4.2) and when to send them (§6.2.4, §6.2.6).

What the gateway advertises is fixed by the network: its /64 with the on-link and autonomous
flags (so hosts configure an address by SLAAC), the network's MTU (so hosts never send frames
the overlay cannot carry), DNS servers (RDNSS, RFC 8106), and the gateway's MAC (source
link-layer option, saving each host a neighbour solicitation). The router lifetime is 0 — "I am
not a default router" — unless the network gives internet access: a host that installed a
default route through a gateway that cannot reach the internet would black-hole its traffic
instead of falling back to another interface. The networks the gateway routes to go in Route
Information options (RFC 4191) either way, so a host reaches them without a default route
(Linux accepts them when ``accept_ra_rt_info_max_plen`` is at least their prefix length; its
default, 0, ignores them — docs/router.md).

:class:`RaSchedule` is the timing: unsolicited advertisements at a random interval in
``[min_interval, max_interval]`` (the first three at most 16 s apart, so a new host learns
fast), and never two multicast advertisements less than 3 s apart.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

from atenet.wire.icmpv6 import ICMPV6_ROUTER_ADVERT, Icmpv6Repr

__all__ = [
    "MAX_INITIAL_RTR_ADVERTISEMENTS",
    "MAX_INITIAL_RTR_ADVERT_INTERVAL",
    "MIN_DELAY_BETWEEN_RAS",
    "RaConfig",
    "RaSchedule",
    "router_advert",
]

MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MIN_DELAY_BETWEEN_RAS = 3.0
"""RFC 4861 §10 router constants."""

OPT_SOURCE_LLADDR = 1
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_ROUTE_INFO = 24

MAX_ROUTE_INFO = 32
"""Route Information options in one advertisement at most (24 bytes each): the message stays
well under the IPv6 minimum MTU of 1,280 bytes whatever the number of routes."""

_PREFIX_ON_LINK = 0x80
_PREFIX_AUTONOMOUS = 0x40


@dataclass(slots=True)
class RaConfig:
    """What goes into an advertisement; the defaults are RFC 4861 §6.2.1's.

    ``max_interval`` / ``min_interval`` are MaxRtrAdvInterval / MinRtrAdvInterval (600 s and
    0.33 × that). ``router_lifetime`` is used only with ``default_route``; the RFC default is
    3 × MaxRtrAdvInterval. Prefix lifetimes are AdvValidLifetime (30 days) and
    AdvPreferredLifetime (7 days). The RDNSS lifetime is 3 × MaxRtrAdvInterval (RFC 8106 §5.1).
    """

    prefix: IPv6Network
    mtu: int
    source_mac: bytes
    dns: tuple[IPv6Address, ...] = (IPv6Address("2001:4860:4860::8888"),)
    default_route: bool = False
    max_interval: float = 600.0
    min_interval: float = 198.0
    hop_limit: int = 64
    valid_lifetime: int = 2_592_000
    preferred_lifetime: int = 604_800

    def __post_init__(self) -> None:
        if not 4 <= self.max_interval <= 1800:
            raise ValueError(f"max_interval {self.max_interval} outside RFC 4861's 4..1800 s")
        if not 3 <= self.min_interval <= 0.75 * self.max_interval:
            raise ValueError(
                f"min_interval {self.min_interval} outside 3..0.75 * max_interval (RFC 4861)"
            )

    @property
    def router_lifetime(self) -> int:
        """Seconds hosts may use us as default router: 0 (never) without ``default_route``."""
        return min(9000, int(3 * self.max_interval)) if self.default_route else 0


def router_advert(config: RaConfig, routes: tuple[IPv6Network, ...] = ()) -> Icmpv6Repr:
    """The ICMPv6 router advertisement message for ``config`` (emit it with its addresses),
    with a Route Information option for each of ``routes`` (the first :data:`MAX_ROUTE_INFO`):
    the networks the gateway routes to, valid as long as the RDNSS servers."""
    rest = (config.hop_limit << 24) | config.router_lifetime  # flags M=O=0: no DHCPv6
    body = bytearray(struct.pack("!II", 0, 0))  # reachable time, retrans timer: unspecified
    body += bytes((OPT_SOURCE_LLADDR, 1)) + config.source_mac
    body += struct.pack("!BBHI", OPT_MTU, 1, 0, config.mtu)
    body += struct.pack(
        "!BBBBIII16s",
        OPT_PREFIX_INFO,
        4,
        config.prefix.prefixlen,
        _PREFIX_ON_LINK | _PREFIX_AUTONOMOUS,
        config.valid_lifetime,
        config.preferred_lifetime,
        0,
        config.prefix.network_address.packed,
    )
    if config.dns:
        lifetime = int(3 * config.max_interval)
        body += struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(config.dns), 0, lifetime)
        for server in config.dns:
            body += server.packed
    for route in routes[:MAX_ROUTE_INFO]:
        body += route_info(route, int(3 * config.max_interval))
    return Icmpv6Repr(ICMPV6_ROUTER_ADVERT, 0, rest, bytes(body))


def route_info(network: IPv6Network, lifetime: int) -> bytes:
    """One Route Information option (RFC 4191 §2.3), medium preference: the prefix is cut to
    the 0, 8 or 16 bytes its length needs (option length 1, 2 or 3 units of 8 bytes)."""
    octets = 0 if network.prefixlen == 0 else 8 if network.prefixlen <= 64 else 16
    head = struct.pack("!BBBBI", OPT_ROUTE_INFO, 1 + octets // 8, network.prefixlen, 0, lifetime)
    return head + network.network_address.packed[:octets]


@dataclass(slots=True)
class RaSchedule:
    """When the next multicast advertisement is due (RFC 4861 §6.2.4 and §6.2.6).

    ``next_at`` starts at 0: the first :meth:`due` call sends one at once, so a gateway that
    comes up announces itself. A solicitation from a host without an address (it cannot get a
    unicast answer) asks for a multicast one via :meth:`solicit`, which honours the 3 s minimum
    gap instead of answering each solicitation.
    """

    config: RaConfig
    rng: random.Random = field(default_factory=random.Random)
    next_at: float = 0.0
    last_sent: float | None = None
    sent: int = 0

    def due(self, now: float) -> bool:
        """True when a multicast advertisement should go out now; call :meth:`sent_at` then."""
        return now >= self.next_at

    def sent_at(self, now: float) -> None:
        """Record a multicast advertisement sent at ``now`` and draw the next time."""
        self.last_sent = now
        self.sent += 1
        interval = self.rng.uniform(self.config.min_interval, self.config.max_interval)
        if self.sent <= MAX_INITIAL_RTR_ADVERTISEMENTS:
            interval = min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL)
        self.next_at = now + interval

    def solicit(self, now: float) -> None:
        """A host asked (router solicitation): bring the next multicast one forward."""
        soonest = now if self.last_sent is None else self.last_sent + MIN_DELAY_BETWEEN_RAS
        self.next_at = min(self.next_at, max(now, soonest))
