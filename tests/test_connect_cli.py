"""`tok connect` and the host-side commands without a TAP: the liveness core (sans-I/O, real
sealed packets), where the token comes from, exit codes, and the daemon's log file.

The data-plane side (real TAP devices and nodes in namespaces) is tests/test_connect_lab.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from atenet.client.core import DEAD_AFTER, PING_INTERVAL, ClientCore, Liveness
from atenet.overlay.seal import TYPE_CONTROL, PacketKey, Sealer
from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN


def make_token(*endpoints: str) -> AccessToken:
    return AccessToken(os.urandom(16), 7, os.urandom(32), endpoints)


class FakeNode:
    """Seals control answers exactly as a node does for this client's key."""

    def __init__(self, token: AccessToken) -> None:
        key = PacketKey(token.secret, token.key_id)
        self.sealer = Sealer(token.network_id, key, 4242, time.time_ns())

    def answer(self, op: str) -> bytes:
        body = {"op": op, "name": "lan", "cidr": "10.9.0.0/24", "cidr6": "fd00:9::/64", "mtu": 1400}
        return bytes(self.sealer.seal(json.dumps(body).encode(), TYPE_CONTROL))


def connected_core(give_up: float | None) -> tuple[ClientCore, Liveness, FakeNode, float]:
    token = make_token("192.0.2.1:4799", "192.0.2.2:4799")
    core = ClientCore(token, time.time_ns())
    liveness = Liveness(core, give_up)
    node = FakeNode(token)
    now = time.time()  # the client refuses counters far from its clock (replay floor)
    core.tick(now)  # hello
    core.receive(node.answer("welcome"), now + 0.01)
    assert core.config is not None
    return core, liveness, node, now + 0.01


def run_until(core: ClientCore, liveness: Liveness, start: float, end: float) -> list:
    events = []
    t = start
    while t < end:
        core.tick(t)
        events += [(round(t, 1), e.kind, e.fields) for e in liveness.check(t)]
        t += 0.5
    return events


def test_a_silent_node_is_reported_then_the_next_endpoint_tried_then_given_up() -> None:
    core, liveness, _node, t0 = connected_core(give_up=30.0)
    events = run_until(core, liveness, t0, t0 + 40)
    kinds = [kind for _, kind, _ in events]
    assert kinds == ["node_lost", "failover", "gave_up"] + ["gave_up"] * (len(kinds) - 3)
    lost_at, _, lost = events[0]
    assert lost["node"] == "192.0.2.1:4799" and lost["next"] == "192.0.2.2:4799"
    assert DEAD_AFTER <= lost_at - t0 <= DEAD_AFTER + 1
    assert events[1][2] == {"from": "192.0.2.1:4799", "to": "192.0.2.2:4799"}
    gave_up_at = events[2][0]
    assert 30 <= gave_up_at - t0 <= 31


def test_persist_never_gives_up_and_an_answer_reconnects() -> None:
    core, liveness, node, t0 = connected_core(give_up=None)
    events = run_until(core, liveness, t0, t0 + 300)
    kinds = {kind for _, kind, _ in events}
    assert kinds == {"node_lost", "failover"}  # each endpoint announced once, never gave_up
    assert sum(kind == "failover" for _, kind, _ in events) == 1
    core.receive(node.answer("welcome"), t0 + 300.2)
    (event,) = liveness.check(t0 + 300.3)
    assert event.kind == "reconnected" and event.fields["after"] == pytest.approx(300.3, abs=0.1)
    assert liveness.answering


def test_a_short_give_up_abandons_a_node_after_half_of_it() -> None:
    core, liveness, _node, t0 = connected_core(give_up=16.0)
    events = run_until(core, liveness, t0, t0 + 20)
    lost_at = next(t for t, kind, _ in events if kind == "node_lost")
    assert 8 <= lost_at - t0 <= 9
    assert 16 <= next(t for t, kind, _ in events if kind == "gave_up") - t0 <= 17


def test_the_node_hop_rtt_is_measured_from_ping_to_pong() -> None:
    core, liveness, node, t0 = connected_core(give_up=30.0)
    (ping,) = core.tick(t0 + PING_INTERVAL)
    assert ping  # a ping went out
    core.receive(node.answer("pong"), t0 + PING_INTERVAL + 0.0042)
    assert core.rtt == pytest.approx(0.0042, abs=1e-6)
    assert liveness.check(t0 + PING_INTERVAL + 0.01) == []
    # An unsolicited pong (no ping outstanding) does not make up a time.
    core.receive(node.answer("pong"), t0 + PING_INTERVAL + 2)
    assert core.rtt == pytest.approx(0.0042, abs=1e-6)


# --------------------------------------------------------------------------- the CLI


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "ATENET_TOKEN"}
    e["ATENET_HOME"] = str(tmp_path / "home")
    return e


@pytest.fixture
def token() -> str:
    return make_token(f"127.0.0.1:{closed_udp_port()}").encode()


