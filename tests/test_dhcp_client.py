"""The sans-I/O DHCPv4 client (client/dhcp.py), driven frame by frame against the real server
core (router/dhcp.py DhcpServer), with the chain stood in by a list: every Bind the server
emits is appended with the next sequence number and fed back through apply_bindings, as the
node does. The clock is the tests' own.
"""

from __future__ import annotations

import itertools
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet.addressing import ipv4_for
from atenet.client.dhcp import (
    BOUND,
    REBINDING,
    RENEWING,
    REQUESTING,
    SELECTING,
    STOPPED,
    ClientLease,
    DhcpClient,
    Event,
    Send,
)
from atenet.errors import DecodeError
from atenet.router.dhcp import Bind, DhcpServer, Lease
from atenet.router.dhcp import Send as ServerSend
from atenet.wire import dhcp as d
from atenet.wire.ethernet import BROADCAST_MAC
from tests.test_dhcp import CIDR, GW_IP, GW_MAC, NET_ID

MAC = bytes.fromhex("02aa00000001")
OTHER = bytes.fromhex("02aa00000002")
MTU = 1400
T0 = 1_800_000_000.0


def server(**kw: Any) -> DhcpServer:
    return DhcpServer(NET_ID, CIDR, GW_IP, GW_MAC, MTU, node_id=kw.pop("node_id", "n1"), **kw)


def client(**kw: Any) -> DhcpClient:
    kw.setdefault("jitter", 0.0)
    return DhcpClient(MAC, host=kw.pop("host", "box"), rng=random.Random(7), **kw)


class Chain:
    """The chain as a list of lease records."""

    def __init__(self) -> None:
        self.records: list[Lease] = []

    def append(self, bind: Bind) -> Lease:
        rec = Lease.from_bind(len(self.records) + 1, bind)
        self.records.append(rec)
        return rec


class Wire:
    """One client, one server, one chain: moves every frame and binding until nothing moves."""

    def __init__(self, cl: DhcpClient, srv: DhcpServer, chain: Chain | None = None) -> None:
        self.cl, self.srv, self.chain = cl, srv, chain or Chain()
        self.events: list[Event] = []
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.binds: list[Bind] = []
        self.silent = False
        """The server hears nothing (it is down, or the overlay lost the frames)."""

    def run(self, actions: list[Any], now: float) -> list[Event]:
        """Deliver ``actions`` (the client's) and everything they cause; the new events."""
        start = len(self.events)
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Event):
                self.events.append(action)
                continue
            assert isinstance(action, Send)
            self.to_server.append(action.frame)
            if self.silent:
                continue
            for out in self.srv.frame(action.frame, now, port="tap"):
                pending.extend(self._from_server(out, now))
        return self.events[start:]

    def _from_server(self, out: Any, now: float) -> list[Any]:
        if isinstance(out, Bind):
            self.binds.append(out)
            rec = self.chain.append(out)
            result: list[Any] = []
            for back in self.srv.apply_bindings([rec], now):
                result.extend(self._from_server(back, now))
            return result
        assert isinstance(out, ServerSend)
        self.to_client.append(out.frame)
        return self.cl.frame(out.frame, now)

    def tick(self, now: float) -> list[Event]:
        return self.run(self.cl.tick(now), now)


def bound(now: float = T0) -> tuple[Wire, ClientLease]:
    wire = Wire(client(), server())
    (event,) = wire.run(wire.cl.start(now), now)
    assert event.kind == "bound" and event.lease is not None
    return wire, event.lease


def sent(wire: Wire, i: int = -1) -> tuple[d.ClientFrame, Any]:
    """The client's ``i``-th frame, parsed (as the server sees it) and its addresses."""
    cf = d.parse_dhcp_frame(wire.to_server[i])
    assert cf is not None
    return cf, cf.message


def test_full_exchange_binds_the_hashed_address_with_every_option() -> None:
    wire, lease = bound()
    assert lease.interface == ipv4_for(NET_ID, MAC, CIDR)  # DHCP and the static scheme agree
    assert lease.router == GW_IP and lease.server == GW_IP and lease.server_mac == GW_MAC
    assert lease.dns == (IPv4Address("8.8.8.8"),) and lease.mtu == MTU
    assert (lease.lease_time, lease.t1, lease.t2) == (3600, 1800, 3150)
    assert lease.expires == T0 + 3600
    assert wire.cl.state == BOUND and wire.cl.deadline == T0 + 1800
    # DISCOVER and REQUEST, both broadcast from 0.0.0.0; one binding in the chain, with the
    # host name the client sent.
    assert len(wire.to_server) == 2 and len(wire.to_client) == 2
    request = sent(wire)
    assert (
        request[0].dst_ip == IPv4Address("255.255.255.255") and request[0].dst_mac == BROADCAST_MAC
    )
    assert request[1].ip_option(d.OPT_SERVER_ID) == GW_IP
    assert [r.host for r in wire.chain.records] == ["box"]
    assert wire.cl.counters["malformed"] == wire.cl.counters["foreign"] == 0


