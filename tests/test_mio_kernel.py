"""mio programs against the real Linux stack: a `tok connect` TAP host in a namespace.

Topology: nodes n1 and n2 (`atenet run`, each in its namespace), kernel hosts k1 on n1 and k2
on n2 (`tok connect`, a TAP device). The mio program runs in n1's namespace (a thread moved
there, asyncio inside) and talks to n1's /mio on 127.0.0.1, so it is a port of n1's switch: k1
is reached through one node, k2 across the overlay, and k3 (`tok connect --no-offload`) through
one node on a port that takes no offloads.

The session's port takes offloads: its TCP leaves as TSO super-segments (kept whole to k1,
carried whole to n2 for k2, cut into frames by n1's switch for k3) and k1's GRO super-frames
reach the stack whole.

Checked: a mio client against a kernel TCP echo server and a kernel client against a mio echo
server, IPv4 and IPv6, sha256-equal both ways (ATENET_MIO_TRANSFER_MIB, default 4, sizes
them); UDP both ways; ping both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.mio import client
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import HTTP_PORT, Client, Overlay

pytestmark = [needs_root]

MIB = 1 << 20
TRANSFER = int(os.environ.get("ATENET_MIO_TRANSFER_MIB", "4")) * MIB

KERNEL_SERVERS = r"""
import socket, sys, threading
def tcp_echo(conn):
    with conn:
        while data := conn.recv(1 << 20):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 9000)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_echo, args=(c,), daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 9001))
    while True:
        data, addr = s.recvfrom(65536)
        s.sendto(b"echo:" + data, addr)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
tcp()
"""

KERNEL_CLIENT = r"""
import hashlib, os, socket, sys, threading
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stall = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
family = socket.AF_INET6 if ":" in host else socket.AF_INET
data = os.urandom(size)
s = socket.create_connection((host, port), timeout=stall)
def send():
    # 64 KiB per sendall: the timeout is a stall detector, but for sendall it is the deadline
    # of the whole call (Python >= 3.5), which one 256 MiB sendall through k3's slow path
    # overran after 60 s while every byte was moving
    view = memoryview(data)
    for at in range(0, size, 1 << 16):
        s.sendall(view[at : at + (1 << 16)])
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
h, n = hashlib.sha256(), 0
while chunk := s.recv(1 << 20):
    h.update(chunk); n += len(chunk)
t.join()
u = socket.socket(family, socket.SOCK_DGRAM); u.settimeout(10)
u.sendto(b"kernel-datagram", (host, port + 1))
reply, _ = u.recvfrom(2048)
print(hashlib.sha256(data).hexdigest(), h.hexdigest(), n, reply.decode(), flush=True)
"""


def test_kernel_client_timeout_is_a_stall_detector() -> None:
    """KERNEL_CLIENT against a slow but steady echo server (on 127.0.0.1) for several times its
    timeout: it must finish. With one ``sendall`` of everything, the timeout was the deadline
    of the whole transfer and the 256 MiB run through k3 failed at 60 s with bytes moving."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def slow_echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
                time.sleep(0.02)  # ~3 MB/s: 4 MiB take ~1.3 s, the timeout is 0.3 s

    echo = threading.Thread(target=slow_echo, daemon=True)
    echo.start()
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", KERNEL_CLIENT.split("u = socket.socket")[0] + "print(n)",
             "127.0.0.1", str(port), str(4 * MIB), "0.3"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-500:]
        assert int(proc.stdout) == 4 * MIB
        assert time.monotonic() - started > 0.6  # it did outlast its timeout
    finally:
        server.close()
        echo.join(5)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Overlay, dict[str, Client]]]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mio-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        overlay.add_node("n2")
        k1 = overlay.add_client("k1", ["n1"])
        k2 = overlay.add_client("k2", ["n2"])
        k3 = overlay.add_client("k3", ["n1"], ("--no-offload",))
        for k in (k1, k2, k3):
            server = k.host.popen(
                [sys.executable, "-c", KERNEL_SERVERS], stdout=-1, stderr=-1, text=True
            )
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while not all(len(n.network("lan")["peers"]) == 1 for n in overlay.nodes.values()):
            if time.monotonic() > deadline:
                pytest.fail("the nodes never saw each other as members")
            time.sleep(0.3)
        yield overlay, {"k1": k1, "k2": k2, "k3": k3}


