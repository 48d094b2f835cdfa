"""The learning switch (docs/learning.md), frame by frame with injected time.

First the switch alone (recording ports, peers as sender ids), then three simulated nodes whose
sealed datagrams are counted per destination address: after one exchange, unicast reaches only
the node and port of its destination.
"""

from __future__ import annotations

import re
from collections import Counter

from atenet.client.core import ClientCore
from atenet.node.metrics import exposition, registry
from atenet.offload import NO_OFFLOAD
from atenet.switch.core import FDB_AGE, NO_MAC, Switch
from atenet.wire.ethernet import ethernet_frame
from tests.test_node_core import Wire, build
from tests.test_switch_offload import Recorder

BCAST = b"\xff" * 6
GW = bytes.fromhex("02aa00000001")
PEER_B, PEER_C = 0x0B0B0B0B, 0x0C0C0C0C


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, n >> 8, n & 0xFF])


def eth(dst: bytes, src: bytes, payload: bytes = b"x" * 46, etype: int = 0x88B5) -> bytes:
    return ethernet_frame(dst, src, etype, payload)


class Net:
    """A switch whose peers record what they are sent: ``flooded`` (to all) and ``sent`` (to
    one peer, by sender id)."""

    def __init__(self, n_ports: int = 3, **limits: int) -> None:
        self.flooded: list[bytes] = []
        self.sent: list[tuple[int, bytes]] = []
        self.switch = Switch(
            self._flood,
            self._flood,
            to_peer=self._one,
            to_peer_packet=self._one,
            **limits,  # type: ignore[arg-type]
        )
        self.ports = [Recorder(f"p{i}") for i in range(n_ports)]
        for i, port in enumerate(self.ports):
            self.switch.add(i, port)

    def _flood(self, frame: bytes) -> int:
        self.flooded.append(frame)
        return 2

    def _one(self, frame: bytes, peer: int) -> int:
        self.sent.append((peer, frame))
        return 1

    def clear(self) -> None:
        self.flooded.clear()
        self.sent.clear()
        for port in self.ports:
            port.frames.clear()
            port.packets.clear()


def test_a_frame_to_a_learned_local_mac_goes_to_that_port_only() -> None:
    net = Net()
    a, b, c = net.ports
    net.switch.from_local(a, eth(BCAST, mac(1)))  # a's host says who it is
    net.clear()
    f = eth(mac(1), mac(2))
    net.switch.from_local(b, f)
    assert a.frames == [f]
    assert c.frames == [] and net.flooded == [] and net.sent == []
    assert net.switch.lookup(mac(1)) is a and net.switch.lookup(mac(2)) is b
    assert (len(a.learned), len(b.learned), len(c.learned)) == (1, 1, 0)
    assert a.counters()["learned"] == 1


