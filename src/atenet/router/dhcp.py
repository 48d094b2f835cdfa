"""A sans-I/O DHCPv4 server for one network on one node, with its bindings in the chain.

Every node serving a network runs one of these behind the network's gateway port; it sees
frames from the node's *local* ports only (so one request gets one answer, whatever the number
of nodes). Frames and ``now`` (Unix time: binding expiry is compared across nodes) go in;
:class:`Send` (a frame to the local ports) and :class:`Bind` (a binding for the shell to
append to the chain as one ``lease`` event) come out. The chain's lease events come back in
chain order through :meth:`DhcpServer.apply_bindings`, on every node, so every node resolves
them to the same table. docs/router.md ("DHCPv4 on the gateway") has the whole story; the short one:

* **Addresses.** A client is offered its existing binding, else its hashed address
  (:func:`atenet.addressing.ipv4_for`, so DHCP and the static scheme agree), else the next free
  address after it (wrapping), else — only when the pool is full — the binding that expired
  longest ago (more than ``reclaim_grace`` ago, for clock skew between nodes).
* **Commit, then ACK.** A REQUEST that needs a new binding emits a :class:`Bind` and no reply;
  the ACK (or NAK) goes out when the binding comes back from the chain through
  :meth:`apply_bindings`. So a client never holds an address the chain gave someone else.
* **Renewals write nothing.** A REQUEST for a live binding is ACKed from the table. The lease
  given never outlives the binding's ``expires`` in the chain (``hold``, default 24 h, far
  longer than ``lease_time``), so any node may trust an expired chain binding to be unused;
  only when less than ``hold / 2`` is left does a renewal also emit one refresh :class:`Bind`
  (one event per client per ~12 h instead of one per renewal).
* **Collisions.** Two nodes binding one address for two MACs: the chain orders the two events;
  the first wins, the second is ignored by every node (it names no ``reclaims`` of the
  holder), and the losing node NAKs its client, which restarts with DISCOVER.
* **Bounds.** Offers, pending commits, declined addresses and rate-limit buckets are bounded
  tables with counters; bind actions are rate-limited per port, per MAC and per server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from atenet.addressing import ipv4_for
from atenet.chain.leases import wins
from atenet.errors import DecodeError
from atenet.wire import dhcp as d
from atenet.wire.ethernet import BROADCAST_MAC, format_mac, is_unicast_mac, parse_mac

__all__ = [
    "Action",
    "Bind",
    "DhcpServer",
    "Lease",
    "Send",
]

LEASE_TIME = 3600.0
"""Lease given to clients (option 51), seconds; they renew at half of it."""
HOLD = 86400.0
"""How long a binding written to the chain lasts; renewals never extend a lease past it."""
OFFER_TIMEOUT = 60.0
COMMIT_TIMEOUT = 10.0
DECLINE_TIME = 600.0
RECLAIM_GRACE = 60.0
MAX_OFFERS = 1024
MAX_OFFERS_PER_PORT = 16
MAX_PENDING = 256
MAX_DECLINED = 256
MAX_BUCKETS = 4096
PORT_RATE, PORT_BURST = 1 / 30, 8.0
MAC_RATE, MAC_BURST = 1 / 60, 4.0
SERVER_RATE, SERVER_BURST = 2.0, 64.0
DECLINE_RATE, DECLINE_BURST = 1 / 60, 4.0
MAX_HOST_LEN = 64

_ZERO = IPv4Address(0)
_BCAST = IPv4Address("255.255.255.255")


# --- what goes out and comes back ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """A frame for the local ports."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Bind:
    """A binding for the shell to append to the chain as one ``lease`` event.

    ``reclaims`` is the sequence number of the (expired) binding of another MAC this one takes
    the address from; without it, an address bound to another MAC cannot be taken. A release is
    a Bind of the same address with ``expires`` = now.
    """

    mac: bytes
    ip: IPv4Address
    host: str
    node: str
    expires: float
    reclaims: int | None = None

    def payload(self) -> dict[str, Any]:
        """The chain event's JSON payload."""
        body: dict[str, Any] = {
            "mac": format_mac(self.mac),
            "ip": str(self.ip),
            "host": self.host,
            "node": self.node,
            "expires": round(self.expires, 3),
        }
        if self.reclaims is not None:
            body["reclaims"] = self.reclaims
        return body


