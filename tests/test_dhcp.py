"""DHCPv4 server (router/dhcp.py) and its wire format (wire/dhcp.py).

Clients are built with scapy and the server's replies parsed by scapy, which recomputes and
checks the IPv4 and UDP checksums: an independent implementation on both sides of every
exchange. The chain is stood in for by a list: each Bind the server emits is "appended" with the
next sequence number and fed back through apply_bindings, as the node's shell will do.
"""

from __future__ import annotations

import json
import random
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, raw  # type: ignore[attr-defined]

from atenet.addressing import ipv4_for
from atenet.errors import DecodeError
from atenet.router.dhcp import Bind, DhcpServer, Lease, Send
from atenet.transport.tap import TapDevice, configure_link
from atenet.wire import dhcp as d
from atenet.wire.arp import ARP_REQUEST, ArpRepr, arp_reply
from atenet.wire.ethernet import ETHERTYPE_ARP, EthernetRepr
from tests.conftest import needs_root
from tests.support.dhcp_clients import (
    DHCLIENT_SCRIPT,
    UDHCPC_SCRIPT,
    stop,
    wait_for_lines,
)
from tests.support.netns import Host, Lab

NET_ID = bytes(range(16))
CIDR = "10.77.3.0/24"
GW_IP = IPv4Address("10.77.3.1")
GW_MAC = bytes.fromhex("02feedc0ffee")
MTU = 1400
T0 = 1_800_000_000.0


def mac(i: int) -> bytes:
    return bytes.fromhex("02aa00") + i.to_bytes(3, "big")


def server(**kw: Any) -> DhcpServer:
    kw.setdefault("node_id", "node-a")
    cidr = kw.pop("cidr", CIDR)
    gw = kw.pop("gateway_ip", GW_IP)
    return DhcpServer(NET_ID, cidr, gw, GW_MAC, MTU, **kw)


def client_frame(
    m: bytes,
    msg_type: str,
    *,
    xid: int = 0x1234,
    ciaddr: str = "0.0.0.0",
    requested: str | None = None,
    server_id: str | None = None,
    hostname: str | None = None,
    broadcast: bool = False,
    src: str = "0.0.0.0",
    dst: str = "255.255.255.255",
) -> bytes:
    opts: list[Any] = [("message-type", msg_type)]
    if requested:
        opts.append(("requested_addr", requested))
    if server_id:
        opts.append(("server_id", server_id))
    if hostname:
        opts.append(("hostname", hostname))
    opts.append("end")
    pkt = (
        Ether(src=m.hex(":"), dst="ff:ff:ff:ff:ff:ff")
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(
            op=1,
            xid=xid,
            chaddr=m + bytes(10),
            ciaddr=ciaddr,
            flags=0x8000 if broadcast else 0,
        )
        / DHCP(options=opts)
    )
    return raw(pkt)


def reply(action: Any, gw: IPv4Address = GW_IP) -> Any:
    """Parse a Send with scapy, checking the IPv4 and UDP checksums it carries."""
    assert isinstance(action, Send)
    pkt = Ether(action.frame)
    ip, udp = pkt[IP], pkt[UDP]
    ip_sum, udp_sum = ip.chksum, udp.chksum
    del ip.chksum, udp.chksum
    again = Ether(raw(pkt))
    assert again[IP].chksum == ip_sum, "IPv4 header checksum"
    assert again[UDP].chksum == udp_sum, "UDP checksum"
    assert (udp.sport, udp.dport) == (67, 68)
    assert pkt.src == GW_MAC.hex(":") and ip.src == str(gw)
    return pkt


def options(pkt: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple):
            out[opt[0]] = opt[1] if len(opt) == 2 else opt[1:]
    return out


class Chain:
    """The chain stood in by a list: appends Binds in order and replays them to servers."""

    def __init__(self) -> None:
        self.records: list[Lease] = []

    def append(self, bind: Bind) -> Lease:
        rec = Lease.from_payload(len(self.records) + 1, bind.payload())
        self.records.append(rec)
        return rec