def test_unknown_unicast_broadcast_and_multicast_flood() -> None:
    net = Net()
    a, b, c = net.ports
    net.switch.from_local(a, eth(BCAST, mac(1)))
    for dst in (mac(99), BCAST, bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")):
        net.clear()
        f = eth(dst, mac(1))
        net.switch.from_local(a, f)
        assert (a.frames, b.frames, c.frames, net.flooded) == ([], [f], [f], [f]), dst.hex()


def test_multicast_and_zero_source_macs_are_never_learned() -> None:
    net = Net()
    a = net.ports[0]
    net.switch.from_local(a, eth(BCAST, bytes.fromhex("01005e000001")))
    net.switch.from_local(a, eth(BCAST, NO_MAC))
    net.switch.from_peer(eth(BCAST, bytes.fromhex("333300000001")), PEER_B)
    assert net.switch.fdb == {}


def test_a_mac_learned_behind_a_peer_gets_sealed_to_that_peer_only() -> None:
    net = Net()
    a, b, c = net.ports
    net.switch.from_peer(eth(BCAST, mac(7)), PEER_B)  # B's host floods (an ARP request)
    assert [len(p.frames) for p in net.ports] == [1, 1, 1]
    net.clear()
    f = eth(mac(7), mac(1))
    net.switch.from_local(a, f)  # the answer
    assert net.sent == [(PEER_B, f)] and net.flooded == []
    assert b.frames == [] and c.frames == []
    assert net.switch.frames_to_peers == 1
    assert net.switch.peer_learned == {PEER_B: 1}


def test_loop_rule_frames_from_peers_never_go_back_to_peers() -> None:
    net = Net()
    a = net.ports[0]
    net.switch.from_peer(eth(BCAST, mac(7)), PEER_B)
    net.switch.from_local(a, eth(BCAST, mac(1)))
    net.clear()
    # Unknown, broadcast, known behind another peer, known local: never out to a peer.
    for dst in (mac(99), BCAST, mac(7), mac(1)):
        net.switch.from_peer(eth(dst, mac(8)), PEER_C)
    assert net.flooded == [] and net.sent == []
    # Flooded by C for a host this node knows is behind B: no local port wants it.
    assert [len(p.frames) for p in net.ports] == [3, 2, 2]


def test_a_frame_from_a_peer_to_a_local_mac_goes_to_that_port_only() -> None:
    net = Net()
    a, b, c = net.ports
    net.switch.from_local(b, eth(BCAST, mac(2)))
    net.clear()
    f = eth(mac(2), mac(7))
    net.switch.from_peer(f, PEER_B)
    assert (a.frames, b.frames, c.frames) == ([], [f], [])


def test_entries_age_out_after_300_s_unless_refreshed() -> None:
    net = Net()
    a, b, _c = net.ports
    sw = net.switch
    sw.age(1000.0)
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_peer(eth(BCAST, mac(7)), PEER_B)
    sw.from_local(b, eth(BCAST, mac(2)))
    sw.age(1200.0)
    sw.from_local(b, eth(BCAST, mac(2)))  # b's host keeps talking (the hot path refreshes it)
    assert sw.age(1000.0 + FDB_AGE - 1) == 0
    assert len(sw.fdb) == 3
    assert sw.age(1000.0 + FDB_AGE + 1) == 0  # swept a second ago: the next sweep in 30 s
    assert sw.age(1000.0 + FDB_AGE * 1.1) == 2  # a's and the peer's host fell silent
    assert sw.lookup(mac(1)) is None and sw.lookup(mac(7)) is None
    assert sw.lookup(mac(2)) is b and a.learned == set() and sw.peer_learned == {}
    assert sw.fdb_aged == 2
    net.clear()
    f = eth(mac(1), mac(2))
    sw.from_local(b, f)
    assert net.flooded == [f]  # unknown again: flooded
    assert sw.age(1330.0 + FDB_AGE - 1) == 0  # b's host spoke again at 1330 (just above)
    assert sw.age(1330.0 + FDB_AGE + 31) == 1
    assert sw.fdb == {}


def test_an_alternating_source_keeps_both_macs_fresh() -> None:
    net = Net()
    a = net.ports[0]
    sw = net.switch
    sw.age(1000.0)
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(a, eth(BCAST, mac(2)))
    sw.now = 1250.0
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(a, eth(BCAST, mac(2)))  # mac(1)'s time is saved when the port moves on
    assert sw.age(1000.0 + FDB_AGE + 1) == 0
    assert sw.lookup(mac(1)) is a and sw.lookup(mac(2)) is a


def test_moves_replace_the_entry_at_once() -> None:
    net = Net()
    a, b, c = net.ports
    sw = net.switch
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(b, eth(BCAST, mac(1)))  # port to port
    assert sw.lookup(mac(1)) is b and a.learned == set() and b.learned == {mac(1)}
    sw.from_local(a, eth(BCAST, mac(1)))  # and back (a's own hot path must not hide it)
    assert sw.lookup(mac(1)) is a and b.learned == set()
    sw.from_peer(eth(BCAST, mac(1)), PEER_B)  # port to peer
    assert sw.lookup(mac(1)) == PEER_B and a.learned == set()
    sw.from_peer(eth(BCAST, mac(1)), PEER_C)  # peer to peer
    assert sw.lookup(mac(1)) == PEER_C and sw.peer_learned == {PEER_C: 1}
    sw.from_local(a, eth(BCAST, mac(1)))  # peer to port
    assert sw.lookup(mac(1)) is a and sw.peer_learned == {}
    assert sw.fdb_moves == 5
    net.clear()
    f = eth(mac(1), mac(3))
    sw.from_local(c, f)
    assert a.frames == [f] and b.frames == [] and net.sent == []


def test_per_port_cap_stops_one_port_without_evicting_others() -> None:
    net = Net(fdb_port_max=4)
    a, b, c = net.ports
    sw = net.switch
    sw.from_local(b, eth(BCAST, mac(500)))
    for n in range(1, 11):  # a sprays 10 source MACs
        sw.from_local(a, eth(BCAST, mac(n)))
    assert len(a.learned) == 4 and sw.fdb_port_full == 6
    assert sw.lookup(mac(500)) is b
    net.clear()
    f = eth(mac(9), mac(500))  # a MAC a sent but that was not learned: flooded, still arrives
    sw.from_local(b, f)
    assert a.frames == [f] and c.frames == [f] and net.flooded == [f]
    sw.from_local(c, eth(BCAST, mac(501)))
    assert sw.lookup(mac(501)) is c


def test_per_network_cap_refuses_new_macs_and_keeps_the_table() -> None:
    net = Net(fdb_max=5, fdb_port_max=64)
    a, b, c = net.ports
    sw = net.switch
    sw.from_local(b, eth(BCAST, mac(500)))
    sw.from_peer(eth(BCAST, mac(600)), PEER_B)
    for n in range(1, 11):
        sw.from_local(a, eth(BCAST, mac(n)))
    assert len(sw.fdb) == 5 and sw.fdb_full == 7
    assert sw.lookup(mac(500)) is b and sw.lookup(mac(600)) == PEER_B
    sw.from_peer(eth(BCAST, mac(601)), PEER_B)
    assert sw.lookup(mac(601)) is None and sw.fdb_full == 8
    sw.from_local(c, eth(BCAST, mac(500)))  # a move needs no room
    assert sw.lookup(mac(500)) is c
    status = sw.fdb_status()
    assert (status["entries"], status["full"], status["moves"]) == (5, 8, 1)


def test_a_removed_port_takes_its_entries_with_it() -> None:
    net = Net()
    a, b, _c = net.ports
    sw = net.switch
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(a, eth(BCAST, mac(2)))
    sw.from_local(b, eth(BCAST, mac(3)))
    assert sw.remove(0) is a
    assert set(sw.fdb) == {mac(3)}
    net.clear()
    f = eth(mac(1), mac(3))
    sw.from_local(b, f)
    assert net.flooded == [f] and a.frames == []


def test_the_gateway_mac_is_never_learned_from_a_port_or_a_peer() -> None:
    net = Net()
    a, b, c = net.ports
    sw = net.switch
    got: list[bytes] = []
    sw.gateway = lambda _port, frame: got.append(frame)
    sw.gateway_mac = GW
    sw.from_local(a, eth(BCAST, GW))  # a port claiming the gateway's MAC
    sw.from_peer(eth(BCAST, GW), PEER_B)  # a routed frame another node's route port sent
    assert sw.lookup(GW) is None and sw.fdb_refused == 1
    route = Recorder("route")
    route.gateway_source = True  # type: ignore[misc]  # a route port: routed frames, by design
    sw.add("route", route)
    sw.from_local(route, eth(mac(3), GW))
    assert sw.lookup(GW) is None and sw.fdb_refused == 1
    sw.remove("route")
    net.clear()
    got.clear()
    f = eth(GW, mac(3), etype=0x0800)
    sw.from_local(c, f)  # for the gateway alone, as before
    assert got == [f] and a.frames == [] and net.flooded == [] and net.sent == []
    arp = eth(GW, mac(3), etype=0x0806)
    sw.from_local(c, arp)  # ARP to the gateway MAC still floods (route ports read it)
    assert a.frames == [arp] and b.frames == [arp] and net.flooded == [arp]


def test_a_mirror_port_sees_every_frame_whatever_was_learned() -> None:
    net = Net(n_ports=4)
    a, b, c, mirror = net.ports
    sw = net.switch
    sw.set_mirror(mirror, True)
    got: list[bytes] = []
    sw.gateway = lambda _port, frame: got.append(frame)
    sw.gateway_mac = GW
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(b, eth(BCAST, mac(2)))
    sw.from_peer(eth(BCAST, mac(7)), PEER_B)
    net.clear()
    frames = [
        (a, eth(mac(2), mac(1))),  # local to local
        (a, eth(mac(7), mac(1))),  # local to a peer
        (None, eth(mac(1), mac(7))),  # peer to local
        (None, eth(mac(8), mac(9))),  # peer, for a host behind another peer... unknown here
        (c, eth(GW, mac(3), etype=0x0800)),  # for the gateway alone
        (a, eth(BCAST, mac(1))),
    ]
    for src, f in frames:
        if src is None:
            sw.from_peer(f, PEER_B)
        else:
            sw.from_local(src, f)
    assert mirror.frames == [f for _s, f in frames]
    assert c.frames == [frames[3][1], frames[5][1]]  # the unknown and the broadcast only
    sw.from_gateway(eth(mac(1), GW), a)  # the gateway's answer to one port
    assert mirror.frames[-1] == eth(mac(1), GW)
    assert mirror.counters()["mirror"] is True
    sw.set_mirror(mirror, False)
    sw.from_local(a, eth(mac(2), mac(1)))
    assert len(mirror.frames) == len(frames) + 1


def test_offloaded_packets_follow_the_table() -> None:
    net = Net()
    a, b, c = net.ports
    b.offload = True
    sw = net.switch
    sw.from_local(b, eth(BCAST, mac(2)))
    sw.from_local(c, eth(BCAST, mac(3)))
    sw.from_peer(eth(BCAST, mac(7)), PEER_B)
    net.clear()
    to_b = NO_OFFLOAD + eth(mac(2), mac(1))
    sw.packet_from_local(a, to_b)
    assert b.packets == [to_b] and c.frames == [] and net.flooded == []
    assert sw.lookup(mac(1)) is a  # learned from the packet too
    to_c = NO_OFFLOAD + eth(mac(3), mac(7))
    sw.packet_from_peer(to_c, PEER_B)
    assert c.frames == [to_c[len(NO_OFFLOAD) :]] and b.packets == [to_b] and a.frames == []
    to_peer = NO_OFFLOAD + eth(mac(7), mac(1))
    sw.packet_from_local(a, to_peer)
    assert net.sent == [(PEER_B, to_peer)] and net.flooded == []
    assert b.packets == [to_b] and c.frames == [to_c[len(NO_OFFLOAD) :]]


# --------------------------------------------------------------------------- three nodes


class CountingWire(Wire):
    """The simulated LAN, counting datagrams per (source, destination) address."""

    def __init__(self) -> None:
        super().__init__()
        self.count: Counter[tuple[tuple[str, int], tuple[str, int]]] = Counter()

    def sender(self, src: tuple[str, int]):
        def send(packet: bytes, dst: tuple[str, int]) -> None:
            self.count[(src, dst)] += 1
            self.queue.append((packet, src, dst))

        return send


async def test_unicast_after_one_exchange_reaches_only_the_destination_node_and_port(
    world, monkeypatch
) -> None:
    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 2)
    net = world.chain.network_id
    (a_addr, a), (a2_addr, _a2), (b_addr, b) = clients[0], clients[1], clients[2]
    node_a, node_b, node_c = (("10.0.0.1", 4799), ("10.0.0.2", 4799), ("10.0.0.3", 4799))
    # One exchange: a broadcasts (an ARP request), b answers unicast.
    wire.sender(a_addr)(a.seal_frame(eth(BCAST, mac(1))), a.node)
    wire.run(1000.0)
    wire.sender(b_addr)(b.seal_frame(eth(mac(1), mac(2))), b.node)
    wire.run(1000.0)
    assert wire.count[(node_b, node_a)] == 1 and wire.count[(node_b, node_c)] == 0
    assert wire.frames[a_addr] == [eth(mac(1), mac(2))]
    wire.count.clear()
    wire.frames.clear()
    f = eth(mac(2), mac(1), b"unicast" * 8)
    for _ in range(5):
        wire.sender(a_addr)(a.seal_frame(f), a.node)
    wire.run(1000.5)
    assert wire.count[(node_a, node_b)] == 5  # one sealed datagram per frame, to B only
    assert wire.count[(node_a, node_c)] == 0
    assert wire.count[(node_b, b_addr)] == 5
    assert dict(wire.frames) == {b_addr: [f] * 5}  # nobody else got a copy
    assert a2_addr not in wire.frames
    status = nodes[0].networks[net].status()
    assert status["fdb"] == 2
    assert status["fdb_peers"] == {nodes[1].node_id: 1}
    assert sorted(p["learned"] for p in status["ports"]) == [0, 1]
    metrics = exposition(registry(nodes[0].status)).decode()
    assert re.search(
        rf'atenet_fdb_entries{{network="[^"]*",network_id="{net.hex()}"}} 2\.0', metrics
    )


