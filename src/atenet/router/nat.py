"""The internet forwarder: a network's clients reach the internet out of the node's own address.

A node without root cannot rewrite packets in the kernel, so the forwarder does what slirp,
passt, gVisor's forwarder (Tailscale userspace mode) and tun2socks do: it *terminates* each
client flow in our own stack (:mod:`atenet.stack`, an :class:`~atenet.stack.iface.Interface` in
"accept any destination" mode plus a :class:`~atenet.stack.tcp.Tcp` with
:meth:`~atenet.stack.tcp.Tcp.listen_any`) and asks the shell for one host socket per flow, so
the kernel gives each flow its own source port and routes the answers back (docs/nat.md).

Sans-I/O like the rest of the router: the gateway hands :meth:`Nat.packet` every IPv4 packet
(:meth:`Nat.packet6` every IPv6 packet) a local client sent to the gateway's MAC for an address
outside every known network; the shell
reports what its host sockets did (:meth:`Nat.opened`, :meth:`Nat.failed`, :meth:`Nat.data`,
:meth:`Nat.eof`, :meth:`Nat.closed`, :meth:`Nat.writable`, :meth:`Nat.echo_reply`), carries out
the :class:`Action` objects :meth:`Nat.actions` hands it, and sends the frames
:meth:`Nat.poll` returns to the local ports, waking it again at :meth:`Nat.poll_at`.

Backpressure, never unbounded buffers: client bytes are read from the stack only while the
host socket takes them (:meth:`Nat.writable`), so a slow host closes the client's TCP window;
host bytes go into the stack's bounded send buffer, and while one read does not fit the shell
is told to stop reading the host socket (:class:`PauseReading`).

A TCP SYN is held until the host connect settles, so the client sees what the destination did:
connected → the handshake completes; refused → RST; unreachable or no answer → ICMP host
unreachable.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from atenet.errors import DecodeError
from atenet.offload import NO_OFFLOAD
from atenet.ratelimit import TokenBucket
from atenet.router.forward import (
    ICMP_HOST_UNREACHABLE,
    icmp_dest_unreachable,
    icmpv6_dest_unreachable,
)
from atenet.stack.iface import Interface
from atenet.stack.tcp import (
    ACK,
    CLOSE_WAIT,
    CLOSED,
    ESTABLISHED,
    RST,
    SYN,
    SYN_RECEIVED,
    TIME_WAIT,
    Connection,
    Tcp,
    encode_segment,
)
from atenet.wire.checksum import pseudo_header_v4, pseudo_header_v6, verify
from atenet.wire.ethernet import ETHERTYPE_IPV4, ETHERTYPE_IPV6, ethernet_frame
from atenet.wire.icmp import ICMP_ECHO_REQUEST, IcmpRepr
from atenet.wire.icmpv6 import ICMPV6_ECHO_REQUEST, Icmpv6Repr
from atenet.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr
from atenet.wire.ipv6 import NEXT_HEADER_ICMPV6, Ipv6Repr
from atenet.wire.udp import UdpRepr

__all__ = [
    "Action",
    "Close",
    "Flow",
    "Nat",
    "NatLimits",
    "OpenPing",
    "OpenTcp",
    "OpenUdp",
    "PauseReading",
    "ResumeReading",
    "Send",
    "SendPing",
    "ShutdownWrite",
    "refusal",
]

IPAddr = IPv4Address | IPv6Address

ICMP_ADMIN_PROHIBITED = 13
"""Destination unreachable code 13, "communication administratively prohibited" (RFC 1812):
what a refused destination gets; Linux turns it into EHOSTUNREACH at once."""
ICMP_PORT_UNREACHABLE = 3

_ALWAYS_REFUSED: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("169.254.169.254/32"), "refused_metadata"),
    (IPv4Network("127.0.0.0/8"), "refused_loopback"),
    (IPv4Network("0.0.0.0/8"), "refused_reserved"),
    (IPv4Network("169.254.0.0/16"), "refused_link_local"),
    (IPv4Network("224.0.0.0/4"), "refused_multicast"),
    (IPv4Network("240.0.0.0/4"), "refused_reserved"),  # class E and 255.255.255.255
)
"""Never reached through NAT, whatever the settings: the node itself (loopback), the cloud
metadata service and the rest of link-local (the node's link, not the internet), and ranges
that name no single internet host."""

PRIVATE: tuple[IPv4Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("100.64.0.0/10"),  # carrier-grade NAT (RFC 6598)
    IPv4Network("192.0.0.0/24"),  # IETF protocol assignments
    IPv4Network("198.18.0.0/15"),  # benchmarking (RFC 2544)
)
"""The operator's own networks, as far as an address can say: refused unless the network's
``nat_private`` setting allows them. Not :attr:`IPv4Address.is_private`, which also lists
the documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) that tests use as
"the internet"."""


_ALWAYS_REFUSED6: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("::1/128"), "refused_loopback"),
    (IPv6Network("fd00:ec2::254/128"), "refused_metadata"),  # AWS's IPv6 metadata service
    (IPv6Network("::ffff:0:0/96"), "refused_reserved"),  # IPv4-mapped: IPv4 by the back door
    (IPv6Network("::/96"), "refused_reserved"),  # unspecified, IPv4-compatible (deprecated)
    (IPv6Network("100::/64"), "refused_reserved"),  # discard-only (RFC 6666)
    (IPv6Network("fe80::/10"), "refused_link_local"),
    (IPv6Network("ff00::/8"), "refused_multicast"),
)
"""The IPv6 counterparts of :data:`_ALWAYS_REFUSED`. The documentation range 2001:db8::/32 is
*not* refused, as 192.0.2/24 and friends are not: nothing on the internet routes it, so NAT
toward it only ever reaches a lab's own "internet" (the tests')."""

PRIVATE6: tuple[IPv6Network, ...] = (
    IPv6Network("fc00::/7"),  # unique local addresses (RFC 4193): the operator's sites
    IPv6Network("fec0::/10"),  # site-local (deprecated, still routed inside some sites)
    IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): translates into the LAN
)
"""IPv6's private ranges: refused unless ``nat_private`` allows them."""