def dora(
    srv: DhcpServer, chain: Chain, m: bytes, now: float = T0, hostname: str | None = None
) -> Any:
    """DISCOVER → OFFER → REQUEST → (Bind → chain) → ACK; returns the ACK packet.

    Each MAC comes from its own port (one TAP per host), so per-port limits do not bite.
    """
    port = m
    (offer,) = srv.frame(client_frame(m, "discover", hostname=hostname), now, port=port)
    gw = srv.gateway_ip
    yiaddr = reply(offer, gw)[BOOTP].yiaddr
    actions = srv.frame(
        client_frame(m, "request", requested=yiaddr, server_id=str(gw), hostname=hostname),
        now,
        port=port,
    )
    (bind,) = actions
    assert isinstance(bind, Bind)
    rec = chain.append(bind)
    (ack,) = srv.apply_bindings([rec], now)
    return reply(ack, gw)


# --- wire ----------------------------------------------------------------------------------


def test_parse_scapy_discover_and_emit_round_trip() -> None:
    frame = client_frame(mac(1), "discover", hostname="box", xid=0xDEADBEEF)
    cf = d.parse_dhcp_frame(frame)
    assert cf is not None
    msg = cf.message
    assert msg.message_type == d.DHCPDISCOVER and msg.xid == 0xDEADBEEF
    assert msg.chaddr == mac(1) and msg.options[d.OPT_HOST_NAME] == b"box"
    again = d.DhcpMessage.parse(msg.emit())
    assert again.options == msg.options and again.xid == msg.xid


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:200], "too short"),
        (lambda b: b[:236] + b"\x00\x00\x00\x00" + b[240:], "cookie"),
        (lambda b: b[:-1].rstrip(b"\x00") + b"\x0c\x20ab", "past the end"),
        (lambda b: b[:240] + b"\x34\x01\x03\xff", "overload"),
        (lambda b: b[:240] + b"\x0c\x01a" * 65 + b"\xff", "more than 64"),
        (lambda b: b[:240] + b"\x00" * 10, "no end"),
        (lambda b: bytes([3]) + b[1:], "op 3"),
        (lambda b: b + bytes(1300), "too long"),
    ],
)
def test_malformed_messages_raise_decode_error(mutate: Any, why: str) -> None:
    good = raw(BOOTP(op=1, chaddr=mac(1)) / DHCP(options=[("message-type", "discover"), "end"]))
    d.DhcpMessage.parse(good)
    with pytest.raises(DecodeError, match=why):
        d.DhcpMessage.parse(mutate(good))


# --- the exchange ------------------------------------------------------------------------


def test_full_dora_gives_the_hashed_address_and_every_option() -> None:
    srv, chain = server(), Chain()
    m = mac(1)
    ack = dora(srv, chain, m, hostname="alpha")
    hashed = str(ipv4_for(NET_ID, m, CIDR).ip)
    assert ack[BOOTP].yiaddr == hashed and ack[BOOTP].op == 2
    opts = options(ack)
    assert opts["message-type"] == 5  # ACK
    assert opts["server_id"] == str(GW_IP)
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == str(GW_IP)
    assert opts["name_server"] == "8.8.8.8"
    assert opts["interface-mtu"] == MTU
    assert opts["broadcast_address"] == "10.77.3.255"
    assert opts["lease_time"] == 3600 and opts["renewal_time"] == 1800
    assert opts["rebinding_time"] == 3150
    assert opts["hostname"] == b"alpha"
    # no broadcast flag, no ciaddr: unicast to the offered address and chaddr (RFC 2131 §4.1)
    assert ack[IP].dst == hashed and ack.dst == m.hex(":")
    (rec,) = chain.records
    assert (rec.mac, str(rec.ip), rec.host, rec.node) == (m, hashed, "alpha", "node-a")
    assert srv.leases() == [rec]


def test_request_is_acked_only_after_the_binding_comes_back_from_the_chain() -> None:
    srv = server()
    m = mac(2)
    (offer,) = srv.frame(client_frame(m, "discover", broadcast=True), T0)
    pkt = reply(offer)
    assert pkt[IP].dst == "255.255.255.255" and pkt.dst == "ff:ff:ff:ff:ff:ff"
    req = client_frame(m, "request", requested=pkt[BOOTP].yiaddr, server_id=str(GW_IP))
    (bind,) = srv.frame(req, T0)
    assert isinstance(bind, Bind)
    # The client retransmits before the chain answered: no second Bind, no reply yet.
    assert srv.frame(req, T0 + 1) == []
    (ack,) = srv.apply_bindings([Lease.from_bind(1, bind)], T0 + 1.2)
    assert options(reply(ack))["message-type"] == 5


