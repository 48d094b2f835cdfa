"""The NAT forwarder, sans-I/O: a client stack (Interface + Tcp) talks through the real
Gateway to :class:`atenet.router.nat.Nat`; the test plays the host sockets by answering the
forwarder's actions with fake host-socket events. Time is injected.
"""

from __future__ import annotations

import errno
import hashlib
from ipaddress import IPv4Address, IPv4Interface

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet import addressing
from atenet.offload import is_offloaded
from atenet.router import nat as natmod
from atenet.router.gateway import Gateway
from atenet.router.nat import (
    Close,
    Nat,
    NatLimits,
    OpenPing,
    OpenTcp,
    OpenUdp,
    PauseReading,
    ResumeReading,
    Send,
    SendPing,
    ShutdownWrite,
)
from atenet.stack.iface import TSO_BYTES, EchoReply, IcmpError, Interface
from atenet.stack.tcp import ESTABLISHED, SYN_SENT, Connection, Tcp

NET = b"\x11" * 16
CIDR = "10.0.0.0/24"
SERVER = IPv4Address("203.0.113.10")
NODE = IPv4Address("198.51.100.7")


class Lab:
    """One network: client stacks, the gateway with its forwarder, a clock."""

    def __init__(self, mtu: int = 1500, **kw: object) -> None:
        self.now = 1000.0
        self.gw = Gateway(NET, CIDR, None, mtu)
        limits = kw.pop("limits", None)
        self.nat = Nat(
            IPv4Interface(f"{self.gw.ipv4}/24"),
            self.gw.mac,
            mtu,
            is_local=lambda a: a == NODE,
            limits=limits,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        self.gw.internet = self.nat.packet
        self.clients: list[Interface] = []
        self.actions: list[object] = []

    def client(self, n: int = 5, mss: int = 1460) -> Interface:
        mac = bytes([2, 0, 0, 0, 0, n])
        iface = Interface(
            mac,
            ipv4=IPv4Interface(f"10.0.0.{n}/24"),
            gateway4=self.gw.ipv4,
            ipv6=False,
            tcp=Tcp(mss=mss, seed=n),
        )
        self.clients.append(iface)
        return iface

    def step(self) -> bool:
        moved = False
        for c in self.clients:
            for frame in c.poll(self.now):
                moved = True
                if frame[12:14] == b"\x08\x06":  # as the node does: ARP replies reach the stack
                    self.nat.arp(frame, self.now)
                for out in self.gw.frame(frame, self.now):
                    self._to_clients(out)
        for frame in self.nat.poll(self.now):
            moved = True
            self._to_clients(frame)
        new = self.nat.actions()
        self.actions += new
        return moved or bool(new)

    def _to_clients(self, frame: bytes) -> None:
        for c in self.clients:
            if frame[:6] in (c.mac, b"\xff" * 6):
                c.receive(frame, self.now)

    def run(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.step():
                return

    def upload(self, conn: Connection, data: bytes, rounds: int, tick: float) -> bytes:
        """Send ``data`` on the client connection ``conn``, stepping the network ``tick``
        seconds at a time for at most ``rounds`` steps; what the forwarder sent on to the host
        socket (its Send actions), joined."""
        sent = 0
        got = bytearray()
        for _ in range(rounds):
            if sent < len(data):
                sent += conn.send(data[sent:])
            self.step()
            got += b"".join(a.data for a in self.take(Send))
            if len(got) == len(data):
                break
            self.now += tick
        return bytes(got)

    def take(self, kind: type) -> list:
        self.actions += self.nat.actions()
        got = [a for a in self.actions if isinstance(a, kind)]
        self.actions = [a for a in self.actions if not isinstance(a, kind)]
        return got

    def fuzz_host(self, port: int) -> None:
        """The fuzz tests' host side after one client packet: a third of the new flows open,
        a third of the TCP ones are refused, the rest hang; the caps (6 per network, 4 per
        client in those tests) hold."""
        self.nat.poll(self.now)
        for action in self.nat.actions():
            if isinstance(action, OpenTcp | OpenUdp | OpenPing) and port % 3 == 0:
                self.nat.opened(action.flow, self.now)
            elif isinstance(action, OpenTcp) and port % 3 == 1:
                self.nat.failed(action.flow, "refused", self.now)
        self.now += 0.3
        assert len(self.nat.flows) <= 6
        assert all(n <= 4 for n in self.nat._per_client.values())

    def fuzz_end(self) -> None:
        """Three hours later every flow, half-open or not, has timed out."""
        self.now += 3 * 3600
        self.nat.poll(self.now)
        assert not self.nat.flows and self.nat.status()["half_open"] == 0

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 0.5)
            self.run()


def _connect(lab: Lab, client: Interface, port: int = 80):
    conn = client.tcp.connect(client.ipv4.ip.packed, SERVER.packed, port, lab.now)  # type: ignore[union-attr]
    lab.run()
    (opened,) = lab.take(OpenTcp)
    return conn, opened.flow


def test_tcp_waits_for_the_host_connect_then_relays_both_ways_sha_equal() -> None:
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    assert lab.nat.counters["flows_opened_tcp"] == 1
    lab.advance(0.5)
    assert conn.state == SYN_SENT  # no SYN-ACK before the host socket connected
    lab.nat.opened(flow, lab.now)
    lab.run()
    assert conn.state == ESTABLISHED
    up = bytes(range(256)) * 1200  # 300 KiB, more than the stack's buffers
    got = lab.upload(conn, up, 400, 0.01)
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    down = bytes(reversed(up))
    received = bytearray()
    offset = 0
    paused = False
    for _ in range(2000):
        if not paused and offset < len(down):
            lab.nat.data(flow, down[offset : offset + 65536], lab.now)
            offset += 65536
        lab.step()
        if lab.take(PauseReading):
            paused = True
        if lab.take(ResumeReading):
            paused = False
        received += conn.recv(1 << 20)
        if len(received) == len(down):
            break
        lab.now += 0.01
    assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
    assert lab.nat.counters["bytes_up"] == len(up)
    assert lab.nat.counters["bytes_down"] == len(down)


class OffloadLab(Lab):
    """As :class:`Lab`, but the clients offload (``tso``: a vnet TAP's kernel, a mio port)
    and packets move as the node moves them: an offloaded packet for the gateway is offered
    to ``Gateway.nat_tcp`` + ``Nat.tcp_frame`` whole, a plain frame takes the same fast path
    or ``Gateway.frame``; the forwarder's ``poll_packets`` come back whole. ``packets``
    counts what crossed between the clients and the forwarder."""

    packets = 0

    def client(self, n: int = 5, mss: int = 1460) -> Interface:
        iface = super().client(n, mss)
        iface.tso = True
        iface.tcp.tso = TSO_BYTES  # type: ignore[union-attr]
        return iface

    def step(self) -> bool:
        moved = False
        for c in self.clients:
            for packet in c.poll_packets(self.now):
                moved = True
                self.packets += 1
                frame = packet[10:]
                if is_offloaded(packet):
                    assert self.gw.nat_tcp(packet, 10) and self.nat.tcp_frame(packet, 10, self.now)
                    continue
                if self.gw.nat_tcp(frame, 0) and self.nat.tcp_frame(frame, 0, self.now):
                    continue
                if frame[12:14] == b"\x08\x06":
                    self.nat.arp(frame, self.now)
                for out in self.gw.frame(frame, self.now):
                    self._to_clients(out)
        for packet in self.nat.poll_packets(self.now):
            moved = True
            self.packets += 1
            for c in self.clients:
                if packet[10:16] == c.mac:
                    c.receive_packet(packet, self.now)
                elif packet[10:16] == b"\xff" * 6:
                    c.receive(packet[10:], self.now)
        new = self.nat.actions()
        self.actions += new
        return moved or bool(new)


def test_offloading_client_moves_super_frames_both_ways_sha_equal() -> None:
    """A client that offloads (tok's vnet TAP) sends the forwarder 64 KB TSO super-frames
    it takes whole, and gets its super-segments back: the same bytes as MSS frames, in far
    fewer packets (the NAT's bulk path, docs/nat.md)."""
    lab = OffloadLab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    assert conn.state == ESTABLISHED
    up = hashlib.sha256(b"up").digest() * 32768  # 1 MiB
    lab.packets = 0
    got = lab.upload(conn, up, 2000, 0.001)
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    assert lab.nat.counters["superframes_in"] >= 8
    assert lab.packets < len(up) // 1460 // 2  # data and ACKs: far fewer than MSS frames
    down = bytes(reversed(up))
    received, offset = bytearray(), 0
    lab.packets = 0
    for _ in range(4000):
        flow_state = lab.nat.flows[flow]
        if offset < len(down) and not flow_state.reading_paused:
            lab.nat.data(flow, down[offset : offset + 65536], lab.now)
            offset += 65536
        lab.step()
        lab.take(PauseReading)
        lab.take(ResumeReading)
        received += conn.recv(1 << 20)
        if len(received) == len(down):
            break
        lab.now += 0.001
    assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
    assert lab.nat.counters["superframes_out"] >= 8
    assert lab.packets < len(down) // 1460 // 2
    assert lab.nat.counters["bytes_up"] == len(up)
    assert lab.nat.counters["bytes_down"] == len(down)


def test_super_segments_reach_a_client_without_offloads_as_frames() -> None:
    """``Nat.poll()`` (and the switch for a port without offloads) cuts the forwarder's
    super-segments into MSS frames with full checksums: a plain client gets every byte."""
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    down = hashlib.sha256(b"down").digest() * 8192  # 256 KiB
    received, offset = bytearray(), 0
    for _ in range(4000):
        if offset < len(down) and not lab.nat.flows[flow].reading_paused:
            lab.nat.data(flow, down[offset : offset + 65536], lab.now)
            offset += 65536
        lab.step()
        lab.take(PauseReading)
        lab.take(ResumeReading)
        received += conn.recv(1 << 20)
        if len(received) == len(down):
            break
        lab.now += 0.001
    assert received == down
    assert lab.nat.tcp.counters["tso_segments_out"] > 0  # they were super-segments inside


def test_the_fast_path_refuses_what_is_not_a_flows_segment() -> None:
    """``Gateway.nat_tcp`` hands the forwarder only TCP for the internet that is not a SYN;
    ``Nat.tcp_frame`` drops (and counts) a source outside the network."""
    lab = Lab()
    client = lab.client()
    _conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    mac = client.mac

    def tcp(src: bytes, dst: bytes, flags: int) -> bytes:
        seg = bytes(13) + bytes([flags]) + bytes(6)
        ip = bytearray(
            b"\x45\x00" + (40).to_bytes(2, "big") + bytes(4) + b"\x40\x06\x00\x00" + src + dst
        )
        return lab.gw.mac + mac + b"\x08\x00" + bytes(ip) + seg

    me, out = IPv4Address("10.0.0.5").packed, SERVER.packed
    assert lab.gw.nat_tcp(tcp(me, out, 0x10), 0)  # an ACK for the internet
    assert not lab.gw.nat_tcp(tcp(me, out, 0x02), 0)  # a SYN: the general path
    assert not lab.gw.nat_tcp(tcp(me, IPv4Address("10.0.0.9").packed, 0x10), 0)  # own network
    assert not lab.gw.nat_tcp(tcp(me, IPv4Address("224.0.0.9").packed, 0x10), 0)
    before = lab.nat.counters["foreign_source"]
    assert lab.nat.tcp_frame(tcp(IPv4Address("10.9.0.5").packed, out, 0x10), 0, lab.now)
    assert lab.nat.counters["foreign_source"] == before + 1


def test_slow_client_pauses_the_host_socket_and_memory_stays_bounded() -> None:
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    chunk = b"x" * 65536
    pushes = 0
    while not lab.take(PauseReading):  # the client never reads: the shell is told to stop
        lab.nat.data(flow, chunk, lab.now)
        pushes += 1
        lab.run()
        lab.now += 0.05
        assert pushes < 40
    held = lab.nat.flows[flow]
    limit = lab.nat.limits.tcp_buffer
    # The forwarder holds at most its send buffer plus one host read; the client its window.
    assert len(held.conn.sbuf) <= limit and len(held.pending) <= 65536
    assert client.tcp.conns[conn.key].readable <= 256 * 1024
    conn.recv(1 << 22)  # the client reads: room again, reading resumes
    for _ in range(50):
        lab.run()
        lab.now += 0.05
        conn.recv(1 << 22)
        if lab.take(ResumeReading):
            break
    else:
        raise AssertionError("reading never resumed")


def test_slow_host_closes_the_clients_window() -> None:
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    lab.nat.writable(flow, False, lab.now)  # host socket's buffer full (pause_writing)
    lab.take(Send)
    taken = 0
    for _ in range(200):
        taken += conn.send(b"y" * 65536)
        lab.step()
        lab.now += 0.05
    assert not lab.take(Send)  # nothing read for the host while it is blocked
    server_side = lab.nat.flows[flow].conn
    assert server_side.readable <= lab.nat.limits.tcp_buffer
    assert taken <= lab.nat.limits.tcp_buffer + 256 * 1024  # window + client's send buffer
    lab.nat.writable(flow, True, lab.now)
    lab.run()
    assert sum(len(a.data) for a in lab.take(Send)) > 0


def test_refused_host_connect_becomes_rst_and_unreachable_icmp() -> None:
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.failed(flow, "refused", lab.now)
    lab.run()
    assert conn.error == errno.ECONNREFUSED
    assert lab.nat.counters["host_refused"] == 1 and not lab.nat.flows
    _conn2, flow2 = _connect(lab, client, 81)
    lab.nat.failed(flow2, "unreachable", lab.now)
    lab.run()
    errors = [e for e in client.events() if isinstance(e, IcmpError)]
    assert [(e.type, e.code, e.dst_port) for e in errors] == [(3, 1, 81)]
    assert not lab.nat.flows and lab.nat.status()["half_open"] == 0


def test_host_close_becomes_fin_and_client_fin_becomes_shutdown() -> None:
    lab = Lab()
    client = lab.client()
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    conn.send(b"request")
    lab.run()
    lab.nat.data(flow, b"response", lab.now)
    lab.nat.eof(flow, lab.now)
    lab.run()
    assert conn.recv(100) == b"response" and conn.eof
    conn.close()
    lab.run()
    assert lab.take(ShutdownWrite)
    lab.advance(3)
    assert not lab.nat.flows and lab.nat.counters["flows_closed"] == 1
    # and the other way round: the client closes first, the host's reset becomes an RST
    conn2, flow2 = _connect(lab, client, 8080)
    lab.nat.opened(flow2, lab.now)
    lab.run()
    conn2.shutdown()
    lab.run()
    assert [a.flow for a in lab.take(ShutdownWrite)] == [flow2]
    lab.nat.closed(flow2, True, lab.now)
    lab.run()
    assert conn2.error == errno.ECONNRESET


def test_mss_is_clamped_to_the_network_mtu() -> None:
    lab = Lab(mtu=1400)
    client = lab.client(mss=1460)
    conn, flow = _connect(lab, client)
    lab.nat.opened(flow, lab.now)
    lab.run()
    assert conn.mss == 1360


def test_udp_flows_get_one_host_socket_each_and_replies_come_from_the_server() -> None:
    lab = Lab()
    a, b = lab.client(5), lab.client(6)
    sa, sb = a.udp_bind(5000), b.udp_bind(5000)  # the same local port on two hosts
    sa.sendto(b"from a", (SERVER, 9000), lab.now)
    sb.sendto(b"from b", (SERVER, 9000), lab.now)
    lab.run()
    opens = lab.take(OpenUdp)
    assert [o.dst for o in opens] == [("203.0.113.10", 9000)] * 2
    assert not lab.take(Send)  # held until the sockets are ready
    for o in opens:
        lab.nat.opened(o.flow, lab.now)
    assert sorted(s.data for s in lab.take(Send)) == [b"from a", b"from b"]
    lab.nat.data(opens[0].flow, b"to a", lab.now)
    lab.nat.data(opens[1].flow, b"to b" * 1000, lab.now)  # 4000 bytes: fragmented to b
    lab.run()
    assert sa.recvfrom() == (b"to a", (SERVER, 9000))
    assert sb.recvfrom() == (b"to b" * 1000, (SERVER, 9000))
    sa.sendto(b"again", (SERVER, 9000), lab.now)
    lab.run()
    assert lab.take(Send) == [Send(opens[0].flow, b"again")]
    assert not lab.take(OpenUdp)  # same flow


def test_udp_timeouts_short_for_one_shot_long_for_streams() -> None:
    lab = Lab()
    c = lab.client()
    s = c.udp_bind(5353)
    s.sendto(b"q", (SERVER, 53), lab.now)
    s.sendto(b"q", (SERVER, 54), lab.now)
    lab.run()
    dns, stream = lab.take(OpenUdp)
    for o in (dns, stream):
        lab.nat.opened(o.flow, lab.now)
    lab.nat.data(dns.flow, b"answer", lab.now)
    for _ in range(2):
        s.sendto(b"more", (SERVER, 54), lab.now)
        lab.run()
        lab.nat.data(stream.flow, b"ok", lab.now)
    lab.advance(61)
    assert lab.take(Close) == [Close(dns.flow, False)]
    assert stream.flow in lab.nat.flows  # assured: 180 s
    lab.advance(120)
    assert lab.take(Close) == [Close(stream.flow, False)]
    assert lab.nat.counters["timeout_udp"] == 2


def test_tcp_connect_timeout_and_idle_timeout() -> None:
    lab = Lab(limits=NatLimits(tcp_idle=600.0))
    c = lab.client()
    conn, flow = _connect(lab, c)
    lab.advance(30.6)  # before the client's SYN retry at 31 s
    assert lab.take(Close) == [Close(flow, True)]
    conn.abort()
    assert lab.nat.counters["timeout_connect"] == 1 and lab.nat.status()["half_open"] == 0
    errors = [e for e in c.events() if isinstance(e, IcmpError)]
    assert [(e.type, e.code) for e in errors] == [(3, 1)]  # host unreachable
    conn2, flow2 = _connect(lab, c, 443)
    lab.nat.opened(flow2, lab.now)
    lab.run()
    lab.now += 599
    lab.run()
    assert flow2 in lab.nat.flows
    lab.advance(2)
    assert lab.take(Close) == [Close(flow2, True)]
    assert conn2.error == errno.ECONNRESET


def test_refused_destinations_are_counted_and_answered_prohibited() -> None:
    lab = Lab()
    c = lab.client()
    s = c.udp_bind(4000)
    for dst in ("169.254.169.254", "127.0.0.1", "169.254.1.1", str(NODE), "192.168.1.1"):
        s.sendto(b"x", (IPv4Address(dst), 80), lab.now)
        lab.run()
    c.tcp.connect(c.ipv4.ip.packed, NODE.packed, 22, lab.now)  # type: ignore[union-attr]
    lab.run()
    assert not lab.take(OpenUdp) and not lab.take(OpenTcp)
    counters = lab.nat.counters
    assert counters["refused_metadata"] == 1 and counters["refused_loopback"] == 1
    assert counters["refused_link_local"] == 1 and counters["refused_private"] == 1
    assert counters["refused_node_address"] == 2 and counters["refused"] == 6
    codes = {(e.type, e.code) for e in c.events() if isinstance(e, IcmpError)}
    assert codes == {(3, 13)}
    lab.nat.set_allow_private(True)
    s.sendto(b"x", (IPv4Address("192.168.1.1"), 80), lab.now)
    lab.run()
    assert len(lab.take(OpenUdp)) == 1


def test_caps_per_client_per_network_rate_and_half_open() -> None:
    limits = NatLimits(flows_per_client=2, flows_per_network=3, half_open=10)
    lab = Lab(limits=limits)
    a, b = lab.client(5), lab.client(6)
    sa, sb = a.udp_bind(1), b.udp_bind(1)
    for port in (1, 2, 3):
        sa.sendto(b"x", (SERVER, port), lab.now)
    lab.run()
    assert len(lab.take(OpenUdp)) == 2 and lab.nat.counters["refused_client_flows"] == 1
    sb.sendto(b"x", (SERVER, 1), lab.now)
    sb.sendto(b"x", (SERVER, 2), lab.now)
    lab.run()
    assert len(lab.take(OpenUdp)) == 1 and lab.nat.counters["refused_network_flows"] == 1

    lab = Lab(limits=NatLimits(half_open=2, new_flows_rate=1.0, new_flows_burst=3))
    c = lab.client()
    for port in (1, 2, 3):
        c.tcp.connect(c.ipv4.ip.packed, SERVER.packed, port, lab.now)  # type: ignore[union-attr]
    lab.run()
    assert len(lab.take(OpenTcp)) == 2 and lab.nat.counters["refused_half_open"] >= 1
    s = c.udp_bind(7)
    s.sendto(b"x", (SERVER, 7), lab.now)
    s.sendto(b"x", (SERVER, 8), lab.now)
    lab.run()
    assert len(lab.take(OpenUdp)) == 1 and lab.nat.counters["refused_rate"] >= 1


def test_ping_through_a_ping_socket_or_a_clear_unreachable() -> None:
    lab = Lab()
    c = lab.client()
    _ident, seq = c.ping(SERVER, lab.now, b"hello")
    lab.run()
    (op,) = lab.take(OpenPing)
    assert op.dst == "203.0.113.10"
    lab.nat.opened(op.flow, lab.now)
    (sp,) = lab.take(SendPing)
    assert (sp.seq, sp.payload) == (seq, b"hello")
    lab.now += 0.02
    lab.nat.echo_reply(op.flow, seq, b"hello", lab.now)
    lab.run()
    (reply,) = [e for e in c.events() if isinstance(e, EchoReply)]
    assert reply.src == SERVER and reply.seq == seq

    other = IPv4Address("198.51.100.99")
    c.ping(other, lab.now)
    lab.run()
    (op,) = lab.take(OpenPing)
    lab.nat.failed(op.flow, "unavailable", lab.now)
    lab.run()
    c.ping(other, lab.now)  # answered at once while the flow remembers the failure
    lab.run()
    assert not lab.take(OpenPing)
    errors = [e for e in c.events() if isinstance(e, IcmpError)]
    assert [(e.type, e.code) for e in errors] == [(3, 13), (3, 13)]
    assert lab.nat.counters["host_unavailable"] == 1


def test_malformed_and_foreign_packets_are_dropped_and_counted() -> None:
    lab = Lab()
    from atenet.wire.ipv4 import PROTO_UDP, Ipv4Repr

    gw_mac = addressing.gateway_mac(NET)
    mac = bytes([2, 0, 0, 0, 0, 9])
    bad_checksum = b"\x00\x01\x00\x02\x00\x09\x12\x34x"
    bad_udp = Ipv4Repr(IPv4Address("10.0.0.9"), SERVER, PROTO_UDP, bad_checksum).emit()
    foreign = Ipv4Repr(IPv4Address("10.9.9.9"), SERVER, PROTO_UDP, b"\x00" * 8).emit()
    for raw in (bad_udp, foreign):
        assert lab.gw.frame(gw_mac + mac + b"\x08\x00" + raw, lab.now) == []
    assert lab.nat.poll(lab.now) == [] and lab.nat.actions() == []
    assert lab.nat.counters["malformed"] == 1 and lab.nat.counters["foreign_source"] == 1


def test_segments_waiting_for_arp_leave_when_the_client_answers_or_speaks() -> None:
    lab = Lab()
    c = lab.client()
    conn, flow = _connect(lab, c)
    lab.nat.opened(flow, lab.now)
    lab.run()
    lab.nat.iface.arp.entries.clear()  # the client's entry expired
    lab.nat.data(flow, b"first", lab.now)
    lab.run()  # the stack asks; the client's ARP reply reaches it through Nat.arp
    assert conn.recv(100) == b"first"
    lab.nat.iface.arp.entries.clear()
    lab.nat.data(flow, b"second", lab.now)
    lab.nat.poll(lab.now)  # the segment waits for ARP, whose request is lost on the way
    conn.send(b"hi")  # the client speaks (before any retransmission): what waited leaves
    lab.run()
    assert conn.recv(100) == b"second"


def test_spoofed_sources_create_no_arp_entries() -> None:
    from atenet.wire.ipv4 import PROTO_UDP, Ipv4Repr
    from atenet.wire.udp import UdpRepr

    lab = Lab()
    gw_mac = addressing.gateway_mac(NET)
    metadata = IPv4Address("169.254.169.254")
    for n in range(2, 200):
        src = IPv4Address(f"10.0.0.{n}")
        udp = UdpRepr(1000, 80, b"x").emit(src, metadata)
        raw = Ipv4Repr(src, metadata, PROTO_UDP, udp).emit()
        lab.gw.frame(gw_mac + bytes([2, 0, 0, 0, 1, n]) + b"\x08\x00" + raw, lab.now)
    assert lab.nat.counters["refused_metadata"] == 198
    assert not lab.nat.iface.arp.entries  # only flows create entries


def test_refusal_table() -> None:
    assert natmod.refusal(IPv4Address("203.0.113.10"), False) is None
    assert natmod.refusal(IPv4Address("8.8.8.8"), False) is None
    assert natmod.refusal(IPv4Address("10.1.2.3"), False) == "refused_private"
    assert natmod.refusal(IPv4Address("10.1.2.3"), True) is None
    assert natmod.refusal(IPv4Address("169.254.169.254"), True) == "refused_metadata"
    assert natmod.refusal(IPv4Address("255.255.255.255"), True) == "refused_reserved"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 6, 17, 6, 17, 41, 255]),
            st.binary(min_size=0, max_size=80),
            st.integers(0, 0xFFFF),
            st.sampled_from(["203.0.113.10", "169.254.169.254", "10.0.0.99", "8.8.8.8"]),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_fuzzed_packets_never_raise_and_tables_stay_bounded(packets: list) -> None:
    """Random upper layers (TCP segments with a valid checksum half the time, so they reach
    the flow table) from clients: nothing raises, and flows stay within the caps."""
    from atenet.stack.tcp import encode_segment
    from atenet.wire.ipv4 import PROTO_TCP, Ipv4Repr

    lab = Lab(limits=NatLimits(flows_per_client=4, flows_per_network=6))
    gw_mac = addressing.gateway_mac(NET)
    for i, (proto, body, port, dst, valid) in enumerate(packets):
        src = IPv4Address(f"10.0.0.{2 + i % 3}")
        if proto == PROTO_TCP and valid:
            flags = body[0] if body else 0x02
            body = encode_segment(
                src.packed, IPv4Address(dst).packed, port, 80, port, 0, flags, 1000,
                payload=body[1:],
            )  # fmt: skip
        raw = Ipv4Repr(src, IPv4Address(dst), proto, body).emit()
        mac = bytes([2, 0, 0, 0, 0, 2 + i % 3])
        lab.gw.frame(gw_mac + mac + b"\x08\x00" + raw, lab.now)
        lab.fuzz_host(port)
    lab.fuzz_end()
