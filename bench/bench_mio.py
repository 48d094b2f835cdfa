"""Bulk TCP between the Linux kernel and a userspace stack on a TAP: atenet's vs pmd-pytcp.

    sudo .venv/bin/python bench/bench_mio.py                      # 3 rounds x 4 s per cell
    sudo .venv/bin/python bench/bench_mio.py --rounds 5 --seconds 6 --json out.json
    sudo .venv/bin/python bench/bench_mio.py --engines atenet-tso --profile /tmp/prof
    sudo .venv/bin/python bench/bench_mio.py --engines node,pmd --profile /tmp/prof  # a real node

What one cell measures: a kernel socket in a throwaway namespace and a stack on a TAP in the
same namespace move bulk data one way — ``rx`` (kernel sends, the stack's program reads and
discards) or ``tx`` (the stack's program sends, the kernel reads and discards and answers with
the byte count) — for ``--seconds``. Mbit/s is payload bytes over the time from the first byte
to the last (rx: EOF read; tx: the kernel's count arrived, so every byte was received); CPU is
the stack process's own user + system time over the same span (all its threads), given as
CPU-seconds per Gbit moved (= % of a core at 1 Gbit/s). The kernel's side is not charged.

Engines (each its own process, started once, rounds interleaved engine by engine):

- ``atenet``: ``atenet.stack`` (Interface + Tcp) behind the smallest single-threaded shell
  (select on the TAP, read a batch, ``receive``, let the program read/write, ``poll``, write) on
  a plain TAP: one Python pass per 1,500-byte frame both ways.
- ``atenet-tso``: the same on a vnet TAP with the stack's offloads on (``Interface(tso=True)``):
  the stack sends TCP super-frames of up to 64 KB behind a virtio-net header and takes the
  kernel's (GRO/GSO) super-frames in, as it does on a switch port that takes offloads.
- ``atenet-switch``: the TAP and the stack as two ports of an in-process ``atenet.switch``
  ``Switch``, both taking offloads — the node's switching cost on the path, without the
  overlay and the bus (the kernel host of a real node sits behind ``tok connect``).
- ``atenet-switch-seg`` (not in the default set): the same with a plain TAP port, so the switch
  cuts every super-segment of the stack into frames in Python (a port without offloads).
- ``node``: the real thing, through ONE NODE: an ``atenet run`` node (its own namespace), a
  kernel host behind ``tok connect`` (a vnet TAP in a third namespace, offloads on) and a mio
  program (``atenet.mio`` over the node's ``/mio`` WebSocket, in the node's namespace). The
  bytes cross kernel → TAP → ``tok connect`` → UDP overlay → the node's switch → the session's
  stack → the bus → the program (and back for ``tx``). CPU is the NODE process's (all its
  threads, sampled from /proc around the cell); the ``tok connect`` client's and the program's
  are given beside it (``client_cpu``, ``program_cpu`` in ``--json``). ``--profile`` records
  the node process.
- ``pmd``: pmd-pytcp 0.3.8 (GPL-3; never a dependency) in a throwaway venv (``--pmd-venv``,
  created with ``python3 -m venv`` + ``pip install pmd-pytcp==0.3.8`` when missing), through
  its own threads and asyncio socket API (bench/mio_pmd_engine.py).

The table gives per engine and direction the median over rounds and the range (min–max), plus
/proc/loadavg before and after: the machine is shared, so read the ranges. ``--profile DIR``
records the atenet engines with py-spy (from the throwaway venv) for one extra cell per
direction and prints where the time goes (self time per function).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PMD_VERSION = "0.3.8"
ENGINES = ("atenet", "atenet-tso", "atenet-switch", "atenet-switch-seg", "node", "pmd")
DEFAULT_ENGINES = ("atenet", "atenet-tso", "atenet-switch", "node", "pmd")
SUBNETS = {"atenet": "10.79.1", "atenet-tso": "10.79.3", "pmd": "10.79.2",
           "atenet-switch": "10.79.4", "atenet-switch-seg": "10.79.5"}  # fmt: skip
TAPS = {"atenet": "mio0", "atenet-tso": "mio1", "pmd": "mio2", "atenet-switch": "mio3",
        "atenet-switch-seg": "mio4"}  # fmt: skip
MODES = {"atenet": "plain", "atenet-tso": "tso", "atenet-switch": "switch",
         "atenet-switch-seg": "switch-seg"}  # fmt: skip


# ------------------------------------------------------------------ the atenet engine process


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _kernel_sends(host: Any, ip: str, port: int, seconds: float) -> None:
    """The kernel side of an rx cell: a socket in ``host``'s namespace sends to the stack for
    ``seconds``, half-closes and waits for the stack's close."""
    sock = host.call(socket.create_connection, (ip, port), 10)
    sock.settimeout(seconds * 20 + 30)
    block = bytes(1 << 18)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1 << 16):
        pass
    sock.close()