def test_renewal_is_answered_from_state_and_writes_no_bind() -> None:
    srv, chain = server(), Chain()
    m = mac(3)
    ip = dora(srv, chain, m)[BOOTP].yiaddr
    for k in range(1, 6):  # five renewals, half a lease apart
        now = T0 + k * 1800
        renew = client_frame(m, "request", ciaddr=ip, src=ip, dst=str(GW_IP))
        (ack,) = srv.frame(renew, now)
        pkt = reply(ack)
        assert options(pkt)["message-type"] == 5 and pkt[BOOTP].yiaddr == ip
        assert pkt[IP].dst == ip  # unicast to ciaddr
        assert pkt[BOOTP].ciaddr == ip
    assert len(chain.records) == 1
    assert srv.counters["binds"] == 1


def test_renewal_near_the_end_of_the_chain_binding_refreshes_it_once() -> None:
    srv, chain = server(hold=7200), Chain()
    m = mac(4)
    ip = dora(srv, chain, m)[BOOTP].yiaddr
    renew = client_frame(m, "request", ciaddr=ip, src=ip, dst=str(GW_IP))
    (ack,) = srv.frame(renew, T0 + 1800)  # 5400 s left of 7200: no refresh
    now = T0 + 4000  # 3200 s left < hold / 2
    ack, bind = srv.frame(renew, now)
    assert options(reply(ack))["lease_time"] == 3200  # never promised past the chain's expiry
    assert isinstance(bind, Bind) and bind.expires == now + 7200
    assert srv.apply_bindings([chain.append(bind)], now) == []  # a refresh has no ACK to send
    (ack,) = srv.frame(renew, now + 10)
    assert options(reply(ack))["lease_time"] == 3600
    assert len(chain.records) == 2


def test_init_reboot_with_a_wrong_address_is_naked() -> None:
    srv, chain = server(), Chain()
    m = mac(5)
    ip = dora(srv, chain, m)[BOOTP].yiaddr
    wrong = "10.99.0.7"  # another network (the client moved)
    (nak,) = srv.frame(client_frame(m, "request", requested=wrong), T0 + 5)
    pkt = reply(nak)
    assert options(pkt)["message-type"] == 6
    assert pkt[IP].dst == "255.255.255.255" and pkt[BOOTP].yiaddr == "0.0.0.0"
    # Another client's address is refused too; its own is ACKed from state.
    other = dora(srv, chain, mac(6))[BOOTP].yiaddr
    (nak,) = srv.frame(client_frame(m, "request", requested=other), T0 + 6)
    assert options(reply(nak))["message-type"] == 6
    (ack,) = srv.frame(client_frame(m, "request", requested=ip), T0 + 7)
    assert options(reply(ack))["message-type"] == 5
    assert srv.counters["naks"] == 2


def test_decline_moves_the_client_to_the_next_address() -> None:
    srv, chain = server(), Chain()
    m = mac(7)
    first = dora(srv, chain, m)[BOOTP].yiaddr
    assert srv.frame(client_frame(m, "decline", requested=first, server_id=str(GW_IP)), T0) == []
    ack = dora(srv, chain, m, now=T0 + 10)
    second = ack[BOOTP].yiaddr
    assert second == str(IPv4Address(first) + 1)  # the next free address after the hashed one
    assert [str(r.ip) for r in chain.records] == [first, second]
    assert [str(r.ip) for r in srv.leases()] == [second]
    # Nobody else gets the declined address while it is held back, even its hashed owner.
    assert srv._choose(mac(99), T0 + 20) != (int(IPv4Address(first)), None)


def test_decline_is_accepted_only_for_a_given_address_and_a_few_per_port() -> None:
    srv = server()
    m = mac(70)
    # An address nobody gave this client cannot be declined.
    assert srv.frame(client_frame(m, "decline", requested="10.77.3.77"), T0, port="p") == []
    assert srv.declined == {}
    declined = []
    for i in range(10):  # a port collecting offers from many MACs and declining each
        (offer,) = srv.frame(client_frame(mac(80 + i), "discover"), T0, port="p")
        ip = reply(offer)[BOOTP].yiaddr
        srv.frame(client_frame(mac(80 + i), "decline", requested=ip), T0, port="p")
        declined.append(ip)
    assert len(srv.declined) == 4  # the per-port burst


