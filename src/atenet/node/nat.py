"""The NAT forwarder's asyncio shell: one host socket per flow (docs/nat.md).

The sans-I/O :class:`atenet.router.nat.Nat` decides; this module only moves bytes. Each TCP
flow is a ``loop.create_connection`` and each UDP flow a connected ``create_datagram_endpoint``,
so the kernel picks every flow's source port and routes its answers back. ICMP echo uses an
unprivileged ping socket (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``, for IPv6
``socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)``; allowed when ``net.ipv4.ping_group_range``
contains the process's group, for both families); where the host refuses one the client gets
"administratively prohibited".

Backpressure is asyncio's own: ``pause_writing``/``resume_writing`` on a host socket become
:meth:`Nat.writable`, and :class:`~atenet.router.nat.PauseReading` becomes
``transport.pause_reading()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from atenet.router.nat import (
    Action,
    Close,
    Nat,
    OpenPing,
    OpenTcp,
    OpenUdp,
    PauseReading,
    ResumeReading,
    Send,
    SendPing,
    ShutdownWrite,
)

__all__ = ["NatShell", "is_local_address"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 25.0
"""Below the forwarder's own connect timeout (30 s), so the client hears "unreachable"."""
UDP_BUFFER_LIMIT = 256 * 1024
"""Datagrams queued in one flow's transport beyond this are dropped (counted)."""
_LOCAL_TTL = 30.0
_LOCAL_MAX = 1024
_local_cache: dict[IPv4Address | IPv6Address, tuple[bool, float]] = {}


def is_local_address(address: IPv4Address | IPv6Address) -> bool:
    """Whether ``address`` is one of this host's own (in its current network namespace).

    Why this way: a UDP socket "connected" to a local address gets that address as its source
    (the kernel routes it through ``lo``); no packet is sent. This follows address changes,
    needs no parsing of /proc and covers every interface. Results are kept 30 s. Errors
    (no route) mean "not local": such a destination cannot be the node itself.
    """
    now = time.monotonic()
    hit = _local_cache.get(address)
    if hit is not None and hit[1] > now:
        return hit[0]
    local = False
    family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(address), 9))
            local = ip_address(probe.getsockname()[0].split("%")[0]) == address
        except OSError:
            local = False
    if len(_local_cache) >= _LOCAL_MAX:
        _local_cache.clear()
    _local_cache[address] = (local, now + _LOCAL_TTL)
    return local


