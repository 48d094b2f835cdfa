"""ARP / neighbour discovery snooping (switch/snoop.py) and `tok fdb` against a real node."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from scapy.all import (
    ARP,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,  # type: ignore[attr-defined]
    IPv6,
    raw,
)

from atenet.overlay.token import AccessToken
from atenet.switch.core import Port, Switch
from atenet.switch.snoop import IpTable, is_neighbour_frame
from tests.support.loopback_node import VENV_BIN, LoopbackNode
from tests.test_websocket import hello

M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def arp(mac: str, ip: str, target: str = "10.0.0.9", op: int = 1) -> bytes:
    return raw(
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc=mac, psrc=ip, pdst=target)
    )


class Sink(Port):
    def deliver(self, frame: bytes) -> None:
        pass


def test_claims_from_arp_and_nd_are_learned_moved_aged_and_bounded() -> None:
    table = IpTable(max_entries=3, age=300)
    table.observe(arp(M1, "10.0.0.5"), "port a", 0.0)
    table.observe(arp(M1, "0.0.0.0"), "port a", 0.0)  # a probe claims nothing
    ns = (Ether(src=M2, dst="33:33:ff:00:00:01") / IPv6(src="fd00::2", dst="ff02::1:ff00:1")
          / ICMPv6ND_NS(tgt="fd00::1") / ICMPv6NDOptSrcLLAddr(lladdr=M2))  # fmt: skip
    table.observe(raw(ns), "node b", 1.0)
    table.observe(raw(Ether(src=M2, dst=M1) / IPv6(src="fd00::3", dst="fd00::2")
                      / ICMPv6ND_NA(tgt="fd00::3", R=0, S=1, O=1)
                      / ICMPv6NDOptDstLLAddr(lladdr=M2)), "node b", 2.0)  # fmt: skip
    table.observe(
        raw(
            Ether(src=M2, dst="33:33:00:00:00:01")
            / IPv6(src="::", dst="ff02::1:ff00:7")
            / ICMPv6ND_NS(tgt="fd00::7")
        ),
        "node b",
        2.0,
    )  # fmt: skip  (DAD)
    view = {e["ip"]: (e["mac"], e["where"]) for e in table.view(3.0)}
    assert view == {"10.0.0.5": (M1, "port a"), "fd00::2": (M2, "node b"),
                    "fd00::3": (M2, "node b")}  # fmt: skip
    table.observe(arp(M2, "10.0.0.5"), "port c", 4.0)  # the address moved
    table.observe(arp(M2, "10.0.0.6"), "port c", 4.0)  # full: not learned, nothing evicted
    assert table.counters["moved"] == 1 and table.counters["full"] == 1 and len(table) == 3
    table.observe(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 10, "port a", 5.0)
    assert table.counters["malformed"] == 1
    table.age(303.5)  # only 10.0.0.5 (claimed at 4.0) survives
    assert [e["ip"] for e in table.view(303.5)] == ["10.0.0.5"]


def test_the_switch_hands_only_neighbour_frames_to_the_table() -> None:
    switch = Switch()
    got: list[bytes] = []
    switch.snoop = lambda frame, where: got.append(frame)
    a = Sink("a", "test")
    switch.add("a", a)
    switch.from_local(a, arp(M1, "10.0.0.5"))
    switch.from_local(
        a, raw(Ether(src=M1, dst=M2) / IPv6(src="fd00::1", dst="fd00::2") / bytes(60))
    )
    switch.from_peer(arp(M2, "10.0.0.6", op=2), 7)
    assert len(got) == 2 and is_neighbour_frame(got[1])


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path / "home", "lan") as n:
        yield n


async def test_tok_fdb_lists_a_page_hosts_mac_port_and_address(node: LoopbackNode) -> None:
    token = AccessToken.decode(node.token("front desk"))
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{node.ws}/ws") as ws:
        await ws.send_str(json.dumps(hello(token)))
        assert json.loads((await ws.receive(5)).data)["op"] == "welcome"
        await ws.send_bytes(arp(M1, "10.88.0.77", "10.88.0.1"))
        await asyncio.sleep(0.3)

        def tok(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [VENV_BIN / "tok", "fdb", *args, "--node", node.http],
                env=node.env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip

        out = await asyncio.to_thread(tok, "lan", "--json")
        assert out.returncode == 0, out.stderr
        (net,) = json.loads(out.stdout)
        assert [m["mac"] for m in net["macs"]] == [M1] and net["macs"][0]["port"].startswith("ws")
        assert [(e["ip"], e["mac"]) for e in net["ips"]] == [("10.88.0.77", M1)]
        text = await asyncio.to_thread(tok, "lan")
        assert "10.88.0.77" in text.stdout and M1 in text.stdout
        missing = await asyncio.to_thread(tok, "nope")
        assert missing.returncode == 1 and "does not serve 'nope'" in missing.stderr
