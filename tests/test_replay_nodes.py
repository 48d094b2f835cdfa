"""Issue 9 items 1 and 5 in the sans-I/O node core, with injected time: packets captured on the
wire and replayed to a restarted node or to another node of the network open nothing; a key
holder cannot open more than its cap of ports; a flooding port cannot cut another pair's
delivery. Real chains in a real SQLite store; only the UDP is simulated."""

from __future__ import annotations

import json

from atenet.client.core import ClientCore
from atenet.node.core import NodeCore, PortLimits
from atenet.overlay.seal import TYPE_CONTROL, PacketKey, open_packet, parse_header
from tests.test_node_core import Wire, add_key, build, frame, handshake

T0 = 1_700_000_000.0  # a realistic clock: counters are ns since the epoch


class Tap:
    """A wire tap: records what one address sends, as an on-path attacker would."""

    def __init__(self, wire: Wire, src: tuple[str, int]) -> None:
        self.captured: list[tuple[bytes, tuple[str, int]]] = []
        inner = wire.sender(src)

        def send(packet: bytes, dst: tuple[str, int]) -> None:
            self.captured.append((bytes(packet), dst))
            inner(packet, dst)

        self.send = send


def fresh_node(
    world, node_id: str, start: float, now: float, view_state, send=None
) -> tuple[NodeCore, list]:
    """A node process started at ``start`` (what a restart is), serving the network."""
    sent: list[tuple[bytes, tuple[str, int]]] = []
    send = send or (lambda p, a: sent.append((bytes(p), a)))
    core = NodeCore(node_id, send, int(start * 1e9))
    core.add_network(world.chain.network_id).apply_state(view_state, now)
    return core, sent


async def test_captured_client_packets_replayed_to_a_restarted_node_or_another_node(world):
    """Before the fix: the replayed hello made a port at the attacker's address and got a
    welcome there, and the replayed frames were switched into the LAN."""
    wire, nodes, clients = await build(world, 2, 1, now=T0)
    net = world.chain.network_id
    (_a_addr, alice), (b_addr, _bob) = clients  # alice on node 0, bob on node 1
    # Alice reconnects as a new session while an attacker taps her wire.
    token = alice.token
    victim = ClientCore(token, int(T0 * 1e9), sender_id=4242)
    victim.endpoints = alice.endpoints
    v_addr = ("192.168.0.99", 5000)
    wire.clients[v_addr] = victim
    tap = Tap(wire, v_addr)
    tap.send(victim.control("hello", T0 + 1), victim.node)
    wire.run(T0 + 1)
    for packet in victim.tick(T0 + 1):  # the bound hello after the challenge
        tap.send(packet, victim.node)
    wire.run(T0 + 1)
    assert victim.config is not None
    f = frame(7, b"replay me")
    tap.send(victim.seal_frame(f), victim.node)
    wire.run(T0 + 1)
    assert wire.frames[b_addr] == [f]  # delivered once, through node 0 and node 1
    attacker = ("203.0.113.9", 6666)
    attacker_got: list[bytes] = []
    wire.clients[attacker] = Recorder(attacker_got)  # type: ignore[assignment]

    # (a) Node 0 restarts (same node id, new process) and the capture is replayed to it.
    view = world.reader()
    await view.load()
    restarted, sent = fresh_node(world, nodes[0].node_id, T0 + 5, T0 + 5, view.state)
    for packet, _dst in tap.captured:
        restarted.datagram(packet, attacker, T0 + 6)
    runtime = restarted.networks[net]
    assert len(runtime.switch) == 0 and runtime.clients == {}
    assert sent == []  # no welcome, no challenge: nothing at all to the attacker
    assert runtime.drops["stale"] == len(tap.captured)

    # (b) The capture replayed to node 1, which has been running all along (within the skew).
    node1 = nodes[1]
    runtime1 = node1.networks[net]
    ports_before = set(runtime1.switch.ports)
    bob_frames = len(wire.frames[b_addr])
    for packet, _dst in tap.captured:
        wire.queue.append((packet, attacker, ("10.0.0.2", 4799)))
    wire.run(T0 + 2)
    assert set(runtime1.switch.ports) == ports_before  # no port for the attacker
    assert len(wire.frames[b_addr]) == bob_frames  # the old frame was not re-injected
    assert runtime1.drops["unbound_hello"] >= 1 and runtime1.drops["no_port"] >= 1
    # What reached the attacker's address is at most a challenge, never a welcome.
    key = PacketKey(token.secret, token.key_id)
    assert attacker_got, "node 1 answers a bound-less hello with a challenge"
    for packet in attacker_got:
        assert parse_header(packet)[1] == TYPE_CONTROL
        assert json.loads(open_packet(key, packet))["op"] == "challenge"


