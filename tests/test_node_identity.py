"""Issue 9 items 10 and 11 with real `atenet run` processes on loopback: a second process of
the same node identity refuses to start, and client churn within the membership grace writes no
member events into the chain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import time
from pathlib import Path

from atenet.client.core import ClientCore
from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN
from tests.support.chains import make_world
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


async def async_connect(port: int, token: AccessToken) -> tuple[ClientCore, socket.socket]:
    """A client session over real UDP to an in-process node (the loop must keep running)."""
    client = ClientCore(token, time.time_ns())
    client.endpoints = [("127.0.0.1", port)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    deadline = time.monotonic() + 15
    while client.config is None:
        assert time.monotonic() < deadline, "no welcome"
        for packet in client.tick(time.time()):
            sock.sendto(packet, client.node)
        await asyncio.sleep(0.05)
        with contextlib.suppress(BlockingIOError):
            while True:
                client.receive(sock.recv(65536), time.time())
    return client, sock


async def test_a_clone_on_another_host_yields_to_the_running_node(tmp_path: Path, caplog) -> None:
    """Two processes with one node key (a copied config dir elsewhere): the one started later
    reads the other's fresh heartbeat (another instance) and does not serve the network, so
    the two never seal with one sender id. Before the fix both served it."""
    from atenet.chain.sqlite_store import SqliteStore
    from atenet.deployment import NodeKey
    from atenet.node.daemon import NodeDaemon
    from tests.test_node_core import add_key

    store = SqliteStore(f"sqlite://{tmp_path / 'c.sqlite'}")
    await store.connect()
    world = await make_world(store)
    token = await add_key(world, 1)
    key = NodeKey(world.node_a.key, world.node_a.cert)
    first = NodeDaemon(store, key, world.authority, listen="127.0.0.1", udp_port=0,
                       heartbeat=0.5)  # fmt: skip
    clone = NodeDaemon(store, key, world.authority, listen="127.0.0.1", udp_port=0,
                       heartbeat=0.5)  # fmt: skip
    net = world.chain.network_id
    sock = None
    try:
        await first.start()
        _client, sock = await async_connect(first.udp_port, token)
        for _ in range(100):  # joined, and its heartbeat written
            chain = first.chains[net]
            if first.node_id in (await chain.load_latest()):
                break
            await asyncio.sleep(0.05)
        await clone.start()
        with caplog.at_level(logging.ERROR, logger="atenet.node.daemon"):
            assert await clone.ensure_network(net) is None
        assert net not in clone.core.networks
        assert any("also runs in another process" in r.getMessage() for r in caplog.records)
        assert net in first.core.networks and len(first.core.networks[net].switch) == 1
    finally:
        if sock is not None:
            sock.close()
        await clone.stop()
        await first.stop()
        await store.close()
