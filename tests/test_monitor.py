"""`tok monitor`: frame summaries, the pcap writer (read back by scapy and tshark), the passive
port against a real node on loopback, the owner's monitor key, and a namespaced network where a
ping between two `tok connect` hosts shows up in the monitor's pcap and text trace."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import rdpcap

from atenet.chain.sqlite_store import SqliteStore
from atenet.client.monitor import (
    MONITOR_LABEL,
    Monitor,
    PcapWriter,
    TcpHeader,
    monitor_token,
    monitor_token_path,
    run_command,
    summarize,
)
from atenet.errors import AtenetError
from atenet.node.daemon import NodeDaemon
from atenet.overlay.seal import TYPE_CONTROL, TYPE_FRAME, PacketKey, Sealer
from atenet.overlay.token import AccessToken
from atenet.owner import Owner
from atenet.wire.arp import arp_reply, arp_request, gratuitous_arp
from atenet.wire.ethernet import ethernet_frame
from atenet.wire.icmp import icmp_echo_reply, icmp_echo_request
from atenet.wire.icmpv6 import icmpv6_echo_request, neighbor_solicitation
from atenet.wire.ipv4 import PROTO_UDP, Ipv4Repr
from atenet.wire.udp import UdpRepr
from tests.conftest import VENV_BIN, needs_root
from tests.support.chains import make_world, serving_node

A_MAC = bytes.fromhex("02aa00000001")
B_MAC = bytes.fromhex("02bb00000002")
A_IP, B_IP = IPv4Address("10.77.0.1"), IPv4Address("10.77.0.2")
A_IP6, B_IP6 = IPv6Address("fd77::1"), IPv6Address("fd77::2")
TS = 1_700_000_000.123456
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (apt-get install tshark): pcap read by scapy only"
)


def when(ts: float = TS) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")


def udp_frame(sport: int, dport: int, payload: bytes = b"hi") -> bytes:
    udp = UdpRepr(sport, dport, payload).emit(A_IP, B_IP)
    return ethernet_frame(B_MAC, A_MAC, 0x0800, Ipv4Repr(A_IP, B_IP, PROTO_UDP, udp).emit())


# --------------------------------------------------------------------------- summaries


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (
            arp_request(A_MAC, A_IP, B_IP),
            "02:aa:00:00:00:01 -> ff:ff:ff:ff:ff:ff ARP who-has 10.77.0.2 tell 10.77.0.1, "
            "length 42",
        ),
        (
            arp_reply(B_MAC, B_IP, A_MAC, A_IP),
            "02:bb:00:00:00:02 -> 02:aa:00:00:00:01 ARP 10.77.0.2 is-at 02:bb:00:00:00:02, "
            "length 42",
        ),
        (
            gratuitous_arp(A_MAC, A_IP),
            "02:aa:00:00:00:01 -> ff:ff:ff:ff:ff:ff ARP announce 10.77.0.1 is-at "
            "02:aa:00:00:00:01, length 42",
        ),
        (
            icmp_echo_request(A_MAC, B_MAC, A_IP, B_IP, 4660, 7, b"x" * 56),
            "02:aa:00:00:00:01 -> 02:bb:00:00:00:02 IPv4 10.77.0.1 -> 10.77.0.2 ICMP echo "
            "request id 4660 seq 7, length 98",
        ),
        (
            icmp_echo_reply(B_MAC, A_MAC, B_IP, A_IP, 4660, 7, b"x" * 56),
            "02:bb:00:00:00:02 -> 02:aa:00:00:00:01 IPv4 10.77.0.2 -> 10.77.0.1 ICMP echo "
            "reply id 4660 seq 7, length 98",
        ),
        (
            udp_frame(5353, 53),
            "02:aa:00:00:00:01 -> 02:bb:00:00:00:02 IPv4 10.77.0.1 -> 10.77.0.2 UDP 5353 -> 53 "
            "DNS len 2, length 44",
        ),
        (
            icmpv6_echo_request(A_MAC, B_MAC, A_IP6, B_IP6, 1, 2),
            "02:aa:00:00:00:01 -> 02:bb:00:00:00:02 IPv6 fd77::1 -> fd77::2 ICMPv6 echo request "
            "id 1 seq 2, length 62",
        ),
        (
            neighbor_solicitation(A_MAC, A_IP6, B_IP6),
            "02:aa:00:00:00:01 -> 33:33:ff:00:00:02 IPv6 fd77::1 -> ff02::1:ff00:2 ICMPv6 "
            "neighbor solicitation who-has fd77::2, length 86",
        ),
        (
            bytes(
                Ether(src="02:aa:00:00:00:01", dst="02:bb:00:00:00:02")
                / IP(src=str(A_IP), dst=str(B_IP))
                / TCP(sport=40000, dport=22, flags="SA", seq=100, ack=5)
            ),
            "02:aa:00:00:00:01 -> 02:bb:00:00:00:02 IPv4 10.77.0.1 -> 10.77.0.2 TCP 40000 -> 22 "
            "[S.] seq 100 ack 5 len 0, length 54",
        ),
        (
            bytes(
                Ether(src="02:aa:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")
                / Dot1Q(vlan=42)
                / ARP(op=1, hwsrc="02:aa:00:00:00:01", psrc=str(A_IP), pdst=str(B_IP))
            ),
            "02:aa:00:00:00:01 -> ff:ff:ff:ff:ff:ff vlan 42 ARP who-has 10.77.0.2 tell "
            "10.77.0.1, length 46",
        ),
        (
            ethernet_frame(b"\x01\x80\xc2\x00\x00\x0e", A_MAC, 0x88CC, b"\x00" * 46),
            "02:aa:00:00:00:01 -> 01:80:c2:00:00:0e LLDP length 60",
        ),
        (
            ethernet_frame(B_MAC, A_MAC, 0x88B5, b"\x00" * 46),
            "02:aa:00:00:00:01 -> 02:bb:00:00:00:02 0x88b5 length 60",
        ),
        (b"\x00" * 9, "? -> ? runt Ethernet frame too short: 9 bytes, header needs 14, length 9"),
    ],
    ids=[
        "arp-who-has",
        "arp-is-at",
        "arp-announce",
        "icmp-request",
        "icmp-reply",
        "udp",
        "icmpv6-echo",
        "nd-solicit",
        "tcp-synack",
        "vlan",
        "lldp",
        "unknown-ethertype",
        "runt",
    ],
)
def test_summary_line(frame: bytes, text: str) -> None:
    assert summarize(frame).line(TS) == f"{when()} {text}"


def test_a_broken_upper_layer_keeps_the_addresses_and_names_the_fault() -> None:
    packet = Ipv4Repr(A_IP, B_IP, 6, b"abc").emit()  # TCP with a 3-byte segment
    summary = summarize(ethernet_frame(B_MAC, A_MAC, 0x0800, packet))
    assert summary.text == "10.77.0.1 -> 10.77.0.2 malformed: TCP segment too short: 3 bytes, " \
        "header needs 20"  # fmt: skip
    assert summary.fields["error"].startswith("TCP segment too short")
    truncated = icmp_echo_request(A_MAC, B_MAC, A_IP, B_IP, 1, 1, b"x" * 40)[:30]
    assert "malformed: IPv4 packet too short" in summarize(truncated).text


def test_json_has_the_facts_as_values() -> None:
    frame = icmp_echo_request(A_MAC, B_MAC, A_IP, B_IP, 9, 3)
    record = json.loads(json.dumps(summarize(frame).to_json(TS)))
    assert record == {
        "time": round(TS, 6),
        "src": "02:aa:00:00:00:01",
        "dst": "02:bb:00:00:00:02",
        "ethertype": 0x0800,
        "type": "IPv4",
        "summary": "10.77.0.1 -> 10.77.0.2 ICMP echo request id 9 seq 3",
        "length": 42,
        "src_ip": "10.77.0.1",
        "dst_ip": "10.77.0.2",
        "proto": 1,
        "ttl": 64,
        "icmp_type": 8,
        "icmp_code": 0,
        "id": 9,
        "seq": 3,
    }
    udp = summarize(udp_frame(1000, 2000)).to_json(TS)
    assert (udp["sport"], udp["dport"]) == (1000, 2000)


@pytest.mark.parametrize(
    ("flags", "text"),
    [("S", "S"), ("SA", "S."), ("A", "."), ("PA", "P."), ("FA", "F."), ("R", "R"), ("", "none")],
)
def test_tcp_flags_in_tcpdump_notation(flags: str, text: str) -> None:
    raw = bytes(TCP(sport=1, dport=2, flags=flags))
    assert TcpHeader.parse(raw).flag_text == text


# --------------------------------------------------------------------------- pcap


def sample_frames() -> list[tuple[bytes, int]]:
    base = 1_700_000_000_123_456_789
    return [
        (arp_request(A_MAC, A_IP, B_IP), base),
        (arp_reply(B_MAC, B_IP, A_MAC, A_IP), base + 1_000),
        (icmp_echo_request(A_MAC, B_MAC, A_IP, B_IP, 77, 1, b"p" * 56), base + 2_000_000),
        (icmp_echo_reply(B_MAC, A_MAC, B_IP, A_IP, 77, 1, b"p" * 56), base + 1_000_000_000),
    ]


def test_pcap_header_and_records_are_libpcap_with_microseconds() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    assert buf.getvalue() == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    frame, ts_ns = sample_frames()[0]
    writer.write(frame, ts_ns)
    record = buf.getvalue()[24:]
    assert struct.unpack_from("<IIII", record) == (1_700_000_000, 123_456, 42, 42)
    assert record[16:] == frame


def test_pcap_reads_back_with_scapy(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcap"
    frames = sample_frames()
    with path.open("wb") as f:
        writer = PcapWriter(f)
        for frame, ts_ns in frames:
            writer.write(frame, ts_ns)
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [f for f, _ in frames]
    assert [int(p.time * 1_000_000) for p in packets] == [t // 1000 for _, t in frames]
    assert packets[0][ARP].op == 1 and packets[1][ARP].op == 2
    assert packets[2][ICMP].type == 8 and packets[3][ICMP].type == 0
    assert packets[2][ICMP].id == 77 and packets[3][ICMP].seq == 1


def test_pcap_is_readable_while_the_writer_is_still_open(tmp_path: Path) -> None:
    """Flushed per frame: a monitor killed mid-capture leaves every frame it got."""
    path = tmp_path / "live.pcap"
    f = path.open("wb")
    try:
        writer = PcapWriter(f)
        assert len(rdpcap(str(path))) == 0  # the header alone is a valid, empty capture
        for frame, ts_ns in sample_frames()[:2]:
            writer.write(frame, ts_ns)
        assert len(rdpcap(str(path))) == 2
    finally:
        f.close()


@needs_tshark
def test_pcap_reads_back_with_tshark(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcap"
    with path.open("wb") as f:
        writer = PcapWriter(f)
        for frame, ts_ns in sample_frames():
            writer.write(frame, ts_ns)
    rows = tshark_fields(path, "frame.time_epoch", "eth.src", "arp.opcode", "icmp.type")
    assert [r[1:] for r in rows] == [
        ["02:aa:00:00:00:01", "1", ""],
        ["02:bb:00:00:00:02", "2", ""],
        ["02:aa:00:00:00:01", "", "8"],
        ["02:bb:00:00:00:02", "", "0"],
    ]
    assert rows[0][0].startswith("1700000000.123456")


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    assert TSHARK is not None
    args = [TSHARK, "-n", "-r", str(path), "-T", "fields"]
    for name in fields:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


# --------------------------------------------------------------------------- on loopback


@pytest.fixture
async def node(tmp_path: Path):
    """A real node on 127.0.0.1 serving one network with key 1 active and key 2 revoked."""
    async with serving_node(tmp_path, (1, 2, 3), revoked=(2,)) as served:
        yield served


def token_for(
    daemon: NodeDaemon, world: Any, secrets: dict[int, bytes], key_id: int
) -> AccessToken:
    endpoint = f"127.0.0.1:{daemon.udp_port}"
    return AccessToken(world.chain.network_id, key_id, secrets[key_id], (endpoint,))


def bound_hello(daemon: NodeDaemon) -> bytes:
    """A hello naming the node's instance: what opens a port (see docs/protocol.md)."""
    return json.dumps({"op": "hello", "instance": daemon.instance}).encode()