class Recorder:
    """Stands at an address on the wire and keeps what arrives there."""

    def __init__(self, into: list[bytes]) -> None:
        self.into = into

    def datagram(self, packet: bytes, now: float) -> None:
        self.into.append(bytes(packet))


async def test_replayed_peer_flood_is_refused_by_the_same_node_and_after_its_restart(world):
    """A frame flooded by node 0 and captured: replayed to node 1 (its window), and to node 1
    after it restarted and got its client back (the time floor), it is not delivered again."""
    wire, nodes, clients = await build(world, 2, 1, now=T0)
    net = world.chain.network_id
    flood_tap = Tap(wire, ("10.0.0.1", 4799))
    nodes[0].networks[net].send = flood_tap.send
    (a_addr, alice), (b_addr, _bob) = clients
    f = frame(1, b"flooded")
    wire.sender(a_addr)(alice.seal_frame(f), alice.node)
    wire.run(T0)
    assert wire.frames[b_addr] == [f]
    floods = [p for p, d in flood_tap.captured if d == ("10.0.0.2", 4799)]
    assert len(floods) == 1
    # The same node, not restarted: the window refuses it.
    nodes[1].datagram(floods[0], ("10.0.0.1", 4799), T0 + 1)
    assert nodes[1].networks[net].drops["replay"] == 1
    # Node 1 restarted; a client of its own arrives; then the replay.
    view = world.reader()
    await view.load()
    restarted, _sent = fresh_node(
        world, nodes[1].node_id, T0 + 3, T0 + 3, view.state, wire.sender(("10.0.0.2", 4799))
    )
    wire.nodes[("10.0.0.2", 4799)] = restarted
    _bob.config = None
    _bob.instance = None
    wire.sender(b_addr)(_bob.control("hello", T0 + 4), _bob.node)
    wire.run(T0 + 4)
    handshake(wire, [(b_addr, _bob)], T0 + 4)
    assert len(restarted.networks[net].switch) == 1
    delivered = len(wire.frames[b_addr])
    restarted.datagram(floods[0], ("10.0.0.1", 4799), T0 + 5)
    assert len(wire.frames[b_addr]) == delivered
    assert restarted.networks[net].drops["stale"] == 1


async def test_a_key_holder_cannot_open_more_ports_than_the_cap(world):
    """Before the fix one key holder made 20,001 ports; now a session beyond the cap of its key
    (or of its source address, over every key) gets no port and no answer, counted."""
    wire, nodes, _clients = await build(world, 1, 0, now=T0)
    runtime = nodes[0].networks[world.chain.network_id]
    runtime.limits = PortLimits(per_key=3, per_address=5)
    tokens = {k: await add_key(world, k) for k in range(1, 5)}
    view = world.reader()
    await view.load()
    runtime.apply_state(view.state, T0)

    def connect(key_id: int, sender_id: int, addr: tuple[str, int]) -> ClientCore:
        client = ClientCore(tokens[key_id], int(T0 * 1e9), sender_id=sender_id)
        client.endpoints = [("10.0.0.1", 4799)]
        wire.clients[addr] = client
        wire.sender(addr)(client.control("hello", T0 + 1), client.node)
        wire.run(T0 + 1)
        handshake(wire, [(addr, client)], T0 + 1)
        return client

    one_key = [connect(1, i, (f"198.51.100.{i}", 4000)) for i in range(1, 6)]
    assert [c.config is not None for c in one_key] == [True, True, True, False, False]
    assert len(runtime.switch) == 3
    assert runtime.drops["key_port_limit"] >= 2
    # One source address over several keys: 5 ports at most (2 of them already from key 1? no:
    # those came from other addresses).
    same_addr = [connect(k, 100 + i, ("198.51.100.77", 5000 + i))
                 for i, k in enumerate([2, 2, 3, 3, 4, 4, 4])]  # fmt: skip
    assert sum(c.config is not None for c in same_addr) == 5
    assert runtime.address_ports["198.51.100.77"] == 5
    assert runtime.drops["address_port_limit"] >= 2
    # A port that goes frees its slot.
    first = one_key[0]
    wire.sender(("198.51.100.1", 4000))(first.control("bye", T0 + 2), first.node)
    wire.run(T0 + 2)
    assert connect(1, 50, ("198.51.100.50", 4000)).config is not None