class AtenetEngine:
    """The stack behind a single-threaded TAP shell: what a mio session does, minus the bus.

    ``mode``: ``plain`` (plain TAP), ``tso`` (vnet TAP, offloads both ways), ``switch`` (the
    TAP and the stack are two ports of an in-process ``atenet.switch.Switch``, both taking
    offloads: super-frames cross it whole) or ``switch-seg`` (the TAP port takes no offloads,
    so the switch cuts every super-segment of the stack into frames in Python).
    """

    def __init__(self, name: str, address: str, mode: str) -> None:
        from ipaddress import IPv4Interface

        from atenet.offload import VNET_HDR_LEN, is_offloaded
        from atenet.stack import Interface
        from atenet.stack.tcp import Tcp
        from atenet.transport.tap import TapDevice

        self.mode = mode
        self.tso = mode != "plain"
        self.tap = TapDevice.open(name, vnet_hdr=mode in ("tso", "switch"))
        self.tcp = Tcp(mss=1460, recv_buffer=1 << 20, send_buffer=1 << 20)
        self.iface = Interface(
            bytes.fromhex("02a7e0000011"), 1500, ipv4=IPv4Interface(address), tcp=self.tcp,
            tso=self.tso,
        )  # fmt: skip
        self.fd = self.tap.fileno()
        self.switch = None
        self._is_offloaded, self._hdr = is_offloaded, VNET_HDR_LEN
        if mode.startswith("switch"):
            self._make_switch()

    def _make_switch(self) -> None:
        from atenet.switch.core import Port, Switch

        engine = self

        class TapPort(Port):
            def deliver(self, frame: bytes) -> None:
                engine.tap.write(frame)  # behind an all-zero header on a vnet TAP

            def deliver_packet(self, packet: bytes) -> None:
                engine.tap.write_packet(packet)

        class StackPort(Port):
            def deliver(self, frame: bytes) -> None:
                engine.iface.receive(frame, engine.now)

            def deliver_packet(self, packet: bytes) -> None:
                engine.iface.receive_packet(packet, engine.now)

        self.now = time.monotonic()
        self.switch = Switch()
        self.tap_port = TapPort("tap", "tap")
        self.tap_port.offload = self.tap.vnet_hdr
        self.stack_port = StackPort("mio", "mio")
        self.stack_port.offload = True
        self.switch.add("tap", self.tap_port)
        self.switch.add("mio", self.stack_port)

    def _turn(self, timeout: float) -> None:
        iface = self.iface
        at = iface.poll_at()
        if at is not None:
            timeout = min(timeout, max(0.0, at - time.monotonic()))
        ready, _, _ = select.select([self.fd], [], [], timeout)
        now = time.monotonic()
        if ready and self.switch is not None:
            self.now = now
            sw = self.switch
            sw.age(now)
            if self.tap.vnet_hdr:
                for packet in self.tap.read_batch():
                    if self._is_offloaded(packet):
                        sw.packet_from_local(self.tap_port, packet)
                    else:
                        sw.from_local(self.tap_port, packet[self._hdr :])
            else:
                for frame in self.tap.read_batch():
                    sw.from_local(self.tap_port, frame)
        elif ready:
            if self.tso:
                for packet in self.tap.read_batch():
                    iface.receive_packet(packet, now)
            else:
                for frame in self.tap.read_batch():
                    iface.receive(frame, now)

    def _flush(self, now: float) -> None:
        if self.switch is not None:
            self.now = now
            sw, port = self.switch, self.stack_port
            for packet in self.iface.poll_packets(now):
                if self._is_offloaded(packet):
                    sw.packet_from_local(port, packet)
                else:
                    sw.from_local(port, packet[self._hdr :])
        elif self.tso:
            for packet in self.iface.poll_packets(now):
                self.tap.write_packet(packet)
        else:
            for frame in self.iface.poll(now):
                self.tap.write(frame)

    def rx(self, port: int) -> dict[str, float]:
        lst = self.tcp.listen(None, port)
        print(json.dumps({"listening": port}), flush=True)
        conn = None
        got = 0
        t0 = c0 = None
        while True:
            self._turn(0.5)
            if conn is None:
                conn = lst.accept()
            if conn is not None:
                while True:
                    n = len(conn.recv(1 << 20))
                    if not n:
                        break
                    if t0 is None:
                        t0, c0 = time.monotonic(), _cpu()
                    got += n
                if conn.eof or conn.error is not None:
                    t1, c1 = time.monotonic(), _cpu()
                    conn.close()
                    self._flush(time.monotonic())
                    break
            self._flush(time.monotonic())
        lst.close()
        return {"bytes": got, "seconds": t1 - (t0 or t1), "cpu": c1 - (c0 or c1)}

    def tx(self, host: str, port: int, seconds: float) -> dict[str, float]:
        from ipaddress import ip_address

        now = time.monotonic()
        local = self.iface.ipv4.ip.packed  # type: ignore[union-attr]
        conn = self.tcp.connect(local, ip_address(host).packed, port, now)
        block = memoryview(bytes(1 << 20))
        t0 = c0 = None
        receipt = b""
        while True:
            self._turn(0.5 if t0 is None or conn.fin_pending else 0.0)
            if conn.error is not None:
                raise OSError(conn.error, "tx connection failed")
            if conn.state == "ESTABLISHED" and not conn.fin_pending:
                if t0 is None:
                    t0, c0 = time.monotonic(), _cpu()
                if time.monotonic() - t0 < seconds:
                    conn.send(block[: conn.send_space])
                else:
                    conn.shutdown()
            receipt += conn.recv(8)
            if len(receipt) >= 8 or conn.eof:
                t1, c1 = time.monotonic(), _cpu()
                conn.close()
                self._flush(time.monotonic())
                break
            self._flush(time.monotonic())
        got = int.from_bytes(receipt[:8], "big") if len(receipt) >= 8 else 0
        return {"bytes": got, "seconds": t1 - (t0 or t1), "cpu": c1 - (c0 or c1)}

    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._turn(0.05)
            self._flush(time.monotonic())