def test_renewal_at_t1_is_unicast_to_the_server_and_writes_no_binding() -> None:
    wire, lease = bound()
    assert wire.tick(T0 + 1799) == []  # nothing before T1
    (event,) = wire.tick(T0 + 1800)
    assert event.kind == "renewed" and event.lease is not None
    cf, msg = sent(wire)
    assert (cf.src_ip, cf.dst_ip, cf.dst_mac) == (lease.address, GW_IP, GW_MAC)
    assert msg.ciaddr == lease.address and d.OPT_SERVER_ID not in msg.options
    assert len(wire.chain.records) == 1  # answered from the table: no new event
    assert event.lease.expires == T0 + 1800 + 3600
    assert wire.cl.state == BOUND and wire.cl.deadline == T0 + 1800 + 1800


def test_a_silent_server_at_t1_gets_retries_then_a_broadcast_at_t2() -> None:
    wire, lease = bound()
    wire.silent = True
    before = len(wire.to_server)
    wire.tick(T0 + 1800)
    assert wire.cl.state == RENEWING
    # Next try after half the time left to T2 (675 s), then 337.5 s, ...; at least 60 s.
    assert wire.cl.deadline == T0 + 1800 + 675
    wire.tick(T0 + 2475)
    assert wire.cl.deadline == T0 + 2475 + 337.5
    t = wire.cl.deadline
    while t < lease.rebind_at:
        wire.tick(t)
        t = wire.cl.deadline
    assert all(sent(wire, i)[0].dst_ip == GW_IP for i in range(before, len(wire.to_server)))
    assert t == lease.rebind_at  # the last retry of RENEWING waits exactly until T2
    wire.silent = False
    (event,) = wire.tick(t)
    assert event.kind == "renewed"
    cf, msg = sent(wire)
    assert cf.dst_ip == IPv4Address("255.255.255.255") and msg.ciaddr == lease.address
    assert len(wire.chain.records) == 1


def test_lease_expiry_with_a_silent_server_loses_the_address_and_starts_over() -> None:
    wire, lease = bound()
    wire.silent = True
    t = T0 + 1800
    states = set()
    while True:
        events = wire.tick(t)
        states.add(wire.cl.state)
        if events:
            break
        t = wire.cl.deadline
    assert {RENEWING, REBINDING} <= states
    assert t == lease.expires
    assert [(e.kind, e.reason) for e in events] == [("lost", "expired")]
    assert wire.cl.state == SELECTING and wire.cl.lease is None
    assert sent(wire)[1].message_type == d.DHCPDISCOVER


def test_server_silence_gives_backed_off_retransmits_then_one_no_answer() -> None:
    wire = Wire(client(), server())
    wire.silent = True
    wire.run(wire.cl.start(T0), T0)
    times = [T0]
    events: list[Event] = []
    while len(times) < 9:
        t = wire.cl.deadline
        events += wire.tick(t)
        times.append(t)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [1, 2, 4, 8, 16, 32, 64, 64]  # doubling, capped at 64 s
    assert len(wire.to_server) == 9
    assert all(sent(wire, i)[1].message_type == d.DHCPDISCOVER for i in range(9))
    # Told once, at the deadline after the third DISCOVER: 7 s after the start.
    assert [(e.kind, e.reason) for e in events] == [("no_answer", "no offer after 3 tries")]
    assert wire.cl.state == SELECTING


def test_jitter_varies_the_retransmit_times_within_bounds() -> None:
    cl = DhcpClient(MAC, rng=random.Random(3))
    cl.start(T0)
    waits = []
    for _ in range(5):
        t = cl.deadline
        waits.append(t)
        cl.tick(t)
    gaps = [b - a for a, b in itertools.pairwise([T0, *waits])]
    for i, gap in enumerate(gaps):
        assert 0.9 * 2**i <= gap <= 1.1 * 2**i


