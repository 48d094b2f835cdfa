"""``recvmmsg`` / ``sendmmsg`` through ctypes: many datagrams per syscall (issue 14's lever).

Python's socket module has neither call. This module reaches them in the C library with
ctypes and preallocated buffers (one ``mmsghdr``/``iovec``/address/data slot per datagram, laid
out with :mod:`struct`, so a batch costs no allocation but the bytes handed back). It lives in
bench/ because it was measured against the per-datagram calls (``bench/bench_syscalls.py``) and
dropped (bench/RESULTS.md, "levers"): the per-datagram work ctypes adds in Python costs about as
much as the syscalls it saves, the kernel still handles each datagram on its own, and UDP
GSO/GRO (:meth:`atenet.transport.udp.UdpSocket.flush`) already carry the runs a flood makes in
one syscall and one buffer each way.

:func:`available` is False where the C library, the calls or a 64-bit Linux layout are missing;
callers then keep the plain socket calls (the pure-Python path).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from typing import Any

MSG_DONTWAIT = 0x40
SOL_UDP = 17
UDP_GRO = 104

_IOV = struct.Struct("QQ")  # struct iovec {void *iov_base; size_t iov_len;}
# struct mmsghdr {struct msghdr {name, namelen, iov, iovlen, control, controllen, flags}; len}
_HDR = struct.Struct("QI4xQQQQi4xI4x")
_NAME_SIZE = 32  # room for a sockaddr_in6 (28 bytes)
_CONTROL = socket.CMSG_SPACE(4)
_LEN_AT = 56  # mmsghdr.msg_len
_NAMELEN_AT = 8
_CONTROLLEN_AT = 40


def _libc() -> Any:
    """The C library with both calls, or None (not Linux, not 64-bit, no libc, too old)."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8 or _HDR.size != 64:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in ("recvmmsg", "sendmmsg"):
            fn = getattr(libc, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
            if name == "recvmmsg":
                fn.argtypes = [*fn.argtypes, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    """The batched calls can be used here."""
    return _LIBC is not None


def _address(buffer: bytearray) -> tuple[int, Any]:
    """The address of ``buffer``'s memory, and the ctypes object that pins it (keep it alive:
    while it exists the bytearray cannot be resized, so the address stays valid)."""
    pin = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(pin), pin


def _sockaddr(addr: tuple[Any, ...]) -> bytes:
    host, port = addr[0], addr[1]
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        flow, scope = (addr[2], addr[3]) if len(addr) == 4 else (0, 0)
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI16s", port, flow, raw)
            + (struct.pack("=I", scope))
        )
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, socket.inet_aton(host))


def _peer(raw: bytes) -> tuple[Any, ...]:
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET6:
        port, flow, ip, scope = struct.unpack_from("!HI16sI", raw, 2)
        return (socket.inet_ntop(socket.AF_INET6, ip), port, flow, scope)
    port = struct.unpack_from("!H", raw, 2)[0]
    return (socket.inet_ntoa(raw[4:8]), port)


