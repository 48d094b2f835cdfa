"""The learning switch's per-network settings, MAC theft, and the gateway reading the snooped
IP table (docs/learning.md).

Sans-I/O first (the switch alone with injected time, the chain rules, the node cores routing
between two networks), then real `tok` against a real `atenet run` for the settings and the
status it prints.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from scapy.all import (  # type: ignore[attr-defined]
    ARP,
    ICMP,
    IP,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    raw,
)

from atenet.chain.event import Kind
from atenet.chain.rules import BodyError, check_body
from atenet.overlay.token import AccessToken
from atenet.switch.core import FDB_PEER_MAX, Switch
from atenet.switch.proxy import NeighbourProxy
from atenet.switch.snoop import IpTable
from tests.support.chains import World
from tests.support.loopback_node import VENV_BIN, LoopbackNode
from tests.test_learning import BCAST, PEER_B, PEER_C, Net, eth, mac
from tests.test_routes_node import Host, two_routed_networks
from tests.test_snoop import arp
from tests.test_switch_offload import Recorder
from tests.test_websocket import hello


def keyed(net: Net, *key_ids: int | None) -> list[Recorder]:
    """Give the net's ports access keys (as every client port has: UDP and WebSocket)."""
    for port, key_id in zip(net.ports, key_ids, strict=False):
        port.key_id = key_id
    return net.ports


# --------------------------------------------------------------------------- settings, live


def test_new_bounds_and_age_apply_live_without_losing_the_table() -> None:
    net = Net()
    a, b, _c = net.ports
    sw = net.switch
    sw.age(1000.0)
    for n in range(1, 6):
        sw.from_local(a, eth(BCAST, mac(n)))
    sw.from_peer(eth(BCAST, mac(100)), PEER_B)
    sw.from_peer(eth(BCAST, mac(101)), PEER_B)
    sw.configure(age=60, max_entries=100, port_max=2, peer_max=1)
    assert len(sw.fdb) == 7 and len(a.learned) == 5  # lowering a bound evicts nothing
    sw.from_local(a, eth(BCAST, mac(6)))  # ... it stops learning
    sw.from_peer(eth(BCAST, mac(102)), PEER_B)
    assert sw.lookup(mac(6)) is None and sw.lookup(mac(102)) is None
    status = sw.fdb_status()
    assert (status["port_full"], status["peer_full"], status["age"]) == (1, 1, 60)
    assert (status["port_max"], status["peer_max"], status["max"]) == (2, 1, 100)
    sw.from_local(b, eth(BCAST, mac(50)))  # other ports still learn
    assert sw.lookup(mac(50)) is b
    # The new age applies at the next sweep: within a tenth of it, not the old 30 s.
    assert sw.age(1000.0 + 30) == 0
    assert sw.age(1000.0 + 61 + 6) == 8
    assert sw.fdb == {}


def test_one_peer_node_cannot_fill_the_network_table() -> None:
    net = Net(fdb_max=10, fdb_peer_max=4)
    a = net.ports[0]
    sw = net.switch
    for n in range(1, 21):  # node B relays a spray of source MACs
        sw.from_peer(eth(BCAST, mac(n)), PEER_B)
    assert sw.peer_learned == {PEER_B: 4} and sw.fdb_peer_full == 16
    sw.from_peer(eth(BCAST, mac(200)), PEER_C)
    sw.from_local(a, eth(BCAST, mac(300)))
    assert sw.lookup(mac(200)) == PEER_C and sw.lookup(mac(300)) is a
    sw.from_peer(eth(BCAST, mac(200)), PEER_B)  # a move to a full peer: stays where it was
    assert sw.lookup(mac(200)) == PEER_C
    assert Switch().fdb_peer_max == FDB_PEER_MAX == 4096


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fdb_age": 5}, "fdb_age 5 is not an integer from 10 to 86,400 seconds"),
        ({"fdb_age": 300.5}, "fdb_age 300.5 is not an integer"),
        ({"fdb_macs": 0}, "fdb_macs 0 is not an integer from 1 to 1,048,576"),
        ({"fdb_port_macs": True}, "fdb_port_macs True is not an integer"),
        ({"fdb_peer_macs": "9"}, "fdb_peer_macs 9 is not an integer"),
        ({"fdb_macs": 2**40}, "fdb_macs 1099511627776 is not an integer"),
    ],
)
def test_the_chain_refuses_insane_table_settings(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BodyError, match=message):
        check_body(Kind.SETTINGS, body)
    check_body(Kind.SETTINGS, {"fdb_age": 10, "fdb_macs": 1, "fdb_port_macs": 65536})


