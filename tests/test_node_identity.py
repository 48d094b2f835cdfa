"""Issue 9 items 10 and 11 with real `atenet run` processes on loopback: a second process of
the same node identity refuses to start, and client churn within the membership grace writes no
member events into the chain."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from atenet.client.core import ClientCore
from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN
from tests.support.loopback_node import LoopbackNode, free_port


def test_second_process_of_the_same_node_refuses_to_start(tmp_path: Path) -> None:
    with LoopbackNode(tmp_path / "home") as node:
        proc = subprocess.run(
            [VENV_BIN / "atenet", "run", "--listen", "127.0.0.1",
             "--udp-port", str(free_port(socket.SOCK_DGRAM)), "--http-port", "0"],
            env=node.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        node_id = node.status()["node"]
        assert any("is already running" in ln and node_id in ln for ln in lines), proc.stderr
        assert "Traceback" not in proc.stderr
        assert node.proc is not None and node.proc.poll() is None  # the first one is unharmed


def connect_and_leave(node: LoopbackNode, token: AccessToken) -> None:
    """One client session over real UDP: hello (challenge, bound hello), welcome, then bye."""
    client = ClientCore(token, time.time_ns())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        deadline = time.monotonic() + 15
        while client.config is None:
            assert time.monotonic() < deadline, "no welcome"
            for packet in client.tick(time.time()):
                sock.sendto(packet, client.node)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            client.receive(data, time.time())
        sock.sendto(client.control("bye", time.time()), client.node)


def member_events(node: LoopbackNode) -> list[str]:
    lines = json.loads(node.cli("tok", "log", node.network, "--json"))
    return [line["kind"] for line in lines if line["kind"].startswith("member_")]


def test_reconnects_within_the_grace_write_no_member_events(tmp_path: Path) -> None:
    """Before the fix every first/last client appended member_join/member_leave."""
    with LoopbackNode(tmp_path / "home", "lan", "--member-grace", "300") as node:
        token = AccessToken.decode(node.token())
        connect_and_leave(node, token)
        deadline = time.monotonic() + 10
        while member_events(node) != ["member_join"]:
            assert time.monotonic() < deadline, member_events(node)
            time.sleep(0.1)
        for _ in range(4):
            connect_and_leave(node, token)
            time.sleep(0.3)
        time.sleep(1.0)  # time for a leave/join to be written, if any were
        assert member_events(node) == ["member_join"]
        assert node.network_status()["member"] is True
    # On SIGTERM the node still leaves.
    assert member_events(node) == ["member_join", "member_leave"]
