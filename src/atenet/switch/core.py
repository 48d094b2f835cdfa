"""One network's switch on one node: local ports, peer nodes, and the loop rule.

The switch decides where a frame goes; it never touches a socket. Local ports are objects with a
``deliver(frame)`` method supplied by the I/O shell (a UDP client, a WebSocket, a monitor); peer
nodes are reached through one ``to_peers(frame)`` callable that seals the frame once and sends the
same bytes to every member node.

Forwarding (a learning switch, docs/learning.md):

* every frame teaches the switch where its source MAC lives: behind a local port (frames local
  ports send) or behind a peer node (frames peers send, named by the node's sender id) — the
  forwarding database (:attr:`Switch.fdb`), aged, bounded per port and per network;
* a unicast frame to a MAC in the table goes to that one port, or sealed to that one node;
* unknown unicast, broadcast and multicast flood as before: from a local port to every *other*
  local port and to the peers; from a peer to local ports only, never back out to peers — the
  loop rule: with full-mesh flooding, each frame crosses the overlay exactly once;
* a port flagged :attr:`Port.mirror` (`tok monitor`) gets every frame the switch handles,
  whatever the table says; and while a peer node has such a port (:meth:`Switch.set_mirror_peers`,
  from its heartbeat), unicast from local ports is also sent to it (``to_mirror_peers``), so a
  monitor on any node still sees the whole network.

Offloaded packets (a virtio-net header + a frame that may be a TCP super-frame or carry a
partial checksum, see :mod:`atenet.offload`) are switched whole: ports that said they take them
(``port.offload``) and peer nodes get the packet as it came; every other port gets the standard
frames it stands for, made once per flood however many such ports there are. A port takes
standard frames unless it says otherwise, so a new kind of port (WebSocket, a userspace stack)
is correct without knowing offloads exist.

The hot path allocates nothing per frame beyond the 6-byte slice of the destination MAC: ports
are kept in a tuple rebuilt only when the set of ports changes, counters are plain ints on the
port objects. Learning is one dict lookup on the destination per frame; the source side costs a
6-byte compare against the MAC the port last taught the table (:attr:`Port.fdb_mac`) and one
attribute store of the time, the table itself is only written when a MAC is new or moved. The
switch has no clock: its owner sets :attr:`Switch.now` (per datagram batch, and on its
once-a-second tick) and calls :meth:`Switch.age`.

Bounds: a port teaches at most :data:`FDB_PORT_MAX` MACs and the table holds at most
:data:`FDB_MAX`; past either, new MACs are simply not learned (their frames still flood, and a
counter says so) — a port spraying random source MACs can never evict another port's entries.
The gateway's MAC is never learned (it is every node's own, see below). A peer node teaches at
most :data:`FDB_PEER_MAX`. All four (age and bounds) are per-network settings
(:meth:`Switch.configure`, applied live).

MAC theft: a MAC learned behind a local port opened with an access key is that port's claim
(:meth:`Switch._claimed`): a frame from a port with another key sending from it is dropped, one
from a peer is forwarded but not learned (the local origin was checked, the peer's host cannot
be); both count ``fdb_theft`` (``mac_theft``). The same key may move it (a client reconnecting).

Names (docs/hosts.md): every port carries what identifies the host behind it — the access key's
label and the host name its client sent (set by the node), and the source MAC of its frames,
learned here. Learning costs one 6-byte compare per frame (``bytes.startswith`` at offset 6, no
slice); the MAC is copied only when it changes. The port's IPv4/IPv6 are derived from that MAC
by the hashed scheme (:mod:`atenet.addressing`) when :meth:`Port.counters` is asked, through the
``addresses`` function the switch's owner gives (it knows the network id and CIDRs).

The gateway (the ethereal interface, :mod:`atenet.router`): when the owner sets
:attr:`Switch.gateway`, frames from *local* ports addressed to the gateway's MAC, or to a
broadcast/multicast MAC, are also handed to it — never frames from peers, so N nodes never give
N answers. A unicast frame to the gateway's MAC goes to the gateway only: the gateway MAC is the
same on every node and its owner is always local, so flooding it would only make other nodes
drop it. ARP (and IPv6 neighbour advertisements) to the gateway's MAC are the exception: they
answer the gateway's own requests when it routes into this network, which any node may have
sent, so they flood as before (to every node's route ports, see :mod:`atenet.node.routes`).

``frames_to_peers`` counts frames (and offloaded packets) that reached at least one peer node:
once per flood, however many peers got it — so with no live peer it stays put. ``to_peers``
returns how many peers it sent to.
"""

from __future__ import annotations

from collections.abc import Callable

from atenet.fast import changed
from atenet.offload import VNET_HDR_LEN, OffloadError, to_frames
from atenet.switch.mcast import REPORT, Multicast
from atenet.switch.snoop import is_neighbour_frame

NO_MAC = bytes(6)
"""A port's MAC before its first frame (shown as "")."""

FDB_AGE = 300.0
"""Seconds a learned MAC stays in the table after its last frame (Linux bridges and OVS: 300)."""

