"""`tok nc` and `tok serve` against the real Linux stack: a `tok connect` TAP host in a namespace.

Topology: node n1 (`atenet run` in its namespace) and kernel host k1 (`tok connect` via n1).
The `tok` commands run in n1's namespace without --node: the node's HTTP address comes from the
token (its first node, port 8080). `tok nc` sends a file to a kernel TCP echo server on k1 over
IPv4 and gets it back; a kernel client on k1 exchanges files with `tok serve` over IPv6. Both
ways sha256-equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, Client, Node, Overlay
from tests.test_mio_kernel import KERNEL_SERVERS

pytestmark = [needs_root]

SIZE = 1024 * 1024 + 333

KERNEL_CLIENT = r"""
import hashlib, os, socket, sys, threading
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
s = socket.create_connection((host, port), timeout=60)
def send():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
h, n = hashlib.sha256(), 0
while chunk := s.recv(1 << 20):
    h.update(chunk); n += len(chunk)
t.join()
print(hashlib.sha256(data).hexdigest(), h.hexdigest(), n, flush=True)
"""


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Node, Client, Path]]:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mio-cli-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1 = overlay.add_node("n1")
        k1 = overlay.add_client("k1", ["n1"])
        server = k1.host.popen([sys.executable, "-c", KERNEL_SERVERS], stdout=-1, stderr=-1)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        _, token = overlay.export_key("cli", ["n1"])
        token_file = Path(tmp) / "cli.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        # The node learns of the new key by following the chain: wait until it takes it.
        deadline = time.monotonic() + 30
        while True:
            probe = tok(n1, "ping", "--mio", "-c", "1", "--token-file", str(token_file), k1.ip4)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no mio session on n1: {probe.stderr.decode()}")
            time.sleep(0.5)
        yield n1, k1, token_file


def tok(node: Node, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATENET_TOKEN", "ATENET_NODE")}
    return node.host.run([BIN / "tok", *args], check=False, timeout=120, text=False, env=env,
                         **kw)  # fmt: skip


def test_tok_nc_to_a_kernel_echo_server(world: tuple[Node, Client, Path], tmp_path: Path) -> None:
    n1, k1, token_file = world
    data = os.urandom(SIZE)
    out = tok(n1, "nc", "-q", "--token-file", str(token_file), k1.ip4, "9000", input=data)
    assert out.returncode == 0, out.stderr.decode()
    assert len(out.stdout) == SIZE
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data).digest()


def test_a_kernel_client_to_tok_serve_over_ipv6(
    world: tuple[Node, Client, Path], tmp_path: Path
) -> None:
    n1, k1, token_file = world
    mine, got = tmp_path / "mine.bin", tmp_path / "got.bin"
    mine.write_bytes(os.urandom(SIZE // 2))
    env = {k: v for k, v in os.environ.items() if k not in ("ATENET_TOKEN", "ATENET_NODE")}
    with mine.open("rb") as fin, got.open("wb") as fout:
        serve = n1.host.popen(
            [BIN / "tok", "serve", "--json", "--token-file", str(token_file), "9100"],
            stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
    try:
        assert serve.stderr is not None
        events = [json.loads(serve.stderr.readline()) for _ in range(2)]
        assert [e["event"] for e in events] == ["session", "listening"], events
        v6 = [a for a in events[1]["addresses"] if ":" in a]
        assert v6, events
        run = k1.host.run(
            [sys.executable, "-c", KERNEL_CLIENT, v6[0], "9100", str(SIZE)], timeout=120
        )
        sent_sha, received_sha, received = run.stdout.split()
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert int(received) == SIZE // 2
    assert received_sha == hashlib.sha256(mine.read_bytes()).hexdigest()
    assert sent_sha == hashlib.sha256(got.read_bytes()).hexdigest()


def test_tok_nc_udp_to_a_kernel_echo_server(world: tuple[Node, Client, Path]) -> None:
    n1, k1, token_file = world
    out = tok(n1, "nc", "-u", "-q", "--linger", "3", "--token-file", str(token_file), k1.ip6,
              "9001", input=b"one datagram")  # fmt: skip
    assert (out.returncode, out.stdout) == (0, b"echo:one datagram"), out.stderr.decode()
