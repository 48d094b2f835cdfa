"""The mio client library: a Python program joins a network as a host, without root.

One :class:`Network` is one bus session (one switch port, one address on the LAN). It hands out
asyncio's own objects — ``StreamReader``/``StreamWriter`` pairs, servers, datagram endpoints —
so code written for ``asyncio.open_connection`` works unchanged::

    async with await mio.connect(url, token) as net:
        reader, writer = await net.open_connection("10.0.0.5", 22)
        server = await net.start_server(handler, port=8000)
        udp = await net.open_datagram()
        rtt = await net.ping("10.0.0.5")

Flow control follows the bus (docs/mio.md): the node may send a socket at most the credit this
side granted; a reader that stops reading pauses the transport, which stops granting, which
closes the TCP window at the node. Writes beyond the node's credit wait in the transport's
buffer and pause the protocol's writing (so ``drain()`` waits) past its high-water mark.
Failures raise the builtin exceptions Python's own sockets raise (``ConnectionRefusedError``,
``TimeoutError``, ``OSError`` with the errno).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errnos
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface
from typing import Any

import aiohttp

from atenet.errors import AtenetError, DecodeError
from atenet.mio import bus
from atenet.mio.bus import Endpoint
from atenet.overlay.token import AccessToken, hello

__all__ = ["MioError", "Network", "connect"]

log = logging.getLogger(__name__)

WINDOW = 256 * 1024
"""Bytes this side lets the node send one socket before it grants more (its receive window)."""

WRITE_HIGH = 256 * 1024
"""Buffered bytes beyond the node's credit at which the protocol is told to pause writing."""

DATAGRAM_QUEUE = 256
"""Received datagrams kept per UDP socket before new ones are dropped (and counted)."""

HELLO_TIMEOUT = 15.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class MioError(AtenetError):
    """The session could not be set up (refused key, wrong URL, node without mio)."""


def _os_error(code: int, reason: str) -> OSError:
    """The builtin exception Python raises for ``code`` (ConnectionRefusedError for 111 …)."""
    text = reason or os.strerror(code)
    return OSError(code, text)  # OSError's constructor picks the subclass for the errno


def _endpoint(host: str | IPv4Address | IPv6Address, port: int) -> Endpoint:
    try:
        return Endpoint(ip_address(host) if isinstance(host, str) else host, port)
    except ValueError:
        raise OSError(errnos.EINVAL, f"{host!r} is not an IP address (use net.resolve)") from None


def _addr(ep: Endpoint) -> tuple[str, int]:
    return ("" if ep.address is None else str(ep.address), ep.port)


