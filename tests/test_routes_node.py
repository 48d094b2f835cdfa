"""Routing between two networks through the node cores (node/routes.py), frame by frame.

Two nodes, two networks with a route each way, real chains in one SQLite store; only UDP is
simulated (tests/test_node_core.py's Wire). Host A1 of network A is on node 1, host B1 of
network B on node 2. The hosts are test ports that answer ARP and ping the way a kernel would,
so every frame on the way — the ARP inside the other network, the re-addressed packet, the
reply routed back by the other node — is the real output of the cores.
"""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Network

from scapy.all import ARP, BOOTP, DHCP, ICMP, IP, UDP, Ether, raw  # type: ignore[attr-defined]

from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.chain.log import Chain, create_network
from atenet.node.core import NetworkRuntime, NodeCore
from atenet.switch.core import Port
from atenet.wire.dhcp import parse_classless_routes
from tests.support.chains import World
from tests.test_node_core import Wire
from tests.test_switch_offload import super_packet


class Host(Port):
    """A local port with a kernel's manners: answers ARP for its address and pings."""

    def __init__(self, name: str, mac: str, ip: str, runtime: NetworkRuntime, now: float) -> None:
        super().__init__(name, "test", now)
        self.mac_text, self.ip = mac, ip
        self.runtime = runtime
        self.got: list[Ether] = []

    def deliver(self, frame: bytes) -> None:
        pkt = Ether(frame)
        if pkt.dst not in (self.mac_text, "ff:ff:ff:ff:ff:ff"):
            return
        if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == self.ip:
            self.send(Ether(dst=pkt.src, src=self.mac_text)
                      / ARP(op=2, hwsrc=self.mac_text, psrc=self.ip, hwdst=pkt[ARP].hwsrc,
                            pdst=pkt[ARP].psrc))  # fmt: skip
            return
        if ICMP in pkt and pkt[ICMP].type == 8 and pkt[IP].dst == self.ip:
            echo = pkt[ICMP]
            self.send(Ether(dst=pkt.src, src=self.mac_text)
                      / IP(src=self.ip, dst=pkt[IP].src)
                      / ICMP(type=0, id=echo.id, seq=echo.seq) / echo.payload)  # fmt: skip
            self.got.append(pkt)
            return
        self.got.append(pkt)

    def send(self, pkt: Ether) -> None:
        self.runtime.switch.from_local(self, raw(pkt))


async def second_network(world: World) -> Chain:
    return await create_network(
        world.store, world.owner, world.deployment, name="lab", cidr="10.9.9.0/24",
        cidr6="fd00:1:2:4::/64", mtu=1400,
    )  # fmt: skip


async def route(world: World, source: Chain, target: Chain) -> int:
    """Export a key of ``target`` and route ``source`` to it (what `tok route add` writes)."""
    await target.catch_up()
    key_id = len(target.state.keys) + 1
    secret = os.urandom(32)
    payload = {"key_id": key_id, "label": "route", "secret": b64(secret), "expires": None}
    await target.append(Kind.KEY_ADD, payload, world.owner_signer)
    await source.catch_up()
    await source.append(
        Kind.ROUTE_ADD,
        {"to": target.network_id.hex(), "name": target.state.name, "key_id": key_id,
         "token": "x", "created_key": True},
        world.owner_signer,
    )  # fmt: skip
    return key_id


