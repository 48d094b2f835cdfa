"""Hosts by name, frame by frame (no I/O): a port learns its source MAC, carries its key's label
and the host name its client sent, derives its IPs by the hashed scheme; heartbeats list ports
within a bound; ``frames_to_peers`` counts only floods that reached a peer."""

from __future__ import annotations

import json
import os

import pytest

from atenet.addressing import ipv4_for, ipv6_for, stable_mac
from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.cli.tok_hosts import collect_hosts
from atenet.client.core import ClientCore
from atenet.node.core import NodeCore
from atenet.node.hosts import HEARTBEAT_PORTS, heartbeat_ports
from atenet.node.schema import CONTROL, SchemaError, validate
from atenet.offload import NO_OFFLOAD
from atenet.overlay.seal import TYPE_CONTROL, Opener, PacketKey, Sealer, parse_header
from atenet.overlay.token import AccessToken
from atenet.switch.core import Port, Switch
from atenet.wire.ethernet import ethernet_frame
from tests.test_node_core import Wire, handshake

CIDR, CIDR6 = "10.9.8.0/24", "fd00:1:2:3::/64"  # make_world's network
NOW_NS = 1000 * 10**9
"""The simulated clock (1000.0 s) in ns: counters of a new sender must not be older than it
(docs/protocol.md, "Replay across restarts and nodes")."""


class Recorder(Port):
    def __init__(self, name: str) -> None:
        super().__init__(name, "test")
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)


def eth(src: bytes, payload: bytes = b"x" * 46) -> bytes:
    return ethernet_frame(b"\xff" * 6, src, 0x88B5, payload)


MAC_1 = bytes.fromhex("02aabbccdd01")
MAC_2 = bytes.fromhex("02aabbccdd02")


# --------------------------------------------------------------------------- the switch


def test_port_learns_the_source_mac_of_its_latest_frame() -> None:
    switch = Switch(addresses=lambda mac: (f"v4-{mac.hex()}", f"v6-{mac.hex()}"))
    a, b = Recorder("a"), Recorder("b")
    switch.add(1, a)
    switch.add(2, b)
    assert (a.counters()["mac"], a.counters()["ipv4"], a.counters()["ipv6"]) == ("", "", "")
    switch.from_local(a, eth(MAC_1))
    assert a.counters()["mac"] == "02:aa:bb:cc:dd:01"
    assert a.counters()["ipv4"] == f"v4-{MAC_1.hex()}"
    assert b.counters()["mac"] == ""  # b only received: it has sent nothing
    switch.from_local(a, eth(MAC_1))
    switch.from_local(a, eth(MAC_2))  # the host behind the port changed its MAC
    assert a.counters()["mac"] == "02:aa:bb:cc:dd:02"
    switch.from_local(a, eth(b"\x03\x00\x00\x00\x00\x01"))  # a multicast source is bogus
    assert a.counters()["mac"] == "02:aa:bb:cc:dd:02"
    assert len(b.frames) == 4


def test_offloaded_packet_teaches_the_mac_too() -> None:
    switch = Switch()
    a = Recorder("a")
    switch.add(1, a)
    switch.packet_from_local(a, NO_OFFLOAD + eth(MAC_2))
    assert a.counters()["mac"] == "02:aa:bb:cc:dd:02"


def test_counters_have_the_name_keys_as_strings() -> None:
    port = Recorder("p")
    counters = port.counters()
    for key in ("label", "host", "mac", "ipv4", "ipv6"):
        assert counters[key] == "", key


def test_frames_to_peers_counts_only_floods_that_reached_a_peer() -> None:
    peers: list[str] = []
    sent: list[bytes] = []

    def to_peers(frame: bytes) -> int:
        sent.extend(frame for _ in peers)
        return len(peers)

    switch = Switch(to_peers)
    a, b = Recorder("a"), Recorder("b")
    switch.add(1, a)
    switch.add(2, b)
    switch.from_local(a, eth(MAC_1))
    assert switch.frames_to_peers == 0 and sent == []  # no peer: nothing went out
    peers[:] = ["n2", "n3"]
    switch.from_local(a, eth(MAC_1))
    switch.packet_from_local(a, NO_OFFLOAD + eth(MAC_1))
    assert switch.frames_to_peers == 2  # once per flood, not once per peer
    assert len(sent) == 4


# --------------------------------------------------------------------------- the node core