def test_client_back_after_its_binding_expired_is_rebound_through_the_chain() -> None:
    srv, chain = server(hold=3600), Chain()
    m = mac(71)
    ip = dora(srv, chain, m)[BOOTP].yiaddr
    later = T0 + 7200  # the chain binding expired; nobody needed the address
    renew = client_frame(m, "request", requested=ip)
    (bind,) = srv.frame(renew, later)  # INIT-REBOOT: no ACK before the chain has it again
    assert isinstance(bind, Bind) and str(bind.ip) == ip and bind.reclaims is None
    (ack,) = srv.apply_bindings([chain.append(bind)], later)
    assert options(reply(ack))["message-type"] == 5


def test_release_writes_an_expired_binding_and_the_address_comes_back() -> None:
    srv, chain = server(), Chain()
    m = mac(8)
    ip = dora(srv, chain, m)[BOOTP].yiaddr
    (bind,) = srv.frame(client_frame(m, "release", ciaddr=ip, server_id=str(GW_IP), src=ip), T0)
    assert isinstance(bind, Bind) and bind.expires == T0 and str(bind.ip) == ip
    srv.apply_bindings([chain.append(bind)], T0)
    (lease,) = srv.leases()
    assert lease.expires == T0
    # Coming back, the same client gets the same address (a new binding, commit then ACK).
    assert dora(srv, chain, m, now=T0 + 60)[BOOTP].yiaddr == ip
    assert len(chain.records) == 3


def test_inform_gets_options_and_no_address() -> None:
    srv = server()
    m = mac(9)
    (ack,) = srv.frame(
        client_frame(m, "inform", ciaddr="10.77.3.50", src="10.77.3.50", dst=str(GW_IP)), T0
    )
    pkt = reply(ack)
    opts = options(pkt)
    assert opts["message-type"] == 5 and "lease_time" not in opts
    assert opts["router"] == str(GW_IP) and opts["name_server"] == "8.8.8.8"
    assert pkt[BOOTP].yiaddr == "0.0.0.0" and pkt[IP].dst == "10.77.3.50"
    assert srv.counters["binds"] == 0


def test_two_nodes_binding_one_address_resolve_to_the_first_event() -> None:
    """Both nodes offer the hashed address of different MACs that collide; the chain orders."""
    a, b, chain = server(node_id="node-a"), server(node_id="node-b"), Chain()
    # Find two MACs whose hashed addresses collide.
    target = ipv4_for(NET_ID, mac(100), CIDR).ip
    other = next(mac(i) for i in range(101, 100_000) if ipv4_for(NET_ID, mac(i), CIDR).ip == target)
    m1, m2 = mac(100), other
    (offer_a,) = a.frame(client_frame(m1, "discover"), T0)
    (offer_b,) = b.frame(client_frame(m2, "discover"), T0)
    assert reply(offer_a)[BOOTP].yiaddr == reply(offer_b)[BOOTP].yiaddr == str(target)
    (bind_a,) = a.frame(
        client_frame(m1, "request", requested=str(target), server_id=str(GW_IP)), T0
    )
    (bind_b,) = b.frame(
        client_frame(m2, "request", requested=str(target), server_id=str(GW_IP)), T0
    )
    chain.append(bind_a)
    chain.append(bind_b)  # node b appended second
    (ack,) = a.apply_bindings(chain.records, T0 + 0.1)
    (nak,) = b.apply_bindings(chain.records, T0 + 0.1)
    assert options(reply(ack))["message-type"] == 5
    assert options(reply(nak))["message-type"] == 6
    assert a.leases() == b.leases()  # both nodes agree: m1 holds the address
    assert [lease.mac for lease in a.leases()] == [m1]
    assert a.counters["bindings_lost"] == b.counters["bindings_lost"] == 1
    # A retransmitted REQUEST for the lost address is NAKed on either node.
    again = client_frame(m2, "request", requested=str(target), server_id=str(GW_IP))
    for node in (a, b):
        (nak,) = node.frame(again, T0 + 1)
        assert options(reply(nak))["message-type"] == 6
    # The loser starts over and gets the next address, on either node.
    ack2 = dora(b, chain, m2, now=T0 + 2)
    assert ack2[BOOTP].yiaddr == str(target + 1)
    assert a.apply_bindings(chain.records, T0 + 2) == []
    assert a.leases() == b.leases()
    assert len(a.leases()) == 2


