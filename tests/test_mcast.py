"""IGMP / MLD snooping (switch/mcast.py, docs/learning.md "Multicast"), frame by frame with
injected time: reports of every kind built by scapy, leaves, expiry, link-local and
unregistered groups flooded, registered groups only to members (local ports and peers),
bounds, malformed counted, snooping off, and the gateway's queries as a kernel would read them.
"""

from __future__ import annotations

from scapy.contrib.igmpv3 import IGMPv3gr, IGMPv3mq, IGMPv3mr
from scapy.layers.igmp import IGMP
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether

from atenet.switch.mcast import MEMBERSHIP_TIMEOUT, Groups
from tests.test_learning import PEER_B, PEER_C, Net, mac

G4, G6 = "239.1.2.3", "ff05::1234"
G4_MAC, G6_MAC = "01:00:5e:01:02:03", "33:33:00:00:12:34"


def _src(n: int) -> str:
    return mac(n).hex(":")


def v2_report(n: int, group: str = G4, kind: int = 0x16) -> bytes:
    dst = "224.0.0.2" if kind == 0x17 else group
    ip = IP(src=f"10.0.0.{n}", dst=dst, ttl=1, options=[IPOption_Router_Alert()])
    return bytes(Ether(src=_src(n), dst="01:00:5e:00:00:02") / ip / IGMP(type=kind, gaddr=group))


def v3_report(n: int, records: list[tuple[int, str, list[str]]]) -> bytes:
    recs = [IGMPv3gr(rtype=t, maddr=g, srcaddrs=s) for t, g, s in records]
    ip = IP(src=f"10.0.0.{n}", dst="224.0.0.22", ttl=1, options=[IPOption_Router_Alert()])
    return bytes(Ether(src=_src(n), dst="01:00:5e:00:00:16") / ip / IGMPv3mr(records=recs))


def _ip6(n: int, dst: str) -> IPv6:
    return IPv6(src=f"fe80::{n}", dst=dst, hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()])


def mld1(n: int, group: str = G6, done: bool = False) -> bytes:
    if done:
        return bytes(Ether(src=_src(n)) / _ip6(n, "ff02::2") / ICMPv6MLDone(mladdr=group))
    return bytes(Ether(src=_src(n)) / _ip6(n, group) / ICMPv6MLReport(mladdr=group))


def mld2(n: int, records: list[tuple[int, str, list[str]]]) -> bytes:
    recs = [ICMPv6MLDMultAddrRec(rtype=t, dst=g, sources=s) for t, g, s in records]
    return bytes(Ether(src=_src(n)) / _ip6(n, "ff02::16") / ICMPv6MLReport2(records=recs))


def udp4(n: int, group: str = G4) -> bytes:
    return bytes(
        Ether(src=_src(n), dst="01:00:5e:01:02:03")
        / IP(src=f"10.0.0.{n}", dst=group)
        / UDP(dport=5000)
        / b"hi"
    )


def udp6(n: int, group: str = G6) -> bytes:
    return bytes(Ether(src=_src(n)) / IPv6(src=f"fd00::{n}", dst=group) / UDP(dport=5000) / b"hi")


def got(net: Net) -> list[int]:
    """How many frames each local port got."""
    return [len(p.frames) for p in net.ports]


def test_ipv4_v2_and_v3_reports_register_and_the_group_goes_to_members_only() -> None:
    net = Net(4)
    a, b, c, _d = net.ports
    net.switch.from_local(a, v2_report(1))
    net.switch.from_local(b, v3_report(2, [(4, G4, [])]))  # TO_EX {}: join
    # Reports reach every peer node (they learn) but no other host (no suppression).
    assert len(net.flooded) == 2 and got(net) == [0, 0, 0, 0]
    net.clear()
    net.switch.from_local(c, udp4(3))
    assert got(net) == [1, 1, 0, 0] and net.flooded == [] and net.sent == []
    assert net.switch.mcast.counters["joins"] == 2


