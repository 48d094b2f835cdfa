"""Faults, with real processes: the chain store killed and restarted under traffic, a node killed
with SIGKILL and restarted, and a store whose disk is full or read-only.

What must hold (issue 9, "A fault suite"):

* the data plane never waits for the store: frames keep flowing while nats-server is down, and a
  key revoked after it is back takes effect at the node within seconds;
* hosts on a node that was ``kill -9``'ed pass traffic again within seconds of its restart,
  without restarting ``tok connect``;
* a full disk or a read-only store makes ``tok`` and ``atenet`` exit with one line that says
  what is wrong and what to do, no traceback, and nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atenet.client.core import ClientCore
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.conftest import VENV_BIN, needs_root
from tests.support.loopback_node import free_port
from tests.support.nats_cluster import NatsCluster
from tests.support.netns import Lab
from tests.support.overlay import Overlay, wait_for_text


def cli(
    env: dict[str, str], prog: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / prog), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status != 0, stderr one line naming the problem (``words``), no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# ---------------------------------------------------------------------------- disk full / ro


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs of our own, unmounted in ``finally`` whatever happened."""
    with tempfile.TemporaryDirectory(prefix="atn-faults-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True
        )
        try:
            yield mnt
        finally:
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system is full (big writes, then small
    ones for the last pages)."""
    path = directory / "filler"
    with path.open("wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(size))
    return path


def home_env(home: Path) -> dict[str, str]:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    return env


def run_node(env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``atenet run`` on loopback, expected to fail at start (or be stopped at ``timeout``)."""
    return cli(
        env,
        "atenet",
        "run",
        "--listen",
        "127.0.0.1",
        "--udp-port",
        str(free_port(socket.SOCK_DGRAM)),
        "--http-port",
        str(free_port()),
        timeout=timeout,
    )