def test_pool_exhaustion_gives_no_offer_and_counts_then_reclaims_expired() -> None:
    srv, chain = server(cidr="10.77.4.0/28", gateway_ip="10.77.4.1", hold=3600), Chain()
    ips = {dora(srv, chain, mac(i))[BOOTP].yiaddr for i in range(13)}  # .2 … .14
    assert len(ips) == 13 and "10.77.4.1" not in ips
    assert srv.frame(client_frame(mac(50), "discover"), T0) == []
    assert srv.counters["pool_exhausted"] == 1
    # Once bindings have expired (past the grace), the pool takes the oldest one back.
    later = T0 + 3600 + 61
    ack = dora(srv, chain, mac(50), now=later)
    taken = ack[BOOTP].yiaddr
    assert taken in ips
    assert chain.records[-1].reclaims is not None
    assert {str(lease.ip) for lease in srv.leases()} == ips
    assert mac(50) in {lease.mac for lease in srv.leases()}


def test_bind_rate_limit_per_port_stops_a_mac_spraying_client() -> None:
    srv, chain = server(cidr="10.78.0.0/16", gateway_ip="10.78.0.1"), Chain()
    binds = 0
    for i in range(100):
        m = mac(1000 + i)
        (offer,) = srv.frame(client_frame(m, "discover"), T0, port="spoofer")
        ip = reply(offer, srv.gateway_ip)[BOOTP].yiaddr
        out = srv.frame(
            client_frame(m, "request", requested=ip, server_id=str(srv.gateway_ip)),
            T0,
            port="spoofer",
        )
        for action in out:
            if isinstance(action, Bind):
                binds += 1
                srv.apply_bindings([chain.append(action)], T0)
    assert binds == 8  # the per-port burst
    assert srv.counters["bind_rate_limited"] == 92
    # Another port is unaffected; the spoofing port gets one more bind after 30 s.
    assert len(dora(srv, chain, mac(5000)).layers()) > 0
    (offer,) = srv.frame(client_frame(mac(6000), "discover"), T0 + 31, port="spoofer")
    ip = reply(offer, srv.gateway_ip)[BOOTP].yiaddr
    out = srv.frame(
        client_frame(mac(6000), "request", requested=ip, server_id=str(srv.gateway_ip)),
        T0 + 31,
        port="spoofer",
    )
    assert any(isinstance(a, Bind) for a in out)


def test_offers_are_bounded_per_port_and_in_total_by_evicting_the_oldest() -> None:
    srv, chain = server(max_offers=50), Chain()
    for i in range(80):  # one port spraying DISCOVERs from random MACs
        assert len(srv.frame(client_frame(mac(i), "discover"), T0, port="spoofer")) == 1
    assert len(srv.offers) == 16 and srv.counters["offers_evicted"] == 64
    assert set(srv.offers) == {mac(i) for i in range(64, 80)}  # the newest stay
    # It reserved 16 addresses at most: the pool is still open to everyone else.
    reserved = {str(IPv4Address(o.ip)) for o in srv.offers.values()}
    ack = dora(srv, chain, mac(500))
    assert options(ack)["message-type"] == 5 and ack[BOOTP].yiaddr not in reserved
    for i in range(80):  # 80 ports, one MAC each: the total bound evicts the oldest
        srv.frame(client_frame(mac(1000 + i), "discover"), T0, port=i)
    assert len(srv.offers) == 50
    # A client whose offer was evicted is still served: its REQUEST binds the free address.
    evicted = mac(1000)
    assert evicted not in srv.offers
    ip = str(ipv4_for(NET_ID, evicted, CIDR).ip)
    (bind,) = srv.frame(client_frame(evicted, "request", requested=ip, server_id=str(GW_IP)), T0)
    assert isinstance(bind, Bind) and str(bind.ip) == ip
    srv.frame(client_frame(mac(999), "discover"), T0 + 61)  # old offers expired
    assert len(srv.offers) == 1


def test_request_not_for_us_is_ignored() -> None:
    srv = server()
    m = mac(1)
    frame = raw(
        Ether(src=m.hex(":"), dst="02:00:00:00:00:99")  # unicast to another DHCP server
        / IP(src="10.77.3.9", dst="10.77.3.200")
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=m, ciaddr="10.77.3.9")
        / DHCP(options=[("message-type", "request"), "end"])
    )
    assert srv.frame(frame, T0) == [] and srv.counters["ignored"] == 1


