"""One network's switch on one node: local ports, peer nodes, and the loop rule.

The switch decides where a frame goes; it never touches a socket. Local ports are objects with a
``deliver(frame)`` method supplied by the I/O shell (a UDP client, a WebSocket, a monitor); peer
nodes are reached through one ``to_peers(frame)`` callable that seals the frame once and sends the
same bytes to every member node.

Forwarding (MVP: flood everything):

* a frame from a local port goes to every *other* local port and to the peers;
* a frame from a peer goes to local ports only, never back out to peers — the loop rule: with
  full-mesh flooding, each frame crosses the overlay exactly once.

Offloaded packets (a virtio-net header + a frame that may be a TCP super-frame or carry a
partial checksum, see :mod:`atenet.offload`) are switched whole: ports that said they take them
(``port.offload``) and peer nodes get the packet as it came; every other port gets the standard
frames it stands for, made once per flood however many such ports there are. A port takes
standard frames unless it says otherwise, so a new kind of port (WebSocket, a userspace stack)
is correct without knowing offloads exist.

The hot path allocates nothing per frame: ports are kept in a tuple rebuilt only when the set of
ports changes, counters are plain ints on the port objects.

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

from atenet.offload import VNET_HDR_LEN, OffloadError, to_frames

NO_MAC = bytes(6)
"""A port's MAC before its first frame (shown as "")."""

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
        "frames_in",
        "frames_out",
        "host",
        "key_id",
        "kind",
        "label",
        "last_seen",
        "mac",
        "name",
        "offload",
    )

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
        }


def _no_peers(_frame: bytes) -> int:
    return 0


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
    """Floods frames between the local ports of one network and its peer nodes."""

    __slots__ = (
        "_ports",
        "addresses",
        "bad_packets",
        "frames_from_peers",
        "frames_to_peers",
        "gateway",
        "gateway_mac",
        "ports",
        "segmented",
        "to_peers",
        "to_peers_packet",
    )

    def __init__(
        self,
        to_peers: Callable[[bytes], int | None] = _no_peers,
        to_peers_packet: Callable[[bytes], int | None] | None = None,
        addresses: Addresses = _no_addresses,
    ) -> None:
        """``to_peers(frame)`` floods a standard frame to the peers; ``to_peers_packet(packet)``
        an offloaded packet. Without the latter, peers get standard frames. Both return how
        many peers they sent to (``frames_to_peers`` counts floods that reached one).
        ``addresses`` derives a port's IPs from its MAC (see the module doc)."""
        self.ports: dict[object, Port] = {}
        self._ports: tuple[Port, ...] = ()
        self.to_peers = to_peers
        self.to_peers_packet = to_peers_packet or self._segment_to_peers
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
        self.gateway_mac = b"\xff" * 6  # no unicast frame matches until a gateway is set

    def add(self, key: object, port: Port) -> None:
        port.addresses = self.addresses
        self.ports[key] = port
        self._ports = tuple(self.ports.values())

    def remove(self, key: object) -> Port | None:
        port = self.ports.pop(key, None)
        self._ports = tuple(self.ports.values())
        return port

    def __len__(self) -> int:
        return len(self._ports)

    def from_local(self, src: Port, frame: bytes) -> None:
        """A frame a local client sent: to all other local ports, and once to the peers."""
        src.frames_in += 1
        src.bytes_in += len(frame)
        if not frame.startswith(src.mac, 6):
            src.learn(frame, 6)
        gateway = self.gateway
        if gateway is not None and (frame[0] & 1 or frame.startswith(self.gateway_mac)):
            gateway(src, frame)
            if not frame[0] & 1 and not _gateway_answer(frame, 0):
                return  # for the gateway alone (see the module doc)
        for port in self._ports:
            if port is not src:
                port.deliver(frame)
        if self.to_peers(frame):
            self.frames_to_peers += 1

    def from_peer(self, frame: bytes) -> None:
        """A frame another node flooded: to local ports only (the loop rule)."""
        self.frames_from_peers += 1
        for port in self._ports:
            port.deliver(frame)

    def packet_from_local(self, src: Port, packet: bytes) -> None:
        """An offloaded packet a local client sent: as :meth:`from_local`, see the module doc."""
        src.frames_in += 1
        src.bytes_in += len(packet) - VNET_HDR_LEN
        if not packet.startswith(src.mac, VNET_HDR_LEN + 6):
            src.learn(packet, VNET_HDR_LEN + 6)
        gateway = self.gateway
        if gateway is not None and (
            packet[VNET_HDR_LEN] & 1 or packet.startswith(self.gateway_mac, VNET_HDR_LEN)
        ):
            # The gateway reads standard frames: a TSO super-frame routed through it is cut
            # into MTU-sized segments and a partial checksum completed first.
            for frame in self._segment(packet) or ():
                gateway(src, frame)
            if not packet[VNET_HDR_LEN] & 1 and not _gateway_answer(packet, VNET_HDR_LEN):
                return
        if self._flood_packet(packet, src) and self.to_peers_packet(packet):
            self.frames_to_peers += 1

    def from_gateway(self, frame: bytes, to: Port | None = None) -> None:
        """A frame the gateway sends: to port ``to`` when the frame is addressed to its MAC (the
        port it answers), else to every local port. Never to peers: each node's gateway
        answers its own local ports."""
        if to is not None and frame.startswith(to.mac):
            to.deliver(frame)
            return
        for port in self._ports:
            port.deliver(frame)

    def packet_from_peer(self, packet: bytes) -> None:
        """An offloaded packet another node flooded: to local ports only (the loop rule)."""
        self.frames_from_peers += 1
        self._flood_packet(packet, None)

    def _flood_packet(self, packet: bytes, src: Port | None) -> bool:
        """Deliver ``packet`` to every local port but ``src``; False if it was malformed."""
        frames: list[bytes] | None = None
        for port in self._ports:
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

    def _segment(self, packet: bytes) -> list[bytes] | None:
        try:
            frames = to_frames(packet)
        except OffloadError:
            self.bad_packets += 1
            return None
        self.segmented += 1
        return frames

    def expire(self, now: float, idle: float, kind: str) -> list[Port]:
        """Remove ports of ``kind`` silent for more than ``idle`` seconds; return them."""
        stale = [
            key
            for key, port in self.ports.items()
            if port.kind == kind and now - port.last_seen > idle
        ]
        return [p for p in (self.remove(key) for key in stale) if p is not None]