async def test_a_dead_peer_gets_no_unicast_the_frame_floods_instead(world, monkeypatch) -> None:
    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 1)
    (a_addr, a), (b_addr, b) = clients[0], clients[1]
    wire.sender(b_addr)(b.seal_frame(eth(BCAST, mac(2))), b.node)
    wire.run(1000.0)
    runtime = nodes[0].networks[world.chain.network_id]
    runtime.alive_until[nodes[1].node_id] = 1001.0
    runtime.refresh_peers(1002.0)  # B's heartbeat ran out
    wire.count.clear()
    wire.sender(a_addr)(a.seal_frame(eth(mac(2), mac(1))), a.node)
    wire.run(1002.0)
    assert wire.count[(("10.0.0.1", 4799), ("10.0.0.2", 4799))] == 0
    assert wire.count[(("10.0.0.1", 4799), ("10.0.0.3", 4799))] == 1  # flooded to who is live


async def test_a_monitor_port_still_sees_unicast_between_two_other_ports(world) -> None:
    wire, nodes, clients = await build(world, 1, 3)
    (a_addr, a), (b_addr, b), (m_addr, m) = clients
    # The third client turns into a monitor: its pings say "mirror": 1.
    m.mirror = True
    wire.sender(m_addr)(m.control("ping", 1000.0), m.node)
    wire.run(1000.0)
    wire.sender(a_addr)(a.seal_frame(eth(BCAST, mac(1))), a.node)
    wire.sender(b_addr)(b.seal_frame(eth(mac(1), mac(2))), b.node)
    wire.run(1000.0)
    wire.frames.clear()
    f = eth(mac(2), mac(1))
    wire.sender(a_addr)(a.seal_frame(f), a.node)
    wire.run(1000.0)
    assert wire.frames[b_addr] == [f] and wire.frames[m_addr] == [f]
    ports = nodes[0].networks[world.chain.network_id].status()["ports"]
    assert [p["mirror"] for p in ports] == [False, False, True]


