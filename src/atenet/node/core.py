"""The node's packet core: sealed datagrams in, frames switched, sealed datagrams out.

Sans-I/O: :class:`NodeCore` is fed datagrams with the time (``datagram(data, addr, now)``) and
sends through a ``send(packet, addr)`` callable the shell gives it. Things the shell must act on
asynchronously (load a network's chain, join or leave its member collection) come out of
:meth:`NodeCore.take_events`. Chain state comes in through :meth:`NetworkRuntime.apply_state`.

Per datagram: parse the clear header → find the network by id → pick the key by key id
(0 = the node-to-node key, else an access key) → the sending port's rate bucket (before any
crypto) → authenticate and check the replay window (or, for a sender with no window, the time
floor) → switch. Every failure is dropped and counted by reason, never answered — except a
hello not bound to this node instance, which gets a ``challenge`` and no port (see
docs/protocol.md, "Replay across restarts and nodes").
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atenet.addressing import ipv4_for, ipv6_for
from atenet.chain.state import AccessKey, NetworkState
from atenet.errors import AtenetError, DecodeError
from atenet.fast import changed
from atenet.node.nat import is_local_address
from atenet.node.routes import ROUTE_KIND, RoutePort, sync_routes
from atenet.node.schema import CONTROL, SchemaError, parse
from atenet.offload import OffloadError, check
from atenet.overlay.replay import Freshness
from atenet.overlay.seal import (
    NODE_KEY_ID,
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Opener,
    PacketKey,
    Sealer,
    SealError,
    derive_node_secret,
    parse_header,
)
from atenet.router.dhcp import Bind, DhcpServer, Lease
from atenet.router.gateway import DEFAULT_DNS6, Gateway
from atenet.router.nat import Nat
from atenet.router.neighbours import Neighbours
from atenet.router.querier import Querier
from atenet.switch.core import STORM_RATE, Port, Switch
from atenet.switch.mcast import Multicast
from atenet.switch.proxy import NeighbourProxy
from atenet.switch.snoop import IpTable
from atenet.wire.dhcp import is_dhcp_request_frame

UDP_IDLE = 60.0
"""A UDP client port lives this long after its last packet (tok keeps it alive every 15 s)."""

PEER_GRACE = 45.0
"""A member with no heartbeat record yet is flooded to this long after it joined."""

ETH_MIN = 14

ADDRESS_CACHE = 4096
"""MACs whose derived IPs a network keeps; the cache is emptied when it would grow past this."""

MAX_PORTS_PER_KEY = 64
"""UDP client ports one access key may hold on one node (one key per person or device: 64
concurrent sessions is far above honest use, and stops one key holder from making thousands)."""

MAX_PORTS_PER_ADDRESS = 256
"""UDP client ports from one source IP address on one node, over every network and key (room
for a NAT gateway with many clients behind it)."""

PORT_RATE = 100_000.0
"""Packets per second one client port may send to this node (its token bucket's refill); a
super-frame counts as one packet. Why this figure: the bucket exists so that one session cannot
take a node's whole CPU from the others, so it sits at about half of what one core forwards on
the compiled path (64-byte datagrams: ~5 µs of node CPU each, ~200k/s per core, measured on a
2-vCPU VM), and above what one honest tok sends (~65k small datagrams/s there). It was 30,000
while the node was Python only; by then it throttled a single honest 64-byte UDP flow to 30k/s
while the path carried 45k (bench/RESULTS.md, issue 14)."""

PORT_BURST = 10_000.0
"""The bucket's depth: 0.1 s at the default rate."""

_NS = 1_000_000_000

MAX_BINDS = 256
"""Lease events waiting to be appended to the chain, per network (the DHCP server's own rate
limits keep this far below; a store outage longer than that loses only the newest bindings,
whose clients get no ACK and retry)."""


@dataclass(frozen=True)
class PortLimits:
    """Bounds on client ports, per node; see the constants above and docs/protocol.md."""

    per_key: int = MAX_PORTS_PER_KEY
    per_address: int = MAX_PORTS_PER_ADDRESS
    rate: float = PORT_RATE
    burst: float = PORT_BURST
    storm: float = STORM_RATE
    """Frames per second a local port may flood (switch storm control; 0: no limit)."""


Addr = tuple[str, int]
Send = Callable[[bytes, Addr], None]


def sender_id_for(node_id: str) -> int:
    """A node's sender id: 32 bits of SHA-256 of its id (unique per node with high odds)."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "big")


def parse_endpoint(endpoint: str) -> Addr:
    """``host:port`` or ``[v6]:port`` -> a sendto address (names resolved once, here)."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = socket.gethostbyname(host)
    return host, int(port)


def _derived(derive: Callable[[bytes, bytes, str], Any], net: bytes, mac: bytes, cidr: str) -> str:
    """An address text from :mod:`atenet.addressing`, "" for a network without that family."""
    if not cidr:
        return ""
    try:
        return str(derive(net, mac, cidr).ip)
    except AtenetError:
        return ""


class UdpClientPort(Port):
    """A `tok connect` client: frames to it are sealed with its own access key.

    ``tokens`` / ``bucket_at`` are its receive-side token bucket (see :class:`PortLimits`),
    checked before decryption so a flooding client's excess costs no AES time.
    """

    __slots__ = ("addr", "bucket_at", "seal", "send", "sender_id", "tokens")

    def __init__(
        self,
        addr: Addr,
        key_id: int,
        sender_id: int,
        sealer: Sealer,
        send: Send,
        now: float,
        burst: float = PORT_BURST,
    ) -> None:
        super().__init__(f"udp:{addr[0]}:{addr[1]}/k{key_id}", "udp", now, key_id)
        self.addr = addr
        self.sender_id = sender_id
        self.seal = sealer.seal
        self.send = send
        self.tokens = burst
        self.bucket_at = now

    def deliver(self, frame: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(frame)
        self.send(self.seal(frame), self.addr)

    def deliver_packet(self, packet: bytes) -> None:
        """An offloaded packet, sealed whole (the client said ``offload`` in its hello)."""
        self.frames_out += 1
        self.bytes_out += len(packet)
        self.send(self.seal(packet, TYPE_SUPERFRAME), self.addr)

    def control(self, message: dict[str, Any]) -> None:
        self.send(self.seal(json.dumps(message).encode(), TYPE_CONTROL), self.addr)


class NetworkRuntime:
    """One network served by this node: keys from the chain, the switch, client ports."""

    def __init__(
        self,
        network_id: bytes,
        node_id: str,
        send: Send,
        counter_start: int,
        emit: Callable[[str, bytes], None],
        *,
        freshness: Freshness | None = None,
        instance: str = "",
        limits: PortLimits | None = None,
        address_ports: Counter[str] | None = None,
    ) -> None:
        """``freshness``, ``instance``, ``limits`` and ``address_ports`` are the node's, shared
        by all its networks (see :class:`NodeCore`)."""
        self.network_id = network_id
        self.node_id = node_id
        self.sender_id = sender_id_for(node_id)
        self.send = send
        self.counter_start = counter_start
        self.emit = emit
        self.state: NetworkState | None = None
        self.switch = Switch(
            self._to_peers, self._to_peers_packet, self.addresses,
            to_peer=self._to_peer, to_peer_packet=self._to_peer_packet,
        )  # fmt: skip
        self.switch.to_mirror_peers = self._to_mirror_peers
        self.switch.to_group_peers = self._to_group_peers
        self._addresses: dict[bytes, tuple[str, str]] = {}
        self.openers: dict[int, Opener] = {}
        self.sealers: dict[int, Sealer] = {}
        self.revoked: set[int] = set()
        self.usable: dict[int, AccessKey] = {}
        """Access keys usable at the last :meth:`apply_state`: the only ones whose material
        :meth:`_derive` builds, so junk naming other key ids costs no derivation."""
        self.key_seen: dict[int, float] = {}
        """When a derived key last had a port, a derivation or a port-less packet: material idle
        longer than UDP_IDLE whose opener accepted nothing at or above the freshness floor is
        dropped by :meth:`expire` (see :meth:`_drop_idle_keys`)."""
        self.derivations = 0
        """Access keys derived (lazily, on first use, again after an idle drop)."""
        self.clients: dict[tuple[int, int], UdpClientPort] = {}
        self.peers: tuple[Addr, ...] = ()
        self.peer_ids: tuple[str, ...] = ()
        self.peer_senders: dict[int, Addr] = {}
        self.peer_names: dict[int, str] = {}
        """Live peers' node ids by sender id (for status, `tok fdb` and snooping)."""
        """Live peers by sender id: where a frame for a MAC learned behind one is sealed to."""
        self.mirror_nodes: set[str] = set()
        """Peers whose heartbeat says they have a mirror port (`tok monitor`), set by the
        shell: unicast from local ports is also sent to them (docs/learning.md)."""
        self.mirror_peers: tuple[tuple[int, Addr], ...] = ()
        self.alive_until: dict[str, float] = {}  # node id -> end of its heartbeat's validity
        self.drops: Counter[str] = Counter()
        self._node_sealer: Sealer | None = None
        self.freshness = freshness if freshness is not None else Freshness(counter_start)
        self.instance = instance
        self.limits = limits if limits is not None else PortLimits()
        self.switch.set_storm_rate(self.limits.storm)
        self.address_ports: Counter[str] = address_ports if address_ports is not None else Counter()
        self.key_ports: Counter[int] = Counter()
        self.clock: Callable[[], float] = time.time
        """The time the gateway and DHCP server see (Unix time; simulations set their own)."""
        self.sync_routes: Callable[[float], None] = lambda now: None
        """The node's :func:`~atenet.node.routes.sync_routes` (set by :class:`NodeCore`): called
        when routes may need linking now rather than at the next once-a-second tick."""
        self.ip_table = IpTable()
        """IP → MAC from ARP/ND snooping (switch/snoop.py), for `tok fdb`."""
        self.switch.snoop = self._snoop
        self.gateway: Gateway | None = None
        self.dhcp: DhcpServer | None = None
        self.neighbours: Neighbours | None = None
        """The gateway's neighbour cache, for packets routed into this network."""
        self.querier: Querier | None = None
        """IGMP/MLD general queries from the gateway while snooping is on (built on first poll)."""
        self.route_ports: dict[bytes, RoutePort] = {}
        """This network's routes in use, by target network id (node/routes.py)."""
        self.network_of: Callable[[bytes], NetworkRuntime | None] = lambda _id: None
        """The node's other networks by id (set by :class:`NodeCore`)."""
        self._router_config: tuple[Any, ...] | None = None
        self.node_nat = True
        """False when the operator turned NAT off for the whole node (``atenet run --no-nat``;
        set by :class:`NodeCore` from its ``nat``): the network then has no internet access
        here, whatever its chain says (see :attr:`internet`)."""
        self.nat: Nat | None = None
        """The internet forwarder (router/nat.py, docs/nat.md) while :attr:`internet` holds."""
        self.nat_wake: Callable[[NetworkRuntime], None] = lambda _r: None
        """Tells the shell (node/nat.py) that :attr:`nat` has work or was replaced (set by
        :class:`NodeCore` from its own ``nat_wake``, which the daemon sets)."""
        self.nat_is_local: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = (
            is_local_address
        )
        """Whether an address is the node's own: NAT never reaches the node itself."""
        self.binds: deque[dict[str, Any]] = deque()
        """Lease event payloads the shell appends to the chain ("lease" event), oldest first."""

    # ------------------------------------------------------------------ chain state

    def apply_state(self, state: NetworkState, now: float) -> list[Port]:
        """Take keys, members and settings from the chain; return ports closed by revocation."""
        changed()  # keys, settings, gateway, members: cached flows are re-checked
        self.state = state
        self._addresses.clear()  # the CIDRs may have changed
        start = max(self.counter_start, int(now * _NS))  # counters track the clock
        if state.data_key is not None and NODE_KEY_ID not in self.openers:
            node_key = PacketKey(derive_node_secret(state.data_key), NODE_KEY_ID)
            opener = Opener(node_key, freshness=self.freshness)
            # Peer floods sealed before this node had a local port were never meant for it.
            opener.min_counter = self._active_since
            self.openers[NODE_KEY_ID] = opener
            self._node_sealer = Sealer(self.network_id, node_key, self.sender_id, start)
        usable = {k.key_id: k for k in state.keys.values() if k.usable(now)}
        for key_id in [k for k in self.openers if k != NODE_KEY_ID and k not in usable]:
            self._drop_key(key_id)
        # Key material is derived in packet() when a key is first named, not here: a node holds
        # it for its own hosts, not for every access key of the network.
        self.usable = usable
        self.revoked = {k for k in state.keys if k not in usable}
        self._configure_router(state, now)
        self._configure_fdb(state, now)
        closed = []
        for key, port in list(self.switch.ports.items()):
            if port.key_id is not None and port.key_id not in usable:
                if key in self.clients:
                    self.remove_client(key)  # type: ignore[arg-type]
                else:
                    self.remove_port(key)
                port.close()
                closed.append(port)
        self.refresh_peers(now)
        self.sync_routes(now)  # a route added or removed, or the target of one just loaded
        return closed

    def refresh_peers(self, now: float) -> None:
        """Flood to every other member whose heartbeat is still valid (or that just joined)."""
        if self.state is None:
            return
        peers, ids = [], []
        for member in self.state.members.values():
            if member.node_id == self.node_id:
                continue
            if now > self.alive_until.get(member.node_id, member.since + PEER_GRACE):
                continue
            for endpoint in member.endpoints[:1]:
                try:
                    peers.append(parse_endpoint(endpoint))
                    ids.append(member.node_id)
                except (OSError, ValueError):
                    self.drops["bad_peer_endpoint"] += 1
        self.peers = tuple(peers)
        self.peer_ids = tuple(ids)
        senders = {sender_id_for(n): a for n, a in zip(ids, peers, strict=True)}
        if senders != self.peer_senders:
            changed()  # cached flows to a peer name its address (atenet.fast.changed)
        self.peer_senders = senders
        self.peer_names = {sender_id_for(n): n for n in ids}
        self.mirror_peers = tuple(
            (sender_id_for(n), a) for n, a in zip(ids, peers, strict=True) if n in self.mirror_nodes
        )
        self.switch.set_mirror_peers(bool(self.mirror_peers))

    def _configure_fdb(self, state: NetworkState, now: float) -> None:
        """The learning switch's bounds and age from the chain (`tok network set --fdb-*`),
        live: the table is kept (docs/learning.md). The snooped IP table ages alike.

        Also gives a new switch its first time: WebSocket frames are learned at the time of
        the last tick, and a network loaded for a page that connects before its first tick
        would stamp the page's MAC with 0 — aged out at that tick."""
        if not self.switch.now:
            self.switch.now = now
        s = state.settings
        self.switch.configure(s.fdb_age, s.fdb_macs, s.fdb_port_macs, s.fdb_peer_macs)
        self.ip_table.age_limit = float(s.fdb_age)
        self.switch.proxy = (
            NeighbourProxy(self.ip_table, self.switch, lambda: self.clock())
            if s.proxy_arp
            else None
        )

    # ------------------------------------------------------------------ gateway

    @property
    def internet(self) -> bool:
        """Whether this node gives the network internet access (NAT) now: the owner turned it on
        in the chain (``tok network set --internet on``) and the operator did not turn NAT off
        for the node (``atenet run --no-nat``). DHCP and RA offer the gateway as the default
        router only then: a default route through a gateway that cannot reach the internet
        would black-hole a host's traffic instead of letting it use another interface."""
        return self.node_nat and self.state is not None and self.state.settings.internet

    def _configure_router(self, state: NetworkState, now: float) -> None:
        s = state.settings
        config = (s.cidr, s.cidr6, s.mtu, tuple(s.dns), self.internet)
        if config != self._router_config:
            self._router_config = config
            self._build_router(state)
            self.nat_wake(self)  # the shell drops the old forwarder's sockets
        if self.nat is not None:
            self.nat.set_allow_private(s.nat_private)
        if s.snooping != (self.switch.mcast is not None):
            self.switch.mcast = Multicast() if s.snooping else None  # off: multicast floods
            self.querier = None
        self._sync_leases(state, now)

    def _build_router(self, state: NetworkState) -> None:
        """The network's gateway and DHCP server, rebuilt when its settings change."""
        s = state.settings
        self.gateway = self.dhcp = self.neighbours = self.querier = None
        self.nat = None
        self.switch.gateway = None
        self.switch.gateway_mac = b"\xff" * 6
        self.switch.gateway_packet = None
        if not s.cidr:
            return
        dns4 = tuple(a for a in s.dns if ":" not in a)
        dns6 = tuple(ipaddress.IPv6Address(a) for a in s.dns if ":" in a) or DEFAULT_DNS6
        try:
            gateway = Gateway(
                self.network_id, s.cidr, s.cidr6 or None, s.mtu, dns6=dns6,
                default_route=self.internet,
            )  # fmt: skip
            dhcp = DhcpServer(
                self.network_id, s.cidr, gateway.ipv4, gateway.mac, s.mtu, dns4,
                node_id=self.node_id, default_route=self.internet,
            )  # fmt: skip
        except (AtenetError, ValueError):
            self.drops["gateway_config"] += 1  # e.g. a /31: no room for a gateway
            return
        table = state.lease_table
        last = table.recent[-1][0] if table.recent else 0
        dhcp.seed([Lease.from_payload(r["seq"], r) for r in table.by_ip.values()], last)
        self.gateway, self.dhcp = gateway, dhcp
        self.neighbours = Neighbours(gateway, unreachable=self._unreachable, snooped=self._snooped)
        self.switch.gateway_mac = gateway.mac
        self.switch.gateway = self._to_gateway
        if self.internet:
            self.nat = Nat(
                ipaddress.IPv4Interface(f"{gateway.ipv4}/{gateway.network4.prefixlen}"),
                gateway.mac, s.mtu, is_local=self.nat_is_local, allow_private=s.nat_private,
                gateway6=None if gateway.network6 is None else ipaddress.IPv6Interface(
                    f"{gateway.ipv6}/{gateway.network6.prefixlen}"
                ),
            )  # fmt: skip
            gateway.internet = self._to_nat
            self.switch.gateway_packet = self._nat_packet
            if gateway.network6 is not None:
                gateway.internet6 = self._to_nat6

    def _to_nat6(self, raw: bytes, packet: Any, src_mac: bytes, now: float) -> None:
        """As :meth:`_to_nat` for IPv6."""
        if self.nat is not None:
            self.nat.packet6(raw, packet, src_mac, now)
            self.nat_wake(self)

    def _to_nat(self, raw: bytes, packet: Any, src_mac: bytes, now: float) -> None:
        """A client's packet for the internet (the gateway's hook): to the forwarder, whose
        output and host-socket requests the shell takes when woken."""
        if self.nat is not None:
            self.nat.packet(raw, packet, src_mac, now)
            self.nat_wake(self)

    def nat_out(self, frames: list[bytes]) -> None:
        """The forwarder's frames: to the local port that has the client's MAC (flooded to
        the local ports when the switch does not know it); never to peers."""
        for frame in frames:
            port = self.switch.lookup(frame[:6])
            self.switch.from_gateway(frame, port if isinstance(port, Port) else None)

    def nat_out_packets(self, packets: list[bytes]) -> None:
        """As :meth:`nat_out` for :meth:`Nat.poll_packets`' virtio-net packets: TSO
        super-segments go whole to a client port that takes offloads (cut into frames by the
        switch for one that does not), everything else as a plain frame."""
        switch = self.switch
        for packet in packets:
            port = switch.lookup(packet[10:16])
            to = port if isinstance(port, Port) else None
            if packet[1] or packet[0] & 1:  # gso_type or F_NEEDS_CSUM: offloaded
                switch.packet_from_gateway(packet, to)
            else:
                switch.from_gateway(packet[10:], to)

    def _nat_packet(self, port: Port, packet: bytes) -> bool:
        """The switch's ``gateway_packet``: an offloaded packet from a local port for the
        gateway; a TCP super-frame of a NAT flow goes to the forwarder whole (docs/nat.md)."""
        gateway, nat = self.gateway, self.nat
        if gateway is None or nat is None or not gateway.nat_tcp(packet, 10):
            return False
        if not nat.tcp_frame(packet, 10, self.clock()):
            return False
        self.nat_wake(self)
        return True

    def _sync_leases(self, state: NetworkState, now: float) -> None:
        """Hand the DHCP server the lease events it has not seen, in chain order: they settle
        the REQUESTs waiting for their binding (ACK or NAK)."""
        dhcp = self.dhcp
        table = state.lease_table
        if dhcp is None or not table.recent or table.recent[-1][0] <= dhcp.last_seq:
            return
        if dhcp.last_seq < table.forgotten:  # too far behind: start again from the table
            self.drops["lease_resync"] += 1
            self._build_router(state)
            return
        records = []
        for seq, payload in table.recent:
            if seq > dhcp.last_seq:
                try:
                    records.append(Lease.from_payload(seq, payload))
                except DecodeError:
                    self.drops["bad_lease_event"] += 1
        self._dhcp_out(dhcp.apply_bindings(records, now), None)

    def _to_gateway(self, port: Port, frame: bytes) -> None:
        """A frame from a local port for the gateway (the switch only hands those over)."""
        now = self.clock()
        gateway, nat = self.gateway, self.nat
        if (  # the NAT forwarder's TCP segments: raw bytes to its stack (docs/nat.md)
            nat is not None
            and gateway is not None
            and gateway.nat_tcp(frame, 0)
            and nat.tcp_frame(frame, 0, now)
        ):
            self.nat_wake(self)
            return
        if is_dhcp_request_frame(frame):
            if self.dhcp is not None:
                # Bind limits per access key: a key's sessions and reconnects share one bucket.
                limit_key = port if port.key_id is None else ("key", port.key_id)
                self._dhcp_out(self.dhcp.frame(frame, now, limit_key), port)
            return
        if self.gateway is not None:
            for out in self.gateway.frame(frame, now):
                self.switch.from_gateway(out, port)
        if self.neighbours is not None and frame[12:14] in (b"\x08\x06", b"\x86\xdd"):
            self.inject(self.neighbours.learn(frame, now))  # a local host answering our ARP
        if self.nat is not None and frame[12:14] == b"\x08\x06":
            self.nat.arp(frame, now)  # a client answering the forwarder's stack

    def inject(self, frames: list[bytes]) -> None:
        """Frames the neighbour cache lets go (routed packets, its requests, ICMP errors): into
        the switch through a route port, so they flood to the member nodes too; through the
        gateway to the local ports when no route leads here."""
        if not frames:
            return
        port = next((p for p in self.switch.ports.values() if p.kind == ROUTE_KIND), None)
        for frame in frames:
            if port is not None:
                self.switch.from_local(port, frame)
            else:
                self.switch.from_gateway(frame)

    def _dhcp_out(self, actions: list[Any], port: Port | None) -> None:
        for action in actions:
            if isinstance(action, Bind):
                if len(self.binds) >= MAX_BINDS:
                    self.drops["lease_queue_full"] += 1
                    continue
                self.binds.append(action.payload())
                self.emit("lease", self.network_id)
            else:
                self.switch.from_gateway(action.frame, port)

    def _unreachable(self, packet: bytes, now: float) -> None:
        """An ICMP error for the sender of a packet routed here that found no host: back into
        the sender's network, whose hosts are on this node (routing happens at the sender's
        node), through the route port it came by."""
        try:
            dst = ipaddress.ip_address(packet[16:20] if packet[0] >> 4 == 4 else packet[24:40])
        except ValueError:
            return
        for port in self.switch.ports.values():
            if isinstance(port, RoutePort) and port.source.gateway is not None:
                source = port.source
                if dst in source.gateway.network4 or dst in (source.gateway.network6 or ()):
                    if source.neighbours is not None:
                        source.inject(source.neighbours.send(packet, dst, now))
                    return

    def poll_gateway(self, now: float) -> None:
        """Periodic router advertisements, while the network has local ports to hear them;
        the neighbour cache's repeated requests, through a route port into this network."""
        gateway = self.gateway
        if gateway is None:
            return
        at = gateway.poll_at()
        if at is not None and now >= at:
            frames = gateway.poll(now)  # the schedule runs on with no one to hear it, too
            for frame in frames if len(self.switch) else ():
                self.switch.from_gateway(frame)
        neighbours = self.neighbours
        if neighbours is not None and (at := neighbours.poll_at()) is not None and now >= at:
            self.inject(neighbours.poll(now))
        if self.switch.mcast is not None:
            querier = self.querier
            if querier is None:
                querier = self.querier = Querier(gateway.mac, gateway.ipv4, gateway.link_local, now)
            if now >= querier.next_at:
                for frame in querier.poll(now) if len(self.switch) else ():
                    self.switch.from_gateway(frame)

    @property
    def is_member(self) -> bool:
        return self.state is not None and self.node_id in self.state.members

    # ------------------------------------------------------------------ ports

    def addresses(self, mac: bytes) -> tuple[str, str]:
        """``mac``'s IPv4 (its DHCP binding, else the hashed address) and IPv6 (hashed) in
        this network ("" when unknown).

        Cached per MAC (status is read every second for every port; the cache is bounded)."""
        found = self._addresses.get(mac)
        if found is not None:
            return found
        s = self.state.settings if self.state is not None else None
        lease = self.dhcp.by_mac.get(mac) if self.dhcp is not None else None
        if lease is not None:  # bound by DHCP: the lease, which may differ after a collision
            ipv4 = str(lease.ip)
        else:
            ipv4 = _derived(ipv4_for, self.network_id, mac, s.cidr) if s else ""
        ipv6 = _derived(ipv6_for, self.network_id, mac, s.cidr6) if s else ""
        if len(self._addresses) >= ADDRESS_CACHE:
            self._addresses.clear()
        self._addresses[mac] = (ipv4, ipv6)
        return ipv4, ipv6

    _active_since = 0
    """Clock (ns) when this network last got a first local port: the node-to-node key's floor
    for peers with no replay window here."""

    def add_port(self, key: object, port: Port) -> None:
        if port.key_id is not None and self.state is not None:
            access_key = self.state.keys.get(port.key_id)
            port.label = access_key.label if access_key is not None else ""
        was_idle = len(self.switch) == 0
        self.switch.add(key, port)
        if port.kind != ROUTE_KIND and self.state is not None and self.state.routes:
            # Its routes are linked now, not at the next tick: the first packet of a host that
            # just connected (a TCP SYN) would get "network unreachable" and fail at once.
            self.sync_routes(port.last_seen)
        if was_idle:
            self._active_since = max(self._active_since, int(port.last_seen * _NS))
            opener = self.openers.get(NODE_KEY_ID)
            if opener is not None:
                opener.min_counter = self._active_since
            self.emit("active", self.network_id)

    def remove_port(self, key: object) -> Port | None:
        port = self.switch.remove(key)
        if port is not None and len(self.switch) == 0:
            self.emit("idle", self.network_id)
        return port

    def remove_client(self, key: tuple[int, int]) -> Port | None:
        port = self.clients.pop(key, None)
        if port is not None:
            self._uncount(port)
        return self.remove_port(key)

    def _uncount(self, port: UdpClientPort) -> None:
        for table, item in ((self.key_ports, port.key_id), (self.address_ports, port.addr[0])):
            left = table[item] - 1  # type: ignore[index]
            if left > 0:
                table[item] = left  # type: ignore[index]
            else:
                table.pop(item, None)  # type: ignore[arg-type]
        key_id = port.key_id
        if key_id is not None and key_id in self.sealers:
            self.key_seen[key_id] = max(self.key_seen.get(key_id, 0.0), port.last_seen)

    def advance(self, now: float) -> None:
        """Move every sealer's counter up to the clock (called about once a second), so a
        receiver with no window for us never sees a counter lagging real time."""
        now_ns = int(now * _NS)
        if self._node_sealer is not None:
            self._node_sealer.advance(now_ns)
        for sealer in self.sealers.values():
            sealer.advance(now_ns)

    def expire(self, now: float) -> list[Port]:
        self.switch.age(now)  # MAC table aging, and the time WebSocket frames are learned at
        self.ip_table.age(now)
        stale = [k for k, p in self.clients.items() if now - p.last_seen > UDP_IDLE]
        closed = [p for p in (self.remove_client(k) for k in stale) if p is not None]
        self._drop_idle_keys(now)
        return closed

    def _drop_idle_keys(self, now: float) -> None:
        """Drop the material of access keys with no port, idle for UDP_IDLE.

        Idle time alone is not enough: a client's counters may run up to AHEAD_SKEW ahead of
        this node's clock, so a packet accepted a minute ago can still be above the freshness
        floor, and a re-derived opener (no replay windows) would take its replay. A key is only
        dropped once everything its opener accepted is below the floor, so a replay of any of
        it is refused as ``stale`` after re-derivation, exactly as when a sender's window is
        forgotten (:class:`~atenet.overlay.seal.Opener`)."""
        key_ports, key_seen, openers = self.key_ports, self.key_seen, self.openers
        floor = self.freshness.floor
        for key_id in [k for k in self.sealers if k not in key_ports]:
            if now - key_seen.get(key_id, now) <= UDP_IDLE:
                continue
            opener = openers.get(key_id)
            if opener is None or opener.newest() < max(floor, opener.min_counter):
                self._drop_key(key_id)

    def _derive(self, key_id: int, now: float) -> Opener | None:
        """Build a usable access key's packet key, opener and sealer on its first packet.

        Only key ids in the chain and usable are derived (the chain bounds them); once derived a
        key stays until it has had no port for UDP_IDLE, so junk naming a real key id costs at
        most one derivation per key per UDP_IDLE."""
        key = self.usable.get(key_id)
        if key is None or not key.usable(now):  # revoked keys are not in usable; expired ones
            return None
        start = max(self.counter_start, int(now * _NS))  # counters track the clock
        packet_key = PacketKey(key.secret, key_id)
        opener = Opener(packet_key, freshness=self.freshness)
        self.openers[key_id] = opener
        self.sealers[key_id] = Sealer(self.network_id, packet_key, self.sender_id, start)
        self.key_seen[key_id] = now
        self.derivations += 1
        return opener

    def _drop_key(self, key_id: int) -> None:
        changed()  # its opener and sealer go (atenet.fast.changed)
        self.openers.pop(key_id, None)
        self.sealers.pop(key_id, None)
        self.key_seen.pop(key_id, None)

    # ------------------------------------------------------------------ packets

    def _to_peers(self, frame: bytes, ptype: int = TYPE_FRAME) -> int:
        """Seal once and send to every live peer; returns how many peers it went to."""
        peers = self.peers
        if peers and self._node_sealer is not None:
            sealed = self._node_sealer.seal(frame, ptype)  # once per flood, the same bytes to all
            send = self.send
            for addr in peers:
                send(sealed, addr)
            return len(peers)
        return 0

    def _to_peers_packet(self, packet: bytes) -> int:
        """Offloaded packets travel between nodes as they are: every node takes them."""
        return self._to_peers(packet, TYPE_SUPERFRAME)

    def _to_group_peers(self, data: bytes, peers: list[int], offloaded: bool) -> int:
        """A frame to a multicast group: sealed once, the same bytes to each live member peer.
        A member whose heartbeat ran out is skipped (its membership expires), not flooded to
        every peer as :meth:`_to_peer` would for an unknown one."""
        sealer = self._node_sealer
        senders = self.peer_senders
        addrs = [senders[p] for p in peers if p in senders]
        if sealer is None or not addrs:
            return 0
        sealed = sealer.seal(data, TYPE_SUPERFRAME if offloaded else TYPE_FRAME)
        for addr in addrs:
            self.send(sealed, addr)
        return len(addrs)

    def _to_peer(self, frame: bytes, peer: int, ptype: int = TYPE_FRAME) -> int:
        """Seal for the one peer (by sender id) the switch learned the destination behind; a
        peer no longer live (or never known) gets the frame by flood instead, as if unknown."""
        addr = self.peer_senders.get(peer)
        if addr is None or self._node_sealer is None:
            return self._to_peers(frame, ptype)
        self.send(self._node_sealer.seal(frame, ptype), addr)
        return 1

    def _to_peer_packet(self, packet: bytes, peer: int) -> int:
        return self._to_peer(packet, peer, TYPE_SUPERFRAME)

    def _to_mirror_peers(self, data: bytes, peer: int | None, offloaded: bool) -> None:
        """A frame that went to one port or peer, sealed once more for the peers with a mirror
        port but ``peer`` (which has it already)."""
        sealer = self._node_sealer
        if sealer is None:
            return
        sealed = None
        for sender, addr in self.mirror_peers:
            if sender != peer:
                if sealed is None:
                    sealed = sealer.seal(data, TYPE_SUPERFRAME if offloaded else TYPE_FRAME)
                self.send(sealed, addr)

    def packet(
        self,
        data: bytes,
        addr: Addr,
        ptype: int,
        key_id: int,
        sender_id: int,
        counter: int,
        now: float,
    ) -> None:
        self.switch.now = now  # the time MAC learning stamps entries with
        opener = self.openers.get(key_id)
        if opener is None:
            opener = self._derive(key_id, now)
            if opener is None:
                known = key_id in self.revoked or key_id in self.usable  # revoked or expired
                self.drops["revoked_key" if known else "unknown_key"] += 1
                return
        if key_id == NODE_KEY_ID:
            try:
                payload = opener.open(data, sender_id, counter)
            except SealError as err:
                self.drops[err.reason] += 1
                return
            self._from_peer(payload, ptype, sender_id)
            return
        key = (key_id, sender_id)
        port = self.clients.get(key)
        if port is not None:
            # The port's token bucket, checked before any crypto so a flooding client's excess
            # is cheap, but charged only below for a packet that authenticated: forged packets
            # naming this port's sender id (it is in clear) cannot drain its bucket.
            limits = self.limits
            tokens = port.tokens + (now - port.bucket_at) * limits.rate
            port.tokens = tokens if tokens < limits.burst else limits.burst
            port.bucket_at = now
            if tokens < 1.0:
                self.drops["port_rate"] += 1
                return
        try:
            payload = opener.open(data, sender_id, counter)
        except SealError as err:
            self.drops[err.reason] += 1
            return
        if port is None:
            self.key_seen[key_id] = now
            # Only a control message bound to this node instance opens a port (below).
            if ptype == TYPE_CONTROL:
                self._control_new(addr, key_id, sender_id, key, payload, now)
            else:
                self.drops["no_port"] += 1
            return
        port.tokens -= 1.0
        if port.addr != addr:
            self._roam(port, addr)  # the client roamed or its NAT rebound: follow it
        port.last_seen = now
        if ptype == TYPE_FRAME:
            if len(payload) < ETH_MIN:
                self.drops["runt"] += 1
                return
            self.switch.from_local(port, payload)
        elif ptype == TYPE_SUPERFRAME:
            if self._valid_packet(payload):
                self.switch.packet_from_local(port, payload)
        elif ptype == TYPE_CONTROL:
            self._control(port, key, payload)
        else:
            self.drops["type"] += 1

    def _from_peer(self, frame: bytes, ptype: int, sender_id: int | None = None) -> None:
        """A frame or offloaded packet a peer node sent; ``sender_id`` names the node, so the
        switch learns the frame's source MAC behind it."""
        if ptype == TYPE_FRAME:
            if len(frame) < ETH_MIN:
                self.drops["runt"] += 1
                return
        elif ptype != TYPE_SUPERFRAME:
            self.drops["type"] += 1
            return
        if len(self.switch) == 0:
            self.drops["no_local_ports"] += 1
            if self.is_member:
                self.emit("stale", self.network_id)
            return
        if ptype == TYPE_FRAME:
            self.switch.from_peer(frame, sender_id)
        elif self._valid_packet(frame):
            self.switch.packet_from_peer(frame, sender_id)

    def _valid_packet(self, packet: bytes) -> bool:
        """Refuse (and count) an offload header no kernel would have written."""
        try:
            check(packet)
        except OffloadError as err:
            self.drops[f"offload_{err.reason}"] += 1
            return False
        return True

    def _roam(self, port: UdpClientPort, addr: Addr) -> None:
        changed()  # cached flows to and from the port name its old address
        if port.addr[0] != addr[0]:
            self._uncount(port)
            self.key_ports[port.key_id] += 1  # type: ignore[index]
            self.address_ports[addr[0]] += 1
        port.addr = addr

    def _control_new(
        self,
        addr: Addr,
        key_id: int,
        sender_id: int,
        key: tuple[int, int],
        payload: bytes,
        now: float,
    ) -> None:
        """A control message from a session with no port here: a port only for a ``hello`` or
        ``ping`` that names this node instance (so a captured one replayed to another node, or
        to this node after a restart, opens nothing), within the per-key and per-address caps.
        An unbound hello or ping is answered with a ``challenge`` naming the instance — sealed
        with the client's key, no larger than what came in, and no port."""
        try:
            message = parse(payload, CONTROL)
        except SchemaError:
            self.drops["bad_control"] += 1
            return
        op = message["op"]
        bound = message.get("instance") == self.instance
        if op not in ("hello", "ping"):
            self.drops["no_port"] += 1
            return
        sealer = self.sealers[key_id]
        if not bound:
            self.drops["unbound_hello"] += 1
            challenge = {"op": "challenge", "instance": self.instance}
            self.send(sealer.seal(json.dumps(challenge).encode(), TYPE_CONTROL), addr)
            return
        if self.key_ports[key_id] >= self.limits.per_key:
            self.drops["key_port_limit"] += 1
            return
        if self.address_ports[addr[0]] >= self.limits.per_address:
            self.drops["address_port_limit"] += 1
            return
        port = UdpClientPort(addr, key_id, sender_id, sealer, self.send, now, self.limits.burst)
        self.clients[key] = port
        self.key_ports[key_id] += 1
        self.address_ports[addr[0]] += 1
        self.add_port(key, port)
        self._control(port, key, payload)

    def _control(self, port: UdpClientPort, key: tuple[int, int], payload: bytes) -> None:
        try:
            message = parse(payload, CONTROL)
            op = message["op"]
        except SchemaError:
            self.drops["bad_control"] += 1
            return
        if op in ("hello", "ping"):
            # Repeated on every ping, so a port re-created after expiry learns it again.
            offload = message.get("offload") == 1
            if offload != port.offload:
                changed()  # cached flows to it send offloaded packets whole, or not
            port.offload = offload
            port.host = message.get("host", "")
            self.switch.set_mirror(port, message.get("mirror") == 1)  # `tok monitor`
            port.control(self.welcome("welcome" if op == "hello" else "pong"))
        elif op == "bye":
            self.remove_client(key)
        else:
            self.drops["bad_control"] += 1

    def welcome(self, op: str) -> dict[str, Any]:
        """What a client needs to configure its interface (it only holds a token)."""
        s = self.state.settings if self.state is not None else None
        return {
            "op": op,
            "node": self.node_id,
            "name": s.name if s else "",
            "cidr": s.cidr if s else "",
            "cidr6": s.cidr6 if s else "",
            "mtu": s.mtu if s else 0,
            "offload": 1,  # this node takes offloaded packets (TYPE_SUPERFRAME)
            "gateway": str(self.gateway.ipv4) if self.gateway is not None else "",
            "gateway6": str(self.gateway.ipv6 or "") if self.gateway is not None else "",
            "dhcp": 1 if self.dhcp is not None else 0,
            "routes": self.routed_cidrs(),
            "instance": self.instance,  # what the client's hellos and pings name
        }

    def status(self) -> dict[str, Any]:
        s = self.state.settings if self.state is not None else None
        return {
            "id": self.network_id.hex(),
            "name": s.name if s else "",
            "cidr": s.cidr if s else "",
            "member": self.is_member,
            "peers": [f"{h}:{p}" for h, p in self.peers],
            "peer_ids": list(self.peer_ids),
            "frames_to_peers": self.switch.frames_to_peers,
            "frames_from_peers": self.switch.frames_from_peers,
            "segmented": self.switch.segmented,
            "fdb": len(self.switch.fdb),
            "ip_table": len(self.ip_table),
            "ip_table_counters": dict(self.ip_table.counters),
            "fdb_counters": self.switch.fdb_status(),
            "fdb_peers": self._fdb_peers(),
            "mcast": self._mcast_status(),
            "ports": [p.counters() for p in self.switch.ports.values()],
            "drops": dict(self.drops),
            "keys_derived": len(self.sealers),
            "key_derivations": self.derivations,
            "gateway": self._gateway_status(),
            "dhcp": dict(self.dhcp.counters) if self.dhcp is not None else {},
            "nat": {"internet": self.internet, **(self.nat.status() if self.nat else {})},
        }

    def _snoop(self, frame: bytes, where: Port | int) -> None:
        if isinstance(where, Port):
            name = where.name
        else:
            name = f"node {self.peer_names.get(where, f'{where:08x}')}"
        self.ip_table.observe(frame, name, self.clock())  # rare frames: read the clock

    def _snooped(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> tuple[bytes, float] | None:
        """The snooped table's MAC for ``ip`` and its age, for the gateway's neighbour cache
        (it trusts only fresh claims): a routed packet to a host that spoke ARP/ND lately
        leaves without a broadcast request."""
        entry = self.ip_table.entries.get(ip)
        return None if entry is None else (entry.mac, max(0.0, self.clock() - entry.seen))

    def fdb_view(self, now: float) -> dict[str, Any]:
        """The MAC table (MAC → port or node) and the snooped IP → MAC table, for `tok fdb`."""
        names = self.peer_names
        macs = []
        for mac, where in sorted(self.switch.fdb.items()):
            if isinstance(where, int):
                macs.append({"mac": mac.hex(":"), "node": names.get(where, f"{where:08x}")})
            else:
                macs.append({"mac": mac.hex(":"), "port": where.name})
        s = self.state.settings if self.state is not None else None
        return {
            "id": self.network_id.hex(),
            "name": s.name if s else "",
            "macs": macs,
            "ips": self.ip_table.view(now),
            "groups": self.switch.mcast.view(now, self._member_name) if self.switch.mcast else [],
            "snooping": self.switch.mcast is not None,
        }

    def _member_name(self, member: Port | int) -> str:
        if isinstance(member, Port):
            return f"port {member.name}"
        return f"node {self.peer_names.get(member, f'{member:08x}')}"

    def _mcast_status(self) -> dict[str, Any]:
        """IGMP/MLD snooping: on or off, the groups with members here, and its counters."""
        mcast = self.switch.mcast
        if mcast is None:
            return {"snooping": False}
        return {
            "snooping": True,
            "groups": len(mcast.groups),
            "counters": dict(mcast.counters),
            "queries": self.querier.sent if self.querier is not None else 0,
        }

    def _fdb_peers(self) -> dict[str, int]:
        """MACs learned behind each peer node, by node id (sender id in hex if not live)."""
        names = self.peer_names
        return {
            names.get(peer, f"{peer:08x}"): count
            for peer, count in self.switch.peer_learned.items()
        }

    def _gateway_status(self) -> dict[str, Any]:
        gateway = self.gateway
        if gateway is None:
            return {}
        return {
            "ipv4": str(gateway.ipv4),
            "ipv6": str(gateway.ipv6 or ""),
            "mac": gateway.mac.hex(":"),
            "handled": dict(gateway.handled),
            "drops": dict(gateway.drops),
            "ignored": gateway.ignored,
            "leases_waiting": len(self.binds),
        }

    def routed_cidrs(self) -> list[str]:
        """CIDRs of the networks this one has routes to, as far as this node knows them (a
        target not loaded yet is left out; the route is linked once it is), for clients."""
        return [str(n) for n in self.routed_networks()]

    def routed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        state = self.state
        if state is None or self.gateway is None:
            return []
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for route in state.routes.values():
            target = self.network_of(bytes.fromhex(route.to))
            if target is not None and target.gateway is not None:
                out.append(target.gateway.network4)
                if target.gateway.network6 is not None and self.gateway.network6 is not None:
                    out.append(target.gateway.network6)
        return out


class NodeCore:
    """Every network this node serves, behind one UDP socket."""

    def __init__(
        self,
        node_id: str,
        send: Send,
        counter_start: int,
        *,
        instance: str | None = None,
        limits: PortLimits | None = None,
        clock: Callable[[], float] = time.time,
        nat: bool = True,
    ) -> None:
        """``clock``: the Unix time the gateways and DHCP servers read (frames from WebSocket
        ports reach them without passing through :meth:`datagram`).

        ``counter_start``: the clock in ns when this process started (``time.time_ns()``);
        it starts the sealers' counters and is the floor below which a sender with no replay
        window is refused (anything older was captured before this process existed).
        ``instance``: random per process, named in clients' hellos (default: 8 random bytes).
        ``nat``: False when the operator turned NAT off for the whole node (``atenet run
        --no-nat``): no network gets internet access here, whatever its chain says."""
        self.node_id = node_id
        self.send = send
        self.counter_start = counter_start
        self.instance = instance if instance is not None else os.urandom(8).hex()
        self.limits = limits if limits is not None else PortLimits()
        self.clock = clock
        self.nat = nat
        """Whether this node may NAT at all (``atenet run --no-nat`` makes it False)."""
        self.nat_wake: Callable[[NetworkRuntime], None] = lambda _r: None
        """Called when a network's forwarder has work or was replaced (the daemon runs its
        shell, node/nat.py); in-process tests without a shell leave it a no-op."""
        self.freshness = Freshness(counter_start)
        self.address_ports: Counter[str] = Counter()
        self.networks: dict[bytes, NetworkRuntime] = {}
        self.drops: Counter[str] = Counter()
        self.datagrams = 0
        self._events: list[tuple[str, bytes]] = []
        self._asked: set[bytes] = set()

    def _emit(self, what: str, network_id: bytes) -> None:
        if what in ("stale", "lease") and (what, network_id) in self._events:
            return  # once per batch: every peer packet of a flood would say it again
        self._events.append((what, network_id))

    @property
    def has_events(self) -> bool:
        """Whether :meth:`take_events` has something (cheap; checked after every read batch)."""
        return bool(self._events)

    def take_events(self) -> list[tuple[str, bytes]]:
        """Things the shell must do: ("load" | "active" | "idle" | "stale" | "lease", network
        id); "lease": append the network's :attr:`NetworkRuntime.binds` to its chain."""
        events, self._events = self._events, []
        self._asked.clear()
        return events

    def add_network(self, network_id: bytes) -> NetworkRuntime:
        runtime = NetworkRuntime(
            network_id, self.node_id, self.send, self.counter_start, self._emit,
            freshness=self.freshness, instance=self.instance, limits=self.limits,
            address_ports=self.address_ports,
        )  # fmt: skip
        runtime.clock = self.clock
        runtime.node_nat = self.nat
        runtime.nat_wake = lambda r: self.nat_wake(r)
        runtime.sync_routes = lambda now: sync_routes(self, now)
        runtime.network_of = self.networks.get
        self.networks[network_id] = runtime
        return runtime

    def remove_network(self, network_id: bytes) -> None:
        runtime = self.networks.pop(network_id, None)
        if runtime is not None:
            if runtime.nat is not None:
                runtime.nat = None
                runtime.nat_wake(runtime)  # the shell closes its host sockets
            for key in list(runtime.clients):
                runtime.remove_client(key)
            sync_routes(self, self.clock())  # routes into or out of it go with it

    def datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.datagrams += 1
        try:
            network_id, ptype, key_id, sender_id, counter = parse_header(data)
        except SealError as err:
            self.drops[err.reason] += 1
            return
        if now != self.freshness.now:
            self.freshness.set_now(now)
        runtime = self.networks.get(network_id)
        if runtime is None:
            self.drops["unknown_network"] += 1
            if network_id not in self._asked:  # one load request per network per batch
                self._asked.add(network_id)
                self._events.append(("load", network_id))
            return
        runtime.packet(data, addr, ptype, key_id, sender_id, counter, now)

    def expire(self, now: float) -> None:
        self.freshness.set_now(now)
        for runtime in self.networks.values():
            runtime.expire(now)
            runtime.refresh_peers(now)
            runtime.advance(now)
            runtime.poll_gateway(now)
        sync_routes(self, now)

    def request_load(self, network_id: bytes) -> None:
        """Ask the shell to load a network (a route leads to it)."""
        if network_id not in self._asked:
            self._asked.add(network_id)
            self._events.append(("load", network_id))

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "datagrams": self.datagrams,
            "drops": dict(self.drops),
            "networks": [r.status() for r in self.networks.values()],
        }
