"""The node's GIL-free engine (``_fast.NodeEngine``, docs/fastpath.md "Node engine").

Real processes in namespaces: node n1 (its clients' token buckets at 2000 packets/s, to see the
rate limit bite) with hosts h1, h2, h3, and node n2 with hosts h4, h5. The module runs three
times — the engine on, the fast path without it (``ATENET_ENGINE=0``) and ``ATENET_PURE=1`` —
and asserts the same real outcomes: pings over one and two nodes, a burst mixing datagrams the
engine forwards with broadcasts it hands over arriving in order, a replayed and a tampered
datagram sent from the client's own address dropped and counted alike, a client whose source
port changes (roaming) still served, a MAC that moves to another port followed, a key revoked
while its traffic flows cut within the chain's follow time, a flooding client held to its rate.
With the engine on, its counters must show it carried the traffic, and 100,000 datagrams through
it must leave the node's memory where it was. In-process: stop() leaves no thread and the socket
as it was.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.fast import FAST
from atenet.transport.udp import UdpSocket
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, UDP_PORT, Client, Overlay, wait_for_text

pytestmark = [needs_root]

PORT_RATE = 2000  # n1's --port-rate (burst: a tenth of it)


@pytest.fixture(scope="module", params=["engine", "fast", "pure"])
def net(request: pytest.FixtureRequest) -> Iterator[Overlay]:
    mode = request.param
    if mode != "pure" and FAST is None:
        pytest.skip("atenet._fast is not built (scripts/setup.sh)")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix=f"atn-ne-{mode}-") as tmp:
        overlay = Overlay(lab, Path(tmp), node_args={"n1": ("--port-rate", str(PORT_RATE))})
        base = {k: v for k, v in overlay.env.items() if k not in ("ATENET_PURE", "ATENET_ENGINE")}
        overlay.env = base | {"pure": {"ATENET_PURE": "1"}, "fast": {"ATENET_ENGINE": "0"}}.get(
            mode, {}
        )
        nodes = [overlay.add_node("n1"), overlay.add_node("n2")]  # only nodes get the mode
        overlay.env = base
        for name in ("h1", "h2", "h3"):
            overlay.add_client(name, ["n1"])
        for name in ("h4", "h5"):
            overlay.add_client(name, ["n2"])
        for node in nodes:
            running = node.status().get("fast_node", {}).get("engine_running")
            assert running == {"engine": True, "fast": False}.get(mode), f"{mode}: {running}"
        deadline = time.monotonic() + 20
        while not all(len(n.network("lan")["peers"]) == 1 for n in nodes):
            assert time.monotonic() < deadline, "the nodes never saw each other as members"
            time.sleep(0.3)
        overlay.mode = mode  # type: ignore[attr-defined]
        yield overlay


def mode(net: Overlay) -> str:
    return net.mode  # type: ignore[attr-defined,no-any-return]


def lan(net: Overlay, node: str = "n1") -> dict[str, Any]:
    return net.nodes[node].network("lan")


def engine(net: Overlay, node: str = "n1") -> int:
    """Datagrams the node's engine thread forwarded (-1 without an engine)."""
    fast = net.nodes[node].status().get("fast_node", {})
    return fast["engine"] if fast.get("engine_running") else -1


def pings(client: Client, addr: str, count: int) -> bool:
    """``count`` pings 50 ms apart; True when every one was answered."""
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2", addr]
    return client.host.run(cmd, check=False, timeout=30).returncode == 0


def test_pings_over_one_and_two_nodes_and_the_engine_carries_them(net: Overlay) -> None:
    h1, h2, h4, h5 = (net.clients[n] for n in ("h1", "h2", "h4", "h5"))
    for src, dst in ((h1, h2), (h1, h4), (h4, h5)):
        for addr in (dst.ip4, dst.ip6):
            assert src.host.ping(addr, count=2, timeout=5), (src.name, addr)  # learned, ARP/ND
    before = engine(net, "n1"), engine(net, "n2")
    for addr in (h2.ip4, h2.ip6):
        assert pings(h1, addr, 20), addr
    for addr in (h5.ip4, h5.ip6):
        assert pings(h4, addr, 20), addr
    if mode(net) == "engine":
        # 40 echoes and 40 replies per node between its own clients, in the engine's thread
        # (a few may be handed over: a tick's MAC aging, a neighbour frame in between).
        assert engine(net, "n1") - before[0] >= 70
        assert engine(net, "n2") - before[1] >= 70
    else:
        assert engine(net, "n1") == -1
    before = engine(net, "n1"), engine(net, "n2")
    for addr in (h4.ip4, h4.ip6):  # across the two nodes: client -> peer, peer -> client
        assert pings(h1, addr, 20), addr
    if mode(net) == "engine":  # each node: 40 echoes out to the peer, 40 replies in from it
        assert engine(net, "n1") - before[0] >= 70
        assert engine(net, "n2") - before[1] >= 70


