"""The stack's Interface frame by frame: frames built and checked with scapy, ``now`` injected."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from atenet.stack import EchoReply, IcmpError, Interface
from tests.support.stack_tap import RstOnly

MAC = bytes.fromhex("02aabbccdd01")
PEER_MAC = "02:00:00:00:00:02"
PEER_MAC_B = bytes.fromhex("020000000002")
ME = "10.9.0.2"
PEER = "10.9.0.1"
LL_PEER = "fe80::2"


def make(ipv6: bool = False, **kw: object) -> Interface:
    """An interface at 10.9.0.2/24 behind PEER (IPv6 off unless asked: no router solicitations)."""
    return Interface(
        MAC, 1500, ipv4=IPv4Interface(f"{ME}/24"), gateway4=IPv4Address(PEER), ipv6=ipv6, **kw
    )


def eth(payload: object) -> bytes:
    return bytes(Ether(src=PEER_MAC, dst="02:aa:bb:cc:dd:01") / payload)


def learn_peer(iface: Interface, now: float = 0.0) -> None:
    """The peer asks for us: we learn its MAC (and answer)."""
    iface.receive(
        bytes(
            Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=ME)
        ),
        now,
    )
    iface.poll(now)


def test_arp_request_for_us_is_answered_and_others_ignored() -> None:
    iface = make()
    iface.receive(
        bytes(
            Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst="10.9.0.77")
        ),
        0,
    )
    assert iface.poll(0) == []
    iface.receive(
        bytes(
            Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=ME)
        ),
        0,
    )
    (out,) = iface.poll(0)
    reply = Ether(out)
    assert reply[ARP].op == 2 and reply[ARP].psrc == ME and reply[ARP].hwsrc == "02:aa:bb:cc:dd:01"
    assert reply.dst == PEER_MAC
    assert iface.arp.lookup(IPv4Address(PEER), 1.0) == PEER_MAC_B


def test_echo_request_answered_with_same_payload() -> None:
    iface = make()
    learn_peer(iface)
    iface.receive(eth(IP(src=PEER, dst=ME) / ICMP(type=8, id=7, seq=3) / Raw(b"hello")), 1)
    (out,) = iface.poll(1)
    pkt = Ether(out)
    assert pkt[IP].dst == PEER and pkt[ICMP].type == 0 and pkt[ICMP].id == 7 and pkt[ICMP].seq == 3
    assert bytes(pkt[ICMP].payload) == b"hello"
    assert ICMP(bytes(pkt[ICMP])).chksum == pkt[ICMP].chksum


def test_ping_out_resolves_arp_then_reports_rtt() -> None:
    iface = make()
    ident, seq = iface.ping(PEER, 10.0, b"x" * 8)
    (req,) = iface.poll(10.0)
    assert Ether(req)[ARP].pdst == PEER and Ether(req).dst == "ff:ff:ff:ff:ff:ff"
    iface.receive(
        eth(ARP(op=2, hwsrc=PEER_MAC, psrc=PEER, hwdst="02:aa:bb:cc:dd:01", pdst=ME)), 10.1
    )
    (echo,) = iface.poll(10.1)
    assert Ether(echo)[ICMP].type == 8 and Ether(echo).dst == PEER_MAC
    iface.receive(
        eth(IP(src=PEER, dst=ME) / ICMP(type=0, id=ident, seq=seq) / Raw(b"x" * 8)), 10.25
    )
    (event,) = [e for e in iface.events() if isinstance(e, EchoReply)]
    assert event.src == IPv4Address(PEER) and abs(event.rtt - 0.25) < 1e-9


def test_arp_retries_then_gives_up_and_counts() -> None:
    iface = make()
    iface.ping("10.9.0.50", 0.0)
    iface.ping("10.9.0.50", 0.0)
    assert len(iface.poll(0.0)) == 1  # one request for two waiting packets
    t = 0.0
    sent = 1
    while (at := iface.poll_at()) is not None and t < 100:
        t = at
        sent += len(iface.poll(t))
    assert sent == 3
    assert iface.counters["neighbor_unresolved"] == 2
    assert not iface.arp.pending


def test_udp_both_ways_and_closed_port_unreachable_rate_limited() -> None:
    iface = make()
    learn_peer(iface)
    sock = iface.udp_bind(5000)
    iface.receive(eth(IP(src=PEER, dst=ME) / UDP(sport=4000, dport=5000) / Raw(b"ping")), 1)
    assert sock.recvfrom() == (b"ping", (IPv4Address(PEER), 4000))
    assert sock.sendto(b"pong", (PEER, 4000), 1)
    (out,) = iface.poll(1)
    pkt = Ether(out)
    assert pkt[UDP].dport == 4000 and bytes(pkt[UDP].payload) == b"pong"
    assert UDP(bytes(pkt[UDP])).chksum == pkt[UDP].chksum
    for _ in range(50):
        iface.receive(eth(IP(src=PEER, dst=ME) / UDP(sport=4000, dport=6000) / Raw(b"?")), 2)
    errors = [Ether(f) for f in iface.poll(2)]
    assert 1 <= len(errors) <= 10
    assert errors[0][ICMP].type == 3 and errors[0][ICMP].code == 3
    assert iface.counters["icmp_error_limited"] == 50 - len(errors)


def test_udp_queue_bounded_with_drop_counter() -> None:
    iface = Interface(MAC, ipv4=IPv4Interface(f"{ME}/24"), udp_queue=4)
    sock = iface.udp_bind(0)
    assert sock.port >= 49152
    for i in range(10):
        iface.receive(
            eth(IP(src=PEER, dst=ME) / UDP(sport=1, dport=sock.port) / Raw(bytes([i]))), 0
        )
    assert len(sock.queue) == 4 and sock.dropped == 6 and iface.counters["udp_queue_full"] == 6


def test_fragments_out_of_order_are_reassembled() -> None:
    iface = make()
    learn_peer(iface)
    big = IP(src=PEER, dst=ME, id=99) / ICMP(type=8, id=1, seq=1) / Raw(bytes(range(256)) * 16)
    frags = fragment(big, fragsize=1000)
    assert len(frags) == 5
    for frag in reversed(frags):
        iface.receive(eth(frag), 1)
    out = iface.poll(1)
    assert iface.counters["frag_reassembled"] == 1
    assert len(out) >= 3  # the 4 KB reply leaves fragmented too
    again = Interface(bytes.fromhex("02aabbccdd09"), ipv4=IPv4Interface("10.9.0.1/24"))
    for frame in out:
        again.receive(bytes(Ether(dst="02:aa:bb:cc:dd:09") / Ether(frame).payload), 1)
    assert again.counters["frag_reassembled"] == 1
    assert again.counters["icmp_unexpected_reply"] == 1  # a reply it never asked for


def test_reassembly_bounds_and_timeout() -> None:
    iface = make()
    for ident in range(40):
        frag = IP(src=PEER, dst=ME, id=ident, flags="MF", frag=0, proto=17) / Raw(b"x" * 800)
        iface.receive(eth(frag), 0)
    assert len(iface.reassembly.partial) == 16
    assert iface.counters["frag_table_full"] == 24
    assert iface.poll_at() == 30.0
    iface.poll(30.0)
    assert not iface.reassembly.partial and iface.reassembly.held == 0
    assert iface.counters["frag_timeout"] == 16


def test_malformed_dropped_counted_never_answered() -> None:
    iface = make(ipv6=True)
    iface.poll(0)
    learn_peer(iface)
    bad = [
        b"\x00" * 5,
        bytes(Ether(src=PEER_MAC, dst="02:aa:bb:cc:dd:01", type=0x0800)) + b"\x45" + bytes(10),
        eth(IP(src=PEER, dst=ME, chksum=1) / ICMP()),
        eth(IP(src=PEER, dst=ME) / ICMP(chksum=1)),
        eth(IP(src=PEER, dst=ME) / UDP(dport=5000, chksum=7) / Raw(b"a")),
        eth(IPv6(src=LL_PEER, dst="ff02::1", hlim=64) / ICMPv6ND_NS(tgt=str(iface.ipv6[0].ip))),
    ]
    for frame in bad:
        iface.receive(frame, 1)
    assert iface.poll(1) == []
    assert iface.counters["rx_malformed"] == len(bad)


def test_ipv6_nd_echo_and_slaac() -> None:
    iface = make(ipv6=True)
    ll = iface.ipv6[0].ip
    assert str(ll) == "fe80::aa:bbff:fecc:dd01"
    rs = Ether(iface.poll(0)[0])
    assert rs[IPv6].dst == "ff02::2"
    ns = (
        IPv6(src=LL_PEER, dst="ff02::1:ffcc:dd01", hlim=255)
        / ICMPv6ND_NS(tgt=str(ll))
        / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC)
    )
    iface.receive(bytes(Ether(src=PEER_MAC, dst="33:33:ff:cc:dd:01") / ns), 1)
    (na,) = iface.poll(1)
    assert Ether(na)[ICMPv6ND_NA].tgt == str(ll) and Ether(na)[ICMPv6ND_NA].S == 1
    iface.receive(
        eth(IPv6(src=LL_PEER, dst=str(ll)) / ICMPv6EchoRequest(id=5, seq=6, data=b"v6")), 2
    )
    (reply,) = iface.poll(2)
    assert Ether(reply)[ICMPv6EchoReply].data == b"v6" and Ether(reply).dst == PEER_MAC
    ra = (
        IPv6(src=LL_PEER, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC)
        / ICMPv6NDOptPrefixInfo(prefix="fd00:1::", prefixlen=64, L=1, A=1)
    )
    iface.receive(bytes(Ether(src=PEER_MAC, dst="33:33:00:00:00:01") / ra), 3)
    assert IPv6Address("fd00:1::aa:bbff:fecc:dd01") in [a.ip for a in iface.ipv6]
    assert iface.gateway6 == IPv6Address(LL_PEER)
    assert iface.poll_at() is None  # the RA stopped the router solicitations
    # off-link destination: through the router, whose MAC the RA taught us
    iface.ping("2001:db8::1", 4)
    (out,) = iface.poll(4)
    assert Ether(out).dst == PEER_MAC and Ether(out)[IPv6].src == "fd00:1::aa:bbff:fecc:dd01"


def test_ipv6_ping_out_needs_nd() -> None:
    iface = make(ipv6=True)
    iface.poll(0)
    ident, seq = iface.ping(LL_PEER, 1)
    (ns,) = iface.poll(1)
    assert Ether(ns)[ICMPv6ND_NS].tgt == LL_PEER and Ether(ns)[IPv6].dst == "ff02::1:ff00:2"
    ll = str(iface.ipv6[0].ip)
    na = (
        IPv6(src=LL_PEER, dst=ll, hlim=255)
        / ICMPv6ND_NA(tgt=LL_PEER, S=1, O=1)
        / ICMPv6NDOptSrcLLAddr(type=2, lladdr=PEER_MAC)
    )
    iface.receive(eth(na), 1.5)
    (echo,) = iface.poll(1.5)
    assert Ether(echo)[ICMPv6EchoRequest].id == ident
    iface.receive(eth(IPv6(src=LL_PEER, dst=ll) / ICMPv6EchoReply(id=ident, seq=seq)), 1.75)
    assert [e.rtt for e in iface.events() if isinstance(e, EchoReply)] == [0.75]


def test_icmp_error_becomes_event() -> None:
    iface = make()
    quoted = IP(src=ME, dst="10.9.0.1") / UDP(sport=5555, dport=53)
    iface.receive(eth(IP(src=PEER, dst=ME) / ICMP(type=3, code=3) / quoted), 0)
    (err,) = [e for e in iface.events() if isinstance(e, IcmpError)]
    assert (err.type, err.code, err.proto, err.src_port, err.dst_port) == (3, 3, 17, 5555, 53)
    assert iface.poll(0) == []


def test_multicast_join_reports_and_answers_queries() -> None:
    iface = make(ipv6=True)
    iface.poll(0)
    learn_peer(iface)
    iface.join("239.1.2.3", 0)
    (report,) = iface.poll(0)
    assert Ether(report).dst == "01:00:5e:01:02:03" and Ether(report)[IP].ttl == 1
    sock = iface.udp_bind(7000)
    iface.receive(
        bytes(
            Ether(src=PEER_MAC, dst="01:00:5e:01:02:03")
            / IP(src=PEER, dst="239.1.2.3")
            / UDP(dport=7000)
            / Raw(b"m")
        ),
        1,
    )
    assert sock.recvfrom() is not None
    query = IP(src=PEER, dst="224.0.0.1", ttl=1, proto=2) / Raw(
        bytes.fromhex("11640000") + bytes(4)
    )
    raw = bytearray(bytes(query))
    from atenet.wire.checksum import checksum

    raw[22:24] = checksum(bytes(raw[20:28])).to_bytes(2, "big")
    iface.receive(bytes(Ether(src=PEER_MAC, dst="01:00:5e:00:00:01", type=0x0800)) + bytes(raw), 2)
    assert len(iface.poll(2)) == 1
    iface.leave("239.1.2.3", 3)
    (leave,) = iface.poll(3)
    assert Ether(leave)[IP].dst == "224.0.0.2"
    iface.join("ff05::1:3", 3.5)
    (mld,) = iface.poll(3.5)
    assert Ether(mld).dst == "33:33:00:01:00:03" and Ether(mld)[IPv6].hlim == 1


def test_tcp_segments_go_to_the_tcp_layer_and_back() -> None:
    from scapy.layers.inet import TCP

    iface = make(tcp=RstOnly())
    learn_peer(iface)
    iface.receive(eth(IP(src=PEER, dst=ME) / TCP(sport=40000, dport=80, flags="S", seq=100)), 1)
    (out,) = iface.poll(1)
    seg = Ether(out)[TCP]
    assert seg.flags == "RA" and seg.ack == 101 and Ether(out)[IP].dst == PEER
    plain = make()
    plain.receive(eth(IP(src=PEER, dst=ME) / TCP(dport=80, flags="S")), 1)
    assert plain.counters["tcp_no_handler"] == 1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20), st.sampled_from([0x0800, 0x86DD, 0x0806]))
def test_fuzz_receive_never_raises_and_state_stays_bounded(
    payloads: list[bytes], etype: int
) -> None:
    iface = make(ipv6=True, tcp=RstOnly())
    header = b"\xff" * 6 + PEER_MAC_B + etype.to_bytes(2, "big")
    for i, payload in enumerate(payloads):
        iface.receive(header + payload, float(i))
        iface.receive(payload, float(i))
        iface.poll(float(i))
    assert len(iface.arp.entries) <= iface.arp.capacity
    assert len(iface.reassembly.partial) <= 16
    assert len(iface._events) <= 256


def test_dhcp_gives_the_interface_its_address() -> None:
    """The Interface drives DhcpClient against the project's real DHCP server (and its chain)."""
    from atenet.client.dhcp import Event as DhcpEvent
    from atenet.router.dhcp import Bind, DhcpServer, Lease
    from atenet.router.dhcp import Send as ServerSend
    from tests.test_dhcp import CIDR, GW_IP, GW_MAC, NET_ID

    srv = DhcpServer(NET_ID, CIDR, GW_IP, GW_MAC, 1400, node_id="n1")
    chain: list[Lease] = []
    iface = Interface(MAC, 1500, ipv6=False)
    now = 1_800_000_000.0
    iface.start_dhcp(now, host="mio", jitter=0.0)
    for _ in range(10):
        frames = iface.poll(now)
        if not frames:
            break
        outs = [o for frame in frames for o in srv.frame(frame, now, port="p")]
        while outs:
            out = outs.pop(0)
            if isinstance(out, Bind):
                chain.append(Lease.from_bind(len(chain) + 1, out))
                outs.extend(srv.apply_bindings([chain[-1]], now))
            elif isinstance(out, ServerSend):
                iface.receive(out.frame, now)
    assert iface.ipv4 is not None and str(iface.ipv4.network) == CIDR
    assert iface.gateway4 == IPv4Address(GW_IP) and iface.mtu == 1400
    assert [e.kind for e in iface.events() if isinstance(e, DhcpEvent)] == ["bound"]
    assert iface.poll_at() is not None and iface.poll_at() > now + 60  # next: renewal