FDB_PORT_MAX = 64
"""MACs one local port may teach the table (a host, or a small bridge or VM host behind it)."""

FDB_MAX = 8192
"""MACs one network's table holds on one node (OVS's default ``mac-table-size``)."""

STORM_RATE = 1000.0
"""Frames per second one local port may flood (broadcast, unknown unicast, unregistered
multicast) — storm control, as hardware switches have: a host needs a handful (ARP, ND, DHCP,
mDNS); one that sprays floods would otherwise make the node deliver each frame to every port.
The burst is twice this. 0 turns it off."""

FDB_PEER_MAX = 4096
"""MACs one peer node may teach the table: half of :data:`FDB_MAX`, so one node spraying (or
relaying a spray) can never fill the table the local ports and other nodes learn into. (Linux
bridges cap per port with ``max_learned``, off by default; OVS only per table.)"""

Peer = int
"""A peer node in the table: its sender id (the clear header of its sealed datagrams)."""

Addresses = Callable[[bytes], tuple[str, str]]
"""MAC -> (IPv4, IPv6) text by the hashed scheme, ``""`` where unknown."""


def _no_addresses(_mac: bytes) -> tuple[str, str]:
    return "", ""


def format_mac(mac: bytes) -> str:
    """``02:ab:..`` text, or ``""`` for a MAC not learned yet."""
    return "" if mac == NO_MAC else mac.hex(":")


class Port:
    """A local switch port. Subclasses implement :meth:`deliver`."""

    __slots__ = (
        "addresses",
        "bytes_in",
        "bytes_out",
        "drops",
        "fdb_at",
        "fdb_mac",
        "flood_at",
        "flood_tokens",
        "flooded_over",
        "frames_in",
        "frames_out",
        "host",
        "key_id",
        "kind",
        "label",
        "last_seen",
        "learned",
        "mac",
        "mirror",
        "name",
        "offload",
    )

    gateway_source = False
    """True for ports that send from the gateway's MAC by design (a route port's routed frames):
    not counted as ``refused`` (the MAC is still never learned)."""

    def __init__(self, name: str, kind: str, now: float = 0.0, key_id: int | None = None) -> None:
        self.name = name
        self.kind = kind
        self.key_id = key_id
        """The access key this port was opened with: revoking it closes the port."""
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.drops = 0
        self.last_seen = now
        self.offload = False
        """True when the client takes offloaded packets (:meth:`deliver_packet`)."""
        self.label = ""
        """The access key's label from the chain (set by the node)."""
        self.host = ""
        """The host name the client sent in its hello (validated by the node)."""
        self.mac = NO_MAC
        """Source MAC of the port's latest frame (:meth:`Switch.from_local` learns it)."""
        self.addresses: Addresses = _no_addresses
        """Derives the port's IPs from its MAC; :meth:`Switch.add` sets the network's own."""
        self.learned: set[bytes] = set()
        """MACs the table holds for this port (bounded by :attr:`Switch.fdb_port_max`)."""
        self.fdb_mac = NO_MAC
        """The MAC of this port's latest learned frame: a frame from it only refreshes
        :attr:`fdb_at` (the hot path); NO_MAC when that MAC is not in the table for this port."""
        self.fdb_at = now
        """When this port last sent a frame from :attr:`fdb_mac` (its table entry's age)."""
        self.mirror = False
        """Gets every frame the switch handles (`tok monitor`); set by :meth:`Switch.set_mirror`."""
        self.flood_tokens = -1.0  # storm control's bucket; filled on the port's first flood
        self.flood_at = now
        self.flooded_over = 0
        """Frames this port tried to flood past the storm limit (dropped)."""

    def learn(self, frame: bytes, at: int) -> None:
        """Remember the source MAC at ``frame[at:at + 6]`` (called only when it changed).

        Multicast sources are bogus (no NIC sends them) and are not learned."""
        mac = frame[at : at + 6]
        if len(mac) == 6 and not mac[0] & 1:
            self.mac = bytes(mac)

    def deliver(self, frame: bytes) -> None:
        """Send ``frame`` out of this port (to the client behind it)."""
        raise NotImplementedError

    def deliver_packet(self, packet: bytes) -> None:
        """Send an offloaded packet (virtio-net header + frame); only called when ``offload``.

        Ports that set ``offload`` override this; the default hands over standard frames, so a
        subclass that sets the flag without overriding stays correct.
        """
        for frame in to_frames(packet):
            self.deliver(frame)

    def close(self) -> None:
        """The switch removed this port (e.g. its key was revoked): drop the client."""

    def counters(self) -> dict[str, int | float | str | bool]:
        ipv4, ipv6 = ("", "") if self.mac == NO_MAC else self.addresses(self.mac)
        return {
            "name": self.name,
            "kind": self.kind,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": self.drops,
            "last_seen": self.last_seen,
            "offload": self.offload,
            "label": self.label,
            "host": self.host,
            "mac": format_mac(self.mac),
            "ipv4": ipv4,
            "ipv6": ipv6,
            "learned": len(self.learned),
            "mirror": self.mirror,
            "storm_drops": self.flooded_over,
        }