def test_init_reboot_for_a_free_address_that_is_not_its_binding_is_naked() -> None:
    srv, chain = server(), Chain()
    m = mac(11)
    ip = IPv4Address(dora(srv, chain, m)[BOOTP].yiaddr)
    free = str(ip + 50 if ip + 50 in srv.network else ip - 50)
    (nak,) = srv.frame(client_frame(m, "request", requested=free), T0 + 1)
    assert options(reply(nak))["message-type"] == 6
    assert len(chain.records) == 1
    # A client the chain has never seen may claim a free address (we are authoritative).
    (bind,) = srv.frame(client_frame(mac(12), "request", requested=free), T0 + 2)
    assert isinstance(bind, Bind) and str(bind.ip) == free


def test_request_for_another_servers_offer_is_ignored() -> None:
    srv = server()
    (offer,) = srv.frame(client_frame(mac(1), "discover"), T0)
    ip = reply(offer)[BOOTP].yiaddr
    assert (
        srv.frame(client_frame(mac(1), "request", requested=ip, server_id="10.77.3.200"), T0) == []
    )
    assert srv.offers == {}


def test_replay_on_a_restarted_node_gives_the_same_table() -> None:
    srv, chain = server(), Chain()
    for i in range(5):
        dora(srv, chain, mac(i))
    fresh = server(node_id="node-b")
    assert fresh.apply_bindings(chain.records, T0) == []
    assert fresh.leases() == srv.leases()
    renew_ip = str(srv.by_mac[mac(2)].ip)
    (ack,) = fresh.frame(client_frame(mac(2), "request", ciaddr=renew_ip, src=renew_ip), T0 + 5)
    assert options(reply(ack))["message-type"] == 5


# --- fuzz ----------------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    return [
        client_frame(mac(1), "discover", hostname="h"),
        client_frame(mac(1), "request", requested="10.77.3.9", server_id=str(GW_IP)),
        client_frame(mac(1), "request", ciaddr="10.77.3.9", src="10.77.3.9"),
        client_frame(mac(1), "decline", requested="10.77.3.9"),
        client_frame(mac(1), "release", ciaddr="10.77.3.9"),
        client_frame(mac(1), "inform", ciaddr="10.77.3.9"),
    ]


FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(
    seed=st.sampled_from(_seeds()),
    edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 700),
    junk=st.binary(max_size=64),
)
def test_fuzz_mutated_frames_never_raise(
    seed: bytes, edits: list[tuple[int, int]], cut: int, junk: bytes
) -> None:
    srv = server()
    buf = bytearray(seed)
    for pos, val in edits:
        if pos < len(buf):
            buf[pos] = val
    frame = bytes(buf[:cut]) + junk
    before = sum(srv.counters.values())
    actions = srv.frame(frame, T0, port="p")
    for action in actions:
        if isinstance(action, Send):
            d.parse_dhcp_frame(action.frame)  # whatever we send is well-formed
    if not actions:
        assert sum(srv.counters.values()) > before  # every drop is counted


@FUZZ
@given(payload=st.binary(max_size=700))
def test_fuzz_random_dhcp_payloads_never_raise(payload: bytes) -> None:
    srv = server()
    udp = UDP(sport=68, dport=67) / payload
    frame = raw(Ether(src=mac(3).hex(":")) / IP(src="0.0.0.0", dst="255.255.255.255") / udp)
    srv.frame(frame, T0)
    assert srv.counters["malformed"] + srv.counters["ignored"] >= 1 or srv.counters["offers"]


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "mac": st.sampled_from(
                    ["02:aa:00:00:00:01", "02:aa:00:00:00:02", "zz", "01:00:5e:00:00:01"]
                ),
                "ip": st.sampled_from(["10.77.3.5", "10.77.3.6", "10.77.3.1", "10.77.3.255", "x"]),
                "expires": st.one_of(st.floats(), st.integers(), st.text(max_size=3)),
                "reclaims": st.one_of(st.none(), st.integers(-2, 20), st.booleans()),
            }
        ),
        max_size=20,
    )
)
def test_fuzz_lease_records_resolve_identically_on_two_nodes(records: list[dict[str, Any]]) -> None:
    a, b = server(node_id="a"), server(node_id="b")
    good = []
    for seq, p in enumerate(records, 1):
        try:
            good.append(Lease.from_payload(seq, p))
        except DecodeError:
            continue
    a.apply_bindings(good, T0)
    for rec in good:  # the other node gets them one by one
        b.apply_bindings([rec], T0)
    assert a.leases() == b.leases()
    ips = [lease.ip for lease in a.leases()]
    assert len(ips) == len(set(ips)) and IPv4Address("10.77.3.1") not in ips
    macs = [lease.mac for lease in a.leases()]
    assert len(macs) == len(set(macs))