class _Transport(asyncio.Transport):
    """One TCP socket of the session as an asyncio transport."""

    def __init__(
        self, net: Network, ident: int, local: Endpoint, remote: Endpoint, credit: int
    ) -> None:
        super().__init__({"sockname": _addr(local), "peername": _addr(remote)})
        self._net = net
        self.id = ident
        self._protocol: asyncio.BaseProtocol | None = None
        self._credit = credit  # bytes the node lets us send
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._eof_wanted = False  # write_eof() called: SHUTDOWN once the buffer is out
        self._eof_sent = False
        self._closing = False
        self._closed = False
        self._writing_paused = False
        self._reading_paused = False
        self._owed = 0  # bytes delivered but not yet credited back to the node
        self._high = WRITE_HIGH
        self._low = WRITE_HIGH // 4

    # -- asyncio.Transport -------------------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closed

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._grant()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_wanted or self._closing:
            raise RuntimeError("cannot write after write_eof() or close()")
        if self._closed or not data:
            return
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self._flush()
        if not self._writing_paused and self._buffered > self._high and self._protocol:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._eof_wanted or self._closed:
            return
        self._eof_wanted = True
        self._flush()

    def close(self) -> None:
        """Orderly close: what is buffered still goes out (as credit allows), then CLOSE."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._eof_wanted = True
        self._flush()

    def abort(self) -> None:
        """Reset the connection at once; buffered data is dropped."""
        if self._closed:
            return
        self._net._send(bus.Close(self.id, abort=True).encode())
        self._finish(None)

    # -- from the session --------------------------------------------------------------------

    def _flush(self) -> None:
        while self._buffer and self._credit > 0 and not self._closed:
            chunk = self._buffer[0]
            n = min(len(chunk), self._credit, bus.MAX_DATA)
            if n < len(chunk):
                self._buffer[0] = chunk[n:]
                chunk = chunk[:n]
            else:
                self._buffer.popleft()
            self._buffered -= n
            self._credit -= n
            self._net._send(bus.data_bytes(self.id, chunk))
        if self._writing_paused and self._buffered <= self._low and self._protocol:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._buffer or self._closed:
            return
        if self._eof_wanted and not self._eof_sent:
            self._eof_sent = True
            self._net._send(bus.Shutdown(self.id).encode())
        if self._closing:
            self._net._send(bus.Close(self.id).encode())
            self._finish(None)

    def _on_credit(self, amount: int) -> None:
        self._credit += amount
        self._flush()

    def _on_data(self, payload: bytes) -> None:
        if self._closed:
            return
        self._owed += len(payload)
        assert isinstance(self._protocol, asyncio.Protocol)
        self._protocol.data_received(payload)
        self._grant()

    def _grant(self) -> None:
        """Give the node back what was consumed, in batches, unless the reader is paused."""
        if not self._reading_paused and self._owed >= self._net.window // 4 and not self._closed:
            self._net._send(bus.credit_bytes(self.id, self._owed))
            self._owed = 0

    def _on_eof(self) -> None:
        if self._protocol is not None and not self._closed:
            assert isinstance(self._protocol, asyncio.Protocol)
            if not self._protocol.eof_received():  # asyncio's rule: False means close
                self.close()

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._buffered = 0
        self._net._forget(self.id)
        if self._protocol is not None:
            self._net._loop.call_soon(self._protocol.connection_lost, exc)


class Server:
    """A listening TCP socket of the session, shaped like ``asyncio.Server``."""

    def __init__(self, net: Network, ident: int, local: Endpoint, handler: Handler) -> None:
        self._net = net
        self.id = ident
        self.address, self.port = _addr(local)
        self._handler = handler
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _on_accept(self, message: bus.Accept) -> None:
        loop = self._net._loop
        reader = asyncio.StreamReader(limit=2**16, loop=loop)

        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            result = self._handler(r, w)
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        protocol = asyncio.StreamReaderProtocol(reader, connected, loop=loop)
        transport = _Transport(self._net, message.conn, message.local, message.remote, 0)
        transport._credit = message.credit
        self._net._sockets[message.conn] = transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        if not self._closed.is_set():
            self._net._send(bus.Close(self.id).encode())
            self._net._forget(self.id)
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Datagram:
    """A UDP socket of the session: ``sendto(data, (host, port))`` and ``await recvfrom()``."""

    def __init__(self, net: Network, ident: int, local: Endpoint) -> None:
        self._net = net
        self.id = ident
        self.address, self.port = _addr(local)
        self._queue: asyncio.Queue[tuple[bytes, tuple[str, int]] | None] = asyncio.Queue(
            DATAGRAM_QUEUE
        )
        self.dropped = 0
        self._closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            raise OSError(errnos.EBADF, "the datagram socket is closed")
        if len(data) > bus.MAX_DATA:
            raise OSError(errnos.EMSGSIZE, f"a datagram of {len(data)} bytes is too long")
        self._net._send(bus.Datagram(self.id, _endpoint(*addr), bytes(data)).encode())

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next reader too
            raise OSError(errnos.EBADF, "the datagram socket is closed")
        return item

    def _on_datagram(self, message: bus.Datagram) -> None:
        try:
            self._queue.put_nowait((message.payload, _addr(message.peer)))
        except asyncio.QueueFull:
            self.dropped += 1

    def _end(self) -> None:
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def close(self) -> None:
        if not self._closed:
            self._net._send(bus.Close(self.id).encode())
            self._net._forget(self.id)
            self._end()

    async def __aenter__(self) -> Datagram:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Network:
    """One mio session: this program's port on the network. Use :func:`connect`."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        welcome: dict[str, Any],
    ) -> None:
        self._http = http
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self.welcome = welcome
        self.name: str = welcome.get("name", "")
        self.mtu: int = int(welcome.get("mtu", 1400))
        iface = welcome.get("address")
        self.interface = ip_interface(iface) if iface else None
        self.address = self.interface.ip if self.interface else None
        gw = welcome.get("gateway")
        self.gateway = ip_address(gw) if gw else None
        self.address6 = ip_address(welcome["address6"]) if welcome.get("address6") else None
        self.window: int = int(welcome.get("window") or WINDOW)
        """What the node may send a socket before this side grants more (the welcome says)."""
        self._next = 1
        self._sockets: dict[int, Any] = {}
        self._waiting: dict[int, asyncio.Future[bus.Message]] = {}
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.bad_messages = 0
        self._tasks = [
            self._loop.create_task(self._read(), name="mio-read"),
            self._loop.create_task(self._write(), name="mio-write"),
        ]

    # -- public API ---------------------------------------------------------------------------

    async def open_connection(
        self,
        host: str | IPv4Address | IPv6Address,
        port: int,
        *,
        limit: int = 2**16,
        timeout: float | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a TCP connection from this session's address, like ``asyncio.open_connection``."""
        ident = self._new_id()
        ms = 0 if timeout is None else max(1, int(timeout * 1000))
        reply = await self._ask(ident, bus.Connect(ident, _endpoint(host, port), 0, ms))
        assert isinstance(reply, bus.Connected)
        reader = asyncio.StreamReader(limit=limit, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport = _Transport(self, ident, reply.local, reply.remote, reply.credit)
        self._sockets[ident] = transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def start_server(
        self, handler: Handler, host: str = "", port: int = 0, *, backlog: int = 128
    ) -> Server:
        """Listen on ``port`` (0: any free one, see ``server.port``) like asyncio.start_server."""
        ident = self._new_id()
        local = Endpoint.of(host, port)
        reply = await self._ask(ident, bus.Listen(ident, local, backlog))
        assert isinstance(reply, bus.Listening)
        server = Server(self, ident, reply.local, handler)
        self._sockets[ident] = server
        return server

    async def open_datagram(self, host: str = "", port: int = 0) -> Datagram:
        """A UDP socket bound to ``port`` (0: any free port)."""
        ident = self._new_id()
        reply = await self._ask(ident, bus.Bind(ident, Endpoint.of(host, port)))
        assert isinstance(reply, bus.Bound)
        sock = Datagram(self, ident, reply.local)
        self._sockets[ident] = sock
        return sock

    async def ping(
        self, host: str | IPv4Address | IPv6Address, *, size: int = 56, timeout: float = 5.0
    ) -> float:
        """One ICMP echo through the network; the round-trip time in seconds."""
        ident = self._new_id()
        address = _endpoint(host, 0).address
        assert address is not None
        reply = await self._ask(ident, bus.Ping(ident, address, size, int(timeout * 1000)))
        assert isinstance(reply, bus.Pong)
        return reply.rtt_us / 1e6

    async def resolve(self, name: str) -> list[IPv4Address | IPv6Address]:
        """The addresses ``name`` has, looked up through the network's DNS servers."""
        ident = self._new_id()
        try:
            reply = await self._ask(ident, bus.Resolve(ident, name))
        except FileNotFoundError:  # ENOENT: what getaddrinfo says for an unknown name
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: name or service not known") from None
        assert isinstance(reply, bus.Resolved)
        return list(reply.addresses)

    async def close(self) -> None:
        """End the session: the node resets every socket and removes the port."""
        if not self._closed.is_set():
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tasks[1], 5)
            await self._ws.close()
            self._shutdown(ConnectionResetError(errnos.ECONNRESET, "the mio session closed"))
        await self._http.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Network:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------------

    def _new_id(self) -> int:
        if self._closed.is_set():
            raise ConnectionResetError(errnos.ECONNRESET, "the mio session is closed")
        ident = self._next
        self._next = 1 if ident >= bus.ACCEPTED_ID_BIT - 1 else ident + 1
        return ident

    def _send(self, raw: bytes) -> None:
        if not self._closed.is_set():
            self._out.put_nowait(raw)

    def _forget(self, ident: int) -> None:
        self._sockets.pop(ident, None)

    async def _ask(self, ident: int, message: bus.Message) -> bus.Message:
        future: asyncio.Future[bus.Message] = self._loop.create_future()
        self._waiting[ident] = future
        self._send(message.encode())
        try:
            reply = await future
        finally:
            self._waiting.pop(ident, None)
        if isinstance(reply, bus.Error):
            if reply.errno == errnos.ETIMEDOUT:
                raise TimeoutError(reply.reason or "timed out")
            raise _os_error(reply.errno, reply.reason)
        return reply

    async def _write(self) -> None:
        while True:
            raw = await self._out.get()
            if raw is None:
                return
            try:
                await self._ws.send_bytes(raw)
            except (ConnectionError, RuntimeError) as exc:
                self._shutdown(ConnectionResetError(errnos.ECONNRESET, f"mio session lost: {exc}"))
                return

    async def _read(self) -> None:
        reason = "the node closed the mio session"
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        self._dispatch(bus.decode(msg.data))
                    except DecodeError as exc:
                        self.bad_messages += 1
                        log.warning("mio: bad bus message from the node: %s", exc)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"mio session failed: {self._ws.exception()}"
                    break
        finally:
            code = self._ws.close_code
            if code not in (None, 1000):
                reason = f"{reason} (code {code})"
            self._shutdown(ConnectionResetError(errnos.ECONNRESET, reason))

    def _dispatch(self, message: bus.Message) -> None:
        sock = self._sockets.get(message.id)
        if isinstance(message, bus.Data):
            if isinstance(sock, _Transport):
                sock._on_data(message.payload)
        elif isinstance(message, bus.Credit):
            if isinstance(sock, _Transport):
                sock._on_credit(message.amount)
        elif isinstance(message, bus.Datagram):
            if isinstance(sock, Datagram):
                sock._on_datagram(message)
        elif isinstance(message, bus.Shutdown):
            if isinstance(sock, _Transport):
                sock._on_eof()
        elif isinstance(message, bus.Close):
            self._on_close(sock, message)
        elif isinstance(message, bus.Accept):
            if isinstance(sock, Server):
                sock._on_accept(message)
            else:  # the listener is gone: refuse the connection
                self._send(bus.Close(message.conn, abort=True).encode())
        else:
            future = self._waiting.get(message.id)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                self.bad_messages += 1

    def _on_close(self, sock: Any, message: bus.Close) -> None:
        if isinstance(sock, _Transport):
            exc = _os_error(message.errno, message.reason) if message.errno else None
            sock._finish(exc)
        elif isinstance(sock, Datagram):
            self._forget(sock.id)
            sock._end()
        elif isinstance(sock, Server):
            self._forget(sock.id)
            sock._closed.set()

    def _shutdown(self, exc: Exception) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        for sock in list(self._sockets.values()):
            if isinstance(sock, _Transport):
                sock._finish(exc)
            elif isinstance(sock, Datagram):
                sock._end()
            elif isinstance(sock, Server):
                sock._closed.set()
        self._sockets.clear()
        self._out.put_nowait(None)


async def connect(url: str, token: str | AccessToken, *, host: str = "") -> Network:
    """Open a mio session: ``url`` is the node's HTTP(S) base URL or its ``/mio`` URL.

    Raises :class:`MioError` with a one-line reason when the node refuses the key or has no
    mio endpoint, and ``OSError`` when the node cannot be reached.
    """
    tok = token if isinstance(token, AccessToken) else AccessToken.decode(token)
    target = url.rstrip("/")
    if target.startswith("http"):
        target = "ws" + target[4:]
    if not target.endswith("/mio"):
        target += "/mio"
    http = aiohttp.ClientSession()
    try:
        ws = await http.ws_connect(target, heartbeat=20, max_msg_size=bus.MAX_DATA + 64)
        first = hello(tok)
        if host:
            first["host"] = host
        await ws.send_str(json.dumps(first))
        msg = await ws.receive(HELLO_TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            code = ws.close_code
            raise MioError(
                f"the node at {url} refused the mio session"
                + (f" (code {code}: {msg.extra or 'revoked or unknown key'})" if code else "")
            )
        welcome = json.loads(msg.data)
        if welcome.get("op") != "welcome":
            raise MioError(f"the node at {url} answered the hello with {welcome.get('op')!r}")
        return Network(http, ws, welcome)
    except aiohttp.WSServerHandshakeError as exc:
        await http.close()
        if exc.status == 404:
            raise MioError(f"the node at {url} has no mio endpoint (/mio): too old?") from None
        raise MioError(f"the node at {url} refused the mio session: HTTP {exc.status}") from None
    except TimeoutError:
        await http.close()
        raise TimeoutError(f"the node at {url} sent no welcome in {HELLO_TIMEOUT:.0f} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        await http.close()
        raise OSError(errnos.ECONNREFUSED, f"cannot reach the node at {url}: {exc}") from None
    except BaseException:
        await http.close()
        raise