def engine_main(name: str, address: str, mode: str) -> None:
    """``--engine``: serve commands from stdin, one JSON line per answer on stdout."""
    engine = AtenetEngine(name, address, mode)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        if cmd[0] == "wait":
            engine.wait(float(cmd[1]))
            print(json.dumps({"ok": True}), flush=True)
        elif cmd[0] == "rx":
            print(json.dumps(engine.rx(int(cmd[1]))), flush=True)
        elif cmd[0] == "tx":
            print(json.dumps(engine.tx(cmd[1], int(cmd[2]), float(cmd[3]))), flush=True)


# ------------------------------------------------------------------ the mio program (node engine)


async def _mio_program(url: str, token: str) -> None:
    """``--mio-program``: a mio session on the node; commands on stdin, JSON lines out."""
    import asyncio

    from atenet.mio import client

    for _ in range(200):  # the node learns of a new key by following the chain
        try:
            net = await client.connect(url, token)
            break
        except client.MioError as exc:
            if "forbidden" not in str(exc):
                raise
            await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))
    async with net:
        print(json.dumps({"address": str(net.address)}), flush=True)
        while cmd := (await lines.get()).split():
            if cmd[0] == "quit":
                break
            if cmd[0] == "rx":
                done: asyncio.Future[dict[str, float]] = loop.create_future()

                async def sink(
                    reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter,
                    done: asyncio.Future[dict[str, float]] = done,
                ) -> None:
                    got, t0, c0 = 0, None, None
                    while chunk := await reader.read(1 << 20):
                        if t0 is None:
                            t0, c0 = time.monotonic(), _cpu()
                        got += len(chunk)
                    t1, c1 = time.monotonic(), _cpu()
                    writer.close()
                    done.set_result({"bytes": got, "seconds": t1 - (t0 or t1),
                                     "program_cpu": c1 - (c0 or c1)})  # fmt: skip

                server = await net.start_server(sink, port=int(cmd[1]))
                print(json.dumps({"listening": int(cmd[1])}), flush=True)
                result = await done
                server.close()
                print(json.dumps(result), flush=True)
            elif cmd[0] == "tx":
                seconds = float(cmd[3])
                reader, writer = await net.open_connection(cmd[1], int(cmd[2]), timeout=10)
                block = bytes(1 << 18)
                t0, c0 = time.monotonic(), _cpu()
                while time.monotonic() - t0 < seconds:
                    writer.write(block)
                    await writer.drain()
                writer.write_eof()
                receipt = await reader.readexactly(8)
                t1, c1 = time.monotonic(), _cpu()
                writer.close()
                print(json.dumps({"bytes": int.from_bytes(receipt, "big"), "seconds": t1 - t0,
                                  "program_cpu": c1 - c0}), flush=True)  # fmt: skip