def test_neighbor_tables_bounded_and_gratuitous_arp_does_not_fill_cache() -> None:
    iface = make()
    for i in range(300):
        ip = f"10.8.{i // 250}.{i % 250 + 1}"
        iface.receive(eth(ARP(op=1, hwsrc=PEER_MAC, psrc=ip, pdst=ip)), 0)
    assert iface.arp.entries == {}
    for i in range(100):
        iface.send_udp(1, IPv4Address(f"10.9.0.{i + 10}"), 9, b"x", 0)
    assert len(iface.arp.pending) == 64 and iface.counters["neighbor_pending_full"] == 36
    assert len(iface.poll(0)) == 20  # ARP requests rate-limited (burst 20)
    assert iface.counters["arp_request_limited"] == 44
    for _ in range(12):
        iface.send_udp(1, IPv4Address("10.9.0.10"), 9, b"y", 0)
    assert len(iface.arp.pending[IPv4Address("10.9.0.10")].packets) == 8
    assert iface.counters["neighbor_queue_overflow"] == 5


def test_no_unreachable_for_broadcast_and_no_route_counted() -> None:
    iface = make()
    learn_peer(iface)
    bcast = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=PEER, dst="10.9.0.255")
    iface.receive(bytes(bcast / UDP(dport=6000) / Raw(b"?")), 1)
    assert iface.poll(1) == [] and iface.counters["udp_closed_port"] == 1
    lonely = Interface(MAC, ipv4=IPv4Interface(f"{ME}/24"), ipv6=False)
    assert not lonely.send_udp(1, IPv4Address("8.8.8.8"), 53, b"q", 0)
    assert lonely.counters["tx_no_route"] == 1