REINJECT = textwrap.dedent(
    """
    import socket, struct, sys, time
    node, port, key_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # outgoing too
    raw.bind(("eth0", 0))
    raw.settimeout(1)
    print("ready", flush=True)
    got = None
    deadline = time.monotonic() + 20
    while got is None and time.monotonic() < deadline:
        try:
            frame = raw.recv(65535)
        except TimeoutError:
            continue
        ip = frame[14:]
        if frame[12:14] != bytes([8, 0]) or ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != node:
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        payload = ip[ihl + 8 : struct.unpack_from("!H", ip, 2)[0]]
        if (dport == port and len(payload) > 64 and payload[17] == 1
                and struct.unpack_from("!I", payload, 18)[0] == key_id):
            got = ip[12:16], sport, payload  # a sealed frame this host's tok sent the node
    assert got is not None, "no sealed frame seen"
    src, sport, payload = got
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    def send(data):  # from tok's own address and port: the engine's cached flow
        udp = struct.pack("!HHHH", sport, port, 8 + len(data), 0) + data
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                           src, socket.inet_aton(node))
        out.sendto(head + udp, (node, 0))
    send(payload)  # replayed as it was
    counter = struct.unpack_from("!Q", payload, 26)[0]
    send(payload[:26] + struct.pack("!Q", counter + 10**6) + payload[34:])  # tampered
    print("sent", flush=True)
    """
)


