"""The `tok` and `atenet` commands as a user runs them: real processes, a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN


def run(home: Path, *args: str, ok: bool = True, prog: str = "tok") -> subprocess.CompletedProcess:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    proc = subprocess.run(
        [VENV_BIN / prog, *args], env=env, capture_output=True, text=True, timeout=60
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "init", prog="atenet")
    return home


def test_network_key_route_and_log_round_trip(home: Path) -> None:
    run(home, "network", "create", "office", "--cidr", "10.20.30.0/24")
    run(home, "network", "create", "lab")
    nets = json.loads(run(home, "network", "list", "--json").stdout)
    assert sorted(n["name"] for n in nets) == ["lab", "office"]
    office = next(n for n in nets if n["name"] == "office")
    assert office["cidr"] == "10.20.30.0/24" and office["cidr6"].endswith("::/64")

    token = run(home, "key", "export", "office", "--label", "laptop", "--node", "192.0.2.1:4799")
    assert token.stdout.startswith("atn1.")
    run(home, "key", "revoke", "office", "1")
    keys = json.loads(run(home, "key", "list", "office", "--json").stdout)
    assert keys == [
        {**keys[0], "key_id": 1, "label": "laptop", "revoked": True},
    ]
    assert "secret" not in keys[0]

    run(home, "route", "add", "office", "lab")
    routes = json.loads(run(home, "route", "list", "office", "--json").stdout)
    assert [r["name"] for r in routes] == ["lab"]
    run(home, "route", "remove", "office", "lab")
    assert json.loads(run(home, "route", "list", "office", "--json").stdout) == []

    log = json.loads(run(home, "log", "office", "--json").stdout)
    # The route went both ways: office also got (and lost) the key lab's route back used.
    assert [e["kind"] for e in log] == [
        "genesis", "settings", "key_add", "key_revoke", "route_add", "key_add", "route_remove",
        "key_revoke",
    ]  # fmt: skip
    assert [e["seq"] for e in log] == list(range(1, 9))
    assert all(e["author"] == "owner" for e in log)

    run(home, "network", "delete", "lab", "--yes")
    assert [n["name"] for n in json.loads(run(home, "network", "list", "--json").stdout)] == [
        "office"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("network", "show", "nope"), "unknown network 'nope'"),
        (("key", "revoke", "office", "7"), "has no key 7"),
        (("network", "create", "x", "--cidr", "1.2.3"), "bad CIDR '1.2.3'"),
        (("network", "create", "office"), "already have a network named 'office'"),
        (("--store", "nats://127.0.0.1:1", "network", "list"), "nats://127.0.0.1:1 is unreachable"),
        (("--store", "redis://x", "network", "list"), "unknown store URL"),
        (("connect", "not-a-token"), "not an atenet access token"),
        (("key", "export", "office", "--node", "nohost"), "bad node endpoint 'nohost'"),
    ],
)
def test_errors_are_one_line_without_traceback(home: Path, args, message) -> None:
    run(home, "network", "create", "office")
    proc = run(home, *args, ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_tampered_store_is_named_by_tok_log(home: Path) -> None:
    import sqlite3

    run(home, "network", "create", "office")
    run(home, "key", "export", "office")
    db = home / "data" / "chains.sqlite"
    with sqlite3.connect(db) as conn:
        table = next(
            name for (name,) in conn.execute("select name from sqlite_master where type='table'")
            if "event" in name or "chain" in name
        )  # fmt: skip
        cols = [c[1] for c in conn.execute(f"pragma table_info({table})")]
        blob_col = next(c for c in cols if c in ("blob", "data", "event"))
        seq_col = next(c for c in cols if c == "seq")
        (blob,) = conn.execute(f"select {blob_col} from {table} where {seq_col}=3").fetchone()
        damaged = bytearray(blob)
        damaged[-10] ^= 0xFF
        conn.execute(f"update {table} set {blob_col}=? where {seq_col}=3", (bytes(damaged),))
    proc = run(home, "log", "office", ok=False)
    assert "tampered: event 3: bad signature" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_key_files_are_private(home: Path) -> None:
    run(home, "network", "create", "office")
    for path in (home / "config" / "authority.key", home / "config" / "node.key",
                 home / "config" / "tok" / "owner.key"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o600, path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_atenet_up_in_a_fresh_home_serves_status_and_leaves_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    http = free_port()
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    proc = subprocess.Popen(
        [VENV_BIN / "atenet", "up", "--udp-port", str(free_port(socket.SOCK_DGRAM)),
         "--http-port", str(http)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "tok connect" in line and "atn1." in line:
                break
        token = lines[-1].split()[0].removeprefix("ATENET_TOKEN=")
        assert token.startswith("atn1."), lines
        assert any(line.startswith(f"http://127.0.0.1:{http}/#atn1.") for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/status", timeout=5) as r:
            assert [n["name"] for n in json.load(r)["networks"]] == ["default"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
            assert "atenet_datagrams_total 0" in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0


def test_someone_elses_network_is_refused_as_not_the_owner(home: Path, tmp_path: Path) -> None:
    run(home, "network", "create", "office")
    network_id = json.loads(run(home, "network", "list", "--json").stdout)[0]["id"]
    store = f"sqlite://{home / 'data' / 'chains.sqlite'}"
    stranger = tmp_path / "stranger"
    proc = run(stranger, "--store", store, "key", "export", network_id[:8], ok=False)
    assert f"network {network_id} is not yours" in proc.stderr