def read_line(proc: subprocess.Popen[str], timeout: float, who: str) -> str:
    """One line from ``proc``'s stdout within ``timeout`` seconds; ``who`` names it in errors."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{who} gave no answer within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{who} exited (rc {proc.poll()})")
    return line


def _proc_cpu(pid: int) -> float:
    """User + system CPU-seconds of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NodeEngine:
    """kernel (``tok connect`` TAP host) ↔ one ``atenet run`` node ↔ a mio program.

    Same interface as :class:`Engine` (``rx``/``tx``/``close``, ``proc`` is the node's, for
    py-spy). Built on the test harness (tests/support/overlay.py): an owner, one network, one
    node, one client, one exported key for the program.
    """

    kind = "node"

    def __init__(self, lab: Any, root: Path) -> None:
        from tests.support.overlay import HTTP_PORT, Overlay

        self.overlay = Overlay(lab, root)
        self.node = self.overlay.add_node("n1")
        self.client = self.overlay.add_client("k1", ["n1"])
        self.host = self.client.host
        self.kernel_ip = self.client.ipv4.split("/")[0]
        _key, token = self.overlay.export_key("bench-mio", ["n1"])
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        self.program = self.node.host.popen(
            [sys.executable, str(Path(__file__).resolve()), "--mio-program",
             f"http://127.0.0.1:{HTTP_PORT}", token],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1,
        )  # fmt: skip
        self.proc = self.node.proc
        self.stack_ip = json.loads(self._line(60))["address"].split("/")[0]
        self.host.ping(self.stack_ip, 3, 5.0)  # ARP both ways before the first cell

    def _line(self, timeout: float) -> str:
        return read_line(self.program, timeout, "node: the mio program")

    def _send(self, cmd: str) -> None:
        assert self.program.stdin is not None
        self.program.stdin.write(cmd + "\n")
        self.program.stdin.flush()

    def _cpus(self) -> tuple[float, float]:
        assert self.node.proc is not None and self.client.proc is not None
        return _proc_cpu(self.node.proc.pid), _proc_cpu(self.client.proc.pid)

    def _charge(self, result: dict[str, Any], before: tuple[float, float]) -> dict[str, Any]:
        node, client = self._cpus()
        result["cpu"] = node - before[0]
        result["client_cpu"] = client - before[1]
        return result

    def rx(self, port: int, seconds: float) -> dict[str, Any]:
        """Kernel → node → mio for ``seconds``."""
        self._send(f"rx {port}")
        json.loads(self._line(10))  # listening
        before = self._cpus()
        _kernel_sends(self.host, self.stack_ip, port, seconds)
        return self._charge(json.loads(self._line(seconds * 20 + 30)), before)

    def tx(self, port: int, seconds: float) -> dict[str, Any]:
        """mio → node → kernel for ``seconds``; the kernel answers with the byte count."""
        srv = self.host.call(socket.create_server, (self.kernel_ip, port))
        srv.settimeout(30)

        def sink() -> None:
            s, _ = srv.accept()
            s.settimeout(seconds * 20 + 30)
            n = 0
            while chunk := s.recv(1 << 20):
                n += len(chunk)
            s.sendall(n.to_bytes(8, "big"))
            s.close()

        t = threading.Thread(target=sink, daemon=True)
        t.start()
        before = self._cpus()
        try:
            self._send(f"tx {self.kernel_ip} {port} {seconds}")
            result = json.loads(self._line(seconds * 20 + 30))
        finally:
            t.join(10)
            srv.close()
        return self._charge(result, before)

    def close(self) -> None:
        if self.program.poll() is None:
            try:
                self._send("quit")
                self.program.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.program.kill()
                self.program.wait()


