"""Run a stack :class:`~atenet.stack.Interface` on a kernel TAP device, for tests.

The stack is sans-I/O, so something has to move frames: this is the smallest such shell — one
thread that waits on the TAP fd (and a wake-up pipe) until the interface's ``poll_at``, feeds
frames in and writes what ``poll`` returns. The test thread reaches the interface only through
:meth:`StackTap.call`, which holds the same lock and wakes the loop so new output leaves at once.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any, TypeVar

from atenet.stack import Interface
from atenet.transport.tap import TapDevice

T = TypeVar("T")


class StackTap:
    """``iface`` served on ``tap`` by a background thread until :meth:`close`."""

    def __init__(self, iface: Interface, tap: TapDevice) -> None:
        self.iface = iface
        self.tap = tap
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="stack-tap", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` with the interface locked, then let the loop send its output."""
        with self._lock:
            result = fn(*args)
        os.write(self._wake_w, b"x")
        return result

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll ``predicate`` (under the lock) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError("condition not met within the timeout")

    def _run(self) -> None:
        fd = self.tap.fileno()
        while not self._stop:
            with self._lock:
                at = self.iface.poll_at()
            timeout = 0.5 if at is None else min(0.5, max(0.0, at - time.monotonic()))
            ready, _, _ = select.select([fd, self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            now = time.monotonic()
            vnet = self.tap.vnet_hdr  # a vnet TAP: offloaded packets both ways (tso=True)
            with self._lock:
                if fd in ready:
                    for frame in self.tap.read_batch():
                        if vnet:
                            self.iface.receive_packet(frame, now)
                        else:
                            self.iface.receive(frame, now)
                out = self.iface.poll_packets(now) if vnet else self.iface.poll(now)
            for frame in out:
                if vnet:
                    self.tap.write_packet(frame)
                else:
                    self.tap.write(frame)

    def close(self) -> None:
        """Stop the thread and close the TAP and the pipe."""
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self.tap.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class RstOnly:
    """A stand-in for ``atenet.stack.tcp.Tcp`` that refuses every segment with a RST.

    It tests the hook only (segments reach the TCP layer; what it returns leaves in IP and
    Ethernet with a checksum Linux accepts); it is not a TCP implementation.
    """

    def __init__(self) -> None:
        self.out: list[tuple[bytes, bytes, bytes]] = []
        self.seen = 0

    def on_packet(self, src_ip: bytes, dst_ip: bytes, segment: bytes, now: float) -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6

        self.seen += 1
        seg = TCP(segment)
        if seg.flags.R:
            return
        rst = TCP(sport=seg.dport, dport=seg.sport, flags="RA", seq=0, ack=seg.seq + 1)
        net = IP if len(src_ip) == 4 else IPv6
        src, dst = (str(ip_address(a)) for a in (dst_ip, src_ip))
        self.out.append((dst_ip, src_ip, bytes(net(bytes(net(src=src, dst=dst) / rst))[TCP])))

    def poll(self, now: float) -> list[tuple[bytes, bytes, bytes]]:
        out, self.out = self.out, []
        return out

    def poll_at(self) -> float | None:
        return 0.0 if self.out else None