_NAT64 = IPv6Network("64:ff9b::/96")


def refusal(dst: IPv4Address | IPv6Address, allow_private: bool) -> str | None:
    """Why NAT refuses ``dst`` by its address alone (a counter name), or None.

    An IPv6 address that embeds an IPv4 one a translator or tunnel would deliver to (NAT64's
    64:ff9b::/96, 6to4's 2002::/16) is judged by that IPv4 address too, so ``64:ff9b::7f00:1``
    cannot reach what ``127.0.0.1`` may not."""
    if isinstance(dst, IPv6Address):
        for net6, reason in _ALWAYS_REFUSED6:
            if dst in net6:
                return reason
        if not allow_private and any(dst in net6 for net6 in PRIVATE6):
            return "refused_private"
        inner = IPv4Address(dst.packed[12:]) if dst in _NAT64 else dst.sixtofour
        return None if inner is None else refusal(inner, allow_private)
    for net, reason in _ALWAYS_REFUSED:
        if dst in net:
            return reason
    if not allow_private and any(dst in net for net in PRIVATE):
        return "refused_private"
    return None


# --- actions for the shell --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenTcp:
    """Connect a host TCP socket to ``dst``; answer with :meth:`Nat.opened` / :meth:`Nat.failed`."""

    flow: int
    dst: tuple[str, int]


@dataclass(frozen=True, slots=True)
class OpenUdp:
    """A host UDP socket connected to ``dst`` (its own source port); answer as for OpenTcp."""

    flow: int
    dst: tuple[str, int]


@dataclass(frozen=True, slots=True)
class OpenPing:
    """An unprivileged ICMP echo socket to ``dst``; :meth:`Nat.failed` with ``unavailable``
    when the host does not allow them (``net.ipv4.ping_group_range``)."""

    flow: int
    dst: str


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes (TCP) or one datagram (UDP) for the flow's host socket."""

    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendPing:
    """One echo request on the flow's ping socket (the kernel picks the identifier)."""

    flow: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ShutdownWrite:
    """The client sent FIN: half-close the host socket (``write_eof``)."""

    flow: int


@dataclass(frozen=True, slots=True)
class PauseReading:
    """The client is slow: stop reading the host socket until :class:`ResumeReading`."""

    flow: int


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """The stack has room again: read the host socket."""

    flow: int


@dataclass(frozen=True, slots=True)
class Close:
    """Forget the flow's host socket (``abort``: reset it instead of a graceful close)."""

    flow: int
    abort: bool = False


Action = (
    OpenTcp
    | OpenUdp
    | OpenPing
    | Send
    | SendPing
    | ShutdownWrite
    | PauseReading
    | ResumeReading
    | Close
)


@dataclass(frozen=True, slots=True)
class NatLimits:
    """Bounds of one network's forwarder; each one counted in :attr:`Nat.counters` when hit."""

    flows_per_client: int = 256
    flows_per_network: int = 4096
    new_flows_rate: float = 100.0
    """New flows per second for the whole network (a token bucket)…"""
    new_flows_burst: int = 200
    """…with this burst."""
    half_open: int = 128
    """Host connects in progress at once (TCP flows waiting for their host socket)."""
    connect_timeout: float = 30.0
    udp_timeout: float = 60.0
    """An idle UDP flow that never had an exchange both ways (a DNS query, a probe)."""
    udp_stream_timeout: float = 180.0
    """An idle UDP flow that did (both sides sent twice or more, conntrack's "assured")."""
    tcp_idle: float = 7200.0
    """An established TCP flow with no byte either way for this long is reset."""
    ping_timeout: float = 30.0
    held_datagrams: int = 8
    """Datagrams kept while a UDP/ping flow's socket opens (the oldest are dropped)."""
    tcp_buffer: int = 128 * 1024
    """The stack's receive and send buffer per TCP flow: with one host read pending, what a
    flow may hold is about 3× this (docs/nat.md)."""
    read_chunk: int = 65536
    """Client bytes handed to one :class:`Send`; also the per-poll budget per flow."""


@dataclass(eq=False, slots=True)
class Flow:
    """One client flow and its host socket."""

    id: int
    proto: int
    client_mac: bytes
    client: IPAddr
    client_port: int
    """The client's port (TCP/UDP) or echo identifier (ICMP)."""
    dst: IPAddr
    dst_port: int
    created: float
    last: float
    state: str = "opening"
    """``opening`` (waiting for the host socket), ``open``, ``failed`` (ping unavailable)."""
    held: list[bytes] = field(default_factory=list)
    conn: Connection | None = None
    pending: bytearray = field(default_factory=bytearray)
    """Host bytes the stack's send buffer did not take yet (at most one host read)."""
    host_blocked: bool = False
    """The host socket's write buffer is full (``pause_writing``)."""
    reading_paused: bool = False
    host_eof: bool = False
    host_gone: bool = False
    """The shell's socket is closed already: no Close for it, client bytes are dropped."""
    fin_sent: bool = False
    eof_sent: bool = False
    up: int = 0
    down: int = 0
    sent: int = 0
    """Datagrams from the client (UDP, ICMP)."""
    replies: int = 0


def _key_tcp(dst: IPAddr, dport: int, client: IPAddr, sport: int) -> tuple:
    return (dst.packed, dport, client.packed, sport)


