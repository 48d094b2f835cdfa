"""WebSocket switch ports: browsers, emulators and programs join a network over HTTP.

Two endpoints on the node's HTTP server (docs/websocket.md):

* ``/net/<token>`` — the raw-frame relay protocol that v86, jor1k and websockproxy clients speak:
  every binary message is exactly one Ethernet frame, both ways. The access token is in the URL
  path because an emulator can only be given a URL; use wss (``--tls-cert``) so it stays secret.
* ``/ws`` — the web page's endpoint: the first message is a hello proving possession of the
  access key with an HMAC (the secret never crosses the wire), answered by a welcome with the
  network's settings; then binary frames, plus a status message every second.

Every text message is checked against its spec in :mod:`atenet.node.schema`; a bad one is counted
(``bad_message``) and the connection closed with 1008 (policy violation) — never a traceback. Once
a port is established the connection stops counting as pending for the HTTP guard's caps. Status
pushes are the public view of the page's own network: no client's underlay address (ports are
named by a per-node pseudonym), no store URL.

A WebSocket port never stalls the switch: frames to it go through a bounded queue with random
early drop — as the queue fills, each new frame is dropped with a probability rising linearly
from 0 (at ``red_min``) to 1 (at ``limit``) — and drops are counted on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import time
import weakref
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from atenet.node.schema import WS_HELLO, WS_MESSAGE, SchemaError, parse
from atenet.overlay.seal import PacketKey
from atenet.overlay.token import AccessToken, hello_mac
from atenet.switch.core import Port

OPEN_WEBSOCKETS = web.AppKey("open_websockets", weakref.WeakSet)
"""Every WebSocket the app has open (``/ws``, ``/net/<token>``, ``/mio``): closed with 1001 on
shutdown, because aiohttp otherwise waits for their handlers until its shutdown timeout."""


def track(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Register a prepared WebSocket so the app's shutdown closes it (see OPEN_WEBSOCKETS)."""
    open_sockets = request.app.get(OPEN_WEBSOCKETS)
    if open_sockets is not None:
        open_sockets.add(ws)


async def close_websockets(app: web.Application) -> None:
    """``on_shutdown``: tell every connected client the node is going away (1001)."""
    closing = [
        ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")
        for ws in list(app.get(OPEN_WEBSOCKETS, ()))
    ]
    if closing:  # all at once: a client that never answers the close costs 2 s, not 2 s each
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 2)


if TYPE_CHECKING:
    from atenet.node.core import NetworkRuntime
    from atenet.node.daemon import NodeDaemon
    from atenet.node.guard import HttpGuard

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

CLOSE_BAD_MESSAGE = WSCloseCode.POLICY_VIOLATION
"""WebSocket close code (1008) for a message that does not match its spec."""

PRIVATE_PORT_KEYS = frozenset({"addr", "address", "endpoint", "remote", "peer", "underlay"})
"""Port counter keys that could carry a client's underlay address: never sent to a page."""

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


