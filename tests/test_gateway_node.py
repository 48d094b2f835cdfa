"""The gateway and DHCP server wired into the node core (node/core.py), with a real chain.

Frames go in through the switch as a local port or a peer would send them; what comes out is
what the local ports receive. Lease events are appended to a real SQLite chain with the node's
certified key, exactly as the daemon does, and the state is handed back with apply_state.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

from scapy.all import ARP, BOOTP, DHCP, ICMP, IP, Ether, raw  # type: ignore[attr-defined]

from atenet import addressing
from atenet.chain.event import Kind
from atenet.node.core import NodeCore
from atenet.node.metrics import exposition, registry
from atenet.switch.core import Port
from tests.support.chains import World
from tests.test_dhcp import client_frame

NOW = time.time()
CIDR = "10.9.8.0/24"  # the world's network
GW = "10.9.8.1"


class Capture(Port):
    """A local port that keeps what it is given."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "test", NOW)
        self.got: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.got.append(frame)

    def take(self) -> list[bytes]:
        got, self.got = self.got, []
        return got


def node(world: World, name: str = "node-a") -> tuple[NodeCore, object, list[bytes]]:
    sent: list[bytes] = []
    core = NodeCore(
        name, lambda packet, addr: sent.append(packet), time.time_ns(), clock=lambda: NOW
    )
    runtime = core.add_network(world.chain.network_id)
    runtime.apply_state(world.chain.state, NOW)
    return core, runtime, sent


async def commit(world: World, runtime, signer) -> None:  # type: ignore[no-untyped-def]
    """What the daemon does on a "lease" event: append each queued binding, hand back state."""
    while runtime.binds:
        await world.chain.append(Kind.LEASE, runtime.binds.popleft(), signer)
    runtime.apply_state(world.chain.state, NOW)


async def test_a_local_client_gets_its_hashed_address_by_dhcp_and_renews_without_an_event(
    world: World,
) -> None:
    core, runtime, _sent = node(world)
    a, b = Capture("a"), Capture("b")
    runtime.add_port("a", a)
    runtime.add_port("b", b)
    mac = bytes.fromhex("02aa00000001")
    runtime.switch.from_local(a, client_frame(mac, "discover", hostname="laptop"))
    (offer,) = a.take()
    offer_pkt = Ether(offer)
    expected = str(addressing.ipv4_for(world.chain.network_id, mac, CIDR).ip)
    assert offer_pkt[BOOTP].yiaddr == expected
    assert offer_pkt.src == runtime.gateway.mac.hex(":") and offer_pkt[IP].src == GW
    assert len(b.take()) == 1  # b saw the broadcast DISCOVER flood, not the offer
    request = client_frame(mac, "request", requested=expected, server_id=GW, hostname="laptop")
    runtime.switch.from_local(a, request)
    assert a.take() == [] and len(runtime.binds) == 1  # commit first, then ACK
    assert ("lease", world.chain.network_id) in core.take_events()
    seq_before = world.chain.state.seq
    await commit(world, runtime, world.node_a)
    (ack,) = a.take()
    ack_pkt = Ether(ack)
    opts = dict(o for o in ack_pkt[DHCP].options if isinstance(o, tuple) and len(o) == 2)
    assert opts["message-type"] == 5 and ack_pkt[BOOTP].yiaddr == expected
    assert opts["name_server"] == "8.8.8.8"
    assert "router" not in opts  # internet off (the default): no default route via the gateway
    assert world.chain.state.seq == seq_before + 1
    assert world.chain.state.leases[expected]["mac"] == mac.hex(":")
    assert world.chain.state.leases[expected]["host"] == "laptop"
    # A renewal (unicast from the bound address) is answered from the table: no event.
    b.take()
    renew = client_frame(mac, "request", ciaddr=expected, src=expected, dst=GW)
    runtime.switch.from_local(a, runtime.gateway.mac + renew[6:])  # unicast to the gateway
    (ack2,) = a.take()
    assert Ether(ack2)[BOOTP].yiaddr == expected and not runtime.binds
    assert b.take() == []  # unicast to the gateway MAC reaches the gateway alone
    assert runtime.status()["dhcp"]["acks"] == 2
    scrape = exposition(registry(lambda: {"networks": [runtime.status()]})).decode()
    assert 'atenet_dhcp_total{network="office",network_id="' in scrape
    assert 'what="acks"} 2.0' in scrape and 'what="arp"' not in scrape


