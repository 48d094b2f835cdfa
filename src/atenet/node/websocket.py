"""WebSocket switch ports: browsers, emulators and programs join a network over HTTP.

Two endpoints on the node's HTTP server (docs/websocket.md):

* ``/net/<token>`` — the raw-frame relay protocol that v86, jor1k and websockproxy clients speak:
  every binary message is exactly one Ethernet frame, both ways. The access token is in the URL
  path because an emulator can only be given a URL; use wss (``--tls-cert``) so it stays secret.
* ``/ws`` — the web page's endpoint: the first message is a hello proving possession of the
  access key with an HMAC (the secret never crosses the wire), answered by a welcome with the
  network's settings; then binary frames, plus a status message every second.

A WebSocket port never stalls the switch: frames to it go through a bounded queue with random
early drop — as the queue fills, each new frame is dropped with a probability rising linearly
from 0 (at ``red_min``) to 1 (at ``limit``) — and drops are counted on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from atenet.errors import AtenetError
from atenet.node.core import host_name
from atenet.overlay.seal import PacketKey
from atenet.overlay.token import AccessToken
from atenet.switch.core import Port

if TYPE_CHECKING:
    from atenet.node.core import NetworkRuntime
    from atenet.node.daemon import NodeDaemon

log = logging.getLogger(__name__)

QUEUE_LIMIT = 512
"""Frames queued for one WebSocket before every new frame is dropped."""

RED_MIN = 128
"""Queue length where random early drop starts."""

HELLO_TIMEOUT = 10.0
"""Seconds a /ws client has to send its hello."""

HELLO_SKEW = 120.0
"""How far (seconds) a hello's time may be from the node's clock."""

CLOSE_FORBIDDEN = 4403
"""WebSocket close code for a refused hello (bad, unknown or revoked key)."""

HELLO_CONTEXT = "atenet/v1 ws hello|"
ETH_MIN = 14
MAX_FRAME = 65535 + 14


class WebSocketPort(Port):
    """A switch port behind one WebSocket connection."""

    __slots__ = ("_wake", "limit", "queue", "red_min", "revoked", "ws")

    def __init__(
        self,
        name: str,
        ws: web.WebSocketResponse,
        key_id: int,
        now: float,
        limit: int = QUEUE_LIMIT,
        red_min: int = RED_MIN,
    ) -> None:
        super().__init__(name, "ws", now, key_id)
        self.ws = ws
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.red_min = red_min
        self._wake = asyncio.Event()
        self.revoked = asyncio.Event()

    def deliver(self, frame: bytes) -> None:
        queue = self.queue
        depth = len(queue)
        if depth >= self.red_min and (
            depth >= self.limit
            or random.random() < (depth - self.red_min) / (self.limit - self.red_min)
        ):
            self.drops += 1
            return
        queue.append(frame)
        if not depth:
            self._wake.set()

    async def pump(self) -> None:
        """Send queued frames; a slow reader only slows (and fills) its own queue."""
        queue, ws = self.queue, self.ws
        while not ws.closed:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                frame = queue.popleft()
                await ws.send_bytes(frame)
                self.frames_out += 1
                self.bytes_out += len(frame)

    def close(self) -> None:
        """Revoked: the connection's handler closes the socket with code 4403."""
        self.revoked.set()


def hello_mac(auth_key: bytes, network_hex: str, key_id: int, when: int, nonce: str) -> str:
    """The HMAC a /ws hello carries: proves the client holds the access key."""
    message = f"{HELLO_CONTEXT}{network_hex}|{key_id}|{when}|{nonce}".encode()
    return hmac.new(auth_key, message, hashlib.sha256).hexdigest()