def test_ipv6_mldv1_and_mldv2_reports_register() -> None:
    net = Net(4)
    a, b, c, d = net.ports
    net.switch.from_local(a, mld1(1))
    net.switch.from_local(b, mld2(2, [(2, G6, [])]))  # IS_EX {}
    net.switch.from_local(d, mld2(4, [(1, "ff05::99", ["fd00::9"])]))  # IS_IN with a source
    net.clear()
    net.switch.from_local(c, udp6(3))
    assert got(net) == [1, 1, 0, 0] and net.flooded == []
    net.switch.from_local(c, udp6(3, "ff05::99"))
    assert got(net) == [1, 1, 0, 1]


def test_leaves_remove_a_local_port_at_once() -> None:
    net = Net(3)
    a, b, c = net.ports
    for port, n in ((a, 1), (b, 2)):
        net.switch.from_local(port, v2_report(n))
        net.switch.from_local(port, mld1(n))
    net.switch.from_local(a, v2_report(1, kind=0x17))  # IGMPv2 leave
    net.switch.from_local(b, v3_report(2, [(3, G4, [])]))  # v3 TO_IN {}: leave
    net.switch.from_local(a, mld1(1, done=True))  # MLDv1 done
    net.switch.from_local(b, mld2(2, [(3, G6, [])]))  # MLDv2 TO_IN {}
    assert len(net.switch.mcast) == 0
    net.clear()
    net.switch.from_local(c, udp4(3))
    assert got(net) == [1, 1, 0] and len(net.flooded) == 1  # unregistered again: flooded


def test_peer_members_get_the_group_sealed_to_them_alone() -> None:
    net = Net(2)
    a, _b = net.ports
    net.switch.from_peer(v2_report(9), PEER_B)  # a host behind node B joined
    net.switch.from_peer(mld2(8, [(4, G6, [])]), PEER_C)
    assert got(net) == [0, 0]  # a report from a peer reaches no local host
    net.clear()
    net.switch.from_local(a, udp4(1))
    assert got(net) == [0, 0] and net.flooded == [] and [p for p, _ in net.sent] == [PEER_B]
    net.switch.from_local(a, udp6(1))
    assert [p for p, _ in net.sent] == [PEER_B, PEER_C]
    # From a peer, a registered group with no local member reaches no local port (loop rule:
    # never back to peers either).
    net.clear()
    net.switch.from_peer(udp4(7), PEER_C)
    assert got(net) == [0, 0] and net.sent == [] and net.flooded == []
    # A peer's leave does not remove the node (another host there may still listen).
    net.switch.from_peer(v2_report(9, kind=0x17), PEER_B)
    assert net.switch.mcast.counters["peer_leave"] == 1
    net.switch.from_local(a, udp4(1))
    assert [p for p, _ in net.sent] == [PEER_B]


def test_membership_expires_without_reports_and_queries_keep_it() -> None:
    net = Net(3)
    a, _b, c = net.ports
    net.switch.age(0.0)
    net.switch.from_local(a, v2_report(1))
    net.switch.from_peer(v2_report(9), PEER_B)
    net.switch.age(200.0)
    net.switch.now = 200.0
    net.switch.from_local(a, v2_report(1))  # the answer to a query: refreshed
    net.switch.age(MEMBERSHIP_TIMEOUT + 20)
    net.clear()
    net.switch.from_local(c, udp4(3))
    assert got(net) == [1, 0, 0] and [p for p, _ in net.sent] == []  # B's expired
    net.switch.age(200.0 + MEMBERSHIP_TIMEOUT + 20)
    assert len(net.switch.mcast) == 0 and net.switch.mcast.counters["expired"] == 2
    net.clear()
    net.switch.from_local(c, udp4(3))
    assert got(net) == [1, 1, 0] and len(net.flooded) == 1


def test_link_local_and_non_ip_multicast_always_flood() -> None:
    net = Net(3)
    a, _b, c = net.ports
    net.switch.from_local(a, v2_report(1, "224.0.0.251"))  # a join of a link-local group
    net.switch.from_local(a, mld1(1, "ff02::fb"))
    assert len(net.switch.mcast) == 0
    ns = bytes(
        Ether(src=_src(3), dst="33:33:ff:00:00:02")
        / IPv6(src="fd00::3", dst="ff02::1:ff00:2")
        / ICMPv6ND_NS(tgt="fd00::2")
    )
    mdns = bytes(Ether(src=_src(3)) / IP(src="10.0.0.3", dst="224.0.0.251") / UDP() / b"x")
    stp = bytes.fromhex("0180c2000000") + mac(3) + b"\x00\x26" + b"\x42" * 46
    for frame in (ns, mdns, stp, udp6(3, "ff02::1"), udp6(3, "ff02::2")):
        net.clear()
        net.switch.from_local(c, frame)
        assert got(net) == [1, 1, 0] and len(net.flooded) == 1, frame.hex()