async def two_routed_networks(world: World):  # type: ignore[no-untyped-def]
    """Networks A (the world's) and B routed both ways, nodes 1 and 2 members of both; host
    A1 on node 1, B1 on node 2. Returns (wire, nodes, networks, hosts, B's key for A → B)."""
    net_a = world.chain
    net_b = await second_network(world)
    key_ab = await route(world, net_a, net_b)
    await route(world, net_b, net_a)
    wire = Wire()
    cores = []
    for i, signer in enumerate((world.node_a, world.node_b)):
        node_id = short_id(signer.key.public_key().public_bytes_raw())
        addr = (f"10.0.0.{i + 1}", 4799)
        for chain in (net_a, net_b):
            await chain.append(
                Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": [f"{addr[0]}:4799"]}, signer
            )
        core = NodeCore(node_id, wire.sender(addr), time.time_ns())
        wire.nodes[addr] = core
        cores.append(core)
    now = time.time()
    for core in cores:
        for chain in (net_a, net_b):
            await chain.catch_up()
            core.add_network(chain.network_id).apply_state(chain.state, now)
    node1, node2 = cores
    a_on_1 = node1.networks[net_a.network_id]
    b_on_2 = node2.networks[net_b.network_id]
    a1 = Host("a1", "02:aa:00:00:00:01", "10.9.8.10", a_on_1, now)
    b1 = Host("b1", "02:bb:00:00:00:01", "10.9.9.20", b_on_2, now)
    a_on_1.add_port("a1", a1)
    b_on_2.add_port("b1", b1)
    for core in cores:
        core.expire(now)  # links the routes: A → B on node 1, B → A on node 2
    assert a_on_1.routed_cidrs() == ["10.9.9.0/24", "fd00:1:2:4::/64"]
    return wire, (node1, node2), (net_a, net_b), (a1, b1), key_ab, now


async def test_ping_between_hosts_of_two_routed_networks_on_two_nodes_and_revocation(
    world: World,
) -> None:
    wire, (node1, _node2), (net_a, net_b), (a1, b1), key_ab, now = await two_routed_networks(world)
    a_on_1 = node1.networks[net_a.network_id]
    b_on_2 = _node2.networks[net_b.network_id]
    gw_a = a_on_1.gateway.mac.hex(":")

    def ping(seq: int) -> None:
        a1.send(Ether(dst=gw_a, src=a1.mac_text) / IP(src=a1.ip, dst=b1.ip, ttl=64)
                / ICMP(id=9, seq=seq) / b"across")  # fmt: skip
        wire.run(now)

    ping(1)
    echo = [p for p in b1.got if ICMP in p and p[ICMP].type == 8]
    assert len(echo) == 1, [p.summary() for p in b1.got]
    assert echo[0][IP].ttl == 63 and echo[0].src == b_on_2.gateway.mac.hex(":")
    assert echo[0][ICMP].load == b"across"
    checked = IP(raw(echo[0][IP]))
    del checked.chksum
    assert IP(raw(checked)).chksum == echo[0][IP].chksum  # the header checksum was fixed up
    replies = [p for p in a1.got if ICMP in p and p[ICMP].type == 0]
    assert len(replies) == 1 and replies[0][IP].src == b1.ip and replies[0][IP].ttl == 63
    ping(2)  # resolved both ways now: no new ARP, one more reply
    assert len([p for p in a1.got if ICMP in p and p[ICMP].type == 0]) == 2
    # Revoking the route's key closes the route at once: the next ping gets "unreachable".
    await net_b.append(Kind.KEY_REVOKE, {"key_id": key_ab}, world.owner_signer)
    node1.networks[net_b.network_id].apply_state(net_b.state, now)
    a1.got.clear()
    ping(3)
    assert not [p for p in b1.got if ICMP in p and p[ICMP].seq == 3]
    (unreachable,) = [p for p in a1.got if ICMP in p]
    assert unreachable[ICMP].type == 3 and unreachable[IP].src == a_on_1.gateway.ipv4.exploded


async def test_a_host_that_never_answers_arp_gets_the_sender_a_host_unreachable(
    world: World,
) -> None:
    wire, (node1, node2), (net_a, _net_b), (a1, _b1), _key, now = await two_routed_networks(world)
    gw_a = node1.networks[net_a.network_id].gateway
    a1.send(Ether(dst=gw_a.mac.hex(":"), src=a1.mac_text) / IP(src=a1.ip, dst="10.9.9.99")
            / ICMP(id=9, seq=1))  # fmt: skip
    wire.run(now)
    for later in (1.1, 2.2, 3.3, 4.4):  # the neighbour cache asks 3 times, 1 s apart
        for core in (node1, node2):
            core.expire(now + later)
        wire.run(now + later)
    errors = [p for p in a1.got if ICMP in p and p[ICMP].type == 3]
    assert len(errors) == 1 and errors[0][ICMP].code == 1  # host unreachable
    assert errors[0][IP].dst == a1.ip and errors[0].dst == a1.mac_text