class Receiver:
    """Reads up to ``count`` datagrams of up to ``size`` bytes each with one ``recvmmsg``."""

    def __init__(self, sock: socket.socket, count: int = 64, size: int = 65535) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available here")
        self.fd = sock.fileno()
        self.count = count
        self.size = size
        self._data = bytearray(count * size)
        self._names = bytearray(count * _NAME_SIZE)
        self._control = bytearray(count * _CONTROL)
        self._iovs = bytearray(count * _IOV.size)
        self._hdrs = bytearray(count * _HDR.size)
        data, self._pin_data = _address(self._data)
        names, self._pin_names = _address(self._names)
        control, self._pin_control = _address(self._control)
        iovs, self._pin_iovs = _address(self._iovs)
        self._hdrs_at, self._pin_hdrs = _address(self._hdrs)
        for i in range(count):
            _IOV.pack_into(self._iovs, i * _IOV.size, data + i * size, size)
            _HDR.pack_into(
                self._hdrs, i * _HDR.size, names + i * _NAME_SIZE, _NAME_SIZE,
                iovs + i * _IOV.size, 1, control + i * _CONTROL, _CONTROL, 0, 0,
            )  # fmt: skip
        self._pristine = bytes(self._hdrs)
        self._view = memoryview(self._data)
        self._peers: dict[bytes, tuple[Any, ...]] = {}

    def receive(self) -> list[tuple[bytes, tuple[Any, ...], int]]:
        """``(data, peer address, GRO segment size or 0)`` for each datagram waiting (at most
        ``count``); empty when none is. Errors other than "nothing waiting" raise OSError."""
        self._hdrs[:] = self._pristine  # the kernel overwrote the lengths last time
        got = _LIBC.recvmmsg(self.fd, self._hdrs_at, self.count, MSG_DONTWAIT, None)
        if got < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")
        out = []
        hdrs, names, view, size = self._hdrs, self._names, self._view, self.size
        peers = self._peers
        unpack = struct.unpack_from
        for i in range(got):
            at = i * _HDR.size
            length = unpack("=I", hdrs, at + _LEN_AT)[0]
            namelen = unpack("=I", hdrs, at + _NAMELEN_AT)[0]
            raw = bytes(names[i * _NAME_SIZE : i * _NAME_SIZE + namelen])
            peer = peers.get(raw)
            if peer is None:
                if len(peers) > 4096:
                    peers.clear()
                peer = peers[raw] = _peer(raw)
            segment = 0
            if unpack("=Q", hdrs, at + _CONTROLLEN_AT)[0]:
                level, kind = unpack("=ii", self._control, i * _CONTROL + 8)
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = unpack("=i", self._control, i * _CONTROL + 16)[0]
            out.append((view[i * size : i * size + length].tobytes(), peer, segment))
        return out


class Sender:
    """Sends up to ``count`` datagrams of up to ``size`` bytes each with one ``sendmmsg``."""

    def __init__(self, sock: socket.socket, count: int = 64, size: int = 1500) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available here")
        self.sock = sock
        self.fd = sock.fileno()
        self.count = count
        self.size = size
        self._data = bytearray(count * size)
        self._names = bytearray(count * _NAME_SIZE)
        self._iovs = bytearray(count * _IOV.size)
        self._hdrs = bytearray(count * _HDR.size)
        self._data_at, self._pin_data = _address(self._data)
        names, self._pin_names = _address(self._names)
        iovs, self._pin_iovs = _address(self._iovs)
        self._hdrs_at, self._pin_hdrs = _address(self._hdrs)
        for i in range(count):
            _HDR.pack_into(
                self._hdrs, i * _HDR.size, names + i * _NAME_SIZE, 0,
                iovs + i * _IOV.size, 1, 0, 0, 0, 0,
            )  # fmt: skip
        self._sockaddrs: dict[tuple[Any, ...], bytes] = {}
        self.errors = 0

    def send(self, datagrams: list[tuple[bytes | bytearray, tuple[Any, ...]]]) -> int:
        """Send ``(packet, address)`` pairs in order; returns how many the kernel took. Packets
        larger than ``size`` go with a plain ``sendto``. Failures are counted in ``errors``."""
        sent = 0
        for start in range(0, len(datagrams), self.count):
            sent += self._send(datagrams[start : start + self.count])
        return sent

    def _send(self, datagrams: list[tuple[bytes | bytearray, tuple[Any, ...]]]) -> int:
        data, names, iovs, hdrs = self._data, self._names, self._iovs, self._hdrs
        size, base = self.size, self._data_at
        sockaddrs = self._sockaddrs
        pack_iov, pack_len = _IOV.pack_into, struct.pack_into
        n = 0
        for packet, addr in datagrams:
            length = len(packet)
            if length > size:
                try:
                    self.sock.sendto(packet, addr)
                except OSError:
                    self.errors += 1
                continue
            raw = sockaddrs.get(addr)
            if raw is None:
                if len(sockaddrs) > 4096:
                    sockaddrs.clear()
                raw = sockaddrs[addr] = _sockaddr(addr)
            at = n * size
            data[at : at + length] = packet
            pack_iov(iovs, n * _IOV.size, base + at, length)
            names[n * _NAME_SIZE : n * _NAME_SIZE + len(raw)] = raw
            pack_len("=I", hdrs, n * _HDR.size + _NAMELEN_AT, len(raw))
            n += 1
        done = 0
        while done < n:
            got = _LIBC.sendmmsg(self.fd, self._hdrs_at + done * _HDR.size, n - done, 0)
            if got < 0:
                self.errors += 1  # this datagram failed; the kernel stopped at it
                done += 1
            else:
                done += got
        return n
