"""The node's hop both ways: compiled (``atenet._fast``'s node_receive) and pure Python.

Real processes in namespaces: one `atenet run` node, three `tok connect` hosts. The module runs
three times — the node with the fast path and its GIL-free engine (``_fast.NodeEngine``), the
fast path without the engine (``ATENET_ENGINE=0``), and ``ATENET_PURE=1`` — and asserts the same
real outcomes: pings answered, a burst of small datagrams arriving in order, a TCP copy
byte-identical, the node's counters moving, a replayed and a tampered datagram dropped and
counted by reason, and a revoked key cut at once (docs/protocol.md, "Fast path").
"""

from __future__ import annotations

import json
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.fast import FAST
from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, UDP_PORT, Client, Overlay, wait_for_text
from tests.test_offload import RECEIVER, SENDER

pytestmark = [needs_root]


@pytest.fixture(scope="module", params=["engine", "fast", "pure"])
def net(request: pytest.FixtureRequest) -> Iterator[Overlay]:
    mode = request.param
    if mode != "pure" and FAST is None:
        pytest.skip("atenet._fast is not built (scripts/setup.sh)")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix=f"atn-fn-{mode}-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        base = {k: v for k, v in overlay.env.items() if k not in ("ATENET_PURE", "ATENET_ENGINE")}
        overlay.env = base | {"pure": {"ATENET_PURE": "1"}, "fast": {"ATENET_ENGINE": "0"}}.get(
            mode, {}
        )
        nodes = [overlay.add_node("n1"), overlay.add_node("n2")]  # only nodes get ATENET_PURE
        overlay.env = base
        for name in ("h1", "h2", "h3"):
            overlay.add_client(name, ["n1"])
        overlay.add_client("h4", ["n2"])
        for node in nodes:
            assert node.proc is not None
            maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
            assert ("_fast" in maps) == (mode != "pure"), f"{mode}: wrong data path"
            engine = node.status().get("fast_node", {}).get("engine_running")
            assert engine == {"engine": True, "fast": False}.get(mode), f"{mode}: {engine}"
        deadline = time.monotonic() + 20
        while not all(len(n.network("lan")["peers"]) == 1 for n in nodes):
            assert time.monotonic() < deadline, "the nodes never saw each other as members"
            time.sleep(0.3)
        yield overlay


def lan(net: Overlay, node: str = "n1") -> dict[str, Any]:
    return net.nodes[node].network("lan")


def inline(net: Overlay, node: str = "n1") -> int:
    """Datagrams a node's compiled hop forwarded or dropped on its own, in node_receive or in
    the engine's thread (-1: a pure node)."""
    status = net.nodes[node].status()
    if "fast_node" not in status:
        return -1
    return status["fast_node"]["inline"] + status["fast_node"]["engine"]


def port_of(network: dict[str, Any], client: Client) -> dict[str, Any]:
    ports = [p for p in network["ports"] if p["name"].endswith(f"/k{client.key_id}")]
    assert len(ports) == 1, network["ports"]
    return ports[0]