def test_nak_at_renewal_loses_the_address_and_a_new_exchange_gets_another() -> None:
    wire, lease = bound()
    # Another node's server, whose chain gave this address to another MAC (say the binding
    # lapsed while this host was away): at T2 the client rebinds there and is refused.
    chain = Chain()
    other = server(node_id="n2")
    rec = chain.append(Bind(OTHER, lease.address, "", "n2", T0 + 86400))
    other.apply_bindings([rec], T0)
    wire.srv, wire.chain = other, chain
    wire.cl.state, wire.cl.deadline = REBINDING, lease.rebind_at
    wire.cl.xid = 99
    events = wire.tick(lease.rebind_at)
    assert events[0].kind == "lost" and events[0].reason.startswith("nak: address is bound")
    assert events[0].lease == lease
    assert events[1].kind == "bound" and events[1].previous is None
    new = events[1].lease
    assert new is not None and new.address != lease.address
    assert new.address == IPv4Address(int(lease.address) + 1)  # the next free one
    assert wire.cl.counters["naks"] == 1 and wire.cl.state == BOUND


def test_nak_while_requesting_goes_back_to_discover() -> None:
    srv, chain = server(), Chain()
    wire = Wire(client(), srv, chain)
    wire.silent = True
    wire.run(wire.cl.start(T0), T0)
    # The server offers; before the REQUEST arrives, the chain binds that address to another
    # MAC (another node's client won it).
    (offer,) = srv.frame(wire.to_server[-1], T0, port="tap")
    assert isinstance(offer, ServerSend)
    wire.silent = False
    actions = wire.cl.frame(offer.frame, T0)
    assert wire.cl.state == REQUESTING
    offered = d.parse_dhcp_reply(offer.frame)
    assert offered is not None
    srv.apply_bindings([chain.append(Bind(OTHER, offered.message.yiaddr, "", "n2", T0 + 9e4))], T0)
    events = wire.run(actions, T0)
    # NAK → DISCOVER at once (new xid) → the next free address, bound.
    assert [e.kind for e in events] == ["bound"]
    assert wire.cl.counters["naks"] == 1
    lease = events[0].lease
    assert lease is not None and lease.address != offered.message.yiaddr
    xids = [sent(wire, i)[1].xid for i in range(len(wire.to_server))]
    assert len(set(xids)) == 2


def test_no_ack_while_requesting_retries_then_starts_over() -> None:
    srv = server()
    wire = Wire(client(request_tries=3), srv)
    wire.silent = True
    cl = wire.cl
    wire.run(cl.start(T0), T0)
    (offer,) = srv.frame(wire.to_server[-1], T0, port="tap")
    wire.run(cl.frame(offer.frame, T0), T0)
    assert cl.state == REQUESTING
    for _ in range(3):
        wire.tick(cl.deadline)
    assert cl.state == SELECTING and cl.counters["restarts"] == 1
    kinds = [sent(wire, i)[1].message_type for i in range(len(wire.to_server))]
    assert kinds == [d.DHCPDISCOVER] + [d.DHCPREQUEST] * 3 + [d.DHCPDISCOVER]


def test_release_on_stop_writes_an_expired_binding() -> None:
    wire, lease = bound()
    actions = wire.cl.release(T0 + 10)
    assert [type(a) for a in actions] == [Send, Event]
    wire.run(actions, T0 + 10)
    cf, msg = sent(wire)
    assert msg.message_type == d.DHCPRELEASE and msg.ciaddr == lease.address
    assert (cf.dst_ip, cf.dst_mac) == (GW_IP, GW_MAC)
    assert len(wire.chain.records) == 2 and wire.chain.records[-1].expires == T0 + 10
    assert wire.cl.state == STOPPED and wire.cl.tick(T0 + 1e6) == []


def ack(
    cl: DhcpClient, yiaddr: str, *, server_id: IPv4Address | None = GW_IP, **opts: bytes | None
) -> bytes:
    """A hand-made ACK for ``cl``'s current xid; ``opts``: option code (as ``o121``) → value
    (None: leave the option out)."""
    options = {d.OPT_MESSAGE_TYPE: bytes((d.DHCPACK,)), d.OPT_LEASE_TIME: d.opt_u32(600)}
    if server_id is not None:
        options[d.OPT_SERVER_ID] = server_id.packed
    options[d.OPT_SUBNET_MASK] = IPv4Address("255.255.255.0").packed
    for key, value in opts.items():
        if value is None:
            options.pop(int(key[1:]), None)
        else:
            options[int(key[1:])] = value
    msg = d.DhcpMessage(
        op=d.BOOTREPLY, xid=cl.xid, chaddr=cl.mac, yiaddr=IPv4Address(yiaddr), options=options
    )
    return d.dhcp_frame(
        msg.emit(), src_mac=GW_MAC, dst_mac=cl.mac, src_ip=GW_IP, dst_ip=IPv4Address(yiaddr)
    )


