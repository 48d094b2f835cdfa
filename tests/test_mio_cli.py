"""`tok nc`, `tok serve` and `tok ping --mio` as real processes against a real node (no root).

`tok serve` opens a mio session on a loopback node and listens; `tok nc` opens another session
and connects to it: both sessions are ports of the same network, their TCP runs in the node's
stack. Data goes through both processes' stdin/stdout and arrives sha256-identical; bad
arguments, bad tokens and unreachable nodes end in one line and a stable exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN
from tests.support.loopback_node import LoopbackNode

TOK = str(VENV_BIN / "tok")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path_factory.mktemp("mio-cli") / "home", "lan") as n:
        yield n


@pytest.fixture(scope="module")
def token_file(node: LoopbackNode, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "lan.token"
    path.write_text(node.token("cli") + "\n")
    path.chmod(0o600)
    return path


def tok(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TOK, *args], env=env or _env(), capture_output=True, timeout=120, check=False, **kw
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ATENET_TOKEN", None)
    env.pop("ATENET_NODE", None)
    return env


def one_line_error(proc: subprocess.CompletedProcess, code: int, want: str) -> None:
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    lines = [line for line in err.splitlines() if not line.startswith("tok: warning:")]
    assert len(lines) == 1 and lines[0].startswith("tok: error: ") and want in lines[0], err


class Server:
    """A `tok serve` process; its status lines (JSON, stderr) read as they come."""

    def __init__(self, args: list[str], stdin: IO[bytes] | int, stdout: IO[bytes] | int) -> None:
        self.proc = subprocess.Popen(
            [TOK, "serve", "--json", *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
            env=_env(),
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"tok serve ended (rc {self.proc.wait()}): {self.events}")
            if line.startswith(b"{"):
                self.events.append(json.loads(line))
                if self.events[-1]["event"] == event:
                    return self.events[-1]
            else:
                raise AssertionError(f"tok serve said: {line.decode().strip()}")
        raise AssertionError(f"no {event} from tok serve in {timeout} s: {self.events}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def serve(node: LoopbackNode, token_file: Path, *args: str, **kw: Any) -> tuple[Server, str]:
    """Start `tok serve`; (the server, its session's IPv4 address) once it listens."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    server = Server(["--token-file", str(token_file), "--node", node.http, *args], **kw)
    try:
        listening = server.wait_for("listening")
    except BaseException:
        server.stop()
        raise
    v4 = [a for a in listening["addresses"] if ":" not in a]
    assert v4, listening
    return server, v4[0]


def test_serve_and_nc_move_data_sha256_equal_both_ways(
    node: LoopbackNode, token_file: Path, tmp_path: Path
) -> None:
    size = 2 * 1024 * 1024 + 777  # not a multiple of any chunk size
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(size))
    b.write_bytes(os.urandom(size // 2))
    got_a, got_b = tmp_path / "got_a.bin", tmp_path / "got_b.bin"
    with a.open("rb") as fa, got_b.open("wb") as fb:
        server, address = serve(node, token_file, "9000", stdin=fa, stdout=fb)
    try:
        with b.open("rb") as fin, got_a.open("wb") as fout:
            nc = subprocess.run(
                [TOK, "nc", "--json", "--token-file", str(token_file), "--node", node.http,
                 address, "9000"],
                stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=_env(), timeout=180,
            )  # fmt: skip
        assert nc.returncode == 0, nc.stderr.decode()
        assert server.proc.wait(60) == 0, server.events
    finally:
        server.stop()
    assert server.proc.stderr is not None
    tail = [json.loads(line) for line in server.proc.stderr.read().splitlines()]
    events = [json.loads(line) for line in nc.stderr.splitlines()]
    assert [e["event"] for e in events] == ["session", "connected", "closed"], events
    assert events[1]["remote"] == [address, 9000]
    assert events[2]["sent"] == size // 2 and events[2]["received"] == size, events
    assert [e["event"] for e in server.events + tail] == [
        "session", "listening", "accepted", "closed"
    ]  # fmt: skip
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert sha(got_a) == sha(a) and sha(got_b) == sha(b)


def test_echo_exec_refused_and_ping(node: LoopbackNode, token_file: Path, tmp_path: Path) -> None:
    echo, address = serve(node, token_file, "7", "--echo", "--name", "echo-seven")
    upper, address2 = serve(node, token_file, "8", "--exec", "tr a-z A-Z")
    hosts = {p.get("host"): p.get("kind") for p in node.network_status()["ports"]}
    assert hosts.get("echo-seven") == hosts.get("tok-serve-8") == "mio", hosts
    env = _env() | {"ATENET_TOKEN": token_file.read_text().strip(), "ATENET_NODE": node.http}
    try:
        data = os.urandom(300_000)
        out = tok("nc", "-q", address, "7", input=data, env=env)
        assert out.returncode == 0 and out.stderr == b"", out.stderr
        assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data).digest()
        # Two connections at once to the same echo server, each gets its own bytes back.
        procs = [
            subprocess.Popen([TOK, "nc", "-q", address, "7"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            for _ in range(2)
        ]  # fmt: skip
        sent = [f"conn {i}\n".encode() * 1000 for i in range(2)]
        outs = [p.communicate(data, timeout=60) for p, data in zip(procs, sent, strict=True)]
        assert [o[0] for o in outs] == sent, outs

        out = tok("nc", "-q", address2, "8", input=b"hello, mio\n", env=env)
        assert (out.returncode, out.stdout) == (0, b"HELLO, MIO\n"), out.stderr

        # Nothing listens on port 9 of the echo server's session: refused, exit 1.
        refused = tok("nc", "-q", address, "9", input=b"x", env=env)
        one_line_error(refused, 1, f"cannot connect to {address}:9: ")
        assert "refused" in refused.stderr.decode().lower()

        ping = tok("ping", "--mio", "-c", "2", "-i", "0.2", "--json", address, env=env)
        assert ping.returncode == 0, ping.stderr
        summary = json.loads(ping.stdout)
        assert summary["host"] == address and summary["received"] == 2, summary
    finally:
        assert echo.stop() == 0  # SIGTERM: a clean stop
        upper.stop()
    accepted = [e for e in echo.events if e["event"] == "accepted"]
    assert accepted == [] or all(e["peer"][0] for e in accepted)


def test_bad_arguments_explain_themselves(
    node: LoopbackNode, token_file: Path, tmp_path: Path
) -> None:
    usage = tok("nc", "--token-file", str(token_file), "10.0.0.1")
    assert usage.returncode == 2 and b"expected [TOKEN] HOST PORT" in usage.stderr
    usage = tok("nc", "--token-file", str(token_file), "10.0.0.1", "http")
    assert usage.returncode == 2 and b"PORT must be a number from 1 to 65535" in usage.stderr
    usage = tok("serve", "7", "--echo", "--exec", "cat")
    assert usage.returncode == 2 and b"--echo and --exec contradict" in usage.stderr
    usage = tok("serve", "7", "--token-file", "-")
    assert usage.returncode == 2 and b"stdin carries the data" in usage.stderr
    usage = tok("nc", "10.0.0.1", "7")
    assert usage.returncode == 2 and b"no token" in usage.stderr

    one_line_error(tok("nc", "not-a-token", "10.0.0.1", "7"), 1, "not an atenet access token")
    one_line_error(
        tok("nc", "--token-file", str(tmp_path / "nope"), "10.0.0.1", "7"), 1, "cannot read"
    )
    # A token in argv works but is warned about (every local user can read argv).
    text = token_file.read_text().strip()
    argv = tok("nc", text, "10.0.0.1", "7", "--node", "http://127.0.0.1:9")
    assert argv.stderr.decode().startswith("tok: warning: a token on the command line")

    # No node at the address: no session, exit 3, with what to do.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        out = tok("nc", "--token-file", str(token_file), "--node", dead, "10.0.0.1", "7")
    one_line_error(out, 3, "cannot reach the node")
    # A revoked key: the node refuses the session.
    revoked = AccessToken.decode(node.token("revoked"))
    node.revoke(revoked.key_id)
    bad = tmp_path / "revoked.token"
    bad.write_text(revoked.encode())
    bad.chmod(0o600)
    out = tok("serve", "--token-file", str(bad), "--node", node.http, "7")
    one_line_error(out, 3, "refused")
