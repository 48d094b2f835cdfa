"""A real `atenet run` process on loopback, with a deployment and a network: for tests of the
node's HTTP side (WebSocket ports, the web page) that need no namespaces and no root."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import VENV_BIN


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackNode:
    """``atenet init`` + ``tok network create`` + ``atenet run`` on 127.0.0.1, in ``home``."""

    def __init__(self, home: Path, network: str = "lan", *extra_args: str) -> None:
        self.home = home
        self.network = network
        self.env = os.environ | {"ATENET_HOME": str(home)}
        self.env.pop("ATENET_STORE", None)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[Any] | None = None
        self.log = home / "node.log"

    def cli(self, prog: str, *args: str) -> str:
        proc = subprocess.run(
            [VENV_BIN / prog, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise AssertionError(f"{prog} {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def __enter__(self) -> LoopbackNode:
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("atenet", "init")
        self.cli("tok", "network", "create", self.network, "--cidr", "10.88.0.0/24")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [VENV_BIN / "atenet", "-v", "run", "--listen", "127.0.0.1",
                 "--udp-port", str(self.udp_port), "--http-port", str(self.http_port),
                 *self.extra_args],
                env=self.env, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while "serving on udp" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"node did not start: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, label: str = "t") -> str:
        return self.cli(
            "tok", "key", "export", self.network, "--label", label,
            "--node", f"127.0.0.1:{self.udp_port}",
        ).strip()  # fmt: skip

    def revoke(self, key_id: int) -> None:
        self.cli("tok", "key", "revoke", self.network, str(key_id))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http}/api/status", timeout=5) as resp:
            return json.load(resp)

    def network_status(self) -> dict[str, Any]:
        return next(n for n in self.status()["networks"] if n["name"] == self.network)