def ports(daemon: NodeDaemon) -> list[dict[str, Any]]:
    nets = daemon.status()["networks"]
    return nets[0]["ports"] if nets else []


async def test_monitor_sees_frames_of_other_ports_and_never_sends_one(node) -> None:
    daemon, world, secrets = node
    got: list[tuple[bytes, int]] = []
    connected: list[dict[str, Any]] = []
    monitor = Monitor(token_for(daemon, world, secrets, 1), lambda f, t: got.append((f, t)))
    task = asyncio.create_task(monitor.run(10, connected.append))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        for _ in range(100):
            if connected:
                break
            await asyncio.sleep(0.05)
        assert connected and connected[0]["name"] == "office"
        # Another client (key 3) joins and sends two frames: the switch floods them to us.
        other = Sealer(world.chain.network_id, PacketKey(secrets[3], 3), 4242, time.time_ns())
        addr = ("127.0.0.1", daemon.udp_port)
        sock.sendto(other.seal(bound_hello(daemon), TYPE_CONTROL), addr)
        sent = [arp_request(A_MAC, A_IP, B_IP), icmp_echo_request(A_MAC, B_MAC, A_IP, B_IP, 1, 1)]
        await asyncio.sleep(0.2)
        for frame in sent:
            sock.sendto(other.seal(frame, TYPE_FRAME), addr)
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [f for f, _ in got] == sent
        assert all(abs(t / 1e9 - time.time()) < 30 for _, t in got)
        mine = [p for p in ports(daemon) if p["name"].endswith("/k1")]
        assert len(mine) == 1 and mine[0]["frames_in"] == 0 and mine[0]["frames_out"] == 2
    finally:
        monitor.stop()
        assert await asyncio.wait_for(task, 5) == 2
        sock.close()
    # Ctrl-C says bye: the node drops the monitor's port at once, not after 60 s idle.
    for _ in range(50):
        if not any(p["name"].endswith("/k1") for p in ports(daemon)):
            break
        await asyncio.sleep(0.05)
    assert not any(p["name"].endswith("/k1") for p in ports(daemon))