class WebSocketPorts:
    """The node's WebSocket endpoints."""

    def __init__(
        self, daemon: NodeDaemon, heartbeat: float = 20.0, guard: HttpGuard | None = None
    ) -> None:
        self.daemon = daemon
        self.heartbeat = heartbeat
        self.guard = guard
        self._nonces: dict[str, float] = {}
        self.drops: Counter[str] = Counter()
        # Public port names are keyed pseudonyms: stable while the node runs, and they say
        # nothing about the client's underlay address that the operator's port name holds.
        self._salt = os.urandom(16)

    @property
    def refused(self) -> int:
        """Connections refused for a bad token or hello."""
        return self.drops["refused"]

    def counters(self) -> dict[str, Any]:
        """For /api/status and /metrics."""
        reasons = ("refused", "bad_message", "no_hello", "handler_error")
        return {"drops": {reason: self.drops.get(reason, 0) for reason in reasons}}

    def public_name(self, port: Port) -> str:
        """The name the page sees for ``port``: its kind, a pseudonym and its key id."""
        digest = hmac.new(self._salt, port.name.encode(), hashlib.sha256).hexdigest()[:10]
        return f"{port.kind}:{digest}/k{port.key_id}"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/net/{token}", self.raw)
        app[OPEN_WEBSOCKETS] = weakref.WeakSet()
        app.on_shutdown.append(close_websockets)
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
        except Exception:  # whatever a malformed token raises, it is only a refusal
            return self._forbidden()
        found = await self._runtime_and_key(token.network_id, token.key_id)
        if found is None or not hmac.compare_digest(found[1].secret, token.secret):
            return self._forbidden()
        runtime, _key = found
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        track(request, ws)
        await self._guarded(ws, request, self._serve(ws, runtime, token.key_id, request,
                                                     status=False))  # fmt: skip
        return ws

    async def page(self, request: web.Request) -> web.StreamResponse:
        """``/ws``: hello (HMAC), welcome, then frames and status."""
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        track(request, ws)
        await self._guarded(ws, request, self._page(ws, request))
        return ws

    async def _guarded(self, ws: web.WebSocketResponse, request: web.Request, work: Any) -> None:
        """Run a connection's handler; whatever a client's input makes it raise is counted and
        closes the connection with 1008, as one debug line (never a traceback in the log)."""
        try:
            await work
        except SchemaError as exc:
            self.drops["bad_message"] += 1
            log.debug("bad message on %s from %s: %s", request.path_qs[:64], request.remote, exc)
            await self._close(ws, CLOSE_BAD_MESSAGE, b"bad message")
        except Exception as exc:
            self.drops["handler_error"] += 1
            log.debug("closing %s from %s: %r", request.path_qs[:64], request.remote, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
            await self._close(ws, CLOSE_BAD_MESSAGE, b"bad message")

    @staticmethod
    async def _close(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=message)

    async def _page(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                msg = await ws.receive()
        except TimeoutError:
            self.drops["no_hello"] += 1
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
            return
        if msg.type != WSMsgType.TEXT:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            raise SchemaError("", "the hello must be a text message")
        hello = parse(msg.data, WS_HELLO)
        found = await self._check_hello(hello)
        if found is None:
            self.drops["refused"] += 1
            await ws.close(code=CLOSE_FORBIDDEN, message=b"forbidden")
            return
        runtime, key_id = found
        await ws.send_json(runtime.welcome("welcome"))
        # The host name (optional, schema-checked) is what the port is shown with.
        await self._serve(ws, runtime, key_id, request, status=True, host=hello.get("host", ""))

    async def _check_hello(self, hello: dict[str, Any]) -> tuple[NetworkRuntime, int] | None:
        """A hello that passed :data:`~atenet.node.schema.WS_HELLO`: is it fresh, for a usable
        key, with the right MAC and a nonce not seen before?"""
        network_hex = hello["network"].lower()
        network_id = bytes.fromhex(network_hex)
        key_id = hello["key_id"]
        when = hello["time"]
        nonce = hello["nonce"]
        mac = hello["mac"]
        now = time.time()
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
        return runtime, key_id

    def _forbidden(self) -> web.Response:
        self.drops["refused"] += 1
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
        if self.guard is not None:
            self.guard.authenticated(request)  # a port now: no longer a pending connection
        tasks = [asyncio.ensure_future(port.pump())]
        if status:
            tasks.append(asyncio.ensure_future(self._status(ws, runtime, port)))
        reader = asyncio.ensure_future(self._read(ws, port, runtime, self.drops))
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
        ws: web.WebSocketResponse,
        port: WebSocketPort,
        runtime: NetworkRuntime,
        drops: Counter[str],
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
            elif msg.type == WSMsgType.TEXT:
                # No text message is accepted after the hello yet: checked, counted, ignored.
                try:
                    parse(msg.data, WS_MESSAGE)
                except SchemaError:
                    drops["bad_message"] += 1
            elif msg.type == WSMsgType.ERROR:
                return

    async def _status(
        self, ws: web.WebSocketResponse, runtime: NetworkRuntime, port: WebSocketPort
    ) -> None:
        while not ws.closed:
            self.daemon.sync_engine()  # the ports' counters the node engine holds
            await ws.send_json(self.public_status(runtime, port))
            await asyncio.sleep(1.0)

    def public_status(self, runtime: NetworkRuntime, port: Port) -> dict[str, Any]:
        """What a page may see: its own network's member nodes (their endpoints are public,
        every token carries them) and its ports under pseudonyms, without any client's
        underlay address."""
        state = runtime.state
        members = (
            [{"node_id": m.node_id, "endpoints": m.endpoints} for m in state.members.values()]
            if state is not None
            else []
        )
        ports = []
        for p in runtime.switch.ports.values():
            counters = {k: v for k, v in p.counters().items() if k not in PRIVATE_PORT_KEYS}
            counters["name"] = self.public_name(p)
            ports.append(counters)
        return {
            "op": "status",
            "port": self.public_name(port),
            "ports": ports,
            "fdb": len(runtime.switch.fdb),  # the MAC table's size (docs/learning.md)
            "members": members,
        }
