"""The NAT forwarder over IPv6, sans-I/O: as tests/test_nat.py, with dual-stack client stacks
that reach a documentation-range "internet" (2001:db8:113::10) through the real Gateway's
IPv6 route hook and :meth:`atenet.router.nat.Nat.packet6`. Time is injected.
"""

from __future__ import annotations

import errno
import hashlib
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet.router.gateway import Gateway
from atenet.router.nat import (
    Nat,
    NatLimits,
    OpenPing,
    OpenTcp,
    OpenUdp,
    Send,
    SendPing,
    refusal,
)
from atenet.stack.iface import EchoReply, IcmpError, Interface
from atenet.stack.tcp import ESTABLISHED, SYN_SENT, Tcp
from tests.test_nat import Lab

CIDR6 = "fd5a:1::/64"
SERVER6 = IPv6Address("2001:db8:113::10")
NODE6 = IPv6Address("2001:db8:7::7")


class Lab6(Lab):
    """:class:`tests.test_nat.Lab` with IPv6 on the network and in the forwarder."""

    def __init__(self, mtu: int = 1500) -> None:
        super().__init__(mtu)
        self.gw = Gateway(b"\x11" * 16, "10.0.0.0/24", CIDR6, mtu, default_route=True)
        assert self.gw.ipv6 is not None
        self.nat = Nat(
            IPv4Interface(f"{self.gw.ipv4}/24"),
            self.gw.mac,
            mtu,
            is_local=lambda a: a in (NODE6, IPv4Address("198.51.100.7")),
            gateway6=IPv6Interface(f"{self.gw.ipv6}/64"),
        )
        self.gw.internet = self.nat.packet
        self.gw.internet6 = self.nat.packet6

    def client(self, n: int = 5, mss: int = 1460) -> Interface:
        iface = Interface(
            bytes([2, 0, 0, 0, 0, n]),
            ipv4=IPv4Interface(f"10.0.0.{n}/24"),
            gateway4=self.gw.ipv4,
            slaac=False,
            tcp=Tcp(mss=mss, seed=n),
        )
        iface.add_ipv6(IPv6Interface(f"fd5a:1::{n}/64"))
        iface.gateway6 = self.gw.link_local  # what the gateway's RA would give it
        self.clients.append(iface)
        return iface


def _connect6(lab: Lab6, client: Interface, port: int = 80):
    src = IPv6Address(f"fd5a:1::{client.mac[5]}")
    conn = client.tcp.connect(src.packed, SERVER6.packed, port, lab.now)  # type: ignore[union-attr]
    lab.run()
    (opened,) = lab.take(OpenTcp)
    return conn, opened


def test_ipv6_tcp_waits_for_the_host_connect_then_relays_both_ways_with_the_ipv6_mss() -> None:
    lab = Lab6()
    client = lab.client()
    conn, opened = _connect6(lab, client)
    assert opened.dst == ("2001:db8:113::10", 80)
    assert lab.nat.counters["flows_opened_tcp"] == lab.nat.counters["flows_opened_ipv6"] == 1
    lab.advance(0.5)
    assert conn.state == SYN_SENT  # held until the host socket connects
    lab.nat.opened(opened.flow, lab.now)
    lab.run()
    assert conn.state == ESTABLISHED
    assert conn.mss == 1500 - 60  # the forwarder announces the IPv6 MSS, not the IPv4 one
    up = bytes(range(256)) * 400  # 100 KiB
    got = lab.upload(conn, up, 300, 0.01)
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    down = bytes(reversed(up))
    lab.nat.data(opened.flow, down, lab.now)
    received = bytearray()
    for _ in range(300):
        lab.step()
        received += conn.recv(1 << 20)
        if len(received) == len(down):
            break
        lab.now += 0.01
    assert received == down
    assert lab.nat.status()["flows_tcp"] == 1


def test_ipv6_refused_connect_is_rst_and_unreachable_is_icmpv6_address_unreachable() -> None:
    lab = Lab6()
    client = lab.client()
    conn, opened = _connect6(lab, client)
    lab.nat.failed(opened.flow, "refused", lab.now)
    lab.run()
    assert conn.error == errno.ECONNREFUSED
    _conn2, opened2 = _connect6(lab, client, 81)
    lab.nat.failed(opened2.flow, "unreachable", lab.now)
    lab.run()
    errors = [e for e in client.events() if isinstance(e, IcmpError)]
    assert [(e.type, e.code, e.dst_port) for e in errors] == [(1, 3, 81)]
    assert not lab.nat.flows and lab.nat.status()["half_open"] == 0