def test_arp_probe_and_conflict_teach_nothing() -> None:
    """An RFC 5227 probe (sender 0.0.0.0) is answered but not learnt; a claim on our address
    is counted and never overwrites anything."""
    iface = make()
    iface.receive(eth(ARP(op=1, hwsrc=PEER_MAC, psrc="0.0.0.0", pdst=ME)), 0)
    assert len(iface.poll(0)) == 1
    iface.receive(eth(ARP(op=1, hwsrc=PEER_MAC, psrc=ME, pdst=ME)), 0)
    assert iface.arp.entries == {} and iface.counters["arp_conflict"] == 1


def test_ipv6_closed_udp_port_and_fragments() -> None:
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6ExtHdrFragment, fragment6

    iface = make(ipv6=True)
    iface.poll(0)
    ll = str(iface.ipv6[0].ip)
    na = IPv6(src=LL_PEER, dst=ll, hlim=255) / ICMPv6ND_NA(tgt=LL_PEER, S=1)
    na = na / ICMPv6NDOptSrcLLAddr(type=2, lladdr=PEER_MAC)
    iface.receive(eth(IPv6(src=LL_PEER, dst=ll) / UDP(sport=1, dport=9) / Raw(b"q")), 1)
    (ns,) = iface.poll(1)  # the peer's MAC is unknown: an NS goes out first
    assert Ether(ns)[ICMPv6ND_NS].tgt == LL_PEER
    iface.receive(eth(na), 1)
    iface.receive(eth(IPv6(src=LL_PEER, dst=ll) / UDP(sport=1, dport=9) / Raw(b"q")), 1)
    out = [Ether(f) for f in iface.poll(1)]
    assert any(ICMPv6DestUnreach in p and p[ICMPv6DestUnreach].code == 4 for p in out)
    sock = iface.udp_bind(9)
    big = IPv6(src=LL_PEER, dst=ll) / IPv6ExtHdrFragment(id=5) / UDP(sport=1, dport=9)
    frags = fragment6(big / Raw(b"z" * 3000), 1280)
    assert len(frags) == 3
    for frag in reversed(frags):
        iface.receive(eth(frag), 2)
    assert sock.recvfrom() == (b"z" * 3000, (IPv6Address(LL_PEER), 1))
    assert sock.sendto(b"y" * 3000, (LL_PEER, 1), 2)
    sent = [Ether(f) for f in iface.poll(2)]
    assert len(sent) == 3 and all(IPv6ExtHdrFragment in p for p in sent)
    assert all(len(bytes(p)) <= 1514 for p in sent)
