"""One network interface of the userspace stack: Ethernet, ARP, IPv4/IPv6, ICMP, UDP, IGMP/MLD.

Sans-I/O in smoltcp's shape: the shell feeds :meth:`Interface.receive` with frames and ``now``,
sends whatever :meth:`Interface.poll` returns, and wakes it again at :meth:`Interface.poll_at`.
Nothing inside reads a clock, opens a socket or starts a thread, so every behaviour (timeouts,
retries, rate limits) is tested frame by frame with an injected ``now``.

TCP is not here: an object with ``on_packet(src, dst, segment, now)``, ``poll(now)`` and
``poll_at()`` (``atenet.stack.tcp.Tcp``) plugs in through ``tcp=``; this layer hands it
verified-for-us segments and wraps what it returns in IP and Ethernet.

Malformed input is dropped and counted in :attr:`Interface.counters`, never answered; every
table input can grow (neighbours, fragments, sockets, queues, events) is bounded.
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter, deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Protocol

from atenet.client.dhcp import DhcpClient
from atenet.client.dhcp import Event as DhcpClientEvent
from atenet.client.dhcp import Send as DhcpSend
from atenet.errors import DecodeError
from atenet.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NO_OFFLOAD,
    VNET_HDR_LEN,
    OffloadError,
    VnetHeader,
    to_frames,
)
from atenet.ratelimit import TokenBucket
from atenet.stack.frag import Reassembler, fragment_offsets
from atenet.stack.neighbor import NeighborCache
from atenet.wire.arp import ARP_REPLY, ARP_REQUEST, ArpRepr, arp_reply, arp_request
from atenet.wire.checksum import checksum, verify
from atenet.wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ethernet_frame,
)
from atenet.wire.icmp import (
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_TIME_EXCEEDED,
    IcmpRepr,
)
from atenet.wire.icmpv6 import (
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    ICMPV6_PACKET_TOO_BIG,
    ICMPV6_ROUTER_ADVERT,
    ICMPV6_ROUTER_SOLICIT,
    ICMPV6_TIME_EXCEEDED,
    ND_HOP_LIMIT,
    Icmpv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    nd_options,
)
from atenet.wire.ipv4 import (
    PROTO_ICMP,
    PROTO_IGMP,
    PROTO_TCP,
    PROTO_UDP,
    Ipv4Repr,
    multicast_mac_v4,
)
from atenet.wire.ipv6 import (
    ALL_NODES,
    ALL_ROUTERS,
    NEXT_HEADER_FRAGMENT,
    NEXT_HEADER_HOP_BY_HOP,
    NEXT_HEADER_ICMPV6,
    Ipv6Repr,
    multicast_mac_v6,
    solicited_node,
)
from atenet.wire.udp import UdpRepr

__all__ = [
    "AddressEvent",
    "EchoReply",
    "IcmpError",
    "Interface",
    "TcpHandler",
    "UdpSocket",
]

IPAddress = IPv4Address | IPv6Address

BROADCAST_V4 = IPv4Address("255.255.255.255")
ALL_HOSTS_V4 = IPv4Address("224.0.0.1")
ALL_ROUTERS_V4 = IPv4Address("224.0.0.2")
LINK_LOCAL_V6 = IPv6Network("fe80::/64")
UNSPECIFIED_V6 = IPv6Address("::")
EPHEMERAL = range(49152, 65536)
MLD_QUERY, MLD_REPORT, MLD_DONE = 130, 131, 132
IGMP_QUERY, IGMP_V2_REPORT, IGMP_LEAVE = 0x11, 0x16, 0x17
_ROUTER_ALERT_V4 = b"\x94\x04\x00\x00"
_HOP_BY_HOP_ROUTER_ALERT = b"\x05\x02\x00\x00\x01\x00"  # option 5 (router alert, MLD) + PadN
TSO_BYTES = 65535 - 20 - 60
"""Most TCP payload per super-segment: the IPv4 total length (and the IPv6 payload length)
must stay within 16 bits with the largest TCP header."""
_IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HDR = struct.Struct("!IHBB16s16s")
_ETH_IPV4 = b"\x08\x00"
_ETH_IPV6 = b"\x86\xdd"


class _Offloaded(bytes):
    """A queued virtio-net packet (header + TCP super-frame), told apart from plain frames by
    its type: ``poll`` segments it, ``poll_packets`` hands it over whole."""

    __slots__ = ()


class TcpHandler(Protocol):
    """What :class:`Interface` needs from the TCP layer (``atenet.stack.tcp.Tcp``)."""

    def on_packet(self, src_ip: bytes, dst_ip: bytes, segment: bytes, now: float) -> None: ...
    def poll(self, now: float) -> list[tuple[bytes, bytes, bytes]]: ...  # or 4-tuples: TSO
    def poll_at(self) -> float | None: ...


class AnyDestination(Protocol):
    """What an "accept any destination" interface hands UDP and ICMP for addresses not its own
    to (the NAT forwarder, ``atenet.router.nat``): the packet's addresses, IP protocol and
    upper-layer bytes (reassembled, checksums not yet checked)."""

    def on_datagram(
        self, src: IPAddress, dst: IPAddress, proto: int, payload: bytes, now: float
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An answer to :meth:`Interface.ping`; ``rtt`` in seconds."""

    src: IPAddress
    ident: int
    seq: int
    rtt: float
    size: int


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP/ICMPv6 error about a packet we sent (``proto``/ports from its quoted header)."""

    src: IPAddress
    type: int
    code: int
    dst: IPAddress
    proto: int
    src_port: int | None
    dst_port: int | None
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class AddressEvent:
    """An address came (``added``) or went (``removed``); ``source``: static, dhcp, slaac."""

    kind: str
    address: IPv4Interface | IPv6Interface
    source: str


Event = EchoReply | IcmpError | AddressEvent | DhcpClientEvent


class UdpSocket:
    """A bound UDP port (both IP versions); datagrams queue up to a count and a byte bound."""

    def __init__(self, iface: Interface, port: int, max_datagrams: int, max_bytes: int) -> None:
        self.iface = iface
        self.port = port
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.queue: deque[tuple[bytes, tuple[IPAddress, int]]] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[IPAddress | str, int], now: float) -> bool:
        """Send one datagram; False when it could not leave (no route, no address): counted."""
        if self.closed:
            raise OSError("UDP socket is closed")
        return self.iface.send_udp(self.port, _ip(addr[0]), addr[1], data, now)

    def recvfrom(self) -> tuple[bytes, tuple[IPAddress, int]] | None:
        """The oldest datagram and its sender, or None when the queue is empty."""
        if not self.queue:
            return None
        data, addr = self.queue.popleft()
        self.queued_bytes -= len(data)
        return data, addr

    def _deliver(self, data: bytes, addr: tuple[IPAddress, int]) -> None:
        if len(self.queue) >= self.max_datagrams or self.queued_bytes + len(data) > self.max_bytes:
            self.dropped += 1
            self.iface.counters["udp_queue_full"] += 1
            return
        self.queue.append((data, addr))
        self.queued_bytes += len(data)

    def close(self) -> None:
        """Release the port; queued datagrams are discarded."""
        if not self.closed:
            self.closed = True
            self.iface._udp.pop(self.port, None)


def _ip(addr: IPAddress | str | bytes) -> IPAddress:
    if isinstance(addr, IPv4Address | IPv6Address):
        return addr
    if isinstance(addr, bytes):
        return IPv4Address(addr) if len(addr) == 4 else IPv6Address(addr)
    from ipaddress import ip_address

    return ip_address(addr)


def eui64_link_local(mac: bytes) -> IPv6Address:
    """fe80::/64 + modified EUI-64 of ``mac`` (RFC 4291 appendix A)."""
    return IPv6Address(b"\xfe\x80" + bytes(6) + _eui64(mac))


def _eui64(mac: bytes) -> bytes:
    return bytes((mac[0] ^ 0x02, mac[1], mac[2], 0xFF, 0xFE, mac[3], mac[4], mac[5]))


class Interface:
    """The stack's view of one Ethernet port (see the module docstring)."""

    def __init__(
        self,
        mac: bytes,
        mtu: int = 1500,
        *,
        ipv4: IPv4Interface | None = None,
        gateway4: IPv4Address | None = None,
        ipv6: bool = True,
        link_local: IPv6Address | None = None,
        slaac: bool = True,
        tcp: TcpHandler | None = None,
        max_events: int = 256,
        max_sockets: int = 1024,
        udp_queue: int = 64,
        udp_queue_bytes: int = 256 * 1024,
        max_groups: int = 32,
        tso: bool = False,
        any_destination: AnyDestination | None = None,
    ) -> None:
        """``any_destination``: accept unicast IP packets for *every* address, as a router
        terminating flows does (the NAT forwarder): TCP still goes to ``tcp`` (whose
        :meth:`~atenet.stack.tcp.Tcp.listen_any` accepts any address and port), UDP and ICMP
        for addresses not ours go to ``any_destination.on_datagram``; replies leave with
        :meth:`send_ip` from the address the client used. Off (None) by default."""
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError("interface MAC must be 6 bytes, unicast")
        if not 1280 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} outside 1280..65535")
        self.mac = bytes(mac)
        self.mtu = mtu
        self.counters: Counter[str] = Counter()
        self.ipv4: IPv4Interface | None = None
        self.gateway4: IPv4Address | None = None
        self.ipv6_enabled = ipv6
        self.ipv6: list[IPv6Interface] = []
        self.gateway6: IPv6Address | None = None
        self.slaac = slaac
        self.tcp = tcp
        self.tso = tso
        """The port takes virtio-net packets (see :meth:`poll_packets`): TCP leaves in
        super-segments of up to 64 KB, so Python pays per 64 KB, not per 1.4 KB."""
        if tso and tcp is not None and hasattr(tcp, "tso"):
            tcp.tso = TSO_BYTES
        # TCP fast paths: our packed addresses and next-hop MACs per destination, keyed on the
        # configuration they were computed from (any change of address/gateway recomputes).
        self._own_key: tuple[object, ...] = ()
        self._own4: bytes | None = None
        self._own6: frozenset[bytes] = frozenset()
        self._bcast4: bytes | None = None
        # Each cached hop keeps the neighbour entry it read and where: it is used only while
        # that very entry is still the cache's (a re-learned MAC or an eviction re-resolves).
        self._macs: dict[bytes, tuple[tuple[bytes, float], Any, dict[Any, Any]]] = {}
        self.arp = NeighborCache(counters=self.counters)
        self.nd = NeighborCache(counters=self.counters)
        self.reassembly = Reassembler(counters=self.counters)
        self.dhcp: DhcpClient | None = None
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._udp: dict[int, UdpSocket] = {}
        self._max_sockets = max_sockets
        self._udp_queue = (udp_queue, udp_queue_bytes)
        self._pings: dict[tuple[int, int], float] = {}
        self._ping_ident = 0x6D69  # "mi"
        self._ping_seq = itertools.count(1)
        self._ident = itertools.count(1)
        self._icmp_errors = TokenBucket(rate=10.0, burst=10)
        self._arp_requests = TokenBucket(rate=10.0, burst=20)
        self._groups: set[IPAddress] = set()
        self._max_groups = max_groups
        # A router terminating flows (``any_destination``) solicits no router: it is one.
        self._rs_at: float | None = 0.0 if ipv6 and any_destination is None else None
        self._rs_sent = 0
        self.any_destination = any_destination
        if ipv4 is not None:
            self.set_ipv4(ipv4, gateway4)
        if ipv6:
            self.add_ipv6(
                IPv6Interface(f"{link_local or eui64_link_local(self.mac)}/64"), "link-local"
            )

    # ------------------------------------------------------------------ configuration

    def set_ipv4(self, address: IPv4Interface | None, gateway: IPv4Address | None = None) -> None:
        """Set (or with None remove) the IPv4 address and default gateway."""
        if self.ipv4 is not None:
            self._event(AddressEvent("removed", self.ipv4, "static"))
        self.ipv4, self.gateway4 = address, gateway
        if address is not None:
            self._event(AddressEvent("added", address, "static"))

    def add_ipv6(self, address: IPv6Interface, source: str = "static") -> None:
        """Add an IPv6 address (and join its solicited-node group: no MLD report needed)."""
        if address not in self.ipv6:
            self.ipv6.append(address)
            self._event(AddressEvent("added", address, source))

    def start_dhcp(self, now: float, **kwargs: object) -> DhcpClient:
        """Get the IPv4 address from DHCP, driving :class:`atenet.client.dhcp.DhcpClient`."""
        self.dhcp = DhcpClient(mac=self.mac, **kwargs)  # type: ignore[arg-type]
        self._dhcp_actions(self.dhcp.start(now))
        return self.dhcp

    def _dhcp_actions(self, actions: list[DhcpSend | DhcpClientEvent]) -> None:
        for action in actions:
            if isinstance(action, DhcpSend):
                self._out.append(action.frame)
                continue
            self._event(action)
            if action.kind == "bound" and action.lease is not None:
                lease = action.lease
                self.ipv4, self.gateway4 = lease.interface, lease.router
                if lease.mtu is not None and 1280 <= lease.mtu < self.mtu:
                    self.mtu = lease.mtu
            elif action.kind == "lost":
                self.ipv4 = self.gateway4 = None

    @property
    def addresses(self) -> list[IPAddress]:
        """Every unicast address of ours."""
        own: list[IPAddress] = [a.ip for a in self.ipv6]
        if self.ipv4 is not None:
            own.insert(0, self.ipv4.ip)
        return own

    def events(self) -> list[Event]:
        """Take the events (echo replies, ICMP errors, address and DHCP changes) so far."""
        out = list(self._events)
        self._events.clear()
        return out

    def _event(self, event: Event) -> None:
        if len(self._events) >= self._max_events:
            self.counters["events_dropped"] += 1
            return
        self._events.append(event)

    # ------------------------------------------------------------------ shell interface

    def poll(self, now: float) -> list[bytes]:
        """Run the timers due at ``now`` and return every frame to send.

        With ``tso`` on, super-segments are cut into standard frames here (correct for any
        port, but the per-frame cost comes back): a port that takes offloads calls
        :meth:`poll_packets` instead.
        """
        out = self._poll(now)
        if not self.tso:
            return out
        frames: list[bytes] = []
        for item in out:
            if type(item) is _Offloaded:
                frames += to_frames(item)
            else:
                frames.append(item)
        return frames

    def poll_packets(self, now: float) -> list[bytes]:
        """As :meth:`poll`, but every item is a virtio-net packet (10-byte header + frame).

        For a port that takes offloads (``Interface(tso=True)``; a switch port with
        ``offload``, a vnet TAP): TCP super-segments come whole with ``GSO_TCPV4/6`` and a
        partial checksum (the switch segments them for ports that cannot take them, a kernel
        takes them as they are); every other frame comes behind an all-zero header.
        """
        return [item if type(item) is _Offloaded else NO_OFFLOAD + item for item in self._poll(now)]

    def _poll(self, now: float) -> list[bytes]:
        for ip in self.arp.due(now):
            self._ask_arp(ip, now)  # type: ignore[arg-type]
        for ip in self.nd.due(now):
            self._ask_nd(ip)  # type: ignore[arg-type]
        if self.arp.gave_up or self.nd.gave_up:
            self._unreachable_hops()
        self.reassembly.expire(now)
        if self.dhcp is not None and now >= self.dhcp.deadline:
            self._dhcp_actions(self.dhcp.tick(now))
        if self._rs_at is not None and now >= self._rs_at:
            self._send_rs(now)
        if self.tcp is not None:
            for item in self.tcp.poll(now):
                self._send_tcp(item, now)
        out, self._out = self._out, []
        return out

    def _unreachable_hops(self) -> None:
        """Neighbour resolution gave up on some next hops: fail the TCP connections still
        opening through them with EHOSTUNREACH, as Linux does after its ~3 s of ARP/ND
        (rather than retrying SYNs until the whole connect timeout says ETIMEDOUT)."""
        hops = set(self.arp.gave_up) | set(self.nd.gave_up)
        self.arp.gave_up.clear()
        self.nd.gave_up.clear()
        unreachable = getattr(self.tcp, "host_unreachable", None)
        if unreachable is not None:
            failed = unreachable(lambda remote: self._next_hop(_ip(remote)) in hops)
            self.counters["tcp_host_unreachable"] += failed

    def poll_at(self) -> float | None:
        """When :meth:`poll` next has timer work (None: only new input can create work)."""
        if self._out:
            return 0.0
        best = self.tcp.poll_at() if self.tcp is not None else None
        if best == float("inf"):
            best = None
        elif best == 0.0:  # the usual answer under load: skip the rest
            return best
        for t in (
            self.arp.poll_at(),
            self.nd.poll_at(),
            self.reassembly.poll_at(),
            self._rs_at,
            None if self.dhcp is None else self.dhcp.deadline,
        ):
            if t is not None and t != float("inf") and (best is None or t < best):
                best = t
        return best

    def receive(self, frame: bytes, now: float) -> None:
        """One frame from the port; replies and other output wait for :meth:`poll`."""
        self.counters["rx_frames"] += 1
        if len(frame) < 14:
            self.counters["rx_malformed"] += 1
            return
        dst = frame[0:6]
        if dst != self.mac and not dst[0] & 1:
            self.counters["rx_not_our_mac"] += 1
            return
        etype = (frame[12] << 8) | frame[13]
        if self.tcp is not None and (
            self._fast_v4(frame, now, False)
            if etype == ETHERTYPE_IPV4
            else etype == ETHERTYPE_IPV6 and self.ipv6_enabled and self._fast_v6(frame, now, False)
        ):
            return
        try:
            if etype == ETHERTYPE_ARP:
                self._arp(frame, now)
            elif etype == ETHERTYPE_IPV4:
                self._ipv4(frame, now)
            elif etype == ETHERTYPE_IPV6 and self.ipv6_enabled:
                self._ipv6(frame, now)
            else:
                self.counters["rx_unknown_ethertype"] += 1
        except DecodeError:
            self.counters["rx_malformed"] += 1

    def receive_packet(self, packet: bytes, now: float) -> None:
        """One virtio-net packet (10-byte header + frame) from a port that sends offloads.

        A GRO/GSO TCP super-frame or a frame with a partial checksum (``F_NEEDS_CSUM``) for one
        of our TCP connections goes to TCP whole, its checksum trusted as Linux trusts
        ``CHECKSUM_PARTIAL`` from a virtio NIC: one pass per 64 KB. Anything else offloaded is
        first turned into standard frames (``atenet.offload.to_frames``); a plain packet is
        :meth:`receive` of its frame. A header no kernel would send is dropped and counted.
        """
        if len(packet) < VNET_HDR_LEN + 14:
            self.counters["rx_frames"] += 1
            self.counters["rx_malformed"] += 1
            return
        flags, gso_type = packet[0], packet[1]
        if not gso_type and not flags & (F_NEEDS_CSUM | F_DATA_VALID):
            self.receive(packet[VNET_HDR_LEN:], now)
            return
        # a view, not a copy: a super-frame's 64 KB are copied once, into TCP's receive buffer
        frame = memoryview(packet)[VNET_HDR_LEN:]
        base = gso_type & ~GSO_ECN
        if self.tcp is not None and frame[:6] == self.mac:
            etype = (frame[12] << 8) | frame[13]
            if base in (GSO_NONE, GSO_TCPV4) and etype == ETHERTYPE_IPV4:
                if self._fast_v4(frame, now, True):
                    self.counters["rx_frames"] += 1
                    self.counters["rx_offloaded"] += 1
                    return
            elif (
                base in (GSO_NONE, GSO_TCPV6)
                and etype == ETHERTYPE_IPV6
                and self.ipv6_enabled
                and self._fast_v6(frame, now, True)
            ):
                self.counters["rx_frames"] += 1
                self.counters["rx_offloaded"] += 1
                return
        if not gso_type and not flags & F_NEEDS_CSUM:
            self.receive(bytes(frame), now)  # F_DATA_VALID alone: a complete frame
            return
        try:
            frames = to_frames(packet)
        except OffloadError:
            self.counters["rx_frames"] += 1
            self.counters["rx_malformed"] += 1
            self.counters["rx_offload_malformed"] += 1
            return
        self.counters["rx_offload_segmented"] += 1
        for one in frames:
            self.receive(one, now)

    def _own(self) -> None:
        """Refresh the packed own addresses and forget cached MACs after a config change."""
        key = (self.ipv4, self.gateway4, self.gateway6, len(self.ipv6), self.mtu)
        if key != self._own_key:
            self._own_key = key
            self._own4 = None if self.ipv4 is None else self.ipv4.ip.packed
            self._own6 = frozenset(a.ip.packed for a in self.ipv6)
            self._bcast4 = None if self.ipv4 is None else self.ipv4.network.broadcast_address.packed
            self._macs.clear()

    def _fast_v4(self, frame: bytes | memoryview, now: float, checked: bool) -> bool:
        """A TCP segment to our IPv4 address, unfragmented and without options, straight to
        TCP without building address objects; False: not that case, take the general path
        (which also counts and drops whatever is malformed). With ``any_destination`` every
        unicast destination but our network's broadcast is "ours", as on the general path:
        the NAT forwarder's flows are all to foreign addresses, and this is their data path."""
        if len(frame) < 34 or frame[14] != 0x45 or frame[23] != PROTO_TCP:
            return False
        self._own()
        if frame[20] & 0x3F or frame[21] or frame[26] >= 224:
            return False
        if frame[30:34] != self._own4 and (
            self.any_destination is None
            or self._own4 is None
            or frame[30] >= 224
            or frame[30:34] == self._bcast4
        ):
            return False
        total = (frame[16] << 8) | frame[17]
        if total < 40 or total > len(frame) - 14 or not verify(memoryview(frame)[14:34]):
            return False
        self.counters["rx_ipv4"] += 1
        src, dst = bytes(frame[26:30]), bytes(frame[30:34])  # dict keys: never views
        self._to_tcp(src, dst, frame[34 : 14 + total], now, checked)  # type: ignore[arg-type]
        return True

    def _fast_v6(self, frame: bytes | memoryview, now: float, checked: bool) -> bool:
        """The IPv6 twin of :meth:`_fast_v4`: next header TCP (no extension headers)."""
        if len(frame) < 74 or frame[14] >> 4 != 6 or frame[20] != PROTO_TCP or frame[22] == 0xFF:
            return False
        self._own()
        dst = bytes(frame[38:54])
        if dst not in self._own6 and (self.any_destination is None or dst[0] == 0xFF):
            return False  # with any_destination, every unicast address (see _fast_v4)
        length = (frame[18] << 8) | frame[19]
        if length < 20 or length > len(frame) - 54:
            return False
        self.counters["rx_ipv6"] += 1
        src = bytes(frame[22:38])
        self._to_tcp(src, dst, frame[54 : 54 + length], now, checked)  # type: ignore[arg-type]
        return True

    def _to_tcp(self, src: bytes, dst: bytes, segment: bytes, now: float, checked: bool) -> None:
        if checked:  # only Tcp takes the flag (TcpHandler stand-ins get verified segments)
            self.tcp.on_packet(src, dst, segment, now, checked=True)  # type: ignore[union-attr, call-arg]
        else:
            self.tcp.on_packet(src, dst, segment, now)  # type: ignore[union-attr]

    def _send_tcp(self, item: tuple[bytes, ...], now: float) -> None:
        """Wrap one segment from TCP in IP and Ethernet; a 4-tuple is a TSO super-segment.

        The fast path builds the headers with one struct each and takes the next hop's MAC
        from a small per-destination cache (valid while the neighbour entry is); anything
        unusual (no MAC yet, fragmentation, multicast) takes the general :meth:`_send_ip`.
        """
        src, dst, segment = item[0], item[1], item[2]
        gso = item[3] if len(item) > 3 else 0
        self._own()
        cached = self._macs.get(dst)
        if cached is not None and cached[2].get(cached[1]) is cached[0] and cached[0][1] > now:
            mac: bytes | None = cached[0][0]
        else:
            mac = self._resolve_mac(dst, now)
        v4 = len(dst) == 4
        room = self.mtu - (20 if v4 else 40)
        if mac is None or (not gso and len(segment) > room):
            if gso:  # cannot queue a super-segment for ARP/ND: TCP sends it again
                self.counters["tx_tso_unresolved"] += 1
                return
            self._send_ip(_ip(src), _ip(dst), PROTO_TCP, segment, now)
            return
        self.counters["tx_packets"] += 1
        if v4:
            ident = next(self._ident) & 0xFFFF
            length = 20 + len(segment)
            header = bytearray(_IPV4_HDR.pack(0x45, 0, length, ident, 0x4000, 64, 6, 0, src, dst))
            header[10:12] = checksum(header).to_bytes(2, "big")
            parts = (mac, self.mac, _ETH_IPV4, header, segment)
            csum_start, kind = 34, GSO_TCPV4
        else:
            header = _IPV6_HDR.pack(0x60000000, len(segment), PROTO_TCP, 64, src, dst)
            parts = (mac, self.mac, _ETH_IPV6, header, segment)
            csum_start, kind = 54, GSO_TCPV6
        if not gso:
            self._out.append(b"".join(parts))
            return
        hdr_len = csum_start + (segment[12] >> 4) * 4
        vnet = VnetHeader(F_NEEDS_CSUM, kind, hdr_len, gso, csum_start, 16).pack()
        self._out.append(_Offloaded(b"".join((vnet, *parts))))

    def _resolve_mac(self, dst: bytes, now: float) -> bytes | None:
        """The next hop's MAC for a unicast TCP destination, cached until its entry expires."""
        addr = _ip(dst)
        if addr.is_multicast:
            return None
        hop = self._next_hop(addr)
        if hop is None:
            return None
        cache = self.arp if isinstance(hop, IPv4Address) else self.nd
        entry = cache.entries.get(hop)
        if entry is None or entry[1] <= now:
            return None
        if len(self._macs) >= 1024:
            self._macs.clear()
        self._macs[dst] = (entry, hop, cache.entries)
        return entry[0]

    # ------------------------------------------------------------------ ARP

    def _arp(self, frame: bytes, now: float) -> None:
        arp = ArpRepr.parse(frame[14:])
        if arp.sender_mac[0] & 1 or arp.sender_ip.is_multicast or arp.sender_ip == BROADCAST_V4:
            raise DecodeError("ARP from a multicast MAC or IP")
        ours = self.ipv4 is not None and arp.target_ip == self.ipv4.ip
        if self.ipv4 is not None and arp.sender_ip == self.ipv4.ip:
            self.counters["arp_conflict"] += 1  # someone else claims our address
        elif int(arp.sender_ip) != 0:  # 0.0.0.0: an RFC 5227 probe, nothing to learn
            for packet in self.arp.learn(arp.sender_ip, arp.sender_mac, now, create=ours):
                self._out.append(ethernet_frame(arp.sender_mac, self.mac, ETHERTYPE_IPV4, packet))
        if arp.operation == ARP_REQUEST and ours and self.ipv4 is not None:
            self.counters["arp_replies"] += 1
            self._out.append(arp_reply(self.mac, self.ipv4.ip, arp.sender_mac, arp.sender_ip))
        elif arp.operation not in (ARP_REQUEST, ARP_REPLY):
            self.counters["arp_unknown_op"] += 1

    def _ask_arp(self, ip: IPv4Address, now: float) -> None:
        if self.ipv4 is None:
            return
        if not self._arp_requests.take(now):
            self.counters["arp_request_limited"] += 1
            return
        self.counters["arp_requests"] += 1
        self._out.append(arp_request(self.mac, self.ipv4.ip, ip))

    # ------------------------------------------------------------------ IPv4

    def _for_us_v4(self, dst: IPv4Address) -> bool:
        if dst in (BROADCAST_V4, ALL_HOSTS_V4) or dst in self._groups:
            return True
        if self.ipv4 is None:
            return False
        if dst == self.ipv4.ip or dst == self.ipv4.network.broadcast_address:
            return True
        return self.any_destination is not None and not dst.is_multicast and dst != BROADCAST_V4

    def _ipv4(self, frame: bytes, now: float) -> None:
        ip = Ipv4Repr.parse(memoryview(frame)[14:])  # one copy (the payload), not two
        if ip.src.is_multicast or ip.src == BROADCAST_V4:
            raise DecodeError("IPv4 from a multicast or broadcast source")
        if self.dhcp is not None and ip.protocol == PROTO_UDP and ip.payload[2:4] == b"\x00\x44":
            self._dhcp_actions(self.dhcp.frame(frame, now))
            return
        if not self._for_us_v4(ip.dst):
            self.counters["rx_not_for_us"] += 1
            return
        payload: bytes | None = ip.payload
        if ip.more_fragments or ip.fragment_offset:
            key = (ip.src, ip.dst, ip.protocol, ip.ident)
            payload = self.reassembly.add(
                key, ip.fragment_offset * 8, ip.more_fragments, ip.payload, now
            )
            if payload is None:
                return
        self.counters["rx_ipv4"] += 1
        unicast = ip.dst == self._own_v4()
        foreign = not unicast and self.any_destination is not None
        if foreign and ip.dst != self.ipv4.network.broadcast_address:  # type: ignore[union-attr]
            if ip.protocol != PROTO_TCP:  # UDP, ICMP… for a foreign address
                self.any_destination.on_datagram(ip.src, ip.dst, ip.protocol, payload, now)  # type: ignore[union-attr]
                return
            unicast = True
        self._upper(ip.src, ip.dst, ip.protocol, payload, unicast, now, ip)

    def _own_v4(self) -> IPv4Address | None:
        return None if self.ipv4 is None else self.ipv4.ip

    # ------------------------------------------------------------------ IPv6

    def _for_us_v6(self, dst: IPv6Address) -> bool:
        if dst == ALL_NODES or dst in self._groups:
            return True
        if any(dst == own.ip or dst == solicited_node(own.ip) for own in self.ipv6):
            return True
        return self.any_destination is not None and not dst.is_multicast and self.ipv6_enabled

    def _ipv6(self, frame: bytes, now: float) -> None:
        ip = Ipv6Repr.parse(memoryview(frame)[14:])
        if ip.src.is_multicast:
            raise DecodeError("IPv6 from a multicast source")
        if not self._for_us_v6(ip.dst):
            self.counters["rx_not_for_us"] += 1
            return
        proto, payload = ip.upper_layer()
        if proto == NEXT_HEADER_FRAGMENT:
            if len(payload) < 8:
                raise DecodeError("IPv6 fragment header truncated")
            next_header, offset_m = payload[0], (payload[2] << 8) | payload[3]
            ident = int.from_bytes(payload[4:8], "big")
            whole = self.reassembly.add(
                (ip.src, ip.dst, None, ident),
                offset_m & 0xFFF8,
                bool(offset_m & 1),
                payload[8:],
                now,
            )
            if whole is None:
                return
            proto, payload = next_header, whole
        self.counters["rx_ipv6"] += 1
        unicast = not ip.dst.is_multicast
        any_dst = self.any_destination
        if (
            any_dst is not None
            and unicast
            and proto != PROTO_TCP
            and all(ip.dst != own.ip for own in self.ipv6)
        ):  # UDP, ICMPv6… for a foreign address
            any_dst.on_datagram(ip.src, ip.dst, proto, payload, now)
            return
        self._upper(ip.src, ip.dst, proto, payload, unicast, now, ip)

    # ------------------------------------------------------------------ upper layers

    def _upper(
        self,
        src: IPAddress,
        dst: IPAddress,
        proto: int,
        payload: bytes,
        unicast: bool,
        now: float,
        ip: Ipv4Repr | Ipv6Repr,
    ) -> None:
        if proto == PROTO_UDP:
            self._udp_in(src, dst, payload, unicast, now, ip)
        elif proto == PROTO_TCP:
            if not unicast:
                self.counters["tcp_not_unicast"] += 1
            elif self.tcp is None:
                self.counters["tcp_no_handler"] += 1
            else:
                self.tcp.on_packet(src.packed, dst.packed, payload, now)
        elif proto == PROTO_ICMP and isinstance(src, IPv4Address):
            self._icmp4(src, dst, payload, unicast, now)  # type: ignore[arg-type]
        elif proto == NEXT_HEADER_ICMPV6 and isinstance(src, IPv6Address):
            self._icmp6(src, dst, payload, now, ip)  # type: ignore[arg-type]
        elif proto == PROTO_IGMP and isinstance(src, IPv4Address):
            self._igmp(payload, now)
        else:
            self.counters["rx_unknown_protocol"] += 1

    def _udp_in(
        self,
        src: IPAddress,
        dst: IPAddress,
        payload: bytes,
        unicast: bool,
        now: float,
        ip: Ipv4Repr | Ipv6Repr,
    ) -> None:
        udp = UdpRepr.parse(payload, src, dst)
        sock = self._udp.get(udp.dst_port)
        if sock is None:
            self.counters["udp_closed_port"] += 1
            if unicast:
                self._unreachable(src, dst, ip, now)
            return
        self.counters["udp_received"] += 1
        sock._deliver(udp.payload, (src, udp.src_port))

    def _unreachable(
        self, src: IPAddress, dst: IPAddress, ip: Ipv4Repr | Ipv6Repr, now: float
    ) -> None:
        """Port unreachable, rate-limited (RFC 1812 §4.3.2.8, RFC 4443 §2.4 f)."""
        if not self._icmp_errors.take(now):
            self.counters["icmp_error_limited"] += 1
            return
        self.counters["icmp_unreachable_sent"] += 1
        if isinstance(ip, Ipv4Repr):
            quoted = ip.header() + ip.payload[:8]
            message = IcmpRepr(ICMP_DEST_UNREACHABLE, 3, 0, quoted).emit()
            self._send_ip(dst, src, PROTO_ICMP, message, now)
        else:
            quoted = ip.emit()[: 1280 - 48]
            body = Icmpv6Repr(ICMPV6_DEST_UNREACHABLE, 4, 0, quoted)
            self._send_ip(dst, src, NEXT_HEADER_ICMPV6, body.emit(dst, src), now)  # type: ignore[arg-type]

    def _icmp4(
        self, src: IPv4Address, dst: IPv4Address, payload: bytes, unicast: bool, now: float
    ) -> None:
        icmp = IcmpRepr.parse(payload)
        if icmp.type == ICMP_ECHO_REQUEST:
            if not unicast:
                self.counters["icmp_echo_not_unicast"] += 1
                return
            self.counters["icmp_echo_answered"] += 1
            reply = IcmpRepr(ICMP_ECHO_REPLY, 0, icmp.rest, icmp.payload).emit()
            self._send_ip(dst, src, PROTO_ICMP, reply, now)
        elif icmp.type == ICMP_ECHO_REPLY:
            self._echo_reply(src, icmp.ident, icmp.seq, len(icmp.payload), now)
        elif icmp.type in (ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED):
            inner = icmp.payload
            if len(inner) < 20 or inner[0] >> 4 != 4:
                raise DecodeError("ICMP error quotes no IPv4 header")
            ihl = (inner[0] & 0xF) * 4
            ports = inner[ihl : ihl + 4]
            mtu = (
                icmp.rest & 0xFFFF
                if icmp.type == ICMP_DEST_UNREACHABLE and icmp.code == 4
                else None
            )
            self._error_event(
                src, icmp.type, icmp.code, IPv4Address(inner[16:20]), inner[9], ports, mtu
            )
        else:
            self.counters["icmp_ignored"] += 1

    def _error_event(
        self,
        src: IPAddress,
        kind: int,
        code: int,
        dst: IPAddress,
        proto: int,
        ports: bytes,
        mtu: int | None,
    ) -> None:
        self.counters["icmp_errors_received"] += 1
        has_ports = len(ports) == 4 and proto in (PROTO_TCP, PROTO_UDP)
        sport = int.from_bytes(ports[0:2], "big") if has_ports else None
        dport = int.from_bytes(ports[2:4], "big") if has_ports else None
        self._event(IcmpError(src, kind, code, dst, proto, sport, dport, mtu))

    def _echo_reply(self, src: IPAddress, ident: int, seq: int, size: int, now: float) -> None:
        sent = self._pings.pop((ident, seq), None)
        if sent is None or ident != self._ping_ident:
            self.counters["icmp_unexpected_reply"] += 1
            return
        self._event(EchoReply(src, ident, seq, max(0.0, now - sent), size))

    def _icmp6(
        self,
        src: IPv6Address,
        dst: IPv6Address,
        payload: bytes,
        now: float,
        ip: Ipv4Repr | Ipv6Repr,
    ) -> None:
        icmp = Icmpv6Repr.parse(payload, src, dst)
        kind = icmp.type
        hop_limit = ip.hop_limit if isinstance(ip, Ipv6Repr) else 0
        if kind == ICMPV6_ECHO_REQUEST:
            if dst.is_multicast:
                self.counters["icmp_echo_not_unicast"] += 1
                return
            self.counters["icmp_echo_answered"] += 1
            reply = Icmpv6Repr(ICMPV6_ECHO_REPLY, 0, icmp.rest, icmp.payload)
            self._send_ip(dst, src, NEXT_HEADER_ICMPV6, reply.emit(dst, src), now)
        elif kind == ICMPV6_ECHO_REPLY:
            self._echo_reply(src, icmp.ident, icmp.seq, len(icmp.payload), now)
        elif kind in (ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_NEIGHBOR_ADVERT, ICMPV6_ROUTER_ADVERT):
            if hop_limit != ND_HOP_LIMIT:
                raise DecodeError("ND message with a hop limit other than 255")
            if kind == ICMPV6_NEIGHBOR_SOLICIT:
                self._ns(src, icmp, now)
            elif kind == ICMPV6_NEIGHBOR_ADVERT:
                na = NeighborAdvert.from_icmp(icmp)
                if na.target_mac is not None:
                    self._release_v6(na.target, na.target_mac, now, create=na.solicited)
            else:
                self._ra(src, icmp, now)
        elif kind in (ICMPV6_DEST_UNREACHABLE, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED):
            inner = icmp.payload
            if len(inner) < 40 or inner[0] >> 4 != 6:
                raise DecodeError("ICMPv6 error quotes no IPv6 header")
            mtu = icmp.rest if kind == ICMPV6_PACKET_TOO_BIG else None
            self._error_event(
                src, kind, icmp.code, IPv6Address(inner[24:40]), inner[6], inner[40:44], mtu
            )
        elif kind == MLD_QUERY:
            self._mld_reports(now)
        elif kind in (MLD_REPORT, MLD_DONE, ICMPV6_ROUTER_SOLICIT, 143):
            self.counters["icmp_ignored"] += 1
        else:
            self.counters["icmp_ignored"] += 1

    def _ns(self, src: IPv6Address, icmp: Icmpv6Repr, now: float) -> None:
        ns = NeighborSolicit.from_icmp(icmp)
        if ns.target not in [a.ip for a in self.ipv6]:
            self.counters["nd_not_ours"] += 1
            return
        if src == UNSPECIFIED_V6:
            self.counters["nd_dad_probe"] += 1  # someone wants our address; we keep it
            return
        if ns.source_mac is None:
            mac = self.nd.lookup(src, now)
            if mac is None:
                self.counters["nd_no_source"] += 1
                return
        else:
            mac = ns.source_mac
            self._release_v6(src, mac, now, create=True)
        self.counters["nd_adverts_sent"] += 1
        na = NeighborAdvert(ns.target, self.mac, solicited=True).to_icmp()
        packet = Ipv6Repr(ns.target, src, NEXT_HEADER_ICMPV6, na.emit(ns.target, src), ND_HOP_LIMIT)
        self._out.append(ethernet_frame(mac, self.mac, ETHERTYPE_IPV6, packet.emit()))

    def _release_v6(self, ip: IPv6Address, mac: bytes, now: float, *, create: bool) -> None:
        if mac[0] & 1:
            raise DecodeError("ND link-layer address is multicast")
        for packet in self.nd.learn(ip, mac, now, create=create):
            self._out.append(ethernet_frame(mac, self.mac, ETHERTYPE_IPV6, packet))

    def _ra(self, src: IPv6Address, icmp: Icmpv6Repr, now: float) -> None:
        if src not in LINK_LOCAL_V6:
            raise DecodeError("router advertisement from a non-link-local source")
        if len(icmp.payload) < 8:
            raise DecodeError("router advertisement truncated")
        options = nd_options(icmp.payload[8:])
        self.counters["nd_router_adverts"] += 1
        self._rs_at = None
        lladdr = options.get(1)
        if lladdr is not None and len(lladdr) >= 6:
            self._release_v6(src, lladdr[:6], now, create=True)
        if icmp.rest & 0xFFFF:
            self.gateway6 = src
        elif self.gateway6 == src:
            self.gateway6 = None
        mtu = options.get(5)
        if mtu is not None and len(mtu) >= 6:
            value = int.from_bytes(mtu[2:6], "big")
            if 1280 <= value < self.mtu:
                self.mtu = value
        info = options.get(3)
        if self.slaac and info is not None and len(info) >= 30:
            prefixlen, flags = info[0], info[1]
            valid = int.from_bytes(info[2:6], "big")
            prefix = IPv6Address(info[14:30])
            if prefixlen == 64 and flags & 0x40 and valid and prefix not in LINK_LOCAL_V6:
                address = IPv6Interface((prefix.packed[:8] + _eui64(self.mac), 64))
                self.add_ipv6(address, "slaac")

    def _send_rs(self, now: float) -> None:
        self._rs_sent += 1
        self._rs_at = now + 4.0 if self._rs_sent < 3 else None
        src = self.ipv6[0].ip if self.ipv6 else UNSPECIFIED_V6
        body = bytes((1, 1)) + self.mac if src != UNSPECIFIED_V6 else b""
        rs = Icmpv6Repr(ICMPV6_ROUTER_SOLICIT, 0, 0, body).emit(src, ALL_ROUTERS)
        packet = Ipv6Repr(src, ALL_ROUTERS, NEXT_HEADER_ICMPV6, rs, ND_HOP_LIMIT).emit()
        self._out.append(
            ethernet_frame(multicast_mac_v6(ALL_ROUTERS), self.mac, ETHERTYPE_IPV6, packet)
        )

    def _ask_nd(self, ip: IPv6Address) -> None:
        src = self._source_v6(ip)
        if src is None:
            return
        self.counters["nd_solicits_sent"] += 1
        group = solicited_node(ip)
        ns = NeighborSolicit(ip, self.mac).to_icmp().emit(src, group)
        packet = Ipv6Repr(src, group, NEXT_HEADER_ICMPV6, ns, ND_HOP_LIMIT).emit()
        self._out.append(ethernet_frame(multicast_mac_v6(group), self.mac, ETHERTYPE_IPV6, packet))

    # ------------------------------------------------------------------ multicast groups

    def join(self, group: IPAddress | str, now: float) -> None:
        """Receive ``group``'s traffic and announce it (IGMPv2 / MLDv1 report)."""
        group = _ip(group)
        if not group.is_multicast:
            raise ValueError(f"{group} is not a multicast group")
        if group in self._groups:
            return
        if len(self._groups) >= self._max_groups:
            self.counters["groups_full"] += 1
            raise OSError(f"too many multicast groups (limit {self._max_groups})")
        self._groups.add(group)
        self._report(group, now)

    def leave(self, group: IPAddress | str, now: float) -> None:
        """Stop receiving ``group`` and tell the routers (IGMP leave / MLD done)."""
        group = _ip(group)
        if group not in self._groups:
            return
        self._groups.discard(group)
        if isinstance(group, IPv4Address):
            self._igmp_send(IGMP_LEAVE, group, ALL_ROUTERS_V4)
        else:
            self._mld_send(MLD_DONE, group, ALL_ROUTERS)

    def _report(self, group: IPAddress, now: float) -> None:
        if isinstance(group, IPv4Address):
            self._igmp_send(IGMP_V2_REPORT, group, group)
        else:
            self._mld_send(MLD_REPORT, group, group)

    def _igmp_send(self, kind: int, group: IPv4Address, dst: IPv4Address) -> None:
        if self.ipv4 is None:
            return
        self.counters["igmp_sent"] += 1
        message = bytearray(struct.pack("!BBH4s", kind, 0, 0, group.packed))
        message[2:4] = checksum(message).to_bytes(2, "big")
        packet = Ipv4Repr(
            self.ipv4.ip, dst, PROTO_IGMP, bytes(message), ttl=1, options=_ROUTER_ALERT_V4
        )
        self._out.append(
            ethernet_frame(multicast_mac_v4(dst), self.mac, ETHERTYPE_IPV4, packet.emit())
        )

    def _mld_send(self, kind: int, group: IPv6Address, dst: IPv6Address) -> None:
        src = self.ipv6[0].ip if self.ipv6 else UNSPECIFIED_V6
        self.counters["mld_sent"] += 1
        message = Icmpv6Repr(kind, 0, 0, group.packed).emit(src, dst)
        hop_by_hop = bytes((NEXT_HEADER_ICMPV6, 0)) + _HOP_BY_HOP_ROUTER_ALERT
        packet = Ipv6Repr(src, dst, NEXT_HEADER_HOP_BY_HOP, hop_by_hop + message, 1)
        self._out.append(
            ethernet_frame(multicast_mac_v6(dst), self.mac, ETHERTYPE_IPV6, packet.emit())
        )

    def _igmp(self, payload: bytes, now: float) -> None:
        if len(payload) < 8 or not verify(payload):
            raise DecodeError("IGMP message short or with a wrong checksum")
        if payload[0] != IGMP_QUERY:
            self.counters["igmp_ignored"] += 1
            return
        asked = IPv4Address(payload[4:8])
        for group in [g for g in self._groups if isinstance(g, IPv4Address)]:
            if int(asked) == 0 or asked == group:
                self._report(group, now)

    def _mld_reports(self, now: float) -> None:
        for group in [g for g in self._groups if isinstance(g, IPv6Address)]:
            self._report(group, now)

    # ------------------------------------------------------------------ sending

    def ping(self, dst: IPAddress | str, now: float, payload: bytes = b"") -> tuple[int, int]:
        """Send one echo request; the answer comes as an :class:`EchoReply` event.

        Returns (ident, seq). At most 64 pings wait for answers; older ones are forgotten.
        """
        dst = _ip(dst)
        seq = next(self._ping_seq) & 0xFFFF
        if len(self._pings) >= 64:
            del self._pings[next(iter(self._pings))]
            self.counters["ping_forgotten"] += 1
        self._pings[(self._ping_ident, seq)] = now
        if isinstance(dst, IPv4Address):
            message = IcmpRepr.echo_request(self._ping_ident, seq, payload).emit()
            sent = self._send_ip(self._source_v4(), dst, PROTO_ICMP, message, now)
        else:
            src = self._source_v6(dst)
            body = Icmpv6Repr.echo_request(self._ping_ident, seq, payload)
            sent = src is not None and self._send_ip(
                src, dst, NEXT_HEADER_ICMPV6, body.emit(src, dst), now
            )
        if not sent:
            del self._pings[(self._ping_ident, seq)]
            raise OSError(f"no route to {dst}")
        return self._ping_ident, seq

    def udp_bind(self, port: int = 0) -> UdpSocket:
        """A UDP socket on ``port`` (0: a free ephemeral port), for IPv4 and IPv6 alike."""
        if len(self._udp) >= self._max_sockets:
            self.counters["udp_sockets_full"] += 1
            raise OSError(f"too many UDP sockets (limit {self._max_sockets})")
        if port == 0:
            port = next((p for p in EPHEMERAL if p not in self._udp), 0)
            if port == 0:
                raise OSError("no free ephemeral UDP port")
        elif not 0 < port < 65536:
            raise ValueError(f"UDP port {port} outside 1..65535")
        elif port in self._udp:
            raise OSError(f"UDP port {port} is already bound")
        sock = UdpSocket(self, port, *self._udp_queue)
        self._udp[port] = sock
        return sock

    def send_udp(self, sport: int, dst: IPAddress, dport: int, data: bytes, now: float) -> bool:
        """Send one UDP datagram from our address toward ``dst``; False when it cannot leave."""
        src = self._source_v4() if isinstance(dst, IPv4Address) else self._source_v6(dst)
        if src is None:
            self.counters["tx_no_address"] += 1
            return False
        segment = UdpRepr(sport, dport, data).emit(src, dst)
        return self._send_ip(src, dst, PROTO_UDP, segment, now)

    def send_ip(
        self, src: IPAddress, dst: IPAddress, proto: int, payload: bytes, now: float
    ) -> bool:
        """Send an upper-layer ``payload`` from any ``src`` (an "accept any destination"
        interface answers from the address the client used); False when it cannot leave."""
        return self._send_ip(src, dst, proto, payload, now)

    def _source_v4(self) -> IPv4Address | None:
        return None if self.ipv4 is None else self.ipv4.ip

    def _source_v6(self, dst: IPv6Address) -> IPv6Address | None:
        if not self.ipv6:
            return None
        if dst in LINK_LOCAL_V6 or dst.is_multicast:
            return self.ipv6[0].ip
        for own in self.ipv6[1:]:
            if dst in own.network:
                return own.ip
        return self.ipv6[-1].ip

    def _send_ip(
        self, src: IPAddress | None, dst: IPAddress, proto: int, payload: bytes, now: float
    ) -> bool:
        """Wrap ``payload`` in IP (fragments above the MTU) and Ethernet, or queue it for ARP/ND."""
        if src is None:
            self.counters["tx_no_address"] += 1
            return False
        if isinstance(dst, IPv4Address):
            packets = self._ipv4_packets(src, dst, proto, payload)  # type: ignore[arg-type]
            etype = ETHERTYPE_IPV4
        else:
            packets = self._ipv6_packets(src, dst, proto, payload)  # type: ignore[arg-type]
            etype = ETHERTYPE_IPV6
        if packets is None:
            return False
        mac = self._link_dst(dst, now)
        if mac is False:
            return False
        self.counters["tx_packets"] += len(packets)
        if mac is None:
            hop = self._next_hop(dst)
            cache = self.arp if isinstance(hop, IPv4Address) else self.nd
            for packet in packets:
                if cache.queue(hop, packet, now):  # type: ignore[arg-type]
                    if isinstance(hop, IPv4Address):
                        self._ask_arp(hop, now)
                    else:
                        self._ask_nd(hop)  # type: ignore[arg-type]
            return True
        for packet in packets:
            self._out.append(ethernet_frame(mac, self.mac, etype, packet))
        return True

    def _ipv4_packets(
        self, src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes
    ) -> list[bytes] | None:
        if len(payload) + 20 > 0xFFFF:
            self.counters["tx_too_big"] += 1
            return None
        ident = next(self._ident) & 0xFFFF
        if len(payload) + 20 <= self.mtu:
            return [
                Ipv4Repr(
                    src, dst, proto, payload, ident=ident, dont_fragment=proto == PROTO_TCP
                ).emit()
            ]
        self.counters["tx_fragmented"] += 1
        out = []
        for start, end in fragment_offsets(len(payload), self.mtu - 20):
            more = end < len(payload)
            header = Ipv4Repr(
                src,
                dst,
                proto,
                payload[start:end],
                ident=ident,
                more_fragments=more,
                fragment_offset=start // 8,
            )
            out.append(header.emit())
        return out

    def _ipv6_packets(
        self, src: IPv6Address, dst: IPv6Address, proto: int, payload: bytes
    ) -> list[bytes] | None:
        if len(payload) > 0xFFFF - 8:
            self.counters["tx_too_big"] += 1
            return None
        if len(payload) + 40 <= self.mtu:
            return [Ipv6Repr(src, dst, proto, payload).emit()]
        self.counters["tx_fragmented"] += 1
        ident = next(self._ident)
        out = []
        for start, end in fragment_offsets(len(payload), self.mtu - 48):
            more = end < len(payload)
            header = struct.pack("!BBHI", proto, 0, start | int(more), ident)
            out.append(Ipv6Repr(src, dst, NEXT_HEADER_FRAGMENT, header + payload[start:end]).emit())
        return out

    def _next_hop(self, dst: IPAddress) -> IPAddress | None:
        if isinstance(dst, IPv4Address):
            if self.ipv4 is not None and dst in self.ipv4.network:
                return dst
            return self.gateway4
        if dst in LINK_LOCAL_V6 or any(dst in own.network for own in self.ipv6):
            return dst
        return self.gateway6

    def _link_dst(self, dst: IPAddress, now: float) -> bytes | bool | None:
        """The destination MAC; None: resolution needed; False: no route (counted)."""
        if isinstance(dst, IPv4Address):
            if dst == BROADCAST_V4 or (
                self.ipv4 is not None and dst == self.ipv4.network.broadcast_address
            ):
                return BROADCAST_MAC
            if dst.is_multicast:
                return multicast_mac_v4(dst)
        elif dst.is_multicast:
            return multicast_mac_v6(dst)
        hop = self._next_hop(dst)
        if hop is None:
            self.counters["tx_no_route"] += 1
            return False
        cache = self.arp if isinstance(hop, IPv4Address) else self.nd
        return cache.lookup(hop, now)