async def key(w, key_id: int, label: str) -> AccessToken:
    secret = os.urandom(32)
    payload = {"key_id": key_id, "label": label, "secret": b64(secret), "expires": None}
    await w.chain.append(Kind.KEY_ADD, payload, w.owner_signer)
    return AccessToken(w.chain.network_id, key_id, secret, ("10.0.0.1:4799",))


async def one_node(world, now: float = 1000.0) -> tuple[Wire, NodeCore]:
    wire = Wire()
    node_id = short_id(world.node_a.key.public_key().public_bytes_raw())
    await world.chain.append(
        Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": ["10.0.0.1:4799"]}, world.node_a
    )
    core = NodeCore(node_id, wire.sender(("10.0.0.1", 4799)), 1)
    wire.nodes[("10.0.0.1", 4799)] = core
    core.add_network(world.chain.network_id)
    return wire, core


def attach(wire: Wire, token: AccessToken, addr: tuple[str, int], host: str) -> ClientCore:
    client = ClientCore(token, 1, sender_id=token.key_id, host=host)
    client.endpoints = [("10.0.0.1", 4799)]
    wire.clients[addr] = client
    wire.sender(addr)(client.control("hello", 1000.0), client.node)
    return client


async def test_ports_are_named_by_key_label_host_name_and_learned_mac(world) -> None:
    t1 = await key(world, 1, "laptop")
    t2 = await key(world, 2, "")
    wire, core = await one_node(world)
    runtime = core.networks[world.chain.network_id]
    await world.chain.catch_up()
    runtime.apply_state(world.chain.state, 1000.0)
    alpha = attach(wire, t1, ("192.168.0.10", 5000), "alpha")
    beta = attach(wire, t2, ("192.168.0.11", 5000), "")
    wire.run(1000.0)
    handshake(wire, [(("192.168.0.10", 5000), alpha), (("192.168.0.11", 5000), beta)], 1000.0)
    assert alpha.config is not None and beta.config is not None
    mac = stable_mac(world.chain.network_id, b"alpha's machine id")
    wire.sender(("192.168.0.10", 5000))(alpha.seal_frame(eth(mac)), alpha.node)
    wire.run(1001.0)
    ports = {p["host"] or p["label"] or p["name"]: p for p in runtime.status()["ports"]}
    a = ports["alpha"]
    assert (a["label"], a["host"], a["mac"]) == ("laptop", "alpha", mac.hex(":"))
    assert a["ipv4"] == str(ipv4_for(world.chain.network_id, mac, CIDR).ip)
    assert a["ipv6"] == str(ipv6_for(world.chain.network_id, mac, CIDR6).ip)
    b = ports["udp:192.168.0.11:5000/k2"]
    assert (b["label"], b["host"], b["mac"], b["ipv4"]) == ("", "", "", "")


@pytest.mark.parametrize("bad", ["a\nb", "x" * 65, 42, ["alpha"], "\x1b[31mred"])
async def test_a_hello_with_a_bad_host_name_is_dropped_and_not_answered(world, bad) -> None:
    token = await key(world, 1, "k")
    wire, core = await one_node(world)
    runtime = core.networks[world.chain.network_id]
    await world.chain.catch_up()
    runtime.apply_state(world.chain.state, 1000.0)
    packet_key = PacketKey(token.secret, 1)
    # Bound to the node's instance, so the host name is the only thing wrong with it.
    hello = json.dumps({"op": "hello", "host": bad, "instance": core.instance}).encode()
    packet = Sealer(token.network_id, packet_key, 77, NOW_NS).seal(hello, TYPE_CONTROL)
    core.datagram(packet, ("192.168.0.10", 5000), 1000.0)
    answers = [p for p, _src, dst in wire.queue if dst == ("192.168.0.10", 5000)]
    assert answers == []
    assert runtime.drops["bad_control"] == 1
    assert all(p["host"] == "" for p in runtime.status()["ports"])
    # The same hello with a good name is answered (a welcome the client can open).
    good = json.dumps({"op": "hello", "host": "ok name", "instance": core.instance}).encode()
    core.datagram(
        Sealer(token.network_id, packet_key, 77, NOW_NS + 1).seal(good, TYPE_CONTROL),
        ("192.168.0.10", 5000),
        1000.0,
    )
    (reply,) = [p for p, _src, dst in wire.queue if dst == ("192.168.0.10", 5000)]
    _net, _ptype, _kid, sender, counter = parse_header(reply)
    assert json.loads(Opener(packet_key).open(reply, sender, counter))["op"] == "welcome"
    assert [p["host"] for p in runtime.status()["ports"]] == ["ok name"]