async def test_a_new_host_reaches_the_routed_network_with_its_first_packet(
    world: World,
) -> None:
    """Routes are linked when a network gets a host on a node, not at the next once-a-second
    tick: else the first packets of a host that just connected (a TCP SYN right after `tok
    connect`) get "network unreachable", which fails the connection at once. Here A2 is the
    first host of A on node 2 and B3 the first host of B on node 1 (each network was there
    only as a route port), and no tick runs."""
    wire, (node1, node2), (net_a, net_b), (a1, b1), _key, now = await two_routed_networks(world)
    a_on_2 = node2.networks[net_a.network_id]
    b_on_1 = node1.networks[net_b.network_id]
    a2 = Host("a2", "02:aa:00:00:00:02", "10.9.8.11", a_on_2, now)
    b3 = Host("b3", "02:bb:00:00:00:03", "10.9.9.30", b_on_1, now)
    a_on_2.add_port("a2", a2)
    b_on_1.add_port("b3", b3)
    for host, runtime, target in ((a2, a_on_2, b1), (b3, b_on_1, a1)):
        gateway = runtime.gateway.mac.hex(":")
        host.send(Ether(dst=gateway, src=host.mac_text) / IP(src=host.ip, dst=target.ip)
                  / ICMP(id=7, seq=1))  # fmt: skip
        wire.run(now)
        got = [(p[IP].src, p[ICMP].type) for p in host.got if ICMP in p]
        assert got == [(target.ip, 0)], got  # the echo reply, no "unreachable"


async def test_a_route_port_leaves_the_other_networks_offloaded_packets_whole(
    world: World,
) -> None:
    """A node that routes into B is a member of B and so receives B's floods. Its route port
    only reads the frames to B's gateway MAC (ARP / ND answers), so B's TSO super-frames pass
    it as they are: routing into B must not make the node cut all of B's bulk traffic into
    segments (a Python loop per packet) for a port that throws them away."""
    wire, (node1, node2), (_net_a, net_b), (_a1, b1), _key, now = await two_routed_networks(world)
    b_on_1 = node1.networks[net_b.network_id]
    b_on_2 = node2.networks[net_b.network_id]
    assert [p.kind for p in b_on_1.switch.ports.values()] == ["route"]
    b_on_2.switch.packet_from_local(b1, super_packet())
    wire.run(now)
    assert b_on_1.switch.frames_from_peers == 1  # it got there
    assert b_on_1.switch.segmented == 0 and b_on_1.switch.bad_packets == 0


async def test_dhcp_offers_the_routed_networks_as_classless_routes_to_clients_that_ask(
    world: World,
) -> None:
    _wire, (node1, _node2), (net_a, _net_b), (a1, _b1), _key, _now = await two_routed_networks(
        world
    )
    a_on_1 = node1.networks[net_a.network_id]

    def discover(params: list[int]) -> dict[str, object]:
        a1.got.clear()
        a1.send(Ether(src=a1.mac_text, dst="ff:ff:ff:ff:ff:ff")
                / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                / BOOTP(chaddr=bytes.fromhex(a1.mac_text.replace(":", "")), xid=5)
                / DHCP(options=[("message-type", "discover"), ("param_req_list", params),
                                "end"]))  # fmt: skip
        (offer,) = [p for p in a1.got if DHCP in p]
        return {o[0]: o[1] for o in offer[DHCP].options if isinstance(o, tuple)}

    asked = discover([1, 3, 6, 121])
    routes = (
        parse_classless_routes(asked["classless_static_routes"])
        if isinstance(asked.get("classless_static_routes"), bytes)
        else asked.get("classless_static_routes")
    )
    assert a_on_1.dhcp.classless_routes == (IPv4Network("10.9.9.0/24"),)
    assert routes is not None and "10.9.9.0/24" in str(routes) and "10.9.8.1" in str(routes)
    assert "classless_static_routes" not in discover([1, 3, 6])  # RFC 3442: only when asked
