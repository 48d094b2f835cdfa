"""Issue 9 items 1 and 5 against a real `atenet run` process on loopback: datagrams captured
from a client and replayed after the node restarted open nothing and get no answer; one key
cannot hold more client sessions than the node's cap."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from atenet.client.core import ClientCore
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.conftest import VENV_BIN
from tests.support.loopback_node import LoopbackNode


class Session:
    """One client session over real UDP that keeps a copy of every datagram it sends."""

    def __init__(self, node: LoopbackNode, token: AccessToken) -> None:
        self.core = ClientCore(token, time.time_ns())
        self.core.endpoints = [("127.0.0.1", node.udp_port)]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(bytes(packet))
        self.sock.sendto(packet, self.core.node)

    def connect(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while self.core.config is None and time.monotonic() < deadline:
            for packet in self.core.tick(time.time()):
                self.send(packet)
            with contextlib.suppress(TimeoutError):
                self.core.receive(self.sock.recv(65536), time.time())
        return self.core.config is not None

    def close(self) -> None:
        self.sock.close()


def restart(node: LoopbackNode) -> None:
    """SIGTERM the node and run it again with the same home and ports (a new process)."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(10)
    started = node.log.read_text().count("serving on udp")
    with node.log.open("ab") as log:
        node.proc = subprocess.Popen(
            [VENV_BIN / "atenet", "-v", "run", "--listen", "127.0.0.1",
             "--udp-port", str(node.udp_port), "--http-port", str(node.http_port),
             *node.extra_args],
            env=node.env, stdout=log, stderr=log,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while node.log.read_text().count("serving on udp") == started:
        assert node.proc.poll() is None and time.monotonic() < deadline, node.log.read_text()
        time.sleep(0.05)


def lan_status(node: LoopbackNode) -> dict[str, Any]:
    return node.network_status()


def test_captured_datagrams_replayed_after_a_restart_open_nothing(tmp_path: Path) -> None:
    """Before the fix the replayed hello got a welcome at the attacker's address and a port
    was created there; the replayed frames were switched into the LAN."""
    with LoopbackNode(tmp_path / "home") as node:
        token = AccessToken.decode(node.token())
        victim = Session(node, token)
        try:
            assert victim.connect(15)
            frame = ethernet_frame(b"\xff" * 6, b"\x02" + bytes(5), 0x88B5, b"captured")
            for _ in range(3):
                victim.send(victim.core.seal_frame(frame))
        finally:
            victim.close()
        captured = victim.sent
        restart(node)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        attacker.settimeout(0.5)
        try:
            answers = []
            for _round in range(2):  # the first packets may only make the node load the network
                for packet in captured:
                    attacker.sendto(packet, ("127.0.0.1", node.udp_port))
                time.sleep(1.0)
                try:
                    while True:
                        answers.append(attacker.recv(65536))
                except TimeoutError:
                    pass
            assert answers == []  # no welcome, no challenge: nothing at all
            status = lan_status(node)
            assert status["ports"] == []
            assert status["drops"].get("stale", 0) >= len(captured)
        finally:
            attacker.close()
        # A real client still connects to the restarted node.
        again = Session(node, token)
        try:
            assert again.connect(15)
        finally:
            again.close()


def test_one_key_gets_no_more_sessions_than_the_cap(tmp_path: Path) -> None:
    """Before the fix one key holder created 20,001 ports."""
    with LoopbackNode(tmp_path / "home", "lan", "--max-ports-per-key", "2") as node:
        token = AccessToken.decode(node.token())
        sessions = [Session(node, token) for _ in range(4)]
        try:
            assert sessions[0].connect(15) and sessions[1].connect(15)
            assert not sessions[2].connect(3) and not sessions[3].connect(1)
            status = lan_status(node)
            assert len(status["ports"]) == 2
            assert status["drops"]["key_port_limit"] >= 2
        finally:
            for s in sessions:
                s.close()
