"""The node's packet core, frame by frame with injected time: a simulated multi-node network in
one process (the sans-I/O payoff). Real chains in a real SQLite store; only the UDP is simulated
by handing datagrams from one core to another."""

from __future__ import annotations

import os
from collections import defaultdict

from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.client.core import ClientCore
from atenet.node.core import UDP_IDLE, NodeCore
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.support.chains import new_node


class Wire:
    """Delivers datagrams between cores by address, in order, like a lossless LAN."""

    def __init__(self) -> None:
        self.queue: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.nodes: dict[tuple[str, int], NodeCore] = {}
        self.clients: dict[tuple[str, int], ClientCore] = {}
        self.frames: dict[tuple[str, int], list[bytes]] = defaultdict(list)

    def sender(self, src: tuple[str, int]):
        return lambda packet, dst: self.queue.append((packet, src, dst))

    def run(self, now: float) -> None:
        while self.queue:
            packet, src, dst = self.queue.pop(0)
            if dst in self.nodes:
                self.nodes[dst].datagram(packet, src, now)
            elif dst in self.clients:
                frame = self.clients[dst].datagram(packet, now)
                if frame is not None:
                    self.frames[dst].append(frame)


async def add_key(w, key_id: int) -> AccessToken:
    secret = os.urandom(32)
    payload = {"key_id": key_id, "label": "", "secret": b64(secret), "expires": None}
    await w.chain.append(Kind.KEY_ADD, payload, w.owner_signer)
    return AccessToken(w.chain.network_id, key_id, secret, ("10.0.0.1:4799",))


async def build(world, n_nodes: int, clients_per_node: int, now: float = 1000.0):
    """Nodes that are all members, each with clients attached; returns (wire, nodes, clients)."""
    wire = Wire()
    nodes, clients = [], []
    view = world.reader()
    await view.load()
    for i in range(n_nodes):
        signer = world.node_a if i == 0 else world.node_b if i == 1 else new_node(world.authority)
        node_id = short_id(signer.key.public_key().public_bytes_raw())
        addr = (f"10.0.0.{i + 1}", 4799)
        await view.append(Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": [f"{addr[0]}:4799"]},
                          signer)  # fmt: skip
        core = NodeCore(node_id, wire.sender(addr), 1)
        wire.nodes[addr] = core
        nodes.append(core)
    for core in nodes:
        runtime = core.add_network(world.chain.network_id)
        runtime.apply_state(view.state, now)
    key_id = 0
    for i in range(n_nodes):
        for j in range(clients_per_node):
            key_id += 1
            token = await add_key(world, key_id)
            client = ClientCore(token, 1, sender_id=key_id)
            addr = (f"192.168.{i}.{j + 10}", 5000)
            client.endpoints = [(f"10.0.0.{i + 1}", 4799)]
            wire.clients[addr] = client
            clients.append((addr, client))
    await view.catch_up()
    for core in nodes:
        core.networks[world.chain.network_id].apply_state(view.state, now)
    for addr, client in clients:
        wire.sender(addr)(client.control("hello", now), client.node)
    wire.run(now)
    handshake(wire, clients, now)
    assert all(c.config is not None for _a, c in clients)
    return wire, nodes, clients


def handshake(wire: Wire, clients, now: float) -> None:
    """Let clients answer what came back (a challenge is answered by a bound hello)."""
    for _ in range(3):
        for addr, client in clients:
            for packet in client.tick(now):
                wire.sender(addr)(packet, client.node)
        wire.run(now)


def frame(src: int, payload: bytes = b"hello") -> bytes:
    return ethernet_frame(b"\xff" * 6, bytes([2, 0, 0, 0, 0, src]), 0x88B5, payload)