def test_random_order_replay_is_deterministic() -> None:
    rng = random.Random(7)
    chain = Chain()
    for seq in range(1, 200):
        m = mac(rng.randrange(20))
        ip = IPv4Address("10.77.3.0") + rng.randrange(2, 30)
        rec_reclaims = rng.randrange(1, seq) if seq > 1 and rng.random() < 0.3 else None
        chain.records.append(
            Lease(seq, m, ip, "", "n", T0 + rng.randrange(-100, 100), rec_reclaims)
        )
    a, b = server(), server()
    a.apply_bindings(chain.records, T0)
    for i in range(0, len(chain.records), 7):
        b.apply_bindings(chain.records[i : i + 7], T0)
    b.apply_bindings(chain.records, T0)  # repeats are skipped
    assert a.leases() == b.leases()


# --- a real client: busybox udhcpc on a TAP in a namespace (root) ----------------------------


class TapServer:
    """The nodes' part, in one thread: frames from each TAP into its node's DhcpServer, replies
    back out, every Bind appended to one shared chain and applied on every node in order.

    It also answers ARP for the gateway address (router/gateway.py's job once wired), because a
    renewing client sends its REQUEST by unicast to the server and must resolve it first.
    """

    def __init__(self, *pairs: tuple[TapDevice, DhcpServer]) -> None:
        self.pairs = pairs
        self.chain = Chain()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _handle(self, tap: TapDevice, srv: DhcpServer, frame: bytes) -> None:
        eth = EthernetRepr.parse(frame)
        if eth.ethertype == ETHERTYPE_ARP:
            arp = ArpRepr.parse(eth.payload)
            if arp.operation == ARP_REQUEST and arp.target_ip == srv.gateway_ip:
                tap.write(arp_reply(GW_MAC, srv.gateway_ip, arp.sender_mac, arp.sender_ip))
            return
        for action in srv.frame(frame, time.time(), port=tap.name):
            if isinstance(action, Send):
                tap.write(action.frame)
                continue
            rec = self.chain.append(action)
            for other_tap, other in self.pairs:
                for settled in other.apply_bindings([rec], time.time()):
                    assert isinstance(settled, Send)
                    other_tap.write(settled.frame)

    def _run(self) -> None:
        taps = {tap: srv for tap, srv in self.pairs}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(taps), [], [], 0.05)
            for tap in ready:
                for frame in tap.read_batch():
                    self._handle(tap, taps[tap], frame)

    def __enter__(self) -> TapServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def open_tap(host: Host, name: str, client_mac: bytes) -> TapDevice:
    def body() -> TapDevice:
        tap = TapDevice.open(name, mtu=MTU, mac=client_mac)
        configure_link(tap.name)
        return tap

    return host.call(body)


@needs_root
def test_busybox_udhcpc_gets_the_hashed_address_and_renews_without_a_bind(
    lab: Lab, tmp_path: Path
) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (scripts/setup.sh installs it)")
    client_mac = bytes.fromhex("02cc00000042")
    host = lab.add_host("dhcp")
    tap = open_tap(host, "dhcp0", client_mac)
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    log = tmp_path / "events.log"
    # busybox raises a lease under 30 s to 30 s (T1 = 15 s), so the renewal is asked for the way
    # an operator does: SIGUSR1 makes udhcpc renew now, by the same unicast REQUEST as at T1.
    srv = server(lease_time=4)
    proc = None
    try:
        with TapServer((tap, srv)) as node:
            proc = host.popen(
                ["env", f"LOG={log}", "busybox", "udhcpc", "-f", "-i", "dhcp0", "-s", str(script),
                 "-t", "5", "-T", "1", "-x", "hostname:labhost"],
            )  # fmt: skip
            assert wait_for_lines(log, 1)  # bound
            proc.send_signal(signal.SIGUSR1)
            events = wait_for_lines(log, 2)  # bound + a renewal
            hashed = ipv4_for(NET_ID, client_mac, CIDR)
            assert events and events[0].startswith(f"bound ip={hashed.ip} mask=24"), events
            assert f"router={GW_IP} dns=8.8.8.8 mtu={MTU}" in events[0]
            assert any(e.startswith("renew") for e in events), events
            (addr,) = json.loads(
                host.run(["ip", "-j", "-4", "addr", "show", "dev", "dhcp0"]).stdout
            )
            assert [(a["local"], a["prefixlen"]) for a in addr["addr_info"]] == [
                (str(hashed.ip), 24)
            ]
            route = host.run(["ip", "route", "show", "default"]).stdout
            assert f"via {GW_IP} dev dhcp0" in route
            # One binding in the chain, however many renewals the server ACKed.
            assert len(node.chain.records) == 1
            assert node.chain.records[0].host == "labhost"
            assert srv.counters["acks"] >= 2 and srv.counters["binds"] == 1
    finally:
        stop(proc)
        tap.close()