Action = Send | Bind


@dataclass(frozen=True, slots=True)
class Lease:
    """One binding from the chain: event ``seq`` bound ``mac`` to ``ip`` until ``expires``."""

    seq: int
    mac: bytes
    ip: IPv4Address
    host: str = ""
    node: str = ""
    expires: float = 0.0
    reclaims: int | None = None

    @classmethod
    def from_payload(cls, seq: int, p: dict[str, Any]) -> Lease:
        """Decode a ``lease`` event's payload; raises :class:`DecodeError` when malformed."""
        try:
            mac = parse_mac(str(p["mac"]))
            ip = IPv4Address(str(p["ip"]))
            expires = float(p.get("expires", 0))
            reclaims = p.get("reclaims")
        except (KeyError, ValueError, TypeError) as err:
            raise DecodeError(f"lease event {seq} is malformed: {err}") from None
        if not math.isfinite(expires):
            raise DecodeError(f"lease event {seq}: expires is not a finite time")
        if reclaims is not None and (type(reclaims) is not int or reclaims < 1):
            raise DecodeError(f"lease event {seq}: reclaims is not an event number")
        host = p.get("host", "")
        node = p.get("node", "")
        return cls(
            seq,
            mac,
            ip,
            host[:MAX_HOST_LEN] if isinstance(host, str) else "",
            node[:64] if isinstance(node, str) else "",
            expires,
            reclaims,
        )

    @classmethod
    def from_bind(cls, seq: int, bind: Bind) -> Lease:
        """The record a :class:`Bind` becomes once appended at ``seq`` (tests, the shell)."""
        return cls(seq, bind.mac, bind.ip, bind.host, bind.node, bind.expires, bind.reclaims)


# --- small bounded tables --------------------------------------------------------------------


class _Buckets:
    """Token buckets per key, at most ``limit`` keys; a full bucket carries no information and
    is the first to go when the table is full. A new key that finds no room is refused."""

    def __init__(self, rate: float, burst: float, limit: int) -> None:
        self.rate, self.burst, self.limit = rate, burst, limit
        self.table: dict[object, tuple[float, float]] = {}

    def _tokens(self, key: object, now: float) -> float:
        entry = self.table.get(key)
        if entry is None:
            return self.burst
        tokens, stamp = entry
        return min(self.burst, tokens + max(0.0, now - stamp) * self.rate)

    def peek(self, key: object, now: float) -> bool:
        if key not in self.table and len(self.table) >= self.limit:
            self.table = {k: v for k, v in self.table.items() if self._tokens(k, now) < self.burst}
            if len(self.table) >= self.limit:
                return False
        return self._tokens(key, now) >= 1.0

    def take(self, key: object, now: float) -> None:
        self.table[key] = (self._tokens(key, now) - 1.0, now)


@dataclass(slots=True)
class _Offer:
    ip: int
    expires: float
    reclaims: int | None
    port: object


@dataclass(slots=True)
class _Pending:
    """A REQUEST waiting for its binding to come back from the chain."""

    ip: int
    deadline: float
    request: d.ClientFrame | None
    bind: Bind


# --- the server --------------------------------------------------------------------------------


