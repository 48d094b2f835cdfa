"""The mio bus: socket commands between a program and the node that runs its TCP/IP stack.

A mio session is one WebSocket (``/mio`` on the node's HTTP port). After the JSON hello and
welcome (text messages, docs/mio.md), every binary WebSocket message is exactly one bus message:

    op (u8) | id (u32, big-endian) | body

``id`` names a socket (TCP or UDP) or, for ``PING``/``RESOLVE``, a request. The program picks
ids for the sockets it opens (``1 … 2**31 - 1``); the node picks ids with the high bit set for
the connections it accepts on a listener, so the two never collide. The WebSocket already frames
messages, so there is no length field: a body's last variable part runs to the message's end.

Addresses travel as an *endpoint*: ``len (u8: 0, 4 or 16) | address | port (u16)``; length 0
means "any" (bind/listen on every address of the session's interface).

Flow control is by byte credits, per socket and per direction: a side may send ``DATA`` only
while it holds credit from the other side (``CONNECTED``/``ACCEPT`` carry the first grant,
``CREDIT`` adds more). So the node never buffers more for a slow program than it granted, and a
program that stops reading closes its TCP window instead of growing the node's memory.

This module is the codec only (sans-I/O): :func:`decode` turns bytes into a message object or
raises :class:`~atenet.errors.DecodeError` with a one-line reason; each message's ``encode()``
gives the bytes. The hot ops (``DATA``, ``CREDIT``) also have plain functions that skip the
object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar

from atenet.errors import DecodeError

__all__ = [
    "ACCEPTED_ID_BIT",
    "MAX_DATA",
    "MAX_ID",
    "Accept",
    "Bind",
    "Bound",
    "Close",
    "Connect",
    "Connected",
    "Credit",
    "Data",
    "Datagram",
    "Endpoint",
    "Error",
    "Listen",
    "Listening",
    "Message",
    "Op",
    "Ping",
    "Pong",
    "Resolve",
    "Resolved",
    "Shutdown",
    "credit_bytes",
    "data_bytes",
    "decode",
]


class Op(IntEnum):
    """Bus operations; the direction each may travel is in docs/mio.md."""

    CONNECT = 1
    CONNECTED = 2
    LISTEN = 3
    LISTENING = 4
    ACCEPT = 5
    DATA = 6
    CREDIT = 7
    SHUTDOWN = 8
    CLOSE = 9
    BIND = 10
    BOUND = 11
    DATAGRAM = 12
    PING = 13
    PONG = 14
    RESOLVE = 15
    RESOLVED = 16
    ERROR = 17


HEADER = struct.Struct("!BI")
MAX_ID = 0xFFFFFFFF
ACCEPTED_ID_BIT = 0x80000000
"""Set in the ids the node gives accepted connections; never in ids a program picks."""

MAX_DATA = 65536
"""Most payload bytes in one ``DATA`` or ``DATAGRAM`` message."""

MAX_NAME = 253
"""Longest DNS name ``RESOLVE`` takes (RFC 1035's limit in text form)."""

MAX_TEXT = 512
"""Longest UTF-8 message an ``ERROR`` carries."""

IPAddress = IPv4Address | IPv6Address

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and port; ``address`` None is "any" (only for binding and listening)."""

    address: IPAddress | None
    port: int

    @classmethod
    def of(cls, host: str | IPAddress | None, port: int) -> Endpoint:
        """From text (``"10.0.0.2"``, ``"fd00::1"``) or an address object; ``""`` is "any"."""
        address = ip_address(host) if isinstance(host, str) and host else host or None
        return cls(address, port)

    def encode(self) -> bytes:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is outside 0-65535")
        raw = b"" if self.address is None else self.address.packed
        return bytes((len(raw),)) + raw + _U16.pack(self.port)

    @classmethod
    def decode(cls, buf: memoryview, at: int) -> tuple[Endpoint, int]:
        """The endpoint at ``buf[at:]`` and the offset after it."""
        if at >= len(buf):
            raise DecodeError("bus message ends before its endpoint")
        n = buf[at]
        if n not in (0, 4, 16):
            raise DecodeError(f"endpoint address length {n} is not 0, 4 or 16")
        end = at + 1 + n + 2
        if end > len(buf):
            raise DecodeError("bus message ends inside its endpoint")
        raw = bytes(buf[at + 1 : at + 1 + n])
        address: IPAddress | None = (
            None if n == 0 else IPv4Address(raw) if n == 4 else IPv6Address(raw)
        )
        return cls(address, _U16.unpack_from(buf, at + 1 + n)[0]), end

    def __str__(self) -> str:
        host = "*" if self.address is None else str(self.address)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class Message:
    """Base of every bus message: ``op`` is the class's, ``id`` the socket or request."""

    __slots__ = ()
    op: ClassVar[Op]
    id: int

    def body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        if not 0 <= self.id <= MAX_ID:
            raise ValueError(f"bus id {self.id} is outside 0-{MAX_ID}")
        return HEADER.pack(self.op, self.id) + self.body()

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Message:
        """Decode the body ``buf`` (the message after its 5-byte header)."""
        if len(buf):
            raise DecodeError(f"{cls.op.name} carries no body, got {len(buf)} bytes")
        return cls(ident)  # type: ignore[call-arg]


def _u16(buf: memoryview, at: int, what: str) -> int:
    if at + 2 > len(buf):
        raise DecodeError(f"bus message ends before its {what}")
    return int(_U16.unpack_from(buf, at)[0])


def _u32(buf: memoryview, at: int, what: str) -> int:
    if at + 4 > len(buf):
        raise DecodeError(f"bus message ends before its {what}")
    return int(_U32.unpack_from(buf, at)[0])


def _done(buf: memoryview, at: int, op: Op) -> None:
    if at != len(buf):
        raise DecodeError(f"{op.name} has {len(buf) - at} bytes after its body")


def _clip(text: str) -> bytes:
    """``text`` as UTF-8 cut to :data:`MAX_TEXT` bytes on a character boundary."""
    return text.encode()[:MAX_TEXT].decode(errors="ignore").encode()


def _text(buf: memoryview, limit: int, what: str) -> str:
    if len(buf) > limit:
        raise DecodeError(f"{what} is {len(buf)} bytes, the limit is {limit}")
    try:
        return bytes(buf).decode()
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Connect(Message):
    """Program → node: open TCP socket ``id`` to ``remote`` from ``local_port`` (0: any)."""

    op: ClassVar[Op] = Op.CONNECT
    id: int
    remote: Endpoint
    local_port: int = 0
    timeout_ms: int = 0  # 0: the node's default

    def body(self) -> bytes:
        if self.remote.address is None:
            raise ValueError("CONNECT needs a remote address")
        return self.remote.encode() + _U16.pack(self.local_port) + _U32.pack(self.timeout_ms)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Connect:
        remote, at = Endpoint.decode(buf, 0)
        if remote.address is None:
            raise DecodeError("CONNECT needs a remote address")
        local_port = _u16(buf, at, "local port")
        timeout = _u32(buf, at + 2, "timeout")
        _done(buf, at + 6, cls.op)
        return cls(ident, remote, local_port, timeout)


@dataclass(frozen=True, slots=True)
class Connected(Message):
    """Node → program: socket ``id`` is established; the program may send ``credit`` bytes."""

    op: ClassVar[Op] = Op.CONNECTED
    id: int
    local: Endpoint
    remote: Endpoint
    credit: int

    def body(self) -> bytes:
        return self.local.encode() + self.remote.encode() + _U32.pack(self.credit)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Connected:
        local, at = Endpoint.decode(buf, 0)
        remote, at = Endpoint.decode(buf, at)
        credit = _u32(buf, at, "credit")
        _done(buf, at + 4, cls.op)
        return cls(ident, local, remote, credit)


@dataclass(frozen=True, slots=True)
class Listen(Message):
    """Program → node: listen with socket ``id`` on ``local`` (address None: every address)."""

    op: ClassVar[Op] = Op.LISTEN
    id: int
    local: Endpoint
    backlog: int = 128

    def body(self) -> bytes:
        return self.local.encode() + _U16.pack(self.backlog)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Listen:
        local, at = Endpoint.decode(buf, 0)
        backlog = _u16(buf, at, "backlog")
        _done(buf, at + 2, cls.op)
        return cls(ident, local, backlog)


@dataclass(frozen=True, slots=True)
class _Local(Message):
    """A message whose body is one local endpoint (LISTENING, BIND, BOUND)."""

    id: int
    local: Endpoint

    def body(self) -> bytes:
        return self.local.encode()

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> _Local:
        local, at = Endpoint.decode(buf, 0)
        _done(buf, at, cls.op)
        return cls(ident, local)


@dataclass(frozen=True, slots=True)
class Listening(_Local):
    """Node → program: listener ``id`` is bound to ``local`` (the port filled in if it was 0)."""

    op: ClassVar[Op] = Op.LISTENING


@dataclass(frozen=True, slots=True)
class Accept(Message):
    """Node → program: listener ``id`` accepted connection ``conn`` (an id with the high bit)."""

    op: ClassVar[Op] = Op.ACCEPT
    id: int
    conn: int
    local: Endpoint
    remote: Endpoint
    credit: int

    def body(self) -> bytes:
        return (
            _U32.pack(self.conn)
            + self.local.encode()
            + self.remote.encode()
            + _U32.pack(self.credit)
        )

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Accept:
        conn = _u32(buf, 0, "connection id")
        if not conn & ACCEPTED_ID_BIT:
            raise DecodeError(f"accepted connection id {conn:#x} lacks the node's high bit")
        local, at = Endpoint.decode(buf, 4)
        remote, at = Endpoint.decode(buf, at)
        credit = _u32(buf, at, "credit")
        _done(buf, at + 4, cls.op)
        return cls(ident, conn, local, remote, credit)


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Either way: stream bytes for TCP socket ``id`` (spends as much of the sender's credit)."""

    op: ClassVar[Op] = Op.DATA
    id: int
    payload: bytes

    def body(self) -> bytes:
        if len(self.payload) > MAX_DATA:
            raise ValueError(f"DATA of {len(self.payload)} bytes is above {MAX_DATA}")
        return self.payload

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Data:
        if not buf:
            raise DecodeError("DATA without payload (use SHUTDOWN for end of stream)")
        if len(buf) > MAX_DATA:
            raise DecodeError(f"DATA of {len(buf)} bytes is above {MAX_DATA}")
        return cls(ident, bytes(buf))


@dataclass(frozen=True, slots=True)
class Credit(Message):
    """Either way: the sender of this may now receive ``amount`` more bytes on socket ``id``."""

    op: ClassVar[Op] = Op.CREDIT
    id: int
    amount: int

    def body(self) -> bytes:
        return _U32.pack(self.amount)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Credit:
        amount = _u32(buf, 0, "amount")
        _done(buf, 4, cls.op)
        if amount == 0:
            raise DecodeError("CREDIT of 0 bytes")
        return cls(ident, amount)


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Either way: no more ``DATA`` from this side on socket ``id`` (TCP FIN, half-close)."""

    op: ClassVar[Op] = Op.SHUTDOWN
    id: int


@dataclass(frozen=True, slots=True)
class Close(Message):
    """Program → node: close socket ``id`` (``abort``: reset at once, dropping unsent data).

    Node → program: socket ``id`` is gone; ``errno`` 0 is an orderly end, else a Linux errno
    value (ECONNRESET 104, ETIMEDOUT 110, …) and ``reason`` says what happened.
    """

    op: ClassVar[Op] = Op.CLOSE
    id: int
    abort: bool = False
    errno: int = 0
    reason: str = ""

    def body(self) -> bytes:
        return bytes((int(self.abort),)) + _U16.pack(self.errno) + _clip(self.reason)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Close:
        if len(buf) < 3:
            raise DecodeError("CLOSE ends before its flags and errno")
        if buf[0] > 1:
            raise DecodeError(f"CLOSE flags {buf[0]:#x} has unknown bits")
        return cls(ident, bool(buf[0]), _u16(buf, 1, "errno"), _text(buf[3:], MAX_TEXT, "reason"))


@dataclass(frozen=True, slots=True)
class Bind(_Local):
    """Program → node: open UDP socket ``id`` bound to ``local`` (port 0: any free port)."""

    op: ClassVar[Op] = Op.BIND


@dataclass(frozen=True, slots=True)
class Bound(_Local):
    """Node → program: UDP socket ``id`` is bound to ``local``."""

    op: ClassVar[Op] = Op.BOUND


@dataclass(frozen=True, slots=True)
class Datagram(Message):
    """Either way: one UDP datagram on socket ``id``; ``peer`` is its destination or source."""

    op: ClassVar[Op] = Op.DATAGRAM
    id: int
    peer: Endpoint
    payload: bytes

    def body(self) -> bytes:
        if self.peer.address is None:
            raise ValueError("DATAGRAM needs a peer address")
        if len(self.payload) > MAX_DATA:
            raise ValueError(f"DATAGRAM of {len(self.payload)} bytes is above {MAX_DATA}")
        return self.peer.encode() + self.payload

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Datagram:
        peer, at = Endpoint.decode(buf, 0)
        if peer.address is None:
            raise DecodeError("DATAGRAM needs a peer address")
        if len(buf) - at > MAX_DATA:
            raise DecodeError(f"DATAGRAM of {len(buf) - at} bytes is above {MAX_DATA}")
        return cls(ident, peer, bytes(buf[at:]))


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Program → node: echo request ``id`` to ``address`` with ``size`` payload bytes."""

    op: ClassVar[Op] = Op.PING
    id: int
    address: IPAddress
    size: int = 56
    timeout_ms: int = 0

    def body(self) -> bytes:
        return (
            Endpoint(self.address, 0).encode() + _U16.pack(self.size) + _U32.pack(self.timeout_ms)
        )

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Ping:
        target, at = Endpoint.decode(buf, 0)
        if target.address is None:
            raise DecodeError("PING needs an address")
        size = _u16(buf, at, "size")
        timeout = _u32(buf, at + 2, "timeout")
        _done(buf, at + 6, cls.op)
        return cls(ident, target.address, size, timeout)


@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Node → program: request ``id`` was answered after ``rtt_us`` microseconds."""

    op: ClassVar[Op] = Op.PONG
    id: int
    rtt_us: int

    def body(self) -> bytes:
        return _U32.pack(self.rtt_us)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Pong:
        rtt = _u32(buf, 0, "rtt")
        _done(buf, 4, cls.op)
        return cls(ident, rtt)


@dataclass(frozen=True, slots=True)
class Resolve(Message):
    """Program → node: look up ``name`` (A and AAAA) through the network's DNS servers."""

    op: ClassVar[Op] = Op.RESOLVE
    id: int
    name: str

    def body(self) -> bytes:
        raw = self.name.encode()
        if not raw or len(raw) > MAX_NAME:
            raise ValueError(f"name must be 1-{MAX_NAME} bytes")
        return raw

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Resolve:
        if not buf:
            raise DecodeError("RESOLVE without a name")
        return cls(ident, _text(buf, MAX_NAME, "name"))


@dataclass(frozen=True, slots=True)
class Resolved(Message):
    """Node → program: the addresses request ``id`` found (at most 32)."""

    op: ClassVar[Op] = Op.RESOLVED
    id: int
    addresses: tuple[IPAddress, ...]

    def body(self) -> bytes:
        if len(self.addresses) > 32:
            raise ValueError("at most 32 addresses")
        return bytes((len(self.addresses),)) + b"".join(
            Endpoint(a, 0).encode() for a in self.addresses
        )

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Resolved:
        if not buf:
            raise DecodeError("RESOLVED ends before its count")
        count, at = buf[0], 1
        if count > 32:
            raise DecodeError(f"RESOLVED counts {count} addresses, at most 32")
        found = []
        for _ in range(count):
            ep, at = Endpoint.decode(buf, at)
            if ep.address is None:
                raise DecodeError("RESOLVED holds an empty address")
            found.append(ep.address)
        _done(buf, at, cls.op)
        return cls(ident, tuple(found))


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Node → program: ``CONNECT``/``LISTEN``/``BIND``/``PING``/``RESOLVE`` ``id`` failed.

    ``errno`` is a Linux errno value (ECONNREFUSED 111, EADDRINUSE 98, ETIMEDOUT 110,
    EHOSTUNREACH 113, EMFILE 24, EPROTO 71 for a bus message the node refused, …) so the client
    library raises the builtin exception Python itself would (``ConnectionRefusedError`` …).
    """

    op: ClassVar[Op] = Op.ERROR
    id: int
    errno: int
    reason: str = ""

    def body(self) -> bytes:
        return _U16.pack(self.errno) + _clip(self.reason)

    @classmethod
    def parse(cls, ident: int, buf: memoryview) -> Error:
        errno = _u16(buf, 0, "errno")
        return cls(ident, errno, _text(buf[2:], MAX_TEXT, "reason"))


_BY_OP: dict[int, type[Message]] = {
    cls.op: cls
    for cls in (
        Connect,
        Connected,
        Listen,
        Listening,
        Accept,
        Data,
        Credit,
        Shutdown,
        Close,
        Bind,
        Bound,
        Datagram,
        Ping,
        Pong,
        Resolve,
        Resolved,
        Error,
    )
}


def decode(message: bytes | bytearray | memoryview) -> Message:
    """One bus message from one binary WebSocket message; DecodeError says what is wrong."""
    buf = memoryview(message)
    if len(buf) < HEADER.size:
        raise DecodeError(f"bus message of {len(buf)} bytes is shorter than its 5-byte header")
    op, ident = HEADER.unpack_from(buf)
    cls = _BY_OP.get(op)
    if cls is None:
        raise DecodeError(f"unknown bus op {op}")
    return cls.parse(ident, buf[HEADER.size :])


def data_bytes(ident: int, payload: bytes | memoryview) -> bytes:
    """``Data(ident, payload).encode()`` without building the object (the hot path)."""
    return HEADER.pack(Op.DATA, ident) + payload


def credit_bytes(ident: int, amount: int) -> bytes:
    """``Credit(ident, amount).encode()`` without building the object."""
    return HEADER.pack(Op.CREDIT, ident) + _U32.pack(amount)