class WebSocketPorts:
    """The node's WebSocket endpoints."""

    def __init__(self, daemon: NodeDaemon, heartbeat: float = 20.0) -> None:
        self.daemon = daemon
        self.heartbeat = heartbeat
        self._nonces: dict[str, float] = {}
        self.refused = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/net/{token}", self.raw)
        app.router.add_get("/ws", self.page)

    async def _runtime_and_key(
        self, network_id: bytes, key_id: int
    ) -> tuple[NetworkRuntime, Any] | None:
        runtime = await self.daemon.ensure_network(network_id)
        if runtime is None or runtime.state is None:
            return None
        key = runtime.state.keys.get(key_id)
        if key is None or not key.usable(time.time()):
            return None
        return runtime, key

    async def raw(self, request: web.Request) -> web.StreamResponse:
        """``/net/<token>``: one binary message = one raw Ethernet frame."""
        try:
            token = AccessToken.decode(request.match_info["token"])
        except AtenetError:
            return self._forbidden()
        found = await self._runtime_and_key(token.network_id, token.key_id)
        if found is None or not hmac.compare_digest(found[1].secret, token.secret):
            return self._forbidden()
        runtime, _key = found
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        await self._serve(ws, runtime, token.key_id, request, status=False)
        return ws

    async def page(self, request: web.Request) -> web.StreamResponse:
        """``/ws``: hello (HMAC), welcome, then frames and status."""
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                msg = await ws.receive()
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
            return ws
        found = await self._check_hello(msg)
        if found is None:
            self.refused += 1
            await ws.close(code=CLOSE_FORBIDDEN, message=b"forbidden")
            return ws
        runtime, key_id, host = found
        await ws.send_json(runtime.welcome("welcome"))
        await self._serve(ws, runtime, key_id, request, status=True, host=host)
        return ws

    async def _check_hello(self, msg: Any) -> tuple[NetworkRuntime, int, str] | None:
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            hello = json.loads(msg.data)
            network_hex = str(hello["network"])
            key_id = int(hello["key_id"])
            when = int(hello["time"])
            nonce = str(hello["nonce"])
            mac = str(hello["mac"])
            network_id = bytes.fromhex(network_hex)
            host = host_name(hello.get("host"))  # optional: the name the port is shown with
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if host is None:
            return None
        now = time.time()
        if hello.get("op") != "hello" or len(network_id) != 16 or len(nonce) > 64:
            return None
        if abs(now - when / 1000) > HELLO_SKEW:
            return None
        found = await self._runtime_and_key(network_id, key_id)
        if found is None:
            return None
        runtime, key = found
        auth_key = PacketKey(key.secret, key_id).auth_key
        expected = hello_mac(auth_key, network_hex, key_id, when, nonce)
        if not hmac.compare_digest(expected, mac.lower()):
            return None
        self._nonces = {n: t for n, t in self._nonces.items() if now - t < 2 * HELLO_SKEW}
        if nonce in self._nonces:  # a replayed hello
            return None
        self._nonces[nonce] = now
        return runtime, key_id, host

    def _forbidden(self) -> web.Response:
        self.refused += 1
        return web.Response(status=403, text="forbidden\n")

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        runtime: NetworkRuntime,
        key_id: int,
        request: web.Request,
        *,
        status: bool,
        host: str = "",
    ) -> None:
        peer = request.remote or "?"
        port = WebSocketPort(f"ws:{peer}:{id(ws) & 0xFFFF:04x}/k{key_id}", ws, key_id, time.time())
        port.host = host
        key = ("ws", id(port))
        runtime.add_port(key, port)
        self.daemon.handle_events()
        tasks = [asyncio.ensure_future(port.pump())]
        if status:
            tasks.append(asyncio.ensure_future(self._status(ws, runtime, port)))
        reader = asyncio.ensure_future(self._read(ws, port, runtime))
        revoked = asyncio.ensure_future(port.revoked.wait())
        tasks += [reader, revoked]
        try:
            await asyncio.wait((reader, revoked), return_when=asyncio.FIRST_COMPLETED)
            if port.revoked.is_set():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await ws.close(code=CLOSE_FORBIDDEN, message=b"key revoked")
        finally:
            runtime.remove_port(key)
            self.daemon.handle_events()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @staticmethod
    async def _read(
        ws: web.WebSocketResponse, port: WebSocketPort, runtime: NetworkRuntime
    ) -> None:
        """Frames from the client into the switch, until the socket closes."""
        from_local = runtime.switch.from_local
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                frame = msg.data
                if ETH_MIN <= len(frame) <= MAX_FRAME:
                    port.last_seen = time.time()
                    from_local(port, frame)
                else:
                    port.drops += 1
            elif msg.type == WSMsgType.ERROR:
                return

    async def _status(
        self, ws: web.WebSocketResponse, runtime: NetworkRuntime, port: WebSocketPort
    ) -> None:
        while not ws.closed:
            state = runtime.state
            members = (
                [{"node_id": m.node_id, "endpoints": m.endpoints} for m in state.members.values()]
                if state is not None
                else []
            )
            await ws.send_json(
                {
                    "op": "status",
                    "port": port.name,
                    "ports": [p.counters() for p in runtime.switch.ports.values()],
                    "members": members,
                }
            )
            await asyncio.sleep(1.0)
