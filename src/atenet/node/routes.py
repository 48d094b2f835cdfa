"""Routing between networks on one node: the glue between two networks' gateways.

A network's chain lists its routes (``tok route add``): "packets for network B may leave
through me, with this access key of B". For each route of a network A that has hosts on this
node, the node loads B too and links the two gateways:

* A's gateway gets a route for B's CIDRs (:meth:`Gateway.add_route`). A packet a local host of
  A sends to the gateway's MAC for an address in B is checked, its TTL decremented, and handed
  to B's :class:`~atenet.router.neighbours.Neighbours`, which puts it in a frame for the target
  host's MAC (asking by ARP/ND inside B when it does not know it yet).
* In B, the route is a switch port (:class:`RoutePort`) opened with the route's access key:
  the routed frames enter B's switch from it, like frames from any local port, and flood to
  B's local ports and member nodes — so they reach the target's node the normal way, and this
  node becomes a member of B while the port exists. Revoking the key closes the port (the
  same rule as for any client port) and so removes the route at once.
* The port also sees every frame of B (it is a port), and hands those addressed to the
  gateway's MAC — ARP replies and neighbour advertisements answering the requests above,
  which may come from any node — to B's neighbour cache.

Routes are directional: A → B lets A's hosts reach B; B's answers travel B → A, routed by the
node of the B host that answers, which needs B's own route to A (``tok route add A B`` adds
both when one owner owns both networks).

This module is sans-I/O like the rest of the core: :func:`sync_routes` is called with ``now``
after chain state changes and once a second, and asks the shell to load networks it needs
through the core's "load" event.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING

from atenet.offload import VNET_HDR_LEN, OffloadError, to_frames
from atenet.switch.core import Port

if TYPE_CHECKING:
    from atenet.node.core import NetworkRuntime, NodeCore

ROUTE_KIND = "route"


class RoutePort(Port):
    """Network A's route into network B, as a port of B's switch (see the module doc)."""

    __slots__ = ("networks", "source", "source_gateway", "target", "target_gateway")
    gateway_source = True  # routed frames come from B's gateway MAC (docs/learning.md)

    def __init__(
        self, source: NetworkRuntime, target: NetworkRuntime, key_id: int, now: float
    ) -> None:
        name = source.state.settings.name if source.state is not None else source.network_id.hex()
        super().__init__(f"route:{name}", ROUTE_KIND, now, key_id)
        self.source = source
        self.target = target
        self.networks: list[IPv4Network | IPv6Network] = []
        """The target's networks as routed in the source's gateway (removed on close)."""
        self.source_gateway = source.gateway
        self.target_gateway = target.gateway
        """The gateways linked: a settings change rebuilds them, and the link with them."""
        self.offload = True
        """B's offloaded packets are handed over whole (:meth:`deliver_packet`): the port reads
        only the few small frames to the gateway MAC, so it must not make B's switch cut every
        TSO super-frame of B's traffic on this node into segments."""

    def deliver(self, frame: bytes) -> None:
        """Every frame of B: those for the gateway MAC teach B's neighbour cache."""
        target = self.target
        neighbours = target.neighbours
        if neighbours is not None and frame.startswith(target.switch.gateway_mac):
            self.frames_out += 1
            for out in neighbours.learn(frame, target.clock()):
                target.switch.from_local(self, out)

    def deliver_packet(self, packet: bytes) -> None:
        """An offloaded packet of B: only one to the gateway MAC (never a super-frame in
        practice: ARP / ND answers) is turned into frames and read; the rest is not ours."""
        if packet.startswith(self.target.switch.gateway_mac, VNET_HDR_LEN):
            try:
                frames = to_frames(packet)
            except OffloadError:
                return  # malformed: not an answer anyone can read
            for frame in frames:
                self.deliver(frame)

    def forward(self, packet: bytes, dst: IPv4Address | IPv6Address, now: float) -> None:
        """A packet A's gateway routed to B (TTL already decremented): into B's switch."""
        neighbours = self.target.neighbours
        if neighbours is None:
            return
        self.frames_in += 1
        self.bytes_in += len(packet)
        for frame in neighbours.send(packet, dst, now):
            self.target.switch.from_local(self, frame)

    def close(self) -> None:
        """B's switch dropped the port (its key was revoked, or the route went): unroute."""
        gateway = self.source_gateway
        if gateway is not None:
            for network in self.networks:
                gateway.remove_route(network)
        self.networks = []


def wanted_routes(runtime: NetworkRuntime) -> dict[bytes, int]:
    """Networks ``runtime``'s hosts may reach, with the access key of each, while it has hosts
    on this node (route ports do not count: two networks routing to each other must not keep
    each other loaded forever)."""
    state = runtime.state
    if state is None or runtime.gateway is None or not state.routes:
        return {}
    if not any(p.kind != ROUTE_KIND for p in runtime.switch.ports.values()):
        return {}
    return {bytes.fromhex(r.to): r.key_id for r in state.routes.values()}


def sync_routes(core: NodeCore, now: float) -> None:
    """Make every network's route ports match its routes (idempotent; cheap when nothing
    changed). Networks not loaded yet are asked for with a "load" event."""
    wanted: dict[tuple[bytes, bytes], int] = {}
    for source_id, runtime in core.networks.items():
        if runtime.dhcp is not None:  # DHCP option 121 tells clients what the gateway reaches
            runtime.dhcp.classless_routes = tuple(
                n for n in runtime.routed_networks() if isinstance(n, IPv4Network)
            )
        for target_id, key_id in wanted_routes(runtime).items():
            wanted[(source_id, target_id)] = key_id
    for source_id, runtime in core.networks.items():
        for target_id, port in list(runtime.route_ports.items()):
            target = core.networks.get(target_id)
            if (
                wanted.get((source_id, target_id)) != port.key_id
                or target is None
                or target.switch.ports.get(("route", source_id)) is not port
                or port.source_gateway is not runtime.gateway
                or port.target_gateway is not target.gateway
                or not port.networks
            ):
                unlink(runtime, target_id)
    for (source_id, target_id), key_id in wanted.items():
        source = core.networks[source_id]
        if target_id in source.route_ports:
            continue
        target = core.networks.get(target_id)
        if target is None:
            core.request_load(target_id)
            continue
        link(source, target, key_id, now)


def link(source: NetworkRuntime, target: NetworkRuntime, key_id: int, now: float) -> bool:
    """Route ``source`` → ``target`` with the target's access key ``key_id``; False (and a
    counted reason) when it cannot be done now."""
    gateway = source.gateway
    if gateway is None or target.gateway is None or target.state is None:
        source.drops["route_no_gateway"] += 1
        return False
    key = target.state.keys.get(key_id)
    if key is None or not key.usable(now):
        source.drops["route_key_unusable"] += 1
        return False
    port = RoutePort(source, target, key_id, now)
    for network in (target.gateway.network4, target.gateway.network6):
        if network is None:
            continue
        try:
            gateway.add_route(network, port.forward, target.gateway.mtu)
        except ValueError:  # overlaps the source's own network: refused at `tok route add`
            source.drops["route_overlap"] += 1
            continue
        port.networks.append(network)
    if not port.networks:
        return False
    source.route_ports[target.network_id] = port
    target.add_port(("route", source.network_id), port)
    return True


def unlink(source: NetworkRuntime, target_id: bytes) -> None:
    port = source.route_ports.pop(target_id, None)
    if port is None:
        return
    port.close()
    target = port.target
    if target.switch.ports.get(("route", source.network_id)) is port:
        target.remove_port(("route", source.network_id))