@needs_root
def test_udhcpc_and_dhclient_on_two_nodes_with_colliding_hashes_get_different_addresses(
    lab: Lab, tmp_path: Path
) -> None:
    """Two hosts whose hashed addresses collide, each behind its own node's server, one chain.

    busybox udhcpc binds first through node a; ISC dhclient then asks node b, which has applied
    node a's binding from the chain and offers the next address.
    """
    if shutil.which("busybox") is None or shutil.which("dhclient") is None:
        pytest.skip("busybox and isc-dhcp-client are needed (scripts/setup.sh installs them)")
    mac_a = bytes.fromhex("02cc00000001")
    target = ipv4_for(NET_ID, mac_a, CIDR).ip
    mac_b = next(
        m
        for m in (bytes.fromhex("02cc01") + i.to_bytes(3, "big") for i in range(100_000))
        if ipv4_for(NET_ID, m, CIDR).ip == target
    )
    host_a, host_b = lab.add_host("ua"), lab.add_host("ub")
    tap_a = open_tap(host_a, "dhcpa", mac_a)
    tap_b = open_tap(host_b, "dhcpb", mac_b)
    srv_a, srv_b = server(node_id="node-a"), server(node_id="node-b")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    # dhclient runs its script with a clean environment: the log path goes into the text.
    dhclient_script = DHCLIENT_SCRIPT.replace('"$LOG"', shlex.quote(str(log_b)))
    for name, text in (("udhcpc.sh", UDHCPC_SCRIPT), ("dhclient.sh", dhclient_script)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    procs: list[subprocess.Popen[Any]] = []
    try:
        with TapServer((tap_a, srv_a), (tap_b, srv_b)) as nodes:
            udhcpc = ["env", f"LOG={log_a}", "busybox", "udhcpc", "-f", "-i", "dhcpa",
                      "-s", str(tmp_path / "udhcpc.sh"), "-t", "5", "-T", "1"]  # fmt: skip
            procs.append(host_a.popen(udhcpc))
            events_a = wait_for_lines(log_a, 1)
            assert events_a and events_a[0].startswith(f"bound ip={target} "), events_a
            dhclient = ["env", f"LOG={log_b}", "dhclient", "-4", "-d", "-v",
                        "-sf", str(tmp_path / "dhclient.sh"), "-lf", str(tmp_path / "b.leases"),
                        "-pf", str(tmp_path / "b.pid"), "dhcpb"]  # fmt: skip
            with open(tmp_path / "b.err", "w") as err:  # the child keeps its own copy
                procs.append(host_b.popen(dhclient, stderr=err))
            events_b = wait_for_lines(log_b, 1, timeout=30)
            assert events_b, (tmp_path / "b.err").read_text().splitlines()[-5:]
            assert events_b[0] == (
                f"BOUND ip={target + 1} mask=255.255.255.0 router={GW_IP} dns=8.8.8.8 mtu={MTU}"
            )
            (addr,) = json.loads(
                host_b.run(["ip", "-j", "-4", "addr", "show", "dev", "dhcpb"]).stdout
            )
            assert [a["local"] for a in addr["addr_info"]] == [str(target + 1)]
            records = nodes.chain.records
            assert [(r.mac, r.ip, r.node) for r in records] == [
                (mac_a, target, "node-a"),
                (mac_b, target + 1, "node-b"),
            ]
            assert srv_a.leases() == srv_b.leases()
    finally:
        for proc in procs:
            stop(proc)
        tap_a.close()
        tap_b.close()
