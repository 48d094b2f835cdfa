"""The data plane on real kernels: `atenet run` nodes and `tok connect` hosts, each in its own
network namespace, talking through TAP devices and encrypted UDP.

Topology (one SQLite store shared by all nodes):

    h1, h2 -> n1        h3 -> n2 (token also names n1)        h4 -> n3

Tests run in file order on one topology; the destructive ones (killing a node, revoking a key)
come last.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, Overlay

pytestmark = [needs_root]


@pytest.fixture(scope="module")
def net() -> Iterator[Overlay]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-dp-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        for name in ("n1", "n2", "n3"):
            overlay.add_node(name)
        overlay.add_client("h1", ["n1"])
        overlay.add_client("h2", ["n1"])
        overlay.add_client("h3", ["n2", "n1"])
        overlay.add_client("h4", ["n3"])
        # Every node must see the others as members before flooding reaches them.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(len(n.network("lan")["peers"]) == 2 for n in overlay.nodes.values()):
                break
            time.sleep(0.3)
        else:
            pytest.fail("nodes never saw each other as members")
        yield overlay


def test_every_host_pings_every_other_by_hashed_ipv4_and_ipv6(net: Overlay) -> None:
    hosts = [net.clients[h] for h in ("h1", "h2", "h3")]
    failures = []
    for a in hosts:
        for b in hosts:
            if a is b:
                continue
            for addr in (b.ip4, b.ip6):
                if not a.host.ping(addr, count=3, timeout=5):
                    failures.append(f"{a.name} -> {b.name} {addr}")
    assert failures == []


def test_iperf3_tcp_between_hosts_on_different_nodes(net: Overlay) -> None:
    server, client = net.clients["h3"], net.clients["h1"]
    srv = server.host.popen(["iperf3", "-s", "-B", server.ip4], stdout=-1, stderr=-1)
    try:
        time.sleep(0.5)
        attempts = []
        for _ in range(3):  # a busy CI machine may start the server late: retry the client
            out = client.host.run(
                ["iperf3", "-c", server.ip4, "-t", "3", "-J"], timeout=30, check=False
            )
            result = json.loads(out.stdout or "{}")
            if out.returncode == 0:
                break
            attempts.append(result.get("error", out.stderr))
            time.sleep(1)
        else:
            pytest.fail(f"iperf3 never completed: {attempts}")
        received = result["end"]["sum_received"]["bytes"]
        assert received > 1_000_000, result["end"]["sum_received"]
    finally:
        net.lab.stop_process(srv)


RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    srv = socket.create_server((sys.argv[1], 5201))
    conn, _ = srv.accept()
    h = hashlib.sha256(); n = 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk); n += len(chunk)
    print(n, h.hexdigest(), flush=True)
    """
)

SENDER = textwrap.dedent(
    """
    import socket, sys, time
    data = open(sys.argv[2], "rb").read()
    for _ in range(50):
        try:
            s = socket.create_connection((sys.argv[1], 5201), timeout=5); break
        except OSError:
            time.sleep(0.1)
    s.sendall(data); s.close()
    """
)


def test_file_copied_over_tcp_arrives_byte_identical(net: Overlay, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    data = os.urandom(8 << 20)
    src.write_bytes(data)
    server, client = net.clients["h4"], net.clients["h1"]
    rx = server.host.popen(["python3", "-c", RECEIVER, server.ip4], stdout=-1, text=True)
    try:
        client.host.run(["python3", "-c", SENDER, server.ip4, str(src)], timeout=60)
        out, _ = rx.communicate(timeout=60)
    finally:
        net.lab.stop_process(rx)
    size, digest = out.split()
    assert int(size) == len(data)
    assert digest == hashlib.sha256(data).hexdigest()


LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    s.bind(("atenet0", 0)); s.settimeout(0.2)
    print("ready", flush=True)
    marker = sys.argv[1].encode(); count = 0; end = time.time() + float(sys.argv[2])
    while time.time() < end:
        try:
            frame = s.recv(2048)
        except TimeoutError:
            continue
        count += marker in frame
    print(count, flush=True)
    """
)

BROADCASTER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("atenet0", 0))
    mac = open("/sys/class/net/atenet0/address").read().strip()
    src = bytes.fromhex(mac.replace(":", ""))
    s.send(b"\\xff" * 6 + src + b"\\x88\\xb5" + sys.argv[1].encode().ljust(46, b"."))
    """
)