class Nat:
    """The forwarder of one network on one node (see the module docstring).

    ``gateway``: the gateway's address with the network's prefix; ``mac``: its MAC; ``mtu``:
    the network's MTU (TCP's MSS is clamped to it). ``is_local(addr)``: whether an address is
    the node's own (the shell asks its kernel; the node's addresses are always refused).
    ``allow_private``: the network's ``nat_private`` setting. ``gateway6``: the gateway's IPv6
    address with the network's prefix, when the network has IPv6 (then :meth:`packet6` works).
    """

    def __init__(
        self,
        gateway: IPv4Interface,
        mac: bytes,
        mtu: int,
        *,
        is_local: Callable[[IPAddr], bool] = lambda _a: False,
        allow_private: bool = False,
        limits: NatLimits | None = None,
        gateway6: IPv6Interface | None = None,
    ) -> None:
        self.limits = limits or NatLimits()
        lim = self.limits
        self.gateway = gateway
        self.network = gateway.network
        self.mac = mac
        self.mtu = mtu
        self.is_local = is_local
        self.allow_private = allow_private
        self.gateway6 = gateway6
        self.network6: IPv6Network | None = None if gateway6 is None else gateway6.network
        self.tcp = Tcp(
            mss=mtu - 40,
            mss6=mtu - 60,
            recv_buffer=lim.tcp_buffer,
            send_buffer=lim.tcp_buffer,
            max_connections=lim.flows_per_network + 512,
        )
        self.listener = self.tcp.listen_any(backlog=lim.flows_per_network)
        self.iface = Interface(
            mac,
            max(1280, mtu),
            ipv4=gateway,
            ipv6=gateway6 is not None,
            tcp=self.tcp,
            tso=True,
            any_destination=self,
        )
        if gateway6 is not None:
            self.iface.add_ipv6(gateway6)
        self.iface.mtu = mtu  # the network's, even below 1280 (IPv4 allows it)
        # Clients' MACs come from their own packets (learned below); keep them as long as a
        # TCP flow may idle, for as many clients as flows.
        self.iface.arp.ttl = lim.tcp_idle + 60.0
        self.iface.arp.capacity = lim.flows_per_network
        self.iface.nd.ttl = lim.tcp_idle + 60.0
        self.iface.nd.capacity = lim.flows_per_network
        self.flows: dict[int, Flow] = {}
        self._by_key: dict[tuple, Flow] = {}
        self._per_client: Counter[IPAddr] = Counter()
        self._half_open = 0
        self._ids = itertools.count(1)
        self._actions: list[Action] = []
        self._out: list[bytes] = []
        self._new_flows = TokenBucket(lim.new_flows_rate, lim.new_flows_burst)
        self._errors = TokenBucket(100.0, 50)
        self._sweep_at: float | None = None
        self._src_mac = b""
        self._broadcast = self.network.broadcast_address
        # The fast path's source check on raw bytes (tcp_frame): network, mask, excluded.
        self._net4 = int(self.network.network_address)
        self._mask4 = int(self.network.netmask)
        self._not_clients4 = frozenset(
            a.packed for a in (self.network.network_address, self._broadcast, gateway.ip)
        )
        self._shift6 = 128 - (0 if self.network6 is None else self.network6.prefixlen)
        self._net6 = (
            0 if self.network6 is None else int(self.network6.network_address) >> (self._shift6)
        )
        self._gw6 = b"" if gateway6 is None else gateway6.ip.packed
        self._fresh: tuple[bytes, bytes, float] = (b"", b"", 0.0)
        """The last (client address, MAC, until) whose neighbour entry the fast path
        refreshed: one refresh a second per client, not one per segment."""
        self.counters: Counter[str] = Counter()
        """Flows opened/closed by protocol, bytes both ways, and every refusal by reason."""

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, int]:
        """Flow gauges and counters, for ``/api/status`` and ``/metrics``."""
        by_proto = Counter(f.proto for f in self.flows.values())
        return {
            "flows": len(self.flows),
            "flows_tcp": by_proto[PROTO_TCP],
            "flows_udp": by_proto[PROTO_UDP],
            "flows_icmp": by_proto[PROTO_ICMP],
            "half_open": self._half_open,
            **dict(self.counters),
        }

    def set_allow_private(self, allow: bool) -> None:
        """Follow the network's ``nat_private`` setting live (new flows only)."""
        self.allow_private = allow

    # ------------------------------------------------------------------ shell interface

    @property
    def has_actions(self) -> bool:
        """Whether host-socket requests wait for :meth:`actions`."""
        return bool(self._actions)

    def actions(self) -> list[Action]:
        """Take the host-socket requests queued so far, oldest first."""
        out, self._actions = self._actions, []
        return out

    def poll(self, now: float) -> list[bytes]:
        """Run timers and move bytes between flows and the stack; the frames to send (TCP
        super-segments cut into standard frames, correct for any port)."""
        return self._poll(now, False)

    def poll_packets(self, now: float) -> list[bytes]:
        """As :meth:`poll`, but every item is a virtio-net packet (10-byte header + frame):
        TCP leaves in TSO super-segments of up to 64 KB (``GSO_TCPV4/6``, partial checksum),
        everything else behind an all-zero header. For the switch's
        :meth:`~atenet.switch.core.Switch.packet_from_gateway`, which hands them whole to
        ports that take offloads and cuts them for the others: one packet per 64 KB instead
        of one per MSS between the forwarder and an offloading client (docs/nat.md)."""
        return self._poll(now, True)

    def _poll(self, now: float, packets: bool) -> list[bytes]:
        poll = self.iface.poll_packets if packets else self.iface.poll
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep(now)
        self._service_changed(now)
        out = poll(now)
        self._service_changed(now)  # ACKs that freed send space, FINs, deaths
        if self.iface.poll_at() == 0.0:  # the second service queued segments or RSTs
            out += poll(now)
        if packets:
            supers = sum(1 for p in out if p[1])  # a gso_type: a TSO super-segment
            if supers:
                self.counters["superframes_out"] += supers
        if self._out:
            waiting = self._out
            if packets:
                waiting = [NO_OFFLOAD + frame for frame in waiting]
            out = waiting + out
            self._out = []
        return out

    def poll_at(self) -> float | None:
        """When :meth:`poll` has work next (None: only new input creates work)."""
        if self._out:
            return 0.0
        times = [t for t in (self.iface.poll_at(), self._sweep_at) if t is not None]
        return min(times, default=None)

    # ------------------------------------------------------------------ from the gateway

    def packet(self, raw: bytes, packet: Ipv4Repr, src_mac: bytes, now: float) -> None:
        """An IPv4 packet a local client sent to the gateway for an address outside every
        network the gateway knows (``raw`` may carry Ethernet padding)."""
        src = packet.src
        if src not in self.network or src in (self._broadcast, self.network.network_address):
            self.counters["foreign_source"] += 1  # the return path covers only our clients
            return
        if src == self.gateway.ip:
            self.counters["foreign_source"] += 1
            return
        self._src_mac = src_mac  # for on_datagram, which the Interface calls below
        self._learn(src, src_mac, now, create=False)  # refresh only: flows create entries
        fragment = packet.more_fragments or packet.fragment_offset
        if packet.protocol == PROTO_TCP and not fragment:
            seg = packet.payload
            if len(seg) >= 20 and seg[13] & (SYN | ACK | RST) == SYN:
                dport = (seg[2] << 8) | seg[3]
                sport = (seg[0] << 8) | seg[1]
                key = _key_tcp(packet.dst, dport, src, sport)
                conn = self.tcp.conns.get(key)
                if conn is None or conn.state == TIME_WAIT:
                    ph = pseudo_header_v4(src.packed, packet.dst.packed, PROTO_TCP, len(seg))
                    if not verify(seg, ph):
                        self.counters["malformed"] += 1
                        return
                    total = 20 + len(packet.options) + len(seg)
                    raw = bytes(raw[:total])
                    self._syn(raw, src, packet.dst, src_mac, sport, dport, key, now)
                    return
        self.iface.receive(self.mac + src_mac + b"\x08\x00" + bytes(raw), now)

    def packet6(self, raw: bytes, packet: Ipv6Repr, src_mac: bytes, now: float) -> None:
        """An IPv6 packet a local client sent to the gateway for an address outside every
        network the gateway knows (``raw`` may carry Ethernet padding); as :meth:`packet`."""
        src = packet.src
        if self.network6 is None or self.gateway6 is None:
            self.counters["ipv6_without_address"] += 1
            return
        if src not in self.network6 or src == self.gateway6.ip:
            self.counters["foreign_source"] += 1  # link-local sources too: never forwarded
            return
        self._src_mac = src_mac
        self._learn(src, src_mac, now, create=False)
        seg = packet.payload
        if (
            packet.next_header == PROTO_TCP
            and len(seg) >= 20
            and seg[13] & (SYN | ACK | RST) == SYN
        ):
            dport = (seg[2] << 8) | seg[3]
            sport = (seg[0] << 8) | seg[1]
            key = _key_tcp(packet.dst, dport, src, sport)
            conn = self.tcp.conns.get(key)
            if conn is None or conn.state == TIME_WAIT:
                ph = pseudo_header_v6(src.packed, packet.dst.packed, PROTO_TCP, len(seg))
                if not verify(seg, ph):
                    self.counters["malformed"] += 1
                    return
                raw = bytes(raw[: 40 + len(seg)])
                self._syn(raw, src, packet.dst, src_mac, sport, dport, key, now)
                return
        self.iface.receive(self.mac + src_mac + b"\x86\xdd" + bytes(raw), now)

    def tcp_frame(self, data: bytes, at: int, now: float) -> bool:
        """The fast path for a client's TCP segment of a flow that exists (docs/nat.md).

        ``data[at:]`` is an Ethernet frame to the gateway's MAC: ``at`` = 10 when ``data`` is
        a virtio-net packet (possibly a 64 KB TSO super-frame from an offloading port, taken
        whole: one pass and one ACK per 64 KB), 0 for a plain frame. The gateway checked
        (:meth:`~atenet.router.gateway.Gateway.nat_tcp`) that it carries IPv4 without options
        or IPv6 without extension headers, TCP, not a fragment, for an address it sends to
        the internet. Why: the general path (:meth:`packet`) parses the packet into objects
        twice and builds a new frame for the stack, which was half the node's time; here the
        frame goes to the stack as it came, whose own fast path reaches TCP on raw bytes.
        False: not for this path (a SYN, which may create a flow; IPv6 without an IPv6
        address), take :meth:`packet`. A source outside the network is dropped and counted.
        """
        if data[at + 12] == 0x08:
            if len(data) < at + 54 or data[at + 47] & SYN:
                return False
            src = data[at + 26 : at + 30]
            if (int.from_bytes(src, "big") & self._mask4) != self._net4 or (
                src in self._not_clients4
            ):
                self.counters["foreign_source"] += 1
                return True
        else:
            if self.network6 is None or len(data) < at + 74 or data[at + 67] & SYN:
                return False
            src = data[at + 22 : at + 38]
            if int.from_bytes(src, "big") >> self._shift6 != self._net6 or src == self._gw6:
                self.counters["foreign_source"] += 1
                return True
        mac = data[at + 6 : at + 12]
        fresh = self._fresh
        if fresh[0] != src or fresh[1] != mac or now >= fresh[2]:
            self._fresh = (src, mac, now + 1.0)
            ip = IPv4Address(src) if len(src) == 4 else IPv6Address(src)
            self._learn(ip, mac, now, create=False)  # refresh only, as in packet()
        if at:
            if data[1]:  # a gso_type: a super-frame, taken whole
                self.counters["superframes_in"] += 1
            self.iface.receive_packet(data, now)
        else:
            self.iface.receive(data, now)
        return True

    def _learn(self, ip: IPAddr, mac: bytes, now: float, *, create: bool = True) -> None:
        """Record a client's MAC in the stack's ARP / neighbour table (the forwarder answers
        its clients without asking), sending any packet that waited for it. Only flows create
        entries, so a client spraying source addresses cannot churn the table."""
        if isinstance(ip, IPv4Address):
            cache, etype = self.iface.arp, ETHERTYPE_IPV4
        else:
            cache, etype = self.iface.nd, ETHERTYPE_IPV6
        for waiting in cache.learn(ip, mac, now, create=create):
            self._out.append(ethernet_frame(mac, self.mac, etype, waiting))

    def arp(self, frame: bytes, now: float) -> None:
        """An ARP frame for the gateway (a client answering the stack's request)."""
        if len(frame) >= 22 and frame[20:22] == b"\x00\x02":  # replies only: the gateway
            self.iface.receive(frame, now)  # answers requests for its own address

    def on_datagram(self, src: IPAddr, dst: IPAddr, proto: int, payload: bytes, now: float) -> None:  # type: ignore[override]
        """UDP and ICMP from a client for a foreign address (the Interface's hook)."""
        try:
            if proto == PROTO_UDP:
                udp = UdpRepr.parse(payload, src, dst)
                self._udp(src, dst, udp, now)
            elif proto == PROTO_ICMP and isinstance(src, IPv4Address):
                icmp = IcmpRepr.parse(payload)
                if icmp.type == ICMP_ECHO_REQUEST and icmp.code == 0:
                    self._echo(src, dst, icmp.ident, icmp.seq, icmp.payload, now)
                else:
                    self.counters["icmp_unhandled"] += 1
            elif proto == NEXT_HEADER_ICMPV6 and isinstance(src, IPv6Address):
                icmp6 = Icmpv6Repr.parse(payload, src, dst)  # type: ignore[arg-type]
                if icmp6.type == ICMPV6_ECHO_REQUEST and icmp6.code == 0:
                    self._echo(src, dst, icmp6.ident, icmp6.seq, icmp6.payload, now)
                else:
                    self.counters["icmp_unhandled"] += 1
            else:
                self.counters["protocol_unhandled"] += 1
        except DecodeError:
            self.counters["malformed"] += 1

    # ------------------------------------------------------------------ from the shell

    def opened(self, flow_id: int, now: float) -> None:
        """The flow's host socket is connected (TCP) / ready (UDP, ping)."""
        flow = self.flows.get(flow_id)
        if flow is None or flow.state != "opening":
            return
        flow.state, flow.last = "open", now
        held, flow.held = flow.held, []
        if flow.proto == PROTO_TCP:
            self._half_open -= 1
            syn = held[-1]
            etype = b"\x08\x00" if isinstance(flow.client, IPv4Address) else b"\x86\xdd"
            self.iface.receive(self.mac + flow.client_mac + etype + syn, now)
            key = _key_tcp(flow.dst, flow.dst_port, flow.client, flow.client_port)
            conn = self.tcp.conns.get(key)
            if conn is None or conn.state != SYN_RECEIVED:
                self.counters["tcp_stack_refused"] += 1  # connection_limit, counted there too
                self._finish(flow, abort=True)
                return
            flow.conn = conn
            self.counters["tcp_connected"] += 1
        elif flow.proto == PROTO_UDP:
            for datagram in held:
                self._actions.append(Send(flow.id, datagram))
        else:
            for request in held:
                seq = int.from_bytes(request[:2], "big")
                self._actions.append(SendPing(flow.id, seq, request[2:]))

    def failed(self, flow_id: int, reason: str, now: float) -> None:
        """The host socket could not open: ``refused`` (TCP RST / ICMP port unreachable),
        ``unreachable`` (no route, timed out) or ``unavailable`` (no ping sockets here)."""
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        self.counters[f"host_{reason}"] += 1
        if flow.proto == PROTO_TCP and flow.state == "opening":
            self._half_open -= 1
            syn = flow.held[-1]
            if reason == "refused":
                hlen = (syn[0] & 0xF) * 4 if syn[0] >> 4 == 4 else 40
                seq = int.from_bytes(syn[hlen + 4 :][:4], "big")
                rst = encode_segment(
                    flow.dst.packed,
                    flow.client.packed,
                    flow.dst_port,
                    flow.client_port,
                    0,
                    seq + 1,
                    RST | ACK,
                    0,
                )
                self._to_client(flow, _ip_packet(flow.dst, flow.client, PROTO_TCP, rst))
            else:
                self._icmp_error(flow, syn, ICMP_HOST_UNREACHABLE, now)
            self._finish(flow, abort=False, host_gone=True)
            return
        if flow.proto == PROTO_TCP:  # an open flow's socket failed: the host closed it
            self.closed(flow_id, True, now)
            return
        quoted = self._quote(flow)
        if flow.proto == PROTO_ICMP:
            self._icmp_error(flow, quoted, ICMP_ADMIN_PROHIBITED, now)
            flow.state, flow.held = "failed", []  # answer the next pings at once, no retry
            return
        code = ICMP_PORT_UNREACHABLE if reason == "refused" else ICMP_HOST_UNREACHABLE
        self._icmp_error(flow, quoted, code, now)
        if flow.state == "opening":
            self._finish(flow, abort=False, host_gone=True)

    def data(self, flow_id: int, data: bytes, now: float) -> None:
        """Bytes (TCP) or one datagram (UDP) from the flow's host socket."""
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        flow.last = now
        flow.replies += 1
        if flow.proto == PROTO_UDP:
            segment = UdpRepr(flow.dst_port, flow.client_port, data).emit(flow.dst, flow.client)
            self._learn(flow.client, flow.client_mac, now)
            self.iface.send_ip(flow.dst, flow.client, PROTO_UDP, segment, now)
            flow.down += len(data)
            self.counters["bytes_down"] += len(data)
            return
        if flow.proto != PROTO_TCP or flow.host_eof:
            return
        if len(flow.pending) > 4 * self.limits.tcp_buffer:
            # The shell kept reading after PauseReading: a bug there, not a reason to grow.
            self.counters["pending_overflow"] += 1
            if flow.conn is not None:
                flow.conn.abort()
            self._finish(flow, abort=True)
            return
        flow.pending += data
        self._service(flow, now)
        if flow.pending and not flow.reading_paused:
            flow.reading_paused = True
            self.counters["host_paused"] += 1
            self._actions.append(PauseReading(flow.id))

    def echo_reply(self, flow_id: int, seq: int, payload: bytes, now: float) -> None:
        """An echo reply on the flow's ping socket: to the client with its own identifier."""
        flow = self.flows.get(flow_id)
        if flow is None or flow.proto != PROTO_ICMP:
            return
        flow.last = now
        flow.replies += 1
        proto, reply = _echo_message(flow.dst, flow.client, False, flow.client_port, seq, payload)
        self._learn(flow.client, flow.client_mac, now)
        self.iface.send_ip(flow.dst, flow.client, proto, reply, now)
        self.counters["echo_replies"] += 1

    def eof(self, flow_id: int, now: float) -> None:
        """The host closed its side (FIN): the client gets FIN after the bytes before it."""
        flow = self.flows.get(flow_id)
        if flow is None or flow.proto != PROTO_TCP:
            return
        flow.host_eof = True
        flow.last = now
        self._service(flow, now)

    def closed(self, flow_id: int, error: bool, now: float) -> None:
        """The host socket is gone (``error``: reset or failed): the client gets RST on an
        error, else FIN after every byte already taken."""
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        conn = flow.conn
        if flow.proto != PROTO_TCP or conn is None:
            self._finish(flow, abort=False, host_gone=True)
            return
        if error:
            self.counters["host_reset"] += 1
            conn.abort()
            self._finish(flow, abort=True, host_gone=True)
            return
        flow.host_eof = flow.host_gone = True
        self._service(flow, now)

    def writable(self, flow_id: int, ok: bool, now: float) -> None:
        """The host socket's write buffer filled (``ok=False``) or drained (``ok=True``)."""
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        flow.host_blocked = not ok
        if ok:
            self._service(flow, now)

    # ------------------------------------------------------------------ new flows

    def _admit(self, src: IPAddr, dst: IPAddr, now: float, tcp: bool = False) -> str | None:
        """Why a new flow from ``src`` to ``dst`` is refused (a counter name), or None."""
        reason = refusal(dst, self.allow_private)
        if reason is not None:
            return reason
        if dst in self.network or (self.network6 is not None and dst in self.network6):
            return "refused_own_network"
        if self.is_local(dst):
            return "refused_node_address"
        lim = self.limits
        if self._per_client[src] >= lim.flows_per_client:
            return "refused_client_flows"
        if len(self.flows) >= lim.flows_per_network:
            return "refused_network_flows"
        if tcp and self._half_open >= lim.half_open:
            return "refused_half_open"
        if not self._new_flows.take(now):
            return "refused_rate"
        return None

    def _new_flow(
        self,
        proto: int,
        src_mac: bytes,
        src: IPAddr,
        sport: int,
        dst: IPAddr,
        dport: int,
        key: tuple,
        now: float,
    ) -> Flow:
        flow = Flow(next(self._ids), proto, src_mac, src, sport, dst, dport, now, now)
        self.flows[flow.id] = flow
        self._by_key[key] = flow
        self._per_client[src] += 1
        self._learn(src, src_mac, now)
        name = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp"}[proto]
        self.counters[f"flows_opened_{name}"] += 1
        if isinstance(src, IPv6Address):
            self.counters["flows_opened_ipv6"] += 1
        if self._sweep_at is None:
            self._sweep_at = now + 1.0
        return flow

    def _refused(self, reason: str, quoted: bytes, mac: bytes, now: float, answer: bool) -> None:
        self.counters[reason] += 1
        self.counters["refused"] += 1
        if answer:
            self._icmp_to(mac, quoted, ICMP_ADMIN_PROHIBITED, now)

    def _syn(
        self,
        raw: bytes,
        src: IPAddr,
        dst: IPAddr,
        src_mac: bytes,
        sport: int,
        dport: int,
        key: tuple,
        now: float,
    ) -> None:
        flow = self._by_key.get(key)
        if flow is not None:
            if flow.state == "opening":
                flow.held = [raw]  # a retransmitted SYN: answer the latest one
                self.counters["syn_while_connecting"] += 1
                return
            # A flow whose connection already went (TIME-WAIT reuse): start afresh.
            self._finish(flow, abort=False)
        reason = self._admit(src, dst, now, tcp=True)
        if reason is not None:
            answer = reason.startswith("refused_") and reason in _ANSWERED
            self._refused(reason, raw, src_mac, now, answer)
            return
        flow = self._new_flow(PROTO_TCP, src_mac, src, sport, dst, dport, key, now)
        flow.held = [raw]
        self._half_open += 1
        self._actions.append(OpenTcp(flow.id, (str(dst), dport)))

    def _udp(self, src: IPAddr, dst: IPAddr, udp: UdpRepr, now: float) -> None:
        key = (PROTO_UDP, src, udp.src_port, dst, udp.dst_port)
        flow = self._by_key.get(key)
        if flow is None:
            reason = self._admit(src, dst, now)
            if reason is not None:
                quoted = _ip_packet(src, dst, PROTO_UDP, udp.emit(src, dst))
                self._refused(reason, quoted, self._src_mac, now, reason in _ANSWERED)
                return
            mac, sport, dport = self._src_mac, udp.src_port, udp.dst_port
            flow = self._new_flow(PROTO_UDP, mac, src, sport, dst, dport, key, now)
            self._actions.append(OpenUdp(flow.id, (str(dst), udp.dst_port)))
        flow.last = now
        flow.sent += 1
        flow.up += len(udp.payload)
        self.counters["bytes_up"] += len(udp.payload)
        self._learn(src, flow.client_mac, now)  # keep the reply path fresh
        if flow.state == "open":
            self._actions.append(Send(flow.id, udp.payload))
        else:
            self._hold(flow, udp.payload)

    def _echo(
        self, src: IPAddr, dst: IPAddr, ident: int, seq: int, payload: bytes, now: float
    ) -> None:
        """An echo request (ICMP or ICMPv6: echo flows are ``PROTO_ICMP`` for both)."""
        key = (PROTO_ICMP, src, ident, dst)
        flow = self._by_key.get(key)
        quoted = _ip_packet(src, dst, *_echo_message(src, dst, True, ident, seq, payload))
        if flow is None:
            reason = self._admit(src, dst, now)
            if reason is not None:
                self._refused(reason, quoted, self._src_mac, now, reason in _ANSWERED)
                return
            flow = self._new_flow(PROTO_ICMP, self._src_mac, src, ident, dst, 0, key, now)
            self._actions.append(OpenPing(flow.id, str(dst)))
        flow.last = now
        flow.sent += 1
        self.counters["echo_requests"] += 1
        if flow.state == "open":
            self._actions.append(SendPing(flow.id, seq, payload))
        elif flow.state == "failed":
            self.counters["echo_unavailable"] += 1
            self._icmp_error(flow, quoted, ICMP_ADMIN_PROHIBITED, now)
        else:
            self._hold(flow, seq.to_bytes(2, "big") + payload)

    def _hold(self, flow: Flow, item: bytes) -> None:
        if len(flow.held) >= self.limits.held_datagrams:
            del flow.held[0]
            self.counters["held_dropped"] += 1
        flow.held.append(item)

    # ------------------------------------------------------------------ TCP relaying

    def _service_changed(self, now: float) -> None:
        while self.listener.accept() is not None:
            pass  # already mapped to their flows when the SYN went in
        for conn in self.tcp.take_changed():
            flow = self._by_key.get(conn.key)
            if flow is not None and flow.conn is conn:
                self._service(flow, now)
            elif conn.state not in (CLOSED, TIME_WAIT) and self.tcp.conns.get(conn.key) is conn:
                self.counters["tcp_without_flow"] += 1  # e.g. a fragmented SYN: never ours
                conn.abort()

    def _service(self, flow: Flow, now: float) -> None:
        """Move bytes both ways as far as both sides take them; finish a flow that is done."""
        conn = flow.conn
        if conn is None:
            return
        if flow.pending and conn.send_space:
            n = conn.send(flow.pending)
            del flow.pending[:n]
            flow.down += n
            self.counters["bytes_down"] += n
            flow.last = now
        if flow.reading_paused and not flow.pending and conn.send_space:
            flow.reading_paused = False
            self._actions.append(ResumeReading(flow.id))
        idle_out = flow.host_eof and not flow.pending and not flow.fin_sent
        if idle_out and conn.state in (SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT):
            conn.shutdown()
            flow.fin_sent = True
        budget = self.limits.read_chunk
        while not flow.host_blocked and not flow.eof_sent and conn.readable and budget > 0:
            data = conn.recv(min(budget, self.limits.read_chunk))
            budget -= len(data)
            flow.up += len(data)
            flow.last = now
            if flow.host_gone:
                self.counters["dropped_after_host_close"] += len(data)
                continue
            self.counters["bytes_up"] += len(data)
            self._actions.append(Send(flow.id, data))
        if conn.eof and not flow.eof_sent and not flow.host_gone:
            flow.eof_sent = True
            self._actions.append(ShutdownWrite(flow.id))
        if conn.error is not None or conn.state in (CLOSED, TIME_WAIT):
            self._finish(flow, abort=conn.error is not None)

    def _finish(self, flow: Flow, *, abort: bool, host_gone: bool = False) -> None:
        """Forget ``flow``; the shell closes its host socket unless that is already gone."""
        if self.flows.pop(flow.id, None) is None:
            return
        key = (
            _key_tcp(flow.dst, flow.dst_port, flow.client, flow.client_port)
            if flow.proto == PROTO_TCP
            else (
                (PROTO_UDP, flow.client, flow.client_port, flow.dst, flow.dst_port)
                if flow.proto == PROTO_UDP
                else (PROTO_ICMP, flow.client, flow.client_port, flow.dst)
            )
        )
        if self._by_key.get(key) is flow:
            del self._by_key[key]
        self._per_client[flow.client] -= 1
        if self._per_client[flow.client] <= 0:
            del self._per_client[flow.client]
        if flow.state == "opening" and flow.proto == PROTO_TCP and not host_gone:
            self._half_open -= 1
        self.counters["flows_closed"] += 1
        if not host_gone and not flow.host_gone:
            self._actions.append(Close(flow.id, abort))
        if not self.flows:
            self._sweep_at = None

    # ------------------------------------------------------------------ timers

    def _sweep(self, now: float) -> None:
        """Idle and connect timeouts, once a second while there are flows."""
        lim = self.limits
        for flow in list(self.flows.values()):
            idle = now - flow.last
            if flow.state == "opening":
                if idle >= lim.connect_timeout:
                    self.counters["timeout_connect"] += 1
                    if flow.proto == PROTO_TCP:
                        self._icmp_error(flow, flow.held[-1], ICMP_HOST_UNREACHABLE, now)
                    self._finish(flow, abort=True)
            elif flow.proto == PROTO_UDP:
                assured = flow.sent >= 2 and flow.replies >= 2
                if idle >= (lim.udp_stream_timeout if assured else lim.udp_timeout):
                    self.counters["timeout_udp"] += 1
                    self._finish(flow, abort=False)
            elif flow.proto == PROTO_ICMP:
                if idle >= lim.ping_timeout:
                    self.counters["timeout_icmp"] += 1
                    self._finish(flow, abort=False)
            elif idle >= lim.tcp_idle:
                self.counters["timeout_tcp"] += 1
                if flow.conn is not None:
                    flow.conn.abort()
                self._finish(flow, abort=True)
        self._sweep_at = now + 1.0 if self.flows else None

    # ------------------------------------------------------------------ output helpers

    def _quote(self, flow: Flow) -> bytes:
        """A packet like the client's, for an ICMP error to quote."""
        if flow.proto == PROTO_UDP:
            body = UdpRepr(flow.client_port, flow.dst_port).emit(flow.client, flow.dst)
            return _ip_packet(flow.client, flow.dst, PROTO_UDP, body)
        message = _echo_message(flow.client, flow.dst, True, flow.client_port, 0, b"")
        return _ip_packet(flow.client, flow.dst, *message)

    def _to_client(self, flow: Flow, packet: bytes) -> None:
        etype = ETHERTYPE_IPV4 if isinstance(flow.client, IPv4Address) else ETHERTYPE_IPV6
        self._out.append(ethernet_frame(flow.client_mac, self.mac, etype, packet))

    def _icmp_error(self, flow: Flow, offending: bytes, code: int, now: float) -> None:
        self._icmp_to(flow.client_mac, offending, code, now)

    def _icmp_to(self, mac: bytes, offending: bytes, code: int, now: float) -> None:
        """Destination unreachable from the gateway's address, within the error budget.
        ``code`` is ICMP's; for an IPv6 ``offending`` packet it becomes ICMPv6's (:data:`_V6`)."""
        if len(mac) != 6 or not offending:
            return
        if not self._errors.take(now):
            self.counters["icmp_rate_limited"] += 1
            return
        if offending[0] >> 4 == 6:
            if self.gateway6 is None:
                return
            code6 = _V6[code]
            self.counters[f"icmp6_unreachable_{code6}"] += 1
            packet = icmpv6_dest_unreachable(offending, self.gateway6.ip, code6)
            self._out.append(ethernet_frame(mac, self.mac, ETHERTYPE_IPV6, packet))
            return
        self.counters[f"icmp_unreachable_{code}"] += 1
        packet = icmp_dest_unreachable(offending, self.gateway.ip, code)
        self._out.append(ethernet_frame(mac, self.mac, ETHERTYPE_IPV4, packet))


