"""The node's ``/mio`` endpoint: programs without a TCP/IP stack join a network (docs/mio.md).

Each WebSocket on ``/mio`` is one bus session: the same hello as ``/ws`` (an HMAC proving the
access key; the secret never crosses the wire), then a text welcome with the network's settings,
the session's addresses and its limits, then binary bus messages both ways. The node runs a
:class:`~atenet.mio.session.Session` (our sans-I/O stack) for it as one switch port with its own
random MAC. This module only moves bytes: frames from the switch and bus messages from the
WebSocket go into the session, its frames go to the switch and its messages to the WebSocket,
and a timer wakes it at ``poll_at``.

Why frames from the switch are queued, not handed straight to the session: the switch delivers
synchronously, so one session's frame would otherwise run another session's stack inside the
first one's poll (deep re-entry); a bounded queue drained by ``call_soon`` keeps each session's
work in its own turn of the loop, and a flood only fills (and drops from) its own queue.

The session ends when the WebSocket closes (every connection is reset, the port removed), when
the access key is revoked (close code 4403), or when the program sends too many malformed
messages (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter, deque
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from atenet.addressing import ipv4_for, ipv6_for
from atenet.mio import bus
from atenet.mio.session import Limits, Session
from atenet.node.schema import WS_HELLO, SchemaError, parse
from atenet.node.websocket import track
from atenet.offload import VNET_HDR_LEN, is_offloaded
from atenet.switch.core import Port

if TYPE_CHECKING:
    from atenet.node.core import NetworkRuntime
    from atenet.node.daemon import NodeDaemon
    from atenet.node.guard import HttpGuard
    from atenet.node.websocket import WebSocketPorts

log = logging.getLogger(__name__)

FRAME_QUEUE = 2048
"""Frames from the switch waiting for the session's next turn before new ones are dropped."""

MAX_SESSIONS = 256
"""Concurrent mio sessions per node (each one is a stack: the node refuses more with 1013)."""

DHCP_WAIT = 8.0
"""Seconds a new session waits for its DHCP lease before taking the hashed static address."""

HELLO_TIMEOUT = 10.0
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_MESSAGE = WSCloseCode.POLICY_VIOLATION
CLOSE_BUSY = WSCloseCode.TRY_AGAIN_LATER


class MioPort(Port):
    """The switch port of one mio session: frames wait in a bounded queue for the session.

    The port takes offloads (``offload``): a kernel host's GRO super-frames and our stack's TSO
    super-segments cross the switch whole, so the stack pays its per-packet Python cost per
    64 KB instead of per 1.4 KB. Each queued item says whether it is a packet (virtio-net
    header + frame) or a plain frame.
    """

    __slots__ = ("kick", "queue", "revoked")

    def __init__(self, name: str, key_id: int, now: float, offload: bool = True) -> None:
        super().__init__(name, "mio", now, key_id)
        self.offload = offload
        self.queue: deque[tuple[bytes, bool]] = deque()
        self.kick: Any = lambda: None
        self.revoked = asyncio.Event()

    def deliver(self, frame: bytes) -> None:
        self._queue(frame, False, len(frame))

    def deliver_packet(self, packet: bytes) -> None:
        self._queue(packet, True, len(packet) - VNET_HDR_LEN)

    def _queue(self, data: bytes, packet: bool, size: int) -> None:
        if len(self.queue) >= FRAME_QUEUE:
            self.drops += 1
            return
        self.queue.append((data, packet))
        self.frames_out += 1
        self.bytes_out += size
        if len(self.queue) == 1:
            self.kick()

    def close(self) -> None:
        """Revoked: the session's handler ends it with code 4403."""
        self.revoked.set()


