"""The neighbour cache of one gateway: how routed packets find their host's MAC (sans-I/O).

Routing between networks hands a packet to the gateway of the network it is for
(:meth:`Gateway.add_route <atenet.router.gateway.Gateway.add_route>`); that gateway must put
it in a frame for the destination host, so it needs the host's MAC, which only the host knows.
:class:`Neighbours` asks the way any router does — ARP (RFC 826) for IPv4, neighbour
solicitation (RFC 4861 §7.2) for IPv6 — holds the packets while it waits, and remembers the
answers. ``docs/router.md`` ("Routing between networks") has the rules; in short:

* **Cache.** At most ``max_entries`` neighbours, least recently used evicted first (counted).
  An entry is trusted for ``reachable`` seconds after the host last proved it is there (an
  ARP or ND message from it). After that it is *stale*: packets still go to the cached MAC —
  no traffic stalls — while a unicast request to that MAC asks again, at most one per
  ``retry`` seconds; an entry whose ``max_probes`` requests all went unanswered is dropped and
  the next packet resolves from scratch. An entry not confirmed for ``stale`` seconds is
  forgotten.
* **Queue.** Packets for an unresolved address wait: at most ``pending_per_dst`` per address,
  ``max_pending`` packets and ``max_pending_bytes`` bytes in all (each bound counted when hit).
* **Requests.** A broadcast ARP request / multicast solicitation at once, then again every
  ``retry`` seconds while unanswered, ``max_probes`` in all — never more than one per address
  per ``retry`` seconds, whatever the traffic — and at most ``request_rate`` per second for the
  whole gateway, so a host scanning the other network cannot flood it with broadcasts. After
  ``max_probes × retry`` seconds unanswered the queued packets are dropped (``unresolved``) and,
  when an ``unreachable`` callback is given, each gets an ICMP host / address unreachable for
  its sender (within the gateway's ICMP budget and RFC 1812 / RFC 4443 rules).
* **Learning.** :meth:`Neighbours.learn` reads every frame seen in the network (from local
  ports and from peers alike: it only listens, never answers). A reply addressed to the gateway
  (or a request / solicitation *for* the gateway) creates an entry; any other ARP or ND message
  naming a sender only refreshes an entry that exists or an address being resolved. Hosts are
  trusted as on any LAN: whoever speaks for an address in ARP or ND is believed.
* **Snooped addresses.** With a ``snooped`` lookup (the node's ARP/ND snooping table,
  :mod:`atenet.switch.snoop`), an address with no entry is first looked up there: a claim
  heard within ``reachable`` seconds becomes an entry at once (``snooped``) and the packet
  leaves without a broadcast request; older claims are not trusted and the gateway asks.

Nothing here raises on input: malformed frames count ``drops["malformed"]`` and are dropped.
Time is the caller's ``now`` (monotonic seconds).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from atenet.errors import DecodeError
from atenet.ratelimit import TokenBucket
from atenet.router.forward import (
    ICMP_HOST_UNREACHABLE,
    ICMPV6_ADDR_UNREACHABLE,
    icmp_dest_unreachable,
    icmpv6_dest_unreachable,
    may_send_error_v4,
    may_send_error_v6,
)
from atenet.router.gateway import Gateway
from atenet.wire.arp import ARP_REQUEST, ArpRepr, arp_request
from atenet.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ethernet_frame,
    is_unicast_mac,
)
from atenet.wire.icmpv6 import (
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    ND_HOP_LIMIT,
    Icmpv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    neighbor_solicitation,
)
from atenet.wire.ipv4 import Ipv4Repr
from atenet.wire.ipv6 import IPV6_HEADER_LEN, NEXT_HEADER_ICMPV6, Ipv6Repr

__all__ = ["Neighbours"]

Address = IPv4Address | IPv6Address
Unreachable = Callable[[bytes, float], None]
"""``unreachable(icmp_packet, now)``: an ICMP error (a whole IP packet from this gateway's
address to the sender of a packet that could not be delivered), for the caller to route back."""

Snooped = Callable[[Address], tuple[bytes, float] | None]
"""``snooped(address)``: the MAC that last claimed ``address`` and how many seconds ago, or
None (the switch's ARP/ND snooping table, :mod:`atenet.switch.snoop`)."""

MAX_ENTRIES = 1024
MAX_PENDING = 256
MAX_PENDING_BYTES = 1 << 20
PENDING_PER_DST = 4
REACHABLE = 60.0
STALE = 600.0
RETRY = 1.0
MAX_PROBES = 3
REQUEST_RATE, REQUEST_BURST = 50.0, 50
"""Defaults: RFC 4861 §10's MAX_MULTICAST_SOLICIT (3) and RETRANS_TIMER (1 s); 60 s reachable
(Linux uses 15-45 s, but a host on an overlay rarely changes MAC and every refresh is a frame);
requests at 50/s for the gateway."""

_ZERO_MAC = b"\x00" * 6
_ICMPV6_OFFSET = 14 + IPV6_HEADER_LEN


@dataclass(slots=True)
class _Entry:
    """A resolved neighbour: ``mac``, last heard from at ``confirmed``."""

    mac: bytes
    confirmed: float
    probes: int = 0
    """Refresh requests sent since the last confirmation (only once stale)."""
    probed_at: float = float("-inf")


@dataclass(slots=True)
class _Pending:
    """An address being resolved and the packets waiting for it (oldest first)."""

    created: float
    packets: list[bytes] = field(default_factory=list)
    tries: int = 0
    asked_at: float = float("-inf")


class Neighbours:
    """The neighbour cache of ``gateway``, for sending routed packets into its network.

    ``send(packet, dst, now)`` → frames to inject into the network (the packet itself, and/or
    an ARP request / neighbour solicitation); ``learn(frame, now)`` → the queued packets a frame
    just resolved; ``poll_at()`` / ``poll(now)`` → the retransmitted requests and give-ups due
    (optional: ``send`` and ``learn`` do the same work lazily, the timer only makes the second
    and third request and the unreachable errors come on time without further traffic).
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        max_entries: int = MAX_ENTRIES,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        pending_per_dst: int = PENDING_PER_DST,
        reachable: float = REACHABLE,
        stale: float = STALE,
        retry: float = RETRY,
        max_probes: int = MAX_PROBES,
        request_rate: float = REQUEST_RATE,
        request_burst: int = REQUEST_BURST,
        unreachable: Unreachable | None = None,
        snooped: Snooped | None = None,
    ) -> None:
        if min(max_entries, max_pending, pending_per_dst, max_probes) < 1:
            raise ValueError("neighbour cache bounds must be at least 1")
        if retry <= 0 or reachable <= 0:
            raise ValueError("retry and reachable times must be positive")
        self.gateway = gateway
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.pending_per_dst = pending_per_dst
        self.reachable = reachable
        self.stale = max(stale, reachable)
        self.retry = retry
        self.max_probes = max_probes
        self.unreachable = unreachable
        self.snooped = snooped
        self._entries: OrderedDict[Address, _Entry] = OrderedDict()
        self._pending: dict[Address, _Pending] = {}  # insertion order = creation = deadline
        self._queued = 0
        self._queued_bytes = 0
        self._requests = TokenBucket(request_rate, request_burst)
        self.counters: Counter[str] = Counter()
        """What happened, by kind: ``sent``, ``queued``, ``requests``, ``refresh_requests``,
        ``resolved``, ``snooped``, ``learned``, ``confirmed``, ``changed``, ``evicted``,
        ``expired``, ``lost``, ``failed``, ``icmp_unreachable``, ``ignored``."""
        self.drops: Counter[str] = Counter()
        """Packets and frames refused or lost, by reason (``malformed``, ``not_on_link``,
        ``queue_full``, ``queue_full_dst``, ``unresolved``, ``request_rate_limited``, …)."""
        gw = gateway
        self._own4 = gw.ipv4
        self._broadcasts4: tuple[IPv4Address, ...] = ()
        if gw.network4.prefixlen <= 30:
            self._broadcasts4 = (gw.network4.network_address, gw.network4.broadcast_address)
        self._own6 = frozenset(a for a in (gw.ipv6, gw.link_local) if a is not None)

    # --- introspection ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Resolved neighbours held (stale ones included)."""
        return len(self._entries)

    @property
    def queued(self) -> int:
        """Packets waiting for an address to resolve."""
        return self._queued

    @property
    def resolving(self) -> int:
        """Addresses being resolved."""
        return len(self._pending)

    def status(self) -> dict[str, object]:
        """Sizes and counters, JSON-ready (for ``/api/status`` and the metrics)."""
        return {
            "entries": len(self._entries),
            "resolving": len(self._pending),
            "queued": self._queued,
            "counters": dict(self.counters),
            "drops": dict(self.drops),
        }

    def lookup(self, address: Address) -> bytes | None:
        """The cached MAC of ``address`` (fresh or stale), without touching the LRU order."""
        entry = self._entries.get(address)
        return entry.mac if entry is not None else None

    # --- sending ------------------------------------------------------------------------------

    def send(self, packet: bytes, dst: Address, now: float) -> list[bytes]:
        """Frames that take ``packet`` (an IP packet, TTL already lowered) to ``dst``.

        ``dst`` must be a host address of the gateway's network (not the gateway's own, not
        the network or broadcast address); anything else is dropped as ``not_on_link``.
        """
        if not packet or packet[0] >> 4 != dst.version:
            self.drops["malformed"] += 1
            return []
        if not self._on_link(dst):
            self.drops["not_on_link"] += 1
            return []
        self._reap(now)
        entry = self._entries.get(dst)
        if entry is not None:
            age = now - entry.confirmed
            if age > self.stale:
                del self._entries[dst]
                self.counters["expired"] += 1
            elif age > self.reachable and entry.probes >= self.max_probes:
                if now - entry.probed_at >= self.retry:
                    # Every refresh went unanswered: the host left or changed its MAC.
                    del self._entries[dst]
                    self.counters["lost"] += 1
                else:
                    return self._deliver(packet, dst, entry, now)
            else:
                return self._deliver(packet, dst, entry, now)
        if self.snooped is not None and dst not in self._pending:
            found = self.snooped(dst)
            if found is not None and 0 <= found[1] <= self.reachable and is_unicast_mac(found[0]):
                entry = _Entry(found[0], now - found[1])
                self._store(dst, entry)
                self.counters["snooped"] += 1
                return self._deliver(packet, dst, entry, now)
        return self._queue(packet, dst, now)

    def _deliver(self, packet: bytes, dst: Address, entry: _Entry, now: float) -> list[bytes]:
        self._entries.move_to_end(dst)
        self.counters["sent"] += 1
        out = [self._frame(packet, dst, entry.mac)]
        if (
            now - entry.confirmed > self.reachable
            and entry.probes < self.max_probes
            and now - entry.probed_at >= self.retry
        ):
            # Stale: keep delivering, and ask the host itself (unicast) to confirm.
            entry.probes += 1
            entry.probed_at = now
            self.counters["refresh_requests"] += 1
            out.append(self._request(dst, entry.mac))
        return out

    def _queue(self, packet: bytes, dst: Address, now: float) -> list[bytes]:
        pending = self._pending.get(dst)
        if self._queued >= self.max_pending or self._queued_bytes + len(packet) > (
            self.max_pending_bytes
        ):
            self.drops["queue_full"] += 1
        elif pending is not None and len(pending.packets) >= self.pending_per_dst:
            self.drops["queue_full_dst"] += 1
        else:
            if pending is None:
                pending = self._pending[dst] = _Pending(now)
            pending.packets.append(packet)
            self._queued += 1
            self._queued_bytes += len(packet)
            self.counters["queued"] += 1
        if pending is None:
            return []  # nothing queued, nothing to resolve for: no request either
        return self._ask(dst, pending, now)

    def _ask(self, dst: Address, pending: _Pending, now: float) -> list[bytes]:
        """The next broadcast request for ``dst`` if one is due (throttled per address and in
        total)."""
        if pending.tries >= self.max_probes or now - pending.asked_at < self.retry:
            return []
        if not self._requests.take(now):
            self.drops["request_rate_limited"] += 1
            pending.asked_at = now  # try again in ``retry`` s, not in a busy loop of polls
            return []
        pending.tries += 1
        pending.asked_at = now
        self.counters["requests"] += 1
        return [self._request(dst, None)]

    # --- timers -------------------------------------------------------------------------------

    def poll_at(self) -> float | None:
        """When :meth:`poll` has work: the next retransmission or give-up (``None``: none)."""
        due: float | None = None
        for pending in self._pending.values():
            at = self._deadline(pending)
            if pending.tries < self.max_probes:
                at = min(at, max(pending.asked_at + self.retry, pending.created))
            due = at if due is None else min(due, at)
        return due

    def poll(self, now: float) -> list[bytes]:
        """Requests due at ``now`` (and the give-ups, reported through ``unreachable``)."""
        self._reap(now)
        out: list[bytes] = []
        for dst, pending in self._pending.items():
            out += self._ask(dst, pending, now)
        return out

    def _deadline(self, pending: _Pending) -> float:
        return pending.created + self.max_probes * self.retry

    def _reap(self, now: float) -> None:
        """Give up on addresses unanswered for ``max_probes × retry`` seconds. Deadlines follow
        creation order, so this looks at the oldest only: O(1) when nothing is due."""
        while self._pending:
            dst, pending = next(iter(self._pending.items()))
            if now < self._deadline(pending):
                return
            del self._pending[dst]
            self._unqueue(pending)
            self.counters["failed"] += 1
            self.drops["unresolved"] += len(pending.packets)
            for packet in pending.packets:
                self._report_unreachable(packet, now)

    def _unqueue(self, pending: _Pending) -> None:
        self._queued -= len(pending.packets)
        self._queued_bytes -= sum(map(len, pending.packets))

    def _report_unreachable(self, packet: bytes, now: float) -> None:
        """An ICMP host / address unreachable for the sender of ``packet``, if we may."""
        if self.unreachable is None:
            return
        gw = self.gateway
        try:
            if packet[0] >> 4 == 4:
                header = Ipv4Repr.parse(packet, verify_checksum=False)
                if not may_send_error_v4(header, False, self._broadcasts4):
                    return
                error = icmp_dest_unreachable(packet, gw.ipv4, ICMP_HOST_UNREACHABLE)
            else:
                header6 = Ipv6Repr.parse(packet)
                if gw.ipv6 is None or not may_send_error_v6(
                    header6, False, ICMPV6_DEST_UNREACHABLE
                ):
                    return
                error = icmpv6_dest_unreachable(packet, gw.ipv6, ICMPV6_ADDR_UNREACHABLE)
        except (DecodeError, ValueError):
            return  # the caller's packet was not the IP packet it claimed: nothing to quote
        if not gw.errors.take(now):
            self.drops["icmp_rate_limited"] += 1
            return
        self.counters["icmp_unreachable"] += 1
        self.unreachable(error, now)

    # --- learning -----------------------------------------------------------------------------

    def learn(self, frame: bytes, now: float) -> list[bytes]:
        """Read one frame seen in the network; returns the queued packets it made sendable.

        Only ARP and neighbour solicitations / advertisements are read; everything else counts
        ``ignored`` after a look at the ethertype (and, for IPv6, two header bytes).
        """
        if len(frame) < 14:
            self.drops["malformed"] += 1
            return []
        src = frame[6:12]
        if src == self.gateway.mac:
            self.counters["ignored"] += 1  # our own requests, seen coming back
            return []
        etype = (frame[12] << 8) | frame[13]
        try:
            if etype == ETHERTYPE_ARP:
                return self._learn_arp(frame, src, now)
            if (
                etype == ETHERTYPE_IPV6
                and self.gateway.network6 is not None
                and len(frame) > _ICMPV6_OFFSET
                and frame[20] == NEXT_HEADER_ICMPV6
                and frame[_ICMPV6_OFFSET] in (ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_NEIGHBOR_ADVERT)
            ):
                return self._learn_nd(frame, src, now)
        except (DecodeError, ValueError):
            self.drops["malformed"] += 1
            return []
        self.counters["ignored"] += 1
        return []

    def _learn_arp(self, frame: bytes, src: bytes, now: float) -> list[bytes]:
        arp = ArpRepr.parse(frame[14:])
        sender = arp.sender_ip
        if sender == self._own4:
            self.drops["arp_conflict"] += 1  # someone claims the gateway's address
            return []
        if not self._on_link(sender):
            self.counters["ignored"] += 1  # probes (0.0.0.0), other networks' addresses
            return []
        if arp.sender_mac != src or not is_unicast_mac(src):
            self.drops["bad_mac"] += 1
            return []
        for_us = arp.target_ip == self._own4 and (
            arp.operation == ARP_REQUEST or arp.target_mac == self.gateway.mac
        )
        return self._confirm(sender, src, now, create=for_us, override=True)

    def _learn_nd(self, frame: bytes, src: bytes, now: float) -> list[bytes]:
        packet = Ipv6Repr.parse(frame[14:])
        icmp = Icmpv6Repr.parse(packet.payload, packet.src, packet.dst)
        if packet.hop_limit != ND_HOP_LIMIT:
            self.drops["nd_invalid"] += 1  # not from the link (RFC 4861 §7.1)
            return []
        if not is_unicast_mac(src):
            self.drops["bad_mac"] += 1
            return []
        if icmp.type == ICMPV6_NEIGHBOR_ADVERT:
            na = NeighborAdvert.from_icmp(icmp)
            if packet.src.is_unspecified or (na.solicited and packet.dst.is_multicast):
                self.drops["nd_invalid"] += 1  # RFC 4861 §7.1.2
                return []
            if na.target in self._own6:
                self.drops["nd_conflict"] += 1
                return []
            if not self._on_link(na.target):
                self.counters["ignored"] += 1
                return []
            mac = na.target_mac if na.target_mac is not None else src
            if not is_unicast_mac(mac):
                self.drops["bad_mac"] += 1
                return []
            return self._confirm(
                na.target, mac, now, create=packet.dst in self._own6, override=na.override
            )
        ns = NeighborSolicit.from_icmp(icmp)
        if ns.source_mac is None or not self._on_link(packet.src):
            self.counters["ignored"] += 1  # DAD probes, link-local senders, no address to learn
            return []
        if not is_unicast_mac(ns.source_mac):
            self.drops["bad_mac"] += 1
            return []
        return self._confirm(
            packet.src, ns.source_mac, now, create=ns.target in self._own6, override=True
        )

    def _confirm(
        self, address: Address, mac: bytes, now: float, *, create: bool, override: bool
    ) -> list[bytes]:
        """``address`` is at ``mac`` as of ``now``: resolve, refresh or (``create``) add it."""
        pending = self._pending.pop(address, None)
        if pending is not None:
            self._unqueue(pending)
            self._store(address, _Entry(mac, now))
            self.counters["resolved"] += 1
            self.counters["sent"] += len(pending.packets)
            return [self._frame(packet, address, mac) for packet in pending.packets]
        entry = self._entries.get(address)
        if entry is None:
            if not create:
                self.counters["ignored"] += 1
                return []
            self._store(address, _Entry(mac, now))
            self.counters["learned"] += 1
            return []
        if entry.mac != mac:
            if not override:
                self.counters["ignored"] += 1  # RFC 4861 §7.2.5: O=0 never replaces a MAC
                return []
            entry.mac = mac
            self.counters["changed"] += 1
        entry.confirmed = now
        entry.probes = 0
        entry.probed_at = float("-inf")
        self.counters["confirmed"] += 1
        return []

    def _store(self, address: Address, entry: _Entry) -> None:
        self._entries[address] = entry
        self._entries.move_to_end(address)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.counters["evicted"] += 1

    # --- frames -------------------------------------------------------------------------------

    def _on_link(self, address: Address) -> bool:
        """A host address of the gateway's network, not the gateway's own."""
        gw = self.gateway
        if isinstance(address, IPv4Address):
            return (
                address in gw.network4
                and address != self._own4
                and address not in self._broadcasts4
            )
        return (
            gw.network6 is not None
            and address in gw.network6
            and address not in self._own6
            and address != gw.network6.network_address  # the subnet-router anycast address
        )

    def _frame(self, packet: bytes, dst: Address, mac: bytes) -> bytes:
        etype = ETHERTYPE_IPV4 if isinstance(dst, IPv4Address) else ETHERTYPE_IPV6
        return ethernet_frame(mac, self.gateway.mac, etype, packet)

    def _request(self, dst: Address, mac: bytes | None) -> bytes:
        """A request for ``dst``: broadcast / solicited-node multicast when ``mac`` is None,
        else unicast to the cached ``mac`` (a refresh, RFC 1122 §2.3.2.1, RFC 4861 §7.3.3)."""
        gw = self.gateway
        if isinstance(dst, IPv4Address):
            if mac is None:
                return arp_request(gw.mac, gw.ipv4, dst)
            body = ArpRepr(ARP_REQUEST, gw.mac, gw.ipv4, _ZERO_MAC, dst).emit()
            return ethernet_frame(mac, gw.mac, ETHERTYPE_ARP, body)
        assert gw.ipv6 is not None  # _on_link refused IPv6 destinations of an IPv4 gateway
        if mac is None:
            return neighbor_solicitation(gw.mac, gw.ipv6, dst)
        return neighbor_solicitation(gw.mac, gw.ipv6, dst, mac, dst)