def test_broadcast_arrives_exactly_once_at_every_other_host_across_three_nodes(
    net: Overlay,
) -> None:
    marker = f"atn-{os.getpid()}-{time.time_ns()}"
    listeners = {
        name: net.clients[name].host.popen(
            ["python3", "-c", LISTENER, marker, "3"], stdout=-1, text=True
        )
        for name in ("h2", "h3", "h4")
    }
    try:
        for proc in listeners.values():
            assert proc.stdout.readline().strip() == "ready"
        net.clients["h1"].host.run(["python3", "-c", BROADCASTER, marker])
        counts = {name: int(p.communicate(timeout=10)[0].strip()) for name, p in listeners.items()}
    finally:
        for proc in listeners.values():
            net.lab.stop_process(proc)
    assert counts == {"h2": 1, "h3": 1, "h4": 1}


def test_forged_packets_at_a_node_are_dropped_and_never_answered(net: Overlay) -> None:
    n1 = net.nodes["n1"]
    before = n1.network("lan")["drops"]
    token = net.clients["h1"].token
    script = textwrap.dedent(
        f"""
        import os, socket, time
        from atenet.overlay.token import AccessToken
        from atenet.overlay.seal import PacketKey, Sealer
        t = AccessToken.decode({token!r})
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        dst = ("{n1.host.ip}", 4799)
        frame = b"\\xff" * 12 + b"\\x88\\xb5" + b"x" * 46
        now = time.time_ns()  # counters track the clock (else: stale, not auth)
        good = Sealer(t.network_id, PacketKey(t.secret, t.key_id), 4242, now).seal(frame)
        forged = bytearray(good); forged[40] ^= 1
        s.sendto(bytes(forged), dst)
        wrong = PacketKey(os.urandom(32), t.key_id)
        s.sendto(Sealer(t.network_id, wrong, 4243, now).seal(frame), dst)
        s.sendto(good[:30], dst)
        try:
            print("answered", s.recv(2048))
        except TimeoutError:
            print("silent")
        """
    )
    out = net.clients["h2"].host.run([BIN / "python", "-c", script], timeout=20)
    assert out.stdout.strip() == "silent"
    after = n1.network("lan")["drops"]
    assert after.get("auth", 0) - before.get("auth", 0) == 2
    assert n1.status()["drops"].get("short", 0) >= 1


def test_killed_node_stops_being_flooded_and_other_hosts_keep_talking(net: Overlay) -> None:
    n2 = net.nodes["n2"]
    assert n2.proc is not None
    os.kill(n2.proc.pid, signal.SIGKILL)  # no goodbye: its membership record stays behind
    n2.proc.wait(5)
    h1, h2, h4 = net.clients["h1"], net.clients["h2"], net.clients["h4"]
    assert h1.host.ping(h2.ip4, count=2, timeout=5)
    assert h1.host.ping(h4.ip4, count=2, timeout=5)
    # Its heartbeat (1 s interval here) expires after 3 intervals: n1 stops flooding to it.
    n2_endpoint = n2.endpoint
    deadline = time.monotonic() + 15
    while n2_endpoint in net.nodes["n1"].network("lan")["peers"]:
        assert time.monotonic() < deadline, "n1 still floods to the dead node"
        time.sleep(0.5)
    # h3's token also names n1: it fails over there and is reachable again.
    h3 = net.clients["h3"]
    deadline = time.monotonic() + 40
    while not h1.host.ping(h3.ip4, count=1, timeout=2):
        assert time.monotonic() < deadline, "h3 never failed over to n1"


def test_revoked_key_stops_within_a_second_while_others_keep_talking(net: Overlay) -> None:
    h1, h2, h4 = net.clients["h1"], net.clients["h2"], net.clients["h4"]
    assert h4.host.ping(h1.ip4, count=2, timeout=5)
    net.tok("key", "revoke", net.network, str(h4.key_id))
    time.sleep(1.0)
    assert not h4.host.ping(h1.ip4, count=3, timeout=3)
    assert h1.host.ping(h2.ip4, count=2, timeout=5)
    n3 = net.nodes["n3"].network("lan")
    assert n3["drops"].get("revoked_key", 0) > 0