def _no_peers(_frame: bytes) -> int:
    return 0


def _no_mirror_peers(_data: bytes, _peer: Peer | None, _offloaded: bool) -> None:
    return None


def _gateway_answer(frame: bytes, at: int) -> bool:
    """Whether a unicast frame to the gateway MAC (at offset ``at``) is an ARP packet or an
    ICMPv6 neighbour advertisement: those flood on, see the module doc."""
    etype = frame[at + 12 : at + 14]
    if etype == b"\x08\x06":
        return True
    # IPv6 (0x86dd), next header ICMPv6 (58) with no extension header, type 136 (NA).
    return (
        etype == b"\x86\xdd"
        and frame[at + 20 : at + 21] == b"\x3a"
        and (frame[at + 54 : at + 55] == b"\x88")
    )


class Switch:
    """Switches frames between the local ports of one network and its peer nodes, learning
    where each MAC lives (see the module doc)."""

    __slots__ = (
        "_mirroring",
        "_mirrors",
        "_next_sweep",
        "_ports",
        "addresses",
        "bad_packets",
        "fdb",
        "fdb_age",
        "fdb_aged",
        "fdb_full",
        "fdb_max",
        "fdb_moves",
        "fdb_peer_full",
        "fdb_peer_max",
        "fdb_port_full",
        "fdb_port_max",
        "fdb_refused",
        "fdb_seen",
        "fdb_theft",
        "frames_from_peers",
        "frames_to_peers",
        "gateway",
        "gateway_mac",
        "gateway_packet",
        "mcast",
        "mirror_peers",
        "now",
        "peer_learned",
        "ports",
        "proxy",
        "segmented",
        "snoop",
        "storm_burst",
        "storm_drops",
        "storm_rate",
        "to_group_peers",
        "to_mirror_peers",
        "to_peer",
        "to_peer_packet",
        "to_peers",
        "to_peers_packet",
    )

    def __init__(
        self,
        to_peers: Callable[[bytes], int | None] = _no_peers,
        to_peers_packet: Callable[[bytes], int | None] | None = None,
        addresses: Addresses = _no_addresses,
        *,
        to_peer: Callable[[bytes, Peer], int | None] | None = None,
        to_peer_packet: Callable[[bytes, Peer], int | None] | None = None,
        fdb_age: float = FDB_AGE,
        fdb_max: int = FDB_MAX,
        fdb_port_max: int = FDB_PORT_MAX,
        storm_rate: float = STORM_RATE,
        fdb_peer_max: int = FDB_PEER_MAX,
    ) -> None:
        """``to_peers(frame)`` floods a standard frame to the peers; ``to_peers_packet(packet)``
        an offloaded packet. Without the latter, peers get standard frames. Both return how
        many peers they sent to (``frames_to_peers`` counts floods that reached one).
        ``to_peer(frame, peer)`` / ``to_peer_packet(packet, peer)`` send to the one peer a MAC
        was learned behind (without them: flooded to all, which is always correct).
        ``addresses`` derives a port's IPs from its MAC (see the module doc)."""
        self.ports: dict[object, Port] = {}
        self._ports: tuple[Port, ...] = ()
        self._mirrors: tuple[Port, ...] = ()
        self._mirroring = False  # local mirror ports or mirror peers: one check per frame
        self.mirror_peers = False
        """Some peer node has a mirror port (:meth:`set_mirror_peers`)."""
        self.to_mirror_peers: Callable[[bytes, Peer | None, bool], object] = _no_mirror_peers
        """``(data, peer, offloaded)``: send a frame sent to one port or peer also to the peer
        nodes that have a mirror port, but ``peer`` (it got the frame already)."""
        self.to_peers = to_peers
        self.to_peers_packet = to_peers_packet or self._segment_to_peers
        self.to_peer = to_peer or (lambda frame, _peer: self.to_peers(frame))
        self.to_peer_packet = to_peer_packet or self._segment_to_peer
        self.addresses = addresses
        self.frames_to_peers = 0
        """Frames and offloaded packets sent to at least one peer (once per flood)."""
        self.frames_from_peers = 0
        self.segmented = 0
        """Offloaded packets turned into standard frames (once per flood that needed it)."""
        self.bad_packets = 0
        """Offloaded packets dropped because their headers could not be segmented."""
        self.gateway: Callable[[Port, bytes], None] | None = None
        """Takes frames from local ports for the gateway (see the module doc)."""
        self.gateway_packet: Callable[[Port, bytes], bool] | None = None
        """Offered an offloaded packet (virtio-net header + frame) from a local port for the
        gateway's MAC before it is cut into frames for :attr:`gateway`; True: it took the
        packet whole (the NAT forwarder's stack takes TCP super-frames as they are)."""
        self.gateway_mac = b"\xff" * 6  # no unicast frame matches until a gateway is set
        self.snoop: Callable[[bytes, Port | Peer], None] | None = None
        """Takes ARP and neighbour discovery frames (from local ports and peers) for the
        network's IP → MAC table (:mod:`atenet.switch.snoop`)."""
        self.proxy: Callable[[Port, bytes], bool] | None = None
        """Proxy ARP / ND (a setting, off by default): offered each ARP / neighbour discovery
        frame a local port floods; True when it answered, and the frame is then not flooded."""
        self.now = 0.0
        """The time learning stamps entries with; the owner sets it (the switch has no clock)."""
        self.mcast: Multicast | None = None
        """IGMP/MLD snooping (:mod:`atenet.switch.mcast`); None floods all multicast."""
        self.to_group_peers: Callable[[bytes, list[Peer], bool], int] = self._to_each_peer
        """``(data, peers, offloaded)``: a frame to a registered group, to its member peer
        nodes; returns how many got it. The node's seals once and skips peers no longer live
        (:meth:`to_peer` would flood to all for each of those)."""
        self.fdb: dict[bytes, Port | Peer] = {}
        """MAC -> the local port or peer node (sender id) its frames came from."""
        self.fdb_seen: dict[bytes, float] = {}
        """MAC -> when it was learned or last refreshed (a port's current MAC: see fdb_at)."""
        self.fdb_age = fdb_age
        self.fdb_max = fdb_max
        self.fdb_port_max = fdb_port_max
        self.fdb_peer_max = fdb_peer_max
        self.peer_learned: dict[Peer, int] = {}
        """MACs in the table per peer node."""
        self.fdb_moves = 0
        """MACs that moved to another port or node (the entry replaced at once)."""
        self.fdb_port_full = 0
        """Frames whose new source MAC was not learned: the port holds fdb_port_max MACs."""
        self.fdb_full = 0
        """Frames whose new source MAC was not learned: the table holds fdb_max MACs."""
        self.fdb_refused = 0
        """Frames from a local port claiming the gateway's MAC (never learned)."""
        self.fdb_aged = 0
        """Entries removed because their MAC was silent for fdb_age seconds."""
        self.fdb_peer_full = 0
        """Frames whose new source MAC was not learned: the peer holds fdb_peer_max MACs."""
        self.fdb_theft = 0
        """Frames whose source MAC another local port claims (:meth:`_claimed`): dropped from
        a local port, forwarded but not learned from a peer."""
        self._next_sweep = 0.0
        self.storm_rate = storm_rate
        """Floods per second per local port (:data:`STORM_RATE`); 0: no limit."""
        self.storm_burst = 2 * storm_rate
        self.storm_drops = 0
        """Frames local ports tried to flood past the storm limit (dropped, also per port)."""

    def set_storm_rate(self, rate: float) -> None:
        self.storm_rate = rate
        self.storm_burst = 2 * rate

    def _storm(self, src: Port) -> bool:
        """Storm control: True (and counted) when ``src`` is over its flood budget. A token
        bucket per port, refilled by :attr:`now` (the caller's batch time)."""
        rate = self.storm_rate
        if not rate or src.gateway_source:
            return False
        now = self.now
        tokens = src.flood_tokens
        if tokens < 0:  # first flood: a full bucket
            tokens = self.storm_burst
        else:
            tokens += (now - src.flood_at) * rate
            if tokens > self.storm_burst:
                tokens = self.storm_burst
        src.flood_at = now
        if tokens < 1.0:
            src.flood_tokens = tokens
            src.flooded_over += 1
            src.drops += 1
            self.storm_drops += 1
            return True
        src.flood_tokens = tokens - 1.0
        return False

    def add(self, key: object, port: Port) -> None:
        port.addresses = self.addresses
        self.ports[key] = port
        self._rebuild()

    def remove(self, key: object) -> Port | None:
        port = self.ports.pop(key, None)
        self._rebuild()
        if port is not None:
            self._forget_port(port)
        return port

    def set_mirror(self, port: Port, mirror: bool) -> None:
        """Flag ``port`` as a mirror (it then gets every frame, see the module doc)."""
        if port.mirror != mirror:
            port.mirror = mirror
            self._rebuild()

    def set_mirror_peers(self, any_peer: bool) -> None:
        """Whether some live peer node has a mirror port: unicast from local ports is then
        also sent to those nodes (through :attr:`to_mirror_peers`), so a monitor on any node
        sees the whole network."""
        if any_peer != self.mirror_peers:
            changed()  # cached flows skip the mirrors (atenet.fast.changed)
        self.mirror_peers = any_peer
        self._mirroring = bool(self._mirrors) or any_peer

    @property
    def has_mirror(self) -> bool:
        """A local port is a mirror (the node says so in its heartbeat)."""
        return bool(self._mirrors)

    def _rebuild(self) -> None:
        changed()  # a port came, went or became a mirror (atenet.fast.changed)
        self._ports = tuple(self.ports.values())
        self._mirrors = tuple(p for p in self._ports if p.mirror)
        self._mirroring = bool(self._mirrors) or self.mirror_peers

    def __len__(self) -> int:
        return len(self._ports)

    # ------------------------------------------------------------------ frames

    def from_local(self, src: Port, frame: bytes) -> None:
        """A frame a local client sent: to the port or peer its destination was learned
        behind, else to all other local ports and once to the peers."""
        src.frames_in += 1
        src.bytes_in += len(frame)
        if frame.startswith(src.fdb_mac, 6):
            src.fdb_at = self.now
        elif not self._learn_port(src, frame, 6):
            return  # another port's MAC (mac_theft): not switched, not snooped
        if self.snoop is not None and is_neighbour_frame(frame):
            self.snoop(frame, src)
        gateway = self.gateway
        if gateway is not None and (frame[0] & 1 or frame.startswith(self.gateway_mac)):
            gateway(src, frame)
            if not frame[0] & 1 and not _gateway_answer(frame, 0):
                if self._mirrors:
                    self._mirror(frame, src, None)
                return  # for the gateway alone (see the module doc)
        dst = self.fdb.get(frame[:6])
        if dst is None:
            if self.proxy is not None and self._proxied(src, frame, 0):
                return
            if frame[0] & 1 and self._snooped(frame, 0, src, src, False):
                return
            if self._storm(src):
                return
            for port in self._ports:
                if port is not src:
                    port.deliver(frame)
            if self.to_peers(frame):
                self.frames_to_peers += 1
            return
        if dst.__class__ is int:
            if self.to_peer(frame, dst):  # type: ignore[arg-type]
                self.frames_to_peers += 1
            if self._mirroring:
                self._mirror_local(frame, src, dst)  # type: ignore[arg-type]
            return
        if dst is not src:  # a host behind the sender's own port: not sent back (no hairpin)
            dst.deliver(frame)  # type: ignore[union-attr]
        if self._mirroring:
            self._mirror_local(frame, src, dst)  # type: ignore[arg-type]

    def from_peer(self, frame: bytes, peer: Peer | None = None) -> None:
        """A frame another node sent (``peer``: its sender id, to learn the source behind it):
        to local ports only (the loop rule) — the one its destination was learned behind, or
        all of them when the destination is unknown here."""
        self.frames_from_peers += 1
        if self.snoop is not None and peer is not None and is_neighbour_frame(frame):
            self.snoop(frame, peer)
        fdb = self.fdb
        if peer is not None:
            mac = frame[6:12]
            if fdb.get(mac) == peer:  # known behind this peer: refresh (inlined: per frame)
                self.fdb_seen[mac] = self.now
            else:
                self._learn_peer(frame, 6, peer)
        dst = fdb.get(frame[:6])
        if dst is None:
            if frame[0] & 1 and self._snooped(frame, 0, peer, None, False):
                return
            for port in self._ports:
                port.deliver(frame)
            return
        if dst.__class__ is not int:
            dst.deliver(frame)  # type: ignore[union-attr]
        # else: a host behind another node (flooded by a sender that did not know it yet)
        if self._mirrors:
            self._mirror(frame, None, dst)  # type: ignore[arg-type]

    def _proxied(self, src: Port, data: bytes, at: int) -> bool:
        """Whether :attr:`proxy` answered this flooded frame (ARP / ND only, at offset ``at``);
        mirror ports still get the request."""
        if not (data[at] & 1 and is_neighbour_frame(data, at)):
            return False
        frame = data[at:] if at else data
        if not self.proxy(src, frame):  # type: ignore[misc]
            return False
        if self._mirrors:
            self._mirror(frame, src, None)
        return True

    def _snooped(
        self, data: bytes, at: int, source: Port | Peer | None, src: Port | None, offloaded: bool
    ) -> bool:
        """Send a multicast frame the snooping table routes — a report or leave, or a frame to
        a registered group — and say so; False (flood it) when there is no table or the table
        says flood. ``source`` is who sent it (a port or peer), ``src`` the local port or None."""
        if self.mcast is None:
            return False
        members = self.mcast.forward(data, at, source, self.now)
        if members is REPORT:
            self._report(data, src, offloaded)
        elif members is not None:
            self._to_members(data, src, members, offloaded)
        else:
            return False
        return True

    def _report(self, data: bytes, src: Port | None, offloaded: bool) -> None:
        """An IGMP/MLD report or leave: to every peer node when it came from a local port (so
        every node learns who listens), to mirror ports and local multicast-router ports — not
        to other hosts (see :data:`~atenet.switch.mcast.REPORT`). The gateway had it already."""
        assert self.mcast is not None
        ports = [p for p in self._mirrors if p is not src]
        for port in self.mcast.router_ports(self.now):
            if port is not src and port not in ports and port in self._ports:
                ports.append(port)
        if offloaded:
            self._flood_packet(data, src, tuple(ports))
        else:
            for port in ports:
                port.deliver(data)
        if src is not None and (self.to_peers_packet if offloaded else self.to_peers)(data):
            self.frames_to_peers += 1

    def _to_members(
        self, data: bytes, src: Port | None, members: dict[Port | Peer, float], offloaded: bool
    ) -> None:
        """A frame (or offloaded packet) to a registered multicast group: to its live member
        ports and mirror ports but ``src``; from a local port (``src`` set) also to its member
        peer nodes — or to every peer while some peer has a mirror port, so a monitor there sees
        it exactly once. From a peer: local ports only (the loop rule)."""
        now = self.now
        ports: list[Port] = []
        peers: list[Peer] = []
        for member, until in members.items():
            if until > now and member is not src:
                if member.__class__ is int:
                    peers.append(member)  # type: ignore[arg-type]
                else:
                    ports.append(member)  # type: ignore[arg-type]
        for port in self._mirrors:
            if port is not src and port not in ports:
                ports.append(port)
        for member in self.mcast.everything:  # type: ignore[union-attr]  # past their bound
            if member is not src and member not in ports and member not in peers:
                (peers if member.__class__ is int else ports).append(member)  # type: ignore[arg-type]
        if offloaded:
            if not self._flood_packet(data, src, tuple(ports)):
                return
        else:
            for port in ports:
                port.deliver(data)
        if src is None or not (peers or self.mirror_peers):
            return
        if self.mirror_peers:
            sent = (self.to_peers_packet if offloaded else self.to_peers)(data)
        else:
            sent = self.to_group_peers(data, peers, offloaded)
        if sent:
            self.frames_to_peers += 1

    def _to_each_peer(self, data: bytes, peers: list[Peer], offloaded: bool) -> int:
        """Without a node's :attr:`to_group_peers`: one :attr:`to_peer` call per peer."""
        one = self.to_peer_packet if offloaded else self.to_peer
        return sum(one(data, peer) or 0 for peer in peers)

    def _mirror(self, frame: bytes, src: Port | None, dst: Port | Peer | None) -> None:
        for port in self._mirrors:
            if port is not src and port is not dst:
                port.deliver(frame)

    def _mirror_local(self, frame: bytes, src: Port, dst: Port | Peer) -> None:
        """A frame from a local port that went to one port or peer: to the mirror ports, and
        to the peer nodes with one (frames from peers never: the loop rule)."""
        self._mirror(frame, src, dst)
        if self.mirror_peers:
            peer = dst if dst.__class__ is int else None
            self.to_mirror_peers(frame, peer, False)  # type: ignore[arg-type]

    def packet_from_local(self, src: Port, packet: bytes) -> None:
        """An offloaded packet a local client sent: as :meth:`from_local`, see the module doc."""
        src.frames_in += 1
        src.bytes_in += len(packet) - VNET_HDR_LEN
        if packet.startswith(src.fdb_mac, VNET_HDR_LEN + 6):
            src.fdb_at = self.now
        elif not self._learn_port(src, packet, VNET_HDR_LEN + 6):
            return  # another port's MAC (mac_theft)
        if self.snoop is not None and is_neighbour_frame(packet, VNET_HDR_LEN):
            self.snoop(packet[VNET_HDR_LEN:], src)
        gateway = self.gateway
        if gateway is not None and (
            packet[VNET_HDR_LEN] & 1 or packet.startswith(self.gateway_mac, VNET_HDR_LEN)
        ):
            # The gateway reads standard frames: a TSO super-frame routed through it is cut
            # into MTU-sized segments and a partial checksum completed first, unless
            # gateway_packet takes it whole (the NAT forwarder's TCP, docs/nat.md).
            take = self.gateway_packet
            if take is None or packet[VNET_HDR_LEN] & 1 or not take(src, packet):
                for frame in self._segment(packet) or ():
                    gateway(src, frame)
            if not packet[VNET_HDR_LEN] & 1 and not _gateway_answer(packet, VNET_HDR_LEN):
                if self._mirrors:
                    self._flood_packet(packet, src, self._mirrors)
                return
        dst = self.fdb.get(packet[VNET_HDR_LEN : VNET_HDR_LEN + 6])
        if dst is None:
            if self.proxy is not None and self._proxied(src, packet, VNET_HDR_LEN):
                return
            if packet[VNET_HDR_LEN] & 1 and self._snooped(packet, VNET_HDR_LEN, src, src, True):
                return
            if self._storm(src):
                return
            if self._flood_packet(packet, src, self._ports) and self.to_peers_packet(packet):
                self.frames_to_peers += 1
            return
        if dst.__class__ is int:
            if not self._flood_packet(packet, src, self._mirrors):
                return
            if self.to_peer_packet(packet, dst):  # type: ignore[arg-type]
                self.frames_to_peers += 1
            if self.mirror_peers:
                self.to_mirror_peers(packet, dst, True)  # type: ignore[arg-type]
            return
        ports = self._mirrors if dst is src else (dst, *self._mirrors)  # type: ignore[assignment]
        if self._flood_packet(packet, src, ports) and self.mirror_peers:
            self.to_mirror_peers(packet, None, True)

    def from_gateway(self, frame: bytes, to: Port | None = None) -> None:
        """A frame the gateway sends: to port ``to`` when the frame is addressed to its MAC (the
        port it answers), else to every local port. Never to peers: each node's gateway
        answers its own local ports."""
        if to is not None and frame.startswith(to.mac):
            to.deliver(frame)
            if self._mirrors:
                self._mirror(frame, to, None)
            return
        for port in self._ports:
            port.deliver(frame)

    def packet_from_gateway(self, packet: bytes, to: Port | None = None) -> None:
        """An offloaded packet the gateway sends (the NAT forwarder's TSO super-segments):
        as :meth:`from_gateway`, whole to ports that take offloads, cut into standard frames
        for the others (once, however many ports get them)."""
        if to is not None and packet.startswith(to.mac, VNET_HDR_LEN):
            self._flood_packet(packet, None, (to, *self._mirrors) if self._mirrors else (to,))
            return
        self._flood_packet(packet, None, self._ports)

    def packet_from_peer(self, packet: bytes, peer: Peer | None = None) -> None:
        """An offloaded packet another node sent: as :meth:`from_peer` (the loop rule)."""
        self.frames_from_peers += 1
        if peer is not None:
            self._learn_peer(packet, VNET_HDR_LEN + 6, peer)
            if self.snoop is not None and is_neighbour_frame(packet, VNET_HDR_LEN):
                self.snoop(packet[VNET_HDR_LEN:], peer)
        dst = self.fdb.get(packet[VNET_HDR_LEN : VNET_HDR_LEN + 6])
        if dst is None:
            if packet[VNET_HDR_LEN] & 1 and self._snooped(packet, VNET_HDR_LEN, peer, None, True):
                return
            self._flood_packet(packet, None, self._ports)
            return
        ports = self._mirrors if dst.__class__ is int else (dst, *self._mirrors)
        self._flood_packet(packet, None, ports)  # type: ignore[arg-type]

    def _flood_packet(self, packet: bytes, src: Port | None, ports: tuple[Port, ...]) -> bool:
        """Deliver ``packet`` to each of ``ports`` but ``src``; False if it was malformed."""
        frames: list[bytes] | None = None
        for port in ports:
            if port is src:
                continue
            if port.offload:
                port.deliver_packet(packet)
                continue
            if frames is None:
                frames = self._segment(packet)
                if frames is None:
                    return False
            for frame in frames:
                port.deliver(frame)
        return True

    def _segment_to_peers(self, packet: bytes) -> int:
        sent = 0
        for frame in self._segment(packet) or ():
            sent = max(sent, self.to_peers(frame) or 0)
        return sent

    def _segment_to_peer(self, packet: bytes, peer: Peer) -> int:
        sent = 0
        for frame in self._segment(packet) or ():
            sent = max(sent, self.to_peer(frame, peer) or 0)
        return sent

    def _segment(self, packet: bytes) -> list[bytes] | None:
        try:
            frames = to_frames(packet)
        except OffloadError:
            self.bad_packets += 1
            return None
        self.segmented += 1
        return frames

    # ------------------------------------------------------------------ learning

    def _learn_port(self, src: Port, frame: bytes, at: int) -> bool:
        """The slow path of learning from a local port: its frame's source MAC (at ``at``) is
        not the one it last taught the table. Learn it, move it here, or refuse it; False when
        the MAC is another port's claim (:meth:`_claimed`): the caller drops the frame."""
        changed()  # the table or a port's MAC may change (atenet.fast.changed)
        fdb = self.fdb
        mac = frame[at : at + 6]
        owner = fdb.get(mac)
        if owner is not None and owner is not src and self._claimed(owner, src):
            self.fdb_theft += 1
            return False
        if not frame.startswith(src.mac, at):
            src.learn(frame, at)
        old = src.fdb_mac
        if old != NO_MAC and fdb.get(old) is src:
            self.fdb_seen[old] = src.fdb_at  # keep the age the hot path kept on the port
        src.fdb_mac = NO_MAC
        if len(mac) < 6 or mac[0] & 1 or mac == NO_MAC:
            return True  # multicast sources are bogus (no NIC sends them); never learned
        if mac == self.gateway_mac:
            if not src.gateway_source:
                self.fdb_refused += 1
            return True
        if owner is not src:
            if len(src.learned) >= self.fdb_port_max:
                self.fdb_port_full += 1
                return True
            if owner is None:
                if len(fdb) >= self.fdb_max:
                    self.fdb_full += 1
                    return True
            else:
                self._unlink(mac, owner)
                self.fdb_moves += 1
            fdb[mac] = src
            src.learned.add(mac)
        now = self.now
        self.fdb_seen[mac] = now
        src.fdb_mac = mac
        src.fdb_at = now
        return True

    @staticmethod
    def _claimed(owner: Port | Peer, src: Port | None) -> bool:
        """Whether ``owner``'s entry is a claim that ``src`` (a local port, None for a peer)
        may not take over: the owner is a local port opened with an access key, and ``src`` is
        a peer node (the local origin wins: the node checked the owner's key, no node can
        check the host behind a peer) or a port opened with another key (the same key may
        move it: a client that reconnects before its old port has gone)."""
        if owner.__class__ is int:
            return False
        key = owner.key_id  # type: ignore[union-attr]
        return key is not None and (src is None or src.key_id != key)

    def _learn_peer(self, frame: bytes, at: int, peer: Peer) -> None:
        """Learn the source MAC of a frame from peer node ``peer`` (refreshed when known)."""
        mac = frame[at : at + 6]
        owner = self.fdb.get(mac)
        if owner == peer:
            self.fdb_seen[mac] = self.now
            return
        changed()  # the table may change (atenet.fast.changed)
        if len(mac) < 6 or mac[0] & 1 or mac == NO_MAC or mac == self.gateway_mac:
            return  # every node has the gateway MAC: it lives here, never behind a peer
        if owner is None:
            if len(self.fdb) >= self.fdb_max:
                self.fdb_full += 1
                return
        elif self._claimed(owner, None):
            self.fdb_theft += 1  # a local port's MAC: forwarded (loop rule), never learned
            return
        if self.peer_learned.get(peer, 0) >= self.fdb_peer_max:
            self.fdb_peer_full += 1
            return
        if owner is not None:
            self._unlink(mac, owner)
            self.fdb_moves += 1
        self.fdb[mac] = peer
        self.fdb_seen[mac] = self.now
        self.peer_learned[peer] = self.peer_learned.get(peer, 0) + 1

    def _unlink(self, mac: bytes, owner: Port | Peer) -> None:
        """Take ``mac`` from its owner's own bookkeeping (the caller replaces or deletes the
        table entry)."""
        if owner.__class__ is int:
            left = self.peer_learned.get(owner, 0) - 1  # type: ignore[call-overload]
            if left > 0:
                self.peer_learned[owner] = left  # type: ignore[index]
            else:
                self.peer_learned.pop(owner, None)  # type: ignore[call-overload]
            return
        owner.learned.discard(mac)  # type: ignore[union-attr]
        if owner.fdb_mac == mac:  # type: ignore[union-attr]
            owner.fdb_mac = NO_MAC  # type: ignore[union-attr]

    def _forget_port(self, port: Port) -> None:
        fdb, seen = self.fdb, self.fdb_seen
        for mac in port.learned:
            if fdb.get(mac) is port:
                del fdb[mac]
                seen.pop(mac, None)
        port.learned = set()
        port.fdb_mac = NO_MAC
        if self.mcast is not None:
            self.mcast.forget(port)

    def age(self, now: float) -> int:
        """Set the time and drop entries silent for more than ``fdb_age`` seconds; returns how
        many went. The table is swept at most every tenth of ``fdb_age`` (an entry lives
        between one and 1.1 times it), so the owner may call this on every tick."""
        self.now = now
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self.fdb_age / 10
        if self.mcast is not None:
            self.mcast.expire(now)
        oldest = now - self.fdb_age
        seen = self.fdb_seen
        stale = []
        for mac, owner in self.fdb.items():
            at = seen.get(mac, 0.0)
            if owner.__class__ is not int and owner.fdb_mac == mac:  # type: ignore[union-attr]
                at = max(at, owner.fdb_at)  # type: ignore[union-attr]
            if at < oldest:
                stale.append(mac)
        if stale:
            changed()  # entries leave the table (atenet.fast.changed)
        for mac in stale:
            self._unlink(mac, self.fdb.pop(mac))
            seen.pop(mac, None)
        self.fdb_aged += len(stale)
        return len(stale)

    def configure(self, age: float, max_entries: int, port_max: int, peer_max: int) -> None:
        """New table settings, live (``tok network set``): nothing learned is lost. A lower
        bound evicts nothing, it only stops learning until entries age out or ports go; a
        new age applies to every entry at the next sweep, which comes within a tenth of it."""
        if age != self.fdb_age:
            self.fdb_age = age
            self._next_sweep = min(self._next_sweep, self.now + age / 10)
        self.fdb_max = max_entries
        self.fdb_port_max = port_max
        self.fdb_peer_max = peer_max

    def fdb_status(self) -> dict[str, int]:
        """The table's size, bounds and counters (for status and /metrics)."""
        return {
            "entries": len(self.fdb),
            "max": self.fdb_max,
            "port_max": self.fdb_port_max,
            "age": int(self.fdb_age),
            "moves": self.fdb_moves,
            "port_full": self.fdb_port_full,
            "full": self.fdb_full,
            "refused": self.fdb_refused,
            "aged": self.fdb_aged,
            "storm_drops": self.storm_drops,
            "peer_max": self.fdb_peer_max,
            "peer_full": self.fdb_peer_full,
            "mac_theft": self.fdb_theft,
        }

    def lookup(self, mac: bytes) -> Port | Peer | None:
        """Where ``mac`` was learned: a local port, a peer's sender id, or None (flooded)."""
        return self.fdb.get(mac)

    def expire(self, now: float, idle: float, kind: str) -> list[Port]:
        """Remove ports of ``kind`` silent for more than ``idle`` seconds; return them."""
        stale = [
            key
            for key, port in self.ports.items()
            if port.kind == kind and now - port.last_seen > idle
        ]
        return [p for p in (self.remove(key) for key in stale) if p is not None]
