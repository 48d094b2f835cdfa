"""stack.tcp against the real Linux TCP: a kernel client to our listener, both directions.

Needs t1's Interface and tests/support/stack_tap.py (issue 12's interface half).
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface

import pytest

from atenet.stack import Interface
from atenet.stack.tcp import Tcp
from atenet.transport.tap import TapDevice
from tests.conftest import needs_root
from tests.support.netns import Host, Lab
from tests.support.stack_tap import StackTap

pytestmark = needs_root


def pump(served: StackTap, predicate, timeout: float) -> object:
    """Like ``wait_for`` but wakes the shell after each try (window updates, new data go out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = served.call(predicate)
        if value:
            return value
        time.sleep(0.003)
    raise TimeoutError("condition not met within the timeout")


MAC = bytes.fromhex("02a7e0000003")
KERNEL4, STACK4 = "10.78.0.1", "10.78.0.2"
SIZE = 2 * 1024 * 1024


@pytest.fixture
def rig() -> Iterator[tuple[Host, StackTap, Tcp]]:
    with Lab() as lab:
        host = lab.add_host("k")
        tap = host.call(TapDevice.open, "mio0")
        served = None
        try:
            for cmd in (f"ip addr add {KERNEL4}/24 dev mio0", "ip link set mio0 up"):
                host.run(cmd)
            tcp = Tcp(mtu=1500)
            iface = Interface(
                MAC, 1500, ipv4=IPv4Interface(f"{STACK4}/24"), gateway4=IPv4Address(KERNEL4)
            )
            iface.tcp = tcp
            served = StackTap(iface, tap)
            yield host, served, tcp
        finally:
            if served is not None:
                served.close()
            else:
                tap.close()


def test_kernel_client_to_our_listener_both_ways(rig: tuple[Host, StackTap, Tcp]) -> None:
    host, served, tcp = rig
    ours = IPv4Address(STACK4).packed
    lst = served.call(tcp.listen, ours, 7000, 4)
    up = random.Random(1).randbytes(SIZE)
    down = random.Random(2).randbytes(SIZE)
    got_by_kernel = bytearray()

    def client() -> None:
        s = socket.create_connection((STACK4, 7000), 10)
        s.sendall(up)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            got_by_kernel.extend(chunk)
        s.close()

    t = threading.Thread(target=host.call, args=(client,))
    t.start()
    conn = pump(served, lambda: tcp.accept(lst), 10)
    got = bytearray()
    pump(served, lambda: got.extend(conn.recv(1 << 20)) or conn.fin_received, 30)
    got += served.call(conn.recv, 1 << 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    sent = [0]

    def push() -> bool:
        if sent[0] < SIZE:
            sent[0] += conn.send(down[sent[0] : sent[0] + 65536])
        if sent[0] == SIZE:
            conn.close()
            return True
        return False

    pump(served, push, 30)
    t.join(30)
    assert hashlib.sha256(got_by_kernel).digest() == hashlib.sha256(down).digest()
    pump(served, lambda: conn.state in ("CLOSED", "TIME_WAIT"), 10)


def test_we_connect_to_a_kernel_server_both_ways(rig: tuple[Host, StackTap, Tcp]) -> None:
    host, served, tcp = rig
    up = random.Random(3).randbytes(SIZE)
    down = random.Random(4).randbytes(SIZE)
    got_by_kernel = bytearray()
    srv = host.call(socket.create_server, (KERNEL4, 7001))

    def server() -> None:
        s, _ = srv.accept()
        while chunk := s.recv(65536):
            got_by_kernel.extend(chunk)
        s.sendall(down)
        s.close()

    t = threading.Thread(target=server)
    t.start()
    try:
        conn = served.call(
            tcp.connect,
            IPv4Address(STACK4).packed,
            IPv4Address(KERNEL4).packed,
            7001,
            time.monotonic(),
        )
        pump(served, lambda: conn.connected, 10)
        sent = [0]

        def push() -> bool:
            if sent[0] < SIZE:
                sent[0] += conn.send(up[sent[0] : sent[0] + 65536])
            if sent[0] == SIZE:
                conn.shutdown()
                return True
            return False

        pump(served, push, 30)
        got = bytearray()
        pump(served, lambda: got.extend(conn.recv(1 << 20)) or conn.fin_received, 30)
        got += served.call(conn.recv, 1 << 30)
        t.join(10)
        assert hashlib.sha256(got_by_kernel).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()
        pump(served, lambda: conn.state in ("CLOSED", "TIME_WAIT"), 10)
    finally:
        srv.close()
        t.join(5)
