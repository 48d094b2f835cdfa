"""WebSocket ports on a real node process: the v86-style raw relay, the page's HMAC hello,
revocation, random early drop for a client that stops reading, and 500 ports at once."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from atenet.node.websocket import CLOSE_FORBIDDEN
from atenet.overlay.token import AccessToken
from atenet.overlay.token import hello as token_hello
from atenet.wire.ethernet import ethernet_frame
from tests.support.loopback_node import LoopbackNode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path / "home", "lan") as n:
        yield n


def frame(src: int, payload: bytes) -> bytes:
    return ethernet_frame(b"\xff" * 6, bytes([2, 0, 0, 0, 0, src]), 0x88B5, payload.ljust(46))


def router_advert(frame: bytes) -> bool:
    """The gateway's unsolicited router advertisement (IPv6, ICMPv6 type 134)."""
    return frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 134


async def recv_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> bytes:
    """The next frame that is not the gateway's router advertisement."""
    while True:
        msg = await ws.receive(timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            if router_advert(msg.data):
                continue
            return msg.data
        assert msg.type == aiohttp.WSMsgType.TEXT, msg


async def test_raw_relay_ports_exchange_frames_and_bad_tokens_get_403(node: LoopbackNode) -> None:
    good = node.token("a")
    other = node.token("b")
    revoked = node.token("c")
    node.revoke(3)
    parsed = AccessToken.decode(good)
    wrong_secret = AccessToken(parsed.network_id, parsed.key_id, os.urandom(32)).encode()
    unknown_key = AccessToken(parsed.network_id, 99, parsed.secret).encode()
    async with aiohttp.ClientSession() as http:
        for bad in (revoked, "atn1.garbage", wrong_secret, unknown_key):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{node.ws}/net/{bad}")
            assert err.value.status == 403
        async with http.ws_connect(f"{node.ws}/net/{good}") as a, \
                http.ws_connect(f"{node.ws}/net/{other}") as b:  # fmt: skip
            await asyncio.sleep(0.2)
            await a.send_bytes(frame(1, b"from a"))
            assert await recv_frame(b) == frame(1, b"from a")
            await b.send_bytes(frame(2, b"from b"))
            assert await recv_frame(a) == frame(2, b"from b")
            ports = node.network_status()["ports"]
            assert sorted(p["kind"] for p in ports) == ["ws", "ws"]


def hello(token: AccessToken, nonce: str | None = None, when: int | None = None) -> dict:
    return token_hello(token, when=when, nonce=nonce)


async def test_page_hello_is_verified_and_answered_with_settings(node: LoopbackNode) -> None:
    token = AccessToken.decode(node.token("page"))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{node.ws}/ws") as ws:
            first = hello(token)
            await ws.send_str(json.dumps(first))
            welcome = json.loads((await ws.receive(5)).data)
            assert welcome["op"] == "welcome"
            assert welcome["name"] == "lan" and welcome["cidr"] == "10.88.0.0/24"
            status = json.loads((await ws.receive(5)).data)
            assert status["op"] == "status" and status["port"].startswith("ws:")
        # A replayed hello (same nonce) and a hello with a wrong MAC are refused.
        for bad in ({**first}, {**hello(token), "mac": "00" * 32}):
            async with http.ws_connect(f"{node.ws}/ws") as ws:
                await ws.send_str(json.dumps(bad))
                msg = await ws.receive(5)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == CLOSE_FORBIDDEN


async def test_revocation_closes_a_connected_websocket(node: LoopbackNode) -> None:
    token = node.token("soon revoked")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{node.ws}/net/{token}") as ws:
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(node.revoke, 1)
        msg = await ws.receive(5)
        while msg.type == aiohttp.WSMsgType.BINARY and router_advert(msg.data):
            msg = await ws.receive(5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == CLOSE_FORBIDDEN
        assert time.monotonic() - started < 3  # incl. the `tok` process start-up


async def blast(sender, receiver, seconds: float, rate: int = 4000) -> int:
    """Frames ``receiver`` got while ``sender`` sent ``rate`` frames/s for ``seconds``."""
    got = 0
    payload = frame(9, b"x" * 1000)
    burst = rate // 100

    async def send() -> None:
        start = time.monotonic()
        for tick in range(int(seconds * 100)):
            for _ in range(burst):
                await sender.send_bytes(payload)
            await asyncio.sleep(max(0.0, start + (tick + 1) / 100 - time.monotonic()))

    async def receive() -> None:
        nonlocal got
        stop = time.monotonic() + seconds + 1.0
        while time.monotonic() < stop:
            try:
                msg = await receiver.receive(0.2)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                got += 1

    await asyncio.gather(send(), receive())
    return got


def stalled_client(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again, with a
    tiny receive buffer: the node's sends to it block as soon as a few frames are in flight."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def test_a_client_that_stops_reading_never_slows_the_others(tmp_path: Path) -> None:
    # The blast floods 4,000 broadcasts/s on purpose (the stalled client must be sent them):
    # storm control, which caps a port's floods at 1,000/s, is off for this node.
    with LoopbackNode(tmp_path / "home", "lan", "--storm-rate", "0") as node:
        await _stalled_client_case(node)


async def _stalled_client_case(node: LoopbackNode) -> None:
    tokens = [node.token(n) for n in ("a", "b", "stalled")]
    async with aiohttp.ClientSession() as http:
        a = await http.ws_connect(f"{node.ws}/net/{tokens[0]}")
        b = await http.ws_connect(f"{node.ws}/net/{tokens[1]}")
        await asyncio.sleep(0.3)
        baseline = await blast(a, b, 3)
        # A third client connects and then never reads: its TCP window fills up at once.
        stalled = stalled_client(node.http_port, f"/net/{tokens[2]}")
        try:
            await asyncio.sleep(0.3)
            loaded = await blast(a, b, 3)
            ports = node.network_status()["ports"]
        finally:
            stalled.close()
        stalled_drops = sum(p["drops"] for p in ports if p["name"].endswith("/k3"))
        for ws in (a, b):
            await ws.close()
    assert baseline > 0.9 * 4000 * 3, baseline
    assert loaded >= 0.9 * baseline, (baseline, loaded)
    assert stalled_drops > 0


async def test_a_client_that_never_answers_pings_is_closed(tmp_path: Path) -> None:
    with LoopbackNode(tmp_path / "home", "lan", "--ws-heartbeat", "1") as node:
        token = node.token("silent")
        stalled = stalled_client(node.http_port, f"/net/{token}")
        try:
            deadline = time.monotonic() + 10
            while True:
                kinds = [p["kind"] for p in node.network_status()["ports"]]
                if not kinds and time.monotonic() > 0:
                    break
                assert time.monotonic() < deadline, "a dead client was never closed"
                await asyncio.sleep(0.2)
        finally:
            stalled.close()


async def test_500_websocket_ports_each_receive_a_broadcast(node: LoopbackNode) -> None:
    token = node.token("many")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        sockets = await asyncio.gather(
            *(http.ws_connect(f"{node.ws}/net/{token}") for _ in range(500))
        )
        try:
            deadline = time.monotonic() + 20
            while len(node.network_status()["ports"]) < 500:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await sockets[0].send_bytes(frame(7, b"to everyone"))
            received = await asyncio.gather(*(recv_frame(ws, 20) for ws in sockets[1:]))
            assert all(f == frame(7, b"to everyone") for f in received)
            assert len(received) == 499
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))


async def test_malformed_hellos_close_with_1008_are_counted_and_never_a_traceback(
    node: LoopbackNode,
) -> None:
    """Issue 9, item 3: ``"time": 1e999`` raised OverflowError and a non-ASCII ``mac`` a
    TypeError, each a traceback in the node's log; now every field is schema-checked."""
    token = AccessToken.decode(node.token("page"))
    good = hello(token)
    bad_hellos = [
        json.dumps(good).replace(str(good["time"]), "1e999"),
        json.dumps({**hello(token), "mac": "é" * 64}, ensure_ascii=False),
        json.dumps({**hello(token), "key_id": "1"}),
        json.dumps({**hello(token), "network": "zz" * 16}),
        json.dumps({**hello(token), "time": 2**80}),
        json.dumps({**hello(token), "nonce": "x" * 500}),
        json.dumps({k: v for k, v in hello(token).items() if k != "mac"}),
        "[" * 30_000 + "]" * 30_000,
        "[]",
        '"hello"',
        "not json",
    ]
    async with aiohttp.ClientSession() as http:
        for bad in bad_hellos:
            async with http.ws_connect(f"{node.ws}/ws") as ws:
                await ws.send_str(bad)
                msg = await ws.receive(5)
                assert msg.type == aiohttp.WSMsgType.CLOSE, bad[:80]
                assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION, bad[:80]
        # Binary instead of a hello, too.
        async with http.ws_connect(f"{node.ws}/ws") as ws:
            await ws.send_bytes(b"\x00" * 20)
            await ws.receive(5)
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
        # After a good hello, text messages are checked, counted and ignored: the port lives on.
        async with http.ws_connect(f"{node.ws}/ws") as ws:
            await ws.send_str(json.dumps(hello(token)))
            assert json.loads((await ws.receive(5)).data)["op"] == "welcome"
            for junk in ('{"op": "x", "time": 1e999}', "[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]"):
                await ws.send_str(junk)
            status = json.loads((await ws.receive(5)).data)
            assert status["op"] == "status" and not ws.closed
    drops = node.status()["websocket"]["drops"]
    assert drops["bad_message"] == len(bad_hellos) + 1 + 2, drops
    assert drops["handler_error"] == 0, drops
    log = node.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


async def test_random_network_ids_on_net_and_ws_cost_bounded_lookups(node: LoopbackNode) -> None:
    """Issue 9, item 2 on the HTTP paths: tokens and hellos naming random networks are refused,
    and the store lookups they cause are rate-limited like the UDP path's."""
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def bogus_raw() -> int:
            token = AccessToken(os.urandom(16), 1, os.urandom(32)).encode()
            try:
                await http.ws_connect(f"{node.ws}/net/{token}")
            except aiohttp.WSServerHandshakeError as err:
                return err.status
            return 101

        async def bogus_page() -> int | None:
            async with http.ws_connect(f"{node.ws}/ws") as ws:
                token = AccessToken(os.urandom(16), 1, os.urandom(32))
                await ws.send_str(json.dumps(hello(token)))
                await ws.receive(5)
                return ws.close_code

        started = time.monotonic()
        raw = await asyncio.gather(*(bogus_raw() for _ in range(400)))
        page = await asyncio.gather(*(bogus_page() for _ in range(100)))
        elapsed = time.monotonic() - started
    assert set(raw) == {403} and set(page) == {CLOSE_FORBIDDEN}
    lookups = node.status()["lookups"]
    # The bucket: 100 at once, then 50/s (docs/limits.md); the rest refused and counted.
    assert lookups["lookups"] <= 100 + 50 * elapsed + 5, (lookups, elapsed)
    assert sum(lookups["drops"].values()) >= 500 - lookups["lookups"]
    assert lookups["cached"] <= lookups["capacity"]