def requesting() -> DhcpClient:
    cl = client()
    (discover,) = cl.start(T0)
    assert isinstance(discover, Send)
    (offer,) = server().frame(discover.frame, T0, port="tap")
    cl.frame(offer.frame, T0)
    assert cl.state == REQUESTING
    return cl


def test_option_121_routes_are_taken_and_a_bad_one_is_dropped_and_counted() -> None:
    routes = [
        (IPv4Network("10.2.0.0/24"), GW_IP),
        (IPv4Network("172.16.0.0/12"), GW_IP),
        (IPv4Network("0.0.0.0/0"), GW_IP),
    ]
    value = d.opt_classless_routes(routes)
    assert value[:4] == bytes((24, 10, 2, 0))  # RFC 3442: only the significant octets
    assert d.parse_classless_routes(value) == routes
    cl = requesting()
    (event,) = cl.frame(ack(cl, "10.77.3.9", o121=value), T0)
    assert event.lease is not None and event.lease.routes == tuple(routes)
    assert event.lease.fields()["routes"][0] == "10.2.0.0/24 via 10.77.3.1"
    cl = requesting()
    (event,) = cl.frame(ack(cl, "10.77.3.9", o121=value[:-2]), T0)  # cut short
    assert event.kind == "bound" and event.lease is not None and event.lease.routes == ()
    assert cl.counters["bad_routes"] == 1


def test_replies_not_for_us_are_counted_and_change_nothing() -> None:
    cl = requesting()
    good = ack(cl, "10.77.3.9")
    wrong_xid = DhcpClient(cl.mac, rng=random.Random(1))
    wrong_xid.xid = cl.xid ^ 1
    other_mac = DhcpClient(OTHER, rng=random.Random(1))
    other_mac.xid = cl.xid
    bad_sum = bytearray(good)
    bad_sum[-1] ^= 0xFF  # UDP checksum no longer matches
    for frame in (
        ack(wrong_xid, "10.77.3.9"),
        ack(other_mac, "10.77.3.9"),
        bytes(bad_sum),
        good[:60],
        ack(cl, "10.77.3.9", server_id=IPv4Address("10.77.3.200")),  # not the chosen server
        ack(cl, "0.0.0.0"),
        ack(cl, "10.77.3.255"),  # the broadcast address
        ack(cl, "10.77.3.9", o1=b"\xff\x00\xff\x00"),  # a mask that is not contiguous
        ack(cl, "10.77.3.9", o51=b"\x01"),  # lease time of one byte
    ):
        assert cl.frame(frame, T0) == []
        assert cl.state == REQUESTING and cl.lease is None
    c = cl.counters
    assert (c["foreign"], c["malformed"], c["unexpected"]) == (2, 6, 1)
    (event,) = cl.frame(good, T0)
    assert event.kind == "bound"


def test_a_changed_address_at_renewal_is_a_new_bound_event_naming_the_old() -> None:
    wire, lease = bound()
    cl = wire.cl
    cl.tick(T0 + 1800)
    (event,) = cl.frame(ack(cl, "10.77.3.77"), T0 + 1800)
    assert event.kind == "bound" and event.previous == lease
    assert event.lease is not None and str(event.lease.interface) == "10.77.3.77/24"


def _offer_frame() -> bytes:
    (discover,) = client().start(T0)
    (offer,) = server().frame(discover.frame, T0, port="tap")
    return offer.frame


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    truncate=st.integers(0, 400),
)
def test_fuzz_mutated_replies_never_raise_or_bind_garbage(
    cuts: list[tuple[int, int]], truncate: int
) -> None:
    cl = client()
    cl.start(T0)
    frame = bytearray(_offer_frame())
    for pos, value in cuts:
        if pos < len(frame):
            frame[pos] = value
    data = bytes(frame[: len(frame) - truncate % 40])
    cl.frame(data, T0)  # never raises
    assert cl.state in (SELECTING, REQUESTING)
    if cl.state == REQUESTING:
        assert cl._offer is not None and not cl._offer.address.is_multicast


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_option_121_never_raises_anything_but_decode_error(value: bytes) -> None:
    try:
        routes = d.parse_classless_routes(value)
    except DecodeError:
        return
    assert d.opt_classless_routes(routes) == value


