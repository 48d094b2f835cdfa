"""The HTTP port's defences: connection caps, a request-head timeout, the fd limit, and who is
an operator.

The HTTP port is meant to be reachable by anyone with a link to the page, so it must hold up
against people who only open sockets: a connection that never finishes its request head, or
a thousand of them, must not pin file descriptors forever (issue 9, item 6). And what it shows
must depend on who asks: a network's page needs little, an operator may see everything
(item 8).

* Every accepted TCP connection counts as *pending* (unauthenticated) until a WebSocket port is
  established on it (a valid ``/net/<token>`` or a ``/ws`` hello with a good MAC). Pending
  connections are capped per source address (``per_address``; an IPv6 source counts by its
  /64; loopback sources are exempt,
  they are local tools or a reverse proxy that speaks for many clients) and overall
  (``total``). A connection over a cap is closed at once and counted.
* A connection whose first request head is not complete after ``head_timeout`` seconds is
  closed and counted (``head_timeout``); idle keep-alive connections are closed by aiohttp after
  ``IDLE_TIMEOUT`` (the ``keepalive_timeout`` the runner is given).
* The soft RLIMIT_NOFILE is raised to the hard limit at start (:func:`raise_fd_limit`).

Defaults are in docs/limits.md.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import resource
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
"""Seconds a new connection has to send a complete request head."""

IDLE_TIMEOUT = 15.0
"""Seconds an idle keep-alive connection (or one stuck in a later request head) stays open."""

PENDING_PER_ADDRESS = 64
"""Unauthenticated connections one (non-loopback) source address may hold open."""

PENDING_TOTAL = 2048
"""Unauthenticated connections from all sources together."""

FD_FALLBACK = 1 << 20
"""The soft fd limit asked for when the hard limit is unlimited."""

OPERATOR_TOKEN_FILE = "operator-token"
"""Name of the node's operator credential in its config dir (mode 0600)."""

FORWARDED_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
"""Headers a reverse proxy adds: a loopback request carrying one speaks for someone else."""


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (an IP as text) is 127.0.0.0/8, ::1 or an IPv4-mapped loopback."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def source_key(address: str) -> str:
    """What the per-address cap counts: an IPv4 address, or the /64 of an IPv6 address (one
    host usually holds a whole /64, so counting /128s would be no cap at all)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one TCP connection: admits it (or closes it at once),
    times out its request head, and releases its pending slot when it closes."""

    def __init__(self, guard: HttpGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.address = ""
        self.source = ""
        self.pending = False
        self.seen_request = False
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.source = source_key(self.address)
        if not self.guard.admit(self):
            transport.abort()
            return
        self.transport = transport
        self.guard.track(self)
        self._timer = asyncio.get_running_loop().call_later(
            self.guard.head_timeout, self._head_timeout
        )
        self.inner.connection_made(transport)

    def _head_timeout(self) -> None:
        self._timer = None
        if not self.seen_request and self.transport is not None:
            self.guard.drops["head_timeout"] += 1
            self.transport.abort()

    def request_started(self) -> None:
        self.seen_request = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused in connection_made: aiohttp never saw it
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.release(self)
        self.transport = None
        self.inner.connection_lost(exc)


class HttpGuard:
    """Counts and caps the HTTP port's connections (see the module doc)."""

    def __init__(
        self,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        per_address: int = PENDING_PER_ADDRESS,
        total: int = PENDING_TOTAL,
    ) -> None:
        self.head_timeout = head_timeout
        self.per_address = per_address
        self.total = total
        self.pending_by_address: Counter[str] = Counter()
        self.pending = 0
        self.open = 0
        self.drops: Counter[str] = Counter()
        self._by_transport: dict[int, Connection] = {}

    def protocol(self, inner: asyncio.Protocol) -> Connection:
        return Connection(self, inner)

    def admit(self, conn: Connection) -> bool:
        if self.pending >= self.total:
            self.drops["pending_total"] += 1
            return False
        source = conn.source
        if not is_loopback(conn.address) and self.pending_by_address[source] >= self.per_address:
            self.drops["pending_per_address"] += 1
            return False
        conn.pending = True
        self.pending += 1
        self.pending_by_address[source] += 1
        self.open += 1
        return True

    def release(self, conn: Connection) -> None:
        self.open -= 1
        self._unpend(conn)
        if conn.transport is not None:
            self._by_transport.pop(id(conn.transport), None)

    def _unpend(self, conn: Connection) -> None:
        if conn.pending:
            conn.pending = False
            self.pending -= 1
            left = self.pending_by_address[conn.source] - 1
            if left > 0:
                self.pending_by_address[conn.source] = left
            else:
                del self.pending_by_address[conn.source]

    def track(self, conn: Connection) -> None:
        if conn.transport is not None:
            self._by_transport[id(conn.transport)] = conn

    def connection_of(self, request: web.BaseRequest) -> Connection | None:
        transport = request.transport
        return self._by_transport.get(id(transport)) if transport is not None else None

    def authenticated(self, request: web.BaseRequest) -> None:
        """The connection now carries a WebSocket port: it no longer counts as pending."""
        conn = self.connection_of(request)
        if conn is not None:
            self._unpend(conn)

    def counters(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "pending": self.pending,
            "pending_per_address_cap": self.per_address,
            "pending_total_cap": self.total,
            "head_timeout": self.head_timeout,
            "drops": {
                reason: self.drops.get(reason, 0)
                for reason in ("pending_per_address", "pending_total", "head_timeout")
            },
        }

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Marks the connection's request head as complete (stops its head timer)."""
        conn = self.connection_of(request)
        if conn is not None:
            conn.request_started()
        return await handler(request)


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every accepted connection wrapped in a :class:`Connection`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: HttpGuard,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self.guard

        self._server = await loop.create_server(
            lambda: guard.protocol(server()),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (every socket is an fd);
    returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def operator_token(config: Path) -> str:
    """The node's operator credential: read from ``config/operator-token``, created (0600)
    with 32 random bytes on first start. Delete the file and restart to rotate it."""
    from atenet.paths import write_private

    path = config / OPERATOR_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_private(path, token.encode() + b"\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return token


class OperatorAuth:
    """Who may see operator data: loopback requests that no proxy forwarded, or requests with
    ``Authorization: Bearer <the node's operator token>``."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def allowed(self, request: web.BaseRequest) -> bool:
        header = request.headers.get("Authorization", "")
        if self.token and header.startswith("Bearer "):
            given = header[len("Bearer ") :].strip()
            if hmac.compare_digest(given.encode(), self.token.encode()):
                return True
        if any(name in request.headers for name in FORWARDED_HEADERS):
            return False
        return is_loopback(request.remote)
