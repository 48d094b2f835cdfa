"""The HTTP port under abuse and who sees what (issue 9, items 6 and 8), on a real node process
inside a lab namespace, so requests can come from a non-loopback address (the namespace's own
veth address) as well as from loopback.

* Half-open connections (a partial request head, then nothing) are closed after the head
  timeout; a normal request is answered meanwhile; a source address over its cap of pending
  connections is refused at once; the node raised its own open-files limit.
* Operator data (/api/status, /metrics) only to loopback or the operator token; the page's
  status pushes carry no client's underlay address and no store URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from atenet.node.guard import HEAD_TIMEOUT, PENDING_PER_ADDRESS
from atenet.overlay.seal import TYPE_CONTROL, PacketKey, Sealer
from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN, needs_root
from tests.support.netns import Host, Lab
from tests.test_websocket import hello

pytestmark = needs_root

HTTP_PORT = 8080
UDP_PORT = 4799
PARTIAL_HEAD = b"GET /api/status HTTP/1.1\r\nHost: node\r\nX-Slow: "


class NsNode:
    """``atenet run`` in a lab host's namespace, HTTP on every address of that namespace."""

    def __init__(self, host: Host, home: Path) -> None:
        self.host = host
        self.home = home
        self.env = os.environ | {"ATENET_HOME": str(home)}
        self.env.pop("ATENET_STORE", None)
        self.log = home / "node.log"
        self.proc: subprocess.Popen[Any] | None = None

    def cli(self, prog: str, *args: str) -> str:
        proc = subprocess.run([VENV_BIN / prog, *args], env=self.env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def start(self) -> None:
        self.home.mkdir(parents=True)
        self.cli("atenet", "init")
        self.cli("tok", "network", "create", "lan", "--cidr", "10.88.0.0/24")
        with self.log.open("ab") as log:
            self.proc = self.host.popen(
                [VENV_BIN / "atenet", "-v", "run", "--listen", self.host.ip,
                 "--udp-port", str(UDP_PORT), "--http-listen", "0.0.0.0",
                 "--http-port", str(HTTP_PORT)],
                env=self.env, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while "serving on udp" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def operator_token(self) -> str:
        return (self.home / "config" / "operator-token").read_text().strip()

    def get(self, path: str, via: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """GET ``path`` from inside the namespace, to the node's address ``via`` (the source
        address is then ``via`` too: loopback for 127.0.0.1, the veth address otherwise)."""

        def fetch() -> tuple[int, str]:
            request = urllib.request.Request(f"http://{via}:{HTTP_PORT}{path}",
                                             headers=headers or {})  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()

        return self.host.call(fetch)

    def connect(self, via: str, count: int) -> list[socket.socket]:
        """``count`` TCP connections from inside the namespace that send a partial head."""

        def open_all() -> list[socket.socket]:
            socks = []
            for _ in range(count):
                s = socket.create_connection((via, HTTP_PORT), timeout=5)
                s.sendall(PARTIAL_HEAD)
                socks.append(s)
            return socks

        return self.host.call(open_all)

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NsNode]:
    with Lab() as lab:
        n = NsNode(lab.add_host("node"), tmp_path / "home")
        try:
            n.start()
            yield n
        finally:
            n.stop()


def wait_closed(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """The sockets the peer has not closed after ``seconds``."""
    open_ = set(socks)
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)  # type: ignore[union-attr]
            except (ConnectionResetError, BlockingIOError) as exc:
                data = b"" if isinstance(exc, ConnectionResetError) else b"?"
            if data == b"":
                open_.discard(s)  # type: ignore[arg-type]
                sel.unregister(s)
    sel.close()
    return list(open_)


def test_half_open_connections_time_out_and_a_source_over_its_cap_is_refused(
    node: NsNode,
) -> None:
    fds_before = node.fds()
    started = time.monotonic()
    held = node.connect("127.0.0.1", 200)  # loopback: no per-address cap, only the timeout
    remote = node.connect(node.host.ip, PENDING_PER_ADDRESS)  # a non-loopback source, at its cap
    extra: list[socket.socket] = []
    try:
        # The node still answers a normal request meanwhile.
        status, body = node.get("/api/status", "127.0.0.1")
        assert status == 200 and json.loads(body)["node"]
        # Every half-open connection is closed by the node within the head timeout (+ slack).
        assert wait_closed(held + remote, HEAD_TIMEOUT + 10 - (time.monotonic() - started)) == []
        assert time.monotonic() - started >= HEAD_TIMEOUT - 1
        # Over its cap, a source is refused at once (while its 64 are held open).
        remote = node.connect(node.host.ip, PENDING_PER_ADDRESS)
        extra = node.connect(node.host.ip, 3)
        assert wait_closed(extra, 3) == []
        assert len(wait_closed(remote, 0.5)) == PENDING_PER_ADDRESS
    finally:
        for s in held + remote + extra:
            s.close()
    time.sleep(0.5)
    assert node.fds() <= fds_before + 5
    status, body = node.get("/api/status", "127.0.0.1")
    drops = json.loads(body)["http"]["drops"]
    assert drops["pending_per_address"] == 3
    assert drops["head_timeout"] >= 200 + PENDING_PER_ADDRESS
    # The node raised its own open-files limit to the hard limit, and said so.
    limits = Path(f"/proc/{node.proc.pid}/limits").read_text()  # type: ignore[union-attr]
    soft, hard = next(line.split()[3:5] for line in limits.splitlines()
                      if line.startswith("Max open files"))  # fmt: skip
    assert soft == hard, limits
    assert "open files limit" in node.log.read_text()


def test_operator_data_only_for_loopback_or_the_operator_token(node: NsNode) -> None:
    # From the namespace's own veth address: not loopback, no credential.
    for path in ("/api/status", "/metrics"):
        status, body = node.get(path, node.host.ip)
        assert status == 403, body
        assert body.count("\n") == 1 and "error" in json.loads(body)
        assert "sqlite" not in body and node.host.ip not in body
        # A forwarded loopback request (a local reverse proxy) is not an operator either.
        status, _ = node.get(path, "127.0.0.1", {"X-Forwarded-For": "192.0.2.1"})
        assert status == 403
        status, _ = node.get(path, node.host.ip, {"Authorization": "Bearer wrong"})
        assert status == 403
    # The operator token (0600 in the node's config dir) opens both from anywhere.
    path = node.home / "config" / "operator-token"
    assert path.stat().st_mode & 0o777 == 0o600
    bearer = {"Authorization": f"Bearer {node.operator_token}"}
    status, body = node.get("/api/status", node.host.ip, bearer)
    assert status == 200 and json.loads(body)["store"].startswith("sqlite://")
    status, body = node.get("/metrics", node.host.ip, bearer)
    assert status == 200 and "# TYPE atenet_datagrams_total counter" in body
    # And loopback sees it without a credential (what `tok status` on the node does).
    status, body = node.get("/api/status", "127.0.0.1")
    assert status == 200 and "store" in json.loads(body)


def test_status_pushes_carry_no_underlay_address_and_no_store_url(node: NsNode) -> None:
    token_text = node.cli(
        "tok", "key", "export", "lan", "--label", "p", "--node", f"{node.host.ip}:{UDP_PORT}"
    ).strip()
    token = AccessToken.decode(token_text)

    async def page_and_udp_client() -> tuple[str, int]:
        # A UDP client port of the same network, with its own underlay address.
        loop = asyncio.get_running_loop()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((node.host.ip, 0))
        udp.setblocking(False)
        sealer = Sealer(token.network_id, PacketKey(token.secret, token.key_id), 9, 1)
        for _ in range(50):
            await loop.sock_sendto(udp, sealer.seal(b'{"op":"hello"}', TYPE_CONTROL),
                                   (node.host.ip, UDP_PORT))  # fmt: skip
            try:
                async with asyncio.timeout(0.2):
                    await loop.sock_recv(udp, 65535)
                break
            except TimeoutError:
                continue
        client_port = udp.getsockname()[1]
        pushes = []
        url = f"ws://{node.host.ip}:{HTTP_PORT}/ws"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str(json.dumps(hello(token)))
            assert json.loads((await ws.receive(5)).data)["op"] == "welcome"
            while len(pushes) < 2:
                msg = await ws.receive(5)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    pushes.append(msg.data)
        udp.close()
        return pushes[-1], client_port

    push, client_port = node.host.call(asyncio.run, page_and_udp_client())
    status = json.loads(push)
    assert sorted(p["kind"] for p in status["ports"]) == ["udp", "ws"], status
    assert f"{node.host.ip}:{client_port}" not in push and str(client_port) not in push
    assert all(node.host.ip not in p["name"] for p in status["ports"])
    assert status["port"] in [p["name"] for p in status["ports"]]
    assert "sqlite" not in push and "store" not in status
    # The operator still sees the real port names.
    _, body = node.get("/api/status", "127.0.0.1")
    ports = next(n for n in json.loads(body)["networks"] if n["name"] == "lan")["ports"]
    assert any(f"{node.host.ip}:{client_port}" in p["name"] for p in ports), ports


def test_the_cli_sends_the_operator_token_only_to_this_machine(
    node: NsNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atenet.cli.common import operator_headers

    monkeypatch.setenv("ATENET_HOME", str(node.home))
    local = f"http://{node.host.ip}:{HTTP_PORT}/api/status"
    headers = node.host.call(operator_headers, local)
    assert headers == {"Authorization": f"Bearer {node.operator_token}"}
    assert node.host.call(operator_headers, "http://192.0.2.7:8080/api/status") == {}
    status, body = node.get("/api/status", node.host.ip, headers)
    assert status == 200 and "store" in json.loads(body)