def test_queries_flood_and_make_their_port_a_router_port() -> None:
    net = Net(3)
    a, b, c = net.ports
    query = bytes(
        Ether(src=_src(1), dst="01:00:5e:00:00:01")
        / IP(src="10.0.0.1", dst="224.0.0.1", ttl=1, options=[IPOption_Router_Alert()])
        / IGMPv3mq()
    )
    net.switch.from_local(a, query)
    assert got(net) == [0, 1, 1]
    net.clear()
    net.switch.from_local(b, v2_report(2))
    assert got(net) == [1, 0, 0]  # the router hears reports
    net.switch.from_local(c, udp4(3))
    assert got(net) == [2, 1, 0]  # and every group's traffic


def test_mirror_ports_get_every_group_frame() -> None:
    net = Net(3)
    a, b, mon = net.ports
    net.switch.set_mirror(mon, True)
    net.switch.from_local(a, v2_report(1))
    net.switch.from_local(b, udp4(2))
    assert got(net) == [1, 0, 2]


def test_unregistered_groups_flood() -> None:
    net = Net(3)
    a, _b, c = net.ports
    net.switch.from_local(a, v2_report(1, "239.9.9.9"))
    net.clear()
    net.switch.from_local(c, udp4(3))  # 239.1.2.3: nobody joined
    assert got(net) == [1, 1, 0] and len(net.flooded) == 1


def test_bounds_count_and_never_evict_and_an_overfull_port_gets_everything() -> None:
    net = Net(3)
    a, b, _c = net.ports
    net.switch.mcast = Groups(max_groups=4, port_max=2)
    net.switch.from_local(a, v2_report(1, "239.0.1.1"))
    net.switch.from_local(a, v2_report(1, "239.0.1.2"))
    net.switch.from_local(a, v2_report(1, "239.0.1.3"))  # third: over the port's cap
    counters = net.switch.mcast.counters
    assert counters["port_full"] == 1 and a in net.switch.mcast.all_ports
    for i in range(10):
        net.switch.from_peer(v2_report(9, f"239.0.2.{i}"), PEER_B)
    assert len(net.switch.mcast) == 4 and counters["full"] == 8
    assert set(net.switch.mcast.groups) >= {bytes([239, 0, 1, 1]), bytes([239, 0, 1, 2])}
    net.clear()
    net.switch.from_local(b, udp4(2, "239.0.2.0"))  # registered by B: a gets it too
    assert got(net) == [1, 0, 0] and [p for p, _ in net.sent] == [PEER_B]
    net.switch.remove(0)  # the port goes: its state with it
    assert a not in net.switch.mcast.all_ports and net.switch.mcast.joined.get(a) is None


def test_malformed_membership_messages_are_counted_and_never_raise() -> None:
    net = Net(2)
    a, _b = net.ports
    good4, good6 = v2_report(1), mld2(1, [(4, G6, [])])
    bad = [
        good4[:-2],  # truncated
        good4[:-4] + b"\x00\x00\x00\x00",  # wrong checksum
        good6[:-3],
        good6[:-1] + bytes([good6[-1] ^ 1]),  # wrong checksum
        v3_report(1, [(4, G4, [])])[:-2],
        good4[:14] + b"\x4f" + good4[15:],  # header length past the data
    ]
    for frame in bad:
        net.switch.from_local(a, frame)
    assert net.switch.mcast.counters["malformed"] == len(bad)
    assert len(net.switch.mcast) == 0


def test_ping_to_a_group_and_echo_are_switched_as_data() -> None:
    net = Net(3)
    a, _b, c = net.ports
    net.switch.from_local(a, mld1(1))
    net.clear()
    echo = bytes(Ether(src=_src(3)) / IPv6(src="fd00::3", dst=G6) / ICMPv6EchoRequest())
    net.switch.from_local(c, echo)
    assert got(net) == [1, 0, 0] and net.switch.mcast.counters["malformed"] == 0


