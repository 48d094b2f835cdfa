"""The things the bench compares. Add a target: subclass ``Target`` and list it in ``TARGETS``.

* ``veth``  — host A to host B straight over the lab's underlay: the kernel's own path, the
  ceiling no overlay can beat on this machine.
* ``tinc``  — tinc 1.0 in switch mode (a userspace Ethernet switch over UDP, like atenet): the
  reference overlay to beat.
* ``pyrelay`` — two TAP devices joined by a Python loop: the floor cost of a Python TAP path.
* ``atenet-1node`` — two ``tok connect`` hosts on one ``atenet run`` node (A -> N1 -> B).
* ``atenet-2node`` — each ``tok connect`` host on its own node (A -> N1 -> N2 -> B).
* ``-pure`` / ``-noengine`` variants — the same with ``ATENET_PURE=1`` / ``ATENET_ENGINE=0``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netbench import Host, Lab, Target  # netbench puts the repo root on sys.path

OVERLAY_PREFIX = "10.202.0"
OVERLAY_MTU = 1400
"""The overlay MTU tinc's TAP gets: atenet's default network MTU (chain/state.py DEFAULT_MTU),
so both carry the same frames (tinc's own default, 1500, would give it bigger TCP segments)."""


class VethTarget(Target):
    name = "veth"
    description = "bare veth + Linux bridge (kernel path, the physical limit)"

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        a, b = lab.add_host("a"), lab.add_host("b")
        if not a.ping(b.ip, count=1, timeout=3):
            raise RuntimeError("underlay does not forward: veth/bridge setup failed")
        return a, b, b.ip


def ensure_tincd() -> str:
    """Path of tincd; installs the Debian package when root and missing."""
    found = shutil.which("tincd") or (Path("/usr/sbin/tincd").is_file() and "/usr/sbin/tincd")
    if found:
        return str(found)
    subprocess.run(["apt-get", "install", "-y", "-q", "tinc"], check=True, timeout=600)
    found = shutil.which("tincd") or "/usr/sbin/tincd"
    return str(found)


PMTU_RE = re.compile(r" (\S+) at \S+ .*? pmtu (\d+) \(min (\d+) max (\d+)\)")


class OwnedTarget(Target):
    """A target that starts processes (reported for CPU) and may own a temp dir; the lab stops
    the processes (it tracks their Popen), teardown removes the dir."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pids: dict[str, int] = {}

    def processes(self) -> dict[str, int]:
        return dict(self._pids)

    def teardown(self) -> None:
        self._pids.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class TincTarget(OwnedTarget):
    """Two tincd 1.0 daemons in switch mode, one per host namespace, default cipher and digest.

    Each daemon gets its own config dir (RSA keys made by ``tincd -K``), its own TAP (named by
    ``Interface``) and an overlay address set by ``tinc-up``. ``a`` connects to ``b`` over the
    underlay. Before measuring, the bench waits until tinc's path-MTU discovery has settled:
    until then tinc 1.0 sends large packets over its TCP meta connection, not UDP.
    """

    name = "tinc"
    description = (
        f"tinc 1.0 switch mode, 2 daemons, default cipher/digest (aes-256-cbc/sha256), "
        f"MTU {OVERLAY_MTU}"
    )

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        tincd = ensure_tincd()
        a, b = lab.add_host("a"), lab.add_host("b")
        self._tmp = tempfile.TemporaryDirectory(prefix="atnbench-tinc-")
        root = Path(self._tmp.name)
        nodes = {"a": (a, f"{OVERLAY_PREFIX}.1"), "b": (b, f"{OVERLAY_PREFIX}.2")}
        for node, (host, overlay) in nodes.items():
            conf = root / node
            (conf / "hosts").mkdir(parents=True)
            lines = [f"Name = {node}", "Mode = switch", "Interface = tinc0"]
            if node == "a":
                lines.append("ConnectTo = b")
            (conf / "tinc.conf").write_text("\n".join(lines) + "\n")
            (conf / "hosts" / node).write_text(f"Address = {host.ip}\nPort = 655\n")
            up = conf / "tinc-up"
            up.write_text(
                f"#!/bin/sh\nip addr add {overlay}/24 dev $INTERFACE\n"
                f"ip link set $INTERFACE mtu {OVERLAY_MTU} up\n"
            )
            up.chmod(0o755)
            # -K asks for file names only on a terminal; with stdin closed it uses the defaults.
            subprocess.run(
                [tincd, "-c", str(conf), "-K2048"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=True,
                timeout=60,
            )
        for node in nodes:  # each side needs the other's host file (with its public key)
            other = "b" if node == "a" else "a"
            shutil.copy(root / other / "hosts" / other, root / node / "hosts" / other)
        for node, (host, _) in nodes.items():
            conf = root / node
            proc = host.popen(
                [tincd, "-c", str(conf), "-D", "-d0", f"--pidfile={conf}/tincd.pid",
                 f"--logfile={conf}/tincd.log"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self._pids[f"tincd-{node}"] = proc.pid
        server_ip = nodes["b"][1]
        self._wait_ready(a, b, server_ip, root)
        return a, b, server_ip

    def _wait_ready(
        self, a: Host, b: Host, server_ip: str, root: Path, timeout: float = 30
    ) -> None:
        end = time.monotonic() + timeout
        while not a.ping(server_ip, count=1, timeout=1):
            if time.monotonic() > end:
                log = (root / "a" / "tincd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tinc overlay never came up; tincd-a log:\n{log}")
        # SIGUSR2 makes tinc 1.0 log its node list with each node's path-MTU state.
        for node, peer in (("a", "b"), ("b", "a")):
            pid, log = self._pids[f"tincd-{node}"], root / node / "tincd.log"
            while True:
                os.kill(pid, signal.SIGUSR2)
                time.sleep(0.5)
                states = {m[0]: (int(m[2]), int(m[3])) for m in PMTU_RE.findall(log.read_text())}
                lo_hi = states.get(peer)
                if lo_hi and lo_hi[0] > 0 and lo_hi[0] >= lo_hi[1]:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"tinc path MTU {node}->{peer} never settled: {lo_hi}")
                # Traffic keeps the probes going; a ping also refreshes the UDP path.
                a.ping(server_ip, count=1, timeout=1)


class PyRelayTarget(OwnedTarget):
    """Two TAPs (one per host) joined by one Python process (``bench/taprelay.py``)."""

    name = "pyrelay"
    description = "two TAPs joined by a Python read_batch/write loop (no UDP, no crypto)"

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        a, b = lab.add_host("a"), lab.add_host("b")
        script = Path(__file__).resolve().parent / "taprelay.py"
        proc = a.popen(
            [sys.executable, str(script), a.ns, f"{OVERLAY_PREFIX}.1/24",
             b.ns, f"{OVERLAY_PREFIX}.2/24"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("taprelay.py did not start (see its stderr)")
        self._pids["relay"] = proc.pid
        server_ip = f"{OVERLAY_PREFIX}.2"
        if not a.ping(server_ip, count=3, timeout=5):
            raise RuntimeError("no ping through the Python relay")
        return a, b, server_ip


class AtenetTarget(OwnedTarget):
    """A real atenet deployment built by ``tests.support.overlay.Overlay``.

    Every node runs ``atenet run`` and every client ``tok connect`` as its own process in its
    own namespace; the client hosts reach each other on their hashed overlay addresses
    (10.77.0.0/24). Subclasses say which nodes exist and which node(s) each client's token
    names. Before measuring, the bench waits until pings cross the overlay (in the 2-node case,
    until each node lists the other as a peer).
    """

    node_names: tuple[str, ...] = ("n1",)
    """The nodes to start, in order."""
    client_nodes: tuple[tuple[str, str], ...] = (("a", "n1"), ("b", "n1"))
    """(client, the node its token names); the first is the iperf3 client, the second the server."""
    pure = False
    """Run every process with ``ATENET_PURE=1`` (pure Python, no compiled fast path), so one run
    compares both data paths side by side (docs/fastpath.md)."""
    engine = True
    """Run the GIL-free engines (tok's and the node's threads, ``ATENET_ENGINE``); False keeps
    the compiled hops on the event loop, so one run shows what the engines bring."""

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        from tests.support.overlay import Overlay  # imports the atenet package: only when used

        self._tmp = tempfile.TemporaryDirectory(prefix="atnbench-atenet-")
        want = {
            "ATENET_PURE": "1" if self.pure else "0",
            "ATENET_ENGINE": "1" if self.engine else "0",
        }
        saved = {k: os.environ.get(k) for k in want}
        os.environ.update(want)  # the Overlay copies os.environ
        try:
            overlay = Overlay(lab, Path(self._tmp.name))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for name in self.node_names:
            node = overlay.add_node(name)
            assert node.proc is not None
            self._pids[f"node-{name}"] = node.proc.pid
        clients = []
        for name, node_name in self.client_nodes:
            client = overlay.add_client(name, [node_name])
            assert client.proc is not None
            self._pids[f"tok-{name}"] = client.proc.pid
            clients.append(client)
        a, b = clients
        self._wait_ready(a.host, b.host, a.ip4, b.ip4)
        return a.host, b.host, b.ip4

    def _wait_ready(self, a: Host, b: Host, a_ip: str, b_ip: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        # Both directions, several pings in a row: peers learnt, ARP resolved on both sides.
        while not (a.ping(b_ip, count=3, timeout=2) and b.ping(a_ip, count=3, timeout=2)):
            if time.monotonic() > end:
                raise RuntimeError(f"no ping {a_ip} <-> {b_ip} through atenet after {timeout} s")
            time.sleep(0.2)


class Atenet1NodeTarget(AtenetTarget):
    name = "atenet-1node"
    description = "atenet: 2 tok connect hosts on 1 atenet run node (A -> N1 -> B)"
    node_names = ("n1",)
    client_nodes = (("a", "n1"), ("b", "n1"))


class Atenet2NodeTarget(AtenetTarget):
    name = "atenet-2node"
    description = "atenet: each tok connect host on its own node (A -> N1 -> N2 -> B)"
    node_names = ("n1", "n2")
    client_nodes = (("a", "n1"), ("b", "n2"))


class Atenet1NodePureTarget(Atenet1NodeTarget):
    name = "atenet-1node-pure"
    description = "atenet-1node with ATENET_PURE=1: the pure Python data path, no fast path"
    pure = True


class Atenet2NodePureTarget(Atenet2NodeTarget):
    name = "atenet-2node-pure"
    description = "atenet-2node with ATENET_PURE=1: the pure Python data path, no fast path"
    pure = True


class Atenet1NodeNoEngineTarget(Atenet1NodeTarget):
    name = "atenet-1node-noengine"
    description = "atenet-1node with ATENET_ENGINE=0: compiled hops on the event loop, no threads"
    engine = False


class Atenet2NodeNoEngineTarget(Atenet2NodeTarget):
    name = "atenet-2node-noengine"
    description = "atenet-2node with ATENET_ENGINE=0: compiled hops on the event loop, no threads"
    engine = False


TARGETS: dict[str, type[Target]] = {
    VethTarget.name: VethTarget,
    TincTarget.name: TincTarget,
    PyRelayTarget.name: PyRelayTarget,
    Atenet1NodeTarget.name: Atenet1NodeTarget,
    Atenet2NodeTarget.name: Atenet2NodeTarget,
    Atenet1NodePureTarget.name: Atenet1NodePureTarget,
    Atenet2NodePureTarget.name: Atenet2NodePureTarget,
    Atenet1NodeNoEngineTarget.name: Atenet1NodeNoEngineTarget,
    Atenet2NodeNoEngineTarget.name: Atenet2NodeNoEngineTarget,
}
"""Registry: ``--targets`` picks from these, in this order."""

DEFAULT_TARGETS = ("veth", "tinc", "atenet-1node", "atenet-2node")
"""What ``bench/run.py`` measures without ``--targets``: issue 14's table."""
