"""Offloads end to end: real `atenet run` nodes and `tok connect` hosts in namespaces.

Offloaded checksums are trusted by the receiving kernel, so TCP itself would not notice a
segmentation or checksum bug: every transfer here is checked by hashing what was sent against
what arrived.

* ``TestOffloadedPath``: two offloaded hosts on one node; 1 GB over IPv4 and 256 MB over IPv6
  through super-frames end to end (TAP -> node -> TAP without ever being segmented).
* ``TestMixedNetwork``: an offloaded host and a ``--no-offload`` host (what an older tok looks
  like to a node) on n1, an offloaded host on n2, and a raw-frame WebSocket client on n1: every
  pair talks over IPv4 and IPv6, and the raw client and the plain host only ever see standard
  frames with correct checksums.
"""

from __future__ import annotations

import asyncio
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import HTTP_PORT, Client, Overlay

pytestmark = [needs_root]

MTU = 1400  # the network's default MTU: no standard frame may exceed 14 + MTU bytes

RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
    print("ready", flush=True)
    conn, _ = srv.accept()
    h = hashlib.sha256(); n = 0
    buf = bytearray(1 << 20)
    while got := conn.recv_into(buf):
        h.update(memoryview(buf)[:got]); n += got
    print(n, h.hexdigest(), flush=True)
    """
)

# Random data, made unique per MiB by a counter, hashed as it is sent: nothing is stored.
SENDER = textwrap.dedent(
    """
    import hashlib, os, socket, sys, time
    addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pool = os.urandom(1 << 20)
    h = hashlib.sha256()
    for _ in range(100):
        try:
            s = socket.create_connection((addr, port), timeout=30); break
        except OSError:
            time.sleep(0.1)
    sent = 0; block = 0
    while sent < size:
        chunk = (block.to_bytes(8, "big") + pool[8:])[: size - sent]
        s.sendall(chunk); h.update(chunk); sent += len(chunk); block += 1
    s.close()
    print(sent, h.hexdigest(), flush=True)
    """
)


def transfer(lab: Lab, src: Client, dst: Client, addr: str, size: int, port: int = 5201) -> float:
    """Send ``size`` bytes over TCP from ``src`` to ``dst`` at ``addr``; assert both hashes match.

    Returns the throughput in Mbit/s (for the failure message of slow runs, not asserted).
    """
    rx = dst.host.popen(["python3", "-c", RECEIVER, addr, str(port)], stdout=-1, text=True)
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        start = time.monotonic()
        out = src.host.run(["python3", "-c", SENDER, addr, str(port), str(size)], timeout=120)
        received, _ = rx.communicate(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        lab.stop_process(rx)
    sent_size, sent_hash = out.stdout.split()
    got_size, got_hash = received.split()
    assert int(sent_size) == size
    assert int(got_size) == size, f"{src.name} -> {dst.name} {addr}: got {got_size} of {size}"
    assert got_hash == sent_hash, f"{src.name} -> {dst.name} {addr}: data corrupted"
    return size * 8 / elapsed / 1e6


def wait_for_peers(overlay: Overlay, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(len(n.network("lan")["peers"]) == count for n in overlay.nodes.values()):
            return
        time.sleep(0.3)
    pytest.fail("nodes never saw each other as members")


def port_offload(overlay: Overlay, node: str, client: Client) -> bool:
    """Whether ``node`` treats ``client``'s port as taking offloaded packets."""
    for port in overlay.nodes[node].network("lan")["ports"]:
        if port["kind"] == "udp" and port["name"].endswith(f"/k{client.key_id}"):
            return bool(port["offload"])
    raise AssertionError(f"{node} has no port for {client.name}")


@pytest.fixture(scope="class")
def offloaded_net() -> Iterator[Overlay]:
    """Two offloaded hosts on one node (torn down after the class that uses it)."""
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-off-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        overlay.add_client("a", ["n1"])
        overlay.add_client("b", ["n1"])
        a, b = overlay.clients["a"], overlay.clients["b"]
        assert a.host.ping(b.ip4, count=3, timeout=5)
        yield overlay


@pytest.fixture(scope="class")
def mixed_net() -> Iterator[Overlay]:
    """Offloaded and plain hosts on n1, an offloaded host on n2."""
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mix-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        overlay.add_node("n2")
        overlay.add_client("fast", ["n1"])
        overlay.add_client("plain", ["n1"], args=("--no-offload",))
        overlay.add_client("far", ["n2"])
        wait_for_peers(overlay, 1)
        yield overlay


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Overlay:
    """The topology of the test's class (``topology`` names its fixture)."""
    return request.getfixturevalue(request.cls.topology)


class TestOffloadedPath:
    topology = "offloaded_net"

    def test_one_gigabyte_over_ipv4_arrives_byte_identical(self, net: Overlay) -> None:
        a, b = net.clients["a"], net.clients["b"]
        assert port_offload(net, "n1", a) and port_offload(net, "n1", b)
        before = net.nodes["n1"].network("lan")
        transfer(net.lab, a, b, b.ip4, 1 << 30)
        after = net.nodes["n1"].network("lan")
        # It really went as super-frames: far fewer frames than 1 GB / MTU, none segmented.
        frames_in = sum(p["frames_in"] for p in after["ports"]) - sum(
            p["frames_in"] for p in before["ports"]
        )
        assert frames_in < (1 << 30) // MTU // 4, frames_in
        assert after["segmented"] == before["segmented"]

    def test_256_megabytes_over_ipv6_arrive_byte_identical(self, net: Overlay) -> None:
        a, b = net.clients["a"], net.clients["b"]
        transfer(net.lab, b, a, a.ip6, 256 << 20)