def test_snooping_off_floods_all_multicast() -> None:
    net = Net(3)
    a, _b, c = net.ports
    net.switch.mcast = None
    net.switch.from_local(a, v2_report(1))
    net.clear()
    net.switch.from_local(c, udp4(3))
    assert got(net) == [1, 1, 0] and len(net.flooded) == 1


def test_offloaded_group_frames_follow_the_table() -> None:
    from atenet.offload import NO_OFFLOAD

    net = Net(3)
    a, _b, c = net.ports
    net.switch.from_local(a, v2_report(1))
    net.switch.from_peer(v2_report(9), PEER_B)
    net.clear()
    net.switch.packet_from_local(c, NO_OFFLOAD + udp4(3))
    assert got(net) == [1, 0, 0] and [p for p, _ in net.sent] == [PEER_B]
    net.clear()
    net.switch.packet_from_peer(NO_OFFLOAD + udp4(7), PEER_C)
    assert got(net) == [1, 0, 0] and net.sent == []


def test_the_gateway_queries_as_a_multicast_router_with_right_checksums() -> None:
    from scapy.layers.inet6 import ICMPv6MLQuery2

    from atenet.router.gateway import QUERY_INTERVAL, QUERY_START, Gateway

    gw = Gateway(bytes(range(16)), "10.7.0.0/24", "fd07::/64", 1400)
    assert gw.poll_queries(100.0) == []  # the first call starts the schedule
    assert gw.poll_queries(100.0 + QUERY_START - 0.1) == []
    v4, v6 = gw.poll_queries(100.0 + QUERY_START)
    assert gw.poll_queries(100.0 + QUERY_START + QUERY_INTERVAL - 1) == []
    assert len(gw.poll_queries(100.0 + QUERY_START + QUERY_INTERVAL)) == 2

    q4 = Ether(v4)
    assert q4.dst == "01:00:5e:00:00:01" and q4[IP].dst == "224.0.0.1" and q4[IP].ttl == 1
    assert q4[IP].src == "10.7.0.1" and q4[IP].options[0].option == 20  # Router Alert
    assert isinstance(q4[IP].payload, IGMPv3mq) or bytes(q4[IP].payload)[0] == 0x11
    assert len(bytes(q4[IP].payload)) == 12  # 12 bytes: an IGMPv3 query (v2 hosts read it)
    redone = q4.copy()
    del redone[IP].chksum
    redone[IP].payload.chksum = None
    assert bytes(redone) == v4  # both checksums are what scapy computes

    q6 = Ether(v6)
    assert q6.dst == "33:33:00:00:00:01" and q6[IPv6].dst == "ff02::1" and q6[IPv6].hlim == 1
    assert q6[IPv6].src.startswith("fe80:") and q6[IPv6ExtHdrHopByHop].options[0].otype == 5
    query = q6[ICMPv6MLQuery2]
    assert query.mrd == 10_000 and query.mladdr == "::"
    redone6 = q6.copy()
    redone6[ICMPv6MLQuery2].cksum = None
    assert bytes(redone6) == v6

    # A switch that sees them (e.g. a query from a host) floods them and counts a query.
    groups = Groups()
    assert groups.handle(v4, 7, 0.0) is None and groups.handle(v6, 7, 0.0) is None
    assert groups.counters["queries"] == 2 and groups.counters["malformed"] == 0


