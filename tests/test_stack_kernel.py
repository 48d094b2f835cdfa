"""The stack's Interface against the real Linux stack: a TAP in a namespace the test creates.

The kernel pings us and we ping it (IPv4 and IPv6), UDP goes both ways, a 4,000-byte ping from
the kernel arrives in fragments and is reassembled (and our reply is fragmented back), and ND
resolves in both directions.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest

from atenet.stack import EchoReply, Interface
from atenet.transport.tap import TapDevice
from tests.conftest import needs_root
from tests.support.netns import Host, Lab
from tests.support.stack_tap import RstOnly, StackTap

pytestmark = needs_root

MAC = bytes.fromhex("02a7e0000002")
KERNEL4, STACK4 = "10.77.0.1", "10.77.0.2"
KERNEL6, STACK6 = "fd00:77::1", "fd00:77::2"


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Host, StackTap]]:
    with Lab() as lab:
        host = lab.add_host("k")
        tap = host.call(TapDevice.open, "mio0")
        served = None
        try:
            for cmd in (
                f"ip addr add {KERNEL4}/24 dev mio0",
                f"ip -6 addr add {KERNEL6}/64 dev mio0 nodad",
                "ip link set mio0 up",
            ):
                host.run(cmd)
            iface = Interface(
                MAC, 1500, ipv4=IPv4Interface(f"{STACK4}/24"), gateway4=IPv4Address(KERNEL4)
            )
            iface.add_ipv6(IPv6Interface(f"{STACK6}/64"))
            served = StackTap(iface, tap)
            yield host, served
        finally:
            if served is not None:
                served.close()
            else:
                tap.close()


def _ping(host: Host, addr: str, size: int = 56) -> subprocess.CompletedProcess[str]:
    return host.run(
        ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", str(size), addr], check=False
    )


def test_kernel_pings_us_v4_and_v6(rig: tuple[Host, StackTap]) -> None:
    host, served = rig
    assert _ping(host, STACK4).returncode == 0
    assert _ping(host, STACK6).returncode == 0
    assert served.iface.counters["icmp_echo_answered"] >= 4


@pytest.mark.parametrize("target", [STACK4, STACK6])
def test_kernel_big_ping_is_reassembled(rig: tuple[Host, StackTap], target: str) -> None:
    host, served = rig
    before = served.iface.counters["frag_reassembled"]
    proc = _ping(host, target, size=4000)
    assert proc.returncode == 0, proc.stdout
    assert "4008 bytes from" in proc.stdout  # our 4 KB reply, fragmented, reassembled by Linux
    assert served.iface.counters["frag_reassembled"] >= before + 2


@pytest.mark.parametrize("target", [KERNEL4, KERNEL6])
def test_we_ping_the_kernel(rig: tuple[Host, StackTap], target: str) -> None:
    _host, served = rig
    _ident, seq = served.call(served.iface.ping, target, time.monotonic(), b"mio ping")
    seen: list[EchoReply] = []

    def reply() -> bool:
        seen.extend(e for e in served.iface.events() if isinstance(e, EchoReply))
        return any(e.seq == seq for e in seen)

    served.wait_for(reply)
    (got,) = [e for e in seen if e.seq == seq]
    assert str(got.src) == target and 0 <= got.rtt < 5


@pytest.mark.parametrize(("family", "kernel", "stack"), [
    (socket.AF_INET, KERNEL4, STACK4),
    (socket.AF_INET6, KERNEL6, STACK6),
])  # fmt: skip
def test_udp_both_ways(rig: tuple[Host, StackTap], family: int, kernel: str, stack: str) -> None:
    host, served = rig
    ksock = host.call(socket.socket, family, socket.SOCK_DGRAM)
    try:
        ksock.settimeout(5)
        ksock.bind((kernel, 0))
        kport = ksock.getsockname()[1]
        usock = served.call(served.iface.udp_bind, 0)
        served.call(usock.sendto, b"from mio" * 300, (kernel, kport), time.monotonic())
        data, addr = ksock.recvfrom(4096)
        assert data == b"from mio" * 300  # 2,400 bytes: fragmented by us, reassembled by Linux
        assert addr[0] == stack and addr[1] == usock.port
        ksock.sendto(b"from linux", (stack, usock.port))
        got = served.wait_for(usock.recvfrom)
        assert got[0] == b"from linux" and str(got[1][0]) == kernel and got[1][1] == kport
        usock.close()
    finally:
        ksock.close()


def test_nd_resolved_both_ways(rig: tuple[Host, StackTap]) -> None:
    host, served = rig
    assert _ping(host, STACK6).returncode == 0
    neigh = host.run(["ip", "-6", "neigh", "show", "dev", "mio0", STACK6]).stdout
    assert "02:a7:e0:00:00:02" in neigh
    kernel_mac = served.wait_for(
        lambda: served.iface.nd.lookup(IPv6Address(KERNEL6), time.monotonic())
    )
    link = host.run(["cat", "/sys/class/net/mio0/address"]).stdout.strip()
    assert kernel_mac.hex(":") == link


@pytest.mark.parametrize("target", [STACK4, STACK6])
def test_tcp_hook_refuses_a_kernel_connect(rig: tuple[Host, StackTap], target: str) -> None:
    """With the RST-only stand-in as its TCP layer, a Linux connect() is refused at once: the
    SYN reached the hook and the RST it returned left with checksums Linux accepts."""
    host, served = rig
    tcp = RstOnly()
    served.call(setattr, served.iface, "tcp", tcp)
    try:
        with pytest.raises(ConnectionRefusedError):
            host.call(socket.create_connection, (target, 8080), 5)
        assert tcp.seen >= 1
    finally:
        served.call(setattr, served.iface, "tcp", None)
