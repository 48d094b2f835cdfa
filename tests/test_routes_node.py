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

from scapy.all import ARP, ICMP, IP, Ether, raw  # type: ignore[attr-defined]

from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.chain.log import Chain, create_network
from atenet.node.core import NetworkRuntime, NodeCore
from atenet.switch.core import Port
from tests.support.chains import World
from tests.test_node_core import Wire


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