async def test_a_flooding_port_cannot_cut_another_pairs_delivery(world):
    """A model of an overloaded node: one FIFO socket buffer in front of a node with a fixed
    work budget per millisecond, where opening a packet costs 10 units and a packet dropped
    before decryption costs 1 (the real core decides which). The node opens at most 200
    packets per ms (what one core of the compiled path forwards, node/core.py PORT_RATE); a
    client floods 400,000 packets/s (a C flooder; one honest tok sends ~65k/s); a normal pair
    sends 5 frames per ms. Without the per-port bucket the flood takes the node's budget and
    the buffer drops the pair's frames with the flood's; with the default bucket the pair keeps
    ≥ 90 % of its delivery. (Without it: 60 %.)"""
    from collections import deque

    wire, nodes, clients = await build(world, 1, 3, now=T0)
    node = nodes[0]
    runtime = node.networks[world.chain.network_id]
    # Both send broadcasts; this models the per-port packet bucket, so the switch's storm
    # control (which would also cap the flooder, after decryption) is off.
    runtime.switch.set_storm_rate(0)
    (f_addr, flooder), (a_addr, alice), (b_addr, _bob) = clients
    ticks, flood_per_tick, normal_per_tick, budget, buffer = 500, 400, 5, 2000, 1000
    queue: deque[tuple[bytes, tuple[str, int]]] = deque()
    sent = 0
    for tick in range(ticks):
        now = T0 + 1 + tick / 1000
        for i in range(flood_per_tick):
            if len(queue) < buffer:
                queue.append((flooder.seal_frame(frame(9, b"flood")), f_addr))
            if i % (flood_per_tick // normal_per_tick) == 0:
                sent += 1
                if len(queue) < buffer:
                    queue.append((alice.seal_frame(frame(1, b"normal %d" % sent)), a_addr))
        work = 0
        while queue and work < budget:
            packet, src = queue.popleft()
            early = runtime.drops["port_rate"]
            node.datagram(packet, src, now)
            work += 1 if runtime.drops["port_rate"] > early else 10
        wire.run(now)
    got = sum(1 for f in wire.frames[b_addr] if b"normal" in f)
    assert got >= 0.9 * sent, (got, sent, dict(runtime.drops))
    assert runtime.drops["port_rate"] > 0


async def test_forged_packets_naming_a_port_do_not_drain_its_bucket(world):
    """The bucket is checked before decryption but charged only for packets that authenticate:
    anyone can copy a session's sender id from the clear header, so forgeries must not cost
    the real client its rate."""
    wire, nodes, clients = await build(world, 1, 2, now=T0)
    runtime = nodes[0].networks[world.chain.network_id]
    (a_addr, alice), (b_addr, _bob) = clients
    genuine = alice.seal_frame(frame(1, b"genuine"))
    for i in range(20_000):  # far more than the bucket holds, all in one instant
        forged = bytearray(alice.seal_frame(frame(1, b"forged")))
        forged[-1] ^= 1
        nodes[0].datagram(bytes(forged), ("203.0.113.5", 1), T0 + 1 + i * 1e-9)
    assert runtime.drops["auth"] == 20_000 and runtime.drops["port_rate"] == 0
    nodes[0].datagram(genuine, a_addr, T0 + 1)
    wire.run(T0 + 1)
    assert [f for f in wire.frames[b_addr] if b"genuine" in f]