# --------------------------------------------------------------------------- MAC theft


def test_a_port_with_another_key_cannot_steal_a_ports_mac() -> None:
    net = Net()
    a, b, c = keyed(net, 1, 2, 1)
    sw = net.switch
    sw.from_local(a, eth(BCAST, mac(1)))
    net.clear()
    stolen = eth(BCAST, mac(1))
    sw.from_local(b, stolen)  # b (key 2) sends from a's MAC: dropped, not switched
    assert sw.lookup(mac(1)) is a and sw.fdb_theft == 1
    assert a.frames == [] and c.frames == [] and net.flooded == []
    assert b.mac != mac(1)  # not shown as b's MAC either
    sw.from_local(b, eth(mac(1), mac(2)))  # b's own MAC works, and reaches a
    assert sw.lookup(mac(2)) is b and len(a.frames) == 1
    sw.from_local(c, eth(BCAST, mac(1)))  # same key (a client that reconnected): a move
    assert sw.lookup(mac(1)) is c and sw.fdb_moves == 1
    net.clear()
    sw.from_local(b, eth(mac(1), mac(2)))
    assert c.frames and not a.frames  # the unicast follows the move
    assert sw.fdb_status()["mac_theft"] == 1


def test_a_snooped_arp_from_a_thief_does_not_poison_the_ip_table() -> None:
    table = IpTable()
    sw = Switch()
    a, b = Recorder("a"), Recorder("b")
    a.key_id, b.key_id = 1, 2
    sw.add("a", a)
    sw.add("b", b)
    sw.snoop = lambda frame, where: table.observe(frame, where.name, 0.0)  # type: ignore[union-attr]
    sw.from_local(a, arp("02:00:00:00:00:01", "10.0.0.5"))
    sw.from_local(b, arp("02:00:00:00:00:01", "10.0.0.6"))
    assert [e["ip"] for e in table.view(0.0)] == ["10.0.0.5"] and sw.fdb_theft == 1


def test_a_local_ports_mac_is_not_moved_behind_a_peer() -> None:
    net = Net()
    a, b, _c = keyed(net, 1, 2, 3)
    sw = net.switch
    sw.from_local(a, eth(BCAST, mac(1)))
    net.clear()
    spoofed = eth(mac(2), mac(1))
    sw.from_peer(spoofed, PEER_B)  # a host behind node B claims a's MAC
    assert sw.lookup(mac(1)) is a and sw.fdb_theft == 1
    assert b.frames == [spoofed]  # forwarded (unknown destination), not learned
    net.clear()
    sw.from_local(b, eth(mac(1), mac(2)))
    assert a.frames and net.sent == [] and net.flooded == []  # replies still reach a
    # Once a's entry ages out (a left), the MAC is free: node B may have it.
    sw.age(sw.now + 400)
    sw.from_peer(eth(BCAST, mac(1)), PEER_B)
    assert sw.lookup(mac(1)) == PEER_B


def test_ports_without_a_key_move_as_before() -> None:
    """Ports the node opens itself (no access key: nothing to check) keep plain moves."""
    net = Net()
    a, b, _c = net.ports
    sw = net.switch
    sw.from_local(a, eth(BCAST, mac(1)))
    sw.from_local(b, eth(BCAST, mac(1)))
    sw.from_peer(eth(BCAST, mac(1)), PEER_B)
    assert sw.lookup(mac(1)) == PEER_B and sw.fdb_theft == 0


# --------------------------------------------------------------------------- the gateway


