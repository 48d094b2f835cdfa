"""`tok connect` on real kernels when things go wrong, and the host-side commands around it:
`tok status`, `tok ping`, `tok disconnect`, the daemon (issue 8 "client side", issue 9 items 7
and 9). Nodes and hosts are real `atenet run` / `tok connect` processes in namespaces.

Topology: nodes n1, n2, n3 serve network "lan"; the tests add their own hosts. The destructive
test (revoking a key, killing nodes) runs last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.support.netns import Host
from tests.support.overlay import BIN, Overlay

pytestmark = [needs_root]


@pytest.fixture(scope="module")
def net() -> Iterator[Overlay]:
    from tests.support.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-conn-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        for name in ("n1", "n2", "n3"):
            overlay.add_node(name)
        yield overlay


@dataclass
class Conn:
    """A `tok connect --json` started by a test, its output in files."""

    name: str
    host: Host
    home: Path
    key_id: int
    token: str
    proc: subprocess.Popen[Any]
    out: Path
    err: Path

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "ATENET_TOKEN"} | {
            "ATENET_HOME": str(self.home)
        }

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_event(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event["event"] == kind:
                    return event
            if self.proc.poll() is not None and kind != "exit":
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {kind} event: {self.events()} {self.stderr()!r}")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def tok(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run([BIN / "tok", *args], env=self.env, check=check, timeout=60)

    def dev_exists(self, dev: str = "atenet0") -> bool:
        return self.host.run(["ip", "link", "show", dev], check=False).returncode == 0


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned daemon may wait for a reaper that never comes)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def write_token(path: Path, token: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def start(net: Overlay, name: str, nodes: list[str], *args: str, host: Host | None = None) -> Conn:
    """`tok connect --token-file F --json ARGS` on a new host (or ``host``)."""
    host = host or net.lab.add_host(name)
    key_id, token = net.export_key(name, nodes)
    home = net.root / f"home-{name}"
    token_file = write_token(home / "token", token)
    out, err = net.root / f"{name}.out", net.root / f"{name}.err"
    env = {k: v for k, v in os.environ.items() if k != "ATENET_TOKEN"}
    with out.open("wb") as o, err.open("wb") as e:
        proc = host.popen(
            [BIN / "tok", "connect", "--token-file", token_file, "--wait", "20", "--json", *args],
            env=env | {"ATENET_HOME": str(home)},
            stdout=o,
            stderr=e,
        )
    conn = Conn(name, host, home, key_id, token, proc, out, err)
    conn.wait_event("connected", 30)
    return conn


def wait_rtt(conn: Conn, timeout: float = 20) -> dict[str, Any]:
    """`tok status --json`'s view of the connection once a ping was answered (every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(conn.tok("status", "--json").stdout)
        (c,) = status["connections"]
        if c["rtt_ms"] is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_daemon_status_ping_and_disconnect_on_a_host_that_is_also_a_node(net: Overlay) -> None:
    n1 = net.nodes["n1"]
    peer = net.add_client("peer", ["n1"])
    key_id, token = net.export_key("n1self", ["n1"])
    home = net.root / "home-n1self"
    token_file = write_token(home / "token", token)
    env = {k: v for k, v in os.environ.items() if k != "ATENET_TOKEN"} | {"ATENET_HOME": str(home)}
    conn = Conn("n1self", n1.host, home, key_id, token, None, Path(), Path())  # type: ignore[arg-type]

    started = n1.host.run(
        [BIN / "tok", "connect", "--daemon", "--token-file", token_file], env=env, timeout=60
    )
    line = started.stdout.strip()
    assert line.startswith("connected to lan via node "), started
    assert "tok disconnect atenet0" in line
    pid = int(line.split("(pid ")[1].split(",")[0])
    try:
        # The token is nowhere on the daemon's command line (any local user can read it).
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"connect" in cmdline and token.encode() not in cmdline
        assert token.split(".")[1][:20].encode() not in cmdline
        log = home / "run" / "tok-connect-atenet0.log"
        assert f"log {log}" in line
        assert stat.S_IMODE(log.stat().st_mode) == 0o600

        # tok status: this host's network, and the local node's view, both.
        status = wait_rtt(conn)
        (c,) = status["connections"]
        assert c["dev"] == "atenet0" and c["network"] == "lan" and c["pid"] == pid
        assert c["ipv4"].startswith("10.77.0.") and c["ipv6"].startswith("fd77:1:2:3:")
        assert c["node"] == n1.endpoint and c["answering"] is True
        assert c["answered_ago"] < 10 and c["rtt_ms"] is not None and c["rtt_ms"] < 1000
        assert [n["name"] for n in status["networks"]] == ["lan"]  # the node view, as before
        text = conn.tok("status").stdout
        assert "atenet0: network lan (" in text and f"node {n1.endpoint}: answering" in text
        assert "rtt " in text and "port udp:" in text

        # tok ping through the overlay: end-to-end times and the node hop.
        out = conn.tok("ping", "-c", "3", "-i", "0.2", "--json", peer.ip4)
        summary = json.loads(out.stdout)
        assert summary["received"] >= 2 and summary["dev"] == "atenet0"
        assert summary["network"] == "lan" and summary["node_rtt_ms"] is not None
        assert all(r["time_ms"] > 0 for r in summary["replies"])
        out = conn.tok("ping", "-c", "2", "-i", "0.2", peer.ip6)
        assert out.stdout.startswith(f"PING {peer.ip6} via atenet0 (network lan, node ")
        assert "reply from" in out.stdout and ", 0% loss" in out.stdout
        # By name (its key's label here: every namespace shares one system host name), looked
        # up as `tok hosts` does, with the owner's key.
        owner_key = home / "config" / "tok" / "owner.key"
        owner_key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(net.owner_home / "config" / "tok" / "owner.key", owner_key)
        out = n1.host.run(
            [BIN / "tok", "ping", "-c", "1", "--json", "peer"],
            env=conn.env | {"ATENET_STORE": net.store},
            timeout=60,
        )
        assert json.loads(out.stdout)["host"] == peer.ip4
        bad = conn.tok("ping", "-c", "1", "-W", "1", "10.77.0.254", check=False)
        assert bad.returncode == 1 and "1 sent, 0 received, 100% loss" in bad.stdout

        # tok disconnect stops it by its recorded pid and returns once the TAP is gone.
        out = conn.tok("disconnect", "--json")
        assert json.loads(out.stdout) == {
            "dev": "atenet0",
            "network": "lan",
            "pid": pid,
            "killed": False,
        }
        # Its TAP is gone; the process itself may still be in exit() for a moment on a busy
        # machine (/proc/PID/cmdline empties before the process is reaped or a zombie).
        deadline = time.monotonic() + 5
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pid)
        assert not conn.dev_exists()
        assert json.loads(conn.tok("status", "--json").stdout)["connections"] == []
        again = conn.tok("disconnect", check=False)
        assert again.returncode == 1 and "no tok connect is running" in again.stderr
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_revoked_key_and_dead_node_end_the_connection_and_persist_keeps_retrying(
    net: Overlay,
) -> None:
    revoked = start(net, "hrev", ["n1"], "--give-up", "15")
    orphan = start(net, "hdead", ["n2"], "--give-up", "15")
    persist = start(net, "hpers", ["n3"], "--persist")
    for conn in (revoked, orphan, persist):
        assert conn.dev_exists()
        assert (conn.home / "run" / "atenet0.json").exists()

    net.tok("key", "revoke", net.network, str(revoked.key_id))
    for name in ("n2", "n3"):
        proc = net.nodes[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    t0 = time.monotonic()

    for conn in (revoked, orphan):
        try:
            rc = conn.proc.wait(timeout=45)  # bound: 15 s give-up + one 5 s ping period
        except subprocess.TimeoutExpired:
            pytest.fail(f"{conn.name} still running 45 s after losing its node: {conn.stderr()}")
        assert rc == 4, conn.stderr()
        lines = conn.stderr().splitlines()
        warnings = [ln for ln in lines if "stopped answering" in ln]
        assert len(warnings) == 1, lines
        assert "giving up after 15 s" in warnings[0] and "--persist" in warnings[0]
        # 15 s of silence, measured by a busy machine's event loop: 15 or 16 s.
        assert re.match(r"tok: error: lost network lan: no node answered for 1[56] s", lines[-1])
        assert [e["event"] for e in conn.events()] == ["connected", "node_lost", "exit"]
        assert conn.events()[-1] | {"time": 0} == {
            "event": "exit",
            "reason": "gave_up",
            "code": 4,
            "error": lines[-1].removeprefix("tok: error: "),
            "time": 0,
        }
        assert not conn.dev_exists(), f"{conn.name}: the TAP outlived tok connect"
        assert not (conn.home / "run" / "atenet0.json").exists()

    # --persist: still there after the others gave up (its status says it never will), and
    # saying why.
    time.sleep(max(0.0, 17 - (time.monotonic() - t0)))
    assert persist.proc.poll() is None, persist.stderr()
    assert persist.dev_exists()
    warning = next(ln for ln in persist.stderr().splitlines() if "stopped answering" in ln)
    assert "retrying every endpoint until one answers (--persist)" in warning
    (c,) = json.loads(persist.tok("status", "--json").stdout)["connections"]
    assert c["answering"] is False and c["give_up"] is None
    assert "NOT answering" in persist.tok("status").stdout

    # Its node comes back: it reconnects by itself, then `tok disconnect` ends it cleanly.
    net.start_node(net.nodes["n3"])
    event = persist.wait_event("reconnected", 30)
    assert event["node"] == net.nodes["n3"].endpoint
    persist.tok("disconnect", "atenet0")
    assert persist.proc.wait(5) == 0
    assert persist.events()[-1]["event"] == "exit" and persist.events()[-1]["reason"] == "stopped"
    assert not persist.dev_exists()
