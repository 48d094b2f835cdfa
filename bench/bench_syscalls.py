"""Micro-benchmark: per-datagram socket calls against batched ones, on loopback (issue 14).

Times, per 148-byte datagram (a sealed 64-byte frame) in batches of ``--batch``:

* send: ``sendto`` each; ``send`` each on a connected socket (no address to parse, the route
  cached in the socket); one ``sendmsg`` with ``UDP_SEGMENT`` per batch (what
  :meth:`atenet.transport.udp.UdpSocket.flush` does); ``sendmmsg`` through ctypes with
  preallocated ``mmsghdr``/``iovec`` arrays (:mod:`atenet.transport.mmsg`);
* receive: ``recvmsg`` each, against ``recvmmsg`` through ctypes into preallocated buffers;
* TAP-style read: ``os.read(fd, 65600)`` (a fresh 64 KiB buffer shrunk per read) against
  ``os.readv`` into one preallocated buffer plus a copy of the bytes read.

Warm loops on an idle socket pair: the Python and syscall cost without the rest of the path.
Medians of ``--repeat`` runs. ``python bench/bench_syscalls.py``; no root needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmsg  # bench/mmsg.py: measured, not used by atenet

SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SIZE = 148


def pair(gro: bool = False) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    if gro:
        rx.setsockopt(SOL_UDP, UDP_GRO, 1)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return tx, rx, rx.getsockname()


def drain(rx: socket.socket) -> int:
    n = 0
    while True:
        try:
            rx.recv(65536)
            n += 1
        except BlockingIOError:
            return n


def bench_send(kind: str, batch: int, rounds: int) -> float:
    tx, rx, addr = pair()
    packets = [os.urandom(SIZE) for _ in range(batch)]
    sender = mmsg.Sender(tx) if kind == "sendmmsg" else None
    if kind == "send":
        tx.connect(addr)
    gso = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", SIZE))]
    took = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        if kind == "sendto":
            for p in packets:
                tx.sendto(p, addr)
        elif kind == "send":
            for p in packets:
                tx.send(p)
        elif kind == "gso":
            tx.sendmsg(packets, gso, 0, addr)
        else:
            assert sender is not None
            sender.send([(p, addr) for p in packets])
        took += time.perf_counter() - start
        drain(rx)  # not timed: the same for every kind
    tx.close()
    rx.close()
    return 1e6 * took / (rounds * batch)


def bench_recv(kind: str, batch: int, rounds: int) -> float:
    tx, rx, addr = pair()
    packets = [os.urandom(SIZE) for _ in range(batch)]
    receiver = mmsg.Receiver(rx, batch, 2048) if kind == "recvmmsg" else None
    took = 0.0
    for _ in range(rounds):
        for p in packets:
            tx.sendto(p, addr)
        start = time.perf_counter()
        if receiver is None:
            recvmsg = rx.recvmsg
            got = 0
            while True:
                try:
                    recvmsg(65535, 32)
                    got += 1
                except BlockingIOError:
                    break
        else:
            got = 0
            while True:
                batch_got = receiver.receive()
                if not batch_got:
                    break
                assert [d for d, _, _ in batch_got] == packets[got : got + len(batch_got)]
                got += len(batch_got)
        took += time.perf_counter() - start
        assert got == batch, (kind, got)
    tx.close()
    rx.close()
    return 1e6 * took / (rounds * batch)


def bench_read(kind: str, batch: int, rounds: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    fd = b.fileno()
    frame = os.urandom(64)
    buf = bytearray(65600)
    view = memoryview(buf)
    took = 0.0
    for _ in range(rounds):
        for _ in range(batch):
            a.send(frame)
        start = time.perf_counter()
        frames = []
        try:
            if kind == "read":
                for _ in range(batch + 1):
                    frames.append(os.read(fd, 65600))
            else:
                for _ in range(batch + 1):
                    n = os.readv(fd, [buf])
                    frames.append(bytes(view[:n]))
        except BlockingIOError:
            pass
        took += time.perf_counter() - start
        assert len(frames) == batch
    a.close()
    b.close()
    return 1e6 * took / (rounds * batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"load {Path('/proc/loadavg').read_text().split()[0]}, batch {args.batch}, "
          f"mmsg via libc: {mmsg.available()}")  # fmt: skip
    cases = [
        ("send", "sendto", bench_send),
        ("send", "send", bench_send),
        ("send", "gso", bench_send),
        ("send", "sendmmsg", bench_send),
        ("recv", "recvmsg", bench_recv),
        ("recv", "recvmmsg", bench_recv),
        ("read", "read", bench_read),
        ("read", "readv", bench_read),
    ]
    times: dict[str, list[float]] = {kind: [] for _, kind, _ in cases}
    for _ in range(args.repeat):  # interleaved: every case once per repeat
        for _, kind, fn in cases:
            times[kind].append(fn(kind, args.batch, args.rounds))
    for what, kind, _ in cases:
        t = times[kind]
        print(f"{what:5} {kind:9} {statistics.median(t):6.2f} µs/datagram "
              f"({min(t):.2f}-{max(t):.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