async def test_count_stops_the_monitor_by_itself(node) -> None:
    daemon, world, secrets = node
    got: list[bytes] = []
    monitor = Monitor(token_for(daemon, world, secrets, 1), lambda f, t: got.append(f), count=1)
    task = asyncio.create_task(monitor.run(10))
    other = Sealer(world.chain.network_id, PacketKey(secrets[3], 3), 99, time.time_ns())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(other.seal(bound_hello(daemon), TYPE_CONTROL), ("127.0.0.1", daemon.udp_port))
        for _ in range(100):  # keep announcing until the monitor's port exists and sees one
            if task.done():
                break
            frame = gratuitous_arp(A_MAC, A_IP)
            hello = other.seal(bound_hello(daemon), TYPE_CONTROL)  # a port once it is loaded
            sock.sendto(hello, ("127.0.0.1", daemon.udp_port))
            sock.sendto(other.seal(frame, TYPE_FRAME), ("127.0.0.1", daemon.udp_port))
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(task, 5) == 1
        assert len(got) == 1
    finally:
        monitor.stop()
        sock.close()


async def announce_until_done(task: asyncio.Task[Any], daemon: NodeDaemon, world: Any,
                              secret: bytes) -> None:  # fmt: skip
    """Another client (key 3) sends announcements until ``task`` (a monitor) finishes."""
    other = Sealer(world.chain.network_id, PacketKey(secret, 3), 1234, time.time_ns())
    addr = ("127.0.0.1", daemon.udp_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(other.seal(bound_hello(daemon), TYPE_CONTROL), addr)
        for _ in range(100):
            if task.done():
                return
            sock.sendto(other.seal(bound_hello(daemon), TYPE_CONTROL), addr)
            sock.sendto(other.seal(gratuitous_arp(A_MAC, A_IP), TYPE_FRAME), addr)
            await asyncio.sleep(0.1)


async def test_command_body_prints_json_lines_and_writes_pcap(
    node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, world, secrets = node
    token = token_for(daemon, world, secrets, 1).encode()

    async def no_owner() -> AccessToken:
        raise AssertionError("a --token monitor must not look for the owner's key")

    task = asyncio.create_task(run_command("office", token, no_owner, None, 2, 10, True))
    await announce_until_done(task, daemon, world, secrets[3])
    assert await asyncio.wait_for(task, 5) == 2
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    # The gateway's router advertisements may come in between; everything else is the announce.
    summaries = [r["summary"] for r in records if "router advertisement" not in r["summary"]]
    assert len(records) == 2 and summaries
    assert set(summaries) == {"announce 10.77.0.1 is-at 02:aa:00:00:00:01"}
    assert "monitoring office via node 127.0.0.1:" in err and "2 frames" in err

    pcap = tmp_path / "cap.pcap"
    task = asyncio.create_task(run_command(None, token, no_owner, str(pcap), 3, 10, False))
    await announce_until_done(task, daemon, world, secrets[3])
    assert await asyncio.wait_for(task, 5) == 3
    captured = rdpcap(str(pcap))
    assert len(captured) == 3
    assert {p[ARP].psrc for p in captured if ARP in p} == {str(A_IP)}
    assert capsys.readouterr().out == ""  # stdout stays clean: pcap goes to the file

    # NETWORK names another network than the token's: refused once the node says which.
    task = asyncio.create_task(run_command("lab", token, no_owner, None, 1, 10, False))
    with pytest.raises(AtenetError, match=r"the token is for network office \(.*\), not 'lab'"):
        await asyncio.wait_for(task, 10)


async def test_revoked_key_is_a_clear_error(node) -> None:
    daemon, world, secrets = node
    monitor = Monitor(token_for(daemon, world, secrets, 2), lambda f, t: None)
    with pytest.raises(AtenetError, match=r"no node answered for 2 s \(tried 127\.0\.0\.1:"):
        await asyncio.wait_for(monitor.run(2), 15)
    assert monitor.udp is None  # closed


# --------------------------------------------------------------------------- the owner's key


async def test_owner_monitor_key_is_exported_once_and_kept_private(
    tmp_path: Path, atenet_home: Path
) -> None:
    store = SqliteStore(f"sqlite://{tmp_path / 'c.sqlite'}")
    await store.connect()
    try:
        world = await make_world(store)
        owner = Owner(store, world.owner)
        first = await monitor_token(owner, world.chain, ["192.0.2.1:4799"])
        path = monitor_token_path(world.chain.network_id)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == first.encode()
        assert world.chain.state.keys[first.key_id].label == MONITOR_LABEL
        # Reused while active with the same endpoints (in any order): no new key.
        again = await monitor_token(owner, world.chain, ["192.0.2.1:4799"])
        assert again == first and len(world.chain.state.keys) == 1
        # The network's nodes changed: a new key, and the replaced one is revoked.
        moved = await monitor_token(owner, world.chain, ["192.0.2.2:4799", "192.0.2.1:4799"])
        assert moved.key_id != first.key_id
        assert world.chain.state.keys[first.key_id].revoked
        # Revoked by hand (`tok key revoke`): a fresh one next time.
        await owner.revoke_key(world.chain, moved.key_id)
        fresh = await monitor_token(owner, world.chain, ["192.0.2.1:4799", "192.0.2.2:4799"])
        assert fresh.key_id not in (first.key_id, moved.key_id)
        assert sum(not k.revoked for k in world.chain.state.keys.values()) == 1
        with pytest.raises(AtenetError, match="no node serves network 'office'"):
            await monitor_token(owner, world.chain, [])
    finally:
        await store.close()


# --------------------------------------------------------------------------- the command


def tok(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    return subprocess.run(
        [VENV_BIN / "tok", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give the NETWORK to monitor (yours), or --token-file FILE (or ATENET_TOKEN)"),
        (("--token", "nonsense"), "not an atenet access token"),
        (("nosuchnet",), "no store at "),  # a fresh home: read commands refuse a missing store
    ],
)
def test_command_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = tok(tmp_path / "home", "monitor", *args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("tok: error:")


def test_command_says_when_no_node_answers(tmp_path: Path) -> None:
    token = AccessToken(os.urandom(16), 1, os.urandom(32), (f"127.0.0.1:{unused_udp_port()}",))
    token_file = tmp_path / "token"
    token_file.write_text(token.encode())
    token_file.chmod(0o600)
    proc = tok(tmp_path / "home", "monitor", "--token-file", str(token_file), "--wait", "2")
    assert proc.returncode == 1
    assert proc.stderr.startswith("tok: error: no node answered for 2 s (tried 127.0.0.1:")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_a_token_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    """Every local user can read a process's command line (issue 9, item 9)."""
    token = AccessToken(os.urandom(16), 1, os.urandom(32), (f"127.0.0.1:{unused_udp_port()}",))
    proc = tok(tmp_path / "home", "monitor", "--token", token.encode(), "--wait", "1")
    assert proc.stderr.splitlines()[0].startswith("tok: warning: a token on the command line")
    assert "--token-file" in proc.stderr.splitlines()[0]
    both = tok(tmp_path / "home", "monitor", "--token", token.encode(), "--token-file", "-")
    assert both.returncode == 2 and "not both" in both.stderr


# --------------------------------------------------------------------------- in namespaces


@pytest.fixture(scope="module")
def lan() -> Iterator[Any]:
    from tests.support.netns import Lab
    from tests.support.overlay import Overlay

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mon-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        overlay.add_client("h1", ["n1"])
        overlay.add_client("h2", ["n1"])
        yield overlay


def start_monitor(lan: Any, host: Any, name: str, *args: str) -> tuple[subprocess.Popen[Any], Path]:
    from tests.support.overlay import BIN, wait_for_text

    log = lan.root / f"{name}.err"
    out = lan.root / f"{name}.out"
    with log.open("ab") as err, out.open("ab") as stdout:
        proc = host.popen(
            [BIN / "tok", "monitor", lan.network, *args],
            env=lan.env | {"ATENET_HOME": str(lan.owner_home)},
            stdout=stdout, stderr=err,
        )  # fmt: skip
    wait_for_text(proc, log, "monitoring lan via node", 30)
    return proc, out


def interrupt(proc: subprocess.Popen[Any]) -> int:
    """Ctrl-C, by PID; the monitor must exit 0 by itself (after saying bye)."""
    os.kill(proc.pid, signal.SIGINT)
    return proc.wait(timeout=10)


@needs_root
def test_ping_between_two_hosts_shows_in_pcap_and_text(lan: Any) -> None:
    h1, h2 = lan.clients["h1"], lan.clients["h2"]
    mon = lan.lab.add_host("mon")
    pcap = lan.root / "lan.pcap"
    pcap_proc, _ = start_monitor(lan, mon, "mon-pcap", "--pcap", str(pcap))
    text_proc, text_out = start_monitor(lan, mon, "mon-text")
    try:
        # Forget h2's MAC so the ping starts with an ARP exchange the monitor must see.
        h1.host.run(["ip", "neigh", "flush", "dev", "atenet0"], check=False)
        assert h1.host.ping(h2.ip4, count=2, timeout=10)
        time.sleep(0.5)
        # The two monitors share the owner's one monitor key (exported once, reused).
        keys = json.loads(lan.tok("key", "list", lan.network, "--json"))
        assert [k["label"] for k in keys].count(MONITOR_LABEL) == 1
        # They are passive: their ports on the node never sent a frame into the network.
        monitor_key = next(k["key_id"] for k in keys if k["label"] == MONITOR_LABEL)
        mon_ports = [
            p for p in lan.nodes["n1"].network("lan")["ports"]
            if p["name"].startswith(f"udp:{mon.ip}:") and p["name"].endswith(f"/k{monitor_key}")
        ]  # fmt: skip
        assert len(mon_ports) == 2 and all(p["frames_in"] == 0 for p in mon_ports), mon_ports
    finally:
        rc_pcap = interrupt(pcap_proc)
        rc_text = interrupt(text_proc)
    assert (rc_pcap, rc_text) == (0, 0)
    assert "frames written to" in (lan.root / "mon-pcap.err").read_text()

    h1_mac, h2_mac = h1.mac.lower(), h2.mac.lower()
    packets = rdpcap(str(pcap))
    arp_ops = {
        (p[ARP].op, p[ARP].psrc, p[ARP].pdst)
        for p in packets
        if ARP in p and p[ARP].psrc != p[ARP].pdst  # not the keep-alive announcements
    }
    assert (1, h1.ip4, h2.ip4) in arp_ops and (2, h2.ip4, h1.ip4) in arp_ops, arp_ops
    echo = {
        (p[ICMP].type, p[IP].src, p[IP].dst, p[Ether].src)
        for p in packets
        if ICMP in p and p[ICMP].type in (0, 8)
    }
    assert (8, h1.ip4, h2.ip4, h1_mac) in echo and (0, h2.ip4, h1.ip4, h2_mac) in echo, echo

    if TSHARK is not None:
        rows = tshark_fields(pcap, "arp.opcode", "icmp.type", "ip.src")
        assert ["", "8", h1.ip4] in rows and ["", "0", h2.ip4] in rows
        assert any(r[0] == "1" for r in rows) and any(r[0] == "2" for r in rows)

    text = text_out.read_text()
    assert f"{h1_mac} -> ff:ff:ff:ff:ff:ff ARP who-has {h2.ip4} tell {h1.ip4}" in text, text
    assert f"ARP {h2.ip4} is-at {h2_mac}" in text, text
    assert f"IPv4 {h1.ip4} -> {h2.ip4} ICMP echo request id " in text, text
    assert f"IPv4 {h2.ip4} -> {h1.ip4} ICMP echo reply id " in text, text