class _Tcp(asyncio.Protocol):
    def __init__(self, shell: NatShell, flow: int) -> None:
        self.shell, self.flow = shell, flow
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.shell.event(lambda nat, now: nat.data(self.flow, data, now))
        flow = self.shell.nat.flows.get(self.flow)
        if flow is not None and flow.reading_paused and self.transport is not None:
            # Mirror the forwarder's decision now, not at its next run: the loop may read
            # this socket again before then, and the forwarder holds at most one read.
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.shell.event(lambda nat, now: nat.eof(self.flow, now))
        return True  # half-close: the client may still send

    def connection_lost(self, exc: Exception | None) -> None:
        if self.shell.socks.pop(self.flow, None) is not None:
            self.shell.event(lambda nat, now: nat.closed(self.flow, exc is not None, now))

    def pause_writing(self) -> None:
        self.shell.event(lambda nat, now: nat.writable(self.flow, False, now))

    def resume_writing(self) -> None:
        self.shell.event(lambda nat, now: nat.writable(self.flow, True, now))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, shell: NatShell, flow: int, ping: str = "") -> None:
        """``ping``: the destination of a ping socket (unconnected: asyncio's datagram
        transport cannot tell that an ICMP socket is connected, so each send names it)."""
        self.shell, self.flow, self.ping = shell, flow, ping
        self._ping_to = ip_address(ping) if ping else None
        self._reply_type = 0 if isinstance(self._ping_to, IPv4Address) else 129
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.ping:
            self.shell.event(lambda nat, now: nat.data(self.flow, data, now))
        elif len(data) >= 8 and data[0] == self._reply_type and self._from_dst(addr[0]):
            # the kernel matched our socket's identifier; only the destination's replies count
            seq = int.from_bytes(data[6:8], "big")
            self.shell.event(lambda nat, now: nat.echo_reply(self.flow, seq, data[8:], now))

    def _from_dst(self, host: str) -> bool:
        try:
            return ip_address(host.split("%")[0]) == self._ping_to
        except ValueError:
            return False

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError) and not self.ping:
            self.shell.event(lambda nat, now: nat.failed(self.flow, "refused", now))
        else:
            self.shell.nat.counters["host_udp_errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.shell.socks.pop(self.flow, None) is not None:  # not closed by the forwarder
            self.shell.event(lambda nat, now: nat.closed(self.flow, exc is not None, now))


class NatShell:
    """Runs one network's :class:`Nat`: executes its actions, feeds it host-socket events,
    sends its output with ``out`` (virtio-net packets from :meth:`Nat.poll_packets`: TCP in
    TSO super-segments) and wakes it at its ``poll_at``.

    ``clock`` is the clock the forwarder's ``now`` comes from (the node core's Unix time)."""

    def __init__(
        self, nat: Nat, out: Callable[[list[bytes]], None], clock: Callable[[], float]
    ) -> None:
        self.nat = nat
        self.out = out
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.socks: dict[int, _Tcp | _Udp] = {}
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------------ driving the core

    def wake(self) -> None:
        """Run the forwarder soon (coalesced: one run per loop iteration)."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self.loop.call_soon(self.run)

    def event(self, call: Callable[[Nat, float], None]) -> None:
        """A host-socket event: hand it to the core now, run the core soon."""
        if self._closed:
            return
        call(self.nat, self.clock())
        self.wake()

    def run(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        nat = self.nat
        for _ in range(8):
            now = self.clock()
            for action in nat.actions():
                self._do(action)
            packets = nat.poll_packets(now)
            if packets:
                self.out(packets)
            if not nat.has_actions:
                break
        at = nat.poll_at()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None:
            delay = max(0.0, at - self.clock())
            self._timer = self.loop.call_later(delay, self.wake)

    def close(self) -> None:
        """Close every host socket (the network lost internet access or went away)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._opening.values():
            task.cancel()
        for proto in list(self.socks.values()):
            if proto.transport is not None:
                proto.transport.abort()
        self.socks.clear()

    # ------------------------------------------------------------------ actions

    def _do(self, action: Action) -> None:
        if isinstance(action, Send):
            proto = self.socks.get(action.flow)
            if proto is None or proto.transport is None:
                return
            if isinstance(proto, _Tcp):
                proto.transport.write(action.data)
            elif proto.transport.get_write_buffer_size() > UDP_BUFFER_LIMIT:
                self.nat.counters["host_udp_dropped"] += 1
            else:
                proto.transport.sendto(action.data)
        elif isinstance(action, OpenTcp):
            self._spawn(action.flow, self._open_tcp(action.flow, action.dst))
        elif isinstance(action, OpenUdp):
            self._spawn(action.flow, self._open_udp(action.flow, action.dst))
        elif isinstance(action, OpenPing):
            self._spawn(action.flow, self._open_ping(action.flow, action.dst))
        elif isinstance(action, SendPing):
            proto = self.socks.get(action.flow)
            if proto is not None and proto.transport is not None:
                kind = b"\x08" if ":" not in proto.ping else b"\x80"  # echo request
                header = kind + b"\x00\x00\x00\x00\x00" + action.seq.to_bytes(2, "big")
                proto.transport.sendto(header + action.payload, (proto.ping, 0))  # type: ignore[union-attr]
        elif isinstance(action, ShutdownWrite):
            proto = self.socks.get(action.flow)
            if isinstance(proto, _Tcp) and proto.transport is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    if proto.transport.can_write_eof():
                        proto.transport.write_eof()
        elif isinstance(action, PauseReading | ResumeReading):
            proto = self.socks.get(action.flow)
            if isinstance(proto, _Tcp) and proto.transport is not None:
                with contextlib.suppress(RuntimeError):
                    if isinstance(action, PauseReading):
                        proto.transport.pause_reading()
                    else:
                        proto.transport.resume_reading()
        elif isinstance(action, Close):
            task = self._opening.pop(action.flow, None)
            if task is not None:
                task.cancel()
            proto = self.socks.pop(action.flow, None)
            if proto is not None and proto.transport is not None:
                if action.abort:
                    proto.transport.abort()
                else:
                    proto.transport.close()

    def _spawn(self, flow: int, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._opening[flow] = task
        task.add_done_callback(lambda _t: self._opening.pop(flow, None))

    async def _open_tcp(self, flow: int, dst: tuple[str, int]) -> None:
        try:
            _t, proto = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Tcp(self, flow), dst[0], dst[1]),
                CONNECT_TIMEOUT,
            )
        except ConnectionRefusedError:
            self.event(lambda nat, now: nat.failed(flow, "refused", now))
            return
        except (OSError, TimeoutError):
            self.event(lambda nat, now: nat.failed(flow, "unreachable", now))
            return
        self._adopt(flow, proto)

    async def _open_udp(self, flow: int, dst: tuple[str, int]) -> None:
        try:
            _t, proto = await self.loop.create_datagram_endpoint(
                lambda: _Udp(self, flow), remote_addr=dst
            )
        except OSError:
            self.event(lambda nat, now: nat.failed(flow, "unreachable", now))
            return
        self._adopt(flow, proto)

    async def _open_ping(self, flow: int, dst: str) -> None:
        v6 = ":" in dst
        try:
            if v6:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        except OSError:  # EACCES: ping_group_range excludes us; or no ICMP sockets at all
            self.event(lambda nat, now: nat.failed(flow, "unavailable", now))
            return
        try:
            sock.setblocking(False)
            _t, proto = await self.loop.create_datagram_endpoint(
                lambda: _Udp(self, flow, ping=dst), sock=sock
            )
        except OSError:
            sock.close()
            self.event(lambda nat, now: nat.failed(flow, "unreachable", now))
            return
        self._adopt(flow, proto)

    def _adopt(self, flow: int, proto: _Tcp | _Udp) -> None:
        if self._closed or flow not in self.nat.flows:  # closed while connecting
            if proto.transport is not None:
                proto.transport.abort()
            return
        self.socks[flow] = proto
        self.event(lambda nat, now: nat.opened(flow, now))