_V6 = {ICMP_ADMIN_PROHIBITED: 1, ICMP_HOST_UNREACHABLE: 3, ICMP_PORT_UNREACHABLE: 4}
"""ICMP destination-unreachable codes and their ICMPv6 counterparts (RFC 4443 §3.1):
administratively prohibited → 1 (Linux: EACCES), host → address unreachable (EHOSTUNREACH),
port → port unreachable (ECONNREFUSED)."""


def _ip_packet(src: IPAddr, dst: IPAddr, proto: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet, by the addresses' family."""
    if isinstance(src, IPv4Address):
        return Ipv4Repr(src, dst, proto, payload).emit()  # type: ignore[arg-type]
    return Ipv6Repr(src, dst, proto, payload).emit()  # type: ignore[arg-type]


def _echo_message(
    src: IPAddr, dst: IPAddr, request: bool, ident: int, seq: int, payload: bytes
) -> tuple[int, bytes]:
    """(protocol, bytes) of an ICMP or ICMPv6 echo request / reply from ``src`` to ``dst``."""
    if isinstance(src, IPv4Address):
        make = IcmpRepr.echo_request if request else IcmpRepr.echo_reply
        return PROTO_ICMP, make(ident, seq, payload).emit()
    make6 = Icmpv6Repr.echo_request if request else Icmpv6Repr.echo_reply
    return NEXT_HEADER_ICMPV6, make6(ident, seq, payload).emit(src, dst)  # type: ignore[arg-type]


_ANSWERED = frozenset(
    {
        "refused_metadata",
        "refused_loopback",
        "refused_reserved",
        "refused_link_local",
        "refused_private",
        "refused_own_network",
        "refused_node_address",
        "refused_client_flows",
        "refused_network_flows",
    }
)
"""Refusals answered with "administratively prohibited": the client learns at once that this
destination is not reachable here. Multicast is never answered (RFC 1812 §4.3.2.7); the rate
and half-open caps are silent, so the client's own retry comes back when there is room."""
