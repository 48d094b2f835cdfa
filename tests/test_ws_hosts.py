"""WebSocket ports by name on a real node process: the page's hello may name the port (checked
by the node), the key's label and the learned MAC and hashed IPs reach /api/status and the
page's status push."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode

from atenet.addressing import ipv4_for
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.support.loopback_node import LoopbackNode
from tests.test_websocket import hello

MAC = bytes.fromhex("02123456789a")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path / "home", "lan") as n:
        yield n


async def status_of(ws: aiohttp.ClientWebSocketResponse, want: str) -> dict:
    """The next status push whose own port has ``want`` non-empty."""
    for _ in range(10):
        raw = await ws.receive(5)
        if raw.type == aiohttp.WSMsgType.BINARY:  # a frame, e.g. the gateway's advertisement
            continue
        msg = json.loads(raw.data)
        if msg["op"] == "status":
            mine = next(p for p in msg["ports"] if p["name"] == msg["port"])
            if mine[want]:
                return mine
    raise AssertionError(f"no status with {want}")


async def test_page_hello_names_its_port_and_the_node_learns_mac_and_ip(node: LoopbackNode) -> None:
    token = AccessToken.decode(node.token("front desk"))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{node.ws}/ws") as ws:
            await ws.send_str(json.dumps({**hello(token), "host": "kiosk 1"}))
            assert json.loads((await ws.receive(5)).data)["op"] == "welcome"
            await ws.send_bytes(ethernet_frame(b"\xff" * 6, MAC, 0x88B5, b"x" * 46))
            mine = await status_of(ws, "mac")
        ip = str(ipv4_for(token.network_id, MAC, "10.88.0.0/24").ip)
        assert (mine["host"], mine["label"], mine["mac"], mine["ipv4"]) == (
            "kiosk 1", "front desk", MAC.hex(":"), ip,
        )  # fmt: skip
        # A name with a control character or over 64 characters: the hello breaks its schema
        # and is refused as a policy violation (1008, docs/websocket.md).
        for bad in ("evil\nline", "x" * 65, 7):
            async with http.ws_connect(f"{node.ws}/ws") as ws:
                await ws.send_str(json.dumps({**hello(token), "host": bad}))
                msg = await ws.receive(5)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == WSCloseCode.POLICY_VIOLATION

        # The raw relay has no hello: its port still carries the key's label and learns its MAC.
        raw = node.token("emulator")
        for _ in range(50):  # the node learns the new key from the chain within a moment
            try:
                ws = await http.ws_connect(f"{node.ws}/net/{raw}")
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.1)
        async with ws:
            await ws.send_bytes(ethernet_frame(b"\xff" * 6, MAC, 0x88B5, b"y" * 46))
            for _ in range(50):
                ports = node.network_status()["ports"]
                if ports and ports[0]["mac"]:
                    break
                await asyncio.sleep(0.1)
            (port,) = ports
            assert (port["label"], port["host"], port["mac"]) == ("emulator", "", MAC.hex(":"))
