"""IGMP/MLD snooping (switch/mcast.py, docs/learning.md), frame by frame with injected time.

Reports are built with scapy (IGMPv2, IGMPv3, MLDv1, MLDv2 — what Linux hosts send), data frames
to the groups with atenet.wire; ports are recorders and peers are sender ids, as in
tests/test_learning.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.igmp import IGMP, IGMPv3_MQ, IGMPv3_MR, IGMPv3_MR_Group
from scapy.layers.inet import IP
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether

from atenet.chain.event import Kind
from atenet.node.metrics import exposition, registry
from atenet.offload import NO_OFFLOAD
from atenet.router.querier import FIRST_QUERY, QUERY_INTERVAL, Querier, igmp_query, mld_query
from atenet.switch.mcast import MEMBER_TIMEOUT, Multicast
from atenet.wire.ethernet import ethernet_frame
from tests.support.chains import World
from tests.test_gateway_node import NOW, Capture, node
from tests.test_learning import PEER_B, PEER_C, Net, mac

GROUP4 = "239.1.2.3"
GROUP6 = "ff05::1234"
GW_MAC = bytes.fromhex("02aa00000001")


def _mac4(group: str) -> str:
    o = [int(x) for x in group.split(".")]
    return f"01:00:5e:{o[1] & 0x7F:02x}:{o[2]:02x}:{o[3]:02x}"


def _mac6(group: str) -> str:
    from ipaddress import IPv6Address

    tail = IPv6Address(group).packed[-4:]
    return "33:33:" + tail.hex(":")


def igmp2_report(src: bytes, group: str = GROUP4) -> bytes:
    return bytes(
        Ether(dst=_mac4(group), src=src.hex(":"))
        / IP(src="10.0.0.5", dst=group, ttl=1, options=[b"\x94\x04\x00\x00"])
        / IGMP(type=0x16, gaddr=group)
    )


def igmp2_leave(src: bytes, group: str = GROUP4) -> bytes:
    return bytes(
        Ether(dst="01:00:5e:00:00:02", src=src.hex(":"))
        / IP(src="10.0.0.5", dst="224.0.0.2", ttl=1)
        / IGMP(type=0x17, gaddr=group)
    )


def igmp3_report(src: bytes, group: str = GROUP4, rtype: int = 4, sources: int = 0) -> bytes:
    record = IGMPv3_MR_Group(
        rtype=rtype, maddr=group, srcaddrs=[f"10.9.0.{i + 1}" for i in range(sources)]
    )
    return bytes(
        Ether(dst="01:00:5e:00:00:16", src=src.hex(":"))
        / IP(src="10.0.0.5", dst="224.0.0.22", ttl=1, options=[b"\x94\x04\x00\x00"])
        / IGMPv3_MR(records=[record])
    )


def _hbh() -> IPv6ExtHdrHopByHop:
    return IPv6ExtHdrHopByHop(options=[RouterAlert(value=0)])


def mld1_report(src: bytes, group: str = GROUP6) -> bytes:
    return bytes(
        Ether(dst=_mac6(group), src=src.hex(":"))
        / IPv6(src="fe80::5", dst=group, hlim=1)
        / _hbh()
        / ICMPv6MLReport(mladdr=group)
    )


def mld1_done(src: bytes, group: str = GROUP6) -> bytes:
    return bytes(
        Ether(dst="33:33:00:00:00:02", src=src.hex(":"))
        / IPv6(src="fe80::5", dst="ff02::2", hlim=1)
        / _hbh()
        / ICMPv6MLDone(mladdr=group)
    )


def mld2_report(src: bytes, group: str = GROUP6, rtype: int = 4, sources: int = 0) -> bytes:
    record = ICMPv6MLDMultAddrRec(
        rtype=rtype, dst=group, sources=[f"fd00::{i + 1}" for i in range(sources)]
    )
    return bytes(
        Ether(dst="33:33:00:00:00:16", src=src.hex(":"))
        / IPv6(src="fe80::5", dst="ff02::16", hlim=1)
        / _hbh()
        / ICMPv6MLReport2(records=[record])
    )


def data4(src: bytes, group: str = GROUP4) -> bytes:
    return bytes(
        Ether(dst=_mac4(group), src=src.hex(":")) / IP(src="10.0.0.6", dst=group) / (b"d" * 30)
    )


def data6(src: bytes, group: str = GROUP6) -> bytes:
    return bytes(
        Ether(dst=_mac6(group), src=src.hex(":"))
        / IPv6(src="fd00::6", dst=group, nh=17)
        / (b"\x00" * 8 + b"d" * 30)
    )


class McastNet(Net):
    def __init__(self, n_ports: int = 3) -> None:
        super().__init__(n_ports)
        self.switch.mcast = Multicast()
        self.switch.now = 1000.0


REPORTS = {
    "igmpv2": (igmp2_report, data4),
    "igmpv3": (igmp3_report, data4),
    "mldv1": (mld1_report, data6),
    "mldv2": (mld2_report, data6),
}


@pytest.mark.parametrize("kind", REPORTS)
def test_a_report_from_a_port_makes_the_group_go_to_that_port_only(kind: str) -> None:
    report, data = REPORTS[kind]
    net = McastNet()
    a, b, c = net.ports
    r = report(mac(1))
    net.switch.from_local(a, r)
    # Reports go to the peer nodes (they learn from them), not to other hosts (RFC 4541: an
    # IGMPv2/MLDv1 host would suppress its own report on hearing it and go unregistered).
    assert b.frames == [] and c.frames == [] and net.flooded == [r]
    net.clear()
    f = data(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == [f]
    assert b.frames == [] and net.flooded == [] and net.sent == []
    assert net.switch.mcast.counters["to_members"] == 1


@pytest.mark.parametrize("kind", REPORTS)
def test_a_report_from_a_peer_sends_the_group_to_that_node_only(kind: str) -> None:
    report, data = REPORTS[kind]
    net = McastNet()
    a, b, c = net.ports
    r = report(mac(7))
    net.switch.from_peer(r, PEER_B)
    assert a.frames == b.frames == c.frames == []  # learned here, not repeated to local hosts
    net.clear()
    f = data(mac(1))
    net.switch.from_local(a, f)
    assert net.sent == [(PEER_B, f)]
    assert net.flooded == [] and b.frames == [] and c.frames == []
    # From a peer: a registered group with no local member reaches no local port.
    net.clear()
    net.switch.from_peer(data(mac(8)), PEER_C)
    assert a.frames == b.frames == c.frames == [] and net.sent == [] and net.flooded == []


def test_members_local_and_remote_each_get_the_frame_once() -> None:
    net = McastNet()
    a, b, c = net.ports
    net.switch.from_local(a, igmp3_report(mac(1)))
    net.switch.from_local(b, igmp2_report(mac(2)))
    net.switch.from_peer(igmp2_report(mac(7)), PEER_B)
    net.switch.from_peer(igmp3_report(mac(8)), PEER_C)
    net.clear()
    before = net.switch.frames_to_peers
    f = data4(mac(1))
    net.switch.from_local(a, f)  # the sender is a member too: not sent back to it
    assert a.frames == [] and b.frames == [f] and c.frames == []
    assert sorted(net.sent) == sorted([(PEER_B, f), (PEER_C, f)])
    assert net.switch.frames_to_peers == before + 1  # counted once per frame


@pytest.mark.parametrize(
    ("join", "leave"),
    [
        (igmp2_report, igmp2_leave),
        (igmp3_report, lambda m: igmp3_report(m, rtype=3)),  # TO_IN {}: leave
        (mld1_report, mld1_done),
        (mld2_report, lambda m: mld2_report(m, rtype=3)),
    ],
)
def test_a_leave_from_a_port_ends_its_membership_at_once(join, leave) -> None:
    net = McastNet()
    a, b, c = net.ports
    net.switch.from_local(a, join(mac(1)))
    net.switch.from_local(a, leave(mac(1)))
    net.clear()
    f = (data4 if join in (igmp2_report, igmp3_report) else data6)(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == [f] and b.frames == [f] and net.flooded == [f]  # unregistered: flood
    assert net.switch.mcast.groups == {}


def test_a_leave_seen_from_a_peer_keeps_the_node_until_it_expires() -> None:
    net = McastNet()
    a = net.ports[0]
    net.switch.from_peer(igmp2_report(mac(7)), PEER_B)
    net.switch.from_peer(igmp2_leave(mac(7)), PEER_B)  # another host there may still listen
    net.clear()
    f = data4(mac(1))
    net.switch.from_local(a, f)
    assert net.sent == [(PEER_B, f)]
    net.clear()
    net.switch.age(net.switch.now + MEMBER_TIMEOUT + 31)
    net.switch.from_local(a, f)
    assert net.sent == [] and net.flooded == [f]


def test_sources_of_include_records_join_the_whole_group() -> None:
    net = McastNet()
    a, _, c = net.ports
    net.switch.from_local(a, igmp3_report(mac(1), rtype=1, sources=2))  # IS_IN {2 sources}
    net.clear()
    f = data4(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == [f] and net.flooded == []


def test_memberships_expire_without_reports_and_are_refreshed_by_them() -> None:
    net = McastNet()
    a, b, c = net.ports
    start = net.switch.now
    net.switch.from_local(a, mld2_report(mac(1)))
    net.switch.now = start + 200
    net.switch.from_local(a, mld2_report(mac(1)))  # the answer to a query: refreshed
    net.switch.now = start + 400  # 200 s after the refresh: still a member
    net.clear()
    f = data6(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == [f] and b.frames == []
    net.switch.now = start + 200 + MEMBER_TIMEOUT + 1  # silent past the timeout: gone
    net.clear()
    net.switch.from_local(c, f)
    assert a.frames == [f] and b.frames == [f] and net.flooded == [f]
    assert net.switch.mcast.groups == {} and net.switch.mcast.counters["expired"] == 1


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (data4(mac(3), "224.0.0.251"), "mDNS (224.0.0.0/24)"),
        (data6(mac(3), "ff02::fb"), "mDNS (ff02::/16)"),
        (data6(mac(3), "ff02::1:ff00:1"), "solicited-node"),
        (data6(mac(3), "ff02::1"), "all nodes"),
        (ethernet_frame(bytes.fromhex("0180c2000000"), mac(3), 0x88B5, b"x" * 46), "not IP"),
    ],
)
def test_link_local_groups_always_flood_even_when_reported(frame: bytes, what: str) -> None:
    net = McastNet()
    a, b, c = net.ports
    net.switch.from_local(a, mld1_report(mac(1), "ff02::fb"))
    net.switch.from_local(a, igmp2_report(mac(1), "224.0.0.251"))
    net.switch.from_local(a, mld1_report(mac(1), "ff02::1:ff00:1"))
    assert net.switch.mcast.groups == {}, "link-local groups are never registered"
    net.clear()
    net.switch.from_local(c, frame)
    assert a.frames == [frame] and b.frames == [frame] and net.flooded == [frame], what


def test_unregistered_groups_flood_and_snooping_off_floods_everything() -> None:
    net = McastNet()
    a, b, c = net.ports
    f = data4(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == b.frames == [f] and net.flooded == [f]
    net.switch.from_local(a, igmp2_report(mac(1)))
    net.switch.mcast = None  # the network's snooping setting turned off
    net.clear()
    net.switch.from_local(c, f)
    assert a.frames == b.frames == [f] and net.flooded == [f]


def test_mirror_ports_get_every_group_and_mirror_peers_get_it_by_flood() -> None:
    net = McastNet(4)
    a, b, c, mon = net.ports
    net.switch.set_mirror(mon, True)
    net.switch.from_local(a, igmp2_report(mac(1)))
    net.switch.from_peer(igmp2_report(mac(7)), PEER_B)
    net.clear()
    f = data4(mac(3))
    net.switch.from_local(c, f)
    assert a.frames == [f] and mon.frames == [f] and b.frames == []
    assert net.sent == [(PEER_B, f)] and net.flooded == []
    net.switch.set_mirror_peers(True)  # some node has a `tok monitor`: every peer gets it once
    net.clear()
    net.switch.from_local(c, f)
    assert net.flooded == [f] and net.sent == []


def test_offloaded_multicast_goes_to_members_too() -> None:
    net = McastNet()
    a, b, c = net.ports
    net.switch.packet_from_local(a, NO_OFFLOAD + igmp3_report(mac(1)))
    net.switch.packet_from_peer(NO_OFFLOAD + mld2_report(mac(7)), PEER_B)
    net.clear()
    p = NO_OFFLOAD + data4(mac(3))
    net.switch.packet_from_local(c, p)
    assert a.frames == [p[len(NO_OFFLOAD) :]] and b.frames == [] and net.flooded == []
    p6 = NO_OFFLOAD + data6(mac(3))
    net.switch.packet_from_local(c, p6)
    assert net.sent == [(PEER_B, p6)]


def test_a_closed_port_loses_its_memberships() -> None:
    net = McastNet()
    a = net.ports[0]
    net.switch.from_local(a, igmp2_report(mac(1)))
    net.switch.remove(0)
    assert net.switch.mcast.groups == {} and not net.switch.mcast.per_member


def test_bounds_stop_recording_and_count_never_evicting() -> None:
    table = Multicast(max_groups=4, max_member_groups=2)
    net = McastNet()
    net.switch.mcast = table
    a, b, c = net.ports
    for i in range(3):
        net.switch.from_local(a, igmp2_report(mac(1), f"239.0.0.{i + 1}"))
    assert table.per_member[a] == 2 and table.counters["member_full"] == 1
    for i in range(3):
        net.switch.from_local(b, igmp2_report(mac(2), f"239.0.1.{i + 1}"))
    assert len(table.groups) == 4 and table.counters["groups_full"] == 1
    # a's memberships survived b's flood of reports
    net.clear()
    f = data4(mac(3), "239.0.0.1")
    net.switch.from_local(c, f)
    assert a.frames == [f] and b.frames == []


def test_malformed_reports_are_counted_and_flood() -> None:
    net = McastNet()
    a, b, _ = net.ports
    good = igmp3_report(mac(1))
    bad = good[:-3]  # the record cut short
    net.switch.from_local(a, bad)
    assert b.frames == [] and net.flooded == [bad]  # to the peers, who count it too
    assert net.switch.mcast.counters["bad"] == 1
    assert net.switch.mcast.groups == {}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            igmp2_report(mac(1)),
            igmp3_report(mac(1), sources=2),
            mld1_report(mac(1)),
            mld2_report(mac(1), sources=1),
            mld1_done(mac(1)),
            data4(mac(1)),
            data6(mac(1)),
        ]
    ),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(14, 200),
)
def test_snooping_never_raises_and_stays_bounded(seed: bytes, flips, cut: int) -> None:
    frame = bytearray(seed)
    for at, value in flips:
        if at < len(frame):
            frame[at] = value
    table = Multicast(max_groups=8, max_member_groups=4)
    members = table.forward(bytes(frame[: max(cut, 14)]), 0, "port", 0.0)
    assert members is None or isinstance(members, dict)
    assert len(table.groups) <= 8


def test_the_querier_sends_valid_igmpv3_and_mldv2_general_queries() -> None:
    from ipaddress import IPv4Address, IPv6Address

    v4 = Ether(igmp_query(GW_MAC, IPv4Address("10.0.0.1")))
    assert v4[IP].dst == "224.0.0.1" and v4[IP].ttl == 1 and v4[IP].src == "10.0.0.1"
    assert v4[IP].options[0].option == 20  # Router Alert
    q = v4[IGMPv3_MQ]
    assert q.type == 0x11 and q.gaddr == "0.0.0.0" and q.qqic == 125 and q.mrcode == 100
    rebuilt = Ether(igmp_query(GW_MAC, IPv4Address("10.0.0.1")))
    rebuilt[IP].chksum = None
    rebuilt[IGMPv3_MQ].chksum = None
    assert bytes(rebuilt) == bytes(v4), "IP and IGMP checksums as scapy computes them"

    ll = IPv6Address("fe80::aa")
    v6 = Ether(mld_query(GW_MAC, ll))
    assert v6[IPv6].src == "fe80::aa" and v6[IPv6].dst == "ff02::1" and v6[IPv6].hlim == 1
    assert v6[IPv6ExtHdrHopByHop].options[0].otype == 5  # Router Alert
    mq = v6[ICMPv6MLQuery2]
    assert mq.mladdr == "::" and mq.mrd == 10000
    rebuilt6 = Ether(mld_query(GW_MAC, ll))
    rebuilt6[ICMPv6MLQuery2].cksum = None
    assert bytes(rebuilt6) == bytes(v6)


def test_the_querier_keeps_its_schedule() -> None:
    from ipaddress import IPv4Address, IPv6Address

    q = Querier(GW_MAC, IPv4Address("10.0.0.1"), IPv6Address("fe80::aa"), now=100.0)
    assert q.poll(100.0) == []
    first = q.poll(100.0 + FIRST_QUERY)
    assert len(first) == 2
    assert q.poll(100.0 + FIRST_QUERY + 1) == []
    second_at = q.next_at
    assert second_at - (100.0 + FIRST_QUERY) == pytest.approx(QUERY_INTERVAL / 4)
    assert len(q.poll(second_at)) == 2
    assert q.next_at - second_at == pytest.approx(QUERY_INTERVAL)
    assert q.sent == 2


async def test_a_node_queries_its_ports_and_follows_the_snooping_setting(world: World) -> None:
    """The node's runtime: snooping on by default, the gateway's queries reach local ports
    (both, and only after FIRST_QUERY), and a settings event turns snooping off live."""
    _core, runtime, _sent = node(world)
    a = Capture("a")
    runtime.add_port("a", a)
    assert runtime.switch.mcast is not None
    runtime.poll_gateway(NOW)
    runtime.poll_gateway(NOW + FIRST_QUERY + 0.5)
    # IGMP (IPv4 protocol 2) or behind a hop-by-hop header (MLD): not the gateway's RAs
    frames = a.take()
    igmp = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 2]
    mld = [f for f in frames if f[12:14] == b"\x86\xdd" and f[20] == 0]
    got = igmp + mld
    assert sorted(f[:6] for f in got) == sorted([ALL_NODES_MAC, ALL_SYSTEMS_MAC])
    await world.chain.append(Kind.SETTINGS, {"snooping": False}, world.owner_signer)
    runtime.apply_state(world.chain.state, NOW + 5)
    assert runtime.switch.mcast is None and runtime.querier is None
    await world.chain.append(Kind.SETTINGS, {"snooping": True}, world.owner_signer)
    runtime.apply_state(world.chain.state, NOW + 6)
    assert runtime.switch.mcast is not None


ALL_SYSTEMS_MAC = bytes.fromhex("01005e000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")


async def test_groups_show_in_status_fdb_view_and_metrics(world: World) -> None:
    core, runtime, _sent = node(world)
    a = Capture("a")
    runtime.add_port("a", a)
    runtime.switch.now = NOW
    runtime.switch.from_local(a, igmp3_report(mac(1)))
    runtime.switch.from_local(a, mld2_report(mac(1)))
    status = runtime.status()["mcast"]
    assert status["snooping"] is True and status["groups"] == 2
    assert status["counters"]["joins"] == 2
    view = runtime.fdb_view(NOW + 1)
    assert [(g["group"], [m["member"] for m in g["members"]]) for g in view["groups"]] == [
        (GROUP4, ["port a"]),
        (GROUP6, ["port a"]),
    ]
    metrics = exposition(registry(core.status)).decode()
    assert re.search(r'atenet_mcast_groups\{network="office",[^}]*\} 2\.0', metrics), metrics
    assert re.search(r'atenet_mcast_total\{[^}]*what="joins"\} 2\.0', metrics)


def test_a_member_past_its_bound_still_gets_groups_others_registered() -> None:
    """A port (or node) whose join was not recorded (its own bound) must not miss the group
    when someone else registered it: it gets every registered group instead."""
    table = Multicast(max_member_groups=2)
    net = McastNet()
    net.switch.mcast = table
    a, b, c = net.ports
    net.switch.from_local(b, igmp2_report(mac(2), "239.0.0.9"))  # b registers the group
    for i in range(2):
        net.switch.from_local(a, igmp2_report(mac(1), f"239.0.0.{i + 1}"))
        net.switch.from_peer(igmp2_report(mac(7), f"239.0.0.{i + 1}"), PEER_B)
    net.switch.from_local(a, igmp2_report(mac(1), "239.0.0.9"))  # a's third: not recorded
    net.switch.from_peer(igmp2_report(mac(7), "239.0.0.9"), PEER_B)  # B's third: neither
    assert table.counters["member_full"] == 2 and a not in table.groups[bytes([239, 0, 0, 9])]
    net.clear()
    f = data4(mac(3), "239.0.0.9")
    net.switch.from_local(c, f)
    assert a.frames == [f] and b.frames == [f] and net.sent == [(PEER_B, f)]
    net.switch.remove(0)  # a closes: nothing of it stays
    assert a not in table.everything


async def test_a_member_node_whose_heartbeat_ran_out_gets_nothing_and_nobody_a_flood(
    world: World, monkeypatch
) -> None:
    from tests.test_learning import CountingWire
    from tests.test_node_core import build

    monkeypatch.setattr("tests.test_node_core.Wire", CountingWire)
    wire, nodes, clients = await build(world, 3, 1)
    net = world.chain.network_id
    (a_addr, a), (b_addr, b), (c_addr, c) = clients
    node_a, node_b, node_c = (("10.0.0.1", 4799), ("10.0.0.2", 4799), ("10.0.0.3", 4799))
    for addr, client, n in ((b_addr, b, 2), (c_addr, c, 3)):
        wire.sender(addr)(client.seal_frame(igmp2_report(mac(n))), client.node)
    wire.run(1000.0)
    runtime = nodes[0].networks[net]
    runtime.switch.now = 1000.0
    wire.count.clear()
    wire.sender(a_addr)(a.seal_frame(data4(mac(1))), a.node)
    wire.run(1000.0)
    assert wire.count[(node_a, node_b)] == 1 and wire.count[(node_a, node_c)] == 1
    runtime.alive_until[nodes[1].node_id] = 1000.5
    runtime.refresh_peers(1001.0)  # B's heartbeat ran out; its membership has not yet
    runtime.switch.now = 1001.0
    wire.count.clear()
    wire.sender(a_addr)(a.seal_frame(data4(mac(1))), a.node)
    wire.run(1001.0)
    assert wire.count[(node_a, node_b)] == 0
    assert wire.count[(node_a, node_c)] == 1  # once: not a flood to all for the dead member


def test_reports_reach_multicast_routers_and_mirrors_but_not_other_hosts() -> None:
    """A local port that sent a query (a multicast router behind it) gets the reports, as does
    a mirror port; a host does not (its own IGMPv2 report would be suppressed)."""
    net = McastNet(4)
    host_a, host_b, router, mon = net.ports
    net.switch.set_mirror(mon, True)
    query = bytes(
        Ether(dst="01:00:5e:00:00:01", src=mac(9).hex(":"))
        / IP(src="10.0.0.9", dst="224.0.0.1", ttl=1, options=[b"\x94\x04\x00\x00"])
        / IGMPv3_MQ(gaddr="0.0.0.0")
    )  # fmt: skip
    net.switch.from_local(router, query)
    assert host_a.frames == [query] and host_b.frames == [query]  # queries flood
    net.clear()
    r = igmp2_report(mac(1))
    net.switch.from_local(host_a, r)
    assert router.frames == [r] and mon.frames == [r] and net.flooded == [r]
    assert host_b.frames == []
    net.switch.remove(2)  # the router's port closes: no longer remembered
    assert not net.switch.mcast.routers