def test_an_address_or_mask_outside_the_announced_network_is_refused() -> None:
    # The node announced 10.77.3.0/24; a reply that would put another network (or, with a
    # mask of 0.0.0.0, everything) behind the TAP is dropped and counted.
    cl = requesting()
    cl.network = IPv4Network(CIDR)
    for frame in (
        ack(cl, "10.99.0.5"),
        ack(cl, "10.77.3.9", o1=IPv4Address("0.0.0.0").packed),
        ack(cl, "10.77.3.9", o1=IPv4Address("255.255.0.0").packed),
    ):
        assert cl.frame(frame, T0) == [] and cl.state == REQUESTING
    assert cl.counters["outside"] == 3
    (event,) = cl.frame(ack(cl, "10.77.3.9", o1=None), T0)  # no mask: the network's
    assert event.lease is not None and str(event.lease.interface) == "10.77.3.9/24"
    fresh = DhcpClient(MAC, network=IPv4Network(CIDR), rng=random.Random(7))
    (discover,) = fresh.start(T0)
    assert isinstance(discover, Send)
    other = DhcpServer(NET_ID, "10.88.0.0/24", "10.88.0.1", GW_MAC, MTU, node_id="x")
    (offer,) = other.frame(discover.frame, T0, port="tap")
    assert fresh.frame(offer.frame, T0) == [] and fresh.state == SELECTING
    assert fresh.counters["outside"] == 1


# --- against the node core (node/core.py: switch, gateway, DHCP server, a real chain) ---------


async def test_bound_through_one_node_renewed_through_another_after_failover(world: Any) -> None:
    """The client against the wired node core: its frames go in as a local port's, the
    bindings are appended to a real SQLite chain as the daemon does. After failing over to
    another node, the renewal at T1 is answered there from the replayed chain: no new event."""
    import time

    from atenet.chain.event import Kind
    from atenet.node.core import NodeCore
    from atenet.switch.core import Port

    now = time.time()

    class Tap(Port):
        """The host's port on a node: what the node delivers goes to the DHCP client."""

        def __init__(self, name: str) -> None:
            super().__init__(name, "test", now)
            self.got: list[bytes] = []

        def deliver(self, frame: bytes) -> None:
            self.got.append(frame)

    def node(name: str) -> tuple[Any, Tap]:
        core = NodeCore(name, lambda packet, addr: None, time.time_ns(), clock=lambda: now)
        runtime = core.add_network(world.chain.network_id)
        runtime.apply_state(world.chain.state, now)
        port = Tap(name)
        runtime.add_port("host", port)
        return runtime, port

    async def exchange(runtime: Any, port: Tap, actions: list[Any], t: float) -> list[Event]:
        events: list[Event] = []
        while actions:
            action = actions.pop(0)
            if isinstance(action, Event):
                events.append(action)
                continue
            runtime.switch.from_local(port, action.frame)
            while runtime.binds:  # what the daemon does with a lease: append, hand back state
                await world.chain.append(Kind.LEASE, runtime.binds.popleft(), world.node_a)
                runtime.apply_state(world.chain.state, now)
            got, port.got = port.got, []
            for frame in got:
                actions.extend(cl.frame(frame, t))
        return events

    cidr = IPv4Network(world.chain.state.settings.cidr)
    cl = DhcpClient(MAC, host="laptop", network=cidr, rng=random.Random(3), jitter=0.0)
    a, port_a = node("node-a")
    (event,) = await exchange(a, port_a, cl.start(now), now)
    assert event.kind == "bound" and event.lease is not None
    lease = event.lease
    assert lease.interface == ipv4_for(world.chain.network_id, MAC, str(cidr))
    assert lease.server == IPv4Address(str(cidr.network_address + 1))
    assert lease.router is None  # internet off (the default): no default route offered
    seq = world.chain.state.seq
    assert world.chain.state.leases[str(lease.address)]["host"] == "laptop"
    # Fail over: another node, its state replayed from the chain; T1 comes.
    fresh = world.reader()
    await fresh.load()
    b, port_b = node("node-b")
    b.apply_state(fresh.state, now)
    (event,) = await exchange(b, port_b, cl.tick(lease.renew_at), lease.renew_at)
    assert event.kind == "renewed" and event.lease is not None
    assert event.lease.address == lease.address and cl.state == BOUND
    assert world.chain.state.seq == seq  # the renewal wrote nothing
    assert cl.counters["malformed"] == cl.counters["foreign"] == 0