def on_n1(
    overlay: Overlay, label: str, program: Callable[[client.Network], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``program(net)`` with a mio session on n1, from inside n1's namespace."""
    _key_id, token = overlay.export_key(label, ["n1"])

    async def main() -> Any:
        for _ in range(100):  # the node learns of the new key by following the chain
            try:
                net = await client.connect(f"http://127.0.0.1:{HTTP_PORT}", token)
                break
            except client.MioError as exc:
                if "forbidden" not in str(exc):
                    raise
                await asyncio.sleep(0.1)
        async with net:
            # generous: a shared 2-core machine moved 256 MiB each way in ~80 s
            return await asyncio.wait_for(program(net), 120 + 2 * TRANSFER / MIB)

    return overlay.nodes["n1"].host.call(asyncio.run, main())


def offloads(overlay: Overlay) -> dict[str, int]:
    """n1's mio sessions' offload counters (open and closed sessions together)."""
    counters = overlay.nodes["n1"].status()["mio"]["counters"]
    return {k: counters.get(k, 0) for k in ("tso_segments_out", "rx_offloaded")}


async def echo_through(net: client.Network, host: str, size: int) -> None:
    reader, writer = await net.open_connection(host, 9000, timeout=10)
    data = os.urandom(size)

    async def send() -> None:
        view = memoryview(data)
        for at in range(0, size, MIB):
            writer.write(view[at : at + MIB])
            await writer.drain()
        writer.write_eof()

    started = time.monotonic()
    sender = asyncio.ensure_future(send())
    digest, count = hashlib.sha256(), 0
    while chunk := await reader.read(MIB):
        digest.update(chunk)
        count += len(chunk)
    await sender
    writer.close()
    seconds = time.monotonic() - started
    print(f"mio echo via {host}: {size / MIB:.0f} MiB each way in {seconds:.1f} s")
    assert count == size and digest.digest() == hashlib.sha256(data).digest(), host


@pytest.mark.parametrize("where", ["k1", "k2", "k3"])
def test_mio_client_to_kernel_server_v4_and_v6(
    world: tuple[Overlay, dict[str, Client]], where: str
) -> None:
    overlay, hosts = world
    k = hosts[where]
    before = offloads(overlay)

    async def program(net: client.Network) -> None:
        await echo_through(net, k.ip4, TRANSFER)
        await echo_through(net, k.ip6, TRANSFER // 2)
        for host in (k.ip4, k.ip6):
            udp = await net.open_datagram()
            udp.sendto(b"from mio", (host, 9001))
            data, (src, port) = await asyncio.wait_for(udp.recvfrom(), 10)
            # an unconnected kernel socket answers from its preferred source: over IPv6 that
            # may be its SLAAC address rather than the hashed one we sent to
            same = src == host or (":" in host and src.split(":")[:4] == host.split(":")[:4])
            assert data == b"echo:from mio" and same and port == 9001, (src, host)
            udp.close()
            assert await net.ping(host, timeout=5) > 0

    on_n1(overlay, f"prog-{where}", program)
    after = offloads(overlay)
    # our TCP left as super-segments whatever the host takes; the echo came back as GRO
    # super-frames from the hosts with offloads (k2's cross the overlay whole), as frames
    # from k3
    assert after["tso_segments_out"] > before["tso_segments_out"], (before, after)
    grew = after["rx_offloaded"] > before["rx_offloaded"]
    assert grew == (where != "k3"), (where, before, after)


@pytest.mark.parametrize("where", ["k1", "k2", "k3"])
def test_kernel_client_to_mio_server_v4_and_v6(
    world: tuple[Overlay, dict[str, Client]], where: str
) -> None:
    overlay, hosts = world
    k = hosts[where]

    async def program(net: client.Network) -> list[str]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(MIB):
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await net.start_server(echo, port=9100)
        udp = await net.open_datagram(port=9101)

        async def udp_echo() -> None:
            while True:
                data, addr = await udp.recvfrom()
                udp.sendto(b"echo:" + data, addr)

        udp_task = asyncio.ensure_future(udp_echo())
        lines = []
        for host, size in ((str(net.address), TRANSFER), (str(net.address6), TRANSFER // 2)):
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", k.host.ns, sys.executable, "-c", KERNEL_CLIENT,
                host, "9100", str(size), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out
            lines.append(out.decode())
            # ping from the kernel host while the session is up
            ok = await asyncio.to_thread(k.host.ping, host, 3, 5.0)
            assert ok, f"{k.name} could not ping {host}"
        udp_task.cancel()
        return lines

    for line, size in zip(
        on_n1(overlay, f"srv-{where}", program), (TRANSFER, TRANSFER // 2), strict=True
    ):
        sent, received, count, reply = line.split()
        assert sent == received and int(count) == size and reply == "echo:kernel-datagram"
