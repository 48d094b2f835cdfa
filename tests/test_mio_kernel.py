"""mio programs against the real Linux stack: a `tok connect` TAP host in a namespace.

Topology: nodes n1 and n2 (`atenet run`, each in its namespace), kernel hosts k1 on n1 and k2
on n2 (`tok connect`, a TAP device). The mio program runs in n1's namespace (a thread moved
there, asyncio inside) and talks to n1's /mio on 127.0.0.1, so it is a port of n1's switch: k1
is reached through one node, k2 across the overlay.

Checked: a mio client against a kernel TCP echo server and a kernel client against a mio echo
server, IPv4 and IPv6, sha256-equal both ways (ATENET_MIO_TRANSFER_MIB, default 4, sizes
them); UDP both ways; ping both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
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
family = socket.AF_INET6 if ":" in host else socket.AF_INET
data = os.urandom(size)
s = socket.create_connection((host, port), timeout=60)
def send():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
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


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Overlay, Client, Client]]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mio-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        overlay.add_node("n2")
        k1 = overlay.add_client("k1", ["n1"])
        k2 = overlay.add_client("k2", ["n2"])
        for k in (k1, k2):
            server = k.host.popen(
                [sys.executable, "-c", KERNEL_SERVERS], stdout=-1, stderr=-1, text=True
            )
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while not all(len(n.network("lan")["peers"]) == 1 for n in overlay.nodes.values()):
            if time.monotonic() > deadline:
                pytest.fail("the nodes never saw each other as members")
            time.sleep(0.3)
        yield overlay, k1, k2


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


@pytest.mark.parametrize("where", ["k1", "k2"])
def test_mio_client_to_kernel_server_v4_and_v6(
    world: tuple[Overlay, Client, Client], where: str
) -> None:
    overlay, k1, k2 = world
    k = k1 if where == "k1" else k2

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


@pytest.mark.parametrize("where", ["k1", "k2"])
def test_kernel_client_to_mio_server_v4_and_v6(
    world: tuple[Overlay, Client, Client], where: str
) -> None:
    overlay, k1, k2 = world
    k = k1 if where == "k1" else k2

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