def host_name(value: object) -> str | None:
    """The node's verdict on a hello's host field: the name, or None when refused."""
    message = {"op": "hello"} if value is None else {"op": "hello", "host": value}
    try:
        return validate(message, CONTROL).get("host", "")
    except SchemaError:
        return None


def test_host_name_rules() -> None:
    assert host_name(None) == ""
    assert host_name("web-01.example") == "web-01.example"
    assert host_name("é" * 64) == "é" * 64
    assert host_name("é" * 65) is None
    assert host_name("tab\there") is None
    assert host_name(7) is None


def test_client_sends_a_printable_bounded_host_name() -> None:
    token = AccessToken(bytes(16), 1, bytes(32), ("10.0.0.1:4799",))
    client = ClientCore(token, 1, sender_id=1, host="bad\nname" + "y" * 80)
    assert client.host == "badname" + "y" * 57
    assert host_name(client.host) == client.host


async def test_single_node_without_peers_sends_nothing_to_peers(world) -> None:
    t1, t2 = await key(world, 1, "a"), await key(world, 2, "b")
    wire, core = await one_node(world)
    runtime = core.networks[world.chain.network_id]
    await world.chain.catch_up()
    runtime.apply_state(world.chain.state, 1000.0)
    c1 = attach(wire, t1, ("192.168.0.10", 5000), "a")
    c2 = attach(wire, t2, ("192.168.0.11", 5000), "b")
    wire.run(1000.0)
    handshake(wire, [(("192.168.0.10", 5000), c1), (("192.168.0.11", 5000), c2)], 1000.0)
    for _ in range(3):
        wire.sender(("192.168.0.10", 5000))(c1.seal_frame(eth(MAC_1)), c1.node)
    wire.run(1000.0)
    assert wire.frames[("192.168.0.11", 5000)] == [eth(MAC_1)] * 3
    assert runtime.status()["frames_to_peers"] == 0


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_lists_at_most_256_ports_most_recent_first() -> None:
    switch = Switch()
    for i in range(HEARTBEAT_PORTS + 44):
        port = Recorder(f"p{i}")
        port.last_seen = float(i)
        port.host = f"h{i}"
        switch.add(i, port)
    beat = heartbeat_ports(switch.ports.values())
    assert beat["truncated"] == 44
    assert len(beat["hosts"]) == HEARTBEAT_PORTS
    assert beat["hosts"][0]["host"] == f"h{HEARTBEAT_PORTS + 43}"
    assert beat["hosts"][-1]["host"] == "h44"
    assert set(beat["hosts"][0]) == {
        "name", "label", "host", "mac", "ipv4", "ipv6", "kind", "last_seen",
    }  # fmt: skip
    assert len(json.dumps(beat)) < 64 * 1024
    small = heartbeat_ports(list(switch.ports.values())[:3])
    assert small["truncated"] == 0 and len(small["hosts"]) == 3


def test_tok_hosts_lists_only_member_nodes_and_marks_silent_ones() -> None:
    entry = {"name": "udp:x", "label": "l", "host": "h", "mac": "02:00:00:00:00:01",
             "ipv4": "10.0.0.5", "ipv6": "fd00::5", "kind": "udp", "last_seen": 90.0}  # fmt: skip
    diagnostics = {
        "n1": {"node": "n1", "interval": 1.0, "time_ms": 99_000, "hosts": [entry], "truncated": 2},
        "n2": {"node": "n2", "interval": 1.0, "time_ms": 10_000, "hosts": [entry]},
        "gone": {"node": "gone", "interval": 1.0, "time_ms": 99_000, "hosts": [entry]},
        "old": {"node": "old", "interval": 1.0, "time_ms": 99_000, "ports": 3},  # no list
    }
    hosts, truncated = collect_hosts(diagnostics, {"n1", "n2", "old"}, 100.0)
    assert [(h["node"], h["stale"]) for h in hosts] == [("n1", False), ("n2", True)]
    assert hosts[0]["name"] == "h" and hosts[0]["ipv4"] == "10.0.0.5"
    assert truncated == 2
