"""The network's internet settings (issue 13) and the routes clients are given for them.

``internet`` (off by default) decides whether DHCP (option 3, and 0.0.0.0/0 in option 121)
and the router advertisements (router lifetime > 0) offer the gateway as the default router;
either way clients get routes to the routed networks (option 121, RFC 4191 Route Information
options). The node follows a settings event live, and ``atenet run --no-nat`` overrides the
chain. Sans-I/O: frames in, frames out, with a real chain where the node reads one.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

import pytest
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, raw  # type: ignore[attr-defined]
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptRouteInfo

from atenet.chain import rules
from atenet.chain.event import Kind
from atenet.node.core import NodeCore
from atenet.router.dhcp import DhcpServer, Send
from atenet.router.gateway import Gateway
from atenet.router.ra import MAX_ROUTE_INFO
from atenet.switch.core import Port
from atenet.wire import dhcp as d
from tests.support.chains import World

NET_ID = bytes(range(16))
CIDR, CIDR6 = "10.66.0.0/24", "fd66:1:2:3::/64"
GW = IPv4Address("10.66.0.1")
OTHER4, OTHER6 = IPv4Network("10.67.0.0/24"), IPv6Network("fd67:1:2:3::/64")
MAC = bytes.fromhex("02aa00000007")
NOW = time.time()


def inform(params: bytes = bytes((1, 3, 6, 121))) -> bytes:
    """A DHCPINFORM from a host with an address that asks for ``params`` (option 55)."""
    pkt = (
        Ether(src=MAC.hex(":"), dst="ff:ff:ff:ff:ff:ff")
        / IP(src="10.66.0.50", dst=str(GW))
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, xid=7, chaddr=MAC + bytes(10), ciaddr="10.66.0.50")
        / DHCP(options=[("message-type", "inform"), ("param_req_list", list(params)), "end"])
    )
    return raw(pkt)


def answer_options(actions: list[Any]) -> dict[int, bytes]:
    (send,) = actions
    assert isinstance(send, Send)
    reply = d.parse_dhcp_reply(send.frame)
    assert reply is not None
    return reply.message.options


def server(default_route: bool, routes: tuple[IPv4Network, ...] = ()) -> DhcpServer:
    srv = DhcpServer(NET_ID, CIDR, GW, b"\x02" * 6, 1400, default_route=default_route)
    srv.classless_routes = routes
    return srv


# --- DHCP -------------------------------------------------------------------------------------


def test_dhcp_without_internet_gives_no_router_and_only_the_routed_networks() -> None:
    opts = answer_options(server(False, (OTHER4,)).frame(inform(), NOW))
    assert d.OPT_ROUTER not in opts
    assert opts[d.OPT_SUBNET_MASK] == IPv4Address("255.255.255.0").packed  # the network's route
    assert d.parse_classless_routes(opts[d.OPT_CLASSLESS_ROUTES]) == [(OTHER4, GW)]
    # No routed network: no option 121 either, so nothing at all through the gateway.
    opts = answer_options(server(False).frame(inform(), NOW))
    assert d.OPT_ROUTER not in opts and d.OPT_CLASSLESS_ROUTES not in opts


def test_dhcp_with_internet_gives_the_router_and_the_default_route_in_option_121() -> None:
    opts = answer_options(server(True, (OTHER4,)).frame(inform(), NOW))
    assert opts[d.OPT_ROUTER] == GW.packed
    # RFC 3442: a client given option 121 ignores option 3, so the default route is in it too.
    routes = d.parse_classless_routes(opts[d.OPT_CLASSLESS_ROUTES])
    assert routes == [(IPv4Network("0.0.0.0/0"), GW), (OTHER4, GW)]
    # A client that does not ask for option 121 gets option 3 alone.
    opts = answer_options(server(True, (OTHER4,)).frame(inform(bytes((1, 3, 6))), NOW))
    assert opts[d.OPT_ROUTER] == GW.packed and d.OPT_CLASSLESS_ROUTES not in opts


# --- router advertisements ----------------------------------------------------------------------


def ra_of(gw: Gateway, now: float = 0.0) -> Ether:
    (frame,) = gw.poll(now)
    return Ether(frame)


def route_infos(ra: Ether) -> list[tuple[str, int, int]]:
    out, layer = [], ra.getlayer(ICMPv6NDOptRouteInfo)
    while layer is not None:
        out.append((f"{layer.prefix}/{layer.plen}", layer.prf, layer.rtlifetime))
        layer = layer.payload.getlayer(ICMPv6NDOptRouteInfo)
    return out


@pytest.mark.parametrize("internet", [False, True])
def test_ra_lifetime_follows_internet_and_routed_networks_go_in_route_information(
    internet: bool,
) -> None:
    gw = Gateway(NET_ID, CIDR, CIDR6, 1400, default_route=internet)
    gw.add_route(OTHER6, lambda *a: None, 1400)
    gw.add_route(OTHER4, lambda *a: None, 1400)  # IPv4: never in an RA
    gw.add_route(IPv6Network("fd68::/48"), lambda *a: None, 1400)
    gw.add_route(IPv6Network("fd69:1:2:3:4::/80"), lambda *a: None, 1400)
    ra = ra_of(gw)
    assert (ra[ICMPv6ND_RA].routerlifetime > 0) is internet
    infos = route_infos(ra)
    assert sorted(infos) == [
        ("fd67:1:2:3::/64", 0, 1800),
        ("fd68::/48", 0, 1800),
        ("fd69:1:2:3:4::/80", 0, 1800),
    ]


def test_ra_route_information_is_bounded() -> None:
    gw = Gateway(NET_ID, CIDR, CIDR6, 1400)
    for i in range(MAX_ROUTE_INFO + 5):
        gw.add_route(IPv6Network(f"fd70:{i:x}::/64"), lambda *a: None, 1400)
    (frame,) = gw.poll(0.0)
    assert len(route_infos(Ether(frame))) == MAX_ROUTE_INFO and len(frame) < 1280
    assert gw.drops["ra_routes_left_out"] == 5


# --- the chain's rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, why",
    [
        ({"internet": 1}, "internet is not true or false"),
        ({"nat_private": "on"}, "nat_private is not true or false"),
        ({"nat_private": None}, "nat_private is not true or false"),
    ],
)
def test_settings_flags_must_be_booleans(body: dict[str, Any], why: str) -> None:
    with pytest.raises(rules.BodyError, match=why):
        rules.check_body(Kind.SETTINGS, body)


# --- the node follows the chain live ------------------------------------------------------------


class Capture(Port):
    def __init__(self) -> None:
        super().__init__("host", "test", NOW)
        self.got: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.got.append(frame)


def node_answers(runtime: Any, port: Capture) -> tuple[dict[int, bytes], int]:
    """Ask the node's DHCP server (an INFORM from ``port``) and take its next multicast RA:
    (the DHCP options, the RA's router lifetime)."""
    gw = runtime.gateway.ipv4
    frame = bytes(inform())
    pkt = Ether(frame)
    pkt[BOOTP].ciaddr = pkt[IP].src = str(gw + 49)
    pkt[IP].dst = str(gw)
    del pkt[IP].chksum, pkt[UDP].chksum
    port.got.clear()
    runtime.switch.from_local(port, runtime.gateway.mac + raw(pkt)[6:])
    (answer,) = port.got
    reply = d.parse_dhcp_reply(answer)
    assert reply is not None
    port.got.clear()
    runtime.poll_gateway(max(NOW, runtime.gateway.poll_at()))  # the next one due
    ras = [Ether(f) for f in port.got if Ether(f).haslayer(ICMPv6ND_RA)]
    assert ras, "no router advertisement"
    return reply.message.options, ras[-1][ICMPv6ND_RA].routerlifetime


async def test_the_node_follows_internet_live_and_no_nat_overrides_the_chain(world: World) -> None:
    cores = {
        nat: NodeCore("node-a", lambda p, a: None, time.time_ns(), clock=lambda: NOW, nat=nat)
        for nat in (True, False)
    }
    runtimes = {nat: core.add_network(world.chain.network_id) for nat, core in cores.items()}
    ports = {nat: Capture() for nat in cores}
    for nat, runtime in runtimes.items():
        runtime.apply_state(world.chain.state, NOW)
        runtime.add_port("host", ports[nat])
        assert runtime.internet is False
        opts, lifetime = node_answers(runtime, ports[nat])
        assert d.OPT_ROUTER not in opts and lifetime == 0

    # The owner turns it on: one settings event, handed to both nodes as they follow the chain.
    await world.chain.append(Kind.SETTINGS, {"internet": True}, world.owner_signer)
    assert world.chain.state.settings.internet and not world.chain.state.settings.nat_private
    for nat, runtime in runtimes.items():
        runtime.apply_state(world.chain.state, NOW)
        assert runtime.internet is nat  # --no-nat: the operator's word wins
        opts, lifetime = node_answers(runtime, ports[nat])
        assert (opts.get(d.OPT_ROUTER) == runtime.gateway.ipv4.packed) is nat
        assert (lifetime > 0) is nat

    # And off again.
    await world.chain.append(Kind.SETTINGS, {"internet": False}, world.owner_signer)
    runtime = runtimes[True]
    runtime.apply_state(world.chain.state, NOW)
    opts, lifetime = node_answers(runtime, ports[True])
    assert runtime.internet is False and d.OPT_ROUTER not in opts and lifetime == 0