async def test_broadcast_reaches_every_other_client_exactly_once(world):
    wire, nodes, clients = await build(world, 3, 2)
    (src_addr, src), others = clients[0], clients[1:]
    f = frame(1, b"once")
    wire.sender(src_addr)(src.seal_frame(f), src.node)
    wire.run(1000.0)
    assert wire.frames[src_addr] == []  # never echoed back to its sender
    for addr, _c in others:
        assert wire.frames[addr] == [f], addr
    # The frame crossed the overlay once per peer: one seal, two sends, no re-flooding.
    assert nodes[0].networks[world.chain.network_id].switch.frames_to_peers == 1
    assert all(n.networks[world.chain.network_id].switch.frames_to_peers == 0 for n in nodes[1:])


async def test_udp_client_port_expires_after_60s_of_silence(world):
    wire, nodes, clients = await build(world, 1, 2, now=1000.0)
    runtime = nodes[0].networks[world.chain.network_id]
    assert len(runtime.switch) == 2
    nodes[0].take_events()
    addr, client = clients[0]
    wire.sender(addr)(client.seal_frame(frame(1)), client.node)
    wire.run(1000.0 + UDP_IDLE - 1)
    nodes[0].expire(1000.0 + UDP_IDLE + 0.5)  # client 2 silent for > 60 s, client 1 is not
    assert len(runtime.switch) == 1
    nodes[0].expire(1000.0 + 2 * UDP_IDLE)
    assert len(runtime.switch) == 0
    assert ("idle", world.chain.network_id) in nodes[0].take_events()


async def test_revoked_key_closes_its_port_and_drops_its_packets(world):
    wire, nodes, clients = await build(world, 1, 2)
    runtime = nodes[0].networks[world.chain.network_id]
    await world.chain.append(Kind.KEY_REVOKE, {"key_id": 1}, world.owner_signer)
    closed = runtime.apply_state(world.chain.state, 1001.0)
    assert [p.name for p in closed] == [f"udp:{clients[0][0][0]}:5000/k1"]
    addr, client = clients[0]
    wire.sender(addr)(client.seal_frame(frame(1)), client.node)
    wire.run(1001.0)
    assert runtime.drops["revoked_key"] == 1
    assert wire.frames[clients[1][0]] == []


async def test_peer_traffic_without_local_ports_asks_to_leave(world):
    wire, nodes, clients = await build(world, 2, 1)
    net = world.chain.network_id
    # Node 2's only client says bye: node 2 now has no local ports.
    addr, client = clients[1]
    wire.sender(addr)(client.control("bye", 1000.0), client.node)
    wire.run(1000.0)
    assert ("idle", net) in nodes[1].take_events()
    src_addr, src = clients[0]
    wire.sender(src_addr)(src.seal_frame(frame(1)), src.node)
    wire.run(1000.0)
    assert nodes[1].networks[net].drops["no_local_ports"] == 1
    assert ("stale", net) in nodes[1].take_events()


async def test_dead_peer_is_no_longer_flooded_to(world):
    _wire, nodes, _clients = await build(world, 2, 1)
    runtime = nodes[0].networks[world.chain.network_id]
    peer = nodes[1].node_id
    runtime.alive_until[peer] = 1010.0  # its last heartbeat is valid until then
    runtime.refresh_peers(1005.0)
    assert runtime.peer_ids == (peer,)
    runtime.refresh_peers(1011.0)
    assert runtime.peers == ()


async def test_client_fails_over_when_its_node_goes_silent(world):
    token = await add_key(world, 1)
    token = AccessToken(token.network_id, 1, token.secret, ("10.0.0.1:4799", "10.0.0.2:4799"))
    client = ClientCore(token, 1)
    assert client.tick(0.0)  # hello to the first node
    assert client.node == ("10.0.0.1", 4799)
    assert client.tick(0.2) == []  # still waiting
    assert client.tick(0.6)  # asks the same node again (its first packet may only load the net)
    assert client.node == ("10.0.0.1", 4799)
    assert client.tick(2.5)  # no welcome within 2 s: next endpoint
    assert client.node == ("10.0.0.2", 4799)