def test_the_monitor_asks_for_a_mirror_port_in_its_hello() -> None:
    from atenet.client.monitor import Monitor
    from atenet.overlay.seal import Opener, PacketKey
    from atenet.overlay.token import AccessToken

    token = AccessToken(b"\x01" * 16, 5, b"\x02" * 32, ("127.0.0.1:4799",))
    monitor = Monitor(token, lambda _f, _t: None)
    hello = monitor.core.control("hello", 1000.0)
    opener = Opener(PacketKey(token.secret, 5))
    from atenet.overlay.seal import parse_header

    _net, _ptype, _key, sender, counter = parse_header(hello)
    assert b'"mirror": 1' in opener.open(hello, sender, counter)
    plain = ClientCore(token, 1).control("hello", 1000.0)
    _net, _ptype, _key, sender, counter = parse_header(plain)
    assert b"mirror" not in Opener(PacketKey(token.secret, 5)).open(plain, sender, counter)


async def test_a_monitor_on_another_node_sees_unicast_between_hosts_elsewhere(
    world, monkeypatch
) -> None:
    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 2)
    net = world.chain.network_id
    (a_addr, a), (a2_addr, a2), (b_addr, b) = clients[0], clients[1], clients[2]
    (m_addr, m), (c2_addr, _c2) = clients[4], clients[5]
    m.mirror = True  # the monitor, on node C
    wire.sender(m_addr)(m.control("ping", 1000.0), m.node)
    wire.run(1000.0)
    assert nodes[2].networks[net].switch.has_mirror  # what node C's heartbeat says
    for node in nodes[:2]:  # what nodes A and B read in C's heartbeat
        runtime = node.networks[net]
        runtime.mirror_nodes.add(nodes[2].node_id)
        runtime.refresh_peers(1000.0)
    for addr, client, src in ((a_addr, a, 1), (a2_addr, a2, 3), (b_addr, b, 2)):
        wire.sender(addr)(client.seal_frame(eth(BCAST, mac(src))), client.node)
    wire.run(1000.0)
    wire.frames.clear()
    wire.count.clear()
    to_b, to_a2 = eth(mac(2), mac(1), b"to b" * 12), eth(mac(3), mac(1), b"to a2" * 10)
    wire.sender(a_addr)(a.seal_frame(to_b), a.node)  # A's host to B's host (another node)
    wire.sender(a_addr)(a.seal_frame(to_a2), a.node)  # and to a host on its own node
    wire.run(1000.0)
    assert wire.frames[b_addr] == [to_b] and wire.frames[a2_addr] == [to_a2]
    assert wire.frames[m_addr] == [to_b, to_a2]  # the monitor saw both
    assert c2_addr not in wire.frames  # node C's other host got neither
    node_a, node_b, node_c = (("10.0.0.1", 4799), ("10.0.0.2", 4799), ("10.0.0.3", 4799))
    assert (wire.count[(node_a, node_b)], wire.count[(node_a, node_c)]) == (1, 2)
    assert wire.count[(node_b, node_c)] == 0  # B got it from a peer: never passed on