class DhcpServer:
    """DHCPv4 for one network on one node (see the module docstring and docs/router.md,
    "DHCPv4 on the gateway")."""

    def __init__(
        self,
        network_id: bytes,
        cidr: str,
        gateway_ip: IPv4Address | str,
        gateway_mac: bytes,
        mtu: int,
        dns: tuple[str, ...] | list[str] = ("8.8.8.8",),
        lease_time: float = LEASE_TIME,
        *,
        node_id: str = "",
        hold: float = HOLD,
        offer_timeout: float = OFFER_TIMEOUT,
        commit_timeout: float = COMMIT_TIMEOUT,
        decline_time: float = DECLINE_TIME,
        reclaim_grace: float = RECLAIM_GRACE,
        max_offers: int = MAX_OFFERS,
        max_offers_per_port: int = MAX_OFFERS_PER_PORT,
        max_pending: int = MAX_PENDING,
        max_declined: int = MAX_DECLINED,
        max_buckets: int = MAX_BUCKETS,
        port_rate: float = PORT_RATE,
        port_burst: float = PORT_BURST,
        mac_rate: float = MAC_RATE,
        mac_burst: float = MAC_BURST,
        server_rate: float = SERVER_RATE,
        server_burst: float = SERVER_BURST,
        decline_rate: float = DECLINE_RATE,
        decline_burst: float = DECLINE_BURST,
        default_route: bool = True,
    ) -> None:
        """``default_route``: offer the gateway as the default router (option 3, and 0.0.0.0/0
        in option 121). The node passes whether the network has internet access through it
        (``NetworkRuntime.internet``); without it a client gets only the routes to its network
        (its subnet mask) and the routed networks (option 121), so a host with another uplink
        keeps using it instead of black-holing its traffic here."""
        self.network_id = network_id
        self.network = IPv4Network(cidr)
        if self.network.prefixlen > 30:
            raise ValueError(f"IPv4 network {cidr} is too small for DHCP: use a /30 or larger")
        self.cidr = str(self.network)
        self.gateway_ip = IPv4Address(gateway_ip)
        self.gateway_mac = gateway_mac
        self.mtu = mtu
        self.dns = tuple(IPv4Address(a) for a in dns)
        self.lease_time = float(lease_time)
        self.node_id = node_id
        self.hold = max(float(hold), self.lease_time)
        self.offer_timeout = offer_timeout
        self.commit_timeout = commit_timeout
        self.decline_time = decline_time
        self.reclaim_grace = reclaim_grace
        self.max_offers = max_offers
        self.max_offers_per_port = max_offers_per_port
        self.max_pending = max_pending
        self.max_declined = max_declined
        self._lo = int(self.network.network_address) + 1
        self._hi = int(self.network.broadcast_address) - 1
        self._mask = self.network.netmask
        self._broadcast = self.network.broadcast_address
        self.classless_routes: tuple[IPv4Network, ...] = ()
        """Networks reached through the gateway (routes to other networks), sent as option 121
        to clients that ask for it; set by the node as routes come and go."""
        self.default_route = default_route
        self.by_mac: dict[bytes, Lease] = {}
        self.by_ip: dict[int, Lease] = {}
        self.last_seq = 0
        self.offers: dict[bytes, _Offer] = {}
        self.pending: dict[bytes, _Pending] = {}
        self.declined: dict[int, float] = {}
        self._port_buckets = _Buckets(port_rate, port_burst, max_buckets)
        self._mac_buckets = _Buckets(mac_rate, mac_burst, max_buckets)
        self._server_bucket = _Buckets(server_rate, server_burst, 1)
        self._decline_buckets = _Buckets(decline_rate, decline_burst, max_buckets)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "malformed",
                "ignored",
                "discovers",
                "offers",
                "requests",
                "acks",
                "naks",
                "declines",
                "releases",
                "informs",
                "binds",
                "bind_rate_limited",
                "pool_exhausted",
                "offers_evicted",
                "pending_full",
                "declined_full",
                "bindings_applied",
                "bindings_lost",
                "bad_records",
            ),
            0,
        )

    # ------------------------------------------------------------------ frames in

    def frame(self, frame: bytes, now: float, port: object = None) -> list[Action]:
        """Handle one frame from a local port (``port`` keys the per-port rate limit).

        Never raises on bad input: a malformed DHCP frame counts ``malformed``, anything that
        is not a DHCP request to us or that we do not serve counts ``ignored``.
        """
        try:
            cf = d.parse_dhcp_frame(frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        msg = cf.message if cf is not None else None
        if (
            msg is None
            or cf is None
            or cf.dst_mac not in (BROADCAST_MAC, self.gateway_mac)  # for another server
            or cf.dst_ip not in (_BCAST, self.gateway_ip)
            or msg.giaddr != _ZERO  # no relays on a virtual LAN
            or msg.chaddr != cf.src_mac  # bindings are keyed by the sender's own MAC
            or not is_unicast_mac(msg.chaddr)
            or msg.message_type is None  # plain BOOTP
        ):
            self.counters["ignored"] += 1
            return []
        self._expire(now)
        kind = msg.message_type
        if kind == d.DHCPDISCOVER:
            return self._discover(cf, now, port)
        if kind == d.DHCPREQUEST:
            return self._request(cf, now, port)
        if kind == d.DHCPDECLINE:
            return self._decline(cf, now, port)
        if kind == d.DHCPRELEASE:
            return self._release(cf, now, port)
        if kind == d.DHCPINFORM:
            return self._inform(cf)
        self.counters["ignored"] += 1
        return []

    def _make_room_for_offer(self, mac: bytes, port: object) -> None:
        """Evict the oldest offer of this port, or of everyone, when a bound is reached.

        An offer only reserves an address: a client whose offer was evicted still gets its
        REQUEST served if the address is free. So evicting beats refusing: a port spraying
        DISCOVERs from random MACs holds at most ``max_offers_per_port`` addresses and cannot
        lock other clients out of the pool or the table.
        """
        self.offers.pop(mac, None)  # re-inserted at the end: insertion order is age order
        mine = [m for m, o in self.offers.items() if o.port == port]
        if len(mine) >= self.max_offers_per_port:
            del self.offers[mine[0]]
            self.counters["offers_evicted"] += 1
        elif len(self.offers) >= self.max_offers:
            del self.offers[next(iter(self.offers))]
            self.counters["offers_evicted"] += 1

    def _discover(self, cf: d.ClientFrame, now: float, port: object) -> list[Action]:
        self.counters["discovers"] += 1
        mac = cf.message.chaddr
        pick = self._choose(mac, now)
        if pick is None:
            self.counters["pool_exhausted"] += 1
            return []
        ip, reclaims = pick
        self._make_room_for_offer(mac, port)
        self.offers[mac] = _Offer(ip, now + self.offer_timeout, reclaims, port)
        self.counters["offers"] += 1
        return [self._reply(cf, d.DHCPOFFER, IPv4Address(ip), self.lease_time)]

    def _request(self, cf: d.ClientFrame, now: float, port: object) -> list[Action]:
        self.counters["requests"] += 1
        msg = cf.message
        mac = msg.chaddr
        server_id = msg.ip_option(d.OPT_SERVER_ID)
        requested = msg.ip_option(d.OPT_REQUESTED_IP)
        if server_id is not None:  # SELECTING: answering an offer
            if server_id != self.gateway_ip:
                self.offers.pop(mac, None)  # it chose another server
                self.counters["ignored"] += 1
                return []
            if requested is None:
                self.counters["malformed"] += 1
                return []
            offer = self.offers.get(mac)
            if offer is not None and offer.ip != int(requested):
                return [self._nak(cf, "not the offered address")]
            return self._commit(cf, int(requested), now, port)
        if requested is not None and msg.ciaddr == _ZERO:  # INIT-REBOOT
            target = requested
        elif msg.ciaddr != _ZERO:  # RENEWING (unicast) or REBINDING (broadcast)
            target = msg.ciaddr
        else:
            self.counters["malformed"] += 1
            return []
        # RFC 2131 §4.3.2: a client verifying an address that is not its binding is wrong
        # (it moved, or its binding went elsewhere): NAK, and it starts over with DISCOVER.
        lease = self.by_mac.get(mac)
        if lease is not None and lease.ip != target and not self._declined(int(lease.ip), now):
            return [self._nak(cf, "not your address")]
        return self._commit(cf, int(target), now, port)

    def _commit(self, cf: d.ClientFrame, ip: int, now: float, port: object) -> list[Action]:
        mac = cf.message.chaddr
        if not self._in_pool(ip) or self._declined(ip, now):
            return [self._nak(cf, "address not available")]
        lease = self.by_mac.get(mac)
        if lease is not None and int(lease.ip) == ip and lease.expires > now:
            # A live binding: answer from the table; never promise past the chain's expiry.
            self.offers.pop(mac, None)
            remaining = lease.expires - now
            actions: list[Action] = [
                self._reply(cf, d.DHCPACK, lease.ip, min(self.lease_time, remaining))
            ]
            if remaining < self.hold / 2 and mac not in self.pending:
                bind = Bind(mac, lease.ip, lease.host, self.node_id, now + self.hold)
                if self._allow_bind(mac, port, now):
                    self._add_pending(mac, ip, now, None, bind, port)
                    actions.append(bind)
            return actions
        offer = self.offers.get(mac)
        reclaims = offer.reclaims if offer is not None and offer.ip == ip else None
        holder = self.by_ip.get(ip)
        if holder is not None and holder.mac != mac and holder.seq != reclaims:
            return [self._nak(cf, "address is bound to another client")]
        if self._held_locally_by_other(ip, mac, now):
            return [self._nak(cf, "address is offered to another client")]
        pending = self.pending.get(mac)
        if pending is not None and pending.ip == ip:
            pending.request = cf  # a retransmission: answer it when the binding lands
            return []
        if not self._allow_bind(mac, port, now):
            return []
        host = _host_name(cf.message)
        bind = Bind(mac, IPv4Address(ip), host, self.node_id, now + self.hold, reclaims)
        if not self._add_pending(mac, ip, now, cf, bind, port):
            return []
        return [bind]

    def _add_pending(
        self,
        mac: bytes,
        ip: int,
        now: float,
        reply_to: d.ClientFrame | None,
        bind: Bind,
        port: object,
    ) -> bool:
        """Remember a Bind until it comes back from the chain (``reply_to``: who gets the ACK)."""
        if mac not in self.pending and len(self.pending) >= self.max_pending:
            self.counters["pending_full"] += 1
            return False
        self._spend_bind(mac, port, now)
        self.pending[mac] = _Pending(ip, now + self.commit_timeout, reply_to, bind)
        return True

    def _decline(self, cf: d.ClientFrame, now: float, port: object) -> list[Action]:
        self.counters["declines"] += 1
        ip = cf.message.ip_option(d.OPT_REQUESTED_IP)
        mac = cf.message.chaddr
        if ip is None or not self._in_pool(int(ip)):
            return []
        # Only an address this client was given may be declined, and only a few per port:
        # otherwise one port could hold the whole pool back from everyone.
        given = {o.ip for o in (self.offers.get(mac),) if o is not None}
        given.update(int(x.ip) for x in (self.by_mac.get(mac),) if x is not None)
        if int(ip) not in given or not self._decline_buckets.peek(port, now):
            self.counters["ignored"] += 1
            return []
        self._decline_buckets.take(port, now)
        self.offers.pop(mac, None)
        if int(ip) not in self.declined and len(self.declined) >= self.max_declined:
            self.counters["declined_full"] += 1
            oldest = min(self.declined, key=self.declined.__getitem__)
            del self.declined[oldest]
        self.declined[int(ip)] = now + self.decline_time
        return []

    def _release(self, cf: d.ClientFrame, now: float, port: object) -> list[Action]:
        self.counters["releases"] += 1
        mac = cf.message.chaddr
        self.offers.pop(mac, None)
        lease = self.by_mac.get(mac)
        if lease is None or lease.ip != cf.message.ciaddr or lease.expires <= now:
            return []
        if mac in self.pending or not self._allow_bind(mac, port, now):
            return []
        bind = Bind(mac, lease.ip, lease.host, self.node_id, now)
        if not self._add_pending(mac, int(lease.ip), now, None, bind, port):
            return []
        return [bind]

    def _inform(self, cf: d.ClientFrame) -> list[Action]:
        self.counters["informs"] += 1
        return [self._reply(cf, d.DHCPACK, _ZERO, None)]

    # ------------------------------------------------------------------ chain in

    def seed(self, records: list[Lease], last_seq: int) -> None:
        """Start from a table already folded by the same rule (the chain state's, see
        :mod:`atenet.chain.leases`) as of event ``last_seq``, instead of replaying every lease
        event: a node loading a network with a long history keeps only the winners."""
        for rec in records:
            if self._in_pool(int(rec.ip)):
                self.by_mac[rec.mac] = rec
                self.by_ip[int(rec.ip)] = rec
        self.last_seq = max(self.last_seq, last_seq)

    def apply_bindings(self, records: list[Lease], now: float) -> list[Action]:
        """Fold lease events, in chain order, into the table; answer the REQUESTs they settle.

        Call it with every lease event of the network, in order, on every node (replay, then
        each new one); records at or below :attr:`last_seq` are skipped, so repeats are
        harmless. The rule, applied the same way by every node: a record binding an address
        that another MAC holds is ignored unless it names that holder's event in ``reclaims``
        — so of two nodes binding one address at once, the first event wins. A pending REQUEST
        whose binding won gets its ACK; one whose binding lost, or whose address went to
        another MAC, gets a NAK and starts over with DISCOVER.
        """
        actions: list[Action] = []
        for rec in records:
            if rec.seq <= self.last_seq:
                continue
            self.last_seq = rec.seq
            ip = int(rec.ip)
            if not self._in_pool(ip) or not is_unicast_mac(rec.mac):
                self.counters["bad_records"] += 1
                won = False
            else:
                holder = self.by_ip.get(ip)
                won = wins(
                    None if holder is None else holder.mac,
                    -1 if holder is None else holder.seq,
                    rec.mac,
                    rec.reclaims,
                )
                if won:
                    if holder is not None and holder.mac != rec.mac:
                        self.by_mac.pop(holder.mac, None)
                    old = self.by_mac.get(rec.mac)
                    if old is not None and int(old.ip) != ip:
                        self.by_ip.pop(int(old.ip), None)
                    self.by_mac[rec.mac] = rec
                    self.by_ip[ip] = rec
                    self.counters["bindings_applied"] += 1
                else:
                    self.counters["bindings_lost"] += 1
            actions.extend(self._settle(rec, ip, won, now))
        return actions

    def _settle(self, rec: Lease, ip: int, won: bool, now: float) -> list[Action]:
        actions: list[Action] = []
        pending = self.pending.get(rec.mac)
        if pending is not None and pending.ip == ip and pending.bind.node == rec.node:
            del self.pending[rec.mac]
            if pending.request is not None:
                if won:
                    remaining = rec.expires - now
                    if remaining > 0:
                        self.offers.pop(rec.mac, None)
                        actions.append(
                            self._reply(
                                pending.request,
                                d.DHCPACK,
                                rec.ip,
                                min(self.lease_time, remaining),
                            )
                        )
                else:
                    actions.append(self._nak(pending.request, "address was bound elsewhere"))
        if won:  # whoever else waited for this address here has lost it
            for mac, other in list(self.pending.items()):
                if other.ip == ip and mac != rec.mac:
                    del self.pending[mac]
                    if other.request is not None:
                        actions.append(self._nak(other.request, "address was bound elsewhere"))
            for mac, offer in list(self.offers.items()):
                if offer.ip == ip and mac != rec.mac:
                    del self.offers[mac]
        return actions

    # ------------------------------------------------------------------ addresses

    def _in_pool(self, ip: int) -> bool:
        return self._lo <= ip <= self._hi and ip != int(self.gateway_ip)

    def _declined(self, ip: int, now: float) -> bool:
        until = self.declined.get(ip)
        return until is not None and until > now

    def _held_locally_by_other(self, ip: int, mac: bytes, now: float) -> bool:
        """Offered or being committed on this node for another MAC."""
        for other, offer in self.offers.items():
            if offer.ip == ip and other != mac and offer.expires > now:
                return True
        return any(p.ip == ip and other != mac for other, p in self.pending.items())

    def _free(self, ip: int, mac: bytes, now: float, taken: set[int]) -> bool:
        if not self._in_pool(ip) or self._declined(ip, now) or ip in taken:
            return False
        holder = self.by_ip.get(ip)
        return holder is None or holder.mac == mac

    def _choose(self, mac: bytes, now: float) -> tuple[int, int | None] | None:
        """The address to offer ``mac`` and the binding it reclaims, or None: pool full."""
        lease = self.by_mac.get(mac)
        if lease is not None and not self._declined(int(lease.ip), now):
            return int(lease.ip), None
        offer = self.offers.get(mac)
        if offer is not None and not self._declined(offer.ip, now):
            return offer.ip, offer.reclaims
        taken = {o.ip for m, o in self.offers.items() if m != mac}
        taken.update(p.ip for m, p in self.pending.items() if m != mac)
        start = int(ipv4_for(self.network_id, mac, self.cidr).ip)
        size = self._hi - self._lo + 1
        for step in range(size):
            ip = self._lo + (start - self._lo + step) % size
            if self._free(ip, mac, now, taken):
                return ip, None
        # Full: take the binding that expired longest ago (past the grace for clock skew).
        best: Lease | None = None
        for rec in self.by_ip.values():
            ip = int(rec.ip)
            if rec.expires + self.reclaim_grace >= now or ip in taken or self._declined(ip, now):
                continue
            if best is None or rec.expires < best.expires:
                best = rec
        return None if best is None else (int(best.ip), best.seq)

    def _expire(self, now: float) -> None:
        for mac in [m for m, o in self.offers.items() if o.expires <= now]:
            del self.offers[mac]
        for mac in [m for m, p in self.pending.items() if p.deadline <= now]:
            del self.pending[mac]
        for ip in [i for i, until in self.declined.items() if until <= now]:
            del self.declined[ip]

    # ------------------------------------------------------------------ rate limits

    def _allow_bind(self, mac: bytes, port: object, now: float) -> bool:
        ok = (
            self._server_bucket.peek(None, now)
            and self._mac_buckets.peek(mac, now)
            and (port is None or self._port_buckets.peek(port, now))
        )
        if not ok:
            self.counters["bind_rate_limited"] += 1
        return ok

    def _spend_bind(self, mac: bytes, port: object, now: float) -> None:
        self._server_bucket.take(None, now)
        self._mac_buckets.take(mac, now)
        if port is not None:
            self._port_buckets.take(port, now)
        self.counters["binds"] += 1

    # ------------------------------------------------------------------ replies

    def _options(
        self, msg_type: int, lease: float | None, request: d.DhcpMessage, why: str = ""
    ) -> dict[int, bytes]:
        opts: dict[int, bytes] = {
            d.OPT_MESSAGE_TYPE: bytes((msg_type,)),
            d.OPT_SERVER_ID: self.gateway_ip.packed,
        }
        if msg_type == d.DHCPNAK:
            if why:
                opts[d.OPT_MESSAGE] = why.encode()
            return opts
        if lease is not None:
            secs = max(1, int(lease))
            opts[d.OPT_LEASE_TIME] = d.opt_u32(secs)
            opts[d.OPT_T1] = d.opt_u32(secs // 2)
            opts[d.OPT_T2] = d.opt_u32(secs * 7 // 8)
        opts[d.OPT_SUBNET_MASK] = self._mask.packed
        if self.default_route:
            opts[d.OPT_ROUTER] = self.gateway_ip.packed
        if self.dns:  # a network whose owner set only IPv6 servers announces those by RA
            opts[d.OPT_DNS] = d.opt_addresses(*self.dns)
        opts[d.OPT_MTU] = self.mtu.to_bytes(2, "big")
        opts[d.OPT_BROADCAST] = self._broadcast.packed
        if self.classless_routes and d.OPT_CLASSLESS_ROUTES in request.options.get(
            d.OPT_PARAM_REQUEST, b""
        ):  # RFC 3442: only to a client that asked; it then ignores option 3, so the default
            # route, when there is one, goes in here too (first: it is the shortest prefix)
            routes = [(network, self.gateway_ip) for network in self.classless_routes]
            if self.default_route:
                routes.insert(0, (IPv4Network("0.0.0.0/0"), self.gateway_ip))
            opts[d.OPT_CLASSLESS_ROUTES] = d.opt_classless_routes(routes)
        host = request.options.get(d.OPT_HOST_NAME)
        if host:
            opts[d.OPT_HOST_NAME] = host[:255]
        return opts

    def _reply(
        self,
        cf: d.ClientFrame,
        msg_type: int,
        yiaddr: IPv4Address,
        lease: float | None,
        why: str = "",
    ) -> Send:
        req = cf.message
        if msg_type == d.DHCPACK:
            self.counters["acks"] += 1
        reply = d.DhcpMessage(
            op=d.BOOTREPLY,
            xid=req.xid,
            chaddr=req.chaddr,
            flags=req.flags,
            ciaddr=req.ciaddr if msg_type == d.DHCPACK else _ZERO,
            yiaddr=yiaddr,
            options=self._options(msg_type, lease, req, why),
        )
        # RFC 2131 §4.1 (giaddr is always 0 here: relayed requests are ignored).
        if msg_type == d.DHCPNAK:
            dst_ip, dst_mac = _BCAST, BROADCAST_MAC
        elif req.ciaddr != _ZERO:
            dst_ip, dst_mac = req.ciaddr, req.chaddr
        elif req.broadcast or yiaddr == _ZERO:
            dst_ip, dst_mac = _BCAST, BROADCAST_MAC
        else:
            dst_ip, dst_mac = yiaddr, req.chaddr
        frame = d.dhcp_frame(
            reply.emit(),
            src_mac=self.gateway_mac,
            dst_mac=dst_mac,
            src_ip=self.gateway_ip,
            dst_ip=dst_ip,
        )
        return Send(frame)

    def _nak(self, cf: d.ClientFrame, why: str) -> Send:
        self.counters["naks"] += 1
        self.offers.pop(cf.message.chaddr, None)
        return self._reply(cf, d.DHCPNAK, _ZERO, None, why)

    # ------------------------------------------------------------------ views

    def leases(self) -> list[Lease]:
        """The resolved bindings, by address (what ``tok lease list`` will show)."""
        return [self.by_ip[ip] for ip in sorted(self.by_ip)]


def _host_name(msg: d.DhcpMessage) -> str:
    """Option 12 as printable text, at most :data:`MAX_HOST_LEN` characters ("" when absent)."""
    raw = msg.options.get(d.OPT_HOST_NAME, b"")
    text = raw.decode("utf-8", "replace")
    return "".join(c for c in text if c.isprintable())[:MAX_HOST_LEN]