def tok(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENV_BIN / "tok", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_a_token_in_argv_works_but_is_warned_about(env: dict[str, str], token: str) -> None:
    out = tok(env, "connect", "--wait", "0.5", token)
    lines = out.stderr.splitlines()
    assert lines[0].startswith("tok: warning: a token on the command line can be read by every")
    assert "--token-file" in lines[0]
    assert out.returncode == 3, out.stderr  # no node answered: documented code
    assert len(lines) == 2 and lines[1].startswith("tok: error: no node answered for 2 s")


@pytest.mark.parametrize("how", ["file", "stdin", "env"])
def test_the_token_from_a_file_stdin_or_env_is_not_warned_about(
    env: dict[str, str], token: str, tmp_path: Path, how: str
) -> None:
    path = tmp_path / "office.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    if how == "file":
        out = tok(env, "connect", "--wait", "0.5", "--token-file", str(path))
    elif how == "stdin":
        out = tok(env, "connect", "--wait", "0.5", "--token-file", "-", stdin=token)
    else:
        out = tok(env | {"ATENET_TOKEN": token}, "connect", "--wait", "0.5")
    assert out.returncode == 3, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("tok: error: no node answered")
    assert "warning" not in out.stderr


def test_token_file_errors_are_one_line(env: dict[str, str], token: str, tmp_path: Path) -> None:
    missing = tok(env, "connect", "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("tok: error: cannot read the token file")
    assert missing.stderr.count("\n") == 1
    both = tok(env, "connect", "--token-file", "-", token, stdin=token)
    assert both.returncode == 2 and "give the token once" in both.stderr
    none = tok(env, "connect")
    assert none.returncode == 2 and "--token-file" in none.stderr
    loose = tmp_path / "loose.token"
    loose.write_text(token)
    loose.chmod(0o644)
    out = tok(env, "connect", "--wait", "0.5", "--token-file", str(loose))
    assert "tok: warning: token file" in out.stderr and "chmod 600" in out.stderr


def test_json_reports_the_exit_with_its_reason(env: dict[str, str], token: str) -> None:
    out = tok(env | {"ATENET_TOKEN": token}, "connect", "--wait", "0.5", "--json")
    assert out.returncode == 3
    (event,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["event"] == "exit" and event["reason"] == "no_answer" and event["code"] == 3


def test_the_daemon_log_refuses_a_planted_symlink(
    env: dict[str, str], token: str, tmp_path: Path
) -> None:
    run_dir = Path(env["ATENET_HOME"]) / "run"
    run_dir.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run_dir / "tok-connect-atenet0.log").symlink_to(victim)
    out = tok(env | {"ATENET_TOKEN": token}, "connect", "--daemon", "--wait", "0.5")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "refusing to write the log" in out.stderr and "symbolic link" in out.stderr
    assert victim.read_text() == "precious\n"


def test_the_daemon_log_is_private_and_says_why_it_did_not_connect(
    env: dict[str, str], token: str
) -> None:
    out = tok(env | {"ATENET_TOKEN": token}, "connect", "--daemon", "--wait", "0.5")
    assert out.returncode == 3, out.stderr  # the child's code, passed on
    assert out.stderr.startswith("tok: error: no node answered for 2 s")
    log = Path(env["ATENET_HOME"]) / "run" / "tok-connect-atenet0.log"
    assert f"(log: {log})" in out.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_status_and_disconnect_without_a_connection_say_so(env: dict[str, str]) -> None:
    out = tok(env, "disconnect")
    assert out.returncode == 1 and out.stderr.startswith("tok: error: no tok connect is running")
    out = tok(env, "status", "--node", f"http://127.0.0.1:{closed_udp_port()}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    out = tok(env, "ping", "10.9.0.1")
    assert out.returncode == 3 and "not connected" in out.stderr
    out = tok(env, "ping", "somehost")
    assert out.returncode == 1 and "owner's key" in out.stderr and out.stderr.count("\n") == 1


def test_persist_keeps_waiting_for_a_first_answer_and_stops_cleanly(
    env: dict[str, str], token: str
) -> None:
    proc = subprocess.Popen(
        [VENV_BIN / "tok", "connect", "--persist", "--wait", "0.5", "--json"],
        env=env | {"ATENET_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # comes after --wait (2 s at least)
        assert (
            "no node answered for 2 s" in line and "retrying until one answers (--persist)" in line
        )
        time.sleep(1)
        assert proc.poll() is None
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert [json.loads(x)["reason"] for x in out.splitlines()] == ["stopped"]


def test_status_port_lines_show_what_the_node_knows_of_a_port() -> None:
    from atenet.cli.tok_client import _port_name

    assert _port_name({"name": "udp:10.0.0.1:4000/k2"}) == "udp:10.0.0.1:4000/k2"
    port = {
        "name": "udp:10.0.0.1:4000/k2",
        "label": "laptop",
        "host": "h1",
        "mac": "02:00:00:00:00:01",
        "ipv4": "10.9.0.5",
        "ipv6": "",
    }
    assert _port_name(port) == 'udp:10.0.0.1:4000/k2 "laptop" (host h1) 02:00:00:00:00:01 10.9.0.5'


def test_under_systemd_the_daemon_logs_to_the_journal_not_a_file(
    env: dict[str, str], token: str
) -> None:
    read_end, write_end = os.pipe()  # stands in for the journal's stream socket
    st = os.fstat(write_end)
    try:
        proc = subprocess.run(
            [VENV_BIN / "tok", "connect", "--daemon", "--wait", "0.5"],
            env=env | {"ATENET_TOKEN": token, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stdout=subprocess.PIPE,
            stderr=write_end,
            text=True,
            timeout=60,
        )
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, errors="replace") as f:
            journal = f.read()
            read_end = -1
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert proc.returncode == 3
    assert "no node answered for 2 s" in journal  # the background process's own error line
    assert journal.rstrip().endswith("(log: the journal)")
    assert not (Path(env["ATENET_HOME"]) / "run" / "tok-connect-atenet0.log").exists()
