"""The NAT forwarder end to end (issue 13): real `atenet run` and `tok connect` processes in
namespaces, and an "internet" namespace this test creates.

The node's namespace has its default route via the "internet" namespace, which holds a TCP echo
server and a UDP echo server at 203.0.113.10 (TEST-NET-3, RFC 5737: a documentation address,
never a real internet host). Every byte stays inside namespaces this test made. Clients are
`tok connect` hosts with DHCP; with the network's `internet` on they get the default route via
the gateway, and their flows leave from the node's own address, one host socket per flow.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from atenet.mio import client as mio
from atenet.stack.iface import Interface
from atenet.stack.tcp import Tcp
from tests.conftest import VENV_BIN, needs_root
from tests.support.netns import Host
from tests.support.overlay import HTTP_PORT, Client, Node, Overlay

pytestmark = [needs_root]

SERVER = "203.0.113.10"
NODE_EXTRA = "198.51.100.7"
"""A second address of the node's own (TEST-NET-2): reached through the gateway, not directly
over the lab's underlay as the node's endpoint is."""
GW = "10.77.0.1"
SERVER6 = "2001:db8:113::10"
"""The server's IPv6 address (the documentation prefix, RFC 3849)."""
NODE6, INET6 = "2001:db8:ff::1", "2001:db8:ff::2"
"""The node's and the "internet" namespace's IPv6 addresses on the lab's underlay."""
NODE_EXTRA6 = "2001:db8:7::7"
TCP_BYTES = 3 * 1024 * 1024

SERVER_PY = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp():
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((@IP@, 8000)); srv.listen(64)
    while True:
        conn, addr = srv.accept()
        log.write(f"tcp {addr[0]}:{addr[1]}\n")
        def echo(c=conn):
            while data := c.recv(65536):
                c.sendall(data)
            c.close()
        threading.Thread(target=echo, daemon=True).start()
def source():
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((@IP@, 8001)); srv.listen(8)
    while True:
        conn, addr = srv.accept()
        def push(c=conn):
            size = int.from_bytes(c.recv(8), "big")
            block = bytes(range(256)) * 256
            while size > 0:
                c.sendall(block[: min(size, len(block))]); size -= len(block)
            c.close()
        threading.Thread(target=push, daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((@IP@, 9000))
    while True:
        data, addr = s.recvfrom(65536)
        log.write(f"udp {addr[0]}:{addr[1]}\n")
        s.sendto(f"{addr[0]}:{addr[1]}|".encode() + data, addr)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=source, daemon=True).start()
print("ready", flush=True)
udp()
""".replace("@IP@", repr(SERVER))

TCP_CLIENT_PY = r"""
import hashlib, os, socket, sys, threading
data = os.urandom(int(sys.argv[1]))
s = socket.create_connection((sys.argv[2] if len(sys.argv) > 2 else @IP@, 8000), timeout=20)
def send():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
got = bytearray()
while chunk := s.recv(1 << 20):
    got += chunk
t.join()
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), len(got))
""".replace("@IP@", repr(SERVER))

UDP_CLIENT_PY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5555))
s.settimeout(1.0)
for attempt in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10):
    s.sendto(sys.argv[1].encode(), (@IP@, 9000))
    try:
        data, addr = s.recvfrom(65536)
    except TimeoutError:
        continue
    print(addr[0], data.decode()); break
else:
    print("timeout")
""".replace("@IP@", repr(SERVER))

SLOW_READER_PY = r"""
import hashlib, socket, sys, time
size = int(sys.argv[1])
s = socket.create_connection((@IP@, 8001), timeout=20)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(size.to_bytes(8, "big"))
got = bytearray()
while chunk := s.recv(65536):
    got += chunk
    if len(got) < size // 2:
        time.sleep(0.02)  # a slow client for the first half: the node must pause the server
block = bytes(range(256)) * 256
want = (block * (size // len(block) + 1))[:size]
print(hashlib.sha256(want).hexdigest() == hashlib.sha256(got).hexdigest(), len(got))
""".replace("@IP@", repr(SERVER))

SERVER6_PY = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp():
    srv = socket.socket(socket.AF_INET6); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((@IP@, 8000)); srv.listen(64)
    while True:
        conn, addr = srv.accept()
        log.write(f"tcp6 {addr[0]} {addr[1]}\n")
        def echo(c=conn):
            while data := c.recv(65536):
                c.sendall(data)
            c.close()
        threading.Thread(target=echo, daemon=True).start()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((@IP@, 9000))
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65536)
    s.sendto(f"{addr[0]} {addr[1]}|".encode() + data, addr)
