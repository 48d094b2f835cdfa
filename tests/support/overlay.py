"""An atenet deployment inside a namespace lab: nodes and `tok connect` hosts, as real processes.

Used by the data-plane integration tests and by the benchmark. Each node and each client runs
in its own namespace on the lab's underlay, as the real `atenet run` / `tok connect` commands;
one SQLite store file (on the shared filesystem) holds the chains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns import Host, Lab

BIN = Path(sys.executable).parent
UDP_PORT = 4799
HTTP_PORT = 8080


def wait_for_text(proc: subprocess.Popen[Any], log: Path, want: str, timeout: float) -> str:
    """Wait until the process's log file has a line containing ``want``; return that line.

    Processes log to files, not pipes: a pipe nobody reads blocks its writer once full."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if want in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"no {want!r} from {proc.args}: rc={proc.poll()} log={log.read_text(errors='replace')!r}"
    )


@dataclass
class Node:
    name: str
    host: Host
    home: Path
    proc: subprocess.Popen[Any] | None = None
    log: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host.ip}:{UDP_PORT}"

    def status(self) -> dict[str, Any]:
        out = self.host.run(
            [BIN / "tok", "status", "--json", "--node", f"http://127.0.0.1:{HTTP_PORT}"],
            env=os.environ | {"ATENET_HOME": str(self.home)},
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"tok status on {self.name} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def network(self, name: str) -> dict[str, Any]:
        for net in self.status()["networks"]:
            if net["name"] == name:
                return net
        raise AssertionError(f"node {self.name} does not serve {name}")


@dataclass
class Client:
    name: str
    host: Host
    key_id: int
    token: str
    proc: subprocess.Popen[Any] | None = None
    log: Path | None = None
    ipv4: str = ""
    ipv6: str = ""
    mac: str = ""

    @property
    def ip4(self) -> str:
        return self.ipv4.split("/")[0]

    @property
    def ip6(self) -> str:
        return self.ipv6.split("/")[0]


@dataclass
class Overlay:
    """A deployment: an owner, nodes sharing the authority key, one network, clients."""

    lab: Lab
    root: Path
    network: str = "lan"
    nodes: dict[str, Node] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    heartbeat: float = 1.0
    node_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Extra `atenet run` arguments per node name (e.g. ``--port-rate``)."""

    def __post_init__(self) -> None:
        self.store = f"sqlite://{self.root / 'chains.sqlite'}"
        self.owner_home = self.root / "owner"
        self.env = os.environ | {"ATENET_STORE": self.store}
        self.tok("network", "create", self.network, "--cidr", "10.77.0.0/24",
                 "--cidr6", "fd77:1:2:3::/64", home=self.first_home())  # fmt: skip

    def first_home(self) -> Path:
        """The owner's home, which is also where the deployment is initialised."""
        if not (self.owner_home / "config" / "authority.key").exists():
            self.run_cli("atenet", "init", home=self.owner_home)
        return self.owner_home

    def run_cli(self, prog: str, *args: str, home: Path) -> str:
        proc = subprocess.run(
            [BIN / prog, *args], env=self.env | {"ATENET_HOME": str(home)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"{prog} {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def tok(self, *args: str, home: Path | None = None) -> str:
        return self.run_cli("tok", *args, home=home or self.owner_home)

    def add_node(self, name: str) -> Node:
        host = self.lab.add_host(name)
        home = self.root / name
        (home / "config").mkdir(parents=True)
        for f in ("authority.key", "deployment.json"):
            shutil.copy(self.owner_home / "config" / f, home / "config" / f)
        self.run_cli("atenet", "init", home=home)
        node = Node(name, host, home)
        self.nodes[name] = node
        self.start_node(node)
        return node

    def start_node(self, node: Node) -> None:
        node.log = self.root / f"{node.name}.log"
        with node.log.open("ab") as log:
            node.proc = node.host.popen(
                [BIN / "atenet", "-v", "run", "--listen", node.host.ip, "--udp-port",
                 str(UDP_PORT), "--http-port", str(HTTP_PORT), "--heartbeat", str(self.heartbeat),
                 *self.node_args.get(node.name, ())],
                env=self.env | {"ATENET_HOME": str(node.home)},
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_for_text(node.proc, node.log, "serving on udp", 20)

    def export_key(
        self, label: str, nodes: list[str], network: str | None = None
    ) -> tuple[int, str]:
        """A new access key of ``network`` (default: the overlay's) naming ``nodes``."""
        network = network or self.network
        node_args = [a for n in nodes for a in ("--node", self.nodes[n].endpoint)]
        token = self.tok("key", "export", network, "--label", label, *node_args).strip()
        keys = json.loads(self.tok("key", "list", network, "--json"))
        return max(k["key_id"] for k in keys), token

    def add_client(
        self,
        name: str,
        nodes: list[str],
        args: tuple[str, ...] = (),
        hostname: str = "",
        network: str | None = None,
        host: Host | None = None,
    ) -> Client:
        """Start ``tok connect`` (plus ``args``, e.g. ``--no-offload``) on ``network`` (default:
        the overlay's) in a new host, or in ``host`` (a host whose earlier `tok connect` ended:
        the same namespace and device name give the same MAC, so it is the same client to the
        network).

        ``hostname``: run it in its own UTS namespace with that host name (what it sends the
        node in its hello); by default it shares the machine's."""
        host = host or self.lab.add_host(name)
        key_id, token = self.export_key(name, nodes, network)
        client = Client(name, host, key_id, token)
        client.log = self.root / f"{name}.log"
        uts = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
        with client.log.open("ab") as log:
            client.proc = host.popen(
                [*(uts if hostname else []), BIN / "tok", "connect", "--wait", "20", *args],
                env=self.env | {"ATENET_TOKEN": token, "ATENET_HOME": str(self.root / name)},
                stdout=log, stderr=log,
            )  # fmt: skip
        line = wait_for_text(client.proc, client.log, "connected to", 30)
        # "connected to NET via node H:P: DEV IPV4 IPV6 mac MAC mtu N"
        words = line.split()
        dev_at = words.index("mac") - 3
        client.ipv4, client.ipv6, client.mac = (
            words[dev_at + 1],
            words[dev_at + 2],
            words[dev_at + 4],
        )
        self.clients[name] = client
        return client