def test_ipv6_udp_both_ways_and_ping_through_a_ping_socket() -> None:
    lab = Lab6()
    a, b = lab.client(5), lab.client(6)
    sa, sb = a.udp_bind(5000), b.udp_bind(5000)
    sa.sendto(b"from a", (SERVER6, 9000), lab.now)
    sb.sendto(b"from b", (SERVER6, 9000), lab.now)
    lab.run()
    opens = lab.take(OpenUdp)
    assert [o.dst for o in opens] == [("2001:db8:113::10", 9000)] * 2
    for o in opens:
        lab.nat.opened(o.flow, lab.now)
    sends = lab.take(Send)
    assert sorted(s.data for s in sends) == [b"from a", b"from b"]
    by_data = {s.data: s.flow for s in sends}
    lab.nat.data(by_data[b"from a"], b"to a", lab.now)
    lab.nat.data(by_data[b"from b"], b"to b" * 800, lab.now)  # > MTU: fragmented by the stack
    lab.run()
    assert sa.recvfrom() == (b"to a", (SERVER6, 9000))
    assert sb.recvfrom() == (b"to b" * 800, (SERVER6, 9000))

    _ident, seq = a.ping(SERVER6, lab.now, b"hello6")
    lab.run()
    (op,) = lab.take(OpenPing)
    assert op.dst == "2001:db8:113::10"
    lab.nat.opened(op.flow, lab.now)
    (sp,) = lab.take(SendPing)
    assert (sp.seq, sp.payload) == (seq, b"hello6")
    lab.nat.echo_reply(op.flow, seq, b"hello6", lab.now)
    lab.run()
    (reply,) = [e for e in a.events() if isinstance(e, EchoReply)]
    assert reply.src == SERVER6 and reply.seq == seq
    assert lab.nat.status()["flows_icmp"] == 1


def test_ipv6_refused_destinations_are_counted_and_answered_prohibited() -> None:
    lab = Lab6()
    c = lab.client()
    s = c.udp_bind(4000)
    refused = {
        "fd00:ec2::254": "refused_metadata",
        "fd12:3456::1": "refused_private",
        "64:ff9b::7f00:1": "refused_loopback",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1": "refused_private",  # NAT64 of 10.0.0.1
        "2002:a9fe:a9fe::1": "refused_metadata",  # 6to4 of 169.254.169.254
        "::ffff:203.0.113.10": "refused_reserved",  # IPv4-mapped: never on the wire
        str(NODE6): "refused_node_address",
    }
    for dst in refused:
        s.sendto(b"x", (IPv6Address(dst), 80), lab.now)
    lab.run()
    assert not lab.take(OpenUdp)
    for reason in set(refused.values()):
        assert lab.nat.counters[reason] == list(refused.values()).count(reason), reason
    errors = [e for e in c.events() if isinstance(e, IcmpError)]
    # ICMPv6 "administratively prohibited": Linux fails the socket call with EACCES at once
    assert {(e.type, e.code) for e in errors} == {(1, 1)} and len(errors) == len(refused)


def test_ipv6_from_a_link_local_or_foreign_source_is_dropped_not_forwarded() -> None:
    lab = Lab6()
    c = lab.client()
    c.ipv6 = [a for a in c.ipv6 if a.ip.is_link_local]  # only fe80:: left: sends from it
    s = c.udp_bind(4000)
    s.sendto(b"x", (SERVER6, 80), lab.now)
    lab.run()
    assert not lab.take(OpenUdp) and not lab.nat.flows
    assert lab.nat.counters["foreign_source"] == 1


@pytest.mark.parametrize(
    ("dst", "private", "reason"),
    [
        ("::1", False, "refused_loopback"),
        ("::", False, "refused_reserved"),
        ("fe80::1", False, "refused_link_local"),
        ("ff02::1", False, "refused_multicast"),
        ("ff0e::1", True, "refused_multicast"),
        ("fd00::1", False, "refused_private"),
        ("fd00::1", True, None),
        ("fd00:ec2::254", True, "refused_metadata"),
        ("64:ff9b::c0a8:101", True, None),  # NAT64 of 192.168.1.1, private allowed
        ("64:ff9b::cb00:710a", False, None),  # NAT64 of 203.0.113.10
        ("2001:db8:113::10", False, None),  # documentation range: the tests' internet
        ("2606:4700::1111", False, None),
    ],
)
def test_ipv6_refusal_table(dst: str, private: bool, reason: str | None) -> None:
    assert refusal(IPv6Address(dst), private) == reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([6, 17, 58, 0, 44, 1]),  # TCP, UDP, ICMPv6, hop-by-hop, fragment, ICMP
            st.binary(max_size=60),
            st.integers(0, 0xFFFF),
            st.sampled_from(["2001:db8:113::10", "fd00:ec2::254", "fe80::1", "2606:4700::1"]),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_fuzzed_ipv6_packets_never_raise_and_tables_stay_bounded(packets: list) -> None:
    """Random IPv6 upper layers from clients (TCP with a valid checksum, ICMPv6 echo requests
    half the time, so they reach the flow table): nothing raises, flows stay within the caps,
    and everything times out."""
    from atenet.stack.tcp import encode_segment
    from atenet.wire.icmpv6 import Icmpv6Repr
    from atenet.wire.ipv6 import Ipv6Repr

    lab = Lab6()
    lab.nat.limits = NatLimits(flows_per_client=4, flows_per_network=6)
    for i, (proto, body, port, dst, valid) in enumerate(packets):
        src, to = IPv6Address(f"fd5a:1::{2 + i % 3}"), IPv6Address(dst)
        if proto == 6 and valid:
            flags = body[0] if body else 0x02
            body = encode_segment(
                src.packed, to.packed, port, 80, port, 0, flags, 1000, payload=body[1:]
            )
        elif proto == 58 and valid:
            body = Icmpv6Repr.echo_request(port, i, body).emit(src, to)
        raw = Ipv6Repr(src, to, proto, body).emit()
        mac = bytes([2, 0, 0, 0, 0, 2 + i % 3])
        lab.gw.frame(lab.gw.mac + mac + b"\x86\xdd" + raw, lab.now)
        lab.fuzz_host(port)
    lab.fuzz_end()