class _Driver:
    """Runs one session: input in, poll, output out, timer at poll_at."""

    def __init__(
        self, session: Session, port: MioPort, runtime: NetworkRuntime, ws: web.WebSocketResponse
    ) -> None:
        self.session = session
        self.port = port
        self.runtime = runtime
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.out: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = False
        self.ended = asyncio.Event()
        """Set when the session must end (it failed: see ``Session.failed``)."""
        self.internal_error = False
        port.kick = self.kick

    def kick(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        try:
            self._run()
        except Exception:  # a bug of ours, not the program's input: end this session only
            log.exception("mio: session failed")
            self.session.failed = self.session.failed or "internal error"
            self.internal_error = True
        if self.session.failed is not None:
            self.ended.set()

    def _run(self) -> None:
        now = time.monotonic()
        session, port = self.session, self.port
        queue = port.queue
        while queue:
            data, packet = queue.popleft()
            if packet:
                session.packet_in(data, now)
            else:
                session.frame_in(data, now)
        frames, messages = session.poll(now)
        if frames:
            port.last_seen = time.time()
            self.send(frames)
        if messages:
            self.out.extend(messages)
            self.wake.set()
        at = session.poll_at()
        if at is not None and at <= now:
            self.kick()
        elif at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = None if at is None else self.loop.call_later(at - now, self._fire)

    def send(self, frames: list[bytes]) -> None:
        """The session's output into the switch: with ``tso`` each item is a virtio-net packet;
        one that needs no offload work (an ARP, an ACK) goes as its plain frame, so ports
        without offloads and the overlay get it without a segmenting pass."""
        switch, port = self.runtime.switch, self.port
        if not self.session.tso:
            for frame in frames:
                switch.from_local(port, frame)
            return
        for packet in frames:
            if is_offloaded(packet):
                switch.packet_from_local(port, packet)
            else:
                switch.from_local(port, packet[VNET_HDR_LEN:])

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.run()

    async def write(self) -> None:
        """Bus messages to the program, in order; what is written is reported to the session
        (so a program that does not read its WebSocket stops the session reading TCP)."""
        out, ws, session = self.out, self.ws, self.session
        while not ws.closed:
            await self.wake.wait()
            self.wake.clear()
            while out:
                raw = out.popleft()
                await ws.send_bytes(raw)
                session.written(len(raw))
            at = session.poll_at()  # reading held back for the WebSocket may go on now
            if at is not None and at <= time.monotonic():
                self.kick()

    def stop(self) -> list[bytes]:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        return self.session.close(time.monotonic())


class MioSessions:
    """The node's ``/mio`` endpoint and its counters."""

    def __init__(
        self,
        daemon: NodeDaemon,
        ports: WebSocketPorts,
        heartbeat: float = 20.0,
        guard: HttpGuard | None = None,
        limits: Limits | None = None,
        max_sessions: int = MAX_SESSIONS,
        tso: bool = True,
    ) -> None:
        self.daemon = daemon
        self.tso = tso
        """Sessions' ports take offloads (TSO out, GRO super-frames in); False: plain frames."""
        self.ws_ports = ports  # the /ws endpoint: its hello check and nonce memory are shared
        self.heartbeat = heartbeat
        self.guard = guard
        self.limits = limits or Limits()
        self.max_sessions = max_sessions
        self.sessions: dict[int, Session] = {}
        self.ports: dict[int, MioPort] = {}  # the switch port of each session, for status
        self.counts: Counter[str] = Counter()
        self._closed_totals: Counter[str] = Counter()  # counters of sessions that ended

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/mio", self.handle)

    def counters(self) -> dict[str, Any]:
        """For /api/status and /metrics: sessions, refusals, and the sessions' own counters."""
        totals = Counter(self._closed_totals)
        listed = []
        for key, session in self.sessions.items():
            totals.update(session.counters)
            totals.update(_offload_counters(session))
            port = self.ports.get(key)
            listed.append(
                {
                    "port": port.name if port is not None else "",
                    "address": session.settings()["address"],
                    "sockets": session.sockets,
                    "buffered": session.buffered,
                    "unsent": session.unsent,
                }
            )
        return {
            "sessions": len(self.sessions),
            "sockets": sum(s["sockets"] for s in listed),
            "buffered": sum(s["buffered"] for s in listed),
            "events": dict(self.counts),
            "counters": dict(totals),
            "list": listed,  # at most max_sessions entries
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=bus.MAX_DATA + 1024)
        await ws.prepare(request)
        track(request, ws)
        try:
            await self._session(ws, request)
        except SchemaError as exc:
            self.counts["bad_hello"] += 1
            log.debug("mio: bad hello from %s: %s", request.remote, exc)
            await _close(ws, CLOSE_BAD_MESSAGE, b"bad message")
        except Exception as exc:  # a program's input must never leave a traceback
            self.counts["handler_error"] += 1
            log.debug("mio: closing session from %s: %r", request.remote, exc, exc_info=True)
            await _close(ws, CLOSE_BAD_MESSAGE, b"bad message")
        return ws

    async def _session(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                msg = await ws.receive()
        except TimeoutError:
            self.counts["no_hello"] += 1
            await _close(ws, CLOSE_BAD_MESSAGE, b"no hello")
            return
        if msg.type != WSMsgType.TEXT:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            raise SchemaError("", "the hello must be a text message")
        hello = parse(msg.data, WS_HELLO)
        found = await self.ws_ports._check_hello(hello)
        if found is None:
            self.counts["refused"] += 1
            await _close(ws, CLOSE_FORBIDDEN, b"forbidden")
            return
        if len(self.sessions) >= self.max_sessions:
            self.counts["busy"] += 1
            await _close(ws, CLOSE_BUSY, b"too many mio sessions on this node")
            return
        runtime, key_id = found
        mac = bytes([(os.urandom(1)[0] & 0xFC) | 0x02]) + os.urandom(5)
        session = self._new_session(runtime, mac)
        peer = request.remote or "?"
        name = f"mio:{peer}:{id(ws) & 0xFFFF:04x}/k{key_id}"
        port = MioPort(name, key_id, time.time(), offload=self.tso)
        port.host = hello.get("host", "")
        key = ("mio", id(port))
        driver = _Driver(session, port, runtime, ws)
        runtime.add_port(key, port)
        self.daemon.handle_events()
        if self.guard is not None:
            self.guard.authenticated(request)
        self.sessions[id(session)] = session
        self.ports[id(session)] = port
        self.counts["opened"] += 1
        tasks: list[asyncio.Future[Any]] = []
        try:
            driver.kick()
            if session.iface.dhcp is not None:
                await self._wait_for_lease(session, runtime, mac)
            welcome = runtime.welcome("welcome") | session.settings()
            await ws.send_str(json.dumps(welcome))
            tasks = [
                asyncio.ensure_future(driver.write()),
                asyncio.ensure_future(self._read(ws, session, driver)),
                asyncio.ensure_future(port.revoked.wait()),
                asyncio.ensure_future(driver.ended.wait()),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if port.revoked.is_set():
                self.counts["revoked"] += 1
                await _close(ws, CLOSE_FORBIDDEN, b"key revoked")
            elif session.failed is not None:
                self.counts["failed"] += 1
                log.info("mio: ending a session from %s: %s", peer, session.failed)
                code = WSCloseCode.INTERNAL_ERROR if driver.internal_error else CLOSE_BAD_MESSAGE
                await _close(ws, code, session.failed.encode()[:120])
        finally:
            driver.send(driver.stop())  # the resets of every open connection
            runtime.remove_port(key)
            self.daemon.handle_events()
            self.sessions.pop(id(session), None)
            self.ports.pop(id(session), None)
            self._closed_totals.update(session.counters)
            self._closed_totals.update(_offload_counters(session))
            self.counts["closed"] += 1
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await _close(ws, WSCloseCode.OK, b"")

    def _new_session(self, runtime: NetworkRuntime, mac: bytes) -> Session:
        s = runtime.state.settings if runtime.state is not None else None
        gw = runtime.gateway
        ipv6 = (
            IPv6Interface(ipv6_for(runtime.network_id, mac, s.cidr6))
            if s is not None and s.cidr6
            else None
        )
        ipv4: IPv4Interface | None = None
        if s is not None and s.cidr and runtime.dhcp is None:
            ipv4 = ipv4_for(runtime.network_id, mac, s.cidr)
        return Session(
            mac,
            s.mtu if s is not None and s.mtu else 1500,
            time.monotonic(),
            ipv4=ipv4,
            gateway4=gw.ipv4 if gw is not None and ipv4 is not None else None,
            ipv6=ipv6,
            gateway6=gw.ipv6 if gw is not None else None,
            dhcp=runtime.dhcp is not None,
            dns=_servers(s.dns) if s is not None else [],
            limits=self.limits,
            tso=self.tso,
        )

    async def _wait_for_lease(self, session: Session, runtime: NetworkRuntime, mac: bytes) -> None:
        """Up to :data:`DHCP_WAIT` seconds for the lease; else the hashed static address (the
        one the network's DHCP server would offer first)."""
        deadline = time.monotonic() + DHCP_WAIT
        while session.iface.ipv4 is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        dhcp = session.iface.dhcp
        lease = dhcp.lease if dhcp is not None else None
        if lease is not None:  # the servers the network's DHCP server names come first
            session.dns = [*lease.dns, *(a for a in session.dns if a not in lease.dns)]
        if session.iface.ipv4 is None:
            self.counts["dhcp_timeout"] += 1
            s = runtime.state.settings if runtime.state is not None else None
            if s is not None and s.cidr:
                session.iface.dhcp = None
                gw = runtime.gateway
                session.iface.set_ipv4(
                    ipv4_for(runtime.network_id, mac, s.cidr), gw.ipv4 if gw else None
                )

    async def _read(self, ws: web.WebSocketResponse, session: Session, driver: _Driver) -> None:
        """Bus messages from the program into the session, until the socket closes."""
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                session.bus_in(msg.data, time.monotonic())
                if session.failed is not None:
                    return
                driver.kick()
            elif msg.type == WSMsgType.TEXT:
                session.counters["bad_messages"] += 1  # no text message after the hello
            elif msg.type == WSMsgType.ERROR:
                return


def _offload_counters(session: Session) -> dict[str, int]:
    """How much of a session's TCP crossed its port as super-frames (operators, tests): TSO
    super-segments sent, offloaded packets (GRO super-frames) taken whole."""
    return {
        "tso_segments_out": session.tcp.counters["tso_segments_out"],
        "rx_offloaded": session.iface.counters["rx_offloaded"],
    }


def _servers(names: tuple[str, ...] | list[str]) -> list[IPv4Address | IPv6Address]:
    """The network's DNS servers that are addresses (a name cannot be asked for itself)."""
    out: list[IPv4Address | IPv6Address] = []
    for name in names:
        with contextlib.suppress(ValueError):
            out.append(ip_address(name))
    return out


async def _close(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, message=message)