def test_pings_between_two_hosts_through_the_node_are_answered(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    for addr in (h2.ip4, h2.ip6):
        assert h1.host.ping(addr, count=5, timeout=5), addr
    assert h2.host.ping(h1.ip4, count=5, timeout=5)


def test_pings_and_a_tcp_copy_across_two_nodes(net: Overlay) -> None:
    h1, h4 = net.clients["h1"], net.clients["h4"]
    for addr in (h4.ip4, h4.ip6):
        assert h1.host.ping(addr, count=3, timeout=5), addr
    done_in_c = inline(net, "n1"), inline(net, "n2")
    assert h4.host.run(["ping", "-n", "-q", "-c", "10", "-i", "0.1", h1.ip4]).returncode == 0
    if done_in_c[0] >= 0:  # both hops of each echo and reply on the C path, peer link included
        assert inline(net, "n1") - done_in_c[0] >= 20
        assert inline(net, "n2") - done_in_c[1] >= 20
    assert tcp_copy(net, h4, h1, 2 << 20)


def test_ports_counters_move_with_the_frames(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert h1.host.ping(h2.ip4, count=2, timeout=5)  # MACs learned, ARP done
    before = lan(net)
    datagrams = net.nodes["n1"].status()["datagrams"]
    done_in_c = inline(net)
    assert h1.host.run(["ping", "-n", "-q", "-c", "10", "-i", "0.1", h2.ip4]).returncode == 0
    after = lan(net)
    a1, b1 = port_of(before, h1), port_of(after, h1)
    a2, b2 = port_of(before, h2), port_of(after, h2)
    # 10 echo requests in from h1 and out to h2, 10 replies the other way; 98-byte frames.
    assert b1["frames_in"] - a1["frames_in"] >= 10
    assert b1["bytes_in"] - a1["bytes_in"] >= 10 * 98
    assert b2["frames_out"] - a2["frames_out"] >= 10
    assert b2["frames_in"] - a2["frames_in"] >= 10
    assert b1["frames_out"] - a1["frames_out"] >= 10
    assert b2["bytes_out"] - a2["bytes_out"] >= 10 * 98
    assert net.nodes["n1"].status()["datagrams"] - datagrams >= 20
    assert after["drops"] == before["drops"]
    if done_in_c >= 0:  # the fast node: every echo and reply went through the C hop
        assert inline(net) - done_in_c >= 20


BURST_RECEIVER = textwrap.dedent(
    """
    import json, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((sys.argv[1], 5300))
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

BURST_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(sys.argv[2])):
        s.sendto(i.to_bytes(4, "big") + bytes(60), (sys.argv[1], 5300))
        if i % 20 == 19:
            time.sleep(0.005)
    """
)


@pytest.mark.parametrize(("to", "node"), [("h2", "n1"), ("h4", "n2")])  # h4: behind the peer
def test_a_burst_of_small_datagrams_arrives_in_order(net: Overlay, to: str, node: str) -> None:
    h1, dst = net.clients["h1"], net.clients[to]
    assert h1.host.ping(dst.ip4, count=1, timeout=5)
    done_in_c = inline(net, node)
    log = net.root / f"burst-{to}.log"
    with log.open("wb") as out:
        receiver = dst.host.popen([BIN / "python", "-c", BURST_RECEIVER, dst.ip4], stdout=out)
    try:
        wait_for_text(receiver, log, "ready", 10)
        h1.host.run([BIN / "python", "-c", BURST_SENDER, dst.ip4, "1000"], timeout=60)
        receiver.wait(timeout=30)
    finally:
        net.lab.stop_process(receiver)
    seqs = json.loads(log.read_text().splitlines()[-1])
    assert len(seqs) >= 900, f"only {len(seqs)} of 1000 arrived"
    assert seqs == sorted(set(seqs)), "reordered or duplicated"
    if done_in_c >= 0:  # the last node's hop took each of them in C
        assert inline(net, node) - done_in_c >= len(seqs)


def tcp_copy(net: Overlay, sender: Client, receiver: Client, size: int) -> bool:
    """Random bytes over TCP from ``sender`` to ``receiver``: True when they arrive whole
    (test_offload's sender and receiver scripts: each prints the size and sha256 it saw)."""
    log = net.root / f"tcp-{receiver.name}.log"
    with log.open("wb") as out:
        server = receiver.host.popen([BIN / "python", "-c", RECEIVER, receiver.ip4], stdout=out)
    try:
        wait_for_text(server, log, "ready", 10)
        sent = sender.host.run(
            [BIN / "python", "-c", SENDER, receiver.ip4, str(size)], timeout=120
        ).stdout.split()
        server.wait(timeout=60)
    finally:
        net.lab.stop_process(server)
    return log.read_text().splitlines()[-1].split() == sent and sent[0] == str(size)


def test_a_tcp_copy_arrives_byte_identical(net: Overlay) -> None:
    assert tcp_copy(net, net.clients["h1"], net.clients["h2"], 4 << 20)


def fast_node(net: Overlay, node: str) -> dict[str, Any] | None:
    """The node's ``fast_node`` status (node_receive's counters), None on a pure node."""
    return net.nodes[node].status().get("fast_node")


@pytest.mark.parametrize(("receiver", "nodes"), [("h2", ("n1",)), ("h4", ("n1", "n2"))])
def test_bulk_tcp_super_frames_are_carried_in_c(
    net: Overlay, receiver: str, nodes: tuple[str, ...]
) -> None:
    """A bulk TCP copy through one node and across two travels as super-frames (TSO packets
    sealed whole, cut into fragments, one UDP GSO send): byte-identical every way, counted on
    the ports and the peer link the same way, and with the fast path each node joins the
    fragments and forwards the super-frames in C (``joined``, ``inline_super``), not through
    the pure Reassembler and Switch."""
    size = 8 << 20
    h1, to = net.clients["h1"], net.clients[receiver]
    assert h1.host.ping(to.ip4, count=2, timeout=5)  # MACs learned, ARP done
    fast = {node: fast_node(net, node) for node in nodes}
    first, last = lan(net, nodes[0]), lan(net, nodes[-1])
    assert tcp_copy(net, h1, to, size)
    first2, last2 = lan(net, nodes[0]), lan(net, nodes[-1])
    assert port_of(first2, h1)["bytes_in"] - port_of(first, h1)["bytes_in"] >= size
    assert port_of(last2, to)["bytes_out"] - port_of(last, to)["bytes_out"] >= size
    assert first2["drops"] == first["drops"] and last2["drops"] == last["drops"]
    supers = 0
    for node in nodes:
        old = fast[node]
        if old is None:
            continue  # a pure node
        new = fast_node(net, node)
        assert new is not None
        assert new["joined"] - old["joined"] >= 10, (node, old, new)
        assert new["inline_super"] - old["inline_super"] >= 10, (node, old, new)
        supers = new["inline_super"] - old["inline_super"]
    if len(nodes) == 2:  # every super-frame crossed the peer link once, counted both ends
        sent = first2["frames_to_peers"] - first["frames_to_peers"]
        got = last2["frames_from_peers"] - last["frames_from_peers"]
        assert sent >= supers and got >= supers
        assert sent >= size // 65536 and got >= size // 65536


SNIFF = textwrap.dedent(
    """
    import os, socket, struct, sys, time
    node, port, key_id, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    raw.bind(("eth0", 0))
    raw.settimeout(1)
    print("ready", flush=True)
    got = None
    deadline = time.monotonic() + 20
    while got is None and time.monotonic() < deadline:
        try:
            ip = raw.recv(65535)[14:]
        except TimeoutError:
            continue
        if ip[9] != 17 or socket.inet_ntoa(ip[12:16]) != source:
            continue
        ihl = (ip[0] & 15) * 4
        payload = ip[ihl + 8 : struct.unpack_from("!H", ip, 2)[0]]
        if (struct.unpack_from("!H", ip, ihl + 2)[0] == port and len(payload) > 64
                and payload[17] == 1 and struct.unpack_from("!I", payload, 18)[0] == key_id):
            got = payload  # one sealed frame from that host's tok: its network, key, sender
    assert got is not None, "no sealed frame seen"
    """
)
"""A script run in the node's namespace: waits for one sealed frame from ``source``'s tok to
the node (its network, key and sender in clear) and leaves it in ``got``; the scripts below go on
from there."""


def sniff_and_send(net: Overlay, script: str, name: str) -> None:
    """Run a SNIFF script in n1's namespace while h1 pings h2 (the frame it waits for), until it
    says it sent what it makes of that frame."""
    h1, h2 = net.clients["h1"], net.clients["h2"]
    node = net.nodes["n1"].host
    log = net.root / f"{name}.log"
    with log.open("wb") as out:
        proc = node.popen(
            [BIN / "python", "-c", script, node.ip, str(UDP_PORT), str(h1.key_id), h1.host.ip],
            stdout=out,
            stderr=out,
        )
    try:
        wait_for_text(proc, log, "ready", 10)
        h1.host.ping(h2.ip4, count=3, timeout=5)
        wait_for_text(proc, log, "sent", 20)
    finally:
        net.lab.stop_process(proc)


def drops_moved(
    net: Overlay,
    before: dict[str, int],
    want: dict[str, int],
    reasons: tuple[str, ...] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """How the network's drop counters moved since ``before`` — over ``reasons``, or every
    reason that moved — polled until it is ``want`` or 10 s passed; and the counters."""
    deadline = time.monotonic() + 10
    while True:
        drops = lan(net)["drops"]
        names = reasons if reasons is not None else set(drops) | set(before)
        moved = {r: drops.get(r, 0) - before.get(r, 0) for r in names}
        if reasons is None:
            moved = {r: n for r, n in moved.items() if n}
        if moved == want or time.monotonic() > deadline:
            return moved, drops
        time.sleep(0.2)


TAMPER = SNIFF + textwrap.dedent(
    """
    counter = struct.unpack_from("!Q", got, 26)[0] + 10**6
    header = got[:17] + bytes([2]) + got[18:26] + struct.pack("!Q", counter)
    packet = header + os.urandom(5000)  # a super-frame whose tag cannot be right
    chunk = 1464 - 32
    count = -(-len(packet) // chunk)
    prefix = packet[:16] + bytes([1, 4]) + packet[22:34]
    wire = b"".join(prefix + bytes([i, count]) + packet[i * chunk : (i + 1) * chunk]
                    for i in range(count))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendmsg([wire], [(17, 103, struct.pack("=H", 1464))], 0, (node, port))  # one GSO run
    print("sent", flush=True)
    """
)


def test_a_tampered_super_frame_run_is_counted_auth_once(net: Overlay) -> None:
    """A super-frame's fragments as one GSO run, naming a live session but not sealed with its
    key: joined (in C with the fast path), dropped as ``auth`` exactly once, nothing else."""
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert h1.host.ping(h2.ip4, count=1, timeout=5)
    before = lan(net)["drops"]
    fast = fast_node(net, "n1")
    sniff_and_send(net, TAMPER, "tamper")  # the session's header taken from h1's pings
    moved, drops = drops_moved(net, before, {"auth": 1})
    assert moved == {"auth": 1}, drops
    if fast is not None:  # joined in C, not left to the pure Reassembler
        assert fast_node(net, "n1")["joined"] - fast["joined"] == 1  # type: ignore[index]
    assert h1.host.ping(h2.ip4, count=2, timeout=5)  # the real session is untouched


CAPTURE = SNIFF + textwrap.dedent(
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(got, (node, port))  # replayed as it was
    counter = struct.unpack_from("!Q", got, 26)[0]
    s.sendto(got[:26] + struct.pack("!Q", counter + 10**6) + got[34:], (node, port))  # tampered
    print("sent", flush=True)
    """
)


def test_a_replayed_and_a_tampered_datagram_are_dropped_and_counted(net: Overlay) -> None:
    h1, h2 = net.clients["h1"], net.clients["h2"]
    assert h1.host.ping(h2.ip4, count=1, timeout=5)
    before = lan(net)["drops"]
    sniff_and_send(net, CAPTURE, "capture")  # copies one of h1's pings
    want = {"replay": 1, "auth": 1}
    moved, drops = drops_moved(net, before, want, reasons=("replay", "auth"))
    assert moved == want, drops
    assert h1.host.ping(h2.ip4, count=2, timeout=5)  # the real session is untouched


def test_a_revoked_key_is_cut_at_once_while_others_keep_talking(net: Overlay) -> None:
    h1, h2, h3 = net.clients["h1"], net.clients["h2"], net.clients["h3"]
    assert h3.host.ping(h1.ip4, count=2, timeout=5)
    net.tok("key", "revoke", net.network, str(h3.key_id))
    time.sleep(1.0)
    assert not h3.host.ping(h1.ip4, count=3, timeout=3)
    assert h1.host.ping(h2.ip4, count=2, timeout=5)
    assert lan(net)["drops"].get("revoked_key", 0) > 0