class Recording(Host):
    """A routed network's host that also records every frame it is handed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.frames: list[Ether] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(Ether(frame))
        super().deliver(frame)


async def test_a_routed_packet_to_a_snooped_host_leaves_without_an_arp_broadcast(
    world: World,
) -> None:
    wire, (node1, node2), (net_a, net_b), (a1, b1), _key, now = await two_routed_networks(world)
    b_on_2 = node2.networks[net_b.network_id]
    b_on_1 = node1.networks[net_b.network_id]
    b2 = Recording("b2", "02:bb:00:00:00:02", "10.9.9.21", b_on_2, now)
    b_on_2.add_port("b2", b2)
    # B2 announces itself (a gratuitous ARP, as a kernel does when its address comes up):
    # node 1, which routes into B, snoops it from the flood.
    b2.send(Ether(src=b2.mac_text, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=b2.mac_text, psrc=b2.ip, pdst=b2.ip))  # fmt: skip
    wire.run(now)
    assert b_on_1.ip_table.entries  # node 1 heard it
    b1.got.clear()
    b2.frames.clear()
    gw_a = node1.networks[net_a.network_id].gateway.mac.hex(":")
    a1.send(Ether(dst=gw_a, src=a1.mac_text) / IP(src=a1.ip, dst=b2.ip, ttl=64)
            / ICMP(id=9, seq=1) / b"snooped")  # fmt: skip
    wire.run(now)
    assert [p[ICMP].load for p in b2.frames if ICMP in p] == [b"snooped"]
    assert not [p for p in b2.frames if ARP in p]  # no broadcast ARP came first
    assert not [p for p in b1.got if ARP in p]
    assert b_on_1.neighbours is not None
    counters = b_on_1.neighbours.counters
    assert (counters["snooped"], counters["requests"]) == (1, 0)
    replies = [p for p in a1.got if ICMP in p and p[ICMP].type == 0]
    assert len(replies) == 1


async def test_a_stale_snooped_claim_is_not_trusted(world: World) -> None:
    wire, (node1, node2), (net_a, net_b), (a1, _b1), _key, now = await two_routed_networks(world)
    b_on_2 = node2.networks[net_b.network_id]
    b_on_1 = node1.networks[net_b.network_id]
    b2 = Recording("b2", "02:bb:00:00:00:02", "10.9.9.21", b_on_2, now)
    b_on_2.add_port("b2", b2)
    b_on_1.clock = lambda: time.time() - 120  # the claim is heard two minutes "ago"
    b2.send(Ether(src=b2.mac_text, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=b2.mac_text, psrc=b2.ip, pdst=b2.ip))  # fmt: skip
    wire.run(now)
    b_on_1.clock = time.time
    b2.frames.clear()
    gw_a = node1.networks[net_a.network_id].gateway.mac.hex(":")
    a1.send(Ether(dst=gw_a, src=a1.mac_text) / IP(src=a1.ip, dst=b2.ip) / ICMP(id=9, seq=1))
    wire.run(now)
    assert [p for p in b2.frames if ARP in p and p[ARP].op == 1]  # asked first
    assert b_on_1.neighbours is not None and b_on_1.neighbours.counters["snooped"] == 0


# --------------------------------------------------------------------------- real tok, real node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path / "home", "lan") as n:
        yield n


def tok(node: LoopbackNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VENV_BIN / "tok", *args], env=node.env, capture_output=True, text=True, timeout=60
    )


async def test_tok_network_set_fdb_reaches_the_node_live_and_status_shows_it(
    node: LoopbackNode,
) -> None:
    token = AccessToken.decode(node.token("desk"))
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{node.ws}/ws") as ws:
        await ws.send_str(json.dumps(hello(token)))
        assert json.loads((await ws.receive(5)).data)["op"] == "welcome"
        await ws.send_bytes(eth(BCAST, mac(1)))
        await asyncio.sleep(0.3)

        out = await asyncio.to_thread(
            tok, node, "network", "set", "lan", "--fdb-age", "120", "--fdb-port-macs", "1",
            "--fdb-macs", "1000", "--fdb-peer-macs", "500", "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["changed"] == {
            "fdb_age": 120, "fdb_port_macs": 1, "fdb_macs": 1000, "fdb_peer_macs": 500,
        }  # fmt: skip
        shown = await asyncio.to_thread(tok, node, "network", "show", "lan")
        assert "fdb      age 120 s, MACs 1,000, per port 1, per peer node 500" in shown.stdout

        async def counters() -> dict[str, Any]:
            status = await asyncio.to_thread(tok, node, "status", "--node", node.http, "--json")
            assert status.returncode == 0, status.stderr
            (net,) = json.loads(status.stdout)["networks"]
            return net

        deadline = time.monotonic() + 30
        while (net := await counters())["fdb_counters"]["port_max"] != 1:
            assert time.monotonic() < deadline, net["fdb_counters"]
            await asyncio.sleep(0.3)
        fdb = net["fdb_counters"]
        assert (fdb["age"], fdb["max"], fdb["peer_max"]) == (120, 1000, 500)
        assert net["fdb"] == 1 and [p["learned"] for p in net["ports"]] == [1]  # kept
        await ws.send_bytes(eth(BCAST, mac(2)))  # a second MAC: past the new port bound
        await asyncio.sleep(0.3)
        net = await counters()
        assert net["fdb"] == 1 and net["fdb_counters"]["port_full"] == 1
        text = await asyncio.to_thread(tok, node, "status", "--node", node.http)
        assert "MAC table 1/1000 (port 1, peer 500, age 120 s)" in text.stdout
        assert "port_full 1" in text.stdout and "mac_theft 0" in text.stdout
        async with http.get(f"{node.http}/metrics") as resp:
            metrics = await resp.text()
        for what, value in (("port_full", 1), ("mac_theft", 0), ("peer_full", 0)):
            assert re.search(rf'atenet_fdb_total{{[^}}]*what="{what}"}} {value}\.0', metrics)
        for what, value in (("port_max", 1), ("peer_max", 500), ("max", 1000), ("age", 120)):
            assert re.search(rf'atenet_fdb_limit{{[^}}]*what="{what}"}} {value}\.0', metrics)
        # The page's status message: the table's size and what each port taught it.
        deadline = time.monotonic() + 15  # skip status messages queued before the frame
        page: dict[str, Any] = {}
        while page.get("fdb") != 1:
            assert time.monotonic() < deadline, page
            msg = await ws.receive(5)
            if msg.type == aiohttp.WSMsgType.TEXT:  # (binary: frames, e.g. the gateway's RAs)
                page = json.loads(msg.data)
        assert page["op"] == "status" and [p["learned"] for p in page["ports"]] == [1]


def test_tok_network_set_refuses_bad_fdb_values_with_one_line(node: LoopbackNode) -> None:
    for args, message in (
        (("--fdb-age", "5"), "fdb_age 5 is not an integer from 10 to 86,400 seconds"),
        (("--fdb-macs", "0"), "fdb_macs 0 is not an integer from 1 to 1,048,576"),
        (("--fdb-port-macs", "-1"), "fdb_port_macs -1 is not an integer"),
    ):
        out = tok(node, "network", "set", "lan", *args)
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    usage = tok(node, "network", "set", "lan")
    assert usage.returncode == 2 and "--fdb-*" in usage.stderr
    shown = json.loads(tok(node, "network", "show", "lan", "--json").stdout)
    assert (shown["fdb_age"], shown["fdb_macs"]) == (300, 8192)  # nothing changed
    assert shown["proxy_arp"] is False
    assert "proxy    ARP/ND off" in tok(node, "network", "show", "lan").stdout
    on = tok(node, "network", "set", "lan", "--proxy-arp", "on", "--json")
    assert on.returncode == 0 and json.loads(on.stdout)["changed"] == {"proxy_arp": True}
    assert "proxy    ARP/ND on" in tok(node, "network", "show", "lan").stdout


# --------------------------------------------------------------------------- proxy ARP / ND


async def test_proxy_arp_answers_for_a_host_on_another_node_and_nothing_crosses(
    world: World,
) -> None:
    wire, (node1, node2), (net_a, _net_b), (a1, _b1), _key, now = await two_routed_networks(world)
    a_on_1 = node1.networks[net_a.network_id]
    a_on_2 = node2.networks[net_a.network_id]
    a2 = Recording("a2", "02:aa:00:00:00:02", "10.9.8.11", a_on_2, now)
    a_on_2.add_port("a2", a2)
    a3 = Recording("a3", "02:aa:00:00:00:03", "10.9.8.12", a_on_1, now)  # a1's node
    a_on_1.add_port("a3", a3)
    for host in (a2, a3):  # each announces itself: node 1 snoops a2's claim from the flood
        host.send(Ether(src=host.mac_text, dst="ff:ff:ff:ff:ff:ff")
                  / ARP(op=1, hwsrc=host.mac_text, psrc=host.ip, pdst=host.ip))  # fmt: skip
    wire.run(now)
    node2_addr = ("10.0.0.2", 4799)

    def ask(target: str, psrc: str = a1.ip) -> tuple[list[Ether], int]:
        a1.got.clear()
        a1.send(Ether(src=a1.mac_text, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=a1.mac_text, psrc=psrc, pdst=target))  # fmt: skip
        crossing = sum(1 for _, _, dst in wire.queue if dst == node2_addr)
        wire.run(now)
        return [p for p in a1.got if ARP in p and p[ARP].op == 2], crossing

    replies, crossing = ask(a2.ip)  # off by default: the request floods to node 2, a2 answers
    assert crossing == 1 and [p[ARP].hwsrc for p in replies] == [a2.mac_text]
    assert a_on_1.switch.proxy is None
    await net_a.append(Kind.SETTINGS, {"proxy_arp": True}, world.owner_signer)
    a_on_1.apply_state(net_a.state, now)
    replies, crossing = ask(a2.ip)
    assert crossing == 0  # answered on node 1: nothing went to node 2
    (reply,) = replies
    assert (reply[ARP].hwsrc, reply[ARP].psrc, reply.src) == (a2.mac_text, a2.ip, a2.mac_text)
    assert (reply[ARP].pdst, reply.dst) == (a1.ip, a1.mac_text)
    assert a_on_1.ip_table.counters["proxied"] == 1
    a3.frames.clear()
    replies, crossing = ask(a3.ip)  # a host on this node answers itself
    assert crossing == 1 and [p[ARP].hwsrc for p in replies] == [a3.mac_text]
    _replies, crossing = ask(a2.ip, psrc="0.0.0.0")  # a probe (duplicate address detection)
    assert crossing == 1
    assert a_on_1.ip_table.counters["proxied"] == 1


def test_proxy_nd_answers_a_solicitation_with_the_hosts_advertisement() -> None:
    table = IpTable()
    sw = Switch()
    flooded: list[bytes] = []
    sw.to_peers = lambda frame: flooded.append(frame) or 1  # type: ignore[assignment]
    asker = Recorder("asker")
    sw.add("asker", asker)
    remote = "02:00:00:00:00:09"
    sw.from_peer(raw(Ether(src=remote, dst="ff:ff:ff:ff:ff:ff") / (b"x" * 46)), PEER_B)
    table.observe(arp(remote, "10.0.0.9"), "node b", 100.0)  # (an IPv4 claim, ignored here)
    na = raw(Ether(src=remote, dst="33:33:00:00:00:01") / IPv6(src="fd00::9", dst="ff02::1")
             / ICMPv6ND_NA(tgt="fd00::9", R=0, S=0, O=1)
             / ICMPv6NDOptDstLLAddr(lladdr=remote))  # fmt: skip
    table.observe(na, "node b", 100.0)
    sw.proxy = NeighbourProxy(table, sw, lambda: 110.0)
    ns = (Ether(src="02:00:00:00:00:01", dst="33:33:ff:00:00:09")
          / IPv6(src="fd00::1", dst="ff02::1:ff00:9") / ICMPv6ND_NS(tgt="fd00::9")
          / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01"))  # fmt: skip
    flooded.clear()
    asker.frames.clear()
    sw.from_local(asker, raw(ns))
    assert flooded == []
    (answer,) = [Ether(f) for f in asker.frames]
    assert answer[ICMPv6ND_NA].tgt == "fd00::9" and answer.src == remote
    assert answer[IPv6].dst == "fd00::1" and answer.dst == "02:00:00:00:00:01"
    sw.proxy = NeighbourProxy(table, sw, lambda: 100.0 + 61)  # the claim is too old now
    asker.frames.clear()
    sw.from_local(asker, raw(ns))
    assert len(flooded) == 1 and asker.frames == []
