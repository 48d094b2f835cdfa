"""`atenet init/up/run` as operators run them: real processes, real SQLite files, a real
nats-server, and namespaces with (or without) a default route for the advertised address."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.deployment import NODE_RECORD_MAX_AGE, published_endpoints
from atenet.overlay.token import AccessToken
from tests.conftest import VENV_BIN, needs_root
from tests.support.nats_cluster import NatsCluster
from tests.support.netns import Lab


def cli_env(home: Path, store: str | None = None) -> dict[str, str]:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    if store:
        env["ATENET_STORE"] = store
    return env


def atenet(home: Path, *args: str, store: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VENV_BIN / "atenet", *args], env=cli_env(home, store), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A long-running `atenet up/run --json` process: its JSON line, then SIGINT at the end."""

    def __init__(self, argv: list[Any], env: dict[str, str], tmp: Path) -> None:
        self.out = tmp / f"out-{time.monotonic_ns()}"
        self.err = self.out.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)

    def json(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.out.read_text().partition("\n")
            if line[1]:
                return json.loads(line[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no JSON line: rc={self.proc.poll()} err={self.stderr!r}")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def nodes_record(home: Path) -> dict[str, Any]:
    import sqlite3

    conn = sqlite3.connect(home / "data" / "chains.sqlite")
    try:
        row = conn.execute("SELECT blob FROM meta WHERE name = 'nodes'").fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else {}


# --------------------------------------------------------------------------- --json


def test_init_json_names_the_deployment_and_node(tmp_path: Path) -> None:
    home = tmp_path / "h"
    first = atenet(home, "init", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["created"] is True and len(data["node_id"]) == 16
    assert data["store"] == f"sqlite://{home / 'data' / 'chains.sqlite'}"
    again = json.loads(atenet(home, "init", "--json").stdout)
    assert again == {**data, "created": False}


def test_up_json_prints_one_object_with_a_reachable_page_url(tmp_path: Path) -> None:
    home = tmp_path / "h"
    http = free_port()
    node = Running(
        [VENV_BIN / "atenet", "up", "--json", "--udp-port", "0", "--http-port", str(http),
         "--http-listen", "0.0.0.0"],
        cli_env(home), tmp_path,
    )  # fmt: skip
    try:
        data = node.json()
        host = data["endpoints"][0].rpartition(":")[0]
        assert data["token"].startswith("atn1.")
        assert data["nat"] is True  # no --no-nat: networks whose owner turned it on get NAT
        assert list(AccessToken.decode(data["token"]).endpoints) == data["endpoints"]
        # Listening on every address: the page is named by the advertised host, not 0.0.0.0.
        assert data["page_url"] == f"http://{host}:{http}/#{data['token']}"
        assert data["page_url_local"] == f"http://127.0.0.1:{http}/#{data['token']}"
        assert data["connect_command"] == f"ATENET_TOKEN={data['token']} tok connect"
        assert Path(data["token_file"]).read_text() == data["token"]
        assert Path(data["token_file"]).stat().st_mode & 0o777 == 0o600
        assert data["network"]["name"] == "default"
        assert data["http_url"] == f"http://{host}:{http}/"
        assert data["listen"].startswith("0.0.0.0:")
        time.sleep(0.5)
        assert len(node.out.read_text().splitlines()) == 1  # nothing else on stdout
    finally:
        assert node.stop() == 0


def test_run_json_and_advertise_option(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert atenet(home, "init").returncode == 0
    node = Running(
        [VENV_BIN / "atenet", "run", "--json", "--udp-port", "0", "--http-port", "0",
         "--advertise", "node.example.net,198.51.100.7:4000", "--no-nat"],
        cli_env(home), tmp_path,
    )  # fmt: skip
    try:
        data = node.json()
        assert data["nat"] is False  # the operator turned NAT off for the whole node
        assert "NAT is off on this node (--no-nat)" in node.stderr
        port = int(data["listen"].rpartition(":")[2])
        assert data["endpoints"] == [f"node.example.net:{port}", "198.51.100.7:4000"]
        assert data["advertised_from"] == "--advertise"
        assert data["http_url"] is None
        assert "tokens name this node as node.example.net" in node.stderr
        assert nodes_record(home)[data["node_id"]]["endpoints"] == data["endpoints"]
    finally:
        assert node.stop() == 0


def test_bad_advertise_is_a_one_line_error(tmp_path: Path) -> None:
    home = tmp_path / "h"
    atenet(home, "init")
    proc = atenet(home, "run", "--udp-port", "0", "--http-port", "0", "--advertise", "x:99999")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "atenet: error: bad --advertise 'x:99999': use HOST:PORT, e.g. 192.0.2.7:4799"
    ]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    proc = atenet(tmp_path / "h", "run", "--udp-port", "nope")
    assert proc.returncode == 2


# --------------------------------------------------------------------------- publishing


def test_a_start_failing_on_a_busy_http_port_leaves_the_published_endpoint(
    tmp_path: Path,
) -> None:
    home = tmp_path / "h"
    udp1 = free_port(socket.SOCK_DGRAM)
    node = Running(
        [VENV_BIN / "atenet", "up", "--json", "--udp-port", str(udp1), "--http-port", "0"],
        cli_env(home), tmp_path,
    )  # fmt: skip
    try:
        node_id = node.json()["node_id"]
    finally:
        assert node.stop() == 0
    before = nodes_record(home)
    assert [e.rpartition(":")[2] for e in before[node_id]["endpoints"]] == [str(udp1)]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http = busy.getsockname()[1]
        udp2 = free_port(socket.SOCK_DGRAM)
        proc = subprocess.run(
            [VENV_BIN / "atenet", "up", "--udp-port", str(udp2), "--http-port", str(http)],
            env=cli_env(home), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"atenet: error: cannot serve HTTP on 127.0.0.1:{http}")
    )
    assert "Traceback" not in proc.stderr
    assert nodes_record(home) == before


def node_homes(tmp_path: Path, count: int) -> list[Path]:
    """``count`` homes of one deployment (shared authority), each with its own node key."""
    first = tmp_path / "n0"
    assert atenet(first, "init").returncode == 0
    homes = [first]
    for i in range(1, count):
        home = tmp_path / f"n{i}"
        (home / "config").mkdir(parents=True)
        for f in ("authority.key", "deployment.json"):
            shutil.copy(first / "config" / f, home / "config" / f)
        assert atenet(home, "init").returncode == 0
        homes.append(home)
    return homes


def start_together(homes: list[Path], store: str, tmp_path: Path) -> list[Running]:
    """Start one `atenet run` per home at the same moment (threads released by a barrier)."""
    barrier = threading.Barrier(len(homes))
    nodes: list[Running | None] = [None] * len(homes)

    def go(i: int) -> None:
        barrier.wait()
        nodes[i] = Running(
            [VENV_BIN / "atenet", "run", "--json", "--listen", "127.0.0.1", "--udp-port", "0",
             "--http-port", "0"],
            cli_env(homes[i], store), tmp_path,
        )  # fmt: skip

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(homes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [n for n in nodes if n is not None]


@pytest.fixture(params=["sqlite", "nats"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'shared.sqlite'}"
    else:
        server: NatsCluster = request.getfixturevalue("fresh_nats_server")
        yield server.url


def read_nodes(store_url: str, home: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [VENV_BIN / "python", "-c",
         "import asyncio, sys; from atenet.chain.store import open_store\n"
         "async def m():\n s = open_store(sys.argv[1]); await s.connect()\n"
         " print((await s.get_meta('nodes') or b'{}').decode()); await s.close()\n"
         "asyncio.run(m())", store_url],
        env=cli_env(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_nodes_starting_together_are_all_published(shared_store: str, tmp_path: Path) -> None:
    homes = node_homes(tmp_path, 3)
    nodes = start_together(homes, shared_store, tmp_path)
    try:
        started = {n.json()["node_id"]: n.json()["endpoints"] for n in nodes}
        assert len(started) == 3
        record = read_nodes(shared_store, homes[0])
        assert {k: v["endpoints"] for k, v in record.items()} == started
    finally:
        for n in nodes:
            n.stop()


def test_a_stale_node_record_is_dropped_and_not_named_in_tokens(tmp_path: Path) -> None:
    home = tmp_path / "h"
    atenet(home, "init")
    store = f"sqlite://{home / 'data' / 'chains.sqlite'}"
    stale = {"deadbeefdeadbeef": {"endpoints": ["192.0.2.99:4799"], "time": time.time() - 3600}}
    import sqlite3

    conn = sqlite3.connect(home / "data" / "chains.sqlite")
    conn.execute("INSERT INTO meta (name, blob) VALUES ('nodes', ?)", (json.dumps(stale).encode(),))
    conn.commit()
    conn.close()
    assert published_endpoints(json.dumps(stale).encode(), time.time()) == []

    node = Running(
        [VENV_BIN / "atenet", "up", "--json", "--udp-port", "0", "--http-port", "0"],
        cli_env(home, store), tmp_path,
    )  # fmt: skip
    try:
        data = node.json()
        record = nodes_record(home)
        assert list(record) == [data["node_id"]]
        export = subprocess.run(
            [VENV_BIN / "tok", "key", "export", "default"], env=cli_env(home, store),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert export.returncode == 0, export.stderr
        assert list(AccessToken.decode(export.stdout.strip()).endpoints) == data["endpoints"]
    finally:
        node.stop()


def test_published_endpoints_skip_records_older_than_the_documented_age() -> None:
    now = 10_000.0
    raw = json.dumps(
        {
            "a": {"endpoints": ["192.0.2.1:1"], "time": now - NODE_RECORD_MAX_AGE - 1},
            "b": {"endpoints": ["192.0.2.2:1"], "time": now - 5},
            "c": {"endpoints": ["192.0.2.3:1", "192.0.2.2:1"], "time": now - 1},
            "d": "junk",
        }
    ).encode()
    assert published_endpoints(raw, now) == ["192.0.2.3:1", "192.0.2.2:1"]
    assert published_endpoints(b"not json", now) == []


# --------------------------------------------------------------------------- advertised address


def run_in(host: Any, home: Path, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """`atenet run --json` inside a lab host; its JSON line and stderr."""
    assert atenet(home, "init").returncode == 0
    out, err = tmp_path / f"{host.name}.out", tmp_path / f"{host.name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = host.popen(
            [VENV_BIN / "atenet", "run", "--json", "--udp-port", "4799", "--http-port", "0",
             *extra],
            env=cli_env(home), stdout=o, stderr=e,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "\n" not in out.read_text():
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
        return json.loads(out.read_text().splitlines()[0]), err.read_text()
    finally:
        host.lab.stop_process(proc)


@needs_root
def test_node_advertises_its_default_route_address_not_loopback(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("routed")
    lab.give_default_route(host)
    data, err = run_in(host, tmp_path / "a", tmp_path)
    assert data["endpoints"] == [f"{host.ip}:4799"]
    assert data["advertised_from"] == "default route"
    assert f"tokens name this node as {host.ip}:4799" in err
    assert "--advertise HOST:PORT" in err


@needs_root
def test_without_default_route_every_global_address_is_advertised(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("noroute")
    host.run(["ip", "addr", "add", "198.18.7.1/24", "dev", "eth0"])
    data, _ = run_in(host, tmp_path / "b", tmp_path)
    assert data["endpoints"] == [f"{host.ip}:4799", "198.18.7.1:4799"]
    assert data["advertised_from"] == "global addresses"


@needs_root
def test_loopback_only_host_warns_loudly(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("lonely")
    host.run(["ip", "link", "set", "eth0", "down"])
    host.run(["ip", "addr", "flush", "dev", "eth0"])
    data, err = run_in(host, tmp_path / "c", tmp_path)
    assert data["endpoints"] == ["127.0.0.1:4799"]
    assert "warning: this host has no address but loopback" in err


def test_a_running_node_refreshes_its_record(tmp_path: Path) -> None:
    home = tmp_path / "h"
    atenet(home, "init")
    # A 0.2 s heartbeat makes the node rewrite its entry every 1.2 s (6 heartbeats, at most 60 s).
    node = Running(
        [VENV_BIN / "atenet", "run", "--json", "--listen", "127.0.0.1", "--udp-port", "0",
         "--http-port", "0", "--heartbeat", "0.2"],
        cli_env(home), tmp_path,
    )  # fmt: skip
    try:
        node_id = node.json()["node_id"]
        first = nodes_record(home)[node_id]["time"]
        deadline = time.monotonic() + 20
        while nodes_record(home)[node_id]["time"] == first:
            assert time.monotonic() < deadline, "the node never refreshed its entry"
            time.sleep(0.2)
    finally:
        assert node.stop() == 0