""".replace("@IP@", repr(SERVER6))

UDP6_CLIENT_PY = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1.0)
for attempt in range(10):
    s.sendto(sys.argv[1].encode(), (@IP@, 9000))
    try:
        data, addr = s.recvfrom(65536)
    except TimeoutError:
        continue
    print(addr[0], data.decode()); break
else:
    print("timeout")
""".replace("@IP@", repr(SERVER6))

CONNECT_PY = r"""
import socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__, exc.errno, round(time.monotonic() - start, 1))
"""


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    from tests.support.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-nat-") as tmp:
        root = Path(tmp)
        overlay = Overlay(lab, root)
        overlay.tok("network", "set", "lan", "--internet", "on")
        internet = lab.add_host("inet")
        internet.run(["ip", "addr", "add", f"{SERVER}/32", "dev", "lo"])
        script = root / "server.py"
        script.write_text(SERVER_PY)
        server_log = root / "server.log"
        proc = internet.popen([sys.executable, script, server_log], stdout=-1, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # IPv6: the server at 2001:db8:113::10, reached over the underlay's 2001:db8:ff::/64.
        internet.run(["ip", "addr", "add", f"{SERVER6}/128", "dev", "lo"])
        internet.run(["ip", "addr", "add", f"{INET6}/64", "dev", "eth0", "nodad"])
        script6 = root / "server6.py"
        script6.write_text(SERVER6_PY)
        proc6 = internet.popen([sys.executable, script6, server_log], stdout=-1, text=True)
        assert proc6.stdout is not None and proc6.stdout.readline().strip() == "ready"
        node = overlay.add_node("n1")
        node.host.run(["ip", "addr", "add", f"{NODE6}/64", "dev", "eth0", "nodad"])
        node.host.run(["ip", "-6", "route", "add", "default", "via", INET6])
        node.host.run(["ip", "addr", "add", f"{NODE_EXTRA6}/128", "dev", "lo"])
        # The node's only way out is the "internet" namespace; ping sockets for everyone.
        node.host.run(["ip", "route", "add", "default", "via", internet.ip])
        node.host.run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"])
        node.host.run(["ip", "addr", "add", f"{NODE_EXTRA}/32", "dev", "lo"])
        yield {"overlay": overlay, "node": node, "internet": internet, "log": server_log}


def py(host: Host, code: str, *args: str, timeout: float = 60) -> str:
    out = host.run([sys.executable, "-c", code, *args], timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def nat_status(node: Node) -> dict[str, Any]:
    return dict(node.network("lan").get("nat") or {})


def wait_until(check: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    return bool(check())


@pytest.fixture(scope="module")
def hosts(world: dict[str, Any]) -> tuple[Client, Client]:
    overlay: Overlay = world["overlay"]
    return overlay.add_client("h1", ["n1"]), overlay.add_client("h2", ["n1"])


def test_dhcp_host_reaches_tcp_and_udp_servers_out_of_the_nodes_address(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    h1, _ = hosts
    node: Node = world["node"]
    routes = json.loads(h1.host.run(["ip", "-4", "-j", "route", "show", "default"]).stdout)
    assert [r["gateway"] for r in routes] == [GW]
    sent, got, size = py(h1.host, TCP_CLIENT_PY, str(TCP_BYTES)).split()
    assert (sent, int(size)) == (got, TCP_BYTES), nat_status(node)
    addr, reply = py(h1.host, UDP_CLIENT_PY, "hello").split()
    assert addr == SERVER
    seen_from, payload = reply.split("|")
    assert seen_from.split(":")[0] == node.host.ip and payload == "hello"
    log = world["log"].read_text()
    assert f"tcp {node.host.ip}:" in log  # the server saw the node's address, not 10.77.x
    ping = h1.host.run(["ping", "-n", "-c", "2", "-i", "0.2", "-w", "5", SERVER], check=False)
    assert ping.returncode == 0, (ping.stdout, nat_status(node))  # an unprivileged ping socket
    nat = nat_status(node)
    assert nat["internet"] is True and nat["bytes_up"] >= TCP_BYTES
    assert nat["bytes_down"] >= TCP_BYTES and nat["flows_opened_tcp"] >= 1
    assert nat["echo_replies"] >= 1
    # tok's vnet TAP offloads: its TSO super-frames reach the forwarder's stack whole, and
    # the forwarder's TSO super-segments reach it whole (docs/nat.md, "Super-frames")
    assert nat.get("superframes_in", 0) > 0 and nat.get("superframes_out", 0) > 0, nat
    status = node.host.run(
        [str(VENV_BIN / "tok"), "status", "--node", f"http://127.0.0.1:{HTTP_PORT}"], check=False
    ).stdout
    assert "internet (NAT) on: flows" in status
    metrics = node.host.run(["curl", "-s", f"http://127.0.0.1:{HTTP_PORT}/metrics"]).stdout
    assert 'atenet_nat_bytes_total{direction="up",network="lan"' in metrics


def test_a_slow_client_pauses_the_server_and_nothing_is_lost(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    _, h2 = hosts
    node: Node = world["node"]
    before = nat_status(node)
    same, size = py(h2.host, SLOW_READER_PY, str(8 * 1024 * 1024)).split()
    assert (same, int(size)) == ("True", 8 * 1024 * 1024), nat_status(node)
    nat = nat_status(node)
    assert nat.get("host_paused", 0) > before.get("host_paused", 0)  # backpressure happened
    assert nat.get("pending_overflow", 0) == 0 and nat.get("host_reset", 0) == 0


def test_two_hosts_on_one_local_udp_port_get_distinct_node_ports_and_own_replies(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    h1, h2 = hosts
    node: Node = world["node"]
    a = py(h1.host, UDP_CLIENT_PY, "from-h1").split()[1]
    b = py(h2.host, UDP_CLIENT_PY, "from-h2").split()[1]
    (seen_a, payload_a), (seen_b, payload_b) = a.split("|"), b.split("|")
    assert (payload_a, payload_b) == ("from-h1", "from-h2")
    assert seen_a.split(":")[0] == seen_b.split(":")[0] == node.host.ip
    assert seen_a.split(":")[1] != seen_b.split(":")[1]  # one host socket per flow


def test_the_node_itself_and_the_metadata_address_are_refused(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    h1, _ = hosts
    node: Node = world["node"]
    before = nat_status(node)
    for target in (NODE_EXTRA, "169.254.169.254"):
        out = py(h1.host, CONNECT_PY, target, str(HTTP_PORT))
        assert out.startswith("OSError 113"), out  # EHOSTUNREACH: administratively prohibited
    nat = nat_status(node)
    assert nat.get("refused_node_address", 0) > before.get("refused_node_address", 0)
    assert nat.get("refused_metadata", 0) > before.get("refused_metadata", 0)


def test_ipv6_host_reaches_tcp_udp_and_ping_out_of_the_nodes_ipv6_address(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    h1, _ = hosts
    node: Node = world["node"]

    def default6() -> list[Any]:
        out = h1.host.run(["ip", "-6", "-j", "route", "show", "default"]).stdout
        return json.loads(out or "[]")

    assert wait_until(lambda: bool(default6())), "no IPv6 default route from the RA"
    assert default6()[0]["gateway"].startswith("fe80::")
    before = nat_status(node)
    sent, got, size = py(h1.host, TCP_CLIENT_PY, str(1024 * 1024), SERVER6).split()
    assert (sent, int(size)) == (got, 1024 * 1024), nat_status(node)
    assert f"tcp6 {NODE6} " in world["log"].read_text()  # from the node's own IPv6 address
    addr, seen, reply = py(h1.host, UDP6_CLIENT_PY, "hello6").split()
    assert (addr, seen) == (SERVER6, NODE6) and reply.endswith("|hello6")
    ping = h1.host.run(
        ["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-w", "5", SERVER6], check=False
    )
    assert ping.returncode == 0, (ping.stdout, nat_status(node))  # an ICMPv6 ping socket
    for target in (NODE_EXTRA6, "fd00:ec2::254"):
        out = py(h1.host, CONNECT_PY, target, str(HTTP_PORT))
        assert out.startswith("PermissionError 13"), out  # ICMPv6 administratively prohibited
    nat = nat_status(node)
    assert nat["flows_opened_ipv6"] - before.get("flows_opened_ipv6", 0) >= 3
    assert nat["refused_node_address"] > before.get("refused_node_address", 0)
    assert nat["refused_metadata"] > before.get("refused_metadata", 0)


GUEST_MAC = bytes([0x02, 0x76, 0x38, 0x36]) + os.urandom(2)  # as v86 makes one up


async def raw_guest(url: str, size: int) -> dict[str, Any]:
    """A v86-style guest: one binary WebSocket message = one Ethernet frame, both ways, on
    the node's raw relay (``/net/<token>``). Its network stack is atenet's own (the way v86's
    Linux guest has its kernel's): DHCP for an address and the default route, then a TCP echo
    of ``size`` bytes with the "internet" server, as a guest's program would."""
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the node learns of the new key by following the chain
            try:
                ws = await http.ws_connect(url, max_msg_size=0)
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.1)
        iface = Interface(GUEST_MAC, 1500, ipv6=False, tcp=Tcp(seed=86))
        clock = time.monotonic
        iface.start_dhcp(clock(), host="v86", jitter=0.0)

        async def pump(done: Any, timeout: float) -> None:
            deadline = clock() + timeout
            while not done():
                for frame in iface.poll(clock()):
                    await ws.send_bytes(frame)
                if clock() > deadline:
                    raise TimeoutError(f"raw guest: stuck ({iface.counters})")
                at = iface.poll_at()
                wait = 0.05 if at is None else min(0.05, max(0.001, at - clock()))
                try:
                    msg = await ws.receive(timeout=wait)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise ConnectionError(f"raw relay closed: {msg.type}")
                iface.receive(msg.data, clock())

        async with ws:
            await pump(lambda: iface.ipv4 is not None, 30)
            assert iface.ipv4 is not None
            conn = iface.tcp.connect(
                iface.ipv4.ip.packed, IPv4Address(SERVER).packed, 8000, clock()
            )  # type: ignore[union-attr]
            data, got = os.urandom(size), bytearray()
            sent = 0

            def moved() -> bool:
                nonlocal sent
                if sent < size:
                    sent += conn.send(data[sent:])
                got.extend(conn.recv(1 << 20))
                return len(got) >= size or conn.error is not None

            await pump(moved, 60)
            return {
                "address": str(iface.ipv4),
                "gateway": str(iface.gateway4),
                "equal": hashlib.sha256(got).digest() == hashlib.sha256(data).digest(),
                "error": conn.error,
            }


def test_a_v86_style_raw_websocket_guest_reaches_the_internet_server(
    world: dict[str, Any],
) -> None:
    overlay: Overlay = world["overlay"]
    node: Node = world["node"]
    _, token = overlay.export_key("v86", ["n1"])
    url = f"ws://127.0.0.1:{HTTP_PORT}/net/{token}"
    before = nat_status(node).get("flows_opened_tcp", 0)
    result = node.host.call(asyncio.run, raw_guest(url, 512 * 1024))
    assert result["gateway"] == GW and result["address"].startswith("10.77.0."), result
    assert result["equal"] and result["error"] is None, (result, nat_status(node))
    assert nat_status(node)["flows_opened_tcp"] > before


def test_a_mio_program_reaches_the_internet_server(world: dict[str, Any]) -> None:
    overlay: Overlay = world["overlay"]
    node: Node = world["node"]
    _, token = overlay.export_key("mio-prog", ["n1"])

    async def program() -> dict[str, Any]:
        for _ in range(100):  # the node learns of the new key by following the chain
            try:
                net = await mio.connect(f"http://127.0.0.1:{HTTP_PORT}", token)
                break
            except mio.MioError as exc:
                if "forbidden" not in str(exc):
                    raise
                await asyncio.sleep(0.1)
        out: dict[str, Any] = {}
        async with net:
            for host in (SERVER, SERVER6):
                reader, writer = await net.open_connection(host, 8000, timeout=10)
                data = os.urandom(256 * 1024)
                writer.write(data)
                await writer.drain()
                got = await asyncio.wait_for(reader.readexactly(len(data)), 30)
                writer.close()
                out[f"tcp {host}"] = got == data
                udp = await net.open_datagram()
                udp.sendto(b"from-mio", (host, 9000))
                reply, src = await asyncio.wait_for(udp.recvfrom(), 10)
                udp.close()
                out[f"udp {host}"] = (reply.decode(), src[0])
            out["ping"] = await net.ping(SERVER, timeout=5)
        return out

    out = node.host.call(asyncio.run, program())
    assert out[f"tcp {SERVER}"] and out[f"tcp {SERVER6}"], (out, nat_status(node))
    text, src = out[f"udp {SERVER}"]
    assert src == SERVER and text.startswith(f"{node.host.ip}:") and text.endswith("|from-mio")
    text6, src6 = out[f"udp {SERVER6}"]
    assert src6 == SERVER6 and text6.startswith(f"{NODE6} ") and text6.endswith("|from-mio")
    assert out["ping"] > 0


def test_with_internet_off_nothing_leaves(
    world: dict[str, Any], hosts: tuple[Client, Client]
) -> None:
    overlay: Overlay = world["overlay"]
    h1, _ = hosts
    node: Node = world["node"]
    overlay.tok("network", "set", "lan", "--internet", "off")
    try:
        assert wait_until(lambda: nat_status(node).get("internet") is False)
        # Whatever DHCP says meanwhile, send through the gateway explicitly.
        h1.host.run(["ip", "route", "replace", f"{SERVER}/32", "via", GW])
        log_before = world["log"].read_text()
        out = py(h1.host, CONNECT_PY, SERVER, "8000")
        assert out.startswith("OSError"), out
        assert py(h1.host, UDP_CLIENT_PY, "nope", "3") == "timeout"
        assert world["log"].read_text() == log_before  # the server saw nothing
        assert "flows" not in nat_status(node)  # no forwarder at all
    finally:
        overlay.tok("network", "set", "lan", "--internet", "on")
        h1.host.run(["ip", "route", "del", f"{SERVER}/32"], check=False)