async def test_the_gateway_never_answers_frames_from_peers_and_answers_arp_and_ping_locally(
    world: World,
) -> None:
    _core, runtime, sent = node(world)
    a = Capture("a")
    runtime.add_port("a", a)
    mac = bytes.fromhex("02aa00000002")
    runtime.switch.from_peer(client_frame(mac, "discover"))
    arp = raw(
        Ether(src=mac.hex(":"), dst="ff:ff:ff:ff:ff:ff")
        / ARP(hwsrc=mac.hex(":"), psrc="10.9.8.20", pdst=GW)
    )
    runtime.switch.from_peer(arp)
    assert len(a.take()) == 2  # the peer frames flood to the local port; no gateway answer
    assert runtime.dhcp.counters["discovers"] == 0
    runtime.switch.from_local(a, arp)
    (reply,) = a.take()
    assert Ether(reply)[ARP].op == 2 and Ether(reply)[ARP].psrc == GW
    ping = raw(
        Ether(src=mac.hex(":"), dst=runtime.gateway.mac.hex(":"))
        / IP(src="10.9.8.20", dst=GW) / ICMP(id=7, seq=1) / b"hello"
    )  # fmt: skip
    before = len(sent)
    runtime.switch.from_local(a, ping)
    (pong,) = a.take()
    assert Ether(pong)[ICMP].type == 0 and Ether(pong)[ICMP].load == b"hello"
    assert len(sent) == before  # the ping to the gateway MAC did not go to any peer


async def test_bindings_survive_a_restart_and_two_nodes_agree(world: World) -> None:
    _core, runtime, _ = node(world, "node-a")
    a = Capture("a")
    runtime.add_port("a", a)
    mac = bytes.fromhex("02aa00000003")
    runtime.switch.from_local(a, client_frame(mac, "discover"))
    ip = Ether(a.take()[0])[BOOTP].yiaddr
    runtime.switch.from_local(a, client_frame(mac, "request", requested=ip, server_id=GW))
    await commit(world, runtime, world.node_a)
    assert Ether(a.take()[0])[DHCP].options[0] == ("message-type", 5)
    # A restarted node (fresh core, chain replayed) and the other node know the binding.
    fresh = world.reader()
    await fresh.load()
    for name in ("node-a", "node-b"):
        core = NodeCore(name, lambda p, x: None, time.time_ns(), clock=lambda: NOW)
        other = core.add_network(world.chain.network_id)
        other.apply_state(fresh.state, NOW)
        port = Capture("x")
        other.add_port("x", port)
        other.switch.from_local(port, client_frame(mac, "request", requested=ip))  # INIT-REBOOT
        (ack,) = port.take()
        assert Ether(ack)[DHCP].options[0] == ("message-type", 5)
        assert Ether(ack)[BOOTP].yiaddr == ip and not other.binds
    assert str(IPv4Address(ip)) in fresh.state.leases


async def test_a_ports_address_in_status_is_its_dhcp_binding_when_it_has_one(world: World) -> None:
    _core, runtime, _ = node(world)
    mac = bytes.fromhex("02aa00000004")
    lease = {"mac": mac.hex(":"), "ip": "10.9.8.200", "host": "", "node": "n", "expires": 2e9}
    await world.chain.append(Kind.LEASE, lease, world.node_a)  # e.g. after a collision
    runtime.apply_state(world.chain.state, NOW)
    a = Capture("a")
    runtime.add_port("a", a)
    runtime.switch.from_local(a, client_frame(mac, "discover"))
    assert a.counters()["ipv4"] == "10.9.8.200"
    assert runtime.addresses(bytes.fromhex("02aa00000005"))[0] != "10.9.8.200"  # hashed