class TestMixedNetwork:
    topology = "mixed_net"

    def test_nodes_know_which_ports_take_offloaded_packets(self, net: Overlay) -> None:
        assert port_offload(net, "n1", net.clients["fast"])
        assert not port_offload(net, "n1", net.clients["plain"])
        assert port_offload(net, "n2", net.clients["far"])

    def test_every_pair_pings_over_ipv4_and_ipv6(self, net: Overlay) -> None:
        hosts = list(net.clients.values())
        failures = [
            f"{a.name} -> {b.name} {addr}"
            for a in hosts
            for b in hosts
            if a is not b
            for addr in (b.ip4, b.ip6)
            if not a.host.ping(addr, count=2, timeout=5)
        ]
        assert failures == []

    @pytest.mark.parametrize(
        ("src", "dst", "v6"),
        [
            ("fast", "plain", False),
            ("plain", "fast", True),
            ("fast", "far", False),
            ("far", "fast", True),
            ("far", "plain", False),
            ("plain", "far", True),
        ],
    )
    def test_tcp_between_offloaded_and_plain_hosts_arrives_byte_identical(
        self, net: Overlay, src: str, dst: str, v6: bool
    ) -> None:
        a, b = net.clients[src], net.clients[dst]
        transfer(net.lab, a, b, b.ip6 if v6 else b.ip4, 24 << 20)

    def test_plain_host_and_raw_client_get_only_standard_checksummed_frames(
        self, net: Overlay
    ) -> None:
        fast, plain = net.clients["fast"], net.clients["plain"]
        _, token = net.export_key("raw", ["n1"])
        url = f"ws://127.0.0.1:{HTTP_PORT}/net/{token}"
        rx_before = tap_rx_bytes(plain)
        seg_before = net.nodes["n1"].network("lan")["segmented"]
        raw_mac = bytes.fromhex("02aa00000001")
        arp_probe = bytes(
            Ether(src=raw_mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=raw_mac, psrc="10.77.0.250", pdst=fast.ip4)
        )

        async def listen() -> list[bytes]:
            frames: list[bytes] = []
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(url, max_msg_size=0) as ws,
            ):
                await ws.send_bytes(arp_probe)
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    try:
                        msg = await ws.receive(timeout=end - time.monotonic())
                    except TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        frames.append(msg.data)
            return frames

        # The raw client listens while the offloaded host sends a TCP stream to the plain host
        # on the same node: its port takes no offloads, so the node segments every super-frame.
        # The learning switch sends the stream to the plain host's port alone.
        rx = plain.host.popen(["python3", "-c", RECEIVER, plain.ip4, "5301"], stdout=-1, text=True)
        try:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
            sender = fast.host.popen(
                ["python3", "-c", SENDER, plain.ip4, "5301", str(24 << 20)], stdout=-1, text=True
            )
            frames = net.nodes["n1"].host.call(asyncio.run, listen())
            sent, _ = sender.communicate(timeout=60)
            received, _ = rx.communicate(timeout=60)
        finally:
            net.lab.stop_process(rx)
        assert sent.split()[1] == received.split()[1]
        # The raw client's ARP was answered by the offloaded host's kernel.
        replies = [f for f in frames if Ether(f).haslayer(ARP) and Ether(f)[ARP].op == 2]
        assert any(Ether(f)[ARP].psrc == fast.ip4 and Ether(f).dst == "02:aa:00:00:00:01"
                   for f in replies), "no ARP reply for the raw client"  # fmt: skip
        tcp_frames = [f for f in frames if Ether(f).haslayer(TCP)]
        assert len(tcp_frames) < 50, len(tcp_frames)  # at most the flood before it was learned
        assert max(len(f) for f in frames) <= 14 + MTU
        for frame in tcp_frames:
            assert_checksums_valid(frame)
        # The node segmented for them, and the plain host's TAP took the copies without error.
        assert net.nodes["n1"].network("lan")["segmented"] > seg_before
        assert tap_rx_bytes(plain) - rx_before > 12 << 20


def assert_checksums_valid(frame: bytes) -> None:
    """IPv4 header and TCP checksums as scapy recomputes them from the other fields."""
    pkt = Ether(frame)
    ip, tcp = pkt[IP], pkt[TCP]
    ip_sum, tcp_sum = ip.chksum, tcp.chksum
    del ip.chksum, tcp.chksum
    rebuilt = Ether(bytes(pkt))
    assert (rebuilt[IP].chksum, rebuilt[TCP].chksum) == (ip_sum, tcp_sum), pkt.summary()


def tap_rx_bytes(client: Client) -> int:
    """Bytes the client's kernel received on its TAP (frames atenet wrote to it)."""
    out = client.host.run(["cat", "/sys/class/net/atenet0/statistics/rx_bytes"])
    return int(out.stdout)