# ------------------------------------------------------------------ the orchestrator (root)


def ensure_pmd_venv(venv: Path) -> Path:
    """The throwaway venv's python with pmd-pytcp (and py-spy) in it; made when missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import pmd_pytcp; print(pmd_pytcp.__version__)"],
                           capture_output=True, text=True)  # fmt: skip
    if probe.stdout.strip() != PMD_VERSION:
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"pmd-pytcp=={PMD_VERSION}",
                        "py-spy"], check=True)  # fmt: skip
    return python


class Engine:
    """One engine process in the lab namespace and the kernel end of its TAP."""

    def __init__(self, kind: str, host: Any, python: Path) -> None:
        self.kind = kind
        self.host = host
        net = SUBNETS[kind]
        self.kernel_ip, self.stack_ip = f"{net}.1", f"{net}.2"
        tap = TAPS[kind]
        if kind == "pmd":
            cmd = [str(python), str(REPO / "bench" / "mio_pmd_engine.py"), tap,
                   f"{self.stack_ip}/24"]  # fmt: skip
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", tap,
                   f"{self.stack_ip}/24", "--mode", MODES[kind]]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        self.proc = host.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env, bufsize=1)  # fmt: skip
        self._expect("ready", timeout=60)
        host.run(f"ip addr add {self.kernel_ip}/24 dev {tap}")
        host.run(f"ip link set {tap} up")
        self.command("wait 6" if kind == "pmd" else "wait 0.5", timeout=30)  # pmd: ~5 s of DAD

    def _expect(self, word: str, timeout: float) -> None:
        line = self._line(timeout)
        if line.strip() != word:
            raise RuntimeError(f"{self.kind}: expected {word!r}, got {line!r}")

    def _line(self, timeout: float) -> str:
        return read_line(self.proc, timeout, f"{self.kind}: the engine")

    def command(self, cmd: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line(timeout))

    def rx(self, port: int, seconds: float) -> dict[str, Any]:
        """Kernel → stack for ``seconds``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"rx {port}\n")
        self.proc.stdin.flush()
        json.loads(self._line(10))  # listening
        _kernel_sends(self.host, self.stack_ip, port, seconds)
        return json.loads(self._line(seconds * 20 + 30))

    def tx(self, port: int, seconds: float) -> dict[str, Any]:
        """Stack → kernel for ``seconds``; the kernel answers with the byte count it read."""
        srv = self.host.call(socket.create_server, (self.kernel_ip, port))
        srv.settimeout(30)
        counted: list[int] = []

        def sink() -> None:
            s, _ = srv.accept()
            s.settimeout(seconds * 20 + 30)
            n = 0
            while chunk := s.recv(1 << 20):
                n += len(chunk)
            s.sendall(n.to_bytes(8, "big"))
            s.close()
            counted.append(n)

        t = threading.Thread(target=sink, daemon=True)
        t.start()
        try:
            result = self.command(f"tx {self.kernel_ip} {port} {seconds}", seconds * 20 + 30)
        finally:
            t.join(10)
            srv.close()
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _profile(engine: Engine, direction: str, seconds: float, port: int, out: Path,
             pyspy: Path) -> dict[str, Any]:  # fmt: skip
    """One cell with py-spy recording the engine; the raw (collapsed) stacks land in ``out``."""
    rec = subprocess.Popen([str(pyspy), "record", "-p", str(engine.proc.pid), "-r", "250",
                            "-f", "raw", "-o", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.0)
    try:
        result = engine.rx(port, seconds) if direction == "rx" else engine.tx(port, seconds)
    finally:
        rec.send_signal(2)
        rec.wait(30)
    return result


def summarise_profile(path: Path, top: int = 18) -> list[tuple[str, float]]:
    """Self-time share per function from py-spy's collapsed stacks (py-spy skips idle)."""
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[_short(frames[-1])] += int(count)
    total = sum(own.values()) or 1
    return [(name, 100 * n / total) for name, n in own.most_common(top)]


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})"