@needs_root
def test_disk_full_store_fails_with_one_line_that_says_free_space_and_loses_nothing() -> None:
    with tmpfs("3m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        filler = fill(mnt)

        create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert_one_line_error(create, "disk is full", "free some space")
        node = run_node(env)
        assert_one_line_error(node, "disk is full", "free some space")

        filler.unlink()
        listing = cli(env, "tok", "network", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert [n["name"] for n in json.loads(listing.stdout)] == ["first"]
        again = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert again.returncode == 0, again.stderr


@needs_root
def test_disk_full_under_a_running_node_fails_the_owner_command_cleanly() -> None:
    """The node holds the store open (its WAL files exist), so SQLite gets further before the
    disk refuses: the append itself fails ("database or disk is full")."""
    with tmpfs("3m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        log = mnt.parent / "node.log"
        with log.open("wb") as out:
            node = subprocess.Popen(
                [
                    str(VENV_BIN / "atenet"),
                    "-v",
                    "run",
                    "--listen",
                    "127.0.0.1",
                    "--udp-port",
                    str(free_port(socket.SOCK_DGRAM)),
                    "--http-port",
                    str(free_port()),
                ],
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            wait_for_text(node, log, "serving on udp", 20)
            filler = fill(mnt)
            key = cli(
                env, "tok", "key", "export", "first", "--label", "x", "--node", "127.0.0.1:4799"
            )
            create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
            for proc in (key, create):
                assert_one_line_error(proc, "disk is full", "free some space")
            assert node.poll() is None, "the node died of a full disk"
            filler.unlink()
            again = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
            assert again.returncode == 0, again.stderr
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


@needs_root
def test_read_only_store_fails_with_one_line_that_says_make_it_writable() -> None:
    with tmpfs("16m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert_one_line_error(create, "read-only", "make it writable")
        node = run_node(env)
        assert_one_line_error(node, "read-only", "make it writable")
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        listing = cli(env, "tok", "network", "list", "--json")
        assert [n["name"] for n in json.loads(listing.stdout)] == ["first"], listing.stderr


# ---------------------------------------------------------------------------- store killed


class LoopClient:
    """A `tok connect` host without the TAP: the real sans-I/O ClientCore over a UDP socket on
    loopback, its counters following wall-clock time as tok's do."""

    def __init__(self, token: str, mac_last: int) -> None:
        self.core = ClientCore(AccessToken.decode(token), time.time_ns())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.mac = bytes([2, 0, 0, 0, 0, mac_last])
        self.frames: list[bytes] = []

    def pump(self) -> None:
        """Send due control packets; take in everything that arrived."""
        now = time.time()  # wall-clock: the core's counters and freshness follow it
        for packet in self.core.tick(now):
            self.sock.sendto(packet, self.core.node)
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            frame = self.core.datagram(data, time.time())
            if frame is not None:
                self.frames.append(frame)

    def send(self, tag: bytes) -> None:
        frame = ethernet_frame(b"\xff" * 6, self.mac, 0x88B5, tag.ljust(46))
        self.sock.sendto(self.core.seal_frame(frame), self.core.node)

    def received(self, prefix: bytes) -> int:
        return sum(1 for f in self.frames if f[14:].startswith(prefix))

    def close(self) -> None:
        self.sock.close()


def pump_all(clients: list[LoopClient], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for c in clients:
            c.pump()
        time.sleep(0.01)


def traffic(src: LoopClient, everyone: list[LoopClient], tag: bytes, count: int) -> None:
    """``count`` broadcast frames from ``src``, 20 ms apart, while every client keeps pumping."""
    for i in range(count):
        src.send(tag + b"%05d" % i)
        pump_all(everyone, 0.02)
    pump_all(everyone, 0.3)


@pytest.mark.nats
def test_store_killed_and_restarted_under_traffic(
    fresh_nats_server: NatsCluster, tmp_path: Path
) -> None:
    """nats-server SIGKILLed: frames keep flowing between two hosts; restarted: a key revoked
    afterwards stops being forwarded within seconds while the other hosts keep talking."""
    nats = fresh_nats_server
    env = home_env(tmp_path / "home") | {"ATENET_STORE": nats.url}
    assert cli(env, "atenet", "init").returncode == 0
    assert cli(env, "tok", "network", "create", "lan", "--cidr", "10.88.0.0/24").returncode == 0
    udp = free_port(socket.SOCK_DGRAM)
    tokens = []
    for label in ("a", "b", "c"):
        out = cli(
            env, "tok", "key", "export", "lan", "--label", label, "--node", f"127.0.0.1:{udp}"
        )
        assert out.returncode == 0, out.stderr
        tokens.append(out.stdout.strip())
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [
                str(VENV_BIN / "atenet"),
                "-v",
                "run",
                "--listen",
                "127.0.0.1",
                "--udp-port",
                str(udp),
                "--http-port",
                str(free_port()),
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
    a, b, c = clients = [LoopClient(t, i + 1) for i, t in enumerate(tokens)]
    try:
        wait_for_text(node, log, "serving on udp", 20)
        deadline = time.monotonic() + 20
        while any(x.core.config is None for x in clients):
            assert time.monotonic() < deadline, f"no welcome: {log.read_text()[-2000:]}"
            pump_all(clients, 0.1)
        traffic(a, clients, b"before", 50)
        assert b.received(b"before") >= 45

        nats.kill(0)
        pump_all(clients, 1.0)
        traffic(a, clients, b"down", 100)
        traffic(b, clients, b"down-b", 50)
        assert b.received(b"down") >= 90, "frames stopped while the store was down"
        assert a.received(b"down-b") >= 45
        assert node.poll() is None, "the node died with its store"

        nats.restart(0)
        pump_all(clients, 2.0)  # the node's store client reconnects on its own
        traffic(a, clients, b"up", 50)
        assert b.received(b"up") >= 45, "frames stopped after the store came back"
        revoke = cli(env, "tok", "key", "revoke", "lan", "1")
        assert revoke.returncode == 0, revoke.stderr
        revoked_at = last_new = time.monotonic()
        seen = 0
        for i in range(300):  # up to ~15 s: a's frames must stop reaching b
            a.send(b"after%05d" % i)
            pump_all(clients, 0.05)
            if b.received(b"after") > seen:
                seen, last_new = b.received(b"after"), time.monotonic()
            elif time.monotonic() - last_new > 1.5:
                break
        else:
            pytest.fail(f"the revocation never reached the node: {log.read_text()[-3000:]}")
        print(
            f"after `tok key revoke` returned, {seen} frames of the revoked key got through, "
            f"the last {last_new - revoked_at:.1f} s after it"
        )
        traffic(b, clients, b"still", 50)
        assert c.received(b"still") >= 45, "the other hosts stopped talking"
        assert "Traceback" not in log.read_text()
    finally:
        for x in clients:
            x.close()
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


# ---------------------------------------------------------------------------- node kill -9

RESUME_BOUND = 8.0
"""Seconds after a restarted node serves again by which its hosts must pass traffic: the goal
is 5 s (issue 9: tok pings every 5 s, and a host's first packet re-creates its port), plus
slack for a shared 2-core machine. The measured time is printed."""


@needs_root
def test_node_kill_9_and_restart_hosts_pass_traffic_again(tmp_path: Path) -> None:
    with Lab() as lab:
        overlay = Overlay(lab, tmp_path)
        n1 = overlay.add_node("n1")
        h1 = overlay.add_client("h1", ["n1"])
        h2 = overlay.add_client("h2", ["n1"])
        assert h1.host.ping(h2.ip4, count=3, timeout=5), "no traffic before the kill"
        assert n1.proc is not None and n1.log is not None
        os.kill(n1.proc.pid, signal.SIGKILL)
        n1.proc.wait(10)
        assert not h1.host.ping(h2.ip4, count=1, timeout=1), "traffic without a node"
        n1.log.rename(n1.log.with_suffix(".killed.log"))
        overlay.start_node(n1)  # same home, node key and port; returns once it serves
        restarted = time.monotonic()
        resumed = None
        while time.monotonic() - restarted < 20:
            if h1.host.ping(h2.ip4, count=1, timeout=0.5):
                resumed = time.monotonic() - restarted
                break
        assert resumed is not None, f"hosts never passed traffic again: {n1.log.read_text()}"
        print(f"hosts passed traffic {resumed:.1f} s after the restarted node served")
        assert resumed <= RESUME_BOUND
        # Both directions and both families, and both tok connect processes still alive.
        assert h2.host.ping(h1.ip4, count=2, timeout=3)
        assert h1.host.ping(h2.ip6, count=2, timeout=3)
        assert h1.proc is not None and h1.proc.poll() is None
        assert h2.proc is not None and h2.proc.poll() is None