def test_storm_control_bounds_what_one_port_floods_and_spares_the_others() -> None:
    """A port spraying broadcasts from random MACs floods at most its budget (burst, then the
    rate); the excess is dropped and counted, other ports' unicast is untouched."""
    net = Net()
    a, b, c = net.ports
    sw = net.switch
    sw.now = 100.0
    sw.from_local(b, eth(BCAST, mac(2)))  # b and c say who they are
    sw.from_local(c, eth(BCAST, mac(3)))
    net.clear()
    for i in range(3 * int(sw.storm_burst)):
        sw.from_local(a, eth(BCAST, bytes([2, 9, 0, 0]) + i.to_bytes(2, "big")))
    assert len(b.frames) == sw.storm_burst == 2 * sw.storm_rate
    assert a.counters()["storm_drops"] == 2 * sw.storm_burst
    assert sw.fdb_status()["storm_drops"] == 2 * sw.storm_burst
    net.clear()
    f = eth(mac(3), mac(2))  # unicast between the others still goes, unlimited
    for _ in range(3000):
        sw.from_local(b, f)
    assert len(c.frames) == 3000
    net.clear()
    sw.now = 101.0  # one second later: one second's worth of floods again
    for _ in range(2 * int(sw.storm_rate)):
        sw.from_local(a, eth(BCAST, mac(1)))
    assert len(b.frames) == sw.storm_rate
    sw.set_storm_rate(0)  # off
    net.clear()
    for _ in range(5000):
        sw.from_local(a, eth(BCAST, mac(1)))
    assert len(b.frames) == 5000