def _fmt(values: list[float], digits: int = 0) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", nargs=2, metavar=("TAP", "ADDRESS"), help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    ap.add_argument("--mio-program", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    ap.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                    help=f"comma-separated, from {', '.join(ENGINES)}")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="send time per cell")
    ap.add_argument("--pmd-venv", type=Path, default=Path("/tmp/pmdvenv"))
    ap.add_argument("--profile", type=Path, help="directory for py-spy profiles of atenet")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    if args.engine:
        engine_main(args.engine[0], args.engine[1], args.mode)
        return 0
    if args.mio_program:
        import asyncio

        asyncio.run(_mio_program(*args.mio_program))
        return 0
    if os.geteuid() != 0:
        print("bench_mio: needs root (network namespaces, TAP devices)", file=sys.stderr)
        return 2
    from tests.support.netns import Lab

    kinds = [k.strip() for k in args.engines.split(",") if k.strip()]
    unknown = set(kinds) - set(ENGINES)
    if unknown:
        print(f"bench_mio: unknown engine(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    python = ensure_pmd_venv(args.pmd_venv) if "pmd" in kinds or args.profile else None
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    profiles: dict[str, list[tuple[str, float]]] = {}
    port = 20000
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="bench-mio-") as tmp:
        host = lab.add_host("m")
        engines: dict[str, Any] = {}
        try:
            for kind in kinds:
                if kind == "node":
                    engines[kind] = NodeEngine(lab, Path(tmp))
                else:
                    engines[kind] = Engine(kind, host, python or Path(sys.executable))
            for rnd in range(args.rounds):
                for kind in kinds:
                    for direction in ("rx", "tx"):
                        port += 1
                        eng = engines[kind]
                        r = eng.rx(port, args.seconds) if direction == "rx" else eng.tx(
                            port, args.seconds)  # fmt: skip
                        r["mbps"] = r["bytes"] * 8 / r["seconds"] / 1e6 if r["seconds"] else 0.0
                        gbit = r["bytes"] * 8 / 1e9
                        r["cpu_per_gbit"] = r["cpu"] / gbit if gbit else float("nan")
                        r["round"] = rnd
                        results.setdefault((kind, direction), []).append(r)
                        extra = "".join(
                            f", {what} {r[what] / gbit:.2f}"
                            for what in ("client_cpu", "program_cpu") if what in r and gbit
                        )  # fmt: skip
                        print(f"round {rnd} {kind:10} {direction}: {r['mbps']:7.1f} Mbit/s, "
                              f"{r['cpu_per_gbit']:.2f} CPU-s/Gbit{extra}", flush=True)  # fmt: skip
            if args.profile:
                assert python is not None
                args.profile.mkdir(parents=True, exist_ok=True)
                pyspy = python.parent / "py-spy"
                for kind in [k for k in kinds if k != "pmd"]:
                    for direction in ("rx", "tx"):
                        port += 1
                        out = args.profile / f"{kind}-{direction}.txt"
                        _profile(engines[kind], direction, args.seconds, port, out, pyspy)
                        profiles[f"{kind} {direction}"] = summarise_profile(out)
        finally:
            for eng in engines.values():
                eng.close()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print()
    print(f"loadavg before {' '.join(load_before)}, after {' '.join(load_after)}; "
          f"{args.rounds} rounds x {args.seconds:g} s, median (min–max)")  # fmt: skip
    print("| engine | direction | Mbit/s | CPU-s per Gbit | MB moved |")
    print("|---|---|---|---|---|")
    for (kind, direction), rs in results.items():
        print(f"| {kind} | {direction} | {_fmt([r['mbps'] for r in rs], 1)} | "
              f"{_fmt([r['cpu_per_gbit'] for r in rs], 2)} | "
              f"{_fmt([r['bytes'] / 1e6 for r in rs])} |")  # fmt: skip
    if "pmd" in kinds:
        for kind in [k for k in kinds if k != "pmd"]:
            for direction in ("rx", "tx"):
                ours = [r["mbps"] for r in results.get((kind, direction), [])]
                base = [r["mbps"] for r in results.get(("pmd", direction), [])]
                if ours and base and statistics.median(base):
                    ratio = statistics.median(ours) / statistics.median(base)
                    print(f"{kind} {direction}: {ratio:.1f}x pmd-pytcp")
    for name, rows in profiles.items():
        print(f"\nwhere the time goes, {name} (self time, % of samples):")
        for func, share in rows:
            print(f"  {share:5.1f} %  {func}")
    if args.json:
        args.json.write_text(json.dumps({
            "load_before": load_before, "load_after": load_after,
            "results": {f"{k} {d}": v for (k, d), v in results.items()},
            "profiles": profiles,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