async def test_across_nodes_a_group_is_sealed_only_to_the_node_that_joined(
    world, monkeypatch
) -> None:
    import re

    from atenet.node.metrics import exposition, registry
    from tests.test_learning import CountingWire
    from tests.test_node_core import build

    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 1)
    net = world.chain.network_id
    (a_addr, a), (b_addr, _b), (c_addr, c) = clients
    node_a, node_b, node_c = (("10.0.0.1", 4799), ("10.0.0.2", 4799), ("10.0.0.3", 4799))
    wire.sender(c_addr)(c.seal_frame(v2_report(3)), c.node)  # c's host joins 239.1.2.3
    wire.run(1000.0)
    assert wire.count[(node_c, node_a)] == 1 and wire.count[(node_c, node_b)] == 1
    assert a_addr not in wire.frames and b_addr not in wire.frames  # hosts hear no reports
    wire.count.clear()
    for _ in range(3):
        wire.sender(a_addr)(a.seal_frame(udp4(1)), a.node)
    wire.run(1000.5)
    assert wire.count[(node_a, node_c)] == 3 and wire.count[(node_a, node_b)] == 0
    assert wire.frames[c_addr] == [udp4(1)] * 3 and b_addr not in wire.frames
    status = nodes[0].networks[net].status()
    assert status["snooping"] is True
    assert status["mcast_groups"] == [{"group": G4, "ports": [], "nodes": [nodes[2].node_id]}]
    assert nodes[2].networks[net].fdb_view(1000.5)["groups"][0]["ports"] == [
        p["name"] for p in nodes[2].networks[net].status()["ports"]
    ]
    metrics = exposition(registry(nodes[0].status)).decode()
    assert re.search(
        rf'atenet_mcast_groups{{network="[^"]*",network_id="{net.hex()}"}} 1\.0', metrics
    )
    assert re.search(
        r'atenet_mcast_total{network="[^"]*",network_id="[0-9a-f]+",what="joins"} 1', metrics
    )


def test_tok_network_set_snooping_off_and_on(tmp_path) -> None:
    import json

    from tests.test_cli_owner import run

    home = tmp_path / "home"
    run(home, "init", prog="atenet")
    run(home, "network", "create", "office", "--cidr", "10.20.30.0/24")
    assert json.loads(run(home, "network", "show", "office", "--json").stdout)["snooping"] is True
    out = run(home, "network", "set", "office", "--snooping", "off").stdout
    assert out.strip() == "network office: snooping=False"
    assert "snooping off" in run(home, "network", "show", "office").stdout
    assert json.loads(run(home, "network", "show", "office", "--json").stdout)["snooping"] is False
    bad = run(home, "network", "set", "office", "--snooping", "maybe", ok=False)
    assert bad.returncode == 2 and "maybe" in bad.stderr


async def test_a_node_follows_the_snooping_setting_live(world, monkeypatch) -> None:
    import dataclasses

    from tests.test_learning import CountingWire
    from tests.test_node_core import build

    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 1)
    net = world.chain.network_id
    (a_addr, a), (b_addr, _b), (c_addr, c) = clients
    wire.sender(c_addr)(c.seal_frame(v2_report(3)), c.node)
    wire.run(1000.0)
    runtime = nodes[0].networks[net]
    state = runtime.state
    off = dataclasses.replace(state, settings=dataclasses.replace(state.settings, snooping=False))
    for node in nodes:  # as every node does when the chain says so
        node.networks[net].apply_state(off, 1000.0)
    assert runtime.status()["snooping"] is False and runtime.gateway.querier is False
    wire.count.clear()
    wire.sender(a_addr)(a.seal_frame(udp4(1)), a.node)
    wire.run(1000.5)
    assert wire.count[(("10.0.0.1", 4799), ("10.0.0.2", 4799))] == 1  # flooded again
    assert b_addr in wire.frames and c_addr in wire.frames
    runtime.apply_state(state, 1001.0)  # on again: an empty table, unregistered groups flood
    assert runtime.status()["snooping"] is True and runtime.status()["mcast_groups"] == []


async def test_each_node_queries_its_own_local_ports_and_never_its_peers(
    world, monkeypatch
) -> None:
    from tests.test_learning import CountingWire
    from tests.test_node_core import build

    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 2, 1)
    (a_addr, _a), (b_addr, _b) = clients
    runtime = nodes[0].networks[world.chain.network_id]
    assert runtime.gateway is not None
    wire.count.clear()
    wire.frames.clear()
    nodes[0].expire(1001.0)  # the first tick with a local port starts the schedule
    nodes[0].expire(1003.5)
    wire.run(1003.5)
    queries = [f for f in wire.frames[a_addr] if f[:6] in (b"\x01\x00\x5e\x00\x00\x01",)]
    queries6 = [f for f in wire.frames[a_addr] if Ether(f).haslayer("ICMPv6MLQuery2")]
    assert len(queries) == 1 and len(queries6) == 1
    assert Ether(queries[0])[IP].dst == "224.0.0.1"
    assert b_addr not in wire.frames
    assert wire.count[(("10.0.0.1", 4799), ("10.0.0.2", 4799))] == 0
    assert runtime.gateway.handled["query"] == 1
