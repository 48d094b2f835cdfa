"""A sans-I/O DHCPv4 client (RFC 2131) for `tok connect`: frames and ``now`` in, frames and
events out.

`tok connect` gets its IPv4 address from the network's gateway (router/dhcp.py on the node)
instead of deriving it by hash, so the chain knows who holds which address and a host that
fails over to another node keeps it. The client runs inside `tok connect`, not in the kernel:
it sends its frames through the overlay as if they came from the TAP's MAC and takes the
server's replies from the frames on their way to the TAP (the kernel has no socket on UDP 68,
and needs none). Keeping it sans-I/O lets the tests drive it frame by frame against the real
server core, with a clock they control.

States (RFC 2131 §4.4, figure 5), with what the client sends in each:

* ``SELECTING`` — DISCOVER, broadcast; retransmitted after 1, 2, 4 … s (up to
  :data:`MAX_TIMEOUT`, with a little jitter so many hosts do not retry in step). After
  ``tries`` DISCOVERs without an OFFER it reports ``no_answer`` once (the shell then falls back
  to the hashed address) and keeps trying unless stopped.
* ``REQUESTING`` — REQUEST for the first OFFER (server id, requested address), broadcast,
  retransmitted like DISCOVER; after ``request_tries`` without an answer it starts over.
  The server ACKs only once the binding is in the chain, so the first ACK may take a moment.
* ``BOUND`` — nothing until T1.
* ``RENEWING`` — at T1, REQUEST unicast to the server that gave the lease (``ciaddr`` set, no
  server id); retransmitted after half the time left to T2 (at least ``min_retry`` s).
* ``REBINDING`` — at T2, the same REQUEST broadcast, to any server; then at expiry the lease is
  ``lost`` and the client starts over with DISCOVER.

A NAK (in REQUESTING, RENEWING or REBINDING) sends it back to DISCOVER at once, and a lease it
held is reported ``lost``. :meth:`DhcpClient.release` sends RELEASE on a clean stop. DECLINE is
not used: it needs an ARP probe of the address, and the server already hands out only addresses
the chain says are free.

Only replies to this client count: UDP 67 → 68, a BOOTREPLY with our ``xid`` and our MAC in
``chaddr``, and the message type the state expects. Anything else is dropped and counted
(:attr:`DhcpClient.counters`): a malformed reply never raises, never changes the state.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from atenet.errors import DecodeError
from atenet.wire import dhcp as d
from atenet.wire.ethernet import BROADCAST_MAC

__all__ = [
    "BOUND",
    "INIT",
    "REBINDING",
    "RENEWING",
    "REQUESTING",
    "SELECTING",
    "STOPPED",
    "Action",
    "ClientLease",
    "DhcpClient",
    "Event",
    "Send",
]

INIT = "init"
SELECTING = "selecting"
REQUESTING = "requesting"
BOUND = "bound"
RENEWING = "renewing"
REBINDING = "rebinding"
STOPPED = "stopped"

TRIES = 3
"""DISCOVERs without an OFFER before ``no_answer`` (at 0, 1 and 3 s: told at ~7 s)."""
FIRST_TIMEOUT = 1.0
"""Seconds before the first retransmission; doubled for each one after. RFC 2131 suggests 4 s
for real networks; our server is on the node we talk to, one overlay hop away."""
MAX_TIMEOUT = 64.0
"""Longest wait between two DISCOVERs or REQUESTs (RFC 2131 §4.1)."""
REQUEST_TRIES = 5
"""REQUESTs (after an OFFER) without an answer before starting over with DISCOVER. The server
answers once the binding is in the chain, so this allows ~31 s for that."""
MIN_RETRY = 60.0
"""Shortest wait between two REQUESTs while renewing or rebinding (RFC 2131 §4.4.5)."""
JITTER = 0.1
"""Retransmission times vary by this fraction, either way."""
MAX_ROUTES = 32
"""Most option-121 routes taken from one reply (the rest are ignored and counted)."""
MAX_DNS = 8
MIN_LEASE = 1.0

PARAMETERS = bytes(
    (
        d.OPT_SUBNET_MASK,
        d.OPT_ROUTER,
        d.OPT_DNS,
        d.OPT_HOST_NAME,
        d.OPT_MTU,
        d.OPT_BROADCAST,
        d.OPT_LEASE_TIME,
        d.OPT_SERVER_ID,
        d.OPT_T1,
        d.OPT_T2,
        d.OPT_CLASSLESS_ROUTES,
    )
)
"""Option 55: what we ask the server for."""

_ZERO = IPv4Address(0)
_BCAST = IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class ClientLease:
    """What an ACK gave us: the address and everything to configure with it.

    Times are absolute (the ``now`` the ACK came in plus the server's durations); ``routes``
    are option 121's (destination, router) pairs as the server sent them — the shell decides
    which to install (never a default route).
    """

    address: IPv4Address
    prefixlen: int
    server: IPv4Address
    server_mac: bytes
    bound_at: float
    lease_time: float
    t1: float
    t2: float
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    mtu: int | None = None
    routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()

    @property
    def interface(self) -> IPv4Interface:
        return IPv4Interface((self.address, self.prefixlen))

    @property
    def expires(self) -> float:
        return self.bound_at + self.lease_time

    @property
    def renew_at(self) -> float:
        return self.bound_at + self.t1

    @property
    def rebind_at(self) -> float:
        return self.bound_at + self.t2

    def fields(self) -> dict[str, Any]:
        """JSON-ready, for events and the state file."""
        return {
            "ipv4": str(self.interface),
            "server": str(self.server),
            "router": str(self.router) if self.router is not None else None,
            "dns": [str(a) for a in self.dns],
            "mtu": self.mtu,
            "lease": round(self.lease_time, 3),
            "expires": round(self.expires, 3),
            "renew_at": round(self.renew_at, 3),
            "rebind_at": round(self.rebind_at, 3),
            "routes": [f"{net} via {via}" for net, via in self.routes],
        }


@dataclass(frozen=True, slots=True)
class Send:
    """A frame for the network, as if sent by the TAP (source: our MAC)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """Something the shell acts on.

    ``kind``: ``bound`` (a new lease, or a new address at renewal: ``previous`` is the old
    lease then), ``renewed`` (same address, new times), ``lost`` (``reason``: ``expired``,
    ``nak: …`` or ``released``; the address must go) or ``no_answer`` (``tries`` DISCOVERs
    without an OFFER).
    """

    kind: str
    lease: ClientLease | None = None
    reason: str = ""
    previous: ClientLease | None = None


Action = Send | Event


@dataclass(slots=True)
class _Offer:
    address: IPv4Address
    server: IPv4Address


@dataclass
class DhcpClient:
    """One DHCPv4 client for one MAC (see the module docstring).

    Call :meth:`start`, then :meth:`frame` with every DHCP reply frame (:func:`is_dhcp_reply_
    frame` picks them cheaply) and :meth:`tick` at least every :attr:`deadline`; send every
    :class:`Send`, act on every :class:`Event`. ``network`` is the network's CIDR as the node
    announced it: an OFFER or ACK for an address outside it, or with another mask, is dropped
    (counted ``outside``), so no server can make the host route more than the network through
    the TAP (a mask of 0.0.0.0 would be a default route). Without it, an ACK without a subnet
    mask (option 1) means /24. ``rng`` makes xids and jitter reproducible in tests.
    """

    mac: bytes
    host: str = ""
    network: IPv4Network | None = None
    tries: int = TRIES
    first_timeout: float = FIRST_TIMEOUT
    max_timeout: float = MAX_TIMEOUT
    request_tries: int = REQUEST_TRIES
    min_retry: float = MIN_RETRY
    jitter: float = JITTER
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))
    state: str = INIT
    lease: ClientLease | None = None
    xid: int = 0
    deadline: float = float("inf")
    """When :meth:`tick` has something to do next (``inf``: nothing)."""
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "sent",
                "received",
                "malformed",
                "foreign",
                "unexpected",
                "offers",
                "acks",
                "naks",
                "bad_routes",
                "routes_dropped",
                "restarts",
                "outside",
            ),
            0,
        )
    )
    _offer: _Offer | None = None
    _server_mac: bytes = BROADCAST_MAC
    _sent: int = 0
    _started: float = 0.0
    _told_no_answer: bool = False

    # ------------------------------------------------------------------ the shell's calls

    def start(self, now: float) -> list[Action]:
        """Begin (or begin again) with DISCOVER."""
        return self._discover(now)

    def stop(self) -> None:
        """Forget everything and send nothing more (the shell gave up on DHCP)."""
        self.state = STOPPED
        self.deadline = float("inf")

    def release(self, now: float) -> list[Action]:
        """Give the lease back (RFC 2131 §4.4.6: unicast RELEASE to its server), then stop."""
        lease = self.lease
        self.stop()
        if lease is None or now >= lease.expires:
            return []
        self.lease = None
        self.xid = self._new_xid()
        msg = self._message(d.DHCPRELEASE, now, ciaddr=lease.address)
        msg.options[d.OPT_SERVER_ID] = lease.server.packed
        return [
            self._send(msg, lease.address, lease.server, lease.server_mac),
            Event("lost", lease, "released"),
        ]

    def tick(self, now: float) -> list[Action]:
        """Retransmissions and lease timers due at ``now``."""
        if now < self.deadline or self.state == STOPPED:
            return []
        lease = self.lease
        if lease is not None and now >= lease.expires:
            self.lease = None
            return [Event("lost", lease, "expired"), *self._discover(now)]
        if self.state == SELECTING:
            actions: list[Action] = []
            if self._sent >= self.tries and not self._told_no_answer:
                self._told_no_answer = True
                actions.append(Event("no_answer", reason=f"no offer after {self._sent} tries"))
            return actions + self._send_discover(now)
        if self.state == REQUESTING:
            if self._sent >= self.request_tries:
                self.counters["restarts"] += 1
                return self._discover(now)
            return self._send_request(now)
        if lease is None:  # BOUND/RENEWING/REBINDING always hold one; be safe
            return self._discover(now)
        if self.state == BOUND or (self.state == RENEWING and now < lease.rebind_at):
            if self.state == BOUND:
                self.state = RENEWING
                self.xid = self._new_xid()
            return self._send_renew(now, lease, lease.rebind_at, broadcast=False)
        if self.state != REBINDING:
            self.state = REBINDING
            self.xid = self._new_xid()
        return self._send_renew(now, lease, lease.expires, broadcast=True)

    def frame(self, frame: bytes, now: float) -> list[Action]:
        """One frame that came to our TAP; replies to us move the state, the rest is counted."""
        try:
            reply = d.parse_dhcp_reply(frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        if reply is None:
            return []
        self.counters["received"] += 1
        msg = reply.message
        if msg.xid != self.xid or msg.chaddr != self.mac or self.state in (INIT, STOPPED):
            self.counters["foreign"] += 1
            return []
        kind = msg.message_type
        server = msg.ip_option(d.OPT_SERVER_ID)
        if kind == d.DHCPOFFER and self.state == SELECTING:
            return self._on_offer(reply, server, now)
        waiting = self.state in (REQUESTING, RENEWING, REBINDING)
        if kind in (d.DHCPACK, d.DHCPNAK) and waiting and not self._not_chosen(server):
            if kind == d.DHCPACK:
                return self._on_ack(reply, server, now)
            return self._on_nak(msg, now)
        self.counters["unexpected"] += 1
        return []

    # ------------------------------------------------------------------ replies in

    def _not_chosen(self, server: IPv4Address | None) -> bool:
        """An answer to our REQUEST from a server other than the one whose OFFER we took."""
        offer = self._offer if self.state == REQUESTING else None
        return offer is not None and server is not None and server != offer.server

    def _on_offer(
        self, reply: d.ReplyFrame, server: IPv4Address | None, now: float
    ) -> list[Action]:
        addr = reply.message.yiaddr
        if server is None or not _usable(addr):
            self.counters["malformed"] += 1
            return []
        if self.network is not None and addr not in self.network:
            self.counters["outside"] += 1
            return []
        self.counters["offers"] += 1
        self._offer = _Offer(addr, server)
        self._server_mac = reply.src_mac
        self.state = REQUESTING
        self._sent = 0
        return self._send_request(now)

    def _on_ack(self, reply: d.ReplyFrame, server: IPv4Address | None, now: float) -> list[Action]:
        old = self.lease
        if server is None:
            server = old.server if old is not None else None
        lease = self._lease(reply, server, now)
        if lease is None:
            self.counters["malformed"] += 1
            return []
        if self.network is not None and lease.interface.network != self.network:
            self.counters["outside"] += 1
            return []
        self.counters["acks"] += 1
        self.lease = lease
        self.state = BOUND
        self._offer = None
        self._sent = 0
        self.deadline = lease.renew_at
        if old is not None and old.address == lease.address and old.prefixlen == lease.prefixlen:
            return [Event("renewed", lease)]
        return [Event("bound", lease, previous=old)]

    def _on_nak(self, msg: d.DhcpMessage, now: float) -> list[Action]:
        self.counters["naks"] += 1
        text = msg.options.get(d.OPT_MESSAGE, b"").decode("utf-8", "replace")
        why = "nak: " + ("".join(c for c in text if c.isprintable())[:80] or "refused")
        lease, self.lease = self.lease, None
        actions: list[Action] = [Event("lost", lease, why)] if lease is not None else []
        return actions + self._discover(now)

    def _lease(
        self, reply: d.ReplyFrame, server: IPv4Address | None, now: float
    ) -> ClientLease | None:
        """The lease an ACK describes, or None when it lacks what a lease needs."""
        msg = reply.message
        opts = msg.options
        raw_time = opts.get(d.OPT_LEASE_TIME)
        if server is None or not _usable(msg.yiaddr) or raw_time is None or len(raw_time) != 4:
            return None
        lease_time = max(MIN_LEASE, float(int.from_bytes(raw_time, "big")))
        prefixlen = self.network.prefixlen if self.network is not None else 24
        mask = opts.get(d.OPT_SUBNET_MASK)
        if mask is not None:
            try:
                prefixlen = IPv4Network(f"0.0.0.0/{IPv4Address(mask)}").prefixlen
            except ValueError:  # not 4 bytes, or not contiguous
                return None
        if prefixlen < 30:
            net = IPv4Network((msg.yiaddr, prefixlen), strict=False)
            if msg.yiaddr in (net.network_address, net.broadcast_address):
                return None
        t1 = _seconds(opts.get(d.OPT_T1), lease_time / 2)
        t2 = _seconds(opts.get(d.OPT_T2), lease_time * 7 / 8)
        if not 0 < t1 <= t2 <= lease_time:
            t1, t2 = lease_time / 2, lease_time * 7 / 8
        router = opts.get(d.OPT_ROUTER, b"")
        dns = opts.get(d.OPT_DNS, b"")
        mtu_raw = opts.get(d.OPT_MTU, b"")
        mtu = int.from_bytes(mtu_raw, "big") if len(mtu_raw) == 2 else None
        return ClientLease(
            address=msg.yiaddr,
            prefixlen=prefixlen,
            server=server,
            server_mac=reply.src_mac,
            bound_at=now,
            lease_time=lease_time,
            t1=t1,
            t2=t2,
            router=IPv4Address(router[:4]) if len(router) >= 4 else None,
            dns=tuple(
                IPv4Address(dns[i : i + 4]) for i in range(0, min(len(dns) // 4, MAX_DNS) * 4, 4)
            ),
            mtu=mtu if mtu is not None and 576 <= mtu <= 65535 else None,
            routes=self._routes(opts.get(d.OPT_CLASSLESS_ROUTES)),
        )

    def _routes(self, value: bytes | None) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
        if not value:
            return ()
        try:
            routes = d.parse_classless_routes(value)
        except DecodeError:
            self.counters["bad_routes"] += 1
            return ()
        if len(routes) > MAX_ROUTES:
            self.counters["routes_dropped"] += len(routes) - MAX_ROUTES
        return tuple(routes[:MAX_ROUTES])

    # ------------------------------------------------------------------ frames out

    def _discover(self, now: float) -> list[Action]:
        self.state = SELECTING
        self.xid = self._new_xid()
        self._offer = None
        self._sent = 0
        self._started = now
        self._told_no_answer = False
        self._server_mac = BROADCAST_MAC
        return self._send_discover(now)

    def _send_discover(self, now: float) -> list[Action]:
        msg = self._message(d.DHCPDISCOVER, now)
        self._backoff(now)
        return [self._send(msg, _ZERO, _BCAST, BROADCAST_MAC)]

    def _send_request(self, now: float) -> list[Action]:
        offer = self._offer
        assert offer is not None
        msg = self._message(d.DHCPREQUEST, now)
        msg.options[d.OPT_REQUESTED_IP] = offer.address.packed
        msg.options[d.OPT_SERVER_ID] = offer.server.packed
        self._backoff(now)
        return [self._send(msg, _ZERO, _BCAST, BROADCAST_MAC)]

    def _send_renew(
        self, now: float, lease: ClientLease, until: float, *, broadcast: bool
    ) -> list[Action]:
        """REQUEST with ``ciaddr``: unicast to the lease's server (RENEWING) or broadcast
        (REBINDING); the next one after half the time left to ``until``, at least
        ``min_retry`` s, and at ``until`` at the latest (where the next state begins)."""
        msg = self._message(d.DHCPREQUEST, now, ciaddr=lease.address)
        wait = max(self.min_retry, (until - now) / 2)
        self.deadline = min(until, now + wait)
        if broadcast:
            return [self._send(msg, lease.address, _BCAST, BROADCAST_MAC)]
        return [self._send(msg, lease.address, lease.server, lease.server_mac)]

    def _backoff(self, now: float) -> None:
        wait = min(self.max_timeout, self.first_timeout * 2**self._sent)
        wait *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        self._sent += 1
        self.deadline = now + wait

    def _message(self, kind: int, now: float, *, ciaddr: IPv4Address = _ZERO) -> d.DhcpMessage:
        options: dict[int, bytes] = {d.OPT_MESSAGE_TYPE: bytes((kind,))}
        if kind != d.DHCPRELEASE:
            options[d.OPT_PARAM_REQUEST] = PARAMETERS
            if self.host:
                options[d.OPT_HOST_NAME] = self.host.encode()[:63]
        secs = 0 if kind == d.DHCPRELEASE else int(min(0xFFFF, max(0.0, now - self._started)))
        return d.DhcpMessage(
            op=d.BOOTREQUEST, xid=self.xid, chaddr=self.mac, secs=secs, ciaddr=ciaddr,
            options=options,
        )  # fmt: skip

    def _send(self, msg: d.DhcpMessage, src: IPv4Address, dst: IPv4Address, dst_mac: bytes) -> Send:
        self.counters["sent"] += 1
        frame = d.dhcp_frame(
            msg.emit(),
            src_mac=self.mac,
            dst_mac=dst_mac,
            src_ip=src,
            dst_ip=dst,
            src_port=d.CLIENT_PORT,
            dst_port=d.SERVER_PORT,
        )
        return Send(frame)

    def _new_xid(self) -> int:
        return self.rng.getrandbits(32)


def _seconds(value: bytes | None, default: float) -> float:
    return float(int.from_bytes(value, "big")) if value is not None and len(value) == 4 else default


def _usable(addr: IPv4Address) -> bool:
    """An address a host can take: not 0, broadcast, multicast, loopback or reserved."""
    return not (
        addr in (_ZERO, _BCAST)
        or addr.is_multicast
        or addr.is_loopback
        or addr.is_reserved
        or addr.is_unspecified
        or addr.is_link_local
    )