def test_a_replay_and_a_tampered_datagram_from_the_flow_itself_are_counted_alike(
    net: Overlay,
) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert pings(h1, h2.ip4, 3)
    before = lan(net)["drops"]
    log = net.root / "reinject.log"
    node = net.nodes["n1"].host
    with log.open("wb") as out:
        proc = h1.host.popen(
            [BIN / "python", "-c", REINJECT, node.ip, str(UDP_PORT), str(h1.key_id)],
            stdout=out,
            stderr=out,
        )
    try:
        wait_for_text(proc, log, "ready", 10)
        h1.host.ping(h2.ip4, count=3, timeout=5)  # what it copies
        wait_for_text(proc, log, "sent", 20)
    finally:
        net.lab.stop_process(proc)
    deadline = time.monotonic() + 10
    while True:
        drops = lan(net)["drops"]
        moved = {r: drops.get(r, 0) - before.get(r, 0) for r in ("replay", "auth")}
        if moved == {"replay": 1, "auth": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert moved == {"replay": 1, "auth": 1}, drops
    assert pings(h1, h2.ip4, 3)  # the session itself is untouched


MIXED_RECEIVER = textwrap.dedent(
    """
    import json, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("", 5300))
    print("ready", flush=True)
    s.settimeout(10)
    seqs = [int.from_bytes(s.recv(2048)[:4], "big")]
    s.settimeout(2)
    try:
        while True:
            seqs.append(int.from_bytes(s.recv(2048)[:4], "big"))
    except TimeoutError:
        pass
    print(json.dumps(seqs), flush=True)
    """
)

MIXED_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    for i in range(1000):  # every tenth one broadcast: flooded by node_receive, not the engine
        to = sys.argv[2] if i % 10 == 9 else sys.argv[1]
        s.sendto(i.to_bytes(4, "big") + bytes(60), (to, 5300))
        if i % 10 == 9:
            time.sleep(0.01)  # 1000/s: under n1's --port-rate
    """
)


def test_a_burst_mixing_cached_and_handed_over_datagrams_arrives_in_order(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert pings(h1, h2.ip4, 3)
    before = engine(net)
    log = net.root / "mixed.log"
    with log.open("wb") as out:
        receiver = h2.host.popen([BIN / "python", "-c", MIXED_RECEIVER], stdout=out)
    try:
        wait_for_text(receiver, log, "ready", 10)
        h1.host.run([BIN / "python", "-c", MIXED_SENDER, h2.ip4, "10.77.0.255"], timeout=60)
        receiver.wait(timeout=30)
    finally:
        net.lab.stop_process(receiver)
    seqs = json.loads(log.read_text().splitlines()[-1])
    assert len(seqs) >= 900, f"only {len(seqs)} of 1000 arrived"
    assert len([q for q in seqs if q % 10 == 9]) >= 90  # the broadcasts came too
    assert seqs == sorted(set(seqs)), "reordered or duplicated"
    if before >= 0:
        assert engine(net) - before >= 600  # the unicast ones in the engine's thread


def tok_port(client: Client) -> int:
    """The local UDP port of the client's `tok connect` socket."""
    out = client.host.run(["ss", "-Huanp"]).stdout
    ports = [int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if "tok" in line]
    assert len(ports) == 1, out
    return ports[0]


def test_a_client_whose_source_port_changes_is_still_served(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert pings(h1, h2.ip4, 5)
    port = tok_port(h1)
    # A NAT rebinding, stateless: h1's datagrams to the node leave from port 40000, and the
    # node's answers to 40000 reach tok's socket again.
    rules = textwrap.dedent(
        f"""
        table ip roam {{
            chain out {{ type filter hook postrouting priority 300;
                udp dport {UDP_PORT} udp sport {port} udp sport set 40000; }}
            chain back {{ type filter hook prerouting priority -300;
                udp sport {UDP_PORT} udp dport 40000 udp dport set {port}; }}
        }}
        """
    )
    before = engine(net)
    h1.host.run(["nft", "-f", "-"], input=rules)
    try:
        assert h1.host.ping(h2.ip4, count=5, timeout=5)  # the first one moves the port
        assert pings(h1, h2.ip4, 20)
        assert pings(h2, h1.ip4, 20)
    finally:
        h1.host.run(["nft", "delete", "table", "ip", "roam"])
    assert h1.host.ping(h2.ip4, count=5, timeout=5)  # and back
    assert pings(h1, h2.ip4, 10)
    if before >= 0:
        assert engine(net) - before >= 60  # the roamed flows were cached again


def restart(net: Overlay, client: Client) -> None:
    """Kill the client's `tok connect` hard (no bye: its port stays) and start a new session
    with the same token in the same host: the same MAC, now behind another port."""
    assert client.proc is not None and client.log is not None
    os.kill(client.proc.pid, signal.SIGKILL)
    client.proc.wait(timeout=10)
    with client.log.open("ab") as log:
        client.proc = client.host.popen(
            [BIN / "tok", "connect", "--wait", "20"],
            env=net.env | {"ATENET_TOKEN": client.token, "ATENET_HOME": str(net.root / "rs")},
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while log_count(client, "connected to") < 2:
        assert time.monotonic() < deadline, client.log.read_text()
        time.sleep(0.1)


def log_count(client: Client, text: str) -> int:
    assert client.log is not None
    return client.log.read_text(errors="replace").count(text)


def test_a_mac_that_moves_to_another_port_is_followed(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert pings(h1, h2.ip4, 10)  # h1 -> h2 cached, where the engine runs
    moves = lan(net)["fdb_counters"]["moves"]
    ports = len(lan(net)["ports"])
    restart(net, h2)
    assert len(lan(net)["ports"]) == ports + 1  # the old port is still there
    assert h1.host.ping(h2.ip4, count=10, timeout=10)
    assert pings(h1, h2.ip4, 10)
    assert lan(net)["fdb_counters"]["moves"] > moves


STREAM_RECEIVER = textwrap.dedent(
    """
    import json, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 5400))
    print("ready", flush=True)
    s.settimeout(float(sys.argv[2]))
    got = []
    try:
        while True:
            s.recv(2048)
            got.append(time.time())
    except TimeoutError:
        pass
    print(json.dumps(got), flush=True)
    """
)

STREAM_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        s.sendto(bytes(64), (sys.argv[1], 5400))
        time.sleep(float(sys.argv[3]))
    """
)


def stream(net: Overlay, src: Client, dst: Client, seconds: float, gap: float) -> Any:
    """Start a receiver on ``dst`` and a sender on ``src`` (a datagram every ``gap`` s for
    ``seconds``); returns a function that waits and gives the arrival times."""
    log = net.root / f"stream-{src.name}-{dst.name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        receiver = dst.host.popen(
            [BIN / "python", "-c", STREAM_RECEIVER, dst.ip4, "4"], stdout=out, stderr=out
        )
    wait_for_text(receiver, log, "ready", 10)
    sender = src.host.popen([BIN / "python", "-c", STREAM_SENDER, dst.ip4, str(seconds), str(gap)])

    def arrivals() -> list[float]:
        try:
            sender.wait(timeout=seconds + 30)
            receiver.wait(timeout=30)
        finally:
            net.lab.stop_process(sender)
            net.lab.stop_process(receiver)
        return json.loads(log.read_text().splitlines()[-1])  # type: ignore[no-any-return]

    return arrivals


def test_a_rate_limit_still_bounds_a_flooding_client(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert pings(h2, h1.ip4, 2)
    dropped = lan(net)["drops"].get("port_rate", 0)
    started = time.time()
    got = stream(net, h2, h1, 3.0, 0)()  # as fast as tok takes them
    seconds = max(got) - started if got else 0.0
    assert len(got) <= PORT_RATE * (seconds + 0.5) + PORT_RATE / 10, (len(got), seconds)
    assert len(got) >= PORT_RATE  # and it still gets its share
    assert lan(net)["drops"].get("port_rate", 0) > dropped


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100k_datagrams_through_the_engine_leak_nothing(net: Overlay) -> None:
    if mode(net) != "engine":
        pytest.skip("the engine's own run")
    h4, h5 = net.clients["h4"], net.clients["h5"]
    node = net.nodes["n2"]
    assert node.proc is not None
    assert pings(h4, h5.ip4, 3)
    stream(net, h4, h5, 2.0, 0.0002)()  # warm: every buffer and table at its size
    rss, before = rss_kib(node.proc.pid), engine(net, "n2")
    got: list[float] = []
    while len(got) < 100_000:
        got += stream(net, h4, h5, 5.0, 0.0001)()
    carried = engine(net, "n2") - before
    grown = rss_kib(node.proc.pid) - rss
    assert carried >= 0.8 * len(got), (carried, len(got))  # the rest: GRO runs, drains
    assert grown < 4096, f"the node grew by {grown} KiB over {carried} datagrams"


def test_a_key_revoked_mid_stream_is_cut(net: Overlay) -> None:
    h1, h3 = net.clients["h1"], net.clients["h3"]
    assert pings(h3, h1.ip4, 3)
    before = engine(net)
    arrivals = stream(net, h3, h1, 8.0, 0.005)
    time.sleep(2.0)
    net.tok("key", "revoke", net.network, str(h3.key_id))
    revoked = time.time()
    got = arrivals()
    late = [t - revoked for t in got if t > revoked + 1.5]
    assert len([t for t in got if t < revoked]) >= 200  # it flowed until then
    assert late == [], f"{len(late)} datagrams arrived up to {max(late):.2f} s after the revocation"
    if before >= 0:
        assert engine(net) - before >= 200  # the stream ran in the engine's thread
    assert lan(net)["drops"].get("revoked_key", 0) > 0
    assert not h3.host.ping(h1.ip4, count=2, timeout=2)
    assert pings(net.clients["h2"], h1.ip4, 3)  # the others keep talking


# ------------------------------------------------------------------ in-process


def threads(want: int | None = None) -> int:
    """This process's threads; with ``want``, waited for (up to 2 s) to come to it: a joined
    thread's task may be listed for a moment after pthread_join returned."""
    deadline = time.monotonic() + 2
    while True:
        count = len(os.listdir("/proc/self/task"))
        if want is None or count == want or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def test_stop_leaves_no_thread_and_the_socket_as_it_was() -> None:
    if FAST is None:
        pytest.skip("atenet._fast is not built (scripts/setup.sh)")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        udp = UdpSocket(rx)
        base = threads()
        eng = FAST.NodeEngine(rx.fileno(), udp)
        wake = eng.fileno()
        eng.start()
        eng.start()  # idempotent
        assert threads(base + 1) == base + 1
        tx.sendto(b"x" * 80, rx.getsockname())  # not a cached flow: handed over
        assert select.select([wake], [], [], 5)[0]
        assert eng.take() == (b"x" * 80, ("127.0.0.1", tx.getsockname()[1]), 0)
        eng.arm()
        tx.sendto(b"y" * 80, rx.getsockname())
        assert select.select([wake], [], [], 5)[0]  # left in the slot when it stops
        eng.stop()
        eng.stop()  # idempotent
        assert threads(base) == base
        assert eng.counters()["running"] is False
        tx.sendto(b"z", rx.getsockname())  # the socket is the daemon's again, whole
        assert select.select([rx], [], [], 5)[0]
        assert rx.recv(100) == b"z"
        for _ in range(50):  # start and stop again and again: no thread, no fd left over
            eng.start()
            eng.stop()
        assert threads(base) == base
        fds = len(os.listdir("/proc/self/fd"))
        del eng
        assert len(os.listdir("/proc/self/fd")) == fds - 3  # its epoll and two eventfds
    finally:
        rx.close()
        tx.close()
